"""MMGCN (Wei et al., MM 2019): one graph convolution network per modality, as MMRec's ``models/mmgcn.py``.

Per modality ``m``: ``x^0 = norm([P_m ; X_m W_mlp])`` (user preferences ``P_m``; items: the frozen features,
through ``Linear(d_m -> dim_latent[m])`` when the modality has a latent width, else raw), then ``n_layers``
layers, each (the paper's eq. 1, 5 and the *concat* combination that MMRec runs)::

    h     = LeakyReLU(mean_{j in N(v)} x_j W_conv)          # aggregation over the user-item graph
    x_hat = LeakyReLU(Linear(x)) + E_id                       # the ID embedding, shared by the modalities
    x     = LeakyReLU(Linear_g([h ; x_hat]))

The representation is the mean over the modalities of the last ``x`` (``[U + I, d]``); a score is its dot
product. Loss: BPR + ``reg_weight * [mean(E_id[u]^2 + E_id[i]^2) over the batch's (user, item) rows +
mean(P_image^2)]`` (MMRec's terms).

MMRec keeps ``E_id`` and ``P_m`` as plain tensors outside the optimiser (as the authors' code did), so
they stay at their random initialisation and its regulariser has no gradient; ``frozen_embeddings:
true`` reproduces that, the default trains them (the paper's model). MMRec's YAML says ``n_layers: 2``
but its code always stacks three layers; the default here is the three MMRec runs.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.graph.hetero import INTERACTS
from mmgraph.losses import bpr_loss
from mmgraph.models.base import Batch, Channel, LossOutput, Recommender, item_features
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNConv
from mmgraph.nn.features import FeatureTables
from mmgraph.nn.linear import add_linear, linear, matmul
from mmgraph.nn.normalize import row_normalize
from mmgraph.nn.sparse import SparseAdj, gather_rows, split_nodes, unique_rows

log = logging.getLogger(__name__)

#: ``row_normalize``'s floor on a row's norm
_EPS = 1e-12


def mean_adj(edge_index: Tensor, n_users: int, n_items: int) -> SparseAdj:
    """The bipartite graph (both directions, users first) with weight ``1 / deg(target)``: ``A @ x`` is the
    mean over each node's neighbours (MMRec's ``aggr='mean'``; isolated nodes get 0)."""
    u, i = edge_index[0], edge_index[1] + n_users
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    n = n_users + n_items
    deg = torch.bincount(rows, minlength=n).clamp(min=1).float()
    return SparseAdj(torch.stack([rows, cols]), 1.0 / deg[rows], (n, n))


def mean_blocks(edge_index: Tensor, n_users: int, n_items: int) -> Tuple[SparseAdj, SparseAdj]:
    """The two blocks of :func:`mean_adj`: ``(A_ui [U, I], A_iu [I, U])``, each row the mean over that user's items
    (that item's users); ``A = [[0, A_ui], [A_iu, 0]]``."""
    u, i = edge_index[0], edge_index[1]
    du = torch.bincount(u, minlength=n_users).clamp(min=1).float()
    di = torch.bincount(i, minlength=n_items).clamp(min=1).float()
    return (SparseAdj(torch.stack([u, i]), 1.0 / du[u], (n_users, n_items)),
            SparseAdj(torch.stack([i, u]), 1.0 / di[i], (n_items, n_users)))


def _xavier_linear(n_in: int, n_out: int, xavier: bool = True) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    if xavier:
        nn.init.xavier_normal_(lin.weight)
    return lin


class ModalityGCN(nn.Module):
    """One modality's stack (MMRec's ``GCN``): ``forward(features [I, d_m], id_emb [U + I, d], adj)``
    returns ``[U + I, d]``."""

    def __init__(self, n_users: int, dim_feat: int, dim: int, n_layers: int, dim_latent: Optional[int],
                 frozen: bool):
        super().__init__()
        width = int(dim_latent) if dim_latent else dim_feat
        self.mlp = nn.Linear(dim_feat, width) if dim_latent else None
        pref = nn.init.xavier_normal_(torch.empty(n_users, width))
        if frozen:
            self.register_buffer("preference", pref)
        else:
            self.preference = nn.Parameter(pref)
        self.conv = LightGCNConv()
        dims = [width] + [dim] * n_layers
        self.conv_weight = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(dims[l], dims[l])))
                                             for l in range(n_layers)])
        self.linear = nn.ModuleList([_xavier_linear(dims[l], dim) for l in range(n_layers)])
        # MMRec initialises the first combination layer with Xavier, the others with PyTorch's default
        self.combine = nn.ModuleList([_xavier_linear(dims[l] + dim, dim, xavier=l == 0) for l in range(n_layers)])

    def forward(self, features: Tensor, id_emb: Tensor, adj: SparseAdj,
                blocks: Optional[Tuple[SparseAdj, SparseAdj]] = None) -> Tensor:
        return self.last(*self.hidden(features, id_emb, adj, blocks), id_emb)

    def hidden(self, features: Tensor, id_emb: Tensor, adj: SparseAdj,
               blocks: Optional[Tuple[SparseAdj, SparseAdj]] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Every layer but the last's product and combination, over all nodes: the last layer's input ``x`` and
        its neighbour mean ``A x`` (``[U + I, d_l]`` each; None without layers). :meth:`last` finishes the layer on
        the rows that are needed, ``h = LeakyReLU((A x) W_conv)`` and the combination being row-wise.

        ``blocks``: ``(A_ui, A_iu)`` of :func:`mean_blocks`; with two layers or more, the first one is then computed
        per side (:meth:`first_layer`), else over the joint ``[U + I, width]`` table."""
        if blocks is not None and len(self.conv_weight) >= 2:
            x = self.first_layer(features, id_emb, blocks)
            first = 1
        else:
            items = linear(features, self.mlp.weight, self.mlp.bias) if self.mlp is not None else features
            x = row_normalize(torch.cat([self.preference, items], 0))
            first = 0
        last = len(self.conv_weight) - 1
        for layer in range(first, last):
            h = F.leaky_relu(self.conv(matmul(x, self.conv_weight[layer]), adj))
            x = self._combine(layer, x, h, id_emb)
        return x, (self.conv(x, adj) if first <= last else None)

    def first_layer(self, features: Tensor, id_emb: Tensor, blocks: Tuple[SparseAdj, SparseAdj]) -> Tensor:
        """The first layer's output ``[U + I, d]``, each side from the other's rows (the graph is bipartite): items
        aggregate the users' normalised preferences before the convolution's product (``(A_iu P0) W``: a product
        of ``I`` rows, not ``U``); users aggregate the items' products, which come straight from narrow features
        when the MLP widens them (:meth:`folds_mlp`), or, for frozen raw features, from their aggregation
        ``A_ui norm(X)``, a constant computed once. The same values as the joint form, to float rounding."""
        ui, iu = blocks
        conv_w, lin = self.conv_weight[0], self.linear[0]
        id_users, id_items = split_nodes(id_emb, ui.shape[0])
        users, users_mean = self._user_inputs(iu)                             # [U, width], A_iu users [I, width]
        h_items = F.leaky_relu(matmul(users_mean, conv_w))
        if self.folds_mlp():
            conv_items, lin_items = self._folded_item_products(features)
            h_users = F.leaky_relu(ui.matmul(conv_items))
        elif self.mlp is None and not features.requires_grad:
            items, aggregated = self._constant_items(features, ui)
            h_users = F.leaky_relu(matmul(aggregated, conv_w))
            lin_items = linear(items, lin.weight, lin.bias)
        else:
            items = row_normalize(linear(features, self.mlp.weight, self.mlp.bias) if self.mlp is not None
                                  else features)
            h_users = F.leaky_relu(ui.matmul(matmul(items, conv_w)))
            lin_items = linear(items, lin.weight, lin.bias)
        return torch.cat([self._combine(0, None, h_users, id_users, linear(users, lin.weight, lin.bias)),
                          self._combine(0, None, h_items, id_items, lin_items)], 0)

    def _user_inputs(self, iu: SparseAdj) -> Tuple[Tensor, Tensor]:
        """``(norm(P) [U, width], A_iu norm(P) [I, width])``; with frozen preferences (``frozen_embeddings``, a
        buffer) both are constants, computed once per (preferences, graph) pair (and again after the preferences
        change in place: a checkpoint loaded into the model)."""
        pref = self.preference
        if pref.requires_grad:
            users = row_normalize(pref)
            return users, iu.matmul(users)
        cached = self.__dict__.get("_constant_users")
        if cached is None or cached[0] is not pref or cached[1] != pref._version or cached[2] is not iu:
            with torch.no_grad():
                users = row_normalize(pref)
                cached = (pref, pref._version, iu, users, iu.matmul(users))
            self.__dict__["_constant_users"] = cached
        return cached[3], cached[4]

    def _constant_items(self, features: Tensor, ui: SparseAdj) -> Tuple[Tensor, Tensor]:
        """``(norm(X) [I, width], A_ui norm(X) [U, width])`` of frozen raw features, computed once per (features,
        graph) pair (a model moved to another device recomputes them)."""
        cached = self.__dict__.get("_constant")
        if cached is None or cached[0] is not features or cached[1] is not ui:
            with torch.no_grad():
                items = row_normalize(features)
                cached = (features, ui, items, ui.matmul(items))
            self.__dict__["_constant"] = cached
        return cached[2], cached[3]

    def folds_mlp(self) -> bool:
        """Whether the first layer takes its item rows' products straight from the features
        (:meth:`_folded_item_products`): when the MLP widens them (``d_m < dim_latent``: TikTok's 128-d image
        features to 256) and a second layer consumes the first one's output (so that its input is never needed
        itself)."""
        return (self.mlp is not None and self.mlp.in_features < self.mlp.out_features
                and len(self.conv_weight) >= 2)

    def _folded_item_products(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """``(x0 W_conv0 [I, width], Linear_0(x0) [I, d])`` for the item rows of ``x0 = norm(F W_m^T + b_m)``,
        without forming them: item ``i``'s row is ``s_i (W_m f_i + b_m)`` with ``1 / s_i = ||W_m f_i + b_m|| =
        sqrt(f_i^T (W_m^T W_m) f_i + 2 f_i . W_m^T b_m + |b_m|^2)``, so its products are ``s_i (f_i (W_m^T W) + b_m
        W)``: products of the narrow features (``[I, d_m]``) with the folded weights, in place of the ``[I, width]``
        rows, their products and the MLP's (same values to float rounding; TikTok: a 5-6 % shorter step)."""
        wm, bm = self.mlp.weight, self.mlp.bias                       # [width, d_m], [width]
        conv_w, lin = self.conv_weight[0], self.linear[0]
        sq = (matmul(features, wm.t() @ wm) * features).sum(1) + 2 * (features @ (wm.t() @ bm)) + bm.dot(bm)
        scale = sq.clamp_min(_EPS * _EPS).rsqrt().unsqueeze(1)         # = 1 / max(||x0_i||, eps), as row_normalize
        conv_items = linear(features, conv_w.t() @ wm, bm @ conv_w) * scale
        lin_items = torch.addcmul(lin.bias, linear(features, lin.weight @ wm, lin.weight @ bm), scale)
        return conv_items, lin_items

    def last(self, x: Tensor, ax: Optional[Tensor], id_emb: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """The last layer's output ``[U + I, d]``, or its rows ``rows`` (distinct node ids) ``[n, d]``, from
        :meth:`hidden`'s ``(x, A x)``: on rows, the convolution's product too is only taken on them."""
        if ax is None:
            return x if rows is None else unique_rows(x, rows)
        if rows is not None:
            x, ax, id_emb = unique_rows(x, rows), unique_rows(ax, rows), unique_rows(id_emb, rows)
        layer = len(self.conv_weight) - 1
        return self._combine(layer, x, F.leaky_relu(matmul(ax, self.conv_weight[layer])), id_emb)

    def _combine(self, layer: int, x: Optional[Tensor], h: Tensor, id_emb: Tensor,
                 x_linear: Optional[Tensor] = None) -> Tensor:
        """``LeakyReLU(Linear_g([h ; LeakyReLU(Linear(x)) + E_id]))``, the concatenation as two products (the
        same values, without copying ``h`` into a wider buffer and its gradient out of it); ``x_linear``:
        ``Linear(x)`` when already computed (then ``x`` may be None)."""
        lin = self.linear[layer]
        if x_linear is None:
            x_linear = linear(x, lin.weight, lin.bias)
        x_hat = F.leaky_relu(x_linear) + id_emb
        g = self.combine[layer]
        width = h.shape[1]
        return F.leaky_relu(add_linear(linear(h, g.weight[:, :width], g.bias), x_hat, g.weight[:, width:]))


@register("mmgcn")
class MMGCN(Recommender):
    """A GCN per modality over the user-item graph (mean aggregation, concat combination with a shared ID
    embedding); the representation is the mean of the modalities' outputs. Channels: one per modality."""

    multimodal = True
    defaults = {"embedding_size": 64, "n_layers": 3, "reg_weight": 0.0, "dim_latent": {"image": 256},
                "frozen_embeddings": False}

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        d = self.embedding_size
        feats = item_features(data)
        self.modalities: List[str] = list(feats)
        self.features = FeatureTables(feats, trainable=False)
        frozen = bool(cfg["frozen_embeddings"])
        id_emb = nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, d))
        if frozen:
            self.register_buffer("id_emb", id_emb)
        else:
            self.id_emb = nn.Parameter(id_emb)
        latent = dict(cfg.get("dim_latent") or {})
        absent = sorted(set(latent) - set(feats))
        if absent:
            # the default names image, which a text-only dataset lacks: worth a note; a key the user set, a warning
            level = logging.INFO if latent == self.defaults["dim_latent"] else logging.WARNING
            log.log(level, "mmgcn: dim_latent names %s, not a modality of this dataset (%s): ignored",
                    ", ".join(absent), ", ".join(feats) or "none")
        self.gcn = nn.ModuleDict({m: ModalityGCN(self.n_users, int(f.shape[1]), d, int(cfg["n_layers"]),
                                                 latent.get(m), frozen) for m, f in feats.items()})
        edge_index = data[INTERACTS].edge_index
        self.adj = mean_adj(edge_index, self.n_users, self.n_items)
        self.adj_ui, self.adj_iu = mean_blocks(edge_index, self.n_users, self.n_items)

    def parts(self) -> Dict[str, Tensor]:
        """``{modality: [U + I, d]}``."""
        return {m: self.gcn[m](self.features.raw(m), self.id_emb, self.adj, self.blocks()) for m in self.modalities}

    def blocks(self) -> Tuple[SparseAdj, SparseAdj]:
        """``(A_ui, A_iu)``: the first layer's aggregations, per side (:meth:`ModalityGCN.first_layer`)."""
        return self.adj_ui, self.adj_iu

    def _split(self, parts: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        rep = torch.stack(list(parts.values())).mean(0)
        return split_nodes(rep, self.n_users)

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self._split(self.parts())

    def loss(self, batch: Batch) -> LossOutput:
        # every layer but the last's combination runs over all nodes (the aggregations need them); the last
        # combination only on the batch's distinct users and items, and on the rows a plug-in asks for
        states = {m: self.gcn[m].hidden(self.features.raw(m), self.id_emb, self.adj, self.blocks())
                  for m in self.modalities}

        def modality_rows(m: str, nodes: Tensor) -> Tensor:
            return self.gcn[m].last(*states[m], self.id_emb, nodes)

        def rows(nodes: Tensor, modality: Optional[str] = None) -> Tensor:
            """Final (or one modality's) representations of the node ids ``nodes`` (repeats allowed)."""
            uniq, inv = torch.unique(nodes, return_inverse=True)
            if modality is not None:
                return gather_rows(modality_rows(modality, uniq), inv)
            return gather_rows(torch.stack([modality_rows(m, uniq) for m in self.modalities]).mean(0), inv)

        n = batch.users.shape[0]
        items = self.n_users + torch.cat([batch.pos, batch.neg])
        rep = rows(torch.cat([batch.users, items]))
        eu, ep, en = rep[:n], rep[n:2 * n], rep[2 * n:]
        bpr = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1))
        weight = float(self.config["reg_weight"])
        # at weight 0 (the default) the term is skipped: the same loss and gradients, without the passes over the
        # [U, 256] preference table it costs forward and backward (~5 ms of a TikTok step)
        reg = weight * self.regulariser(batch.users, items) if weight else bpr.new_zeros(())
        offset = self.n_users
        channels = {m: Channel(user_fn=lambda ids, m=m: rows(ids, m), item_fn=lambda ids, m=m: rows(ids + offset, m))
                    for m in self.modalities}
        return LossOutput(bpr + reg, {"bpr": bpr, "reg": reg}, user_rows=lambda ids: rows(ids),
                          item_rows=lambda ids: rows(ids + offset), channels=channels)

    def regulariser(self, users: Tensor, items: Tensor) -> Tensor:
        """MMRec's ``mean(E_id[u]^2 + E_id[i]^2)`` over the batch's 2B (user, item) rows (``items``: node ids,
        positives then negatives; users counted twice) ``+ mean(P_image^2)``."""
        idu = gather_rows(self.id_emb, users)
        idi = gather_rows(self.id_emb, items)
        reg = (2 * idu.pow(2).sum() + idi.pow(2).sum()) / idi.numel()
        if "image" in self.gcn:
            reg = reg + self.gcn["image"].preference.pow(2).mean()
        return reg

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        return {m: split_nodes(p, self.n_users) for m, p in self.parts().items()}
