"""The content-addressed graph cache: hits are identical, any change of input or parameter misses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgraph.graph import ItemGraph, KNNResult, cache_key, cached, default_cache_dir, load_object, save_object
from mmgraph.graph.cache import cache_path


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        return self.fn()


def make_graph(x: np.ndarray) -> ItemGraph:
    n = x.shape[0]
    rows = np.repeat(np.arange(n), 2)
    cols = (rows + np.tile([1, 2], n)) % n
    return ItemGraph.from_edges(rows, cols, np.abs(x[:, :2]).ravel(), num_nodes=n)


@pytest.fixture()
def feats():
    return np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)


def test_hit_returns_identical_tensors(tmp_path, feats):
    build = Counter(lambda: make_graph(feats))
    a = cached("toy", {"k": 2}, {"x": feats}, build, tmp_path)
    b = cached("toy", {"k": 2}, {"x": feats}, build, tmp_path)
    assert build.calls == 1
    assert a.equal(b) and b.edge_index.dtype == torch.long and b.edge_weight.dtype == torch.float32
    assert len(list(tmp_path.glob("toy-*.pt"))) == 1


def test_any_change_misses(tmp_path, feats):
    build = Counter(lambda: make_graph(feats))
    cached("toy", {"k": 2, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"x": feats}, build, tmp_path)
    # same params in another order: hit
    cached("toy", {"w": {"text": 0.9, "image": 0.1}, "norm": "sym", "k": 2}, {"x": feats}, build, tmp_path)
    assert build.calls == 1
    changed = feats.copy()
    changed[3, 4] = np.nextafter(changed[3, 4], np.inf, dtype=np.float32)  # one ulp
    variants = [
        ("toy", {"k": 3, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"x": feats}),
        ("toy", {"k": 2, "norm": "rw", "w": {"image": 0.1, "text": 0.9}}, {"x": feats}),
        ("toy", {"k": 2, "norm": "sym", "w": {"image": 0.2, "text": 0.8}}, {"x": feats}),
        ("toy", {"k": 2, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"x": changed}),
        ("toy", {"k": 2, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"x": feats.astype(np.float64)}),
        ("toy", {"k": 2, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"x": feats.reshape(40, 3)}),
        ("toy", {"k": 2, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"y": feats}),
        ("other", {"k": 2, "norm": "sym", "w": {"image": 0.1, "text": 0.9}}, {"x": feats}),
    ]
    keys = {cache_key(*v) for v in variants}
    assert len(keys) == len(variants)
    for builder, params, arrays in variants:
        cached(builder, params, arrays, build, tmp_path)
    assert build.calls == 1 + len(variants)


def test_non_contiguous_and_tensor_inputs_hash_by_content(feats):
    f = np.asfortranarray(feats)
    assert cache_key("b", {}, {"x": f}) == cache_key("b", {}, {"x": feats})
    assert cache_key("b", {}, {"x": torch.from_numpy(feats)}) == cache_key("b", {}, {"x": feats})
    assert cache_key("b", {}, [feats[:, ::2]]) == cache_key("b", {}, [np.ascontiguousarray(feats[:, ::2])])


def test_disabled_and_default_dir(tmp_path, monkeypatch, feats):
    build = Counter(lambda: make_graph(feats))
    cached("toy", {}, {"x": feats}, build, False)
    cached("toy", {}, {"x": feats}, build, False)
    assert build.calls == 2
    monkeypatch.setenv("MMGRAPH_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    cached("toy", {}, {"x": feats}, build, None)
    assert len(list((tmp_path / "envcache").glob("toy-*.pt"))) == 1
    monkeypatch.delenv("MMGRAPH_CACHE")
    assert str(default_cache_dir()).endswith("mmgraph/graphs")


def test_corrupt_entry_is_rebuilt(tmp_path, feats):
    build = Counter(lambda: make_graph(feats))
    path = cache_path("toy", cache_key("toy", {}, {"x": feats}), tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a torch file")
    g = cached("toy", {}, {"x": feats}, build, tmp_path)
    assert build.calls == 1 and g.equal(make_graph(feats))
    assert load_object(path).equal(g)  # overwritten with a valid entry


def test_an_altered_entry_is_rebuilt_and_an_undigested_one_read(tmp_path, feats, caplog):
    build = Counter(lambda: make_graph(feats))
    g = cached("toy", {}, {"x": feats}, build, tmp_path)
    path = cache_path("toy", cache_key("toy", {}, {"x": feats}), tmp_path)
    blob = torch.load(path, weights_only=True)
    values = [v for v in blob["object"].values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    values[0][0] += 1.0                       # same size, same structure, one weight changed
    torch.save(blob, path)
    with pytest.raises(ValueError, match="does not match its digest"):
        load_object(path)
    assert cached("toy", {}, {"x": feats}, build, tmp_path).equal(g) and build.calls == 2
    assert "rebuilding" in caplog.text and load_object(path).equal(g)
    del blob["digest"]                         # an entry written before digests were stored
    torch.save(blob, path)
    assert not load_object(path).equal(g)      # read as it is (its weight is the altered one)


def test_roundtrip_of_nested_objects(tmp_path, feats):
    g = make_graph(feats)
    obj = {"graphs": {"a": g, "b": g.scale(2.0)}, "knn": KNNResult(np.arange(6).reshape(3, 2),
                                                                     np.ones((3, 2), np.float32)),
           "meta": ("x", 1, 2.5, None, [True]), "arr": np.arange(4.0)}
    save_object(obj, tmp_path / "o.pt")
    # weights_only load works on the raw file (no pickled classes inside)
    torch.load(tmp_path / "o.pt", weights_only=True)
    back = load_object(tmp_path / "o.pt")
    assert back["graphs"]["a"].equal(g) and back["graphs"]["b"].equal(g.scale(2.0))
    assert isinstance(back["knn"], KNNResult)
    np.testing.assert_array_equal(back["knn"].indices, obj["knn"].indices)
    assert back["meta"] == ("x", 1, 2.5, None, [True])
    np.testing.assert_array_equal(back["arr"], obj["arr"])
