"""Fixed sparse adjacencies with a fast CSR matmul and a custom backward.

:class:`SparseAdj` holds a CSR matrix ``A`` (and ``A^T`` unless ``A`` is symmetric) as non-persistent
buffers, so ``module.to(device)`` moves it with the model that owns it. Its product with a dense
matrix backpropagates through ``A^T @ grad``; for the symmetric normalised user-item graph this
reuses ``A`` itself, so no transpose and no per-edge gradient buffers are ever built. This path is
for fixed edge weights; learned edge weights go through :class:`~mmgraph.nn.edges.EdgeGraph` (CSR
products with the weights as values) or the gather/scatter path of :class:`~mmgraph.nn.conv.LightGCNConv`.

Orientation: ``A`` is ``[N_target, N_source]`` with ``out = A @ x``, i.e. PyG's ``adj_t`` (row =
target = ``edge_index[1]``, column = source = ``edge_index[0]``).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class _UniqueRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.n_rows,) + tuple(grad.shape[1:]))
        return out.index_copy_(0, index, grad), None


def unique_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for an ``index`` WITHOUT repeats (e.g. from ``torch.unique``): ``[len(index), ...]``.

    The same values and gradients as ``x[index]``, but the backward writes each row once
    (``index_copy_``) instead of the accumulating scatter plain indexing needs for possible repeats,
    which is serial on CPU. Repeated indices would silently drop gradient: never pass them.
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _UniqueRows.apply(x, index)
    return x.index_select(0, index)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for an integer ``index`` of any shape, repeats allowed: ``index.shape + x.shape[1:]``.

    The same values as advanced indexing. The backward is ``index_select``'s, an ``index_add_`` into zeros,
    where ``x[index]``'s backward runs an accumulating ``index_put_``, which on CPU is 4-8x slower (4,096
    rows into a ``[6710, 64]`` table: 0.26 vs 1.05 ms): every training step gathers its batch's rows this
    way. The gradient equals plain indexing's up to the order in which repeated rows are summed.
    """
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def split_nodes(h: Tensor, n_users: int) -> Tuple[Tensor, Tensor]:
    """``(h[:n_users], h[n_users:])`` for a joint ``[U + I, ...]`` node table: users ``[U, ...]``, items ``[I, ...]``.

    The same values as two slices, but the backward concatenates the two gradients into one buffer, where
    each slice's backward zero-fills a full ``[U + I, ...]`` buffer and autograd then adds the two (on CM3's
    ``[U + I, 192]`` table: ~3x the backward of the split). The parts are views that may not be modified in
    place while they need a gradient.
    """
    return tuple(torch.split(h, [n_users, h.shape[0] - n_users]))  # type: ignore[return-value]


def csr_mm(adj: Tensor, x: Tensor) -> Tensor:
    """``adj @ x`` for a CSR ``adj [N, M]`` and a dense ``x [M, F]`` (no autograd).

    On CPU, ``addmm_`` with ``beta=0`` into a fresh buffer skips the zero-fill and the two copies that
    ``adj @ x`` makes (measured ~2x faster on the TikTok graph); the buffer's content is never read.
    """
    x = x.contiguous()
    if adj.device.type != "cpu":
        return adj @ x
    return x.new_empty(adj.shape[0], x.shape[1]).addmm_(adj, x, beta=0)


class _CSRMatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj_t = adj_t
        return csr_mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return csr_mm(ctx.adj_t, grad), None, None


def _power_sum(x: Tensor, adj: Tensor, n_layers: int, mean: bool) -> Tensor:
    if n_layers == 0:
        return x.clone(memory_format=torch.contiguous_format)
    cur = csr_mm(adj, x)
    total = torch.add(cur, x)  # one pass, where a copy of x and an add would make two
    for _ in range(n_layers - 1):
        cur = csr_mm(adj, cur)
        total.add_(cur)
    return total.div_(n_layers + 1) if mean else total


class _PowerSum(torch.autograd.Function):
    """``sum_{k=0..L} A^k x`` (divided by ``L + 1`` for the mean): the forward accumulates in place and the
    backward is Horner's rule ``h <- g + A^T h`` (``L`` products, nothing saved), where autograd through
    ``L`` separate products would allocate a fresh buffer per readout addition and gradient accumulation."""

    @staticmethod
    def forward(ctx, x: Tensor, adj: Tensor, adj_t: Tensor, n_layers: int, mean: bool) -> Tensor:  # type: ignore[override]
        ctx.adj_t, ctx.n_layers, ctx.mean = adj_t, n_layers, mean
        return _power_sum(x, adj, n_layers, mean)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g = grad / (ctx.n_layers + 1) if ctx.mean else grad.contiguous()
        h = g
        for _ in range(ctx.n_layers):
            h = csr_mm(ctx.adj_t, h).add_(g)
        return h, None, None, None, None


def _bipartite_power_sum(users: Tensor, items: Tensor, ui: Tensor, iu: Tensor, n_layers: int,
                         mean: bool) -> Tuple[Tensor, Tensor]:
    cur_u, cur_i = csr_mm(ui, items), csr_mm(iu, users)
    total_u, total_i = torch.add(cur_u, users), torch.add(cur_i, items)
    for _ in range(n_layers - 1):
        cur_u, cur_i = csr_mm(ui, cur_i), csr_mm(iu, cur_u)
        total_u.add_(cur_u)
        total_i.add_(cur_i)
    if mean:
        total_u.div_(n_layers + 1)
        total_i.div_(n_layers + 1)
    return total_u, total_i


class _BipartitePowerSum(torch.autograd.Function):
    """:class:`_PowerSum` of a bipartite ``A = [[0, B], [B^T, 0]]`` on the two node tables separately: the same
    products row for row (so the same values), without the joint ``[U + I, F]`` input and output tables."""

    @staticmethod
    def forward(ctx, users: Tensor, items: Tensor, ui: Tensor, iu: Tensor,  # type: ignore[override]
                n_layers: int, mean: bool) -> Tuple[Tensor, Tensor]:
        ctx.ui, ctx.iu, ctx.n_layers, ctx.mean = ui, iu, n_layers, mean
        return _bipartite_power_sum(users, items, ui, iu, n_layers, mean)

    @staticmethod
    def backward(ctx, grad_u: Optional[Tensor], grad_i: Optional[Tensor]):  # type: ignore[override]
        gu = torch.zeros(ctx.ui.shape[0], *grad_i.shape[1:], dtype=grad_i.dtype, device=grad_i.device) \
            if grad_u is None else grad_u
        gi = torch.zeros(ctx.iu.shape[0], *gu.shape[1:], dtype=gu.dtype, device=gu.device) if grad_i is None else grad_i
        if ctx.mean:
            gu, gi = gu / (ctx.n_layers + 1), gi / (ctx.n_layers + 1)
        else:
            gu, gi = gu.contiguous(), gi.contiguous()
        hu, hi = gu, gi
        for _ in range(ctx.n_layers):    # Horner's rule, h <- g + A^T h, A symmetric
            hu, hi = csr_mm(ctx.ui, hi).add_(gu), csr_mm(ctx.iu, hu).add_(gi)
        return hu, hi, None, None, None, None


def _sorted_csr(rows: Tensor, cols: Tensor, values: Tensor, shape: Tuple[int, int]) -> Tensor:
    """CSR of the entries ``(rows[e], cols[e], values[e])`` (columns sorted and distinct within each row) by one
    sort of the ``row * M + col`` keys; repeated ``(row, col)`` pairs, found after the sort, are summed."""
    n, m = shape
    key = torch.int32 if n * m < 2 ** 31 else torch.int64       # int32 keys sort ~2x faster
    keys, order = torch.sort(rows.to(key) * m + cols.to(key))
    if keys.numel() > 1 and bool((keys[1:] == keys[:-1]).any()):
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, m), check_invariants=False)
        return coo.coalesce().to_sparse_csr()
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=crow[1:])
    return torch.sparse_csr_tensor(crow, cols[order], values[order], (n, m), check_invariants=False)


def _coo(edge_index: Tensor, edge_weight: Optional[Tensor], shape) -> Tensor:
    n, m = int(shape[0]), int(shape[1])
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), dtype=torch.float32, device=edge_index.device)
    return torch.sparse_coo_tensor(edge_index, edge_weight.float(), (n, m), check_invariants=False).coalesce()


#: whether :class:`SparseAdj` stores its CSR indices as int32 (where they fit)
INT32 = True


def compact_indices(csr: Optional[Tensor]) -> Optional[Tensor]:
    """``csr`` with int32 row pointers and column indices when its sizes fit: PyTorch's CPU CSR product (MKL's
    sparse BLAS) takes int32 indices as they are, where int64 ones are converted on every call (the TikTok graph's
    ``A @ x``: 1.18 -> 1.05 ms at 64 columns). The same matrix; None and int32 matrices are returned as given."""
    if (csr is None or not INT32 or csr.layout != torch.sparse_csr or csr.crow_indices().dtype == torch.int32
            or max(csr.shape[0], csr.shape[1], csr._nnz()) >= 2 ** 31 - 1):
        return csr
    return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                   csr.values(), tuple(csr.shape), check_invariants=False)


class SparseAdj(nn.Module):
    """A fixed ``[N, M]`` sparse matrix for message passing: ``out[r] = sum_c A[r, c] x[c]``.

    Args:
        edge_index: ``[2, E]`` (row, col) = (target, source) indices.
        edge_weight: ``[E]`` weights (default 1); duplicates are summed.
        shape: ``(N, M)``.
        symmetric: declare ``A == A^T`` so the backward reuses ``A`` (nothing else is stored).
        n_users: for a user-item graph over ``[users; items]`` (users first): the number of users, so the two
            off-diagonal blocks are kept as well (:meth:`bipartite_power_sum` propagates the tables separately).

    Buffers (non-persistent: rebuilt from the graph, never written to checkpoints): ``csr`` (``A``)
    and ``csr_t_`` (``A^T``, absent when symmetric).
    """

    def __init__(self, edge_index: Tensor, edge_weight: Optional[Tensor], shape, symmetric: bool = False,
                 n_users: Optional[int] = None):
        super().__init__()
        coo = _coo(edge_index, edge_weight, shape)
        self._init(coo.to_sparse_csr(), None if symmetric else coo.t().coalesce().to_sparse_csr(), symmetric)
        if n_users is not None:
            self._init_blocks(coo, int(n_users))

    def _init(self, csr: Tensor, csr_t: Optional[Tensor], symmetric: bool) -> None:
        self.shape = tuple(csr.shape)
        self.symmetric = bool(symmetric)
        self.n_users: Optional[int] = None
        self.register_buffer("csr", compact_indices(csr), persistent=False)
        self.register_buffer("csr_t_", compact_indices(csr_t), persistent=False)
        self.register_buffer("block_ui", None, persistent=False)
        self.register_buffer("block_iu", None, persistent=False)

    def _init_blocks(self, coo: Tensor, n_users: int) -> None:
        """Keep the two blocks of a symmetric bipartite ``A = [[0, B], [B^T, 0]]`` (users first):
        ``B [U, I]`` and ``B^T [I, U]`` as CSR, for :meth:`bipartite_power_sum`."""
        if not self.symmetric or self.shape[0] != self.shape[1]:
            raise ValueError("SparseAdj: n_users (a bipartite graph's blocks) needs a square symmetric matrix")
        rows, cols = coo.indices()
        values, n = coo.values(), self.shape[0]
        upper = rows < n_users
        if bool(((cols < n_users) == upper).any()):
            raise ValueError(f"SparseAdj: an edge joins two users or two items; not bipartite at {n_users} users")
        for name, keep, shift_r, shift_c, size in (("block_ui", upper, 0, n_users, (n_users, n - n_users)),
                                                   ("block_iu", ~upper, n_users, 0, (n - n_users, n_users))):
            idx = torch.stack([rows[keep] - shift_r, cols[keep] - shift_c])
            block = torch.sparse_coo_tensor(idx, values[keep], size, check_invariants=False).coalesce()
            setattr(self, name, compact_indices(block.to_sparse_csr()))
        self.n_users = n_users

    @classmethod
    def from_edges(cls, edge_index: Tensor, edge_weight: Tensor, shape) -> "SparseAdj":
        """``A`` and ``A^T`` from ``edge_index [2, E]`` (row, col) = (target, source) and ``edge_weight [E]``
        (kept in its dtype), for a matrix built anew every step (a sampled subgraph's): one key sort per
        orientation, without the constructor's coalescing (~2.7x cheaper to build: 4.8 vs 13 ms for a
        132k-edge subgraph). Repeated ``(row, col)`` pairs are summed, as the constructor sums them.
        """
        n, m = int(shape[0]), int(shape[1])
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_weight.shape != edge_index.shape[1:]:
            raise ValueError(f"SparseAdj.from_edges: expected edge_index [2, E] and edge_weight [E], got "
                             f"{tuple(edge_index.shape)} and {tuple(edge_weight.shape)}")
        rows, cols = edge_index[0], edge_index[1]
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj._init(_sorted_csr(rows, cols, edge_weight, (n, m)), _sorted_csr(cols, rows, edge_weight, (m, n)), False)
        return obj

    @classmethod
    def from_csr(cls, csr: Tensor, symmetric: bool = False) -> "SparseAdj":
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        csr_t = None if symmetric else csr.to_sparse_coo().t().coalesce().to_sparse_csr()
        obj._init(csr, csr_t, symmetric)
        return obj

    @property
    def csr_t(self) -> Tensor:
        """``A^T`` as CSR (``A`` itself when symmetric)."""
        return self.csr if self.symmetric else self.csr_t_

    @property
    def nnz(self) -> int:
        return int(self.csr._nnz())

    @property
    def device(self) -> torch.device:
        return self.csr.device

    def edge_index(self) -> Tensor:
        """``[2, E]`` (row, col) indices, sorted by row."""
        return self.csr.to_sparse_coo().coalesce().indices()

    def edge_weight(self) -> Tensor:
        return self.csr.values()

    def t(self) -> "SparseAdj":
        """``A^T`` as a new SparseAdj sharing this one's tensors."""
        if self.symmetric:
            return self
        obj = SparseAdj.__new__(SparseAdj)
        nn.Module.__init__(obj)
        obj._init(self.csr_t_, self.csr, False)
        return obj

    def matmul(self, x: Tensor) -> Tensor:
        """``A @ x`` for ``x [M, F]`` -> ``[N, F]``; differentiable w.r.t. ``x``."""
        if x.requires_grad and torch.is_grad_enabled():
            return _CSRMatMul.apply(x, self.csr, self.csr_t)
        return csr_mm(self.csr, x)

    __matmul__ = matmul

    def power_sum(self, x: Tensor, n_layers: int, mean: bool = False) -> Tensor:
        """``sum_{k=0..n_layers} A^k x`` for ``x [N, F]`` (``/ (n_layers + 1)`` with ``mean``): LightGCN's
        readout over its layers in one differentiable step; the same values as the layer-by-layer sum."""
        if x.requires_grad and torch.is_grad_enabled():
            return _PowerSum.apply(x, self.csr, self.csr_t, int(n_layers), bool(mean))
        return _power_sum(x, self.csr, int(n_layers), bool(mean))

    @property
    def bipartite(self) -> bool:
        """Whether the matrix was built as a bipartite user-item graph (``n_users`` given): its blocks are kept."""
        return self.block_ui is not None

    def bipartite_power_sum(self, users: Tensor, items: Tensor, n_layers: int,
                            mean: bool = False) -> Tuple[Tensor, Tensor]:
        """:meth:`power_sum` of the joint ``[users; items]`` for a bipartite matrix, returned as ``(users [U, F],
        items [I, F])``: the same values, computed on the two tables with the blocks ``B``, ``B^T`` (one
        product each per layer), so no joint ``[U + I, F]`` table is concatenated forward or split backward."""
        if not self.bipartite:
            raise ValueError("bipartite_power_sum needs a SparseAdj built with n_users (a bipartite graph)")
        if int(n_layers) < 1:
            raise ValueError(f"bipartite_power_sum needs n_layers >= 1, got {n_layers}")
        if torch.is_grad_enabled() and (users.requires_grad or items.requires_grad):
            return _BipartitePowerSum.apply(users, items, self.block_ui, self.block_iu, int(n_layers), bool(mean))
        return _bipartite_power_sum(users, items, self.block_ui, self.block_iu, int(n_layers), bool(mean))

    def rows_matmul(self, x: Tensor, rows: Tensor, power: int = 1) -> Tensor:
        """``(A^power @ x)[rows]`` -> ``[len(rows), F]`` without the full product: only the rows reachable
        from ``rows`` in ``power`` steps are computed (O(len(rows) * nnz_per_row^power)); differentiable
        w.r.t. ``x``."""
        if power <= 0:
            return gather_rows(x, rows)
        crow, col, val = self.csr.crow_indices().long(), self.csr.col_indices(), self.csr.values()
        start = crow[rows]
        counts = crow[rows + 1] - start
        total = int(counts.sum())
        out_pos = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        entry = start[out_pos] + torch.arange(total, device=rows.device) - first[out_pos]
        cols, inverse = torch.unique(col[entry], return_inverse=True)
        h = self.rows_matmul(x, cols, power - 1)
        out = x.new_zeros((len(rows),) + tuple(x.shape[1:]))
        return out.index_add(0, out_pos, gather_rows(h, inverse) * val[entry].to(x.dtype).unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, symmetric={self.symmetric}"
