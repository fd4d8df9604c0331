"""A fixed edge list whose per-edge VALUES carry gradients: edge dot products and weighted propagation.

Attention-style models (GRCN) compute a score per edge from the two end nodes and propagate with those
scores as edge weights. The gather / multiply / scatter form of both builds several ``[E, d]`` buffers
forward and backward (on TikTok ``E = 119k``: 30 MB each, most of GRCN's step). :class:`EdgeGraph`
keeps the edge list in both CSR orders and computes

* :meth:`EdgeGraph.dot`: ``s_e = a[src_e] . b[dst_e]`` by blocks of edges (the ``[block, d]`` buffers stay
  in cache); backward ``grad_a = S_g^T b``, ``grad_b = S_g a`` -- two CSR products with the edge
  gradients ``g`` as values (``S_g[dst, src] = g_e``);
* :meth:`EdgeGraph.propagate`: ``out[dst] = sum_e w_e x[src_e]`` as one CSR product with values ``w``;
  backward ``grad_x = A_w^T grad`` (a CSR product) and ``grad_w = dot(x, grad)`` (blocked).

The same values and gradients as the gather form (only the summation order differs). Orientation as
PyG's default flow and :class:`~mmgraph.nn.sparse.SparseAdj`: ``edge_index[0]`` the source,
``edge_index[1]`` the target.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from mmgraph.nn.sparse import csr_mm

#: edges per block of :func:`edge_dot` (two ``[block, d]`` float32 rows buffers: 2 MB at d = 64)
EDGE_BLOCK = 4096


def edge_dot(a: Tensor, b: Tensor, src: Tensor, dst: Tensor, block: int = EDGE_BLOCK) -> Tensor:
    """``[E]`` with ``out_e = a[src_e] . b[dst_e]`` (no autograd), by blocks of ``block`` edges."""
    n_edges, d = src.shape[0], a.shape[1]
    out = a.new_empty(n_edges)
    size = min(block, n_edges)
    buf_a, buf_b = a.new_empty(size, d), a.new_empty(size, d)
    for lo in range(0, n_edges, block):
        hi = min(lo + block, n_edges)
        ra = torch.index_select(a, 0, src[lo:hi], out=buf_a[: hi - lo])
        rb = torch.index_select(b, 0, dst[lo:hi], out=buf_b[: hi - lo])
        torch.sum(ra.mul_(rb), 1, out=out[lo:hi])
    return out


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, graph: "EdgeGraph") -> Tensor:  # type: ignore[override]
        ctx.graph = graph
        ctx.save_for_backward(a, b)
        return edge_dot(a.detach(), b.detach(), graph.src, graph.dst)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        g: EdgeGraph = ctx.graph
        grad_a = csr_mm(g.by_source(grad), b) if ctx.needs_input_grad[0] else None
        grad_b = csr_mm(g.by_target(grad), a) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


class _Propagate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, graph: "EdgeGraph") -> Tensor:  # type: ignore[override]
        ctx.graph = graph
        ctx.save_for_backward(x, weight)
        return csr_mm(graph.by_target(weight.detach()), x.detach())

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g: EdgeGraph = ctx.graph
        grad = grad.contiguous()
        grad_x = csr_mm(g.by_source(weight.detach()), grad) if ctx.needs_input_grad[0] else None
        grad_w = edge_dot(x.detach(), grad, g.src, g.dst) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


class EdgeGraph(nn.Module):
    """A fixed directed edge list with per-edge values supplied per call (see the module doc).

    Args:
        edge_index: ``[2, E]`` (source, target); no repeated pair (the CSR forms would merge them).
        num_nodes: ``N``, the node count of both ends.

    ``dot(a [N, d], b [N, d]) -> [E]`` and ``propagate(x [N, d], weight [E]) -> [N, d]``, both
    differentiable in every tensor argument; the edge order of ``[E]`` tensors is ``edge_index``'s.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int):
        super().__init__()
        src, dst = edge_index[0].long(), edge_index[1].long()
        self.num_nodes = int(num_nodes)
        key_t, key_s = dst * self.num_nodes + src, src * self.num_nodes + dst
        if torch.unique(key_t).numel() != key_t.numel():
            raise ValueError("EdgeGraph: edge_index repeats a (source, target) pair")
        by_target, by_source = torch.argsort(key_t), torch.argsort(key_s)
        for name, value in (("src", src), ("dst", dst), ("perm_target", by_target), ("perm_source", by_source),
                            ("crow_target", self._crow(dst[by_target])), ("col_target", src[by_target]),
                            ("crow_source", self._crow(src[by_source])), ("col_source", dst[by_source])):
            self.register_buffer(name, value.contiguous(), persistent=False)

    def _crow(self, rows_sorted: Tensor) -> Tensor:
        counts = torch.bincount(rows_sorted, minlength=self.num_nodes)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def by_target(self, values: Tensor) -> Tensor:
        """CSR ``[N, N]`` with ``M[dst_e, src_e] = values_e`` (``out = M @ x`` aggregates into targets)."""
        return torch.sparse_csr_tensor(self.crow_target, self.col_target, values[self.perm_target],
                                       (self.num_nodes, self.num_nodes), check_invariants=False)

    def by_source(self, values: Tensor) -> Tensor:
        """CSR ``[N, N]`` with ``M[src_e, dst_e] = values_e`` (the transpose of :meth:`by_target`)."""
        return torch.sparse_csr_tensor(self.crow_source, self.col_source, values[self.perm_source],
                                       (self.num_nodes, self.num_nodes), check_invariants=False)

    def dot(self, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
        """``[E]``: ``a[src_e] . b[dst_e]`` (``b`` defaults to ``a``)."""
        b = a if b is None else b
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            return _EdgeDot.apply(a, b, self)
        return edge_dot(a, b, self.src, self.dst)

    def propagate(self, x: Tensor, weight: Tensor) -> Tensor:
        """``[N, d]``: ``out[t] = sum over the edges e into t of weight_e x[src_e]``."""
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _Propagate.apply(x, weight, self)
        return csr_mm(self.by_target(weight), x)

    def extra_repr(self) -> str:
        return f"num_nodes={self.num_nodes}, num_edges={self.num_edges}"
