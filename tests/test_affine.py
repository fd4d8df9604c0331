"""``affine_row_scores``: the values and gradients of scoring against ``F.linear(x, W, b)[ids]``."""
import pytest
import torch
import torch.nn.functional as F

from mmgraph.nn.affine import DENSE_COEF_RATIO, affine_row_scores, affine_table


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_trainable", [True, False])
# both backward forms: items <= 2 K B (the per-item sums; at 30 items some are never scored), and more
@pytest.mark.parametrize("n_items", [13, 30, 50])
def test_affine_row_scores_equal_the_table_form(bias, x_trainable, n_items):
    assert (n_items <= DENSE_COEF_RATIO * 18) == (n_items in (13, 30))
    g = torch.Generator().manual_seed(0)
    d_x, d, b, k = 7, 5, 6, 3
    leaf = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x = torch.randn(n_items, d_x, generator=g, dtype=torch.float64, requires_grad=x_trainable)
    weight, users = leaf(d, d_x), leaf(b, d)
    bias_t = leaf(d) if bias else None
    ids = torch.randint(0, n_items, (k, b), generator=g)
    ids[1, :2] = ids[0, :2]                                   # repeated items: their gradients add up
    assert n_items != 30 or torch.unique(ids).numel() < n_items
    coef = torch.randn(k, b, generator=g, dtype=torch.float64)
    inputs = [t for t in (users, x, weight, bias_t) if t is not None and t.requires_grad]

    got = affine_row_scores(users, x, weight, bias_t, ids)
    ref = (users.unsqueeze(0) * F.linear(x, weight, bias_t)[ids]).sum(-1)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(torch.autograd.grad((got * coef).sum(), inputs), torch.autograd.grad((ref * coef).sum(), inputs)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    # a shared precomputed table gives the same
    shared = affine_row_scores(users, x, weight, bias_t, ids, table=affine_table(x, weight, bias_t))
    torch.testing.assert_close(shared, ref, rtol=1e-12, atol=1e-12)
    assert not affine_table(x, weight, bias_t).requires_grad


@pytest.mark.parametrize("n_items", [6, 40])
def test_affine_row_scores_gradient_check(n_items):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_items, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, min(n_items, 6), (2, 5), generator=g)
    assert torch.autograd.gradcheck(lambda u, x, w, b: affine_row_scores(u, x, w, b, ids), (u, x, w, bias))
