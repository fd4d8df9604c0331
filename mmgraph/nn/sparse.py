"""Sparse adjacency with a fast CSR matmul and a custom backward.

``SparseAdj`` wraps a CSR matrix ``A`` (and ``A^T`` unless ``A`` is symmetric). Its product with a
dense matrix backpropagates through ``A^T @ grad``; for the symmetric normalised user-item graph this
reuses ``A`` itself, so no transpose and no per-edge gradient buffers are ever built. This path is
for fixed edge weights; learned edge weights go through the gather/scatter path of the layers.
"""
from __future__ import annotations

from typing import Optional

import warnings

import torch
from torch import Tensor

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


class _CSRMatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.adj_t @ grad.contiguous(), None, None


class SparseAdj:
    """A fixed ``[N, M]`` sparse matrix for message passing: ``out[r] = sum_c A[r, c] x[c]``.

    Args:
        edge_index: ``[2, E]`` (row, col) indices.
        edge_weight: ``[E]`` weights (default 1).
        shape: ``(N, M)``.
        symmetric: declare ``A == A^T`` so the backward reuses ``A``.
    """

    def __init__(self, edge_index: Tensor, edge_weight: Optional[Tensor], shape, symmetric: bool = False):
        n, m = int(shape[0]), int(shape[1])
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.size(1), dtype=torch.float32, device=edge_index.device)
        coo = torch.sparse_coo_tensor(edge_index, edge_weight.float(), (n, m),
                                      check_invariants=False).coalesce()
        self.shape = (n, m)
        self.symmetric = symmetric
        self.csr = coo.to_sparse_csr()
        self.csr_t = self.csr if symmetric else coo.t().coalesce().to_sparse_csr()

    @classmethod
    def from_csr(cls, csr: Tensor, symmetric: bool = False) -> "SparseAdj":
        obj = cls.__new__(cls)
        obj.shape = tuple(csr.shape)
        obj.symmetric = symmetric
        obj.csr = csr
        obj.csr_t = csr if symmetric else csr.to_sparse_coo().t().coalesce().to_sparse_csr()
        return obj

    @property
    def nnz(self) -> int:
        return int(self.csr._nnz())

    def to(self, device) -> "SparseAdj":
        obj = SparseAdj.__new__(SparseAdj)
        obj.shape, obj.symmetric = self.shape, self.symmetric
        obj.csr = self.csr.to(device)
        obj.csr_t = obj.csr if self.symmetric else self.csr_t.to(device)
        return obj

    def edge_index(self) -> Tensor:
        coo = self.csr.to_sparse_coo().coalesce()
        return coo.indices()

    def edge_weight(self) -> Tensor:
        return self.csr.values()

    def matmul(self, x: Tensor) -> Tensor:
        """``A @ x`` for ``x [M, F]`` -> ``[N, F]``; differentiable w.r.t. ``x``."""
        if x.requires_grad and torch.is_grad_enabled():
            return _CSRMatMul.apply(x, self.csr, self.csr_t)
        return self.csr @ x

    __matmul__ = matmul

    def __repr__(self) -> str:
        return f"SparseAdj(shape={self.shape}, nnz={self.nnz}, symmetric={self.symmetric})"
