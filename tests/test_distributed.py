"""Data-parallel training (issue 17): 2 CPU processes (gloo) launched by torchrun against one process.

Every rank draws the same global batches and keeps its rows, DDP averages the gradients, the users of
evaluation and export are split over the ranks: the trained metrics must match one process (float
rounding aside) and the 2-process export must equal the 1-process export row for row.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmgraph.cli.main import main
from mmgraph.data import make_synthetic
from mmgraph.evaluation import Evaluator
from mmgraph.train.distributed import DistContext, ShardedBatches, evaluate_sharded, strip_nproc
from mmgraph.train.sampler import BPRSampler

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:users=160,items=120,seed=3"
SETTINGS = ["--set", "batch_size=256", "threads=1", "reg_weight=0", "log_geometry=false", "patience=50"]


def _run(args, timeout=120, tmpdir=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "mmgraph", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_sharded_batches_cover_the_global_batch_once():
    ds = make_synthetic(60, 50, seed=0)
    batches = [list(ShardedBatches(BPRSampler(ds, 37, seed=5), DistContext(r, 3)).epoch()) for r in range(3)]
    reference = list(BPRSampler(ds, 37, seed=5).epoch())
    assert all(len(b) == len(reference) for b in batches)
    for step, ref in enumerate(reference):
        parts = [batches[r][step] for r in range(3)]
        rows = torch.cat([torch.stack([p[0].users, p[0].pos, p[0].neg], 1) for p in parts if p[1] > 0])
        want = torch.stack([ref.users, ref.pos, ref.neg], 1)
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, want.tolist()))
        assert sum(p[1] for p in parts) == pytest.approx(3.0)  # the scales average the gradient exactly


def test_sharded_batches_give_empty_ranks_zero_weight():
    ds = make_synthetic(30, 40, seed=1)
    sampler = BPRSampler(ds, 10_000, seed=0)
    n = len(sampler.pairs)
    sampler.batch_size = n - 1  # the last global batch has one row
    last = list(ShardedBatches(sampler, DistContext(1, 2)).epoch())[-1]
    assert last[1] == 0.0 and len(last[0]) == 1


def test_sharded_evaluation_equals_full_evaluation_single_process():
    ds = make_synthetic(80, 60, seed=2)
    ev = Evaluator(ds, "test", ks=[10, 20])
    g = torch.Generator().manual_seed(0)
    u, i = torch.randn(80, 8, generator=g), torch.randn(60, 8, generator=g)
    shards = [ev.evaluate_shard(u, i, users=ev.shard(r, 3)) for r in range(3)]
    full = ev.evaluate(u, i)
    combined = ev.combine_shards(shards)
    assert combined == pytest.approx(full, abs=1e-12)
    assert evaluate_sharded(ev, u, i, DistContext()) == full


def test_strip_nproc():
    assert strip_nproc(["train", "--nproc", "2", "--epochs", "3"]) == ["train", "--epochs", "3"]
    assert strip_nproc(["train", "--nproc=4", "--out", "x"]) == ["train", "--out", "x"]


def test_two_processes_match_one_process_and_resume_and_export(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--method", "lightgcn", "--data", DATA, "--no-progress", *SETTINGS]
    assert main(["train", *common, "--epochs", "3", "--out", str(one)]) == 0
    # 2 processes: 2 epochs, then resumed to 3 (checkpoints written by rank 0, read by both)
    temp = tmp_path / "temp"   # the launch's temporary folder: torchrun's log folder in it is removed after
    temp.mkdir()
    _run(["train", *common, "--epochs", "2", "--out", str(two), "--nproc", "2"], tmpdir=temp)
    assert not [p.name for p in temp.iterdir() if p.name.startswith(("torchelastic_", "mmgraph-torchrun-"))]
    assert json.loads((two / "meta.json").read_text())["processes"] == 2
    out = _run(["train", "--resume", "--out", str(two), "--epochs", "3", "--no-progress", "--nproc", "2"])
    assert out.stdout.count("recall@20") >= 1  # rank 0 reports once
    a = json.loads((one / "final_metrics.json").read_text())
    b = json.loads((two / "final_metrics.json").read_text())
    assert b["epochs_run"] == 3
    for split in ("valid", "test"):
        for key in ("recall@20", "ndcg@20", "recall@10"):
            assert b[split][key] == pytest.approx(a[split][key], abs=2e-3), (split, key)
    h1 = json.loads((one / "history.json").read_text())
    h2 = json.loads((two / "history.json").read_text())
    assert [r["train_loss"] for r in h2] == pytest.approx([r["train_loss"] for r in h1], rel=2e-2)
    # the export of one run: 2 processes (users split, gathered on rank 0) == 1 process
    assert main(["export", str(one), "--k", "10", "--output", str(tmp_path / "e1.csv")]) == 0
    _run(["export", str(one), "--k", "10", "--output", str(tmp_path / "e2.csv"), "--nproc", "2"])
    e1, e2 = pd.read_csv(tmp_path / "e1.csv"), pd.read_csv(tmp_path / "e2.csv")
    assert len(e1) == 160 * 10
    pd.testing.assert_frame_equal(e1, e2)
    assert np.array_equal(e1["user_id"].unique(), np.arange(160))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not __import__("shutil").which("pgrep"),
                    reason="PR_SET_PDEATHSIG is Linux's; the check lists processes with pgrep")
def test_killing_the_launcher_stops_its_workers(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "mmgraph", "train", "--method", "mf", "--data",
                                 "synthetic:users=200,items=150", "--epochs", "100000", "--no-progress", "--out",
                                 str(out), "--nproc", "2", "--set", "threads=1", "patience=100000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(tmp_path)})   # a killed launcher leaves its logs
    try:
        deadline = time.time() + 120
        while not (out / "history.json").exists() and time.time() < deadline:   # the workers are training
            time.sleep(0.5)
        assert (out / "history.json").exists()
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 30
        while time.time() < deadline:
            left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
            if not left:
                break
            time.sleep(0.5)
        assert not left, "workers outlived their launcher"
    finally:
        subprocess.run(["pkill", "-9", "-f", str(out)], capture_output=True)
