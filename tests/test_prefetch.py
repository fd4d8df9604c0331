"""Batches prepared ahead by a background thread (``prefetch_batches``): the same batches, errors where they
happen, nothing left running, and the same training run."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError, DataError
from mmgraph.train import prefetch as prefetch_module
from mmgraph.train.config import load_config
from mmgraph.train.prefetch import AUTO_DEPTH, prefetch, resolve_prefetch
from mmgraph.train.run import train


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "mmgraph-prefetch"]


class Source:
    """A generator of ``n`` distinct objects that records how many it produced and whether it was closed."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at
        self.produced, self.closed = 0, False

    def __iter__(self):
        try:
            for k in range(self.n):
                if k == self.fail_at:
                    raise DataError(f"bad row {k}")
                self.produced += 1
                yield {"k": k}
        finally:
            self.closed = True


@pytest.mark.parametrize("depth", [0, 1, 3, 100])
def test_prefetch_yields_the_same_items_in_order(depth):
    plain = list(Source(25))
    got = list(prefetch(Source(25), depth))
    assert got == plain
    assert not _prefetch_threads()


def test_prefetch_runs_ahead_of_the_consumer():
    src = Source(10)
    it = prefetch(src, 2)
    assert next(it) == {"k": 0}
    deadline = time.monotonic() + 5
    while src.produced < 3 and time.monotonic() < deadline:   # item 0 taken, 1 and 2 ready, 3 waiting to go in
        time.sleep(0.005)
    assert src.produced >= 3
    time.sleep(0.05)
    assert src.produced <= 4                                   # bounded: depth 2 ready + one in hand
    assert list(it) == [{"k": k} for k in range(1, 10)]


def test_prefetch_reraises_the_producers_error_in_place():
    got = []
    with pytest.raises(DataError, match="bad row 4"):
        for item in prefetch(Source(10, fail_at=4), 2):
            got.append(item["k"])
    assert got == [0, 1, 2, 3]
    assert not _prefetch_threads()


def test_closing_early_stops_the_producer_and_closes_the_source():
    src = Source(1000)
    for item in prefetch(src, 2):
        if item["k"] == 2:
            break
    assert src.closed
    assert src.produced < 10
    assert not _prefetch_threads()


def test_consumer_error_stops_the_producer():
    src = Source(1000)
    with pytest.raises(RuntimeError, match="step failed"):
        for item in prefetch(src, 3):
            if item["k"] == 1:
                raise RuntimeError("step failed")
    assert src.closed and not _prefetch_threads()


def test_resolve_prefetch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_prefetch("auto", cuda, sampled=False) == 0        # a full-graph sampler draws the epoch at once
    assert resolve_prefetch("auto", cuda, sampled=True) == AUTO_DEPTH
    monkeypatch.setattr(prefetch_module, "free_cores", lambda *a, **k: 0)
    assert resolve_prefetch("auto", cpu, sampled=True) == 0          # torch's threads use every core
    monkeypatch.setattr(prefetch_module, "free_cores", lambda *a, **k: 1)
    assert resolve_prefetch("auto", cpu, sampled=True) == AUTO_DEPTH
    assert resolve_prefetch(None, cpu, sampled=True) == AUTO_DEPTH
    assert resolve_prefetch(0, cpu, sampled=True) == 0
    assert resolve_prefetch(5, cpu, sampled=False) == 5
    for bad in (-1, 1.5, True, "yes"):
        with pytest.raises(ConfigError, match="prefetch_batches"):
            resolve_prefetch(bad, cpu, sampled=True)


def test_free_cores_counts_the_local_processes(monkeypatch):
    monkeypatch.setattr(prefetch_module.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert prefetch_module.free_cores(threads=2, local_processes=1) == 6
    assert prefetch_module.free_cores(threads=2, local_processes=4) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert prefetch_module.free_cores(threads=2) == 2


def test_setting_is_checked_by_the_config():
    with pytest.raises(ConfigError, match="prefetch_batches"):
        load_config("lightgcn", overrides={"prefetch_batches": -1})
    assert load_config("lightgcn")["prefetch_batches"] == "auto"


@pytest.mark.parametrize("method", ["lightgcn", "freedom"])
def test_sampled_training_is_the_same_with_prefetch(method):
    ds = make_synthetic(200, 150, seed=3)
    runs = {}
    for depth in (0, 3):
        cfg = load_config(method, overrides={"graph_batching": "sampled", "num_neighbors": [5, 5], "epochs": 3,
                                             "batch_size": 128, "threads": 1, "log_geometry": False,
                                             "graph_cache": False, "prefetch_batches": depth})
        result, trainer = train(method, ds, cfg, progress=False)
        assert trainer.prefetch_depth == depth
        # prefetching, the sampler also builds each subgraph's CSR pair (the step's, built in the thread)
        assert trainer.sampler.prepare_adjacency is bool(depth)
        runs[depth] = (result, trainer)
    (r0, t0), (r3, t3) = runs[0], runs[3]
    assert [h["train_loss"] for h in t0.history] == [h["train_loss"] for h in t3.history]
    assert [h["valid_recall@20"] for h in t0.history] == [h["valid_recall@20"] for h in t3.history]
    assert r0["test"] == r3["test"]
    s0, s3 = t0.sampler.state_dict(), t3.sampler.state_dict()
    assert s0["rng"] == s3["rng"] and torch.equal(s0["torch"], s3["torch"])
    for a, b in zip(t0.model.state_dict().values(), t3.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not _prefetch_threads()


def test_resumed_sampled_run_with_prefetch_equals_the_uninterrupted_one(tmp_path):
    ds = make_synthetic(200, 150, seed=5)

    def cfg(epochs):
        return load_config("lightgcn", overrides={"graph_batching": "sampled", "num_neighbors": [5, 5],
                                                  "epochs": epochs, "batch_size": 128, "threads": 1,
                                                  "log_geometry": False, "graph_cache": False,
                                                  "prefetch_batches": 2})
    full, _ = train("lightgcn", ds, cfg(4), progress=False)
    train("lightgcn", ds, cfg(2), out_dir=tmp_path / "run", progress=False)
    resumed, trainer = train("lightgcn", ds, cfg(4), out_dir=tmp_path / "run", resume=True, progress=False)
    assert trainer.prefetch_depth == 2
    assert resumed["test"] == full["test"]


def test_a_failing_step_stops_the_prefetching_thread(monkeypatch):
    from mmgraph.errors import TrainingError
    from mmgraph.train.trainer import Trainer

    ds = make_synthetic(200, 150, seed=6)
    cfg = load_config("lightgcn", overrides={"graph_batching": "sampled", "num_neighbors": [5, 5], "epochs": 2,
                                             "batch_size": 32, "threads": 1, "log_geometry": False,
                                             "graph_cache": False, "prefetch_batches": 2})
    calls = []

    def failing_step(self, batch, scale=1.0):
        calls.append(1)
        if len(calls) == 3:
            raise TrainingError("loss became nan")
        return {"loss": 0.0}

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(TrainingError, match="nan") as info:
        train("lightgcn", ds, cfg, progress=False)
    assert info.traceback is not None           # the frames stay referenced, the thread must not
    assert not _prefetch_threads()
