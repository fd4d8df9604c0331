"""LightGCN (He et al. 2020) on the symmetric-normalised user-item graph (baselines.md)."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from mmgraph.losses import bpr_loss, emb_reg
from mmgraph.models.base import Batch, GraphRecommender, LossOutput, subgraph_rows
from mmgraph.models.registry import register


@register("lightgcn")
class LightGCN(GraphRecommender):
    """Mean over layers ``0..L`` of ``A_hat^l E``; BPR + Reg on the layer-0 rows of (u, i+, i-)."""

    defaults = {"embedding_size": 64, "n_layers": 2, "reg_weight": 1e-4}
    supports_sampled_graph = True

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self.propagate()

    def loss(self, batch: Batch) -> LossOutput:
        sub = batch.extras.get("subgraph")
        if sub is None:
            u, i = self.forward()
            eu, ep, en = batch.rows(u, i)
        else:  # graph_batching: sampled -- only the batch's sampled neighbourhood is propagated
            hu, hi = self.propagate_subgraph(sub, batch.extras.get("adjacency"))
            eu = hu[sub["user"].src_index]
            ep, en = hi[sub["item"].dst_pos_index], hi[sub["item"].dst_neg_index]
        bpr = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1))
        reg_weight = float(self.config["reg_weight"])
        # the layer-0 rows through index_select (Batch.rows): an embedding lookup's backward takes ~1.5x as long
        reg = reg_weight * emb_reg(*batch.rows(self.user_emb.weight, self.item_emb.weight)) if reg_weight \
            else bpr.new_zeros(())
        if sub is None:
            return LossOutput(bpr + reg, {"bpr": bpr, "reg": reg}, u, i)
        return LossOutput(bpr + reg, {"bpr": bpr, "reg": reg}, user_rows=subgraph_rows(sub["user"].n_id, hu),
                          item_rows=subgraph_rows(sub["item"].n_id, hi))
