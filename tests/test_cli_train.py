import json

import numpy as np
import pandas as pd
import pytest

from mmgraph.cli.main import main
from mmgraph.data import load_atomic, make_synthetic, save_atomic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ds = make_synthetic(n_users=150, n_items=120, seed=5)
    # raw ids that differ from the indices, as after `mmgraph data prepare`
    ds.user_ids = np.array([f"u{k}" for k in range(ds.n_users)], dtype=object)
    ds.item_ids = np.array([f"i{k}" for k in range(ds.n_items)], dtype=object)
    data = save_atomic(ds, root / "data", name="toy")
    run = root / "run"
    assert main(["train", "--method", "lightgcn", "--data", str(data), "--out", str(run), "--epochs", "3",
                 "--set", "n_layers=1", "reg_weight=1e-3", "--no-progress"]) == 0
    return data, run


def test_train_writes_run_and_resolves_overrides(trained):
    import yaml
    _, run = trained
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["n_layers"] == 1 and cfg["reg_weight"] == 1e-3 and cfg["epochs"] == 3
    assert json.loads((run / "final_metrics.json").read_text())["epochs_run"] == 3


def test_evaluate_json(trained, capsys):
    _, run = trained
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    final = json.loads((run / "final_metrics.json").read_text())
    assert abs(out["test"]["recall@20"] - final["test"]["recall@20"]) < 1e-9


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_never_contains_training_items(trained, tmp_path, fmt):
    data, run = trained
    out = tmp_path / f"top.{fmt}"
    assert main(["export", str(run), "--k", "15", "--output", str(out)]) == 0
    df = {"csv": pd.read_csv, "parquet": pd.read_parquet,
          "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt](out)
    assert list(df.columns) == ["user_id", "item_id", "score", "rank"]
    ds = load_atomic(data)
    train = {(f"u{u}", f"i{i}") for u, i in ds.train.tolist()}
    assert not any((u, i) in train for u, i in zip(df.user_id.astype(str), df.item_id.astype(str)))
    assert df.groupby("user_id").size().max() == 15 and df.user_id.nunique() == ds.n_users
    first = df[df.user_id == "u0"].sort_values("rank")
    assert first["rank"].tolist() == list(range(1, 16)) and first.score.is_monotonic_decreasing


def test_export_selected_users_and_unknown_user(trained, tmp_path, capsys):
    _, run = trained
    users = tmp_path / "users.txt"
    users.write_text("u3\nu7\n")
    out = tmp_path / "top.csv"
    assert main(["export", str(run), "--k", "5", "--output", str(out), "--users", str(users)]) == 0
    assert set(pd.read_csv(out).user_id) == {"u3", "u7"}
    users.write_text("u3\nnobody\n")
    assert main(["export", str(run), "--k", "5", "--output", str(out), "--users", str(users)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "nobody" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--method", "nope", "--data", "synthetic"], "unknown method 'nope'"),
    (["train", "--method", "mf", "--data", "/does/not/exist"], "no such dataset folder"),
    (["train", "--method", "mf", "--data", "synthetic", "--set", "oops"], "key=value"),
    (["evaluate", "/does/not/exist"], "not a finished run directory"),
])
def test_errors_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_grid_selects_on_validation(tmp_path, capsys):
    assert main(["train", "--method", "mf", "--data", "synthetic:users=100,items=80", "--grid", "--epochs", "2",
                 "--set", "reg_weight=[1e-4,1e-2]", "--no-progress", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "grid_summary.json").read_text())
    assert len(summary["points"]) == 2
    best = max(summary["points"], key=lambda r: r["valid"]["recall@20"])
    assert summary["best"]["point"] == best["point"]


def test_a_grid_without_out_says_it_wrote_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "mf", "--data", "synthetic:users=100,items=80", "--grid", "--epochs", "1",
                 "--set", "reg_weight=[1e-4,1e-2]", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "selected on validation: point" in out and "no run folder written" in out
    assert not list(tmp_path.iterdir())


def test_methods_lists_registry(capsys):
    assert main(["methods", "--json"]) == 0
    assert {"mf", "lightgcn", "directau"} <= set(json.loads(capsys.readouterr().out))
