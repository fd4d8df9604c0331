"""scripts/anchorrec_report.py: the claim table from a hand-made overlap matrix, and one run on tiny data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:users=80,items=60,seed=4"


@pytest.fixture()
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import anchorrec_report
    return anchorrec_report


def _table() -> pd.DataFrame:
    pairs = {  # overlap of two spaces; every pair not listed is 0
        ("raw:image", "anchorrec:image"): 0.60, ("raw:text", "anchorrec:image"): 0.10,
        ("raw:text", "anchorrec:text"): 0.20, ("raw:image", "anchorrec:text"): 0.25,
        ("raw:image", "anchorrec:proj_image"): 0.50, ("raw:text", "anchorrec:proj_text"): 0.30,
        ("raw:image", "anchorrec:final"): 0.20, ("raw:text", "anchorrec:final"): 0.10,
        ("raw:image", "freedom:image"): 0.40, ("raw:text", "freedom:text"): 0.60,
        ("raw:image", "bm3:image"): 0.45, ("raw:text", "bm3:text"): 0.20,
        ("raw:image", "freedom:final"): 0.05, ("raw:text", "freedom:final"): 0.25,
        ("raw:image", "bm3:final"): 0.01, ("raw:text", "bm3:final"): 0.01,
        ("anchorrec:proj_image", "anchorrec:proj_text"): 0.70, ("anchorrec:image", "anchorrec:text"): 0.15}
    names = sorted({n for pair in pairs for n in pair})
    t = pd.DataFrame(0.0, index=names, columns=names)
    for n in names:
        t.loc[n, n] = 1.0
    for (a, b), v in pairs.items():
        t.loc[a, b] = t.loc[b, a] = v
    return t


def test_claim_rows_by_hand(report):
    methods = ["anchorrec", "freedom", "bm3"]
    table = _table()
    rows = {r["compared"]: (r["check"], r["anchorrec"], r["other"], r["holds"])
            for r in report.claim_rows(table, methods)}
    assert rows["anchorrec:image with raw:image vs with raw:text"] == ("origin keeps raw:image", 0.60, 0.10, True)
    assert rows["anchorrec:text with raw:text vs with raw:image"] == ("origin keeps raw:text", 0.20, 0.25, False)
    assert rows["anchorrec:image vs anchorrec:proj_image, with raw:image"][1:] == (0.60, 0.50, True)
    assert rows["anchorrec:text vs anchorrec:proj_text, with raw:text"][1:] == (0.20, 0.30, False)
    # the best other channel per modality: bm3's image (0.45 > freedom's 0.40), freedom's text
    assert rows["anchorrec:image vs bm3:image, with raw:image"][1:] == (0.60, 0.45, True)
    assert rows["anchorrec:proj_image vs bm3:image, with raw:image"][1:] == (0.50, 0.45, True)
    assert rows["anchorrec:proj_text vs freedom:text, with raw:text"][1:] == (0.30, 0.60, False)
    assert rows["anchorrec:final vs freedom:final, with raw:image"][1:] == (0.20, 0.05, True)
    assert rows["anchorrec:final vs freedom:final, with raw:text"][1:] == (0.10, 0.25, False)
    agree = rows["mean overlap among anchorrec:proj_* vs among anchorrec:<modality>"]
    assert agree == ("projections agree", 0.70, 0.15, True)
    assert len(rows) == 11


def test_report_script_runs_and_reuses(tmp_path):
    out, doc = tmp_path / "rep", tmp_path / "doc.md"
    argv = [sys.executable, str(ROOT / "scripts" / "anchorrec_report.py"), "--data", DATA, "--out", str(out),
            "--doc", str(doc), "--epochs", "1", "--methods", "anchorrec,lightgcn,freedom", "--k", "5",
            "--variant", "dot:amp_similarity=dot,aal_weight=0.1",
            "--set", "threads=1", "batch_size=256", "log_geometry=false", "graph_cache=false"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    text = doc.read_text()
    assert text == (out / "report.md").read_text()
    for needle in ("| anchorrec |", "| lightgcn |", "| freedom |", "anchorrec minus LightGCN",
                   "anchorrec (dot: amp_similarity=dot, aal_weight=0.1) minus LightGCN", "at most 1 epochs",
                   "anchorrec:proj_image vs freedom:image", "anchorrec:final vs freedom:final",
                   "origin keeps raw:image", "projections agree",
                   "| anchorrec (dot: amp_similarity=dot, aal_weight=0.1) |", "--variant dot:amp_similarity=dot"):
        assert needle in text, needle
    assert (next(out.iterdir()) / "overlap" / "overlap.csv").exists()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stderr and "epoch   0 |" not in again.stderr
    bad = subprocess.run(argv[:-7] + ["--methods", "lightgcn"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must include anchorrec" in bad.stderr


def test_variants_are_parsed_and_checked(report):
    from mmgraph.errors import ConfigError

    assert report.parse_variants(["released:gate_source=embedding, amp_similarity=dot", "t:tau=0.5"]) == {
        "released": {"gate_source": "embedding", "amp_similarity": "dot"}, "t": {"tau": 0.5}}
    for bad in (["no_colon"], ["a b:tau=1"], [":tau=1"], ["x:"], ["x:tau=1", "x:tau=2"]):
        with pytest.raises(ConfigError):
            report.parse_variants(bad)
