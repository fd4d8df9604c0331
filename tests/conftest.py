"""Shared fixtures: the read-only real data beside the repository, and small raw files for the data tests."""
from __future__ import annotations

from pathlib import Path

import mmgraph  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads)

import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# ------------------------------------------------------------------------------ synthetic datasets
def _synth():
    from mmgraph.data import make_synthetic
    return make_synthetic(n_users=400, n_items=300, seed=7)


@pytest.fixture(scope="module")
def synth():
    """The planted-signal synthetic dataset the "learns" tests train on (400 users, 300 items, image + text)."""
    return _synth()


@pytest.fixture(scope="module")
def tiny():
    """30 users x 25 items with 6-d image and 5-d text features: small enough for dense brute-force references."""
    from mmgraph.data import make_synthetic
    return make_synthetic(n_users=30, n_items=25, modalities={"image": 6, "text": 5}, seed=3)


@pytest.fixture(scope="session")
def mf_recall() -> float:
    """Test Recall@20 of MF on :func:`synth` with the "learns" tests' settings (trained once per session)."""
    from mmgraph.train import load_config, train
    from tests.helpers import BASELINE_TRAIN
    cfg = load_config("mf", overrides=BASELINE_TRAIN)
    return train("mf", _synth(), cfg, progress=False)[0]["test"]["recall@20"]


def make_raw_ratings(n_users: int = 12, n_items: int = 20, per_user: int = 7, seed: int = 0) -> pd.DataFrame:
    """Raw interactions with string user ids ``u0..``, integer-like item ids ``100..``, ratings 1 for the
    ``per_user`` positives plus one rating-0 row and one duplicate per user, and increasing timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=per_user + 1, replace=False)
        for it in chosen[:per_user]:
            rows.append((f"u{u}", str(100 + it), 1))
        rows.append((f"u{u}", str(100 + chosen[-1]), 0))  # negative
        rows.append((f"u{u}", str(100 + chosen[0]), 1))  # duplicate positive
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    df["ts"] = np.arange(len(df)) * 10
    return df


@pytest.fixture()
def raw_files(tmp_path: Path) -> dict:
    """A small raw dataset on disk: ``ratings.csv``, ``items.tsv`` (titles) and the frame itself."""
    df = make_raw_ratings()
    ratings = tmp_path / "ratings.csv"
    df.to_csv(ratings, index=False)
    items = sorted(set(df["item_id"]), key=int)
    titles = pd.DataFrame({"item_id": items, "title": [f"book number {i}" for i in items]})
    titles.loc[0, "title"] = ""  # one item without a title
    items_path = tmp_path / "items.tsv"
    titles.to_csv(items_path, sep="\t", index=False)
    return {"ratings": ratings, "items": items_path, "frame": df, "dir": tmp_path}


class FakeTextModel:
    """Stands in for a SentenceTransformer: ``encode`` maps each text to a deterministic 8-d vector
    whose first entry is the text length, so tests can check which text landed in which row."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        self.calls += 1
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for r, t in enumerate(texts):
            out[r, 0] = len(t)
            out[r, 1] = sum(map(ord, t)) % 97
        return out


@pytest.fixture()
def fake_text_model() -> FakeTextModel:
    return FakeTextModel()
