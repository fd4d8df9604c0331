"""Dense products of a node or feature table with a small weight, through the faster of the CPU's two kernels.

PyTorch's CPU ``F.linear`` / ``@`` call MKL's GEMM. On CPUs where MKL takes its AVX2 path (the AMD EPYC we
measure on, which has AVX-512), oneDNN's matmul -- also in every PyTorch CPU build -- runs the ``[N, k] x [k, n]``
products of a tall table with a small weight 1.2-2x faster: ``[16018, 256] x [256, 256]`` 18 -> 12 ms,
``[7050, 4096] x [4096, 64]`` 34 -> 18 ms (MMGCN's layers; Amazon Baby's image projection). For the weight
gradient ``G^T X`` (a reduction over the ``N`` rows) MKL is as fast or faster, except for wide inputs
(:func:`weight_grad`: ``X`` with 4096 columns into 64, 1.2-1.8x faster by oneDNN). :func:`linear` and
:func:`matmul` are ``F.linear`` and ``@`` with the forward and the input gradient through oneDNN when the
product is large enough (:data:`MIN_MACS`) and the weight gradient through :func:`weight_grad`; the values equal
PyTorch's to float rounding, the gradients likewise (tested). Elsewhere (CUDA, float64, small products, a PyTorch
without the oneDNN kernel) they are exactly ``F.linear`` and ``@``. ``MMGRAPH_ONEDNN=0`` in the environment turns
the route off.

Precision (the run setting ``matmul_precision``, PyTorch's names): ``highest`` (the default) computes these
products in float32. ``medium`` computes the large ones (:data:`MIN_MACS`) from bfloat16 copies of their
operands, accumulating in float32 -- forward, input gradient and weight gradient --, on CPUs with native
bfloat16 dot products (AVX512-BF16 or AMX, :func:`bf16_native`): ~3x the float32 rate there (``[16018, 256] x
[256, 256]`` 18 / 12 -> 6 ms on the AMD EPYC), each product's result within ~0.3 % (relative norm) of float32's.
Parameters, optimiser state, sparse aggregations and everything else stay float32 (as PyTorch's
``set_float32_matmul_precision("medium")``, which lets CUDA and oneDNN do the same inside ``torch.mm``). On a
CUDA device ``high`` / ``medium`` set PyTorch's own precision (TF32 / bfloat16 products) for the run.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

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


#: ``matmul_precision`` values
PRECISIONS = ("highest", "high", "medium")
#: whether :func:`linear` / :func:`matmul` compute their large CPU products from bfloat16 operands (set by
#: :func:`matmul_precision`)
BF16 = False


def bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): elsewhere bfloat16 products are
    emulated and slower than float32 ones, so ``medium`` keeps float32 on the CPU."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)


def set_matmul_precision(precision: str = "highest", device: Optional[torch.device] = None) -> bool:
    """Large float32 products run at ``precision`` (one of :data:`PRECISIONS`) on ``device`` (CPU when None)
    from now on: on the CPU ``medium`` turns :data:`BF16` on where :func:`bf16_native`; on CUDA ``high`` /
    ``medium`` go to ``torch.set_float32_matmul_precision``. Returns whether CPU products use bfloat16.
    :func:`matmul_precision` is the same for a block."""
    global BF16
    if precision not in PRECISIONS:
        raise ValueError(f"matmul_precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device is not None and torch.device(device).type == "cuda"
    BF16 = precision == "medium" and not cuda and bf16_native()
    if precision == "medium" and not cuda and not BF16:
        log.info("matmul_precision=medium: this CPU has no native bfloat16 products; they stay float32")
    if cuda:
        torch.set_float32_matmul_precision(precision)
    return BF16


@contextlib.contextmanager
def matmul_precision(precision: str = "highest", device: Optional[torch.device] = None) -> Iterator[bool]:
    """:func:`set_matmul_precision` within the block (yields its result); the previous state is restored on
    exit."""
    global BF16
    before, before_torch = BF16, torch.get_float32_matmul_precision()
    try:
        yield set_matmul_precision(precision, device)
    finally:
        BF16 = before
        if torch.get_float32_matmul_precision() != before_torch:   # (only a CUDA block changes it)
            torch.set_float32_matmul_precision(before_torch)


def _onednn(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN; ``weight [n, k]`` contiguous."""
    return KERNEL(x, weight, bias, "none", [], "")


#: a weight gradient ``G^T X`` (``G [N, n]``, ``X [N, k]``) goes through oneDNN when ``X`` has at least this many
#: columns and :data:`WIDE_RATIO` times those of ``G``: wide item features (Amazon's 4096-d image features, VBPR's
#: 4480-d concatenation) into a narrow layer. Measured on a 2-core AMD EPYC, ``n = 64``: ``k = 4096 / 4480`` 1.2-1.8x
#: faster than MKL at 2048-7050 rows, ``k = 768`` 1.0-1.2x, ``k = 384 / 512`` 0.8-1.0x; ``n = 128 / 256`` with
#: ``k = 4096``: 1.1-1.2x; narrower ``X`` (every TikTok layer): MKL 1.1-2x faster
WIDE_MIN = 768
#: see :data:`WIDE_MIN`
WIDE_RATIO = 8


def _wide_route(grad: Tensor, x: Tensor) -> bool:
    """Whether :func:`weight_grad` takes oneDNN for ``grad [N, n]``, ``x [N, k]``."""
    return (ENABLED and torch._C._get_mkldnn_enabled() and grad.dim() == 2 and x.dim() == 2
            and grad.device.type == "cpu" and x.device.type == "cpu"
            and grad.dtype == torch.float32 and x.dtype == torch.float32 and grad.shape[0] == x.shape[0]
            and x.shape[1] >= max(WIDE_MIN, WIDE_RATIO * grad.shape[1]) and x.is_contiguous()
            and x.shape[0] * grad.shape[1] * x.shape[1] >= MIN_MACS)


#: a weight gradient over at least this many rows is summed from two halves, one per thread (:func:`weight_grad`)
SPLIT_MIN_ROWS = 4096
#: whether :func:`weight_grad` may split the rows (tests turn it off to compare)
SPLIT = True


def _split_rows(grad: Tensor, x: Tensor) -> bool:
    return (SPLIT and grad.device.type == "cpu" and grad.dim() == 2 and x.dim() == 2 and grad.shape[0] == x.shape[0]
            and grad.shape[0] >= SPLIT_MIN_ROWS and torch.get_num_threads() > 1
            and grad.dtype == x.dtype and grad.dtype in (torch.float32, torch.float64)
            and grad.is_contiguous() and x.is_contiguous())


def weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """``grad.T @ x``, a weight's gradient: ``grad [N, n]``, ``x [N, k]`` -> ``[n, k]``. For a wide ``x``
    (:data:`WIDE_MIN`) oneDNN computes it, reading ``x`` in place as the transposed operand; otherwise MKL. A tall
    one (:data:`SPLIT_MIN_ROWS`) goes to MKL as a batch of the two halves of its rows, summed: MKL splits a single
    ``[n, N] x [N, k]`` product of small ``n``, ``k`` between its threads by output blocks, so each thread reads all
    ``N`` rows of one operand; by halves each reads its own (MMGCN's ``[16018, 64]`` and ``[9308, 256]`` layers on 2
    threads: 5-13 % faster with cold caches, as in a training step). The same values to float rounding."""
    if _wide_route(grad, x):
        try:
            return KERNEL(grad.t().contiguous(), x.t(), None, "none", [], "")
        except (RuntimeError, NotImplementedError) as exc:
            _disable(exc)
    if _split_rows(grad, x):
        rows = grad.shape[0] - grad.shape[0] % 2
        half = rows // 2
        out = torch.bmm(grad[:rows].view(2, half, grad.shape[1]).transpose(1, 2),
                        x[:rows].view(2, half, x.shape[1])).sum(0)
        return out.addmm_(grad[rows:].t(), x[rows:]) if rows < grad.shape[0] else out
    return grad.t() @ x


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
        d_w = weight_grad(grad, x) if need_w else None                            # G^T X
        d_b = grad.sum(0) if need_b and ctx.has_bias else None
        return d_x, d_w, d_b


#: whether :func:`add_linear` takes its own backward (tests and A/B timings turn it off)
ADD_LINEAR = True


class _AddLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acc: Tensor, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.addmm(acc, x, weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_acc, need_x, need_w = ctx.needs_input_grad
        grad = grad.contiguous()
        return (grad if need_acc else None, grad @ weight if need_x else None,
                weight_grad(grad, x) if need_w else None)


def add_linear(acc: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``acc + x @ weight.T`` (``acc [N, n]``, ``x [N, k]``, ``weight [n, k]``): ``torch.addmm``, with the weight
    gradient through :func:`weight_grad` (a tall one summed from two halves) where autograd's ``addmm`` backward
    takes one MKL product."""
    if (ADD_LINEAR and torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu"
            and acc.dim() == 2 and x.dim() == 2 and weight.dim() == 2):
        return _AddLinear.apply(acc, x, weight)
    return torch.addmm(acc, x, weight.t())


_BF = torch.bfloat16


class _Bf16Linear(torch.autograd.Function):
    """``x @ weight.T + bias`` from bfloat16 copies of ``x`` and ``weight`` (float32 accumulation, float32
    result); the backward likewise from bfloat16 copies of the output gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        x16, w16 = x.to(_BF), weight.to(_BF)
        ctx.save_for_backward(x16, w16)
        ctx.has_bias = bias is not None
        out = F.linear(x16, w16).float()
        return out if bias is None else out.add_(bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x16, w16 = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g16 = grad.to(_BF)
        d_x = (g16 @ w16).float() if need_x else None
        d_w = (g16.t() @ x16).float() if need_w else None
        d_b = grad.sum(0) if need_b and ctx.has_bias else None
        return d_x, d_w, d_b


def _large_cpu_float32(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether ``x [N, k] @ weight.T`` (``weight [n, k]``) ``+ bias`` is a float32 CPU product of at least
    :data:`MIN_MACS` whose operands fit together (others stay with PyTorch, whose error names them)."""
    return (x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1] and not x.is_sparse
            and (bias is None or (bias.shape == weight.shape[:1] and bias.dtype == torch.float32))
            and x.shape[0] * weight.shape[0] * weight.shape[1] >= MIN_MACS)


def _bf16_route(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
    """Whether ``x @ weight.T + bias`` is computed from bfloat16 operands (:data:`BF16`)."""
    return BF16 and _large_cpu_float32(x, weight, bias)


def _route(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
    """Whether ``x [N, k] @ weight.T`` (``weight [n, k]``) ``+ bias`` goes through oneDNN. Operands that do not fit
    together stay with PyTorch, whose error names them (a kernel error here would switch the route off)."""
    return (ENABLED and torch._C._get_mkldnn_enabled()      # torch.backends.mkldnn.flags(enabled=False) is honoured
            and _large_cpu_float32(x, weight, bias) and x.is_contiguous())


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
    if _bf16_route(x, weight, bias):
        return _Bf16Linear.apply(x, weight, bias)
    if _route(x, weight, bias):
        try:
            return _Linear.apply(x, weight, bias)
        except (RuntimeError, NotImplementedError) as exc:   # a build whose private kernel changed
            _disable(exc)
    return F.linear(x, weight, bias)


def linear_float32(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` (``x [N, k]``, ``weight [n, k]``), no autograd, in float32 whatever ``matmul_precision`` is
    set to: evaluation's score blocks, which rank items and must not move with a training-speed setting. oneDNN
    computes a large float32 CPU product (:data:`MIN_MACS`), ``F.linear`` anything else."""
    with torch.no_grad():
        if _route(x, weight):
            try:
                return _onednn(x, weight.contiguous(), None)
            except (RuntimeError, NotImplementedError) as exc:
                _disable(exc)
        return F.linear(x, weight)


def matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight``: ``x [N, k]``, ``weight [k, n]`` -> ``[N, n]``."""
    if weight.dim() == 2 and _bf16_route(x, weight.t()):
        return _Bf16Linear.apply(x, weight.t(), None)
    if weight.dim() == 2 and _route(x, weight.t()):
        try:
            return _Linear.apply(x, weight.t(), None)
        except (RuntimeError, NotImplementedError) as exc:
            _disable(exc)
    return x @ weight
