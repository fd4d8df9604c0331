"""DRAGON (Zhou et al. 2023): dual graphs -- a user co-occurrence graph and a frozen multimodal item kNN
graph -- on top of DualGNN's per-modality convolutions, as MMRec's ``models/dragon.py``.

Per modality ``r_m = x + A x + A^2 x`` as :mod:`mmgraph.models.dualgnn`. The modalities are
*concatenated* (MMRec's ``construction: cat``): items ``[r_image ; r_text]``, users
``[w_{u,image} r_image ; w_{u,text} r_text]`` with learned per-user weights. Items then add
``S^(n_mm_layers) i`` over the frozen item graph ``S = sum_m w_m S_m`` (per modality the binary top-``knn_k``
cosine neighbours of the raw features, self included, symmetrically normalised by row degrees; weights
``mm_image_weight`` for image: the run graph's ``freedom`` relation with ``norm: sym``), users add the
softmax-weighted co-occurrence neighbours ``u + sum_v softmax_v(count_uv) u_v`` (``user_cooccurrence``
relation, ``measure: count``, ``user_knn_k`` users). Loss: ``-mean log2 sigmoid(s+ - s-)`` +
``reg_weight * [sum_m mean(P_m[u]^2) + mean(w^2)]``.

MMRec also builds trainable copies of the features and their projections (``image_trs``, ``text_trs``)
that no forward reads; they are left out.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from mmgraph.graph.relations import Relation, relation_adj
from mmgraph.models.dualgnn import DualGraphBase, user_graph_relation
from mmgraph.models.freedom import modality_weights
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNEncoder

ITEM_GRAPH = "knn_mm_sym"


@register("dragon")
class DRAGON(DualGraphBase):
    """DualGNN's per-modality convolutions, concatenated; items add hops on the frozen multimodal kNN item
    graph, users their softmax-weighted co-occurring users. Channels: one per modality."""

    defaults = {"embedding_size": 64, "n_layers": 2, "n_mm_layers": 1, "knn_k": 10, "mm_image_weight": 0.1,
                "modality_weights": None, "aggr_mode": "add", "reg_weight": 0.1, "user_knn_k": 40}

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        item = Relation(ITEM_GRAPH, "freedom", {"k": int(cfg["knn_k"]), "weights": modality_weights(cfg, modalities),
                                                "norm": "sym"})
        return [item, user_graph_relation(int(cfg["user_knn_k"]))]

    def __init__(self, data, config=None):
        super().__init__(data, config)
        self.item_graph = relation_adj(data, ITEM_GRAPH)
        self.item_encoder = LightGCNEncoder(int(self.config["n_mm_layers"]), "last")

    def fuse(self, parts: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        reps = list(parts.values())
        items = torch.cat([r[self.n_users:] for r in reps], 1)
        if len(reps) == 1:
            users = reps[0][: self.n_users]
        else:
            users = torch.cat([r[: self.n_users] * self.weight_u[:, m: m + 1] for m, r in enumerate(reps)], 1)
        items = items + self.item_encoder(items, self.item_graph)
        return self.user_graph_step(users), items
