"""MF-BPR: matrix factorisation trained with BPR (baselines.md)."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from mmgraph.losses import bpr_loss, emb_reg
from mmgraph.models.base import Batch, LossOutput, Recommender, xavier_embedding
from mmgraph.models.registry import register


@register("mf")
class MFBPR(Recommender):
    """``score(u, i) = e_u . e_i``; loss = BPR + reg_weight * MMRec-Reg(e_u, e_i+, e_i-)."""

    defaults = {"embedding_size": 64, "reg_weight": 1e-4}

    def __init__(self, dataset, config=None):
        super().__init__(dataset, config)
        self.user_emb = xavier_embedding(self.n_users, self.embedding_size, "normal")
        self.item_emb = xavier_embedding(self.n_items, self.embedding_size, "normal")

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def loss(self, batch: Batch) -> LossOutput:
        u, i = self.forward()
        eu, ep, en = batch.rows(u, i)
        bpr = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1))
        reg = self.config["reg_weight"] * emb_reg(eu, ep, en)
        return LossOutput(bpr + reg, {"bpr": bpr, "reg": reg}, u, i)
