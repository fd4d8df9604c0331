"""Sparse item-item graphs: the :class:`ItemGraph` container, kNN results and edge-weight normalisation.

Convention (matrix / "row gathers" convention, the same as ``torch.sparse.mm(A, H)``, MMRec and
:class:`mmgraph.nn.sparse.SparseAdj`): an edge ``(row, col)`` with weight ``w`` stored as
``edge_index[:, e] = (row, col)`` means that ``row`` aggregates from its neighbour ``col``::

    h_new[row] = sum_col  w[row, col] * h[col]

i.e. messages flow ``col -> row``; ``row`` is the item whose neighbour list was computed. Edges are
kept sorted by ``(row, col)`` without duplicates. ``row_sums()`` are therefore the sums over each
item's own neighbour list (1 for a row-stochastic graph).

PyTorch Geometric's ``MessagePassing`` uses the opposite order (``edge_index[0]`` = source,
``edge_index[1]`` = target); :meth:`ItemGraph.to_pyg` returns the flipped ``edge_index`` and
:func:`mmgraph.graph.hetero.build_hetero_data` stores item-item relations that way.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from mmgraph.errors import ConfigError, DataError

NORMS = ("none", "rw", "uniform", "sym")


class KNNResult(NamedTuple):
    """Top-k neighbour lists, one row per item, sorted by decreasing similarity (ties: lower id first).

    ``indices [N, k]`` int64 neighbour ids, ``-1`` where a row has fewer than ``k`` neighbours
    (e.g. items with an all-zero feature row, or fewer than ``k`` candidates);
    ``similarities [N, k]`` float32, ``-inf`` at the padded slots.
    """

    indices: np.ndarray
    similarities: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """``[N, k]`` bool: which slots hold a real neighbour."""
        return self.indices >= 0

    def to_item_graph(self, weight: str = "similarity", num_nodes: Optional[int] = None) -> "ItemGraph":
        """The neighbour lists as a graph; ``weight`` is ``'similarity'`` or ``'binary'`` (all 1)."""
        if weight not in ("similarity", "binary"):
            raise ConfigError(f"weight must be 'similarity' or 'binary', got {weight!r}")
        w = self.similarities if weight == "similarity" else None
        return ItemGraph.from_topk(self.indices, w, num_nodes=num_nodes)


def _sort_key(rows: Tensor, cols: Tensor, num_nodes: int) -> Tensor:
    return rows * int(num_nodes) + cols


@dataclass
class ItemGraph:
    """A weighted sparse ``[N, N]`` item-item graph ``(edge_index [2, E] int64, edge_weight [E] float32)``.

    See the module docstring for the (row, col) convention. Construct through :meth:`from_edges`
    or :meth:`from_topk` to get sorted, duplicate-free edges; the raw constructor trusts its input
    (it only checks shapes and converts dtypes).
    """

    edge_index: Tensor
    edge_weight: Tensor
    num_nodes: int

    def __post_init__(self) -> None:
        self.edge_index = torch.as_tensor(self.edge_index, dtype=torch.long)
        self.edge_weight = torch.as_tensor(self.edge_weight, dtype=torch.float32)
        self.num_nodes = int(self.num_nodes)
        if self.edge_index.dim() != 2 or self.edge_index.size(0) != 2:
            raise DataError(f"edge_index must have shape [2, E], got {tuple(self.edge_index.shape)}")
        if self.edge_weight.shape != (self.edge_index.size(1),):
            raise DataError(f"edge_weight must have shape [E]={self.edge_index.size(1)}, "
                            f"got {tuple(self.edge_weight.shape)}")
        if self.edge_index.numel() and (int(self.edge_index.min()) < 0
                                        or int(self.edge_index.max()) >= self.num_nodes):
            raise DataError(f"edge_index has node ids outside 0..{self.num_nodes - 1}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_edges(cls, rows, cols, weights=None, num_nodes: Optional[int] = None,
                   reduce: str = "sum") -> "ItemGraph":
        """Build from edge lists, sorting by ``(row, col)`` and merging duplicates (``sum``/``max``/``mean``)."""
        rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, Tensor) else rows, dtype=torch.long)
        cols = torch.as_tensor(np.asarray(cols) if not isinstance(cols, Tensor) else cols, dtype=torch.long)
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        if weights is None:
            weights = torch.ones(rows.numel(), dtype=torch.float32)
        else:
            weights = torch.as_tensor(np.asarray(weights) if not isinstance(weights, Tensor) else weights,
                                      dtype=torch.float32).reshape(-1)
        if not (rows.numel() == cols.numel() == weights.numel()):
            raise DataError("rows, cols and weights must have the same length")
        if num_nodes is None:
            num_nodes = int(max(rows.max(), cols.max())) + 1 if rows.numel() else 0
        g = cls(torch.stack([rows, cols]), weights, num_nodes)
        return g.coalesce(reduce=reduce)

    @classmethod
    def from_topk(cls, indices, weights=None, num_nodes: Optional[int] = None) -> "ItemGraph":
        """From ``[N, k]`` neighbour lists (row ``i`` lists item ``i``'s neighbours; ``-1`` = padding)."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices,
                              dtype=torch.long)
        if idx.dim() != 2:
            raise DataError(f"indices must be [N, k], got shape {tuple(idx.shape)}")
        n = idx.size(0) if num_nodes is None else int(num_nodes)
        rows = torch.arange(idx.size(0), dtype=torch.long).unsqueeze(1).expand_as(idx)
        keep = idx >= 0
        if weights is None:
            w = torch.ones(int(keep.sum()), dtype=torch.float32)
        else:
            wt = torch.as_tensor(np.asarray(weights) if not isinstance(weights, Tensor) else weights,
                                 dtype=torch.float32)
            if wt.shape != idx.shape:
                raise DataError(f"weights shape {tuple(wt.shape)} != indices shape {tuple(idx.shape)}")
            w = wt[keep]
        return cls.from_edges(rows[keep], idx[keep], w, num_nodes=n)

    @classmethod
    def empty(cls, num_nodes: int) -> "ItemGraph":
        return cls(torch.zeros((2, 0), dtype=torch.long), torch.zeros(0), num_nodes)

    # ------------------------------------------------------------------ basic views
    @property
    def num_edges(self) -> int:
        return int(self.edge_index.size(1))

    @property
    def row(self) -> Tensor:
        return self.edge_index[0]

    @property
    def col(self) -> Tensor:
        return self.edge_index[1]

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def to(self, device) -> "ItemGraph":
        return ItemGraph(self.edge_index.to(device), self.edge_weight.to(device), self.num_nodes)

    def coalesce(self, reduce: str = "sum") -> "ItemGraph":
        """Sort edges by ``(row, col)`` and merge duplicates with ``reduce`` (``sum``, ``max``, ``mean``)."""
        if reduce not in ("sum", "max", "mean"):
            raise ConfigError(f"reduce must be sum, max or mean, got {reduce!r}")
        if self.num_edges == 0:
            return ItemGraph.empty(self.num_nodes).to(self.device)
        key = _sort_key(self.row, self.col, self.num_nodes)
        uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
        if uniq.numel() == key.numel():
            order = torch.argsort(key)
            return ItemGraph(self.edge_index[:, order], self.edge_weight[order], self.num_nodes)
        w = torch.zeros(uniq.numel(), dtype=self.edge_weight.dtype, device=self.device)
        red = {"sum": "sum", "max": "amax", "mean": "mean"}[reduce]
        w = w.scatter_reduce(0, inverse, self.edge_weight, reduce=red, include_self=False)
        n = self.num_nodes
        ei = torch.stack([torch.div(uniq, n, rounding_mode="floor"), uniq % n])
        return ItemGraph(ei, w, n)

    def row_sums(self) -> Tensor:
        """``[N]`` float32: sum of each row's outgoing (neighbour-list) weights."""
        out = torch.zeros(self.num_nodes, dtype=torch.float32, device=self.device)
        return out.index_add_(0, self.row, self.edge_weight)

    def row_counts(self) -> Tensor:
        """``[N]`` int64: number of neighbours listed for each item."""
        return torch.bincount(self.row, minlength=self.num_nodes)

    def neighbours(self, item: int) -> Tuple[Tensor, Tensor]:
        """``(neighbour ids, weights)`` of one item (edges are sorted by row)."""
        lo = int(torch.searchsorted(self.row, torch.tensor([item], device=self.device))[0])
        hi = int(torch.searchsorted(self.row, torch.tensor([item], device=self.device), right=True)[0])
        return self.col[lo:hi], self.edge_weight[lo:hi]

    # ------------------------------------------------------------------ conversions
    def to_sparse_coo(self) -> Tensor:
        return torch.sparse_coo_tensor(self.edge_index, self.edge_weight, (self.num_nodes, self.num_nodes),
                                       is_coalesced=True, check_invariants=False)

    def to_sparse_csr(self) -> Tensor:
        """``torch.sparse_csr_tensor`` ``A`` with ``A[row, col] = w`` (so ``A @ H`` propagates)."""
        crow = torch.zeros(self.num_nodes + 1, dtype=torch.long, device=self.device)
        crow[1:] = torch.cumsum(self.row_counts(), 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            return torch.sparse_csr_tensor(crow, self.col.contiguous(), self.edge_weight.contiguous(),
                                           (self.num_nodes, self.num_nodes), check_invariants=False)

    def to_sparse_adj(self):
        """A :class:`mmgraph.nn.sparse.SparseAdj` (CSR matmul with a custom backward)."""
        from mmgraph.nn.sparse import SparseAdj
        return SparseAdj(self.edge_index, self.edge_weight, (self.num_nodes, self.num_nodes))

    def to_dense(self) -> Tensor:
        """Dense ``[N, N]`` matrix -- for tests and tiny graphs only."""
        out = torch.zeros((self.num_nodes, self.num_nodes), dtype=torch.float32, device=self.device)
        out.index_put_((self.row, self.col), self.edge_weight, accumulate=True)
        return out

    def to_pyg(self) -> Tuple[Tensor, Tensor]:
        """``(edge_index, edge_weight)`` in PyG's source -> target order (``edge_index.flip(0)``)."""
        return self.edge_index.flip(0), self.edge_weight

    @classmethod
    def from_pyg(cls, edge_index: Tensor, edge_weight: Optional[Tensor], num_nodes: int) -> "ItemGraph":
        """Inverse of :meth:`to_pyg`."""
        return cls.from_edges(edge_index[1], edge_index[0], edge_weight, num_nodes)

    def propagate(self, x: Tensor) -> Tensor:
        """``A @ x``: ``out[row] = sum_col w[row, col] x[col]`` (gather/scatter; differentiable in ``x``)."""
        msg = x[self.col] * self.edge_weight.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        out = torch.zeros((self.num_nodes,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.row, msg)

    # ------------------------------------------------------------------ transforms
    def normalize(self, norm: str) -> "ItemGraph":
        """Return a copy with re-weighted edges; see :func:`normalize_graph`."""
        return normalize_graph(self, norm)

    def symmetrize(self, reduce: str = "max") -> "ItemGraph":
        """Union of the graph and its transpose; duplicate edges merged with ``reduce``."""
        ei = torch.cat([self.edge_index, self.edge_index.flip(0)], 1)
        w = torch.cat([self.edge_weight, self.edge_weight])
        return ItemGraph(ei, w, self.num_nodes).coalesce(reduce=reduce)

    def scale(self, factor: float) -> "ItemGraph":
        return ItemGraph(self.edge_index, self.edge_weight * float(factor), self.num_nodes)

    # ------------------------------------------------------------------ serialisation
    def state(self) -> Dict[str, object]:
        """A ``torch.save``-able dict (loadable with ``weights_only=True``)."""
        return {"edge_index": self.edge_index.cpu(), "edge_weight": self.edge_weight.cpu(),
                "num_nodes": self.num_nodes}

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> "ItemGraph":
        return cls(state["edge_index"], state["edge_weight"], int(state["num_nodes"]))

    def equal(self, other: "ItemGraph") -> bool:
        return (self.num_nodes == other.num_nodes and torch.equal(self.edge_index, other.edge_index)
                and torch.equal(self.edge_weight, other.edge_weight))

    def __repr__(self) -> str:
        return f"ItemGraph(num_nodes={self.num_nodes}, num_edges={self.num_edges})"


def _inv(x: Tensor, power: float) -> Tensor:
    """``x ** power`` for ``x > 0`` and 0 elsewhere (isolated or non-positive-degree rows)."""
    out = torch.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos].pow(power)
    return out


def normalize_graph(graph: ItemGraph, norm: str) -> ItemGraph:
    """Re-weight edges.

    ``norm``:
      * ``'none'``: unchanged.
      * ``'rw'``: row-stochastic, ``w_ij / d_i`` with ``d_i`` = row sum (``row_sums()`` become 1).
      * ``'uniform'``: every edge of row ``i`` gets ``1 / k_i`` (``k_i`` = number of neighbours of
        ``i``), ignoring the stored weights -- FREEDOM's spec'd ``1/k`` weighting.
      * ``'sym'``: ``w_ij / sqrt(d_i d_j)`` with ``d`` the weighted ROW sums of the graph as given
        (MMRec's ``compute_normalized_laplacian`` / ``get_sparse_laplacian(..., 'sym')``: for a directed
        kNN graph the column node also uses its own out-degree, not its in-degree).
    Rows whose degree is zero (or negative, possible with negative similarities) get weight 0.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown normalisation {norm!r}, expected one of {NORMS}")
    if norm == "none" or graph.num_edges == 0:
        return graph
    if norm == "uniform":
        inv = _inv(graph.row_counts().to(torch.float32), -1.0)
        return ItemGraph(graph.edge_index, inv[graph.row], graph.num_nodes)
    deg = graph.row_sums()
    if norm == "rw":
        w = graph.edge_weight * _inv(deg, -1.0)[graph.row]
    else:
        inv_sqrt = _inv(deg, -0.5)
        w = inv_sqrt[graph.row] * graph.edge_weight * inv_sqrt[graph.col]
    return ItemGraph(graph.edge_index, w, graph.num_nodes)


def combine_graphs(graphs: Union[Mapping[str, ItemGraph], Sequence[ItemGraph]],
                   weights: Optional[Union[Mapping[str, float], Sequence[float]]] = None) -> ItemGraph:
    """``sum_m weights[m] * graphs[m]`` with duplicate edges merged by summation.

    ``weights`` default to equal (``1/M``). With a mapping of graphs, ``weights`` must be a mapping
    over the same keys.
    """
    if isinstance(graphs, Mapping):
        names = list(graphs)
        items = [graphs[n] for n in names]
        if weights is None:
            ws = [1.0 / len(items)] * len(items)
        else:
            if not isinstance(weights, Mapping):
                raise ConfigError("with a mapping of graphs, weights must be a mapping too")
            missing = [n for n in names if n not in weights]
            if missing:
                raise ConfigError(f"no weight for graph(s) {missing}")
            ws = [float(weights[n]) for n in names]
    else:
        items = list(graphs)
        ws = [1.0 / len(items)] * len(items) if weights is None else [float(w) for w in weights]
        if len(ws) != len(items):
            raise ConfigError(f"{len(items)} graphs but {len(ws)} weights")
    if not items:
        raise ConfigError("combine_graphs needs at least one graph")
    n = items[0].num_nodes
    if any(g.num_nodes != n for g in items):
        raise DataError("all graphs must have the same number of nodes")
    parts = [(g, w) for g, w in zip(items, ws) if w != 0.0]
    if not parts:
        return ItemGraph.empty(n)
    ei = torch.cat([g.edge_index for g, _ in parts], 1)
    ew = torch.cat([g.edge_weight * w for g, w in parts])
    return ItemGraph(ei, ew, n).coalesce("sum")
