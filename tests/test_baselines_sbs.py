"""scripts/baselines_sbs.py without the peers: parsing sbs.sh / run_peer.sh output, settings, the table and
resuming (the sbs.sh call is replaced by a fake)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SBS = ("peer 2.345 s/epoch (57 epochs, test R@20 0.0612) | mmgraph 0.512 s/epoch (61 epochs, test R@20 0.0630) "
       "| speed-up x4.58")
PEER = "s_per_epoch=2.345 epochs=57 test_recall@20=0.0612 test_ndcg@20=0.0301"


@pytest.fixture()
def bsbs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import baselines_sbs
    return baselines_sbs


def test_parse_lines(bsbs):
    out = bsbs.parse_sbs_line("peer settings: {...}\nlog: /tmp/x\n" + SBS + "\n")
    assert out["peer"] == {"s_per_epoch": 2.345, "epochs": 57, "recall@20": 0.0612}
    assert out["mmgraph"] == {"s_per_epoch": 0.512, "epochs": 61, "recall@20": 0.063}
    assert out["speedup"] == 4.58
    assert bsbs.parse_sbs_line("Traceback ...\nValueError: boom") is None
    assert bsbs.parse_peer_line("peer settings: {}\nlog: /tmp/peer-run.x/run.log\n" + PEER) == {
        "s_per_epoch": 2.345, "epochs": 57, "recall@20": 0.0612, "ndcg@20": 0.0301}
    assert bsbs.parse_peer_line("s_per_epoch=1.000 epochs=0 test_recall@20=nan test_ndcg@20=nan")["recall@20"] is None


def test_settings_are_the_grid_axes_at_the_defaults(bsbs):
    s = dict(bsbs.resolve_settings("lightgcn", {}))
    assert s == {"n_layers": "2", "reg_weight": "0.0001"}
    # DRAGON: mmgraph's learning_rate (MMRec's first grid value, 0.1, diverges), explicit for both sides
    assert dict(bsbs.resolve_settings("dragon", {}))["learning_rate"] == "0.001"
    sets = bsbs.split_sets(["lightgcn:n_layers=3", "reg_weight=1e-3", "freedom:knn_k=5"])
    assert sets == {"lightgcn": [("n_layers", "3")], "*": [("reg_weight", "1e-3")], "freedom": [("knn_k", "5")]}
    assert bsbs.settings_text(bsbs.resolve_settings("lightgcn", sets)) == "n_layers=3 reg_weight=1e-3"
    # a key without a method goes to every method that has it (MGCN: an extra key), not to the others
    assert bsbs.settings_text(bsbs.resolve_settings("mgcn", sets)) == "cl_loss=0.001 reg_weight=1e-3"
    assert "hyper_num" not in bsbs.settings_text(bsbs.resolve_settings("mgcn", {"*": [("hyper_num", "8")]}))
    assert bsbs.format_value(1e-5) == "1e-05" and bsbs.format_value(0.0) == "0.0"


def test_mmrec_axes_are_added(bsbs, tmp_path):
    model_dir = tmp_path / "mmrec" / "src" / "configs" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "MGCN.yaml").write_text('cl_loss: [0.001]\nknn_k: 10\n'
                                         'hyper_parameters: ["cl_loss", "knn_k", "nope"]\n')
    assert [k for k, _ in bsbs.resolve_settings("mgcn", {}, tmp_path)] == ["cl_loss", "knn_k"]


def _record(method, r_peer=0.05, r_ours=0.055, **extra):
    return {"method": method, "status": "ok", "settings": "n_layers=2 reg_weight=0.0001", "data": "/d/tiktok",
            "epochs_max": 1000, "driver": "python scripts/baselines_sbs.py --out runs/x",
            "date": "2026-12-05 00:00 UTC", "machine": "cpu X, 2 cores", "speedup": 3.0,
            "peer": {"s_per_epoch": 3.0, "epochs": 50, "recall@20": r_peer, "ndcg@20": 0.025},
            "mmgraph": {"s_per_epoch": 1.0, "epochs": 52, "recall@20": r_ours, "ndcg@20": 0.027}, **extra}


def test_render_table_and_doc(bsbs):
    records = [_record("lightgcn"), _record("lattice"),
               {"method": "damrs", "status": "error", "settings": "n_ui_layers=2", "error": "boom\nValueError: x|y"}]
    table = bsbs.render_table(records)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | settings | MMRec R@20 / N@20 | mmgraph R@20 / N@20 | ΔR@20 |")
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["lattice", "damrs", "lightgcn"]  # METHODS order
    row = lines[-1]
    assert "0.0500 / 0.0250" in row and "0.0550 / 0.0270" in row and "+0.0050 (+10.0%)" in row
    assert "3.000 (50 ep)" in row and "1.000 (52 ep)" in row and "x3.00" in row
    assert "failed: ValueError: x\\|y" in lines[3]
    assert len(re.split(r"(?<!\\)\|", lines[3])) == len(lines[0].split("|")) == 10  # 8 columns
    doc = bsbs.render_doc(records)
    for text in ("python scripts/baselines_sbs.py --out runs/x", "seed 999", "early stopping", "cpu X, 2 cores",
                 "comparable only within a row", "tiktok"):
        assert text in doc
    assert "capped at 2 epochs" in bsbs.render_doc([_record("vbpr", epochs_max=2)])
    # a capped (speed-only) row is marked; a run to early stopping wins over it, whatever the order
    mixed = [_record("lightgcn"), _record("damrs", epochs_max=3)]
    doc = bsbs.render_doc(mixed)
    assert "| damrs (capped) |" in doc and "| lightgcn |" in doc
    assert "early stopping" in doc and "except the rows marked (capped)" in doc and "capped at 3 epochs" in doc
    for order in (mixed + [_record("damrs")], [_record("damrs")] + mixed):
        assert bsbs.latest(order)["damrs"]["epochs_max"] == 1000
    assert bsbs.latest([_record("damrs", epochs_max=3), {"method": "damrs", "status": "error"}])["damrs"]["status"] == "ok"


def test_findings_are_printed_for_the_methods_in_the_table(bsbs, tmp_path):
    notes = tmp_path / "notes.yaml"
    notes.write_text("bm3: >\n  both stop at the\n  early peak\ndragon: not in the table\n")
    doc = bsbs.render_doc([_record("lightgcn"), _record("bm3")], bsbs.load_notes(notes))
    assert "## Findings per method" in doc and "- **bm3**: both stop at the early peak" in doc
    assert "dragon" not in doc
    assert "## Findings" not in bsbs.render_doc([_record("lightgcn")], bsbs.load_notes(notes))
    assert bsbs.load_notes(tmp_path / "missing.yaml") == {}
    # the shipped notes parse and name only known methods
    shipped = bsbs.load_notes(bsbs.NOTES)
    assert shipped and set(shipped) <= set(bsbs.METHODS)


def test_runs_resumes_and_records_failures(bsbs, tmp_path):
    peers, data, out = tmp_path / "peers", tmp_path / "tiktok", tmp_path / "out"
    peers.mkdir()
    (peers / "sbs.sh").write_text("exit 1\n")
    data.mkdir()
    calls = []

    def fake(cmd, env, log):
        method = cmd[4]
        calls.append(method)
        capture = Path(env["BSBS_CAPTURE"])
        assert cmd[:4] == ["bash", str(peers / "sbs.sh"), "mmrec", bsbs.METHODS[method]]
        assert cmd[5:7] == [str(data), "3"] and Path(env["MMGRAPH"]).is_file()
        if method == "vbpr":
            return 1, "Traceback (most recent call last):\nRuntimeError: vbpr broke\n"
        (capture / "peer_line").write_text(PEER + "\n")
        (capture / "final_metrics.json").write_text(json.dumps({"test": {"recall@20": 0.0631, "ndcg@20": 0.0322}}))
        return 0, "some log\n" + SBS + "\n"

    argv = ["--methods", "lightgcn,vbpr", "--epochs", "3", "--data", str(data), "--peers", str(peers),
            "--out", str(out), "--doc", str(tmp_path / "doc.md"), "--set", "lightgcn:n_layers=3"]
    assert bsbs.main(argv, runner=fake) == 1
    assert calls == ["lightgcn", "vbpr"]
    rows = bsbs.load_results(out / "results.jsonl")
    assert [(r["method"], r["status"]) for r in rows] == [("lightgcn", "ok"), ("vbpr", "error")]
    ok = rows[0]
    assert ok["settings"] == "n_layers=3 reg_weight=0.0001" and "n_layers=3" in ok["command"]
    assert ok["peer"]["ndcg@20"] == 0.0301 and ok["mmgraph"]["ndcg@20"] == 0.0322 and ok["speedup"] == 4.58
    assert "RuntimeError: vbpr broke" in rows[1]["error"]
    doc = (tmp_path / "doc.md").read_text()
    assert doc == (out / "baselines.md").read_text() and "0.0612 / 0.0301" in doc and "failed: RuntimeError" in doc
    # again: the finished method is skipped, the failed one retried; --rerun runs both
    calls.clear()
    bsbs.main(argv, runner=fake)
    assert calls == ["vbpr"]
    calls.clear()
    bsbs.main(argv + ["--rerun"], runner=fake)
    assert calls == ["lightgcn", "vbpr"]
    # other settings are another run; --report re-renders without running
    calls.clear()
    bsbs.main(argv[:-1] + ["lightgcn:n_layers=1", "--methods", "lightgcn"], runner=fake)
    assert calls == ["lightgcn"]
    (out / "baselines.md").unlink()
    assert bsbs.main(["--report", "--out", str(out)], runner=fake) == 0
    assert calls == ["lightgcn"] and "lightgcn" in (out / "baselines.md").read_text()


def test_doc_keeps_its_records_beside_it(bsbs, tmp_path):
    """--doc FILE keeps the rows' records in FILE.jsonl: the table survives the loss of the --out folder."""
    peers, data, out, doc = tmp_path / "peers", tmp_path / "tiktok", tmp_path / "out", tmp_path / "doc.md"
    peers.mkdir()
    (peers / "sbs.sh").write_text("exit 1\n")
    data.mkdir()

    def fake(cmd, env, log):
        capture = Path(env["BSBS_CAPTURE"])
        (capture / "peer_line").write_text(PEER + "\n")
        (capture / "final_metrics.json").write_text(json.dumps({"test": {"recall@20": 0.0631, "ndcg@20": 0.0322}}))
        return 0, SBS + "\n"

    base = ["--epochs", "3", "--data", str(data), "--peers", str(peers), "--doc", str(doc)]
    assert bsbs.main(base + ["--methods", "lightgcn", "--out", str(out)], runner=fake) == 0
    kept = bsbs.load_results(bsbs.doc_records(doc))
    assert bsbs.doc_records(doc) == tmp_path / "doc.jsonl" and [r["method"] for r in kept] == ["lightgcn"]
    shutil.rmtree(out)
    # another --out folder: its row joins the kept one, which is neither lost nor duplicated
    other = tmp_path / "other"
    assert bsbs.main(base + ["--methods", "vbpr", "--out", str(other)], runner=fake) == 0
    assert bsbs.main(["--report", "--out", str(other), "--doc", str(doc)], runner=fake) == 0
    assert [r["method"] for r in bsbs.load_results(bsbs.doc_records(doc))] == ["lightgcn", "vbpr"]
    text = doc.read_text()
    assert "| lightgcn (capped) |" in text and "| vbpr (capped) |" in text
    # --report from the kept records alone
    shutil.rmtree(other)
    assert bsbs.main(["--report", "--out", str(tmp_path / "gone"), "--doc", str(doc)], runner=fake) == 0
    assert doc.read_text() == text
    assert bsbs.merge_records([{"a": 1}], [{"a": 1}, {"a": 2}]) == [{"a": 1}, {"a": 2}]


def test_shipped_doc_matches_its_records(bsbs):
    """docs/baselines.md is the rendering of docs/baselines.jsonl and the notes (re-render after editing either)."""
    doc = bsbs.ROOT / "docs" / "baselines.md"
    records = bsbs.load_results(bsbs.doc_records(doc))
    assert records and all(r["method"] in bsbs.METHODS for r in records)
    assert doc.read_text() == bsbs.render_doc(records, bsbs.load_notes(bsbs.NOTES))
