"""kNN search and the ItemGraph container, against dense brute-force references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgraph.errors import ConfigError, DataError
from mmgraph.graph import ItemGraph, KNNResult, combine_graphs, knn_graph, knn_item_graph, normalize_graph


def dense_knn(x: np.ndarray, k: int, policy: str):
    """Reference: float64 cosine, stable argsort (ties -> lower id), zero rows never neighbours."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    xn = x / np.where(norms > 0, norms, 1.0)[:, None]
    sim = xn @ xn.T
    sim[:, norms == 0] = -np.inf
    if policy == "exclude":
        np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(sim, idx, 1)
    idx = np.where(np.isfinite(val), idx, -1)
    if idx.shape[1] < k:  # fewer items than k: pad like knn_graph
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        val = np.pad(val, ((0, 0), (0, pad)), constant_values=-np.inf)
    zero = np.flatnonzero(norms == 0)
    idx[zero] = -1
    val[zero] = -np.inf
    if policy == "include":
        idx[zero, 0] = zero
        val[zero, 0] = 1.0
    return idx, val


@pytest.fixture(scope="module")
def feats():
    return np.random.default_rng(0).normal(size=(300, 24)).astype(np.float32)


@pytest.mark.parametrize("policy", ["include", "exclude"])
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_knn_matches_bruteforce(feats, policy, backend):
    ref_idx, ref_val = dense_knn(feats, 7, policy)
    res = knn_graph(feats, 7, self_loops=policy, batch_size=37, backend=backend)
    assert isinstance(res, KNNResult)
    assert res.indices.shape == (300, 7) and res.indices.dtype == np.int64
    assert res.similarities.dtype == np.float32
    np.testing.assert_array_equal(res.indices, ref_idx)
    np.testing.assert_allclose(res.similarities, ref_val, atol=1e-5)
    if policy == "include":  # FREEDOM: the item itself ranks first
        np.testing.assert_array_equal(res.indices[:, 0], np.arange(300))
    else:
        assert not (res.indices == np.arange(300)[:, None]).any()


def test_self_loop_aliases_and_errors(feats):
    a = knn_graph(feats, 3, self_loops=True)
    b = knn_graph(feats, 3, self_loops="include")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(knn_graph(feats, 3, False).indices, knn_graph(feats, 3, "exclude").indices)
    with pytest.raises(ConfigError):
        knn_graph(feats, 3, self_loops="maybe")
    with pytest.raises(ConfigError):
        knn_graph(feats, 0)
    with pytest.raises(ConfigError):
        knn_graph(feats, 3, backend="annoy")
    with pytest.raises(DataError):
        knn_graph(feats[0], 3)


@pytest.mark.parametrize("policy", ["include", "exclude"])
def test_zero_rows_and_padding(policy):
    x = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    x[[2, 7]] = 0.0
    res = knn_graph(x, 15, self_loops=policy)  # k > n: rows padded with -1 / -inf
    ref_idx, ref_val = dense_knn(x, 15, policy)
    np.testing.assert_array_equal(res.indices, ref_idx)
    np.testing.assert_allclose(np.where(res.mask, res.similarities, 0), np.where(ref_idx >= 0, ref_val, 0),
                               atol=1e-6)
    assert np.isneginf(res.similarities[~res.mask]).all()
    assert not np.isin([2, 7], res.indices[[i for i in range(12) if i not in (2, 7)]]).any()
    expected = [2] if policy == "include" else []
    assert res.indices[2][res.mask[2]].tolist() == expected
    assert (res.mask[0].sum()) == (10 if policy == "include" else 9)


def test_use_gpu_request_falls_back_with_same_result(feats):
    a = knn_graph(feats, 5, use_gpu=True)  # CPU-only machines warn and use CPU
    b = knn_graph(feats, 5, use_gpu=False)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-5)


# ---------------------------------------------------------------------------- ItemGraph
def test_item_graph_from_topk_and_views():
    idx = np.array([[1, 2, -1], [0, 2, 2], [2, -1, -1]])
    w = np.array([[0.5, 0.25, 9.0], [1.0, 1.0, 2.0], [3.0, 9.0, 9.0]], dtype=np.float32)
    g = ItemGraph.from_topk(idx, w)
    assert g.num_nodes == 3 and g.num_edges == 5  # padding dropped, duplicate (1, 2) merged
    assert g.edge_index.dtype == torch.long and g.edge_weight.dtype == torch.float32
    dense = torch.tensor([[0, 0.5, 0.25], [1.0, 0, 3.0], [0, 0, 3.0]])
    torch.testing.assert_close(g.to_dense(), dense)
    torch.testing.assert_close(g.row_sums(), dense.sum(1))
    assert g.row_counts().tolist() == [2, 2, 1]
    # rows sorted, then cols
    keys = (g.row * 3 + g.col).tolist()
    assert keys == sorted(keys)
    x = torch.randn(3, 4)
    torch.testing.assert_close(g.to_sparse_csr() @ x, dense @ x)
    torch.testing.assert_close(g.propagate(x), dense @ x)
    torch.testing.assert_close(g.to_sparse_adj().matmul(x), dense @ x)
    torch.testing.assert_close(g.to_sparse_coo().to_dense(), dense)
    ei, ew = g.to_pyg()
    assert torch.equal(ei[1], g.row) and torch.equal(ei[0], g.col)
    assert ItemGraph.from_pyg(ei, ew, 3).equal(g)
    cols, ws = g.neighbours(1)
    assert cols.tolist() == [0, 2] and ws.tolist() == [1.0, 3.0]


def test_item_graph_validation():
    with pytest.raises(DataError):
        ItemGraph(torch.tensor([[0, 5]]).T, torch.ones(1), 3)
    with pytest.raises(DataError):
        ItemGraph(torch.tensor([[0], [1]]), torch.ones(2), 3)


def test_normalisations_and_combine():
    rng = np.random.default_rng(2)
    dense = (rng.random((6, 6)) < 0.5) * rng.random((6, 6))
    dense[4] = 0  # an isolated row
    r, c = np.nonzero(dense)
    g = ItemGraph.from_edges(r, c, dense[r, c], num_nodes=6)
    deg = dense.sum(1)
    inv = np.where(deg > 0, np.maximum(deg, 1e-30) ** -0.5, 0)
    np.testing.assert_allclose(normalize_graph(g, "sym").to_dense().numpy(), inv[:, None] * dense * inv[None, :],
                               rtol=1e-5)
    rw = normalize_graph(g, "rw")
    np.testing.assert_allclose(rw.to_dense().numpy(), dense / np.where(deg > 0, deg, 1)[:, None], rtol=1e-5)
    cnt = (dense > 0).sum(1)
    np.testing.assert_allclose(normalize_graph(g, "uniform").to_dense().numpy(),
                               (dense > 0) / np.where(cnt > 0, cnt, 1)[:, None], rtol=1e-6)
    assert normalize_graph(g, "none") is g
    with pytest.raises(ConfigError):
        normalize_graph(g, "l2")
    both = combine_graphs({"a": g, "b": rw}, {"a": 0.25, "b": 0.75})
    np.testing.assert_allclose(both.to_dense().numpy(), 0.25 * g.to_dense().numpy() + 0.75 * rw.to_dense().numpy(),
                               rtol=1e-5)
    assert both.num_edges == g.num_edges
    sym = g.symmetrize()
    d = sym.to_dense().numpy()
    np.testing.assert_allclose(d, np.maximum(dense, dense.T), rtol=1e-6)


def test_knn_item_graph_weights(feats):
    res = knn_graph(feats, 4, "exclude")
    g = knn_item_graph(feats, 4, "exclude", weight="similarity")
    rows = np.repeat(np.arange(300), 4)
    dense = np.zeros((300, 300), dtype=np.float32)
    dense[rows, res.indices.ravel()] = res.similarities.ravel()
    np.testing.assert_allclose(g.to_dense().numpy(), dense)
    b = knn_item_graph(feats, 4, "exclude", weight="binary", norm="rw")
    np.testing.assert_allclose(b.row_sums().numpy(), 1.0, rtol=1e-6)


@pytest.fixture
def no_faiss(monkeypatch):
    """``import faiss`` fails, as on an install without faiss-cpu."""
    import sys

    from mmgraph.utils import faiss_utils
    monkeypatch.setitem(sys.modules, "faiss", None)
    for cached in (faiss_utils.faiss_available, faiss_utils.faiss_gpu_count):
        cached.cache_clear()
    yield
    for cached in (faiss_utils.faiss_available, faiss_utils.faiss_gpu_count):
        cached.cache_clear()


def test_without_faiss_exact_searches_fall_back_to_torch(feats, no_faiss):
    from mmgraph.evaluation.evaluator import resolve_retrieval
    from mmgraph.utils.faiss_utils import faiss_gpu_count, search_ip

    ref = dense_knn(feats, 5, "include")[0]
    np.testing.assert_array_equal(knn_graph(feats, 5).indices, ref)          # default backend 'faiss'
    x = feats.astype(np.float32)
    ids = search_ip(x, x[:7], 4)[1]
    np.testing.assert_array_equal(ids, np.argsort(-(x[:7].astype(np.float64) @ x.T.astype(np.float64)),
                                                  axis=1, kind="stable")[:, :4])
    assert faiss_gpu_count() == 0 and resolve_retrieval("auto") == "exact"
    with pytest.raises(ConfigError, match="needs FAISS.*pip install faiss-cpu"):
        knn_graph(feats, 5, backend="faiss_hnsw")
    with pytest.raises(ConfigError, match="retrieval 'faiss' needs FAISS"):
        resolve_retrieval("faiss")


def test_knn_graph_takes_a_tensor_that_requires_grad():
    x = torch.randn(30, 6, requires_grad=True)
    got = knn_graph(x, k=4)
    ref = knn_graph(x.detach().numpy(), k=4)
    np.testing.assert_array_equal(got.indices, ref.indices)
