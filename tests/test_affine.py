"""``affine_row_scores`` and ``affine_feature_scores``: the values and gradients of scoring against
``F.linear(x, W, b)[ids]``."""
import pytest
import torch
import torch.nn.functional as F

from mmgraph.nn.affine import (DENSE_COEF_RATIO, affine_feature_scores, affine_row_scores, affine_table,
                               in_feature_space, user_side_map)


def _problem(seed: int, n_items: int, bias: bool, x_trainable: bool):
    """``users [6, 5]``, ``x [n_items, 7]``, ``weight [5, 7]``, ``bias [5]`` or None, ``ids [3, 6]`` (some repeated
    items: their gradients add up)."""
    g = torch.Generator().manual_seed(seed)
    d_x, d, b, k = 7, 5, 6, 3
    leaf = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x = torch.randn(n_items, d_x, generator=g, dtype=torch.float64, requires_grad=x_trainable)
    weight, users = leaf(d, d_x), leaf(b, d)
    bias_t = leaf(d) if bias else None
    ids = torch.randint(0, n_items, (k, b), generator=g)
    ids[1, :2] = ids[0, :2]
    return users, x, weight, bias_t, ids


def _assert_table_form(got, users, x, weight, bias_t, ids):
    """``got`` has the values and gradients (of a random weighting) of scoring against ``F.linear(x, W, b)[ids]``."""
    ref = (users.unsqueeze(0) * F.linear(x, weight, bias_t)[ids]).sum(-1)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    coef = torch.randn(ids.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    inputs = [t for t in (users, x, weight, bias_t) if t is not None and t.requires_grad]
    for a, r in zip(torch.autograd.grad((got * coef).sum(), inputs), torch.autograd.grad((ref * coef).sum(), inputs)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    return ref


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_trainable", [True, False])
# both backward forms: items <= 2 K B (the per-item sums; at 30 items some are never scored), and more
@pytest.mark.parametrize("n_items", [13, 30, 50])
def test_affine_row_scores_equal_the_table_form(bias, x_trainable, n_items):
    assert (n_items <= DENSE_COEF_RATIO * 18) == (n_items in (13, 30))
    users, x, weight, bias_t, ids = _problem(0, n_items, bias, x_trainable)
    assert n_items != 30 or torch.unique(ids).numel() < n_items
    ref = _assert_table_form(affine_row_scores(users, x, weight, bias_t, ids), users, x, weight, bias_t, ids)
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


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_trainable", [True, False])
@pytest.mark.parametrize("given_uw", [True, False])
def test_affine_feature_scores_equal_the_table_form(bias, x_trainable, given_uw):
    users, x, weight, bias_t, ids = _problem(2, 20, bias, x_trainable)
    uw = user_side_map(users, weight) if given_uw else None
    _assert_table_form(affine_feature_scores(users, x, weight, bias_t, ids, uw=uw), users, x, weight, bias_t, ids)
    if uw is not None:
        assert not uw.requires_grad
        torch.testing.assert_close(uw, users.detach() @ weight.detach())


def test_affine_feature_scores_gradient_check():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 6, (2, 5), generator=g)
    assert torch.autograd.gradcheck(lambda u, x, w, b: affine_feature_scores(u, x, w, b, ids), (u, x, w, bias))


def test_feature_space_is_chosen_for_narrow_features_only():
    w = torch.zeros(64, 1)
    assert in_feature_space(torch.zeros(10, 128), torch.zeros(64, 128))       # TikTok's 128-d features
    assert not in_feature_space(torch.zeros(10, 4096), torch.zeros(64, 4096))  # Baby's image features
    assert not in_feature_space(torch.zeros(10, 384), torch.zeros(64, 384))
    assert in_feature_space(torch.zeros(10, 1), w)


@pytest.mark.skipif(not __import__("mmgraph.nn.linear", fromlist=["ENABLED"]).ENABLED,
                    reason="this PyTorch build has no oneDNN linear kernel")
@pytest.mark.parametrize("n_items", [13, 50])        # the per-item sums' dW, and U^T Z
@pytest.mark.parametrize("space", ["rows", "features"])
def test_the_weight_gradient_of_wide_features_through_onednn(monkeypatch, n_items, space):
    """float32 with every feature table 'wide' (:func:`mmgraph.nn.linear.weight_grad` takes oneDNN, as Amazon's
    4096-d image features do): the same weight gradient as the table form."""
    from mmgraph.nn import linear as L

    ran, kernel = [], L.KERNEL

    def counted(a, b, *rest):
        ran.append((tuple(a.shape), tuple(b.shape)))
        return kernel(a, b, *rest)

    monkeypatch.setattr(L, "KERNEL", counted)
    monkeypatch.setattr(L, "MIN_MACS", 1)
    monkeypatch.setattr(L, "WIDE_MIN", 7)
    monkeypatch.setattr(L, "WIDE_RATIO", 1)
    users, x, weight, bias_t, ids = (t.float().detach().requires_grad_(t.requires_grad) if t.is_floating_point()
                                     else t for t in _problem(4, n_items, True, False))
    score = affine_row_scores if space == "rows" else affine_feature_scores
    got = score(users, x, weight, bias_t, ids)
    ref = (users.unsqueeze(0) * F.linear(x, weight, bias_t)[ids]).sum(-1)
    (g_got,) = torch.autograd.grad(got.square().sum(), [weight])
    (g_ref,) = torch.autograd.grad(ref.square().sum(), [weight])
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-4)
    assert any(a[0] == 5 and b[0] == 7 and a[1] == b[1] for a, b in ran)   # dW [5, 7] = G^T [5, N] . X^T [7, N]
