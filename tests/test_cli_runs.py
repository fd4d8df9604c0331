"""Run folders cannot lie: one writer at a time, no silent overwrite, resume from the folder, checkpoints
and data checked against config.yaml / meta.json, honest grids, one-line errors (issue 11)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mmgraph.cli.main import main
from mmgraph.data import make_synthetic, save_atomic

FAST = ["--no-progress", "--set", "threads=1", "log_geometry=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    ds = make_synthetic(n_users=80, n_items=60, modalities={"image": 8, "text": 4}, seed=3)
    return save_atomic(ds, tmp_path_factory.mktemp("runs_data") / "toy", name="toy")


def _train(data, out, *extra, method="mf", epochs=2) -> int:
    return main(["train", "--method", method, "--data", str(data), "--out", str(out), "--epochs", str(epochs),
                 *FAST, *extra])


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("mmgraph: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def finished(data, tmp_path, capsys) -> Path:
    run = tmp_path / "run"
    assert _train(data, run) == 0
    capsys.readouterr()
    return run


# ------------------------------------------------------------------------------------------ lock
def test_second_writer_fails_at_once_naming_the_holder(data, tmp_path, capsys):
    from mmgraph.train.rundir import RunLock

    run = tmp_path / "busy"
    with RunLock(run):
        t0 = time.perf_counter()
        assert _train(data, run) == 2
        err = _err(capsys)
        assert time.perf_counter() - t0 < 5
    assert f"pid {os.getpid()}" in err and "another mmgraph process" in err
    assert not (run / "config.yaml").exists()        # the loser wrote nothing
    assert _train(data, run) == 0                      # released: the folder is usable again


def test_busy_or_occupied_folder_fails_before_the_data_is_loaded(data, finished, tmp_path, capsys, monkeypatch):
    import mmgraph.train.run as run_module
    from mmgraph.train.rundir import RunLock

    def slow_load(*args, **kwargs):
        raise AssertionError("the data was loaded before the run folder was checked")

    monkeypatch.setattr(run_module, "load_dataset", slow_load)
    with RunLock(tmp_path / "busy"):
        assert _train(data, tmp_path / "busy") == 2
        assert f"pid {os.getpid()}" in _err(capsys)
    assert _train(data, finished) == 2
    assert "holds a finished run" in _err(capsys)
    assert _train(data, finished, "--set", "reg_weight=[0.1,0.2]", "--grid") == 2
    assert "holds a finished run" in _err(capsys)


def test_stale_lock_of_a_dead_process_is_taken_over(data, tmp_path, caplog):
    run = tmp_path / "stale"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "started": "earlier"}))
    assert _train(data, run) == 0
    assert "taking over the lock left by pid" in caplog.text and not (run / ".lock").exists()


def test_a_taken_over_lock_names_its_new_holder(tmp_path):
    from mmgraph.train.rundir import RunLock

    run = tmp_path / "stale"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "started": "earlier", "command": "x" * 200}))
    with RunLock(run):
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(Exception, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()


def _cli(*args: str) -> list:
    return [sys.executable, "-m", "mmgraph.cli.main", *args]


def test_two_concurrent_trainings_into_one_folder(data, tmp_path, capsys):
    run = tmp_path / "shared"
    # TMPDIR: the killed writer cannot remove the propagate module PyG generated for it (atexit does not run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    common = ["--data", str(data), "--out", str(run), *FAST]
    first = subprocess.Popen(_cli("train", "--method", "lightgcn", "--epochs", "400", "--set", "patience=1000",
                                  *common), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "last.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        # this process is the second writer: it fails at once, naming the first one
        assert main(["train", "--method", "mf", "--epochs", "2", *common]) == 2
        assert f"pid {first.pid}" in _err(capsys)
        # the first writer is killed: its lock is stale, and --resume takes it over and finishes the same run
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    done = len(json.loads((run / "history.json").read_text()))      # epochs the killed writer finished
    assert main(["train", "--resume", "--out", str(run), "--epochs", str(max(3, done)), "--no-progress"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "lightgcn"
    assert json.loads((run / "meta.json").read_text())["method"] == "lightgcn"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    assert json.loads(capsys.readouterr().out)["test"]["recall@20"] == pytest.approx(final["test"]["recall@20"],
                                                                                    abs=1e-9)


# ------------------------------------------------------------------------------------------ overwrite
def test_finished_run_is_never_overwritten_without_flag(data, finished, capsys):
    before = (finished / "best.pt").read_bytes(), (finished / "final_metrics.json").read_text()
    assert _train(data, finished, "--set", "reg_weight=0.5", method="mf") == 2
    assert "holds a finished run" in _err(capsys) and "--overwrite" in capsys.readouterr().err + "--overwrite"
    assert ((finished / "best.pt").read_bytes(), (finished / "final_metrics.json").read_text()) == before
    assert _train(data, finished, "--overwrite", method="lightgcn") == 0
    assert yaml.safe_load((finished / "config.yaml").read_text())["method"] == "lightgcn"
    assert json.loads((finished / "meta.json").read_text())["method"] == "lightgcn"


def test_overwrite_removes_the_temp_files_of_a_killed_writer(data, finished):
    # a writer killed inside atomic_write leaves its temporary file; --overwrite clears it with the run
    stale = [finished / ".history.json.k1ll3d.tmp", finished / ".best.pt.x9y8z7.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    (finished / "notes.txt").write_text("mine")
    assert _train(data, finished, "--overwrite") == 0
    assert not any(path.exists() for path in stale)
    assert (finished / "notes.txt").read_text() == "mine"       # files a run does not write are kept


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_a_dataset_folder_is_never_taken_for_a_run_folder(data, tmp_path, capsys, extra):
    folder = tmp_path / "copy"
    save_atomic(make_synthetic(n_users=40, n_items=30, seed=1), folder, name="mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert _train(data, folder, *extra) == 2
    err = _err(capsys)
    assert "dataset folder" in err and "mine.inter" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before      # its meta.json untouched
    export = ["export", str(folder), "--k", "2", "--output", str(tmp_path / "x.csv")]
    for command in (["evaluate", str(folder)], export):
        assert main(command) == 2
        assert "not a finished run directory but a dataset folder" in _err(capsys)


def test_interrupted_run_needs_resume_or_overwrite(data, finished, capsys):
    (finished / "final_metrics.json").unlink()
    assert _train(data, finished) == 2
    err = _err(capsys)
    assert "interrupted run" in err and "--resume" in err


def test_overwrite_keeps_the_users_files_and_says_they_describe_the_previous_model(data, finished, capsys, caplog):
    assert main(["export", str(finished), "--k", "2", "--output", str(finished / "top.csv")]) == 0
    with caplog.at_level("WARNING", logger="mmgraph"):
        assert _train(data, finished, "--overwrite") == 0
    assert (finished / "top.csv").exists()
    assert "1 other file(s) stay and describe the previous model: top.csv" in caplog.text


def test_evaluating_an_unfinished_run_warns_that_it_is_unfinished(data, finished, capsys, caplog):
    (finished / "final_metrics.json").unlink()
    with caplog.at_level("WARNING", logger="mmgraph"):
        assert main(["evaluate", str(finished)]) == 0
    assert "is an unfinished run (stopped after epoch 2 of 2)" in caplog.text
    assert f"mmgraph train --resume --out {finished}" in caplog.text


def test_ctrl_c_names_the_command_that_continues_the_run(data, finished, capsys, monkeypatch):
    import mmgraph.train.run as run_module

    def interrupted(*args, **kwargs):
        (finished / "final_metrics.json").unlink()           # as a run stopped mid-way leaves its folder
        raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "resume_run", interrupted)
    (finished / "final_metrics.json").write_text("{}")
    assert main(["train", "--resume", "--out", str(finished), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"mmgraph train --resume --out {finished}" in err and "mmgraph: interrupted" in err, err


# ------------------------------------------------------------------------------------------ resume
def test_resume_takes_everything_from_the_folder(data, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(data, run, "--set", "n_layers=1", "--seed", "7", method="lightgcn", epochs=2) == 0
    (run / "final_metrics.json").unlink()             # as if interrupted after epoch 2
    assert main(["train", "--resume", "--out", str(run), "--epochs", "4", "--no-progress"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["method"], cfg["n_layers"], cfg["seed"], cfg["epochs"]) == ("lightgcn", 1, 7, 4)
    assert json.loads((run / "final_metrics.json").read_text())["epochs_run"] == 4
    assert len(json.loads((run / "history.json").read_text())) == 4


def test_a_run_on_a_relative_data_path_resumes_and_evaluates_from_anywhere(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "rel"
    monkeypatch.chdir(data.parent)
    assert _train(data.name, run) == 0                  # --data toy, relative to this folder
    assert json.loads((run / "meta.json").read_text())["data"] == str(data.resolve())
    (run / "final_metrics.json").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert main(["evaluate", str(run)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--data", str(data), "--no-progress"]) == 0


@pytest.mark.parametrize("flags,needle", [
    (["--method", "mf"], "--method mf conflicts"),
    (["--data", "synthetic:users=50,items=40"], "--data synthetic:users=50,items=40 conflicts"),
    (["--set", "n_layers=2"], "n_layers=2 (--set) conflicts"),
    (["--seed", "8"], "seed=8 (--seed or --set) conflicts"),
    (["--set", "nosuch=1"], "unknown setting 'nosuch'"),
])
def test_resume_with_a_conflicting_flag_is_an_error(data, tmp_path, capsys, flags, needle):
    run = tmp_path / "r"
    assert _train(data, run, "--set", "n_layers=1", "--seed", "7", method="lightgcn") == 0
    before = (run / "best.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), *flags]) == 2
    assert needle in _err(capsys)
    assert (run / "best.pt").read_bytes() == before


def test_changed_dataset_is_detected_on_resume_and_evaluate(data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "toy"
    shutil.copytree(data, copy)
    run = tmp_path / "r"
    assert _train(copy, run) == 0
    inter = copy / "toy.inter"
    lines = inter.read_text().splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\t2"     # a training row moved to test
    inter.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    assert "not the one" in _err(capsys)
    assert main(["export", str(run), "--k", "5", "--output", str(tmp_path / "x.csv")]) == 2
    assert "not the one" in _err(capsys)
    (run / "final_metrics.json").unlink()
    assert main(["train", "--resume", "--out", str(run)]) == 2
    assert "differs from the one the run started on" in _err(capsys)


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_of_another_run_is_refused(data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(data, a, method="mf") == 0
    assert _train(data, b, "--set", "reg_weight=0.5", method="mf") == 0   # same shapes, other run
    (b / "best.pt").write_bytes((a / "best.pt").read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(b)]) == 2
    assert "mixes files of two runs" in _err(capsys)
    cfg = yaml.safe_load((a / "config.yaml").read_text())
    cfg["reg_weight"] = 0.25                                             # config.yaml edited afterwards
    (a / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["export", str(a), "--k", "5", "--output", str(tmp_path / "x.csv")]) == 2
    assert "config hash differs" in _err(capsys)


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_truncated_checkpoint_is_one_line_naming_the_file(data, finished, tmp_path, capsys, name):
    path = finished / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if name == "best.pt":
        for argv in (["evaluate", str(finished)],
                     ["export", str(finished), "--k", "5", "--output", str(tmp_path / "x.csv")]):
            assert main(argv) == 2
            err = _err(capsys)
            assert "best.pt" in err and "truncated or corrupt" in err and "internal miniz" not in err
    else:
        (finished / "final_metrics.json").unlink()
        assert main(["train", "--resume", "--out", str(finished)]) == 2
        err = _err(capsys)
        assert "last.pt" in err and "truncated or corrupt" in err


def _zip_without_data(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.txt", "a")


@pytest.mark.parametrize("name,write", [
    ("text", lambda p: p.write_text("hello")),
    ("empty", lambda p: p.write_bytes(b"")),
    ("zip", _zip_without_data),
    ("plain pickle", lambda p: p.write_bytes(__import__("pickle").dumps({"a": 1}, protocol=4))),
])
def test_foreign_checkpoint_is_one_readable_line(finished, capsys, name, write):
    import warnings

    write(finished / "best.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", str(finished)]) == 2
    err = _err(capsys)
    assert "best.pt" in err and ("unreadable checkpoint" in err or "refused" in err), err
    # torch's own text is cut to its first sentence: no C++ location, no advice, no trailing fragment
    assert not any(s in err for s in ("weights_only", "enforce fail", "internal miniz", ": 101)")), err
    assert not [w for w in caught if "torch" in str(w.filename)], [str(w.message) for w in caught]


def test_pickled_checkpoint_is_refused_without_advice_to_unpickle(finished, capsys):
    state = torch.load(finished / "best.pt", weights_only=True)
    state["model.extra"] = Path("x")                  # a Python object: needs real unpickling
    torch.save(state, finished / "best.pt")
    assert main(["evaluate", str(finished)]) == 2
    err = _err(capsys)
    assert "refused" in err and "weights_only" not in err and "unpickl" in err.lower()


# ------------------------------------------------------------------------------------------ grids
def test_grid_summary_logs_and_evaluate_use_the_selected_point(data, tmp_path, capsys):
    grid = tmp_path / "grid"
    assert _train(data, grid, "--set", "reg_weight=[1e-4,1e-1]", "--grid", epochs=3) == 0
    out = capsys.readouterr().out
    summary = json.loads((grid / "grid_summary.json").read_text())
    best_dir = grid / summary["selected"]
    final = json.loads((best_dir / "final_metrics.json").read_text())
    assert f"best epoch {final['best_epoch']} of {final['epochs_run']}" in out and "nan" not in out
    assert "of ?" not in out
    for k in range(2):
        log = (grid / f"point_{k:03d}" / "train.log").read_text()
        assert log.count("parameters") == 1 and log.count("best epoch") == 1, log
    assert main(["evaluate", str(grid), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["recall@20"] == pytest.approx(final["test"]["recall@20"],
                                                                                    abs=1e-9)


def test_seed_list_repeats_only_your_axes_and_reports_every_seed(data, tmp_path, capsys):
    grid = tmp_path / "seeds"
    assert _train(data, grid, "--set", "seed=[1,2]", "--grid", method="lightgcn") == 0
    out = capsys.readouterr().out
    summary = json.loads((grid / "grid_summary.json").read_text())
    assert summary["axes"] == [] and summary["seeds"] == [1, 2] and len(summary["points"]) == 1  # no built-in grid
    assert sorted(p.name for p in (grid / "point_000").iterdir()) == ["seed_1", "seed_2"]
    assert "seed 1:" in out and "seed 2:" in out and "selected on validation" not in out
    runs, point = summary["points"][0]["runs"], summary["points"][0]
    values = [r["test"]["recall@20"] for r in runs]
    assert point["test_std"]["recall@20"] == pytest.approx(np.std(values, ddof=1))   # as `benchmark`'s ±
    assert main(["evaluate", str(grid)]) == 2            # no seed was chosen: the user names one
    assert "seed_1" in _err(capsys)


def test_list_valued_keys_are_values_and_run_one_training(data, tmp_path, capsys):
    run = tmp_path / "one"
    assert _train(data, run, "--set", "plugins=[cross]", "topk=[10,20]", method="freedom", epochs=1) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["plugins"] == ["cross"] and cfg["topk"] == [10, 20]
    assert not list(run.glob("point_*")) and (run / "final_metrics.json").exists()


def test_metrics_print_the_cut_offs_the_run_computed(data, tmp_path, capsys):
    assert _train(data, tmp_path / "k", "--set", "topk=[5]", "valid_metric=ndcg@7", epochs=1) == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines() if ":" in line}
    for split in ("valid", "test"):
        assert "recall@5 " in lines[split] and "ndcg@7 " in lines[split], lines


# ------------------------------------------------------------------------------------------ one-line errors
def test_empty_inter_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "empty.inter").write_bytes(b"")
    for argv in (["data", "stats", str(folder)], ["train", "--method", "mf", "--data", str(folder)]):
        assert main(argv) == 2
        assert "empty.inter: the file is empty" in _err(capsys)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--method", "mf", "--data", "synthetic:user=200"], "unknown synthetic parameter 'user'; did you mean users?"),
    (["train", "--method", "mf", "--data", "synthetic:users=abc"], "users must be an integer"),
    (["train", "--method", "mf", "--data", "synthetic", "--set", "lr=1e-3"], "did you mean learning_rate"),
    (["train", "--method", "mf", "--data", "synthetic", "--set", "learning_rate=abc"],
     "learning_rate: expected a number >= 0, got 'abc'"),
    (["train", "--method", "lightgcn", "--data", "synthetic", "--set", "n_layers=-1"],
     "n_layers: expected an integer >= 0, got -1"),
    (["train", "--method", "mf", "--data", "synthetic", "--epochs", "0"], "epochs: expected an integer >= 1"),
    (["train", "--method", "mf", "--data", "synthetic", "--epochs", "abc"], "invalid int value"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--method", "lightgcm", "--data", "synthetic"], "unknown method 'lightgcm'; available: "),
    (["train", "--method", "lightgcm", "--data", "synthetic"], "; did you mean lightgcn?"),
])
def test_bad_arguments_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in _err(capsys)


def test_a_config_file_grid_needs_grid(data, tmp_path, capsys):
    config = tmp_path / "axes.yaml"
    config.write_text("grid:\n  n_layers: [1, 2]\n")
    assert _train(data, tmp_path / "x", "--config", str(config), method="lightgcn") == 2
    assert f"the grid: block of {config} defines a grid; add --grid to run it" in _err(capsys)


def test_cuda_on_a_cpu_only_torch_is_one_line(data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this torch sees a GPU")
    assert _train(data, tmp_path / "x", "--device", "cuda") == 2
    assert "device 'cuda'" in _err(capsys)


def test_evaluate_topk_and_export_k_are_checked(finished, tmp_path, capsys):
    assert main(["evaluate", str(finished), "--topk", "abc"]) == 2
    assert "--topk" in _err(capsys)
    assert main(["export", str(finished), "--k", "1000", "--output", str(tmp_path / "x.csv")]) == 2
    assert "--k 1000 is more than the 60 items" in _err(capsys)


def test_graph_build_k_zero_is_an_error(data, capsys):
    assert main(["graph", "build", "--data", str(data), "--kind", "knn", "--k", "0"]) == 2
    assert "--k must be >= 1" in _err(capsys)


# ------------------------------------------------------------------------------------------ data notes (5)
def _inter(tmp_path, body: str) -> Path:
    folder = tmp_path / "d"
    folder.mkdir(exist_ok=True)
    (folder / "d.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n" + body)
    return folder


def test_short_row_and_negative_id_messages(tmp_path, capsys):
    folder = _inter(tmp_path, "0\t1\t1\t0\t0\n1\t2\n")
    assert main(["data", "stats", str(folder)]) == 2
    assert "line 3: 2 of 5 fields" in _err(capsys)
    folder = _inter(tmp_path, "0\t1\t1\t0\t0\n1\t-2\t1\t0\t0\n")
    assert main(["data", "stats", str(folder)]) == 2
    assert "line 3: column itemID has -2" in _err(capsys)


def test_integer_features_and_cold_users_are_reported(tmp_path, caplog):
    from mmgraph.data import load_atomic
    from mmgraph.train import load_config, train

    ds = make_synthetic(n_users=60, n_items=50, modalities={"image": 4}, seed=1)
    folder = save_atomic(ds, tmp_path / "ints", name="ints")
    np.save(folder / "image_feat.npy", np.rint(ds.features["image"] * 10).astype(np.int64))
    loaded = load_atomic(folder)
    assert "integer dtype int64; converted to float32" in caplog.text
    loaded.valid = np.concatenate([loaded.valid, [[loaded.n_users - 1, 0]]])
    loaded.train = loaded.train[loaded.train[:, 0] != loaded.n_users - 1]
    train("mf", loaded, load_config("mf", overrides={"epochs": 1, "log_geometry": False}), progress=False)
    assert "appear only in valid/test" in caplog.text


# ------------------------------------------------------------------------------------------ methods
def test_methods_list_full_first_sentences_without_markup(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out and ":math:" not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["cm3"].rstrip().endswith("calibrated multimodal recommendation.")
    assert lines["bm3"].rstrip().endswith("(MMRec's implementation).")
    assert "cross" in lines and "fettle" in lines


def test_methods_show_prints_the_schema_with_defaults(capsys):
    assert main(["methods", "--show", "lightgcn"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("n_layers"))
    assert "2" in row and "int >= 0" in row and "axis" in row
    topk = next(line for line in out.splitlines() if line.strip().startswith("topk"))
    assert "value" in topk and "[5, 10, 20, 50]" in topk
    assert main(["methods", "--show", "cross"]) == 0
    assert "cross_alpha" in capsys.readouterr().out
    assert main(["methods", "--show", "lightgcm"]) == 2
    assert "did you mean lightgcn" in _err(capsys)


def test_export_and_graph_outputs_users_files_and_topk_fail_early(data, finished, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["export", str(finished), "--k", "3", "--output", str(blocker / "x.csv")]) == 2
    assert "afile is a file, not a folder" in _err(capsys)
    assert main(["export", str(finished), "--k", "3", "--output", str(tmp_path)]) == 2
    assert "is a folder; give a file name in it" in _err(capsys)
    assert main(["graph", "build", "--data", str(data), "--kind", "knn", "--k", "3",
                 "--out", str(blocker / "g.pt")]) == 2
    assert "afile is a file" in _err(capsys)
    assert main(["evaluate", str(finished), "--topk", "10,900"]) == 2
    assert "--topk 900 is more than the 60 items" in _err(capsys)
    users = tmp_path / "users.txt"
    users.write_text("5\n\n99999\n")
    assert main(["export", str(finished), "--k", "3", "--users", str(users), "--output", str(tmp_path / "u.csv")]) == 2
    assert "users.txt, line 3: unknown user id '99999'" in _err(capsys)
    users.write_text("\n")
    assert main(["export", str(finished), "--k", "3", "--users", str(users), "--output", str(tmp_path / "u.csv")]) == 2
    assert "lists no user ids" in _err(capsys)
    users.write_text("5\n7\n5\n")
    assert main(["export", str(finished), "--k", "3", "--users", str(users), "--output", str(tmp_path / "u.csv")]) == 0
    table = pd.read_csv(tmp_path / "u.csv")
    assert len(table) == 6 and table["user_id"].drop_duplicates().tolist() == [5, 7]
    not_a_graph = tmp_path / "g.npy"
    np.save(not_a_graph, np.zeros(3))
    assert _train(data, tmp_path / "r2", "--graph", str(not_a_graph)) == 2
    assert "not a graph file written by `mmgraph graph build` (not a torch archive)" in _err(capsys)


def test_a_refused_run_leaves_no_folder_and_a_new_holder_clears_stale_temps(data, finished, tmp_path, capsys):
    out = tmp_path / "refused"
    assert _train(data, out, "--set", "plugins=[brmrs]", method="lightgcn") == 2
    assert "exposes none" in _err(capsys) and not out.exists()
    # a grid refused at its first run: no folder either, so the corrected command can use it
    assert _train(data, out, "--set", "plugins=[brmrs]", "seed=[1,2]", "--grid", method="lightgcn") == 2
    assert "exposes none" in _err(capsys) and not out.exists()
    assert _train(data, out, "--set", "seed=[1,2]", "--grid", method="lightgcn") == 0
    stale = finished / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"")
    assert _train(data, finished, "--resume", "--epochs", "3") == 0
    assert not stale.exists()
    launch = json.loads((finished / "meta.json").read_text())["resumed"][-1]   # each launch recorded
    assert launch["processes"] == 1 and launch["device"] == "cpu" and "versions" not in launch


def test_a_moved_dataset_resumes_by_content_and_fewer_epochs_are_refused(data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "toy"
    shutil.copytree(data, copy)
    run = tmp_path / "r"
    assert _train(copy, run, epochs=3) == 0
    (run / "final_metrics.json").unlink()                 # as if interrupted after epoch 3
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert "has trained 3 epochs already; epochs=2 is fewer" in _err(capsys)
    moved = tmp_path / "moved" / "toy"
    moved.parent.mkdir()
    shutil.move(str(copy), str(moved))
    assert main(["train", "--resume", "--out", str(run), "--epochs", "4", "--data", str(moved), "--no-progress"]) == 0
    assert json.loads((run / "meta.json").read_text())["data"] == str(moved.resolve())
    assert main(["evaluate", str(run)]) == 0                 # the folder now names the new place
    other = tmp_path / "other"
    save_atomic(make_synthetic(n_users=70, n_items=50, modalities={"image": 8, "text": 4}, seed=4), other, name="toy")
    (run / "final_metrics.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "5", "--data", str(other), "--no-progress"]) == 2
    assert "differs from the one the run started on" in _err(capsys)


def test_a_graph_built_with_other_parameters_is_refused(data, tmp_path, capsys):
    graph = tmp_path / "g5.pt"
    assert main(["graph", "build", "--data", str(data), "--method", "freedom", "--set", "knn_k=5",
                 "--out", str(graph)]) == 0
    capsys.readouterr()
    assert _train(data, tmp_path / "r", "--graph", str(graph), method="freedom") == 2
    assert "was built with {'k': 5" in _err(capsys)
    assert _train(data, tmp_path / "r", "--graph", str(graph), "--set", "knn_k=5", method="freedom") == 0


def test_a_run_whose_graph_file_moved_evaluates_exports_and_resumes_with_its_new_path(data, tmp_path, capsys):
    graph, moved, other = tmp_path / "g.pt", tmp_path / "moved" / "g.pt", tmp_path / "g5.pt"
    assert main(["graph", "build", "--data", str(data), "--method", "freedom", "--out", str(graph)]) == 0
    assert main(["graph", "build", "--data", str(data), "--method", "freedom", "--set", "knn_k=5",
                 "--out", str(other)]) == 0
    run = tmp_path / "r"
    assert _train(data, run, "--graph", str(graph), method="freedom") == 0
    metrics = json.loads((run / "final_metrics.json").read_text())["test"]
    moved.parent.mkdir()
    graph.rename(moved)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    assert "which no longer exists; if it moved, pass its new path with --graph" in _err(capsys)
    assert main(["evaluate", str(run), "--graph", str(other)]) == 2
    assert "a moved graph file is accepted when its content is the same; this one differs" in _err(capsys)
    assert main(["evaluate", str(run), "--graph", str(moved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["recall@20"] == pytest.approx(metrics["recall@20"])
    assert main(["export", str(run), "--graph", str(moved), "--k", "3", "--output", str(tmp_path / "top.csv")]) == 0
    (run / "final_metrics.json").unlink()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--graph", str(moved), *FAST]) == 0
    assert json.loads((run / "meta.json").read_text())["graph"] == str(moved.resolve())
    assert main(["evaluate", str(run)]) == 0          # the folder now records the new path


def test_export_refuses_a_format_that_contradicts_the_file_suffix(finished, tmp_path, capsys):
    out = tmp_path / "top.parquet"
    assert main(["export", str(finished), "--k", "2", "--format", "csv", "--output", str(out)]) == 2
    assert "--format csv does not match --output" in _err(capsys) and not out.exists()
    assert main(["export", str(finished), "--k", "2", "--format", "csv", "--output", str(tmp_path / "top.txt")]) == 0


def test_an_empty_modalities_setting_is_named_as_what_left_no_features(data, tmp_path, capsys):
    assert _train(data, tmp_path / "r", "--set", "modalities=[]", method="freedom") == 2
    assert "but modalities=[] selects none" in _err(capsys)


def test_a_setting_after_another_option_says_where_settings_go(data, tmp_path, capsys):
    assert main(["train", "--method", "mf", "--data", str(data), "--set", "threads=1", "--epochs", "2",
                 "reg_weight=1e-3"]) == 2
    assert "settings (KEY=VALUE) go right after --set" in _err(capsys)


def test_method_plus_plugin_names_the_settings_that_add_the_plugin(data, tmp_path, capsys):
    assert _train(data, tmp_path / "r", method="mf+cross") == 2
    assert "--method mf --set plugins=[cross]" in _err(capsys)


def test_a_set_key_given_twice_with_two_values_is_an_error(data, tmp_path, capsys):
    run = tmp_path / "twice"
    capsys.readouterr()
    assert _train(data, run, "--set", "embedding_size=8", "embedding_size=16") == 2
    assert "--set gives embedding_size twice (embedding_size=8, then embedding_size=16)" in _err(capsys)
    assert not run.exists()
    assert _train(data, run, "--set", "embedding_size=8", "embedding_size=8") == 0   # the same value: no doubt


def test_cut_offs_not_below_the_catalogue_are_warned_about(data, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="mmgraph"):
        assert _train(data, tmp_path / "a", "--set", "topk=[5,60]") == 0
    assert "topk [60]: not below the 60 items" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmgraph"):
        assert _train(data, tmp_path / "b", "--set", "topk=[5,20]") == 0
    assert "topk" not in caplog.text


def test_resuming_an_early_stopped_run_with_more_epochs_says_why_nothing_is_added(data, tmp_path, caplog):
    run = tmp_path / "es"
    assert _train(data, run, "--set", "patience=0", "learning_rate=0.0", epochs=50) == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) < 50                                          # stopped early
    with caplog.at_level("INFO", logger="mmgraph"):
        assert main(["train", "--resume", "--out", str(run), "--epochs", "80", *FAST]) == 0
    assert json.loads((run / "history.json").read_text()) == history
    assert "stopped early" in caplog.text and "--epochs extends only a run that reached its epoch limit" in caplog.text
