import math

import torch
import torch.nn.functional as F

from mmgraph.losses import alignment, bpr_loss, emb_reg, info_nce, l2_reg, uniformity


def test_bpr_matches_formula():
    pos, neg = torch.randn(7), torch.randn(7)
    ref = -sum(math.log(1e-10 + 1 / (1 + math.exp(-(p - n)))) for p, n in zip(pos.tolist(), neg.tolist())) / 7
    assert abs(float(bpr_loss(pos, neg)) - ref) < 1e-6


def test_emb_reg_is_unsquared_frobenius_over_batch():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    ref = (math.sqrt(float((a ** 2).sum())) + math.sqrt(float((b ** 2).sum()))) / 5
    assert abs(float(emb_reg(a, b)) - ref) < 1e-5
    assert abs(float(l2_reg(a, b)) - float(((a ** 2).sum() + (b ** 2).sum()) / 10)) < 1e-5


def test_alignment_and_uniformity_brute_force():
    x = F.normalize(torch.randn(9, 4, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(9, 4, dtype=torch.float64), dim=1)
    assert abs(float(alignment(x, y)) - sum(float(((x[k] - y[k]) ** 2).sum()) for k in range(9)) / 9) < 1e-9
    vals = [math.exp(-2 * float(((x[a] - x[b]) ** 2).sum())) for a in range(9) for b in range(a + 1, 9)]
    assert abs(float(uniformity(x, t=2)) - math.log(sum(vals) / len(vals))) < 1e-9
    assert float(uniformity(x[:1])) == 0.0


def test_uniformity_value_and_gradient_equal_the_pair_distance_form():
    # any rows (not only unit ones), float64 and float32: the Gram-matrix computation against torch.pdist
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        x = (torch.randn(40, 6, dtype=dtype) * torch.rand(40, 1, dtype=dtype)).requires_grad_(True)
        ref_x = x.detach().clone().requires_grad_(True)
        d2 = torch.pdist(ref_x).pow(2)
        ref = torch.logsumexp(-1.5 * d2, 0) - math.log(d2.numel())
        ref.backward()
        val = uniformity(x, t=1.5)
        val.backward()
        assert abs(val.item() - ref.item()) < tol
        assert torch.allclose(x.grad, ref_x.grad, atol=tol, rtol=tol)


def test_info_nce_brute_force():
    a, p = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    an, pn = F.normalize(a, dim=1), F.normalize(p, dim=1)
    ref = 0.0
    for k in range(6):
        logits = [float(an[k] @ pn[j]) / 0.2 for j in range(6)]
        ref += -(logits[k] - math.log(sum(math.exp(v) for v in logits)))
    assert abs(float(info_nce(a, p, 0.2)) - ref / 6) < 1e-9


def test_weighted_logsumexp_equals_torch_logsumexp_values_and_gradients():
    from mmgraph.losses import weighted_logsumexp
    from tests.helpers import assert_same_gradients
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(37, 5, generator=g, dtype=torch.float64) * 8).requires_grad_(True)  # wide score range
    x = torch.randn(23, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randint(1, 4, (37,), generator=g).to(torch.float64)
    ref = (w * torch.logsumexp(a @ x.t(), dim=1)).sum()
    for block in (1, 8, 64):     # blocks that divide the rows, leave a remainder, cover them all
        ours = weighted_logsumexp(a, x, w, block=block)
        torch.testing.assert_close(ours, ref)
        assert_same_gradients(ours * 1.7, ref * 1.7, [a, x])   # the incoming gradient scales both
    plain = weighted_logsumexp(a, x)
    torch.testing.assert_close(plain, torch.logsumexp(a @ x.t(), dim=1).sum())
    # one side without gradient: the other's is unchanged
    ga = torch.autograd.grad(weighted_logsumexp(a, x.detach(), w), a)[0]
    torch.testing.assert_close(ga, torch.autograd.grad(ref, a, retain_graph=True)[0])


def test_weighted_logsumexp_default_block_is_bounded_by_memory():
    from mmgraph.losses import LSE_BLOCK_BYTES, lse_block_rows
    assert lse_block_rows(1340) * 1340 * 4 <= LSE_BLOCK_BYTES and lse_block_rows(1340) >= 2 * 2048  # a batch: one block
    assert lse_block_rows(63_000) == LSE_BLOCK_BYTES // (63_000 * 4)           # a catalogue: 133 rows, 32 MB
    assert lse_block_rows(10_000_000) == 128 and lse_block_rows(1340, 8) == lse_block_rows(2680, 4)


def test_weighted_logsumexp_column_weights_are_multiplicities():
    from mmgraph.losses import weighted_logsumexp
    g = torch.Generator().manual_seed(1)
    a = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([2, 0, 1, 3, 1, 1])
    ours = weighted_logsumexp(a, x, col_weights=c, block=4)
    expanded = x.repeat_interleave(c, dim=0)           # the columns written out with their repeats
    ref = torch.logsumexp(a @ expanded.t(), dim=1).sum()
    torch.testing.assert_close(ours, ref)
    for got, want in zip(torch.autograd.grad(ours, (a, x)), torch.autograd.grad(ref, (a, x))):
        torch.testing.assert_close(got, want)


def test_soft_cross_entropy_equals_the_log_softmax_expression():
    import pytest

    from mmgraph.losses import soft_cross_entropy
    from tests.helpers import assert_same_gradients
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(11, 7, generator=g, dtype=torch.float64) * 9).requires_grad_(True)  # wide logit range
    r = torch.rand(11, 7, generator=g, dtype=torch.float64)
    r[3] = 0.0                                              # a row with no target mass
    r[5] *= 4.0                                             # rows need not sum to 1
    for scale in (1.0, 1 / 11, 0.37):
        ref = -scale * (r * F.log_softmax(z, dim=1)).sum()
        ours = soft_cross_entropy(z, r, scale)
        torch.testing.assert_close(ours, ref)
        assert_same_gradients(ours * 1.3, ref * 1.3, [z])    # the incoming gradient scales it
    # the target gets no gradient, even when it has one upstream
    rg = r.clone().requires_grad_(True)
    soft_cross_entropy(z, rg).backward()
    assert rg.grad is None
    with pytest.raises(ValueError, match="differ in shape"):
        soft_cross_entropy(z, r[:, :3])


def test_paired_info_nce_equals_the_repeated_rows():
    from mmgraph.losses import paired_info_nce, unit_info_nce
    g = torch.Generator().manual_seed(2)
    anchor = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    positive = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ai = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 1, 0])
    pi = torch.tensor([0, 1, 1, 2, 3, 0, 3, 3, 2, 0])    # a repeated (anchor, positive) pair included
    ours = paired_info_nce(anchor, positive, ai, pi, 0.2)
    ref = unit_info_nce(anchor[ai], positive[pi], 0.2)
    torch.testing.assert_close(ours, ref)
    for got, want in zip(torch.autograd.grad(ours, (anchor, positive)), torch.autograd.grad(ref, (anchor, positive))):
        torch.testing.assert_close(got, want)


def test_info_nce_refuses_mismatched_shapes_with_a_shape_message():
    import pytest
    with pytest.raises(ValueError, match=r"anchor \(16, 4\) and positive \(5, 4\) must have the same shape"):
        info_nce(torch.randn(16, 4), torch.randn(5, 4))
