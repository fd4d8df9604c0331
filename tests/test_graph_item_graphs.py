"""FREEDOM / AnchorRec / BR-MRS item graphs against dense constructions (the MMRec formulas)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgraph.data import RecDataset, make_synthetic
from mmgraph.errors import ConfigError, DataError
from mmgraph.graph import (anchor_features, anchorrec_graph, anchorrec_graphs, brmrs_item_graph,
                           build_item_graphs, freedom_graph, freedom_weights)

N = 120


def dense_cos(x):
    x = x.astype(np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return xn @ xn.T


def dense_topk_adj(sim, k, values=False):
    """MMRec ``torch.topk(sim, k)`` over all items (self included) scattered into a dense matrix."""
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    adj = np.zeros_like(sim)
    np.put_along_axis(adj, idx, np.take_along_axis(sim, idx, 1) if values else 1.0, 1)
    return adj


def mmrec_sym(adj):
    """MMRec compute_normalized_laplacian / get_sparse_laplacian('sym'): row sums on both sides."""
    d = adj.sum(1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return inv[:, None] * adj * inv[None, :]


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return {"image": rng.normal(size=(N, 16)).astype(np.float32),
            "text": rng.normal(size=(N, 8)).astype(np.float32)}


def test_freedom_matches_dense_reference(feats):
    k = 6
    g = freedom_graph(feats, k, image_weight=0.1)
    ref = sum(w * dense_topk_adj(dense_cos(feats[m]), k) / k for m, w in (("image", 0.1), ("text", 0.9)))
    np.testing.assert_allclose(g.to_dense().numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(g.row_sums().numpy(), 1.0, rtol=1e-6)
    # self loops included: every diagonal entry is 1/k from each modality
    np.testing.assert_allclose(np.diag(g.to_dense().numpy()), 1.0 / k, rtol=1e-6)
    # merged duplicates: no repeated (row, col)
    key = g.row * N + g.col
    assert torch.unique(key).numel() == g.num_edges


def test_freedom_sym_is_mmrec_formula_and_equals_uniform(feats):
    k = 5
    sym = freedom_graph(feats, k, weights={"image": 0.3, "text": 0.7}, norm="sym")
    ref = sum(w * mmrec_sym(dense_topk_adj(dense_cos(feats[m]), k)) for m, w in (("image", 0.3), ("text", 0.7)))
    np.testing.assert_allclose(sym.to_dense().numpy(), ref, atol=1e-6)
    uni = freedom_graph(feats, k, weights={"image": 0.3, "text": 0.7}, norm="uniform")
    np.testing.assert_allclose(sym.to_dense().numpy(), uni.to_dense().numpy(), atol=1e-7)


def test_freedom_weights_resolution():
    assert freedom_weights(["image", "text"]) == {"image": 0.5, "text": 0.5}
    w = freedom_weights(["image", "text", "audio"], image_weight=0.1)
    assert w["image"] == 0.1 and w["text"] == pytest.approx(0.45) and w["audio"] == pytest.approx(0.45)
    w = freedom_weights(["image", "text"], weights={"image": 1.0, "text": 3.0})  # normalised to sum 1
    assert w == {"image": 0.25, "text": 0.75}
    assert freedom_weights(["image"], image_weight=0.1) == {"image": 1.0}
    for bad in ({"image": 0.5}, {"image": 0.5, "text": 0.5, "audio": 0.0}, {"image": -1.0, "text": 2.0}):
        with pytest.raises(ConfigError):
            freedom_weights(["image", "text"], weights=bad)
    with pytest.raises(ConfigError):
        freedom_weights(["text", "audio"], image_weight=0.1)


def test_freedom_single_modality_and_zero_weight(feats):
    only = freedom_graph({"text": feats["text"]}, 4)
    skip = freedom_graph(feats, 4, weights={"image": 0.0, "text": 1.0})
    assert only.equal(skip)
    with pytest.raises(DataError):
        freedom_graph(feats, 4, modalities=["audio"])


@pytest.mark.parametrize("symmetrize", [False, True])
def test_anchorrec_matches_dense_reference(feats, symmetrize):
    k = 7
    g = anchorrec_graph(feats["image"], k, symmetrize=symmetrize)
    adj = dense_topk_adj(dense_cos(feats["image"]), k, values=True)
    if symmetrize:
        adj = np.maximum(adj, adj.T)
    ref = mmrec_sym(adj)
    np.testing.assert_allclose(g.to_dense().numpy(), ref, atol=1e-6)
    if symmetrize:
        d = g.to_dense().numpy()
        np.testing.assert_allclose(d, d.T, atol=1e-7)


def test_anchorrec_graphs_anchor_concat(feats):
    gs = anchorrec_graphs(feats, 5)
    assert set(gs) == {"image", "text", "mm"}
    anchor = anchor_features(feats)
    assert anchor.shape == (N, 24)
    np.testing.assert_allclose(np.linalg.norm(anchor, axis=1), np.sqrt(2), rtol=1e-5)
    assert gs["mm"].equal(anchorrec_graph(anchor, 5))
    with_mm = dict(feats, mm=np.random.default_rng(1).normal(size=(N, 4)).astype(np.float32))
    gs2 = anchorrec_graphs(with_mm, 5)
    assert set(gs2) == {"image", "text", "mm"}
    assert gs2["mm"].equal(anchorrec_graph(with_mm["mm"], 5))


def test_brmrs_with_all_candidates_matches_dense():
    ds = make_synthetic(60, 40, modalities={"image": 12, "text": 6}, seed=3)
    k, alpha = 5, 0.4
    g = brmrs_item_graph(ds, None, k=k, alpha=alpha, n_candidates=39)
    r = np.zeros((ds.n_users, ds.n_items))
    r[ds.train[:, 0], ds.train[:, 1]] = 1
    inter = r.T @ r
    deg = r.sum(0)
    union = deg[:, None] + deg[None, :] - inter
    jac = np.where(union > 0, inter / np.maximum(union, 1), 0)
    score = alpha * jac + (1 - alpha) * 0.5 * (dense_cos(ds.features["image"]) + dense_cos(ds.features["text"]))
    np.fill_diagonal(score, -np.inf)
    idx = np.argsort(-score, axis=1, kind="stable")[:, :k]
    ref = np.zeros_like(score)
    np.put_along_axis(ref, idx, np.take_along_axis(score, idx, 1), 1)
    np.testing.assert_allclose(g.to_dense().numpy(), ref, atol=1e-6)
    assert (g.row_counts() == k).all()


def test_build_item_graphs_dispatch(tmp_path):
    ds = make_synthetic(80, 50, modalities={"image": 10, "text": 6}, seed=1)
    out = build_item_graphs(ds, "knn", k=4)
    assert set(out) == {"knn_image", "knn_text"}
    assert not (out["knn_image"].row == out["knn_image"].col).any()  # plain kNN excludes self by default
    assert set(build_item_graphs(ds, "freedom", k=4, image_weight=0.1)) == {"knn_mm"}
    assert set(build_item_graphs(ds, "anchorrec", k=4)) == {"anchorrec_image", "anchorrec_text", "anchorrec_mm"}
    assert set(build_item_graphs(ds, "cooccurrence")) == {"cooccur"}
    assert set(build_item_graphs(ds, "brmrs", k=4)) == {"brmrs_item"}
    with pytest.raises(ConfigError):
        build_item_graphs(ds, "lattice")
    with pytest.raises(ConfigError):
        build_item_graphs(ds, "freedom", alpha=0.3)
    # cached builds are identical to fresh ones
    a = build_item_graphs(ds, "freedom", k=4, cache=tmp_path)["knn_mm"]
    b = build_item_graphs(ds, "freedom", k=4, cache=tmp_path)["knn_mm"]
    assert a.equal(b) and a.equal(build_item_graphs(ds, "freedom", k=4)["knn_mm"])
    assert len(list(tmp_path.glob("freedom-*.pt"))) == 1
    build_item_graphs(ds, "freedom", k=5, cache=tmp_path)
    assert len(list(tmp_path.glob("freedom-*.pt"))) == 2


def test_no_features_error():
    ds = RecDataset(3, 3, np.array([[0, 0], [1, 1]]), np.array([[2, 2]]), np.array([[0, 1]]))
    with pytest.raises(DataError):
        freedom_graph(ds)


@pytest.mark.parametrize("kind, params, bad", [("freedom", {"k": 5, "image_wieght": 0.1}, "image_wieght"),
                                               ("anchorrec", {"feature": "mm", "bogus": 1}, "bogus")])
def test_a_misspelt_relation_parameter_is_a_config_error_naming_it(kind, params, bad):
    from mmgraph.graph import build_graph
    from mmgraph.graph.relations import Relation
    ds = make_synthetic(n_users=60, n_items=40, seed=0)
    with pytest.raises(ConfigError, match=rf"relation kind '{kind}': \['{bad}'\]"):
        build_graph(ds, [Relation("x", kind, params)])
    good = {k: v for k, v in params.items() if k != bad}
    assert build_graph(ds, [Relation("x", kind, good)])["item", "x", "item"].edge_index.shape[0] == 2
