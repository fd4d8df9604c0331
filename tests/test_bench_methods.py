"""scripts/bench_methods.py: the per-method step / epoch table runs and compares plug-ins with their backbone."""
from __future__ import annotations

import re

import pytest
import torch

from tests.helpers import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_methods")


def _rows(text: str) -> dict:
    """``{entry: [numbers...]}`` of the printed table (the ratio column as its number)."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 9 and re.fullmatch(r"[a-z0-9_]+(\+[a-z0-9_]+)?", parts[0]) \
                and re.fullmatch(r"[0-9.]+", parts[1]):
            rows[parts[0]] = [float(p.lstrip("x")) for p in parts[1:]]
    return rows


def test_table_has_each_entry_and_the_plugin_ratio(bench, capsys):
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "mf,lightgcn+cross",
                       "--steps", "2", "--interleave", "--set", "threads=1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"mf", "lightgcn", "lightgcn+cross"}
    base, plug = rows["lightgcn"], rows["lightgcn+cross"]
    forward, backward, optim, step = plug[:4]
    assert step == pytest.approx(forward + backward + optim, abs=0.15)    # rounded to 0.1 ms each
    assert plug[4] == pytest.approx(step / base[3], rel=0.05, abs=0.02)    # the "x base" column
    assert all(v > 0 for v in rows["mf"][:4])


def test_a_precision_entry_is_compared_with_the_same_entry_at_the_default(bench, capsys, monkeypatch):
    from mmgraph.nn import linear

    monkeypatch.setattr(linear, "bf16_native", lambda: True)
    monkeypatch.setattr(linear, "MIN_MACS", 1)
    ran = []
    apply = linear._Bf16Linear.apply
    monkeypatch.setattr(linear._Bf16Linear, "apply", lambda *a: ran.append(1) or apply(*a))
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "vbpr@medium",
                       "--steps", "2", "--interleave", "--set", "threads=1"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    base, medium = [float(v) for v in lines["vbpr"][1:5]], lines["vbpr@medium"]
    assert float(medium[5].lstrip("x")) == pytest.approx(float(medium[4]) / base[3], rel=0.05, abs=0.02)
    assert ran                                     # the @medium entry's products took the bfloat16 path
    assert linear.BF16 is False
    with pytest.raises(Exception, match="precision after @ must be one of highest, high, medium"):
        bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "vbpr@low"])


def test_floor_columns_count_the_plugin_products(bench, capsys):
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "lightgcn+cross",
                       "--steps", "2", "--interleave", "--floor", "--set", "threads=1"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[-4]
    assert all(name in header for name in ("GFLOP", "products", "sparse", "floor x", "epoch floor"))
    rows = _rows(out)
    base, plug = rows["lightgcn"], rows["lightgcn+cross"]
    # columns after "epoch s": GFLOP, products (ms), sparse (ms), [floor x for a plug-in entry], epoch floor (s)
    assert len(base) == 12 and len(plug) == 14       # the backbone row has no ratio columns
    assert plug[9] > base[8]                         # CROSS adds dense products (its InfoNCE and codes)
    assert plug[10] > 0
    assert base[10] > 0 and plug[11] > 0             # LightGCN's propagation: sparse products, timed
    assert 1.0 <= plug[12] <= plug[4] + 0.01         # the floor is at most the measured ratio: a lower bound
    for row, floor in ((base, base[11]), (plug, plug[13])):
        steps = row[5]
        # steps x (dense + sparse products) + the validation's: at least the step part, at most the measured epoch
        assert floor >= steps * (row[-3 if row is base else -4] + row[-2 if row is base else -3]) / 1e3 - 0.01
        assert floor <= row[8] + 0.01


def test_floor_counts_a_full_batch_when_the_steps_cover_the_epoch(bench, capsys):
    # 24 batches of 64 rows, the last one short: with more timed steps than batches every batch is kept,
    # and the floor must still count a full batch's products, not the remainder's
    gflop = []
    for steps in (1, 40):
        assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "lightgcn+cross",
                           "--steps", str(steps), "--floor", "--set", "threads=1", "batch_size=64"]) == 0
        gflop.append(_rows(capsys.readouterr().out)["lightgcn+cross"][8])   # GFLOP (no ratio column)
    assert gflop[0] > 0 and gflop[1] == gflop[0]


def test_profile_prints_in_place_operator_times_without_touching_the_step_figures(bench, capsys):
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "lightgcn",
                       "--steps", "2", "--profile", "--set", "threads=1"]) == 0
    out = capsys.readouterr().out
    assert "lightgcn: costliest operators, per step" in out
    assert "all operators" in out and "addmm_(" in out      # the CSR propagation among the operators
    assert "lightgcn" in _rows(out)


def test_profile_of_an_interleaved_pair_prints_what_the_plugin_adds(bench, capsys):
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "lightgcn+cross",
                       "--steps", "2", "--interleave", "--profile", "--set", "threads=1"]) == 0
    out = capsys.readouterr().out
    assert "lightgcn+cross: what its steps spend beyond lightgcn's, per step" in out
    block = out.split("beyond lightgcn's")[1].split("\n\n")[0]
    assert "all operators" in block and "+ms" in block
    assert set(_rows(out)) == {"lightgcn", "lightgcn+cross"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_are_timed_after_the_device_finishes(bench, capsys):
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "lightgcn",
                       "--steps", "2", "--set", "device=cuda"]) == 0
    assert "lightgcn" in _rows(capsys.readouterr().out)


def test_plugin_settings_reach_only_the_entries_with_the_plugin(bench, capsys):
    over = {"threads": 1, "brmrs_theta": 0.2, "reg_weight": 1e-3, "no_such_key": 1}
    assert bench._entry_overrides("vbpr", [], over) == {"threads": 1, "reg_weight": 1e-3, "no_such_key": 1}
    assert bench._entry_overrides("vbpr", ["brmrs"], over) == over
    assert bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "vbpr+brmrs", "--steps", "1",
                       "--interleave", "--set", "threads=1", "brmrs_negatives=self"]) == 0
    assert "vbpr+brmrs" in capsys.readouterr().out
    with pytest.raises(Exception, match="unknown setting 'no_such_key'"):
        bench.main(["--data", "synthetic:users=120,items=90,seed=3", "--methods", "vbpr+brmrs", "--steps", "1",
                    "--interleave", "--set", "threads=1", "no_such_key=1"])
