"""FREEDOM (Zhou & Shen 2023): frozen multimodal kNN item graph + degree-sensitive edge pruning.

Follows baselines.md and MMRec's ``models/freedom.py``: LightGCN over the (pruned, per epoch)
user-item graph, plus ``S^(L_m) E_item`` on the frozen item graph (the run graph's ``knn_mm``
relation) added to the item output; BPR on the final embeddings and
``reg_weight * [BPR(user, T) + BPR(user, V)]`` with trainable feature tables.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmgraph.errors import ConfigError
from mmgraph.graph.item_graphs import FREEDOM_IMAGE_WEIGHT, freedom_weights
from mmgraph.graph.relations import Relation, bipartite_adj, relation_adj
from mmgraph.losses import bpr_loss
from mmgraph.models.base import Batch, Channel, GraphRecommender, LossOutput, item_features, subgraph_rows
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.features import ModalityEncoder
from mmgraph.nn.sparse import SparseAdj, gather_rows, unique_rows

ITEM_GRAPH = "knn_mm"


def modality_weights(config, modalities) -> dict:
    """FREEDOM-style weights: explicit ``modality_weights``, else ``mm_image_weight`` for ``image``."""
    explicit = config.get("modality_weights")
    image_weight = config.get("mm_image_weight", FREEDOM_IMAGE_WEIGHT) if "image" in modalities else None
    return freedom_weights(list(modalities), explicit, None if explicit else image_weight)


class DegreeSensitivePruning:
    """Keep ``M = floor(|E| (1 - rho))`` training edges sampled without replacement with probability
    proportional to ``1 / sqrt(d_u d_i)``, then renormalise symmetrically on the kept subgraph.

    Args:
        edge_index: ``[2, E]`` unique training (user, item) edges (the ``interacts`` relation).
        rho: fraction of edges to drop (FREEDOM's ``dropout``).
    """

    def __init__(self, edge_index: Tensor, n_users: int, n_items: int, rho: float):
        if not 0.0 <= rho < 1.0:
            raise ConfigError(f"dropout (edge pruning ratio) must be in [0, 1), got {rho}")
        self.edge_index = edge_index
        self.n_users, self.n_items, self.rho = n_users, n_items, rho
        n_edges = edge_index.shape[1]
        # floor(|E| (1 - rho)) without float error (0.2 * 5150 must give 1030, not 1029)
        self.n_keep = int(math.floor(round(n_edges * (1.0 - rho), 9)))
        du = torch.bincount(edge_index[0], minlength=n_users).float()
        di = torch.bincount(edge_index[1], minlength=n_items).float()
        self.probs = (du[edge_index[0]] * di[edge_index[1]]).rsqrt()

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        """Indices of the kept edges ``[M]``."""
        return torch.multinomial(self.probs, self.n_keep, replacement=False, generator=generator)

    def adjacency(self, keep: Tensor, device=None) -> SparseAdj:
        adj = bipartite_adj(self.edge_index[:, keep], self.n_users, self.n_items)
        return adj if device is None else adj.to(device)


@register("freedom")
class FREEDOM(GraphRecommender):
    """LightGCN (mean, ``n_ui_layers``) on the pruned user-item graph; items add ``S^(n_mm_layers) E_item``
    over the frozen kNN graph; scoring uses the full graph."""

    multimodal = True
    supports_sampled_graph = True
    defaults = {"embedding_size": 64, "n_ui_layers": 2, "n_mm_layers": 1, "knn_k": 10,
                "mm_image_weight": FREEDOM_IMAGE_WEIGHT, "modality_weights": None, "dropout": 0.8,
                "reg_weight": 0.0, "knn_backend": "faiss"}

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        params = {"k": int(cfg["knn_k"]), "weights": modality_weights(cfg, modalities)}
        if cfg["knn_backend"] != "faiss":  # exact FAISS is the builder's default (and the cached graphs')
            params["backend"] = cfg["knn_backend"]
        return [Relation(ITEM_GRAPH, "freedom", params)]

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        self.encoder = LightGCNEncoder(int(cfg["n_ui_layers"]), "mean")
        self.item_graph = relation_adj(data, ITEM_GRAPH)
        self.modal = ModalityEncoder(item_features(data), self.embedding_size, trainable=True)
        self.pruning = DegreeSensitivePruning(data["user", "interacts", "item"].edge_index, self.n_users,
                                              self.n_items, float(cfg["dropout"]))
        self.train_adj: SparseAdj = self.adj

    def on_epoch_start(self, epoch: int, generator: Optional[torch.Generator] = None) -> None:
        if self.pruning.rho > 0:
            keep = self.pruning.sample(generator)
            if self._subgraph_batches is not None:  # sampled training: sample from the pruned graph
                self._subgraph_batches.set_edges(keep)
            else:
                self.train_adj = self.pruning.adjacency(keep, self.user_emb.weight.device)

    def item_graph_branch(self) -> Tensor:
        h = self.item_emb.weight
        for _ in range(int(self.config["n_mm_layers"])):
            h = self.item_graph.matmul(h)
        return h

    def forward(self, adj: Optional[SparseAdj] = None) -> Tuple[Tensor, Tensor]:
        u, i = self.propagate(adj)
        return u, i + self.item_graph_branch()

    def loss(self, batch: Batch) -> LossOutput:
        sub = batch.extras.get("subgraph")
        if sub is None:
            u_all, i_all = self.forward(self.train_adj)
            eu, ep, en = batch.rows(u_all, i_all)
            user_rows = None
        else:  # graph_batching: sampled: the user-item part on the sampled subgraph, the item graph exactly
            hu, hi = self.propagate_subgraph(sub, batch.extras.get("adjacency"))
            b = len(batch)
            branch = self.item_graph.rows_matmul(self.item_emb.weight, torch.cat([batch.pos, batch.neg]),
                                                 int(self.config["n_mm_layers"]))  # (S^L E)[items]
            eu = hu[sub["user"].src_index]
            ep = hi[sub["item"].dst_pos_index] + branch[:b]
            en = hi[sub["item"].dst_neg_index] + branch[b:]
            user_rows = subgraph_rows(sub["user"].n_id, hu)
        s_pos, s_neg = (eu * ep).sum(-1), (eu * en).sum(-1)
        bpr = bpr_loss(s_pos, s_neg)
        terms = {"bpr": bpr}
        total = bpr
        if sub is None:
            def user_rows_full(ids: Tensor) -> Tensor:   # the batch's users reuse this step's rows
                return eu if ids is batch.users else gather_rows(u_all, ids)
        feat_scores: Dict[str, Tuple[Tensor, Tensor]] = {}
        if float(self.config["reg_weight"]) > 0:
            feat_bpr, feat_scores = self.feature_bpr(eu, batch.pos, batch.neg)
            terms["feat_bpr"] = feat_bpr
            total = total + float(self.config["reg_weight"]) * feat_bpr
        # a channel's users are the batch's final rows (eu): its feature BPR scores are the channel's own
        channels = {m: Channel(user_fn=user_rows if sub is not None else user_rows_full,
                               item_fn=lambda ids, m=m: self.modal.project(m, ids),
                               item_table=lambda m=m: self.modal.project(m),
                               item_affine=lambda m=m: self.modal.affine(m), scores=feat_scores.get(m))
                    for m in self.modal.modalities}
        if sub is not None:
            return LossOutput(total, terms, user_rows=user_rows, channels=channels, scores=(s_pos, s_neg))
        return LossOutput(total, terms, u_all, i_all, channels=channels, scores=(s_pos, s_neg))

    def feature_bpr(self, users: Tensor, pos: Tensor,
                    neg: Tensor) -> Tuple[Tensor, Dict[str, Tuple[Tensor, Tensor]]]:
        """``sum_m BPR(users . T_m[pos], users . T_m[neg])`` with ``T_m`` the projected (trainable) features, and
        the scores ``{m: (users . T_m[pos] [B], users . T_m[neg] [B])}``.

        The rows of the distinct ``pos`` and ``neg`` items are gathered once per modality (``unique_rows``): the
        feature table's gradient is one dense ``[I, d_m]`` buffer written row by row, where a gather per side
        zero-filled two and added them (on Baby's 4096-d image table, 115 MB each, most of the step)."""
        b = pos.shape[0]
        items, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        total = users.new_zeros(())
        scores = {}
        for name in self.modal.modalities:
            rows = gather_rows(self.modal.proj[name](unique_rows(self.modal.table(name), items)), inv)
            scores[name] = (users * rows[:b]).sum(-1), (users * rows[b:]).sum(-1)
            total = total + bpr_loss(*scores[name])
        return total, scores

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        users = self.embeddings()[0]
        return {m: (users, self.modal.project(m)) for m in self.modal.modalities}
