"""LGMRec (Guo et al., AAAI 2024): local (collaborative + modality graph) and global (hypergraph) embeddings.

Follows MMRec's ``models/lgmrec.py`` (the reference for the published numbers), per modality ``m`` with
frozen features ``X_m``:

* CGE: LightGCN (mean over layers ``0..n_ui_layers``) of the ID embeddings on ``A_hat``;
* MGE: items ``F_m = X_m W_m`` (no bias), users = the mean of their training items' ``F_m``, then
  ``n_mm_layers`` hops of ``A_hat`` (the last layer, no readout);
* GHE: hyperedge assignments ``H_i = gumbel_softmax(X_m V_m, tau=0.2)`` ``[I, hyper_num]`` and
  ``H_u = gumbel_softmax(R X_m V_m)`` (``R`` the binary ``[U, I]`` interactions), both through
  ``dropout(1 - keep_rate)``; ``n_hyper_layer`` rounds of ``lat = H_i^T e_i; e_i = H_i lat; e_u = H_u lat``
  starting from the CGE items;
* ``e = CGE + sum_m norm(MGE_m) + alpha norm(sum_m GHE_m)``;
* loss: BPR + ``cl_weight`` * hypergraph InfoNCE (``tau=0.2``, summed over the batch, against ALL users /
  items) between the modalities' GHE of the batch users and positive items + ``reg_weight`` *
  MMRec-Reg (Frobenius norms of the batch rows / B).

As in MMRec, the Gumbel noise is drawn at evaluation too (only the dropout is off). The contrast is over
the modality pairs ``(a, b)``, ``a < b`` (MMRec: image vs text). Channels: one per modality, its MGE.
"""
from __future__ import annotations

from itertools import combinations
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.errors import ConfigError
from mmgraph.graph.hetero import INTERACTS
from mmgraph.losses import bpr_loss, emb_reg, weighted_logsumexp
from mmgraph.models.base import Batch, Channel, GraphRecommender, LossOutput, item_features
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.dropout import Dropout
from mmgraph.nn.features import FeatureTables
from mmgraph.nn.linear import matmul
from mmgraph.nn.sparse import SparseAdj, split_nodes, unique_rows

TAU = 0.2  # MMRec LGMRec: Gumbel-softmax temperature and InfoNCE temperature


def user_item_matrix(edge_index: Tensor, n_users: int, n_items: int, norm: str = "none") -> SparseAdj:
    """The ``[U, I]`` interaction matrix of unique (user, item) edges ``[2, E]`` as a SparseAdj:
    ``norm='none'`` binary ``R``, ``'mean'`` ``D_u^-1 R`` (a user = the mean of its items), ``'sym'``
    ``D_u^-1/2 R D_i^-1/2`` (the user-item block of ``A_hat``)."""
    u, i = edge_index[0], edge_index[1]
    w = torch.ones(u.numel(), dtype=torch.float32, device=u.device)
    du = torch.bincount(u, minlength=n_users).to(torch.float32)
    di = torch.bincount(i, minlength=n_items).to(torch.float32)
    if norm == "mean":
        w = w / du[u]
    elif norm == "sym":
        w = du[u].rsqrt() * di[i].rsqrt()
    elif norm != "none":
        raise ValueError(f"norm must be none, mean or sym, got {norm!r}")
    return SparseAdj(torch.stack([u, i]), w, (n_users, n_items))


def hyper_infonce(anchor: Tensor, positive: Tensor, all_rows: Union[Tensor, Tuple[Tensor, Tensor]],
                  tau: float = TAU, counts: Optional[Tensor] = None) -> Tensor:
    """MMRec LGMRec's ``ssl_triple_loss``: ``sum_b -log(exp(cos(a_b, p_b)/tau) / sum_j exp(cos(a_b, x_j)/tau))``
    with ``anchor, positive [B, d]`` and ``all_rows [N, d]`` (``B x N`` scores by blocks of rows through
    :func:`~mmgraph.losses.weighted_logsumexp`, never ``N x N``); ``counts [B]`` weights each row (a distinct
    batch node standing for its repeats).

    ``all_rows`` may also be ``(factor [N, h], basis [h, d])`` standing for ``factor @ basis`` (the hypergraph
    embeddings' form, ``h`` = ``hyper_num``): with ``h < d`` the cosines come from ``[B, h] x [h, N]`` products,
    ``cos(a, x_j) = (a_hat basis^T) . factor_j / |factor_j basis|``, instead of ``[B, d] x [d, N]``."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    if isinstance(all_rows, tuple) and all_rows[0].shape[1] < all_rows[1].shape[1]:
        factor, basis = all_rows
        # |factor_j basis| from the [h, h] Gram matrix, floored as F.normalize floors it (eps 1e-12)
        norms = ((factor @ (basis @ basis.t())) * factor).sum(-1).clamp_min(1e-24).sqrt()
        a_side, x_side = a @ (basis.t() / tau), factor / norms.unsqueeze(1)
    else:
        rows = all_rows[0] @ all_rows[1] if isinstance(all_rows, tuple) else all_rows
        a_side, x_side = a / tau, F.normalize(rows, dim=-1)
    w = None if counts is None else counts.to(a.dtype)
    positive_term = (a * p).sum(-1) / tau
    return weighted_logsumexp(a_side, x_side, w) - (positive_term.sum() if w is None else (w * positive_term).sum())


class HyperEmbeddings(NamedTuple):
    """One modality's global (hypergraph) embeddings: ``users = h_users @ lat`` ``[U, d]`` and ``items = h_items
    @ lat`` ``[I, d]``, kept with their factors (``h_* [., hyper_num]``, ``lat [hyper_num, d]``)."""

    users: Tensor
    items: Tensor
    h_users: Tensor
    h_items: Tensor
    lat: Tensor


@register("lgmrec")
class LGMRec(GraphRecommender):
    """Local (CGE + MGE) and global (hypergraph) embeddings; see the module docstring."""

    multimodal = True
    defaults = {"embedding_size": 64, "feat_embed_dim": 64, "cf_model": "lightgcn", "n_ui_layers": 2,
                "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 0.5, "alpha": 0.3,
                "cl_weight": 1e-4, "reg_weight": 1e-6}

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        d = self.embedding_size
        if int(cfg["feat_embed_dim"]) != d:
            raise ConfigError(f"lgmrec: feat_embed_dim ({cfg['feat_embed_dim']}) must equal embedding_size "
                              f"({d}): the modality embeddings are added to the ID embeddings")
        if cfg["cf_model"] not in ("lightgcn", "mf"):
            raise ConfigError(f"lgmrec: cf_model must be lightgcn or mf, got {cfg['cf_model']!r}")
        self.encoder = LightGCNEncoder(int(cfg["n_ui_layers"]) if cfg["cf_model"] == "lightgcn" else 0, "mean")
        self.mm_encoder = LightGCNEncoder(int(cfg["n_mm_layers"]), "last")
        edges = data[INTERACTS].edge_index
        self.R = user_item_matrix(edges, self.n_users, self.n_items, "none")
        self.R_mean = user_item_matrix(edges, self.n_users, self.n_items, "mean")
        self.features = FeatureTables(item_features(data))
        hyper = int(cfg["hyper_num"])
        self.trs = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.zeros(dim, d)))
                                     for m, dim in self.features.dims.items()})
        self.hyper = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.zeros(dim, hyper)))
                                       for m, dim in self.features.dims.items()})
        self.drop = Dropout(p=1.0 - float(cfg["keep_rate"]))

    # ---- pieces
    def mge(self, m: str) -> Tensor:
        """Modality graph embedding ``[U + I, d]`` of modality ``m``."""
        items = matmul(self.features.raw(m), self.trs[m])
        users = self.R_mean.matmul(items)
        return self.mm_encoder(torch.cat([users, items]), self.adj)

    def hyperedges(self, m: str) -> Tuple[Tensor, Tensor]:
        """Soft hyperedge assignments ``(H_u [U, H], H_i [I, H])`` of modality ``m`` (Gumbel-softmax)."""
        ih = matmul(self.features.raw(m), self.hyper[m])
        uh = self.R.matmul(ih)
        return (F.gumbel_softmax(uh, TAU, hard=False, dim=1), F.gumbel_softmax(ih, TAU, hard=False, dim=1))

    def hgnn(self, h_users: Tensor, h_items: Tensor, items: Tensor) -> HyperEmbeddings:
        """``n_hyper_layer`` rounds of hypergraph message passing from the items ``[I, d]``."""
        if int(self.config["n_hyper_layer"]) < 1:
            raise ConfigError("lgmrec: n_hyper_layer must be >= 1")
        i_ret = items
        for _ in range(int(self.config["n_hyper_layer"])):
            lat = h_items.t() @ i_ret
            i_ret = h_items @ lat
        return HyperEmbeddings(h_users @ lat, i_ret, h_users, h_items, lat)

    def parts(self) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, HyperEmbeddings]]:
        """``(final [U + I, d], {m: MGE_m}, {m: GHE_m})``."""
        cge = self.encoder(torch.cat([self.user_emb.weight, self.item_emb.weight]), self.adj)
        mges, ghes = {}, {}
        for m in self.features.modalities:
            h_users, h_items = self.hyperedges(m)
            mges[m] = self.mge(m)
            ghes[m] = self.hgnn(self.drop(h_users), self.drop(h_items), cge[self.n_users:])
        local = cge + sum(F.normalize(v, dim=1) for v in mges.values())
        ghe = sum(torch.cat([g.users, g.items]) for g in ghes.values())
        return local + float(self.config["alpha"]) * F.normalize(ghe, dim=1), mges, ghes

    def forward(self) -> Tuple[Tensor, Tensor]:
        final = self.parts()[0]
        return split_nodes(final, self.n_users)

    def loss(self, batch: Batch) -> LossOutput:
        final, mges, ghes = self.parts()
        u_all, i_all = split_nodes(final, self.n_users)
        eu, ep, en = batch.rows(u_all, i_all)
        bpr = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1))
        cl = final.new_zeros(())
        # a batch row's term depends on its node only: each distinct node once, weighted by its repeats
        users, n_users = torch.unique(batch.users, return_counts=True)
        items, n_items = torch.unique(batch.pos, return_counts=True)
        for a, b in combinations(self.features.modalities, 2):
            ga, gb = ghes[a], ghes[b]
            cl = cl + hyper_infonce(unique_rows(ga.users, users), unique_rows(gb.users, users), (gb.h_users, gb.lat),
                                    counts=n_users) \
                + hyper_infonce(unique_rows(ga.items, items), unique_rows(gb.items, items), (gb.h_items, gb.lat),
                                counts=n_items)
        reg = emb_reg(eu, ep, en)
        total = bpr + float(self.config["cl_weight"]) * cl + float(self.config["reg_weight"]) * reg
        channels = {m: Channel(users=v[: self.n_users], items=v[self.n_users:]) for m, v in mges.items()}
        return LossOutput(total, {"bpr": bpr, "hcl": cl, "reg": reg}, u_all, i_all, channels=channels)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        out = {}
        for m in self.features.modalities:
            v = self.mge(m)
            out[m] = split_nodes(v, self.n_users)
        return out
