"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolution with behaviour-purified modality features.

Follows MMRec's ``models/mgcn.py`` (the reference for the published numbers), per modality ``m`` with
trainable feature tables ``X_m``:

* purifier: ``P_m = E_item * sigmoid(G_m(Linear_m(X_m)))`` (element-wise gate of the ID embeddings);
* user-item view: LightGCN (mean over layers ``0..n_ui_layers``) of the ID embeddings on ``A_hat``;
* item-item view: ``n_layers`` hops of ``P_m`` on the frozen similarity kNN graph ``simknn_<m>`` (see
  :func:`~mmgraph.models.lattice.simknn_relations`), users ``= R_hat P_m`` (``R_hat`` the user-item block
  of ``A_hat``);
* fuser: common ``= sum_m softmax_m(q(V_m)) V_m`` with ``q = Linear, tanh, Linear(d -> 1)``; specific
  ``S_m = sigmoid(W_m content) * (V_m - common)``; side ``= (sum_m S_m + common) / (M + 1)``;
* final ``= content + side``; loss BPR + ``reg_weight`` * squared-L2 of the batch rows / 2 / batch_size
  + ``cl_loss`` * [InfoNCE(side, content) over the batch's positive items + over its users]
  (temperature 0.2, in-batch).

Channels: one per modality, its item-item view ``V_m`` (users and items).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmgraph.graph.hetero import INTERACTS
from mmgraph.graph.relations import Relation, relation_adj
from mmgraph.losses import batch_info_nce, bpr_loss, l2_reg
from mmgraph.models.base import Batch, Channel, GraphRecommender, LossOutput, item_features
from mmgraph.models.lattice import simknn_relations
from mmgraph.models.lgmrec import user_item_matrix
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder
from mmgraph.nn.features import ModalityEncoder
from mmgraph.nn.sparse import gather_rows, split_nodes, unique_rows

CL_TEMPERATURE = 0.2  # MMRec MGCN: InfoNCE(side, content, 0.2)


def gate(d: int) -> nn.Sequential:
    """``sigmoid(Linear(d, d)(x))``."""
    return nn.Sequential(nn.Linear(d, d), nn.Sigmoid())


def side_content_loss(model: GraphRecommender, batch: Batch, content: Tensor, views: Dict[str, Tensor],
                      side_fn: Callable[[Tensor, Dict[str, Tensor]], Tensor], temperature: float) -> LossOutput:
    """The training step MGCN and SMORE share: final ``= content + side`` with ``side = side_fn(content, views)``
    (a function of each node's own rows), loss BPR + ``reg_weight`` x squared L2 of the batch rows / 2 /
    batch_size + ``cl_loss`` x [InfoNCE(side, content) over the positives + over the users] at ``temperature``.

    ``side_fn`` runs on the batch's distinct nodes only (other rows on demand, for plug-ins, through
    ``user_rows`` / ``item_rows``) and each InfoNCE on its distinct rows with their counts
    (:func:`~mmgraph.losses.batch_info_nce`): the same values and gradients as computing every node and
    contrasting the batch's rows with their repeats. ``content``, ``views[v]``: ``[U + I, d]``, users first.
    """
    cfg = model.config
    n_u, b = model.n_users, len(batch)
    rows, inv = torch.unique(torch.cat([batch.users, batch.pos + n_u, batch.neg + n_u]), return_inverse=True)
    c_rows = unique_rows(content, rows)
    side = side_fn(c_rows, {v: unique_rows(x, rows) for v, x in views.items()})
    final = c_rows + side
    eu, ep, en = gather_rows(final, inv).split(b)
    s_pos, s_neg = (eu * ep).sum(-1), (eu * en).sum(-1)
    bpr = bpr_loss(s_pos, s_neg)
    reg = float(cfg["reg_weight"]) * l2_reg(eu, ep, en, batch_size=model.batch_size)
    cl = batch_info_nce(side, c_rows, inv[b:2 * b], temperature) + batch_info_nce(side, c_rows, inv[:b], temperature)

    def node_rows(ids: Tensor) -> Tensor:
        return content[ids] + side_fn(content[ids], {v: x[ids] for v, x in views.items()})
    channels = {v: Channel(users=x[:n_u], items=x[n_u:]) for v, x in views.items()}
    return LossOutput(bpr + reg + float(cfg["cl_loss"]) * cl, {"bpr": bpr, "reg": reg, "cl": cl},
                      user_rows=node_rows, item_rows=lambda ids: node_rows(ids + n_u), channels=channels,
                      scores=(s_pos, s_neg))


class SideContentRecommender(GraphRecommender):
    """A content representation plus a node-local side representation of per-view rows, final = content + side,
    trained by :func:`side_content_loss` (MGCN, SMORE). Subclasses give :meth:`views` and :meth:`side`."""

    #: InfoNCE temperature of the side-vs-content terms
    cl_temperature: float = CL_TEMPERATURE

    def views(self) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(content [U + I, d], {view: [U + I, d]})``, users first."""
        raise NotImplementedError

    def side(self, content: Tensor, views: Dict[str, Tensor]) -> Tensor:
        """The side rows ``[N, d]`` of the nodes whose content rows ``[N, d]`` and view rows are given."""
        raise NotImplementedError

    def parts(self) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """``(content, side, views)``, all over ``U + I`` nodes; final = content + side."""
        content, views = self.views()
        return content, self.side(content, views), views

    def forward(self) -> Tuple[Tensor, Tensor]:
        content, side, _ = self.parts()
        final = content + side
        return split_nodes(final, self.n_users)

    def loss(self, batch: Batch) -> LossOutput:
        content, views = self.views()
        return side_content_loss(self, batch, content, views, self.side, self.cl_temperature)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        return {v: split_nodes(x, self.n_users) for v, x in self.views()[1].items()}


@register("mgcn")
class MGCN(SideContentRecommender):
    """Behaviour-guided purifier, user-item and item-item views, behaviour-aware fuser (module docstring)."""

    multimodal = True
    defaults = {"embedding_size": 64, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10, "reg_weight": 1e-4,
                "cl_loss": 1e-3}

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        k = int({**cls.defaults, **config}["knn_k"])
        return simknn_relations(modalities, lambda m: k)

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        d = self.embedding_size
        self.encoder = LightGCNEncoder(int(cfg["n_ui_layers"]), "mean")
        self.batch_size = int(cfg.get("batch_size", 2048))
        self.R = user_item_matrix(data[INTERACTS].edge_index, self.n_users, self.n_items, "sym")
        self.modal = ModalityEncoder(item_features(data), d, trainable=True)
        mods = self.modal.modalities
        self.item_graphs = nn.ModuleDict({m: relation_adj(data, f"simknn_{m}") for m in mods})
        self.gate_item = nn.ModuleDict({m: gate(d) for m in mods})
        self.gate_prefer = nn.ModuleDict({m: gate(d) for m in mods})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.conv = LightGCNConv()

    def views(self) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(content [U + I, d], {m: V_m [U + I, d]})``."""
        content = torch.cat(self.propagate())
        out = {}
        for m in self.modal.modalities:
            h = self.item_emb.weight * self.gate_item[m](self.modal.project(m))
            for _ in range(int(self.config["n_layers"])):
                h = self.conv(h, self.item_graphs[m])
            out[m] = torch.cat([self.R.matmul(h), h])
        return content, out

    def side(self, content: Tensor, views: Dict[str, Tensor]) -> Tensor:
        """The side embeddings ``(sum_m S_m + common) / (M + 1)``."""
        stacked = torch.stack(list(views.values()))                      # [M, N, d]
        att = torch.softmax(self.query_common(stacked).squeeze(-1), dim=0)  # [M, N]
        common = (att.unsqueeze(-1) * stacked).sum(0)
        side = common
        for m, v in views.items():
            side = side + self.gate_prefer[m](content) * (v - common)
        return side / (len(views) + 1)
