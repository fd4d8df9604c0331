"""matmul_precision: ``medium`` computes the large CPU products from bfloat16 operands (float32 accumulation and
results) where the CPU has native bfloat16; scoped to a run, applied again by ``mmgraph evaluate``."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmgraph.nn import linear as L
from tests.test_nn_linear import grads, linear_problem, upstream

BF = torch.bfloat16


@pytest.fixture
def bf16_everywhere(monkeypatch):
    """Every product, however small, takes the bfloat16 path under ``medium`` (whatever this CPU has: torch
    emulates bfloat16 products where they are not native, with the same rounding); returns the list of the
    ``(rows, k, n)`` products that took it."""
    monkeypatch.setattr(L, "MIN_MACS", 1)
    monkeypatch.setattr(L, "bf16_native", lambda: True)
    ran, apply = [], L._Bf16Linear.apply

    def counted(x, w, b):
        ran.append((x.shape[0], x.shape[1], w.shape[0]))
        return apply(x, w, b)

    monkeypatch.setattr(L._Bf16Linear, "apply", counted)
    return ran


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_linear_equals_products_of_rounded_operands(bf16_everywhere, bias):
    x, w, b, params = linear_problem(bias)
    with L.matmul_precision("medium") as on:
        got, got_g = grads(lambda: L.linear(x, w, b), *params)
    assert on and bf16_everywhere == [(300, 24, 10)] and not L.BF16
    # the reference: each product of bfloat16-rounded operands, rounded once to bfloat16, returned as float32
    grad = upstream(got)
    xr, wr, gr = x.detach().to(BF), w.detach().to(BF), grad.to(BF)
    want = (xr @ wr.t()).float() + (b.detach() if bias else 0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_g[0], (gr @ wr).float(), rtol=0, atol=0)
    torch.testing.assert_close(got_g[1], (gr.t() @ xr).float(), rtol=0, atol=0)
    if bias:
        torch.testing.assert_close(got_g[2], grad.sum(0))
    # ... and within bfloat16's rounding of float32's products, but not equal to them (the path was taken)
    full, full_g = grads(lambda: F.linear(x, w, b), *params)
    for a, ref in zip([got] + got_g, [full] + full_g):
        rel = ((a - ref).norm() / ref.norm()).item()
        assert rel < 1e-2
    assert ((got - full).norm() / full.norm()).item() > 1e-5


def test_bf16_matmul_of_a_transposed_weight_and_a_frozen_input(bf16_everywhere):
    torch.manual_seed(1)
    x = torch.randn(200, 16)                       # frozen features: no input gradient computed
    w = torch.randn(16, 12, requires_grad=True)
    with L.matmul_precision("medium"):
        got, (got_w,) = grads(lambda: L.matmul(x, w), w)
    grad = upstream(got)
    assert bf16_everywhere == [(200, 16, 12)]
    torch.testing.assert_close(got, (x.to(BF) @ w.detach().to(BF)).float(), rtol=0, atol=0)
    torch.testing.assert_close(got_w, (x.to(BF).t() @ grad.to(BF)).float(), rtol=0, atol=0)


def test_the_precision_is_scoped_checked_and_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(L, "MIN_MACS", 1)
    x, w = torch.randn(50, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="matmul_precision: expected one of highest, high, medium, got 'low'"):
        with L.matmul_precision("low"):
            pass
    assert L.BF16 is False
    monkeypatch.setattr(L, "bf16_native", lambda: False)
    with L.matmul_precision("medium") as on:
        assert on is False and L.BF16 is False
        torch.testing.assert_close(L.linear(x, w), F.linear(x, w))
    monkeypatch.setattr(L, "bf16_native", lambda: True)
    for precision in ("highest", "high"):
        with L.matmul_precision(precision) as on:
            assert on is False
    with L.matmul_precision("medium"):
        with L.matmul_precision("highest"):
            assert L.BF16 is False
            torch.testing.assert_close(L.linear(x, w), F.linear(x, w))   # (float32: oneDNN or PyTorch)
        assert L.BF16 is True
        assert L.linear(x.double(), w.double()).dtype == torch.float64   # float64 products stay float64
    assert L.BF16 is False
    before = torch.get_float32_matmul_precision()
    with L.matmul_precision("medium", torch.device("cuda")) as on:   # a CUDA run: PyTorch's own setting
        assert on is False and torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before


def test_a_medium_run_trains_in_bf16_and_evaluate_reproduces_its_metrics(bf16_everywhere, tmp_path, capsys):
    from mmgraph.cli.main import main

    run = tmp_path / "run"
    common = ["--method", "mmgcn", "--data", "synthetic:users=100,items=80", "--epochs", "2", "--no-progress"]
    assert main(["train", *common, "--out", str(run), "--set", "threads=1", "log_geometry=false",
                 "matmul_precision=medium"]) == 0
    trained = len(bf16_everywhere)
    assert trained > 0 and L.BF16 is False          # products in bfloat16 during the run only
    final = json.loads((run / "final_metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == final["test"]
    assert len(bf16_everywhere) > trained and L.BF16 is False
    evaluated = len(bf16_everywhere)
    from mmgraph.analysis.subsets import analyze_runs   # (the other readers of a run folder alike)
    assert analyze_runs([str(run)])
    assert len(bf16_everywhere) > evaluated and L.BF16 is False
    # the default run takes no bfloat16 product
    before = len(bf16_everywhere)
    assert main(["train", *common, "--set", "threads=1", "log_geometry=false"]) == 0
    assert len(bf16_everywhere) == before
