"""DualGNN (Wang et al., TMM 2021): per-modality graph convolution plus a user co-occurrence graph, as
MMRec's ``models/dualgnn.py``.

Per modality ``m``: ``x = norm([P_m ; MLP_m(X_m)])`` with user preferences ``P_m [U, d]`` and
``MLP_m = Linear(4d -> d) . LeakyReLU . Linear(d_m -> 4d)`` on the frozen features, then ``n_layers``
convolutions over the user-item graph (``aggr_mode add``: ``D^-1/2 A D^-1/2``; ``mean``: the neighbours'
mean) summed with the input, ``r_m = x + A x + A^2 x``.

Users fuse the modalities with learned per-user weights, ``u = sum_m w_{u,m} r_m[u]`` (``w`` initialised
as a softmax over the modalities; one modality: no weight, as MMRec), items sum them, ``i = sum_m r_m[i]``.
The user co-occurrence graph (the run graph's ``user_cooccurrence`` relation with ``measure: count``:
each user's ``user_knn_k`` users sharing the most training items, built sparse) adds
``u <- u + sum_v softmax_v(count_uv) u_v``. Loss: ``-mean log2 sigmoid(s+ - s-)`` + ``reg_weight *
[sum_m mean(P_m[u]^2) over the batch users + mean(w^2)]``.

Differences from MMRec, all without effect on the trained scores: users with fewer than ``k``
co-occurring users keep just those (MMRec pads the list with random repeats of them, which re-weights the
softmax each epoch); the unused per-item weights (MMRec regularises them but never reads them) are left out.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

from mmgraph.errors import ConfigError
from mmgraph.graph.hetero import INTERACTS
from mmgraph.graph.relations import Relation, interaction_adj, relation_graph
from mmgraph.losses import bpr_loss
from mmgraph.models.base import Batch, Channel, LossOutput, Recommender, item_features
from mmgraph.models.mmgcn import mean_adj
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder
from mmgraph.nn.features import FeatureTables
from mmgraph.nn.linear import linear
from mmgraph.nn.normalize import row_normalize
from mmgraph.nn.sparse import SparseAdj, gather_rows, split_nodes

USER_GRAPH = "user_cocount"
LN2 = math.log(2.0)


def user_graph_relation(k: int) -> Relation:
    """The user-user relation DualGNN / DRAGON read: top-``k`` users by number of shared training items."""
    return Relation(USER_GRAPH, "user_cooccurrence", {"k": int(k), "measure": "count"})


def softmax_user_graph(data, name: str = USER_GRAPH) -> SparseAdj:
    """``[U, U]`` adjacency with each user's neighbour weights ``softmax(count)`` over its neighbours."""
    g = relation_graph(data, name, "user")
    w = softmax(g.edge_weight.float(), g.row, num_nodes=g.num_nodes)
    return SparseAdj(torch.stack([g.row, g.col]), w, (g.num_nodes, g.num_nodes))


def ui_adjacency(data, aggr_mode: str) -> SparseAdj:
    """The user-item graph over ``U + I`` nodes: ``add`` = symmetric-normalised, ``mean`` = neighbour mean."""
    if aggr_mode == "add":
        return interaction_adj(data)
    if aggr_mode == "mean":
        n_users, n_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
        return mean_adj(data[INTERACTS].edge_index, n_users, n_items)
    raise ConfigError(f"aggr_mode must be add or mean, got {aggr_mode!r}")


class ModalityBranch(nn.Module):
    """``forward(features [I, d_m], adj, encoder) -> [U + I, d]``: preferences and the feature MLP,
    normalised, propagated (MMRec's ``GCN`` of DualGNN / DRAGON)."""

    def __init__(self, n_users: int, dim_feat: int, dim: int):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Linear(dim_feat, 4 * dim)
        self.mlp_1 = nn.Linear(4 * dim, dim)

    def forward(self, features: Tensor, adj: SparseAdj, encoder: LightGCNEncoder) -> Tensor:
        hidden = F.leaky_relu(linear(features, self.mlp.weight, self.mlp.bias))
        x = row_normalize(torch.cat([self.preference, linear(hidden, self.mlp_1.weight, self.mlp_1.bias)], 0))
        return encoder(x, adj)


class DualGraphBase(Recommender):
    """Shared by DualGNN and DRAGON: the per-modality branches, the per-user modality weights and the
    user co-occurrence graph. Subclasses implement :meth:`fuse` ``(parts) -> (users, items)``."""

    multimodal = True

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        return [user_graph_relation(int(cfg["user_knn_k"]))]

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        d = self.embedding_size
        feats = item_features(data)
        self.modalities: List[str] = list(feats)
        self.features = FeatureTables(feats, trainable=False)
        self.branches = nn.ModuleDict({m: ModalityBranch(self.n_users, int(f.shape[1]), d) for m, f in feats.items()})
        self.encoder = LightGCNEncoder(int(cfg["n_layers"]), "sum")
        self.adj = ui_adjacency(data, str(cfg["aggr_mode"]))
        self.user_graph = softmax_user_graph(data)
        self.user_conv = LightGCNConv()
        # MMRec: Xavier-normal draws, then a softmax over the modalities as the starting value
        self.weight_u = nn.Parameter(F.softmax(nn.init.xavier_normal_(torch.empty(self.n_users, len(feats), 1)), 1)
                                     .squeeze(-1))

    def parts(self) -> Dict[str, Tensor]:
        """``{modality: [U + I, d]}``."""
        return {m: self.branches[m](self.features.raw(m), self.adj, self.encoder) for m in self.modalities}

    def fuse(self, parts: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self.fuse(self.parts())

    def user_graph_step(self, users: Tensor) -> Tensor:
        """``u + sum_v softmax(count_uv) u_v``."""
        return users + self.user_conv(users, self.user_graph)

    def extra_reg(self) -> Tensor:
        return self.weight_u.pow(2).mean()

    def loss(self, batch: Batch) -> LossOutput:
        parts = self.parts()
        u_all, i_all = self.fuse(parts)
        eu, ep, en = batch.rows(u_all, i_all)
        bpr = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1)) / LN2  # log2, as MMRec
        reg = sum(gather_rows(self.branches[m].preference, batch.users).pow(2).mean() for m in self.modalities)
        reg = float(self.config["reg_weight"]) * (reg + self.extra_reg())
        channels = {m: Channel(users=p[: self.n_users], items=p[self.n_users:]) for m, p in parts.items()}
        return LossOutput(bpr + reg, {"bpr": bpr, "reg": reg}, u_all, i_all, channels=channels)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        return {m: split_nodes(p, self.n_users) for m, p in self.parts().items()}


@register("dualgnn")
class DualGNN(DualGraphBase):
    """Per-modality convolutions fused by learned per-user weights (items: sum), plus a softmax-weighted
    user co-occurrence graph. Channels: one per modality."""

    defaults = {"embedding_size": 64, "n_layers": 2, "aggr_mode": "add", "reg_weight": 0.1, "user_knn_k": 40}

    def fuse(self, parts: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        reps = list(parts.values())
        items = torch.stack([r[self.n_users:] for r in reps]).sum(0)
        if len(reps) == 1:
            users = reps[0][: self.n_users]
        else:
            # element-wise: an einsum here runs as a [U, d, M] x [U, M, 1] bmm, several times slower at M = 2
            users = sum(r[: self.n_users] * self.weight_u[:, m:m + 1] for m, r in enumerate(reps))
        return self.user_graph_step(users), items
