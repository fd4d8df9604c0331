"""``mmgraph benchmark`` and ``mmgraph results-doc`` end to end on tiny synthetic data: the files and their
shapes, validation-only selection, resume (finished runs are not trained again), plug-in methods,
per-method settings and one-line errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import mmgraph.train.run as run_module
from mmgraph.benchmark import parse_methods, read_results, summarise
from mmgraph.benchmark.doc import check_claim, load_claims
from mmgraph.cli.main import main
from mmgraph.errors import ConfigError

DATA = "synthetic:users=80,items=60,seed=4"
FAST = ["batch_size=256", "log_geometry=false", "graph_cache=false", "threads=1"]


def bench(out, methods="mf,lightgcn", seeds=2, *extra):
    cross = ["cross_prototypes=16"] if "+cross" in methods else []
    return ["benchmark", "--methods", methods, "--data", DATA, "--seeds", str(seeds), "--epochs", "2",
            "--no-progress", "--out", str(out), "--set", *FAST, *cross, *extra]


@pytest.fixture()
def count_trainings(monkeypatch):
    """Counts the trainings the runs start (``train`` of mmgraph.train.run), with their resume flag."""
    calls = []
    original = run_module.train

    def counting(*args, **kwargs):
        calls.append(bool(kwargs.get("resume")))
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "train", counting)
    return calls


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_two_methods_two_seeds_write_every_file(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(bench(out, "mf,lightgcn", 2, "n_layers=1", "--groups")) == 0
    printed = capsys.readouterr().out
    results = _csv(out / "results.csv")
    assert len(results) == 4                                               # 2 methods x 1 dataset x 2 seeds
    assert [(r["method"], r["seed"]) for r in results] == [("mf", "1"), ("mf", "2"), ("lightgcn", "1"),
                                                           ("lightgcn", "2")]
    for col in ("test_recall@10", "test_recall@20", "test_ndcg@10", "test_ndcg@20", "valid_recall@20",
                "best_epoch", "run_dir"):
        assert col in results[0]
    for r in results:
        assert (out / r["run_dir"] / "final_metrics.json").exists()
        final = json.loads((out / r["run_dir"] / "final_metrics.json").read_text())
        assert float(r["test_recall@20"]) == pytest.approx(final["test"]["recall@20"])
    summary = _csv(out / "summary.csv")
    assert [s["method"] for s in summary] == ["mf", "lightgcn"] and all(s["n_seeds"] == "2" for s in summary)
    assert summary[0]["recall@20_p"] == "" and 0.0 <= float(summary[1]["recall@20_p"]) <= 1.0
    vals = [float(r["test_recall@20"]) for r in results if r["method"] == "lightgcn"]
    assert float(summary[1]["recall@20_mean"]) == pytest.approx(sum(vals) / 2)
    # --set n_layers=1 reached lightgcn only (mf has no such key)
    lgcn = next(r for r in results if r["method"] == "lightgcn")
    assert "n_layers: 1" in (out / lgcn["run_dir"] / "config.yaml").read_text()
    md = (out / "summary.md").read_text()
    assert md.count("**") >= 8 and "mf (reference)" in md and "Paired t-test" in md and "benchmark" in md
    assert "Popularity groups" in md and "tail4" in md
    groups = _csv(out / "groups.csv")
    assert {g["group"] for g in groups} == {"head", "tail1", "tail2", "tail3", "tail4"} and len(groups) == 10
    pytest.importorskip("matplotlib")
    assert (out / "summary.png").stat().st_size > 1000
    assert "R@20" in printed and "4 run(s) trained, 0 reused" in printed


def test_resume_reuses_finished_runs_and_trains_only_what_is_new(tmp_path, count_trainings, capsys):
    out = tmp_path / "bench"
    assert main(bench(out, "mf", 2)) == 0
    assert len(count_trainings) == 2
    assert main(bench(out, "mf", 2)) == 0                                  # the same command: nothing trains
    assert len(count_trainings) == 2
    assert "0 run(s) trained, 2 reused" in capsys.readouterr().out
    # an interrupted run (no final_metrics.json, last.pt present) is resumed, a new method trained
    run_dir = out / read_results(out / "results.csv")[1]["run_dir"]
    (run_dir / "final_metrics.json").unlink()
    assert main(bench(out, "mf,mf+cross", 2)) == 0
    assert count_trainings[2:] == [True, False, False]
    printed = capsys.readouterr().out
    assert "3 run(s) trained (1 of them resumed), 1 reused" in printed and "of 2, resumed)" in printed
    rows = read_results(out / "results.csv")
    assert [(r["method"], r["seed"]) for r in rows] == [("mf", 1), ("mf", 2), ("mf+cross", 1), ("mf+cross", 2)]
    cross_dir = out / rows[2]["run_dir"]
    assert "- cross" in (cross_dir / "config.yaml").read_text()             # mf+cross = mf with plugins=[cross]
    # a third seed: seeds 1 and 2 are reused, seed 3 trains; other settings are refused in one line
    capsys.readouterr()
    assert main(bench(out, "mf", 3)) == 0
    assert count_trainings[5:] == [False]
    assert [r["seed"] for r in read_results(out / "results.csv")] == [1, 2, 3]
    assert main(bench(out, "mf", 3, "reg_weight=0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings (reg_weight)" in err and "only --seeds" in err


def test_grid_selects_on_mean_validation_and_reports_the_selected_point(tmp_path):
    out = tmp_path / "grid"
    assert main(bench(out, "mf", 2, "reg_weight=[0.0001,0.5]", "--grid")) == 0
    summary = json.loads((out / "runs" / "synthetic" / "mf" / "grid_summary.json").read_text())
    means = [p["valid"]["recall@20"] for p in summary["points"]]
    assert len(summary["points"]) == 2 and all(len(p["runs"]) == 2 for p in summary["points"])
    best = summary["points"][means.index(max(means))]
    rows = read_results(out / "results.csv")
    assert len(rows) == 2 and all(r["params"] == best["params"] for r in rows)
    assert "reg_weight" in (out / "summary.md").read_text()
    doc = tmp_path / "results.md"
    assert main(["results-doc", str(out), "--output", str(doc)]) == 0
    assert "selected on mean validation Recall@20 over the seeds" in doc.read_text()
    meta = json.loads((out / "benchmark.json").read_text())
    (out / "benchmark.json").write_text(json.dumps({**meta, "metric": "ndcg@20"}))   # as --set valid_metric=ndcg@20
    assert main(["results-doc", str(out), "--output", str(doc)]) == 0
    assert "selected on mean validation NDCG@20 over the seeds" in doc.read_text()


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "mf,nope"], "unknown method 'nope'"),
    (["--methods", "mf+nope"], "unknown plug-in 'nope'"),
    (["--methods", "mf,mf"], "named twice"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--reference", "lightgcn"], "--reference lightgcn: not one of --methods"),
    (["--set", "seed=3"], "use --seeds"),
    (["--set", "plugins=[cross]"], "METHOD+PLUGIN"),
    (["--set", "n_layer=2"], "unknown setting 'n_layer'"),
    (["--set", "reg_weight=[0.1,0.2]"], "add --grid"),
    (["--data", "/nonexistent/folder"], "nonexistent"),
    (["--set", "topk=[5,20]"], "add 10 to topk"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    base = {"--methods": "mf", "--data": DATA, "--seeds": "1"}
    extra = []
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in base:
            base[flag] = value
        else:
            extra += [flag, value]
    full = ["benchmark", *[x for kv in base.items() for x in kv], "--out", str(tmp_path / "b"), "--no-progress",
            "--epochs", "1", *extra]
    assert main(full) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_parse_methods_generic_plugins():
    specs = parse_methods(" lightgcn , freedom+cross+fettle ")
    assert [(s.label, s.method, s.plugins) for s in specs] == [("lightgcn", "lightgcn", ()),
                                                              ("freedom+cross+fettle", "freedom", ("cross", "fettle"))]
    with pytest.raises(ConfigError, match="at least one"):
        parse_methods(" , ")


def test_run_or_reuse_extends_a_run_that_used_its_whole_budget(tmp_path, count_trainings):
    from mmgraph.train.config import load_config

    cfg = load_config("mf", overrides={"epochs": 1, "batch_size": 256, "log_geometry": False, "threads": 1,
                                       "graph_cache": False})
    cfg.pop("grid")
    first, reused = run_module.run_or_reuse("mf", DATA, cfg, tmp_path / "r")
    assert not reused and first["epochs_run"] == 1
    again, reused = run_module.run_or_reuse("mf", DATA, {**cfg, "threads": 2}, tmp_path / "r")  # runtime key
    assert reused and again["test"] == first["test"]
    longer, reused = run_module.run_or_reuse("mf", DATA, {**cfg, "epochs": 2}, tmp_path / "r")
    assert not reused and longer["epochs_run"] == 2 and count_trainings == [False, True]
    with pytest.raises(ConfigError, match="epochs >= 2"):
        run_module.run_or_reuse("mf", DATA, cfg, tmp_path / "r")
    with pytest.raises(ConfigError, match="other settings .reg_weight"):
        run_module.run_or_reuse("mf", DATA, {**cfg, "epochs": 2, "reg_weight": 0.5}, tmp_path / "r")


def _rows(method, values, dataset="tiktok"):
    return [{"dataset": dataset, "method": method, "seed": s + 1, "params": {}, "point": 0, "run_dir": "",
             "best_epoch": 1, "epochs_run": 2, "seconds_per_epoch": 0.1,
             "test": {"recall@20": v, "ndcg@20": v / 2, "recall@10": v, "ndcg@10": v / 2},
             "valid": {"recall@20": v}} for s, v in enumerate(values)]


def test_claim_verdicts_on_fixed_numbers():
    rows = (_rows("a", [0.100, 0.102, 0.101, 0.103]) + _rows("b", [0.090, 0.091, 0.092, 0.090])
            + _rows("c", [0.101, 0.099, 0.104, 0.100]))
    claim = {"better": "a", "worse": "b"}
    assert check_claim(rows, claim, "tiktok", "recall@20")["verdict"] == "holds"
    assert check_claim(rows, {"better": "b", "worse": "a"}, "tiktok", "recall@20")["verdict"] == "contradicted"
    assert check_claim(rows, {"better": "a", "worse": "c"}, "tiktok", "recall@20")["verdict"] == "not significant"
    assert check_claim(rows, {"better": "a", "worse": "zzz"}, "tiktok", "recall@20")["verdict"] == "not measured"
    summary = summarise(rows, "b")
    assert summary[0]["p"]["recall@20"] < 0.05 and summary[1]["p"]["recall@20"] is None


def test_results_doc_from_a_benchmark_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    assert main(bench(out, "mf,lightgcn", 2)) == 0
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n"
                      "  - {claim: LightGCN beats MF, source: tables, better: lightgcn, worse: mf}\n"
                      "  - {claim: CM3 beats FREEDOM, source: CM3 paper, better: cm3, worse: freedom}\n"
                      "  - {claim: only on Baby, source: x, better: lightgcn, worse: mf, data: [baby]}\n")
    doc = tmp_path / "docs" / "results.md"
    assert main(["results-doc", str(out), "--output", str(doc), "--claims", str(claims),
                 "--note", "A tiny test table."]) == 0
    text = doc.read_text()
    assert "mmgraph benchmark --methods mf,lightgcn" in text and "mmgraph results-doc" in text
    assert "A tiny test table." in text and "| mf (reference) |" in text and "## Claims" in text
    if (out / "summary.png").exists():
        assert "![mean ± std over seeds](results.png)" in text and (doc.parent / "results.png").exists()
    assert "not covered" in text and "cm3" in text.split("not covered")[1].splitlines()[0]
    assert text.count("LightGCN beats MF") == 2                             # R@20 and N@20
    assert text.count("CM3 beats FREEDOM") == 1                             # not measured: one line
    assert "--note '<the paragraph below>'" in text and text.count("A tiny test table.") == 1
    assert "not measured (cm3 and freedom not in this benchmark)" in text
    assert "dataset not in this benchmark" in text
    monkeypatch.chdir(tmp_path)                                              # no docs/claims.yaml here
    assert main(["results-doc", str(tmp_path / "nothing"), "--output", str(doc)]) == 2
    assert "not a benchmark folder" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("claims: [{claim: x}]\n")
    with pytest.raises(Exception, match="needs text fields"):
        load_claims(bad)


def test_cm3_ablation_over_seeds_uses_the_benchmark(tmp_path):
    """``scripts/cm3_ablation.py --seeds N``: each variant over N seeds, t-tested against the full CM3."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / "cm3_ablation.py"), "--data", DATA, "--out", str(tmp_path),
           "--epochs", "1", "--variants", "lf,full", "--seeds", "2", "--set", "batch_size=256",
           "log_geometry=false", "graph_cache=false", "threads=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CM3 w LF" in out.stdout and "Paired t-test" in out.stdout and "CM3 (reference)" in out.stdout
    rows = read_results(tmp_path / "default" / "seeds" / "results.csv")
    assert sorted((r["method"], r["seed"]) for r in rows) == [("CM3", 1), ("CM3", 2), ("CM3 w LF", 1),
                                                              ("CM3 w LF", 2)]
    lf = next(r for r in rows if r["method"] == "CM3 w LF")
    assert "fusion: linear" in (tmp_path / "default" / "seeds" / lf["run_dir"] / "config.yaml").read_text()


def test_the_repository_claims_file_loads():
    claims = load_claims(Path(__file__).resolve().parents[1] / "docs" / "claims.yaml")
    assert len(claims) >= 8 and all(c["better"] != c["worse"] for c in claims)
    labels = {m for c in claims for m in (c["better"], c["worse"])}
    assert {"lightgcn", "mf", "cm3", "freedom", "lightgcn+cross"} <= labels
    for c in claims:                                                    # every label parses as --methods would
        parse_methods(f"{c['better']},{c['worse']}")


def test_job_progress_bar_counts_every_run(tmp_path, capsys):
    """With progress on, one bar over the job's runs ('benchmark: ... 2/2 run'), each run's line above it."""
    from mmgraph.benchmark import run_benchmark
    from mmgraph.train.config import parse_overrides

    result = run_benchmark(parse_methods("mf"), [DATA], [1, 2], tmp_path / "b", progress=True,
                           overrides=parse_overrides(FAST + ["epochs=1"]))
    err = capsys.readouterr().err
    assert "benchmark" in err and "2/2" in err and "synthetic mf seed 2" in err
    assert result.trained == 2 and len(result.rows) == 2


def test_cross_table_over_seeds_uses_the_benchmark(tmp_path):
    """``scripts/cross_table.py --seeds N``: vanilla / +CROSS over N seeds, t-tested against the vanilla backbone."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / "cross_table.py"), "--data", DATA, "--out", str(tmp_path),
           "--backbones", "mf", "--variants", "vanilla,cross", "--epochs", "1", "--seeds", "2", "--threads", "1",
           "--set", "batch_size=256", "log_geometry=false", "graph_cache=false", "cross_prototypes=16"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mf (reference)" in out.stdout and "| mf+cross |" in out.stdout and "Paired t-test" in out.stdout
    rows = read_results(tmp_path / "mf" / "seeds" / "results.csv")
    assert sorted((r["method"], r["seed"]) for r in rows) == [("mf", 1), ("mf", 2), ("mf+cross", 1), ("mf+cross", 2)]
    cross = next(r for r in rows if r["method"] == "mf+cross")
    config = (tmp_path / "mf" / "seeds" / cross["run_dir"] / "config.yaml").read_text()
    assert "- cross" in config and "cross_prototypes: 16" in config and "reg_weight: 0.0001" in config


def test_groups_table_keeps_each_datasets_group_sizes(tmp_path):
    """groups.csv's n_items came from the first dataset for every dataset."""
    from mmgraph.benchmark.report import write_groups

    def record(dataset, n_head):
        return {"dataset": dataset, "method": "mf",
                "groups": {"head": {"n_items": n_head, "recall@10": 0.1, "recall@20": 0.2},
                           "tail1": {"n_items": 4 * n_head, "recall@10": 0.0, "recall@20": 0.1}}}
    write_groups([record("a", 30), record("b", 100), record("b", 100)], tmp_path / "groups.csv")
    sizes = {(r["dataset"], r["group"]): int(r["n_items"]) for r in _csv(tmp_path / "groups.csv")}
    assert sizes == {("a", "head"): 30, ("a", "tail1"): 120, ("b", "head"): 100, ("b", "tail1"): 400}


def test_a_rerun_with_more_epochs_counts_its_runs_as_resumed(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(bench(out, "mf", 2)) == 0
    longer = bench(out, "mf", 2)
    longer[longer.index("--epochs") + 1] = "3"
    capsys.readouterr()
    assert main(longer) == 0
    assert "2 run(s) trained (2 of them resumed), 0 reused" in capsys.readouterr().out
