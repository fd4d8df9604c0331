"""Dropout whose mask comes from a uniform draw: the same distribution as ``F.dropout``, ~3x faster on CPU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _probability(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    return p


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout of ``x [...]``: each entry kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``.

    On CPU the mask is ``U >= p`` for ``U ~ Uniform[0, 1)`` (``torch.rand_like``), where ``F.dropout`` draws
    it with ``bernoulli_``, which runs about 10 ns per entry: on a ``[2048, 64]`` batch 1.6 ms forward +
    backward against 0.47 ms here (BM3 drops four such tensors a step). The kept entries follow the same
    Bernoulli(1 - p) law, from a different stream of the generator, so a seeded run draws different masks
    than ``F.dropout`` would. On other devices ``F.dropout`` (fused there) is used.
    """
    p = _probability(p)
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    if p == 1.0:
        return x * 0.0
    with torch.no_grad():
        mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return x * mask


class Dropout(nn.Module):
    """:func:`dropout` as a module (``nn.Dropout``'s interface: active in training mode only)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _probability(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
