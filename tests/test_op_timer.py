"""mmgraph.utils.op_timer: per-operator times measured in place, forward and backward."""
from __future__ import annotations

import time

import pytest

import torch
import torch.nn.functional as F

from mmgraph.utils.op_timer import OpTimer


def test_records_forward_and_backward_operators_with_shapes():
    x = torch.randn(30, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    with OpTimer() as timer:
        F.leaky_relu(x @ w.t()).sum().backward()
    names = {name for name, _ in timer.seconds}
    assert {"mm", "leaky_relu", "leaky_relu_backward", "sum"} <= names
    assert timer.calls[("mm", ((30, 8), (8, 5)))] == 1          # the forward product, by its shapes
    assert sum(c for (name, _), c in timer.calls.items() if name == "mm") == 3   # + dx and dW
    assert timer.total() == sum(timer.seconds.values()) > 0
    assert x.grad is not None and w.grad is not None              # the computation itself is unchanged


def test_lists_of_tensors_show_their_length_and_the_top_is_sorted():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    m = torch.randn(400, 400)
    with OpTimer() as timer:
        torch.cat([a, b, a])
        for _ in range(3):
            torch.mm(m, m)
    assert ("cat", (("3 tensors",),)) in timer.calls
    top = timer.top(rows=2)
    assert top[0][1] >= top[1][1] and len(top) == 2
    assert top[0][0][0] == "mm" and top[0][2] == 3


def test_time_is_the_operators_own_not_the_code_around_them():
    x = torch.randn(10)
    with OpTimer() as timer:
        for _ in range(5):
            x.add(1)
            time.sleep(0.01)                # outside any operator: not counted
    assert timer.calls[("add", ((10,),))] == 5
    assert timer.total() < 0.02
    text = timer.table(rows=3, per=5)
    assert "add([10])" in text and "all operators" in text
    assert text.splitlines()[1].split()[2] == "1.0"               # calls per step with per=5


def test_added_table_lists_what_a_run_spends_beyond_its_base():
    x, m = torch.randn(50, 50), torch.randn(300, 300)
    base, plus = OpTimer(), OpTimer()
    with base:
        for _ in range(2):
            x.add(1)
    with plus:
        for _ in range(4):                  # two "steps" of the base's work plus a product each
            x.add(1)
        for _ in range(2):
            torch.mm(m, m)
    text = plus.added_table(base, rows=5, per=2, per_base=2)
    lines = text.splitlines()
    assert "mm([300, 300], [300, 300])" in lines[1] and lines[1].split()[3] == "1.0"   # only in the plus run
    add = next(line for line in lines if "add([50, 50])" in line)
    plus_ms, base_ms, ms = (float(v) for v in add.split()[:3])
    assert plus_ms == pytest.approx(ms - base_ms, abs=0.011)
    assert lines[-1].endswith("all operators")
