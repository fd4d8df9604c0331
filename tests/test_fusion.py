"""Spherical Bezier / slerp fusion (mmgraph.nn.fusion): CM3 eq. 2-3 and Proposition 1."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmgraph.nn import SphericalBezierFusion, lerp, slerp, spherical_bezier
from mmgraph.nn.fusion import sample_beta


def _unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("n_modalities", [2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["nested", "casteljau"])
def test_proposition_1_fused_vector_is_on_the_unit_sphere(n_modalities, mode):
    vecs = [_unit(500, 64, seed=k) for k in range(n_modalities)]
    g = torch.Generator().manual_seed(1)
    n_lam = n_modalities - 1 if mode == "nested" else 1
    for lam in (torch.rand(500, n_lam, generator=g).squeeze(-1) if mode == "casteljau"
                else torch.rand(500, n_lam, generator=g),  # per item (and level)
                torch.rand(500, generator=g), 0.5, 0.0, 1.0, 0.9):
        h = spherical_bezier(vecs, lam, mode=mode)
        assert h.shape == (500, 64)
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(500), atol=1e-5, rtol=0)


def test_proposition_1_with_sampled_beta_lambdas_through_the_module():
    fuser = SphericalBezierFusion(alpha=0.5).train()
    for m in range(2, 6):
        # inputs need not be unit: the module puts them on the sphere first
        h = fuser([torch.randn(300, 32) * (k + 1) for k in range(m)])
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(300), atol=1e-5, rtol=0)
        assert fuser.last_lam.shape == (300, m - 1)


def test_slerp_endpoints_and_geodesic_angles():
    a, b = _unit(200, 16, seed=1, dtype=torch.float64), _unit(200, 16, seed=2, dtype=torch.float64)
    torch.testing.assert_close(slerp(a, b, 1.0), a)
    torch.testing.assert_close(slerp(a, b, 0.0), b)
    theta = torch.acos((a * b).sum(-1))
    lam = torch.rand(200, dtype=torch.float64)
    h = slerp(a, b, lam)
    # eq. 3 walks the great circle: angle(h, b) = lam * theta, angle(h, a) = (1 - lam) * theta
    torch.testing.assert_close(torch.acos((h * b).sum(-1).clamp(-1, 1)), lam * theta, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.acos((h * a).sum(-1).clamp(-1, 1)), (1 - lam) * theta, atol=1e-6, rtol=0)
    # the formula itself
    ref = (torch.sin(lam * theta) / torch.sin(theta))[:, None] * a + \
          (torch.sin((1 - lam) * theta) / torch.sin(theta))[:, None] * b
    torch.testing.assert_close(h, ref)


def test_slerp_is_finite_for_parallel_vectors_with_finite_gradients():
    a = _unit(4, 8, seed=3).requires_grad_()
    h = slerp(a, a, torch.tensor([0.1, 0.5, 0.7, 1.0]))
    torch.testing.assert_close(h, a.detach(), atol=1e-6, rtol=0)
    h.sum().backward()
    assert torch.isfinite(a.grad).all()
    # nearly parallel: falls back to (or agrees with) linear interpolation
    b = F.normalize(a.detach() + 1e-6 * torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(slerp(a.detach(), b, 0.3), lerp(a.detach(), b, 0.3), atol=1e-6, rtol=0)


def test_nested_order_matches_equation_2():
    x0, x1, x2 = (_unit(10, 6, seed=k, dtype=torch.float64) for k in range(3))
    lam = torch.rand(10, 2, dtype=torch.float64)
    expected = slerp(x2, slerp(x1, x0, lam[:, 0]), lam[:, 1])  # f(x^2, f(x^1, x^0))
    torch.testing.assert_close(spherical_bezier([x0, x1, x2], lam), expected)
    # a single lambda per item is reused at every level
    torch.testing.assert_close(spherical_bezier([x0, x1, x2], lam[:, 0]),
                               slerp(x2, slerp(x1, x0, lam[:, 0]), lam[:, 0]))
    # one modality: the vector itself
    torch.testing.assert_close(spherical_bezier([x0], 0.3), x0)


def test_linear_fusion_is_the_lf_ablation_and_leaves_the_sphere():
    a, b = _unit(100, 16, seed=4), _unit(100, 16, seed=5)
    h = spherical_bezier([a, b], 0.5, interpolation="linear")
    torch.testing.assert_close(h, 0.5 * b + 0.5 * a)
    assert (h.norm(dim=-1) < 1 - 1e-3).all()


def test_casteljau_with_two_points_is_slerp():
    a, b = _unit(20, 8, seed=6), _unit(20, 8, seed=7)
    lam = torch.rand(20)
    torch.testing.assert_close(spherical_bezier([a, b], lam, mode="casteljau"), slerp(b, a, lam))


def test_module_samples_in_training_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    fuser = SphericalBezierFusion(alpha=0.5)
    vecs = [torch.randn(1000, 16), torch.randn(1000, 16)]
    fuser.train()
    h1, h2 = fuser(vecs), fuser(vecs)
    assert not torch.allclose(h1, h2)
    fuser.eval()
    e1, e2 = fuser(vecs), fuser(vecs)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(e1, slerp(F.normalize(vecs[1], dim=-1), F.normalize(vecs[0], dim=-1), 0.5))
    assert torch.all(fuser.last_lam == 0.5)


def test_beta_draws():
    torch.manual_seed(0)
    for alpha in (0.1, 0.5, 0.9):
        lam = sample_beta(alpha, (20000,))
        assert lam.min() >= 0 and lam.max() <= 1
        assert abs(float(lam.mean()) - 0.5) < 0.02
        # Var Beta(a, a) = 1 / (4 (2a + 1))
        assert abs(float(lam.var()) - 1 / (4 * (2 * alpha + 1))) < 0.01
    with pytest.raises(ValueError):
        sample_beta(0.0, (3,))
    with pytest.raises(ValueError):
        SphericalBezierFusion(eval_lam=1.5)
    with pytest.raises(ValueError):
        spherical_bezier([torch.zeros(2, 2)] * 2, 0.5, mode="bogus")


def test_gradients_flow_through_slerp():
    a = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(30, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: slerp(F.normalize(a, dim=-1), F.normalize(b, dim=-1), lam), (a, b))
    assert math.isfinite(float(slerp(F.normalize(a, dim=-1), F.normalize(b, dim=-1), lam).detach().sum()))


def _slerp_by_autograd(a, b, lam):
    """The textbook formula, differentiated by autograd (the reference for slerp's closed-form backward)."""
    w = torch.as_tensor(lam, dtype=a.dtype)
    w = w.unsqueeze(-1) if w.dim() > 0 else w
    theta = torch.acos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin(w * theta) * a + torch.sin((1 - w) * theta) * b) / torch.sin(theta)


@pytest.mark.parametrize("lam", [0.3, "rows"])
def test_slerp_backward_equals_autograd_of_the_formula(lam):
    torch.manual_seed(3)
    a0, b0 = F.normalize(torch.randn(40, 7, dtype=torch.float64), dim=-1), F.normalize(torch.randn(40, 7, dtype=torch.float64), dim=-1)
    lam = torch.rand(40, dtype=torch.float64) if lam == "rows" else lam
    g = torch.randn(40, 7, dtype=torch.float64)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    out, ref = slerp(a, b, lam), _slerp_by_autograd(ra, rb, lam)
    torch.testing.assert_close(out, ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(a.grad, ra.grad)
    torch.testing.assert_close(b.grad, rb.grad)
    # broadcasting one vector against many
    c = b0[:1].clone().requires_grad_()
    slerp(a0, c, lam).sum().backward()
    rc = b0[:1].clone().requires_grad_()
    _slerp_by_autograd(a0, rc, lam).sum().backward()
    torch.testing.assert_close(c.grad, rc.grad)
