"""mmgraph.nn.linear: F.linear / @ through oneDNN for large float32 CPU products, the same values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmgraph.nn import linear as L
from mmgraph.utils.products import ProductCounter

needs_onednn = pytest.mark.skipif(not L.ENABLED, reason="this PyTorch build has no oneDNN linear kernel")


@pytest.fixture
def small_route(monkeypatch):
    """Route every product, however small, so that small operands exercise the oneDNN path; returns the shapes
    ``(rows, k, n)`` of the products the kernel ran."""
    monkeypatch.setattr(L, "MIN_MACS", 1)
    ran, kernel = [], L.KERNEL

    def counted(x, w, *rest):
        ran.append((x.shape[0], x.shape[1], w.shape[0]))
        return kernel(x, w, *rest)

    monkeypatch.setattr(L, "KERNEL", counted)
    return ran


def upstream(out):
    """The output gradient :func:`grads` back-propagates: ``linspace(-1, 1)`` in ``out``'s shape."""
    return torch.linspace(-1, 1, out.numel()).view_as(out)


def grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    out = fn()
    out.backward(upstream(out))
    return out.detach(), [t.grad.clone() for t in tensors]


def linear_problem(bias: bool):
    """``x [300, 24]``, ``w [10, 24]``, ``b [10]`` or None (all trainable) and the list of the trainable ones."""
    torch.manual_seed(0)
    x = torch.randn(300, 24, requires_grad=True)
    w = torch.randn(10, 24, requires_grad=True)
    b = torch.randn(10, requires_grad=True) if bias else None
    return x, w, b, [x, w] + ([b] if bias else [])


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("wide", [False, True])
def test_linear_equals_f_linear_values_and_gradients(small_route, monkeypatch, bias, wide):
    x, w, b, params = linear_problem(bias)                     # x [300, 24], w [10, 24]
    if wide:   # x counts as wide (24 >= 8 and >= 2 x 10): dW = dy^T x by oneDNN, x read transposed in place
        monkeypatch.setattr(L, "WIDE_MIN", 8)
        monkeypatch.setattr(L, "WIDE_RATIO", 2)
    got, got_g = grads(lambda: L.linear(x, w, b), *params)
    # the forward and dx = dy W by oneDNN; dW by mm, or by oneDNN as [10, 300] x ("weight") [24, 300]^T when wide
    assert small_route == [(300, 24, 10), (300, 10, 24)] + ([(10, 300, 24)] if wide else [])
    want, want_g = grads(lambda: F.linear(x, w, b), *params)
    torch.testing.assert_close(got, want)
    for g, h in zip(got_g, want_g):
        torch.testing.assert_close(g, h)


@needs_onednn
def test_matmul_and_a_column_slice_of_a_weight(small_route):
    torch.manual_seed(1)
    x = torch.randn(200, 16, requires_grad=True)
    w = torch.randn(16, 12, requires_grad=True)
    got, got_g = grads(lambda: L.matmul(x, w), x, w)
    assert small_route == [(200, 16, 12), (200, 12, 16)]
    want, want_g = grads(lambda: x @ w, x, w)
    torch.testing.assert_close(got, want)
    for g, h in zip(got_g, want_g):
        torch.testing.assert_close(g, h)
    # VBPR's per-modality block: a non-contiguous column slice of one weight
    big = torch.randn(8, 40, requires_grad=True)
    got, got_g = grads(lambda: L.linear(x, big[:, 10:26]), x, big)
    want, want_g = grads(lambda: F.linear(x, big[:, 10:26]), x, big)
    torch.testing.assert_close(got, want)
    for g, h in zip(got_g, want_g):
        torch.testing.assert_close(g, h)
    assert got_g[1][:, :10].abs().sum() == 0 and got_g[1][:, 26:].abs().sum() == 0


def test_small_float64_and_disabled_products_are_pytorch_s(monkeypatch):
    calls = []
    monkeypatch.setattr(L, "_Linear", type("Spy", (), {"apply": staticmethod(lambda *a: calls.append(a))}))
    x, w = torch.randn(50, 8), torch.randn(4, 8)
    torch.testing.assert_close(L.linear(x, w), F.linear(x, w))                      # under MIN_MACS
    monkeypatch.setattr(L, "MIN_MACS", 1)
    torch.testing.assert_close(L.linear(x.double(), w.double()), F.linear(x.double(), w.double()))
    torch.testing.assert_close(L.linear(x.t().contiguous().t(), w), F.linear(x, w))   # a non-contiguous input
    torch._C._set_mkldnn_enabled(False)      # what torch.backends.mkldnn.flags(enabled=False) sets
    try:
        torch.testing.assert_close(L.linear(x, w), F.linear(x, w))
    finally:
        torch._C._set_mkldnn_enabled(True)
    monkeypatch.setattr(L, "ENABLED", False)
    torch.testing.assert_close(L.matmul(x, w.t()), x @ w.t())
    assert calls == []


@needs_onednn
def test_a_failing_kernel_falls_back_and_turns_the_route_off(small_route, monkeypatch):
    def broken(*args):
        raise RuntimeError("mkldnn::_linear_pointwise: schema changed")

    monkeypatch.setattr(L, "KERNEL", broken)
    monkeypatch.setattr(L, "ENABLED", True)
    x, w = torch.randn(20, 6), torch.randn(3, 6)
    torch.testing.assert_close(L.linear(x, w), F.linear(x, w))
    assert L.ENABLED is False


def test_the_environment_switch_turns_the_route_off():
    import subprocess
    import sys

    code = "import mmgraph.nn.linear as L; print(L.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "MMGRAPH_ONEDNN": "0"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@needs_onednn
def test_the_product_counter_records_onednn_products():
    x, w = torch.randn(64, 32), torch.randn(16, 32)
    with ProductCounter() as counter:
        L.KERNEL(x, w, None, "none", [], "")
        torch.ops.mkldnn._linear_pointwise.binary(x, torch.randn(64, 16), w, None, "add")
    assert counter.dense == [("mm", (64, 32, 16))] * 2


@needs_onednn
def test_mismatched_operands_get_pytorch_s_error_and_keep_the_route(small_route):
    x = torch.randn(30, 6)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        L.linear(x, torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        L.matmul(x, torch.randn(5, 4))
    assert L.ENABLED and small_route == []
    torch.testing.assert_close(L.linear(x, torch.ones(4, 6)), F.linear(x, torch.ones(4, 6)))
    assert small_route == [(30, 6, 4)]


@pytest.fixture
def wide_route(small_route, monkeypatch):
    """Every input at least 8 columns and 2x its gradient's is 'wide' (:func:`L.weight_grad` takes oneDNN)."""
    monkeypatch.setattr(L, "WIDE_MIN", 8)
    monkeypatch.setattr(L, "WIDE_RATIO", 2)
    return small_route


@needs_onednn
def test_weight_grad_takes_onednn_for_wide_inputs_only(wide_route):
    torch.manual_seed(2)
    g = torch.randn(500, 6)
    for x in (torch.randn(500, 40), torch.randn(500, 10), torch.randn(40, 500).t(), torch.randn(500, 40).double()):
        got = L.weight_grad(g.to(x.dtype), x)   # against float64: a sum of 500 products, rounded either way
        torch.testing.assert_close(got.double(), g.double().t() @ x.double(), rtol=1e-5, atol=1e-4)
    # only the first: the second is narrow (10 < 2 x 6), the third not contiguous, the fourth float64
    assert wide_route == [(6, 500, 40)]


def test_weight_grad_thresholds_keep_tiktok_s_layers_on_mkl():
    def wide(n, k, rows=16018):
        return L._wide_route(torch.empty(rows, n), torch.empty(rows, k))

    assert L.ENABLED is False or (wide(64, 4096, 2048) and wide(64, 4480, 2048) and wide(256, 4096, 7050))
    assert not (wide(64, 64) or wide(64, 256) or wide(256, 256) or wide(64, 384, 7050) or wide(256, 1024, 7050))


def test_weight_grad_of_tall_inputs_sums_two_halves(monkeypatch):
    """Tall contiguous operands: the batch of the rows' two halves (and the odd last row) equals the plain product;
    anything else (a view, one thread, too few rows) is the plain product itself."""
    monkeypatch.setattr(L, "SPLIT_MIN_ROWS", 8)
    monkeypatch.setattr(L, "WIDE_MIN", 10 ** 9)
    calls = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(a[0].shape) or bmm(*a))
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for rows, dtype in ((501, torch.float32), (500, torch.float32), (9, torch.float64)):
            g, x = torch.randn(rows, 6, dtype=dtype), torch.randn(rows, 11, dtype=dtype)
            torch.testing.assert_close(L.weight_grad(g, x).double(), g.double().t() @ x.double(), rtol=1e-5, atol=1e-4)
        assert calls == [(2, 6, 250), (2, 6, 250), (2, 6, 4)]
        L.weight_grad(torch.randn(500, 6), torch.randn(11, 500).t())      # a transposed view
        L.weight_grad(torch.randn(7, 6), torch.randn(7, 11))              # below SPLIT_MIN_ROWS
        torch.set_num_threads(1)
        L.weight_grad(torch.randn(500, 6), torch.randn(500, 11))          # one thread: nothing to split between
        assert len(calls) == 3
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("rows", [7, 301])
def test_add_linear_equals_addmm_values_and_gradients(monkeypatch, rows):
    """``acc + x @ W.T`` for a column slice of a weight (MMGCN's combination): the values and every gradient of
    ``torch.addmm``, with the weight gradient summed from two halves when the rows are many."""
    monkeypatch.setattr(L, "SPLIT_MIN_ROWS", 100)
    torch.manual_seed(4)
    full = torch.randn(5, 14, requires_grad=True)
    acc, x = torch.randn(rows, 5, requires_grad=True), torch.randn(rows, 6, requires_grad=True)
    g = torch.randn(rows, 5)
    got = L.add_linear(acc, x, full[:, 8:])
    assert got.grad_fn is not None and "AddLinear" in type(got.grad_fn).__name__
    grads = torch.autograd.grad((got * g).sum(), (acc, x, full))
    ref = torch.addmm(acc, x, full[:, 8:].t())
    torch.testing.assert_close(got, ref)
    for a, b in zip(grads, torch.autograd.grad((ref * g).sum(), (acc, x, full))):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(L.add_linear(acc, x, full[:, 8:]), ref)
