"""Fusion of several modality vectors of the same item: spherical (slerp / spherical Bezier) and linear.

CM3 (Zhou et al., paper eq. 2-3) fuses the unit-normalised modality vectors ``x^0 .. x^{M-1}`` of an
item by nested spherical interpolation::

    f(a, b; lam) = sin(lam * theta) / sin(theta) * a + sin((1 - lam) * theta) / sin(theta) * b,
    theta = arccos(a . b)
    h = f(x^{M-1}, f(..., f(x^2, f(x^1, x^0))))

with ``lam ~ Beta(alpha, alpha)`` per item during training (a Mixup over the modalities of the same
item). For unit inputs the result is a unit vector (Proposition 1). The functions here work on any
leading batch shape: vectors are ``[..., d]`` and ``lam`` is a scalar or ``[...]``.

``mode="casteljau"`` evaluates the genuine spherical Bezier curve with control points ``x^0..x^{M-1}``
(De Casteljau's algorithm with slerp in place of linear interpolation: ``M(M-1)/2`` slerps, one
parameter per item); ``mode="nested"`` (default, CM3's eq. 2) is the chain of ``M-1`` slerps above.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from mmgraph.nn.normalize import row_normalize

Lam = Union[float, Tensor]

#: cosines are clamped to ``[-1 + COS_EPS, 1 - COS_EPS]`` before ``arccos`` (no NaN gradients)
COS_EPS = 1e-7
#: below this angle (radians) slerp falls back to linear interpolation (they agree to O(theta^2))
SMALL_ANGLE = 1e-4

FUSION_MODES = ("slerp", "linear", "none")


def _lam(lam: Lam, ref: Tensor) -> Tensor:
    """``lam`` as a ``[..., 1]`` tensor broadcastable against the ``[..., d]`` vectors."""
    lam = torch.as_tensor(lam, dtype=ref.dtype, device=ref.device)
    return lam.unsqueeze(-1) if lam.dim() > 0 else lam


def lerp(a: Tensor, b: Tensor, lam: Lam) -> Tensor:
    """Linear interpolation in CM3's argument order: ``lam * a + (1 - lam) * b`` (``[..., d]``)."""
    w = _lam(lam, a)
    return w * a + (1 - w) * b


def slerp(a: Tensor, b: Tensor, lam: Lam, eps: float = COS_EPS) -> Tensor:
    """Spherical interpolation ``sin(lam t)/sin(t) a + sin((1-lam) t)/sin(t) b``, ``t = arccos(a.b)``.

    ``a, b [..., d]`` are expected on the unit sphere (the angle uses their plain dot product, as in
    the paper; normalise first). ``lam`` is a scalar or ``[...]``; ``lam = 1`` gives ``a``, ``lam = 0``
    gives ``b``. The cosine is clamped to ``[-1+eps, 1-eps]``; for angles below :data:`SMALL_ANGLE`
    the linear interpolation is returned instead (the two agree to ``O(theta^2)``). Antipodal inputs
    have no unique great circle and give an arbitrary (non-unit) result.

    Differentiable in ``a`` and ``b`` (not in ``lam``) through a closed-form backward: one pass
    over the ``[..., d]`` inputs instead of the dozen small kernels autograd would record.
    """
    w = _lam(lam, a).detach()
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        if a.shape != b.shape:  # autograd.Function gradients must match their inputs' shapes
            a, b = torch.broadcast_tensors(a, b)
        return _Slerp.apply(a, b, w, eps)
    return _slerp_forward(a, b, w, eps)[0]


def _slerp_coefficients(a: Tensor, b: Tensor, w: Tensor, eps: float):
    """``(cos, theta, sin theta, inside, coef_a, coef_b)``, all ``[..., 1]``; ``inside``: the
    coefficients depend on theta (cosine not clamped, no linear fallback)."""
    raw = torch.linalg.vecdot(a, b).unsqueeze(-1)
    cos = raw.clamp(-1 + eps, 1 - eps)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    small = theta < SMALL_ANGLE
    ca = torch.sin(w * theta) / sin
    cb = torch.sin((1 - w) * theta) / sin
    if bool(small.any()):  # linear interpolation below SMALL_ANGLE
        ca = torch.where(small, w.expand_as(ca), ca)
        cb = torch.where(small, (1 - w).expand_as(cb), cb)
    inside = (raw == cos) & ~small
    return cos, theta, sin, inside, ca, cb


def _slerp_forward(a: Tensor, b: Tensor, w: Tensor, eps: float):
    coefs = _slerp_coefficients(a, b, w, eps)
    ca, cb = coefs[4], coefs[5]
    return ca * a + cb * b, coefs


class _Slerp(torch.autograd.Function):
    """``out = c_a(theta) a + c_b(theta) b`` with ``theta = arccos(a . b)``; backward:
    ``g_a = c_a g + k b``, ``g_b = c_b g + k a`` with
    ``k = (g.a dc_a/dtheta + g.b dc_b/dtheta) dtheta/dcos`` (0 where the cosine is clamped or the
    linear fallback applies, whose coefficients do not depend on theta)."""

    @staticmethod
    def forward(ctx, a, b, w, eps):  # type: ignore[override]
        out, (cos, theta, sin, inside, ca, cb) = _slerp_forward(a, b, w, eps)
        ctx.save_for_backward(a, b, w, cos, theta, sin, inside, ca, cb)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        a, b, w, cos, theta, sin, inside, ca, cb = ctx.saved_tensors
        ga = torch.linalg.vecdot(g, a).unsqueeze(-1)
        gb = torch.linalg.vecdot(g, b).unsqueeze(-1)
        # d/dtheta [sin(w theta) / sin theta] = (w cos(w theta) - c_a cos theta) / sin theta
        dca = (w * torch.cos(w * theta) - ca * cos) / sin
        dcb = ((1 - w) * torch.cos((1 - w) * theta) - cb * cos) / sin
        k = (ga * dca + gb * dcb) * (-1.0 / sin) * inside.to(g.dtype)   # dtheta/dcos = -1 / sin theta
        grad_a = torch.addcmul(g * ca, k, b) if ctx.needs_input_grad[0] else None
        grad_b = torch.addcmul(g * cb, k, a) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None


def _interp(kind: str):
    if kind == "slerp":
        return slerp
    if kind == "linear":
        return lerp
    raise ValueError(f"interpolation must be 'slerp' or 'linear', got {kind!r}")


def _level_lams(lam: Lam, n: int, ref: Tensor):
    """Split ``lam`` into ``n`` per-level parameters: a scalar / ``[...]`` is reused at every level, a
    ``[..., n]`` tensor (as many dimensions as the vectors) gives level ``k`` the slice ``lam[..., k]``."""
    lam_t = torch.as_tensor(lam, dtype=ref.dtype, device=ref.device)
    if lam_t.dim() == ref.dim() and lam_t.dim() > 0:
        if lam_t.shape[-1] != n:
            raise ValueError(f"per-level lam must have {n} entries in its last dimension, got {tuple(lam_t.shape)}")
        return [lam_t[..., k] for k in range(n)]
    return [lam_t] * n


def spherical_bezier(vectors: Sequence[Tensor], lam: Lam = 0.5, mode: str = "nested",
                     interpolation: str = "slerp") -> Tensor:
    """Fuse ``M >= 1`` vectors ``[..., d]`` into one ``[..., d]``.

    Args:
        vectors: ``x^0, ..., x^{M-1}``, each ``[..., d]`` (unit vectors for slerp).
        lam: interpolation parameter(s): a scalar, ``[...]`` (one per item, reused at every level)
            or ``[..., M-1]`` (one per item and level; ``nested`` mode only).
        mode: ``"nested"`` -- CM3 eq. 2, ``h_0 = x^0``, ``h_k = f(x^k, h_{k-1}; lam_k)``;
            ``"casteljau"`` -- De Casteljau on the control points (one ``lam`` for all levels).
        interpolation: ``"slerp"`` (spherical; unit inputs give a unit output, Proposition 1) or
            ``"linear"`` (the "LF" ablation; the result is generally inside the ball).
    """
    vecs = list(vectors)
    if not vecs:
        raise ValueError("spherical_bezier needs at least one vector")
    f = _interp(interpolation)
    if len(vecs) == 1:
        return vecs[0]
    if mode == "nested":
        lams = _level_lams(lam, len(vecs) - 1, vecs[0])
        h = vecs[0]
        for k in range(1, len(vecs)):
            h = f(vecs[k], h, lams[k - 1])
        return h
    if mode == "casteljau":
        pts = vecs
        while len(pts) > 1:
            # (1 - lam) weight on the earlier control point, as in B(t) = (1-t) P0 + t P1
            pts = [f(pts[k + 1], pts[k], lam) for k in range(len(pts) - 1)]
        return pts[0]
    raise ValueError(f"mode must be 'nested' or 'casteljau', got {mode!r}")


def sample_beta(alpha: float, shape, device=None, dtype=torch.float32) -> Tensor:
    """``lam ~ Beta(alpha, alpha)`` of ``shape`` (torch's global generator, seeded by the trainer)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    conc = torch.full(tuple(shape), float(alpha), device=device, dtype=dtype)
    if conc.numel() == 0:  # e.g. one modality: nothing to interpolate
        return conc
    return torch.distributions.Beta(conc, conc).sample()


class SphericalBezierFusion(nn.Module):
    """Parameter-free fusion layer (CM3's "Spherical Bezier multimodal fusion").

    Normalises each ``[N, d]`` input onto the unit sphere and fuses them with :func:`spherical_bezier`.
    In training mode ``lam ~ Beta(alpha, alpha)`` is drawn per item (and per nesting level) on every
    call; in eval mode ``eval_lam`` is used (default 0.5, the expectation of the symmetric Beta).
    ``last_lam`` holds the parameters of the latest call.

    Args:
        alpha: Beta concentration (CM3 grid: 0.1, 0.5, 0.9).
        interpolation: ``"slerp"`` or ``"linear"`` (ablation "LF").
        mode: ``"nested"`` (CM3 eq. 2) or ``"casteljau"``.
        eval_lam: a float in [0, 1].
        normalize_inputs: put the inputs on the unit sphere first.
    """

    def __init__(self, alpha: float = 0.5, interpolation: str = "slerp", mode: str = "nested",
                 eval_lam: float = 0.5, normalize_inputs: bool = True):
        super().__init__()
        _interp(interpolation)
        if mode not in ("nested", "casteljau"):
            raise ValueError(f"mode must be 'nested' or 'casteljau', got {mode!r}")
        if not 0.0 <= float(eval_lam) <= 1.0:
            raise ValueError(f"eval_lam must be in [0, 1], got {eval_lam}")
        self.alpha, self.interpolation, self.mode = float(alpha), interpolation, mode
        self.eval_lam = float(eval_lam)
        self.normalize_inputs = normalize_inputs
        self.last_lam: Optional[Tensor] = None

    def n_params(self, n_vectors: int) -> int:
        """Interpolation parameters per item: ``M-1`` (nested) or 1 (casteljau)."""
        return max(n_vectors - 1, 0) if self.mode == "nested" else 1

    def sample_lam(self, n_items: int, n_vectors: int, device=None, dtype=torch.float32) -> Tensor:
        """Training draw ``[n_items, n_params]`` from ``Beta(alpha, alpha)``."""
        return sample_beta(self.alpha, (n_items, self.n_params(n_vectors)), device, dtype)

    def forward(self, vectors: Sequence[Tensor], lam: Optional[Tensor] = None) -> Tensor:
        vecs = [row_normalize(v) if self.normalize_inputs else v for v in vectors]
        if lam is None:
            n, k = vecs[0].shape[0], self.n_params(len(vecs))
            if self.training:
                lam = self.sample_lam(n, len(vecs), vecs[0].device, vecs[0].dtype)
            else:
                lam = torch.full((n, k), self.eval_lam, device=vecs[0].device, dtype=vecs[0].dtype)
        self.last_lam = lam.detach() if torch.is_tensor(lam) else lam
        if torch.is_tensor(lam) and lam.dim() == 2 and self.mode == "casteljau":
            lam = lam[:, 0]
        return spherical_bezier(vecs, lam, self.mode, self.interpolation)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, interpolation={self.interpolation}, mode={self.mode}, "
                f"eval_lam={self.eval_lam}")
