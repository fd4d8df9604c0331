"""Dense products of a node or feature table with a small weight, through the faster of the CPU's two kernels.

PyTorch's CPU ``F.linear`` / ``@`` call MKL's GEMM. On CPUs where MKL takes its AVX2 path (the AMD EPYC we
measure on, which has AVX-512), oneDNN's matmul -- also in every PyTorch CPU build -- runs the ``[N, k] x [k, n]``
products of a tall table with a small weight 1.2-2x faster: ``[16018, 256] x [256, 256]`` 18 -> 12 ms,
``[7050, 4096] x [4096, 64]`` 34 -> 18 ms (MMGCN's layers; Amazon Baby's image projection). For the weight
gradient ``G^T X`` (a reduction over the ``N`` rows) MKL stays as fast or faster. :func:`linear` and
:func:`matmul` are ``F.linear`` and ``@`` with the forward and the input gradient through oneDNN when the
product is large enough (:data:`MIN_MACS`) and the weight gradient through MKL; the values equal PyTorch's to
float rounding, the gradients likewise (tested). Elsewhere (CUDA, float64, small products, a PyTorch without
the oneDNN kernel) they are exactly ``F.linear`` and ``@``. ``MMGRAPH_ONEDNN=0`` in the environment turns the
route off.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

#: products of at least this many multiply-adds (``N k n``) go through oneDNN. Measured on a 2-core AMD EPYC:
#: level at ``[6710, 64] x [64, 64]`` (29 M), x1.2-1.4 at ``[9308 .. 16018, 64] x [64, 64]`` (38-66 M), x1.3-2.2
#: above
MIN_MACS = 1 << 25

#: oneDNN's ``x @ W.T + b`` (``mkldnn::_linear_pointwise``), or None in a build without it
KERNEL = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
#: whether :func:`linear` / :func:`matmul` may take oneDNN (tests and ``MMGRAPH_ONEDNN=0`` turn it off)
ENABLED = (KERNEL is not None and torch.backends.mkldnn.is_available()
           and os.environ.get("MMGRAPH_ONEDNN", "1").strip().lower() not in ("0", "false", "no", "off"))


def _onednn(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN; ``weight [n, k]`` contiguous."""
    return KERNEL(x, weight, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight.contiguous(), None if bias is None else bias.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad.contiguous()
        d_x = _onednn(grad, weight.t().contiguous(), None) if need_x else None   # G W
        d_w = grad.t() @ x if need_w else None                                    # G^T X: MKL's is as fast
        d_b = grad.sum(0) if need_b and ctx.has_bias else None
        return d_x, d_w, d_b


def _route(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
    """Whether ``x [N, k] @ weight.T`` (``weight [n, k]``) ``+ bias`` goes through oneDNN. Operands that do not fit
    together stay with PyTorch, whose error names them (a kernel error here would switch the route off)."""
    return (ENABLED and torch._C._get_mkldnn_enabled()      # torch.backends.mkldnn.flags(enabled=False) is honoured
            and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 2 and weight.dim() == 2 and x.is_contiguous() and not x.is_sparse
            and x.shape[1] == weight.shape[1] and weight.device.type == "cpu"
            and (bias is None or (bias.shape == weight.shape[:1] and bias.dtype == torch.float32))
            and x.shape[0] * weight.shape[0] * weight.shape[1] >= MIN_MACS)


def _disable(exc: Exception) -> None:
    global ENABLED
    ENABLED = False
    log.info("oneDNN linear kernel unavailable here (%s: %s); using PyTorch's default", type(exc).__name__, exc)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``.

    Args:
        x: ``[N, k]``.
        weight: ``[n, k]``; bias: ``[n]`` or None.

    Returns:
        ``[N, n]``.
    """
    if _route(x, weight, bias):
        try:
            return _Linear.apply(x, weight, bias)
        except (RuntimeError, NotImplementedError) as exc:   # a build whose private kernel changed
            _disable(exc)
    return F.linear(x, weight, bias)


def matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight``: ``x [N, k]``, ``weight [k, n]`` -> ``[N, n]``."""
    if weight.dim() == 2 and _route(x, weight.t()):
        try:
            return _Linear.apply(x, weight.t(), None)
        except (RuntimeError, NotImplementedError) as exc:
            _disable(exc)
    return x @ weight
