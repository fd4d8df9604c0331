"""BM3 (Zhou et al. 2023): bootstrapped multimodal latent views, no negatives (MMRec's implementation)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.losses import emb_reg
from mmgraph.models.base import Batch, Channel, GraphRecommender, LossOutput, item_features
from mmgraph.models.registry import register
from mmgraph.nn.dropout import dropout
from mmgraph.nn.features import ModalityEncoder
from mmgraph.nn.linear import linear
from mmgraph.nn.sparse import gather_rows


def _cos_loss(online: Tensor, target: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


@register("bm3")
class BM3(GraphRecommender):
    """Online = predictor(e); target = dropout_p(sg(e)). Loss (each 1 - mean cosine):
    (u_online, i_target) + (i_online, u_target) + cl_weight * sum_m [(pred(X_m)_i, i_target) +
    (pred(X_m)_i, dropout(X_m)_i)] + reg_weight * Reg(all users, all items).
    Item = LightGCN item output + item ID embedding; score = pred(e_u) . pred(e_i)."""

    multimodal = True
    defaults = {"embedding_size": 64, "n_layers": 1, "dropout": 0.5, "reg_weight": 0.1, "cl_weight": 2.0}

    def __init__(self, data, config=None):
        super().__init__(data, config)
        d = self.embedding_size
        # as MMRec's BM3: Xavier-uniform ID tables; Xavier-normal Linear weights with PyTorch's default biases
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.modal = ModalityEncoder(item_features(data), d, trainable=True, init="xavier_normal_weight")

    def forward(self) -> Tuple[Tensor, Tensor]:
        u, i = self.propagate()
        return u, i + self.item_emb.weight

    def predicted_modality(self, name: str, items: Optional[Tensor] = None) -> Tensor:
        """``predictor(Linear_m(x_m))`` of ``items`` (all when None): ``[n, d]``, the two affine maps applied as
        one (``(P W) x + (P b + c)``: one product per row instead of two, and half the backward)."""
        _, weight, bias = self.predicted_affine(name)
        return linear(self.modal.raw(name, items), weight, bias)

    def predicted_affine(self, name: str) -> Tuple[Tensor, Tensor, Tensor]:
        """``(x_m [I, d_m], P W [d, d_m], P b + c [d])``: :meth:`predicted_modality` as one affine map."""
        lin, pred = self.modal.proj[name], self.predictor
        return self.modal.table(name), pred.weight @ lin.weight, torch.addmv(pred.bias, pred.weight, lin.bias)

    def loss(self, batch: Batch) -> LossOutput:
        u_all, i_all = self.forward()
        p = float(self.config["dropout"])
        users, items = batch.users, batch.pos
        with torch.no_grad():
            u_target = dropout(gather_rows(u_all, users), p)
            i_target = dropout(gather_rows(i_all, items), p)
        u_online = self.predictor(gather_rows(u_all, users))
        i_online = self.predictor(gather_rows(i_all, items))
        loss_ui = _cos_loss(u_online, i_target)
        loss_iu = _cos_loss(i_online, u_target)
        cl = u_all.new_zeros(())
        for name in self.modal.modalities:
            feat = self.modal.project(name, items)
            feat_online = self.predictor(feat)
            with torch.no_grad():
                feat_target = dropout(feat, p)
            cl = cl + _cos_loss(feat_online, i_target) + _cos_loss(feat_online, feat_target)
        # MMRec: EmbLoss over ALL user and item rows, divided by the number of items (its last argument)
        reg = self.config["reg_weight"] * emb_reg(u_all, i_all)
        total = loss_ui + loss_iu + self.config["cl_weight"] * cl + reg

        def user_rows(ids: Tensor) -> Tensor:   # one function for every channel; the batch's users reuse u_online
            return u_online if ids is users else self.predictor(gather_rows(u_all, ids))
        channels = {m: Channel(user_fn=user_rows, item_fn=lambda ids, m=m: self.predicted_modality(m, ids),
                               item_table=lambda m=m: self.predicted_modality(m),
                               item_affine=lambda m=m: self.predicted_affine(m))
                    for m in self.modal.modalities}
        return LossOutput(total, {"ui": loss_ui + loss_iu, "cl": cl, "reg": reg},
                          user_rows=user_rows,
                          item_rows=lambda ids: self.predictor(gather_rows(i_all, ids)), channels=channels)

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        u, i = super().embeddings()
        return self.predictor(u), self.predictor(i)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        users = self.embeddings()[0]
        return {m: (users, self.predicted_modality(m)) for m in self.modal.modalities}
