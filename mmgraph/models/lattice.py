"""LATTICE (Zhang et al., ACM MM 2021): a learned item-item graph mixed with the frozen one.

Follows MMRec's ``models/lattice.py`` (the reference for the published numbers):

* frozen graph per modality ``m``: top-k cosine neighbours of the RAW features (self included), edge
  weight = similarity, ``D^-1/2 A D^-1/2`` with ``d`` the row sums -- the run graph's ``simknn_<m>``
  relation (kind ``anchorrec``);
* learned graph, rebuilt at the first step of every epoch and for every evaluation: the same top-k on
  the PROJECTED (trainable) features ``Linear_m(X_m)``, ``A = sum_m w_m A_m`` with ``w = softmax(modal
  weights)``, then ``D^-1/2 A D^-1/2`` (row sums of the combination);
* ``S = (1 - lambda) S_learned + lambda sum_m w_m S_frozen_m``; the item branch ``h = S^(n_layers) E_item``;
* user-item part: LightGCN over ``D^-1 (A + I)`` (MMRec's LATTICE adjacency: random-walk normalised,
  self loops), ``len(weight_size)`` layers, mean over layers 0..L; or plain MF (``cf_model: mf``);
* items = CF items + ``norm(h)``; loss BPR + ``reg_weight * (|u|^2 + |i+|^2 + |i-|^2) / 2 / batch_size``.

Gradients reach the projections and the modal weights through the learned graph only at the step that
builds it (MMRec detaches the graph for the rest of the epoch). Unlike MMRec, no ``I x I`` matrix is ever
built: the neighbours come from FAISS on the detached projections (exact top-k), and the kept
similarities are recomputed row by row with gradient; the mixed graph is a sparse edge list.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.errors import ConfigError
from mmgraph.graph.hetero import INTERACTS
from mmgraph.graph.relations import Relation, relation_graph
from mmgraph.losses import bpr_loss, l2_reg
from mmgraph.models.base import Batch, GraphRecommender, LossOutput, item_features
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder
from mmgraph.nn.features import ModalityEncoder
from mmgraph.nn.sparse import SparseAdj, gather_rows
from mmgraph.utils.faiss_utils import search_ip

CF_MODELS = ("lightgcn", "mf")


# ------------------------------------------------------------------------------------------ graph pieces
def simknn_relations(modalities: Sequence[str], k_of) -> List[Relation]:
    """The frozen per-modality similarity kNN graphs of LATTICE / MGCN / SMORE: ``simknn_<m>``, top-``k``
    cosine (self included), similarity weights, ``D^-1/2 A D^-1/2`` with row-sum degrees (MMRec's
    ``build_knn_normalized_graph(..., 'sym')``). ``k_of(m)`` gives each modality's ``k``."""
    return [Relation(f"simknn_{m}", "anchorrec", {"feature": m, "k": int(k_of(m))}) for m in modalities]


def rw_self_loop_adj(edge_index: Tensor, n_users: int, n_items: int) -> SparseAdj:
    """``D^-1 (A + I)`` over ``U + I`` nodes (users first) from unique (user, item) edges ``[2, E]``:
    MMRec LATTICE's user-item adjacency (row-normalised, self loops; NOT symmetric)."""
    n = n_users + n_items
    u, i = edge_index[0], edge_index[1] + n_users
    nodes = torch.arange(n, dtype=torch.long, device=edge_index.device)
    rows = torch.cat([u, i, nodes])
    cols = torch.cat([i, u, nodes])
    deg = torch.bincount(rows, minlength=n).to(torch.float32)
    return SparseAdj(torch.stack([rows, cols]), 1.0 / deg[rows], (n, n))


def knn_indices(x: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Exact top-``k`` cosine neighbours of the rows of ``x [N, d]`` (self included), by a FAISS flat
    inner-product search of the L2-normalised rows in query blocks (no ``N x N`` matrix):
    ``(rows [E], cols [E])``, ``E = N min(k, N)``. The model's learned graph, so a search on its current
    parameters rather than a relation of the run graph."""
    xn = F.normalize(x.detach().float(), dim=1).cpu().numpy()
    _, idx = search_ip(xn, xn, int(k), batch_size=4096)
    idx = torch.from_numpy(idx)
    rows = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx)
    keep = idx >= 0
    return rows[keep].to(x.device), idx[keep].to(x.device)


def pair_cosines(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``cos(x[rows], x[cols])`` as ``[E]``, differentiable (all-zero rows give 0)."""
    xn = F.normalize(x, dim=1)
    return (gather_rows(xn, rows) * gather_rows(xn, cols)).sum(-1)


def sym_normalize_rows(rows: Tensor, cols: Tensor, weight: Tensor, n: int) -> Tensor:
    """``w_rc / sqrt(d_r d_c)`` with ``d`` the ROW sums of the (possibly directed) graph; rows with
    degree <= 0 get weight 0 (MMRec's ``compute_normalized_laplacian``), differentiable in ``weight``."""
    deg = weight.new_zeros(n).index_add(0, rows, weight)
    inv = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
    return inv[rows] * weight * inv[cols]


class ItemGraphEdges:
    """A weighted item-item graph as an edge list ``(rows = targets, cols = sources, weight)``:
    ``out[r] = sum w x[c]``; duplicate edges add up. ``weight`` may carry gradient."""

    def __init__(self, rows: Tensor, cols: Tensor, weight: Tensor, n: int):
        self.rows, self.cols, self.weight, self.n = rows, cols, weight, n

    def adj_t(self) -> Tensor:
        """``[n, n]`` torch.sparse CSR (PyG's ``adj_t``: row = target) whose values carry the weights'
        gradient: its product backpropagates to the weights through a sampled product (``O(E d)``
        time, ``O(E)`` memory), not through per-edge ``[E, d]`` messages."""
        coo = torch.sparse_coo_tensor(torch.stack([self.rows, self.cols]), self.weight, (self.n, self.n),
                                      check_invariants=False)
        return coo.coalesce().to_sparse_csr()

    def detached(self) -> SparseAdj:
        """The fixed CSR form (no gradient to the weights)."""
        return SparseAdj(torch.stack([self.rows, self.cols]), self.weight.detach(), (self.n, self.n))

    def to_dense(self) -> Tensor:
        """Dense ``[n, n]`` -- for tests on small graphs only."""
        out = self.weight.new_zeros(self.n, self.n)
        return out.index_put_((self.rows, self.cols), self.weight, accumulate=True)


# ------------------------------------------------------------------------------------------ the model
@register("lattice")
class LATTICE(GraphRecommender):
    """LightGCN (or MF) on ``D^-1 (A + I)`` plus ``norm(S^(n_layers) E_item)`` on the mixed learned /
    frozen item graph (see the module docstring). Keys are MMRec's: ``weight_size`` (its length is the
    number of user-item layers), ``feat_embed_dim``, ``lambda_coeff``, ``n_layers`` (item-graph hops)."""

    multimodal = True
    defaults = {"embedding_size": 64, "feat_embed_dim": 64, "weight_size": [64, 64], "lambda_coeff": 0.9,
                "reg_weight": 0.0, "cf_model": "lightgcn", "n_layers": 1, "knn_k": 10}

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        k = int({**cls.defaults, **config}["knn_k"])
        return simknn_relations(modalities, lambda m: k)

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        if cfg["cf_model"] not in CF_MODELS:
            raise ConfigError(f"lattice: cf_model must be one of {CF_MODELS}, got {cfg['cf_model']!r} "
                              "(MMRec's ngcf variant is not implemented)")
        self.lambda_coeff = float(cfg["lambda_coeff"])
        self.knn_k = int(cfg["knn_k"])
        self.n_item_layers = int(cfg["n_layers"])
        self.batch_size = int(cfg.get("batch_size", 2048))
        self.encoder = LightGCNEncoder(len(cfg["weight_size"]), "mean")
        self.adj = rw_self_loop_adj(data[INTERACTS].edge_index, self.n_users, self.n_items)
        self.modal = ModalityEncoder(item_features(data), int(cfg["feat_embed_dim"]), trainable=True)
        self.modal_weight = nn.Parameter(torch.full((len(self.modal.modalities),), 0.5))
        for m in self.modal.modalities:
            g = relation_graph(data, f"simknn_{m}")
            self.register_buffer(f"frozen_rows_{m}", g.row, persistent=False)
            self.register_buffer(f"frozen_cols_{m}", g.col, persistent=False)
            self.register_buffer(f"frozen_w_{m}", g.edge_weight.float(), persistent=False)
        self.conv = LightGCNConv()
        self._rebuild = True
        self._fixed_graph: Optional[SparseAdj] = None

    # ---- the item graph
    def item_graph(self) -> ItemGraphEdges:
        """``S = (1 - lambda) norm(sum_m w_m A_m(learned)) + lambda sum_m w_m S_m(frozen)``, with
        gradient to the projections, the feature tables and the modal weights."""
        w = torch.softmax(self.modal_weight, 0)
        rows, cols, vals, frows, fcols, fvals = [], [], [], [], [], []
        for j, m in enumerate(self.modal.modalities):
            proj = self.modal.project(m)
            r, c = knn_indices(proj, self.knn_k)
            rows.append(r), cols.append(c), vals.append(w[j] * pair_cosines(proj, r, c))
            frows.append(getattr(self, f"frozen_rows_{m}"))
            fcols.append(getattr(self, f"frozen_cols_{m}"))
            fvals.append(w[j] * getattr(self, f"frozen_w_{m}"))
        rows, cols = torch.cat(rows), torch.cat(cols)
        learned = sym_normalize_rows(rows, cols, torch.cat(vals), self.n_items)
        return ItemGraphEdges(torch.cat([rows, *frows]), torch.cat([cols, *fcols]),
                              torch.cat([(1 - self.lambda_coeff) * learned,
                                         self.lambda_coeff * torch.cat(fvals)]), self.n_items)

    def on_epoch_start(self, epoch: int, generator: Optional[torch.Generator] = None) -> None:
        self._rebuild = True

    def item_branch(self, graph) -> Tensor:
        """``S^(n_layers) E_item`` over an :class:`ItemGraphEdges` (gradient to its weights) or a fixed
        :class:`SparseAdj`."""
        adj = graph.adj_t() if isinstance(graph, ItemGraphEdges) else graph
        h = self.item_emb.weight
        for _ in range(self.n_item_layers):
            h = self.conv(h, adj)
        return h

    def cf(self) -> Tuple[Tensor, Tensor]:
        if self.config["cf_model"] == "mf":
            return self.user_emb.weight, self.item_emb.weight
        return self.propagate()

    def forward(self, graph=None) -> Tuple[Tensor, Tensor]:
        """Users ``[U, d]`` and items ``[I, d]``; ``graph`` default: the item graph of the current
        parameters (as at MMRec's evaluation, which rebuilds it)."""
        if graph is None:
            with torch.no_grad():
                graph = self.item_graph().detached()
        u, i = self.cf()
        return u, i + F.normalize(self.item_branch(graph), dim=1)

    def loss(self, batch: Batch) -> LossOutput:
        if self._rebuild or self._fixed_graph is None:
            graph = self.item_graph()
            self._fixed_graph = graph.detached()
            self._rebuild = False
        else:
            graph = self._fixed_graph
        u_all, i_all = self.forward(graph)
        eu, ep, en = batch.rows(u_all, i_all)
        bpr = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1))
        reg = float(self.config["reg_weight"]) * l2_reg(eu, ep, en, batch_size=self.batch_size)
        return LossOutput(bpr + reg, {"bpr": bpr, "reg": reg}, u_all, i_all)
