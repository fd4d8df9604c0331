"""The CROSS experiment drivers (scripts/cross_*.py) end to end on a tiny synthetic dataset."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmgraph.errors import ConfigError
from mmgraph.plugins.experiments import (MAIN_VARIANTS, comparison, format_popularity, format_robustness,
                                         format_table, popularity, robustness, variant_config)

DATA = "synthetic:users=80,items=60,seed=4"
FAST = {"epochs": 1, "batch_size": 256, "log_geometry": False, "graph_cache": False, "cross_prototypes": 16,
        "seed": 1}
ROOT = Path(__file__).resolve().parents[1]


def test_variant_config_keeps_plugin_keys_out_of_vanilla():
    cfg = variant_config("lightgcn", MAIN_VARIANTS["vanilla"], {"cross_alpha": 0.1, "seed": 3})
    assert "cross_alpha" not in cfg and cfg["n_layers"] == 2 and cfg["seed"] == 3
    assert variant_config("lightgcn", MAIN_VARIANTS["+CROSS"], {"cross_alpha": 0.1})["cross_alpha"] == 0.1


def test_comparison_grid_reuse_and_table(tmp_path):
    rows = comparison(DATA, ["mf"], {"vanilla": MAIN_VARIANTS["vanilla"], "+CROSS": MAIN_VARIANTS["+CROSS"]},
                      tmp_path, FAST, grid={"cross_alpha": [0.01, 0.1]})
    assert [r["variant"] for r in rows] == ["vanilla", "+CROSS"]
    assert len(rows[0]["points"]) == 1 and len(rows[1]["points"]) == 2
    best = max(rows[1]["points"], key=lambda p: p["valid"]["recall@20"])
    assert rows[1]["params"] == best["params"]
    table = format_table(rows)
    assert "vanilla" in table and "+CROSS" in table and "+0.00%" in table
    # finished runs are reused; other settings in the same folder are refused
    again = comparison(DATA, ["mf"], {"vanilla": MAIN_VARIANTS["vanilla"]}, tmp_path, {**FAST, "cross_k": 3})
    assert again[0]["test"] == rows[0]["test"]                # cross_k is inert for vanilla
    with pytest.raises(ConfigError, match="other settings"):
        comparison(DATA, ["mf"], {"vanilla": MAIN_VARIANTS["vanilla"]}, tmp_path, {**FAST, "reg_weight": 0.5})


def test_robustness_and_popularity(tmp_path):
    variants = {"vanilla": MAIN_VARIANTS["vanilla"], "+FETTLE": MAIN_VARIANTS["+FETTLE"]}
    rows = robustness(DATA, "mf", variants, tmp_path, "missing", [0.5], FAST)
    assert [(r["rate"], r["variant"]) for r in rows] == [(0.0, "vanilla"), (0.0, "+FETTLE"),
                                                          (0.5, "vanilla"), (0.5, "+FETTLE")]
    assert "features replaced by noise" in format_robustness(rows)
    rows = robustness(DATA, "mf", {"vanilla": MAIN_VARIANTS["vanilla"]}, tmp_path, "noisy", [0.1], FAST)
    assert rows[-1]["rate"] == 0.1
    res = popularity(DATA, "mf", variants, tmp_path, FAST)
    assert set(res["vanilla"]) == {"head", "tail1", "tail2", "tail3", "tail4", "all"}
    assert "tail4" in format_popularity(res)


def test_script_runs_and_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    def argv(out, *extra):
        return ["--data", DATA, "--backbones", "mf", "--variants", "vanilla,cross", "--out", str(out),
                "--epochs", "1", "--set", "batch_size=256", "log_geometry=false", "cross_prototypes=16", *extra]

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "cross_table.py")] + argv(tmp_path / "ok"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "+CROSS" in out.stdout and "recall@20" in out.stdout
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import cross_common
    import cross_table
    with pytest.raises(SystemExit) as exc:
        cross_common.run(lambda: cross_table.main(argv(tmp_path / "bad", "cross_strategy=sideways")))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: cross_strategy")


@pytest.mark.parametrize("script,extra,expect", [
    ("cross_robustness.py", ["--backbone", "mf", "--mode", "both", "--missing-rates", "0.5",
                             "--noisy-rates", "0.1", "--variants", "vanilla,cross"], "0.5"),
    ("cross_popularity.py", ["--backbone", "mf", "--variants", "vanilla,fettle"], "tail4"),
    ("cross_ablation.py", ["--backbone", "mf", "--kind", "both", "--variants", "vanilla,+ILDA,one-way"], "ILDA"),
])
def test_experiment_commands_run_end_to_end(tmp_path, script, extra, expect):
    """Each experiment is one command: it trains every run, prints its table and resumes from its folder."""
    cmd = [sys.executable, str(ROOT / "scripts" / script), "--data", DATA, "--out", str(tmp_path), "--epochs", "1",
           "--set", "batch_size=256", "log_geometry=false", "cross_prototypes=16", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
    if script == "cross_robustness.py":  # an interrupted or repeated command reuses the finished runs
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "reusing" in again.stderr and "| loss" not in again.stderr


def test_cm3_ablation_command(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "cm3_ablation.py"), "--data", DATA, "--out", str(tmp_path),
           "--epochs", "1", "--set", "batch_size=256", "log_geometry=false", "graph_cache=false",
           "--base", "paper", "released", "--modalities"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for label in ("CM3 w/o F", "CM3 w LF", "CM3 w StdU", "CM3 w/o V", "CM3 w/o T", "paper", "released"):
        assert label in out.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reusing") + again.stderr.count("reusing") == 12
