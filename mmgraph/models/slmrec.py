"""SLMRec (Tao et al., IEEE TMM 2022): self-supervised learning for multimedia recommendation.

Follows MMRec's ``models/slmrec.py`` (its default ``ssl_task: FAC``, fine and coarse alignment), with
frozen, row-L2-normalised item features ``X_m``:

* branches: LightGCN (mean over layers ``0..layer_num``, ``A_hat``) of ``[E_user; E_item]`` (``id``) and of
  ``[E_user; Linear_m(X_m)]`` per modality -- the same user table in every branch; propagated together
  as channels of one :class:`~mmgraph.nn.conv.LightGCNConv` pass;
* fusion (``mm_fusion_mode: concat``): ``user = Linear_u(concat_b user_b)``, ``item = Linear_i(concat_b item_b)``;
* main loss: in-batch InfoNCE of normalised (user, positive item) at ``temp`` (no sampled negatives);
* FAC (over the batch's positive items, un-normalised, at ``ssl_temp``): ``h = g_id(id item)`` vs
  ``g_1(item of modality 1)``; then down a chain ``h <- g(h)`` for each further modality, the last in
  ``d/2`` dimensions (``h <- g_last(g_mid(h))`` with two modalities, as MMRec's image -> (audio) -> text
  chain whose audio term is commented out; with three, the middle modality's term is kept as in the
  paper). ``L = main + ssl_alpha * FAC``; L2 through Adam's ``weight_decay`` (MMRec: 1e-4).

Modality order: ``image`` first (MMRec's ``v``), then the others as in the data (TikTok: ``audio``, MMRec's
second file ``t``). MMRec scores with the representations of the last training batch (one step stale);
here they are recomputed. Channels: ``id`` and one per modality (the branch outputs before fusion).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.errors import ConfigError
from mmgraph.losses import info_nce_counts, paired_info_nce
from mmgraph.models.base import Batch, Channel, GraphRecommender, LossOutput, item_features
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.features import FeatureTables
from mmgraph.nn.linear import linear
from mmgraph.nn.sparse import gather_rows, split_nodes, unique_rows

ID = "id"


def xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(lin.weight)
    return lin


def ordered_modalities(modalities) -> List[str]:
    """``image`` first (MMRec's ``v``), then the others in their given order."""
    mods = list(modalities)
    return (["image"] if "image" in mods else []) + [m for m in mods if m != "image"]


def unnormalised_infonce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """``CrossEntropy(a b^T / t, diag)``: row ``k`` of ``a [B, d]`` picks row ``k`` of ``b [B, d]``."""
    return F.cross_entropy(a @ b.t() / temperature, torch.arange(a.shape[0], device=a.device))


class FACHeads(nn.Module):
    """SLMRec's fine-and-coarse alignment heads for modalities ``mods`` (in chain order).

    ``steps[j]`` maps the chain state to modality ``j``'s space (``None`` = a chain step without a loss,
    MMRec's absent audio when there are two modalities); ``targets[m]`` projects modality ``m``'s items.
    """

    def __init__(self, mods: List[str], d: int):
        super().__init__()
        self.mods = list(mods)
        plan: List[Optional[str]] = list(mods)
        if len(mods) == 2:
            plan = [mods[0], None, mods[1]]
        self.plan = plan
        self.steps = nn.ModuleList()
        self.targets = nn.ModuleDict()
        for j, m in enumerate(plan):
            last = j == len(plan) - 1 and j > 0
            width = d // 2 if last else d
            self.steps.append(xavier_linear(d, width))
            if m is not None:
                self.targets[m] = xavier_linear(d, width)

    def forward(self, id_items: Tensor, modality_items: Dict[str, Tensor], temperature: float,
                counts: Optional[Tensor] = None) -> Tensor:
        """The FAC loss of the rows ``id_items [n, d]`` and ``modality_items`` (``{m: [n, d]}``); ``counts [n]``:
        each row stands for that many identical batch rows (:func:`~mmgraph.losses.info_nce_counts`, the same
        value as the repeated rows)."""
        h, loss = id_items, id_items.new_zeros(())
        for step, m in zip(self.steps, self.plan):
            h = step(h)
            if m is not None:
                target = self.targets[m](modality_items[m])
                loss = loss + (unnormalised_infonce(h, target, temperature) if counts is None else
                               info_nce_counts(h, target, temperature, counts, normalized=True))
        return loss


@register("slmrec")
class SLMRec(GraphRecommender):
    """ID and per-modality LightGCN branches fused by concatenation; InfoNCE + FAC (module docstring).
    Keys are MMRec's (``recdim``, ``layer_num``, ``temp``, ``ssl_temp``, ``ssl_alpha``)."""

    multimodal = True
    defaults = {"recdim": 64, "layer_num": 3, "reg": 1e-4, "ssl_task": "FAC", "ssl_alpha": 0.01,
                "ssl_temp": 0.1, "mm_fusion_mode": "concat", "temp": 0.2}

    def __init__(self, data, config=None):
        super().__init__(data, {**(config or {}), "embedding_size": int({**self.defaults, **(config or {})}["recdim"])})
        cfg = self.config
        if cfg["ssl_task"] != "FAC":
            raise ConfigError(f"slmrec: only ssl_task FAC (MMRec's default) is implemented, got {cfg['ssl_task']!r}")
        if cfg["mm_fusion_mode"] != "concat":
            raise ConfigError(f"slmrec: only mm_fusion_mode concat is implemented, got {cfg['mm_fusion_mode']!r}")
        d = self.embedding_size
        feats = item_features(data)
        self.mods = ordered_modalities(feats)
        self.features = FeatureTables({m: F.normalize(torch.as_tensor(feats[m]).float(), dim=1) for m in self.mods})
        self.dense = nn.ModuleDict({m: xavier_linear(self.features.dims[m], d) for m in self.mods})
        self.encoder = LightGCNEncoder(int(cfg["layer_num"]), "mean")
        n_branches = len(self.mods) + 1
        self.user_fuse = xavier_linear(n_branches * d, d)
        self.item_fuse = xavier_linear(n_branches * d, d)
        self.fac = FACHeads(self.mods, d)

    def branches(self) -> Tuple[Tensor, Tensor]:
        """Branch outputs ``(users [U, 1 + M, d], items [I, 1 + M, d])``, branch 0 = ``id``."""
        items = torch.stack([self.item_emb.weight] + [linear(self.features.raw(m), self.dense[m].weight,
                                                             self.dense[m].bias) for m in self.mods], 1)
        users = self.user_emb.weight.unsqueeze(1).expand(-1, items.shape[1], -1)
        out = self.encoder(torch.cat([users, items]), self.adj)
        return split_nodes(out, self.n_users)

    def fuse(self, users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
        return self.user_fuse(users.flatten(1)), self.item_fuse(items.flatten(1))

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self.fuse(*self.branches())

    def loss(self, batch: Batch) -> LossOutput:
        """InfoNCE of the fused (user, positive) rows + ``ssl_alpha`` FAC. The fusion is a Linear per node, so
        only the batch's distinct users and positives are fused (other rows on demand for plug-ins); the InfoNCE
        (:func:`~mmgraph.losses.paired_info_nce`) and FAC run on them with their counts. The same values and
        gradients as fusing every node and repeating rows."""
        bu, bi = self.branches()
        user_rows = lambda ids: self.user_fuse(gather_rows(bu, ids).flatten(1))  # noqa: E731
        item_rows = lambda ids: self.item_fuse(gather_rows(bi, ids).flatten(1))  # noqa: E731
        users, u_index = torch.unique(batch.users, return_inverse=True)
        items, i_index, counts = torch.unique(batch.pos, return_inverse=True, return_counts=True)
        main = paired_info_nce(user_rows(users), item_rows(items), u_index, i_index, float(self.config["temp"]))
        pos = unique_rows(bi, items)
        fac = self.fac(pos[:, 0], {m: pos[:, j + 1] for j, m in enumerate(self.mods)}, float(self.config["ssl_temp"]),
                       counts)
        total = main + float(self.config["ssl_alpha"]) * fac
        channels = {name: Channel(users=bu[:, j], items=bi[:, j]) for j, name in enumerate([ID, *self.mods])}
        return LossOutput(total, {"infonce": main, "fac": fac}, user_rows=user_rows, item_rows=item_rows,
                          channels=channels)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        bu, bi = self.branches()
        return {name: (bu[:, j], bi[:, j]) for j, name in enumerate([ID, *self.mods])}
