"""Issue 17: approximate kNN (FAISS IVF / HNSW) with measured recall against exact, its memory, FREEDOM on
it, and the Electronics-sized synthetic generator (at a small scale factor)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mmgraph.data.synthetic_scale import ELECTRONICS, make_electronics
from mmgraph.errors import ConfigError
from mmgraph.graph import knn_graph
from mmgraph.graph.knn import knn_recall
from mmgraph.graph.relations import Relation, build_graph
from mmgraph.models.freedom import FREEDOM
from mmgraph.train.config import load_config
from mmgraph.train.run import load_dataset, parse_synthetic


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 48))
    x = centres[rng.integers(0, 40, 4000)] + 0.6 * rng.normal(size=(4000, 48))
    return x.astype(np.float32)


def _brute_force_topk(x, k):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("backend", ["faiss_ivf", "faiss_hnsw"])
def test_approximate_knn_recall_against_exact(clustered, backend):
    exact = knn_graph(clustered, 10, backend="faiss")
    approx = knn_graph(clustered, 10, backend=backend)
    assert approx.indices.shape == exact.indices.shape == (4000, 10)
    recall = knn_recall(approx, exact)
    assert recall >= 0.9, recall
    assert (approx.indices >= 0).all()
    # rows are ordered by decreasing similarity, and similarities are true cosines
    assert (np.diff(approx.similarities, axis=1) <= 1e-6).all()


def test_knn_recall_is_a_fraction_of_the_exact_lists(clustered):
    x = clustered[:300]
    exact = knn_graph(x, 5, backend="torch")
    assert knn_recall(exact, exact) == 1.0
    ref = _brute_force_topk(x, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact.indices, ref)]) > 0.99
    shifted = type(exact)(np.roll(exact.indices, 1, axis=0), exact.similarities)
    assert knn_recall(shifted, exact) < 0.2


def test_approximate_knn_memory_is_linear():
    n = 6000
    x = np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        knn_graph(x, 10, backend="faiss_ivf", batch_size=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (n * n * 4) / 10, peak


def test_freedom_uses_the_approximate_backend():
    ds = make_electronics(0.003, seed=2, modalities={"image": 32, "text": 16})
    cfg = load_config("freedom", overrides={"knn_backend": "faiss_hnsw"})
    rels = FREEDOM.relations(cfg, ds.modalities)
    assert rels[0].params["backend"] == "faiss_hnsw"
    assert "backend" not in FREEDOM.relations(load_config("freedom"), ds.modalities)[0].params
    data = build_graph(ds, rels)
    exact = build_graph(ds, [Relation("knn_mm", "freedom", {**rels[0].params, "backend": "faiss"})])
    a, b = data["item", "knn_mm", "item"].edge_index, exact["item", "knn_mm", "item"].edge_index
    same = len(set(map(tuple, a.t().tolist())) & set(map(tuple, b.t().tolist()))) / b.shape[1]
    assert same > 0.9


def test_electronics_generator_at_small_scale():
    scale = 0.01
    ds = make_electronics(scale, seed=0)
    assert ds.n_users == round(ELECTRONICS["n_users"] * scale) and ds.n_items == round(ELECTRONICS["n_items"] * scale)
    n = len(ds.train) + len(ds.valid) + len(ds.test)
    assert abs(n / (ELECTRONICS["n_interactions"] * scale) - 1) < 0.1
    assert ds.features["image"].shape == (ds.n_items, 4096) and ds.features["text"].shape == (ds.n_items, 384)
    assert ds.features["image"].dtype == np.float32
    counts = np.bincount(np.concatenate([ds.train, ds.valid, ds.test])[:, 0], minlength=ds.n_users)
    assert counts.min() >= 5
    pairs = np.concatenate([ds.train, ds.valid, ds.test])
    assert len(np.unique(pairs, axis=0)) == len(pairs)  # no repeated interaction


def test_electronics_preset_on_the_command_line():
    assert parse_synthetic("synthetic:preset=electronics,scale=0.002,seed=3") == \
        {"preset": "electronics", "scale": 0.002, "seed": 3}
    ds = load_dataset("synthetic:preset=electronics,scale=0.002")
    assert ds.n_users == round(ELECTRONICS["n_users"] * 0.002)
    for bad, msg in (("synthetic:preset=books", "unknown preset"),
                     ("synthetic:preset=electronics,users=5", "takes only"),
                     ("synthetic:scale=0.5", "needs a preset"),
                     ("synthetic:preset=electronics,scale=0", "scale must be > 0")):
        with pytest.raises(ConfigError, match=msg):
            parse_synthetic(bad)
