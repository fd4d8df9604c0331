"""The user-subset analysis (`mmgraph analyze subsets`) and scripts/brmrs_ablation.py on tiny synthetic data."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmgraph.analysis.subsets import subset_counts, subset_masks
from mmgraph.cli.main import main
from mmgraph.plugins.experiments import variant_config

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:users=80,items=60,seed=4"


def test_subset_masks_by_hand():
    #            u0     u1     u2     u3     u4     u5
    t = np.array([1, 0, 1, 0, 1, 0], bool)
    v = np.array([0, 1, 1, 0, 1, 0], bool)
    f = np.array([1, 0, 0, 1, 1, 0], bool)
    masks = subset_masks({"text": t, "image": v, "final": f}, ["text", "image"])
    assert {k: np.flatnonzero(m).tolist() for k, m in masks.items()} == {
        "only_text": [0], "only_image": [1], "both": [2, 4], "fused_only": [3], "lost_by_fusion": [1, 2],
        "none": [5]}
    rows = {r["subset"]: r for r in subset_counts({"text": t, "image": v, "final": f}, ["text", "image"])}
    assert rows["both"]["users"] == 2 and rows["both"]["fused_hit"] == 1 and rows["evaluated"]["users"] == 6
    assert rows["only_text"]["share"] == pytest.approx(1 / 6)
    three = subset_masks({"a": t, "b": v, "c": f, "final": f}, ["a", "b", "c"])
    assert "several" in three and "both" not in three and three["several"].tolist() == [1, 0, 1, 0, 1, 0]


def test_analyze_subsets_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--data", DATA, "--epochs", "1", "--no-progress", "--set", "threads=1", "log_geometry=false",
              "graph_cache=false", "batch_size=256"]
    assert main(["train", "--method", "brmrs", "--out", "br", *common]) == 0
    assert main(["train", "--method", "freedom", "--out", "fr", *common]) == 0
    assert main(["train", "--method", "lightgcn", "--out", "lg", *common]) == 0
    capsys.readouterr()
    assert main(["analyze", "subsets", "br", "fr", "--k", "10", "--out", "an"]) == 0
    out = capsys.readouterr().out
    assert "only_image" in out and "lost_by_fusion" in out and "fused_only" in out
    rows = list(csv.DictReader((tmp_path / "an" / "subsets_test_k10.csv").open()))
    assert {r["run"] for r in rows} == {"br", "fr"}
    by = {(r["run"], r["subset"]): int(r["users"]) for r in rows}
    for run in ("br", "fr"):   # the modality partition covers every evaluated user
        modal = by[(run, "only_image")] + by[(run, "only_text")] + by[(run, "both")]
        no_modal = by[(run, "fused_only")] + by[(run, "none")]
        assert modal + no_modal == by[(run, "evaluated")]
    assert (tmp_path / "an" / "subsets_test_k10.png").stat().st_size > 1000
    assert main(["analyze", "subsets", "lg"]) == 2
    err = capsys.readouterr().err.strip()
    assert "per-modality" in err and len(err.splitlines()) == 1


def test_variant_config_keeps_the_methods_own_brmrs_keys():
    cfg = variant_config("brmrs", {"brmrs_syn": False}, {"seed": 1})
    assert cfg["brmrs_syn"] is False
    assert "brmrs_syn" not in variant_config("freedom", {"plugins": []}, {"brmrs_syn": False})


def test_ablation_script_runs_and_resumes(tmp_path):
    argv = [sys.executable, str(ROOT / "scripts" / "brmrs_ablation.py"), "--data", DATA, "--out",
            str(tmp_path / "ab"), "--epochs", "1", "--threads", "1", "--set", "batch_size=256",
            "log_geometry=false", "graph_cache=false"]
    first = subprocess.run(argv + ["--subsets"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    out = first.stdout
    for label in ("Table 3", "CHNS+Syn", "neither", "no fused BPR", "negatives=uniform", "negatives=fused",
                  "negatives=self", "negatives=image", "lost_by_fusion"):
        assert label in out, label
    import json
    tables = {name: [r["variant"] for r in json.loads((tmp_path / "ab" / name).read_text())]
              for name in ("results_table3.json", "results_negatives.json")}      # one file per table
    assert "neither" in tables["results_table3.json"] and "negatives=uniform" in tables["results_negatives.json"]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing" in again.stderr and "epoch   0 |" not in again.stderr
    bad = subprocess.run(argv + ["--variants", "nonsense"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown variant" in bad.stderr
