"""Subnormal floats flushed to zero while training (mmgraph.utils.denormals)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from mmgraph.utils.denormals import flush_denormal_enabled, flushing_denormals

with contextlib.suppress(ImportError):
    import faiss  # noqa: F401  (its wheel maps a second libgomp: the flag must reach torch's threads, not faiss's)

SUBNORMAL = 1e-39   # below float32's smallest normal number (1.18e-38)


_VALUES = torch.full((1 << 22,), SUBNORMAL)   # made once, outside any flushing (which would zero it)


def _parallel_sum_of_subnormals() -> float:
    # large enough that torch splits the product and the sum over its OpenMP threads
    return float((_VALUES * 1.0).sum())


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    _parallel_sum_of_subnormals()          # the OpenMP team exists before the flag is set
    yield
    torch.set_num_threads(before)


def test_flushing_reaches_every_thread_and_is_restored(two_threads):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    assert not flush_denormal_enabled() and _parallel_sum_of_subnormals() > 0
    with flushing_denormals():
        assert flush_denormal_enabled()
        assert _parallel_sum_of_subnormals() == 0.0       # the worker threads' products flushed too
    assert not flush_denormal_enabled() and _parallel_sum_of_subnormals() > 0
    with flushing_denormals(False):
        assert not flush_denormal_enabled()
    # a caller that flushes already keeps it
    torch.set_flush_denormal(True)
    try:
        with flushing_denormals():
            pass
        assert flush_denormal_enabled()
    finally:
        torch.set_flush_denormal(False)


def test_training_flushes_unless_switched_off(monkeypatch):
    from mmgraph.train import train
    from mmgraph.train import trainer as trainer_module

    seen = []
    original = trainer_module.Trainer._fit

    def spy(self, resume):
        seen.append(flush_denormal_enabled())
        return original(self, resume)

    monkeypatch.setattr(trainer_module.Trainer, "_fit", spy)
    torch.set_flush_denormal(False)
    for flag in (True, False):
        train("mf", "synthetic:users=60,items=50", {"epochs": 1, "flush_denormals": flag}, progress=False)
    assert seen == [True, False] and not flush_denormal_enabled()
