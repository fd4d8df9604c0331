"""BR-MRS: hard-negative selection vs brute force, cross assignment, CHNS / synergy losses vs the paper's
formulas, the homogeneous graphs and the propagation vs dense references, candidate pools under resume,
learning on planted-signal data; the plug-in on FREEDOM / VBPR, refused on LightGCN."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError
from mmgraph.graph import brmrs_item_graph, brmrs_user_graph, relation_graph, user_mean_features
from mmgraph.graph.base import normalize_graph
from mmgraph.models.base import Batch, Channel
from mmgraph.nn import affine
from mmgraph.models.brmrs import (BRMRSObjective, chns_negatives, gathered_pool_scores, sampled_pool_scores,
                                  selection_keys, synergy_loss)
from mmgraph.train.config import load_config
from mmgraph.train.run import build_model, build_plugins, build_run_graph, train
from mmgraph.train.sampler import BPRSampler
from mmgraph.train.trainer import Trainer
from tests.helpers import popularity_recall


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=60, n_items=50, modalities={"image": 10, "text": 6}, seed=3)


def _cfg(method="brmrs", **kw):
    over = {"seed": 4, "log_geometry": False, "graph_cache": False, "batch_size": 128, **kw}
    return {k: v for k, v in load_config(method, overrides=over).items() if k != "grid"}


def _dense_cos(x):
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(n > 0, n, 1)
    return xn @ xn.T


def _bpr(x):
    return -torch.log(1e-10 + torch.sigmoid(x)).mean()


# ------------------------------------------------------------------------------ selection
@pytest.mark.parametrize("strategy", ["cross", "self", "fused", "b"])
def test_hardest_negative_selection_equals_brute_force_argmax(strategy):
    rng = np.random.default_rng(0)
    mods = ["a", "b", "c"]
    scores = torch.from_numpy(rng.normal(size=(3, 7, 5)))
    fused = torch.from_numpy(rng.normal(size=(7, 5)))
    cand = torch.from_numpy(rng.integers(0, 100, size=(7, 5)))
    got = chns_negatives(scores, cand, strategy, mods, fused)
    for m in range(3):
        for b in range(7):
            def key(j):
                if strategy == "cross":
                    return sum(float(scores[o, b, j]) for o in range(3) if o != m)
                if strategy == "self":
                    return float(scores[m, b, j])
                if strategy == "fused":
                    return float(fused[b, j])
                return float(scores[mods.index(strategy), b, j])
            best = max(range(5), key=key)
            assert int(got[m, b]) == int(cand[b, best])


def test_cross_assignment_two_modalities_by_hand():
    # text likes candidate 10, vision likes candidate 11: text trains against 11, vision against 10
    scores = torch.tensor([[[0.9, 0.1, 0.2]], [[0.1, 0.8, 0.3]]])      # [M=2 (t, v), B=1, n=3]
    cand = torch.tensor([[10, 11, 12]])
    hard = chns_negatives(scores, cand, "cross", ["t", "v"])
    assert hard[:, 0].tolist() == [11, 10]
    torch.testing.assert_close(selection_keys(scores, "cross", ["t", "v"]), scores.flip(0))
    with pytest.raises(ConfigError, match="brmrs_negatives"):
        selection_keys(scores, "random", ["t", "v"])


def _toy_channels(seed=0, n_users=6, n_items=20, d=4):
    g = torch.Generator().manual_seed(seed)
    users = {m: torch.randn(n_users, d, generator=g, dtype=torch.float64, requires_grad=True) for m in "tv"}
    items = {m: torch.randn(n_items, d, generator=g, dtype=torch.float64, requires_grad=True) for m in "tv"}
    fu = torch.randn(n_users, d, generator=g, dtype=torch.float64, requires_grad=True)
    fi = torch.randn(n_items, d, generator=g, dtype=torch.float64, requires_grad=True)
    modal = {"t": Channel(users["t"], items["t"]),
             "v": Channel(users["v"], item_fn=lambda ids: items["v"][ids])}   # a table and a function
    return users, items, fu, fi, modal, Channel(fu, fi)


def test_chns_loss_is_eq2_and_selection_has_no_gradient():
    users, items, fu, fi, modal, fused = _toy_channels()
    batch = Batch(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]),
                  {"candidates": torch.tensor([[8, 9, 10], [11, 12, 13], [14, 15, 16], [17, 18, 19]])})
    obj = BRMRSObjective({"brmrs_syn": False, "brmrs_lambda_h": 0.5}, ["t", "v"])
    terms = obj.terms(batch, modal, fused)
    assert set(terms) == {"chns"}
    s = {m: users[m][batch.users] @ items[m].t() for m in "tv"}                    # [B, I] dense scores
    cand = batch.extras["candidates"]
    i_v = cand.gather(1, s["v"].gather(1, cand).argmax(1, keepdim=True)).squeeze(1)   # hardest under vision
    i_t = cand.gather(1, s["t"].gather(1, cand).argmax(1, keepdim=True)).squeeze(1)
    rows = torch.arange(4)
    ref = _bpr(s["v"][rows, batch.pos] - s["v"][rows, i_t]) + _bpr(s["t"][rows, batch.pos] - s["t"][rows, i_v])
    torch.testing.assert_close(terms["chns"], 0.5 * ref)
    terms["chns"].backward()
    used = set(batch.pos.tolist()) | set(i_t.tolist()) | set(i_v.tolist())
    for m in "tv":
        grad_rows = set(torch.nonzero(items[m].grad.abs().sum(1) > 0).squeeze(1).tolist())
        assert grad_rows <= used                         # pool members never selected get no gradient
        assert grad_rows >= set(batch.pos.tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pool_scores_equal_the_dense_scores_at_the_candidates(dtype):
    g = torch.Generator().manual_seed(4)
    u = torch.randn(5, 8, generator=g, dtype=dtype, requires_grad=True)
    rows = torch.randn(30, 8, generator=g, dtype=dtype, requires_grad=True)
    index = torch.randint(0, 30, (5, 6), generator=g)
    index[0] = torch.tensor([7, 3, 3, 29, 0, 3])        # repeats and any order within a pool
    ref = (u @ rows.t()).gather(1, index)
    buf = torch.empty(5 * 6 * 8 + 11, dtype=dtype)
    for got in (sampled_pool_scores(u, rows, index), gathered_pool_scores(u, rows, index),
                gathered_pool_scores(u, rows, index, buf)):
        assert got.shape == (5, 6) and not got.requires_grad
        torch.testing.assert_close(got, ref.detach())


def test_synergy_loss_is_eq4_with_vanishing_gradient_when_satisfied():
    d_t = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    d_v = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    d_f = torch.tensor([0.4, 1.0], dtype=torch.float64, requires_grad=True)
    loss = synergy_loss(d_f, torch.stack([d_t, d_v]), 0.1)
    ref = -(math.log(1e-10 + 1 / (1 + math.exp(-(0.4 - 0.5 - 0.1)))) +
            math.log(1e-10 + 1 / (1 + math.exp(-(1.0 - 2.0 - 0.1))))) / 2
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-9)
    loss.backward()
    assert (d_f.grad < 0).all() and (d_v.grad > 0).all() and (d_t.grad == 0).all()   # only the max is pushed
    # fused margin far above max(unimodal) + theta: the loss and its gradient vanish
    big = torch.tensor([40.0, 60.0], dtype=torch.float64, requires_grad=True)
    modal = torch.tensor([[0.5, 1.0], [2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    loss = synergy_loss(big, modal, 0.1)
    loss.backward()
    assert float(loss.detach()) < 1e-12 and float(big.grad.abs().max()) < 1e-12 and float(modal.grad.abs().max()) < 1e-12


def test_syn_term_of_the_objective_uses_the_uniform_negative():
    users, items, fu, fi, modal, fused = _toy_channels(1)
    batch = Batch(torch.tensor([0, 1, 5]), torch.tensor([2, 3, 4]), torch.tensor([7, 8, 9]))
    obj = BRMRSObjective({"brmrs_chns": False, "brmrs_theta": 0.2}, ["t", "v"])
    terms = obj.terms(batch, modal, fused)
    assert set(terms) == {"syn"} and not obj.needs_pool      # no pool needed without CHNS

    def margin(u, i):
        return (u[batch.users] * i[batch.pos]).sum(1) - (u[batch.users] * i[batch.neg]).sum(1)
    ref = _bpr(margin(fu, fi) - torch.maximum(margin(users["t"], items["t"]), margin(users["v"], items["v"])) - 0.2)
    torch.testing.assert_close(terms["syn"], ref)


# ------------------------------------------------------------------------------ graphs
def _topk_dense(score, k):
    score = score.copy()
    np.fill_diagonal(score, -np.inf)
    idx = np.argsort(-score, axis=1, kind="stable")[:, :k]
    ref = np.zeros_like(score)
    np.put_along_axis(ref, idx, np.take_along_axis(score, idx, 1), 1)
    return ref


def test_user_graph_equals_a_dense_construction(small):
    k, alpha = 4, 0.3
    r = np.zeros((small.n_users, small.n_items))
    r[small.train[:, 0], small.train[:, 1]] = 1
    inter = r @ r.T
    deg = r.sum(1)
    union = deg[:, None] + deg[None, :] - inter
    jac = np.where(union > 0, inter / np.maximum(union, 1), 0)
    means = {m: (r @ f) / np.maximum(deg, 1)[:, None] for m, f in small.features.items()}
    for m, f in user_mean_features(small.features, small.train, small.n_users).items():
        np.testing.assert_allclose(f, means[m], rtol=1e-5, atol=1e-6)
    score = alpha * jac + (1 - alpha) * 0.5 * (_dense_cos(means["image"]) + _dense_cos(means["text"]))
    g = brmrs_user_graph(small, None, k=k, alpha=alpha, n_candidates=small.n_users - 1)
    np.testing.assert_allclose(g.to_dense().numpy(), _topk_dense(score, k), atol=1e-5)
    assert g.num_nodes == small.n_users and (g.row_counts() == k).all()


def test_run_graph_holds_both_homogeneous_relations(small):
    cfg = _cfg(brmrs_k=5, brmrs_alpha=0.4)
    data = build_run_graph("brmrs", small, cfg)
    assert ("item", "brmrs_item", "item") in data.edge_types and ("user", "brmrs_user", "user") in data.edge_types
    item = normalize_graph(brmrs_item_graph(small, None, k=5, alpha=0.4), "sym")
    user = normalize_graph(brmrs_user_graph(small, None, k=5, alpha=0.4), "sym")
    torch.testing.assert_close(relation_graph(data, "brmrs_item").to_dense(), item.to_dense())
    torch.testing.assert_close(relation_graph(data, "brmrs_user", "user").to_dense(), user.to_dense())
    off = build_run_graph("brmrs", small, {**cfg, "brmrs_user_graph": False, "brmrs_item_graph": False})
    assert not any(et[1].startswith("brmrs") for et in off.edge_types)


@pytest.mark.parametrize("hop", ["output", "input"])
def test_propagation_matches_a_dense_reference(small, hop):
    cfg = _cfg(n_layers=2, brmrs_k=5, brmrs_hop=hop)
    model = build_model("brmrs", small, cfg, torch.device("cpu"))
    data = build_run_graph("brmrs", small, cfg)
    nu, ni = small.n_users, small.n_items
    a = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    pairs = torch.from_numpy(np.unique(small.train, axis=0))
    a[pairs[:, 0], nu + pairs[:, 1]] = 1
    a[nu + pairs[:, 1], pairs[:, 0]] = 1
    dinv = a.sum(1).pow(-0.5)
    dinv[torch.isinf(dinv)] = 0
    a_hat = dinv[:, None] * a * dinv[None, :]
    g_ii = relation_graph(data, "brmrs_item").to_dense().double()
    g_uu = relation_graph(data, "brmrs_user", "user").to_dense().double()
    with torch.no_grad():
        x_u, x_i = model.inputs()
        p, q = model.encode()
        for k in range(len(model.modalities)):
            x = torch.cat([x_u[:, k], x_i[:, k]]).double()
            h = (x + a_hat @ x + a_hat @ (a_hat @ x)) / 3
            src = h if hop == "output" else x                           # the hop's source
            torch.testing.assert_close(p[:, k].double(), h[:nu] + g_uu @ src[:nu], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(q[:, k].double(), h[nu:] + g_ii @ src[nu:], atol=1e-5, rtol=1e-5)
        users, items = model.embeddings()
        torch.testing.assert_close(users, p.mean(1))
        torch.testing.assert_close(items, q.mean(1))
    assert set(model.channel_embeddings()) == {"final", "image", "text", "fused"}


# ------------------------------------------------------------------------------ training
def test_candidate_pools_are_reproducible_under_resume(small, tmp_path):
    cfg = _cfg(epochs=2, patience=100)
    full, _ = train("brmrs", small, cfg, tmp_path / "full", progress=False)
    train("brmrs", small, {**cfg, "epochs": 1}, tmp_path / "part", progress=False)
    resumed, _ = train("brmrs", small, cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed["valid"] == full["valid"] and resumed["test"] == full["test"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["state"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the pools themselves: a sampler restored from a state draws the same candidates
    s1 = BPRSampler(small, 64, seed=3, n_candidates=16)
    next(s1.epoch())
    state = s1.state_dict()
    s2 = BPRSampler(small, 64, seed=99, n_candidates=16)
    s2.load_state_dict(state)
    b1, b2 = next(s1.epoch()), next(s2.epoch())
    assert torch.equal(b1.extras["candidates"], b2.extras["candidates"]) and b1.extras["candidates"].shape[1] == 16
    seen = set(map(tuple, small.train.tolist()))
    assert not any((int(u), int(c)) in seen for u, row in zip(b1.users, b1.extras["candidates"]) for c in row)


@pytest.mark.parametrize("over", [{"brmrs_negatives": "uniform"}, {"brmrs_negatives": "fused"},
                                  {"brmrs_negatives": "self"}, {"brmrs_negatives": "image"},
                                  {"fusion": "concat"}, {"fusion": "sum", "brmrs_fused_bpr": False}])
def test_switches_and_strategies_train(small, over):
    result, trainer = train("brmrs", small, _cfg(epochs=1, **over), progress=False)
    assert math.isfinite(trainer.history[-1]["train_loss"])
    pool = trainer.sampler.n_candidates
    assert pool == (0 if over.get("brmrs_negatives") == "uniform" else 16)


def test_bad_settings_are_one_line_errors(small):
    with pytest.raises(ConfigError, match="brmrs_negatives"):
        train("brmrs", small, _cfg(epochs=1, brmrs_negatives="audio"), progress=False)
    for reg in (0.0, 1e-4):    # the L2 penalty alone is no objective either
        with pytest.raises(ConfigError, match="switched off"):
            train("brmrs", small, _cfg(epochs=1, brmrs_chns=False, brmrs_syn=False, brmrs_fused_bpr=False,
                                       reg_weight=reg), progress=False)


@pytest.mark.parametrize("fusion", ["mean", "sum"])
def test_one_modality_refuses_a_synergy_term_that_would_be_constant(small, fusion):
    over = {"modalities": ["image"], "brmrs_negatives": "self", "fusion": fusion}
    with pytest.raises(ConfigError, match="Syn-BPR is a constant"):
        train("brmrs", small, _cfg(epochs=1, **over), progress=False)
    # without the term, or with a learned fusion, one modality trains
    for extra in ({"brmrs_syn": False}, {"fusion": "concat"}):
        result, trainer = train("brmrs", small, _cfg(epochs=1, **{**over, **extra}), progress=False)
        assert math.isfinite(trainer.history[-1]["train_loss"])


@pytest.mark.parametrize("method, over", [
    ("brmrs", {"brmrs_negatives": "audio"}),                          # not a modality of the data
    ("freedom", {"plugins": ["brmrs"], "brmrs_negatives": "audio"}),
    ("freedom", {"plugins": ["brmrs"], "brmrs_negatives": "cross", "modalities": ["image"]}),   # cross needs 2
])
def test_bad_negatives_refused_before_any_graph_is_built(small, method, over, monkeypatch):
    import mmgraph.train.run as run

    def no_graph(*args, **kwargs):
        raise AssertionError("a graph was built before the settings were checked")
    monkeypatch.setattr(run, "build_run_graph", no_graph)
    with pytest.raises(ConfigError, match="brmrs_negatives") as err:
        train(method, small, _cfg(method, epochs=1, **over), progress=False)
    assert "\n" not in str(err.value)


def test_brmrs_beats_lightgcn_and_popularity():
    ds = make_synthetic(n_users=400, n_items=300, seed=7)
    budget = {"epochs": 30, "patience": 5, "seed": 1, "learning_rate": 5e-3, "batch_size": 256}
    lgcn, _ = train("lightgcn", ds, _cfg("lightgcn", **budget), progress=False)
    brmrs, _ = train("brmrs", ds, _cfg(**budget), progress=False)
    r = brmrs["test"]["recall@20"]
    assert r > lgcn["test"]["recall@20"], (r, lgcn["test"]["recall@20"])
    assert r > popularity_recall(ds) + 0.01


# ------------------------------------------------------------------------------ plug-in
@pytest.mark.parametrize("method", ["freedom", "vbpr", "bm3", "cm3", "anchorrec"])
def test_plugin_attaches_to_multimodal_backbones(small, method):
    cfg = _cfg(method, plugins=["brmrs"], epochs=1)
    model = build_model(method, small, cfg, torch.device("cpu"))
    plugins = build_plugins(cfg, small, model)
    assert plugins[0].objective.modalities == ["image", "text"]
    trainer = Trainer(model, small, cfg, plugins=plugins, progress=False)
    assert trainer.sampler.n_candidates == 16
    terms = trainer.train_step(next(trainer.sampler.epoch()))
    assert {"brmrs_chns", "brmrs_syn"} <= set(terms) and math.isfinite(terms["loss"])


def test_plugin_with_zero_weights_leaves_the_backbone_run_unchanged(small):
    base, _ = train("freedom", small, _cfg("freedom", epochs=2), progress=False)
    off, _ = train("freedom", small, _cfg("freedom", epochs=2, plugins=["brmrs"], brmrs_lambda_h=0.0,
                                          brmrs_lambda_s=0.0), progress=False)
    assert off["test"] == base["test"]


@pytest.mark.parametrize("method", ["lightgcn", "mf", "brmrs"])
def test_plugin_refuses_backbones_without_modality_channels(small, method):
    cfg = _cfg(method, plugins=["brmrs"])
    model = build_model(method, small, cfg, torch.device("cpu"))
    with pytest.raises(ConfigError) as info:
        build_plugins(cfg, small, model)
    assert "\n" not in str(info.value) and ("per-modality" in str(info.value) or "already" in str(info.value))


def test_plugin_default_weights_follow_the_backbones_user_side(small):
    weights = {}
    for method in ("freedom", "vbpr"):
        cfg = _cfg(method, plugins=["brmrs"])
        model = build_model(method, small, cfg, torch.device("cpu"))
        obj = build_plugins(cfg, small, model)[0].objective
        weights[method] = (obj.lambda_h, obj.lambda_s)
    assert weights == {"freedom": (1e-2, 1e-2), "vbpr": (1.0, 1.0)}   # FREEDOM scores modalities with its final users
    cfg = _cfg("freedom", plugins=["brmrs"], brmrs_lambda_h=0.5)
    model = build_model("freedom", small, cfg, torch.device("cpu"))
    assert build_plugins(cfg, small, model)[0].objective.lambda_h == 0.5


# ------------------------------------------------------------------------------ optimised path vs reference
def _reference_terms(obj, batch, modal, fused):
    """CHNS + Syn-BPR written plainly: every score by :meth:`Channel.score`, the hardest by a loop."""
    users, pos, neg = batch.users, batch.pos, batch.neg
    mods = obj.modalities
    out = {}
    if obj.use_chns:
        cand = batch.extras.get("candidates")
        negs = []
        for k, m in enumerate(mods):
            if obj.strategy == "uniform":
                negs.append(neg)
                continue
            with torch.no_grad():
                if obj.strategy == "cross":
                    key = sum(modal[o].score(users, cand) for o in mods if o != m)
                elif obj.strategy == "self":
                    key = modal[m].score(users, cand)
                elif obj.strategy == "fused":
                    key = fused.score(users, cand)
                else:
                    key = modal[obj.strategy].score(users, cand)
            negs.append(torch.stack([cand[b, int(key[b].argmax())] for b in range(len(users))]))
        out["chns"] = obj.lambda_h * sum(_bpr(modal[m].score(users, pos) - modal[m].score(users, n))
                                         for m, n in zip(mods, negs))
    if obj.use_syn:
        d_f = fused.score(users, pos) - fused.score(users, neg)
        d_m = torch.stack([modal[m].score(users, pos) - modal[m].score(users, neg) for m in mods])
        out["syn"] = obj.lambda_s * _bpr(d_f - 0.1 - d_m.max(0).values)
    return out


def _shared_channels(seed=0, n_users=9, n_items=30, d=5):
    """Three modalities mixing tables and functions, two of them sharing one user table and one user
    function (as FREEDOM / BM3 share their final users), the fused channel sharing a user function."""
    g = torch.Generator().manual_seed(seed)
    leaf = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    params = {"u": leaf(n_users, d), "w": leaf(d, d), "x": leaf(n_items, d), "y": leaf(n_items, d),
              "z": leaf(n_items, d), "fi": leaf(n_items, d)}
    u_fn = lambda ids: params["u"][ids] @ params["w"]  # noqa: E731
    modal = {"a": Channel(users=params["u"], item_fn=lambda ids: params["x"][ids] * 2,
                          item_table=lambda: params["x"] * 2),
             "b": Channel(users=params["u"], item_fn=lambda ids: params["y"][ids].tanh()),
             "c": Channel(user_fn=u_fn, items=params["z"])}
    return params, modal, Channel(user_fn=u_fn, items=params["fi"])


@pytest.mark.parametrize("strategy", ["cross", "self", "fused", "uniform", "b"])
@pytest.mark.parametrize("reuse, n_items, shared", [(False, None, False), (True, None, False), (False, 30, False),
                                                     (True, None, True)])
def test_objective_equals_a_plain_reference_with_gradients(strategy, reuse, n_items, shared):
    """The optimised objective (shared sources, one distinct-id computation or, with ``n_items`` and large
    pools, the channels' full item tables; reused fused scores; modality scores of the batch's pairs handed over
    by the backbone, ``Channel.scores``) gives the reference's loss and gradients."""
    import dataclasses
    params, modal, fused = _shared_channels()
    rng = np.random.default_rng(1)
    b = 12
    batch = Batch(torch.from_numpy(rng.integers(0, 9, b)), torch.from_numpy(rng.integers(0, 30, b)),
                  torch.from_numpy(rng.integers(0, 30, b)), {"candidates": torch.from_numpy(rng.integers(0, 30, (b, 4)))})
    if shared:   # two of the three channels come with their pair scores
        modal = {k: dataclasses.replace(c, scores=(c.score(batch.users, batch.pos), c.score(batch.users, batch.neg)))
                 if k != "b" else c for k, c in modal.items()}
    obj = BRMRSObjective({"brmrs_negatives": strategy, "brmrs_lambda_h": 0.7, "brmrs_lambda_s": 1.3},
                         ["a", "b", "c"], n_items)
    scores = (fused.score(batch.users, batch.pos), fused.score(batch.users, batch.neg)) if reuse else None
    got = obj.terms(batch, modal, fused, scores)
    ref = _reference_terms(obj, batch, modal, fused)
    assert set(got) == set(ref) == {"chns", "syn"}
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-12)
        g1 = torch.autograd.grad(got[name], list(params.values()), allow_unused=True, retain_graph=True)
        g2 = torch.autograd.grad(ref[name], list(params.values()), allow_unused=True, retain_graph=True)
        for a, r in zip(g1, g2):
            if r is None:
                assert a is None or float(a.abs().max()) == 0
            else:
                torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["freedom", "freedom+reg", "vbpr", "bm3", "cm3", "anchorrec"])
# the affine channels (FREEDOM, VBPR, BM3) scored in their feature space, and through their item tables
@pytest.mark.parametrize("feature_space", [True, False])
def test_plugin_terms_equal_a_plain_reference_on_each_backbone(small, method, feature_space, monkeypatch):
    monkeypatch.setattr(affine, "FEATURE_SPACE_RATIO", 1e9 if feature_space else 0.0)
    # freedom+reg: FREEDOM with its feature BPR on, whose modality scores of the batch's pairs the plug-in reuses
    method, reg = method.split("+")[0], {"reg_weight": 1e-3} if method.endswith("+reg") else {}
    cfg = _cfg(method, plugins=["brmrs"], brmrs_lambda_h=0.5, brmrs_lambda_s=2.0, **reg)
    model = build_model(method, small, cfg, torch.device("cpu")).double()
    plugin = build_plugins(cfg, small, model)[0]
    trainer = Trainer(model, small, cfg, plugins=[plugin], progress=False)
    model.train()
    batch = next(trainer.sampler.epoch())
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        torch.manual_seed(5)
        out = model.loss(batch)
        terms = fn(out)
        grads = torch.autograd.grad(out.loss + sum(terms.values()), params, allow_unused=True)
        return terms, grads

    got, g1 = run(lambda out: plugin.loss(batch, out))
    assert all((model.loss(batch).channel(m).scores is not None) == bool(reg) for m in plugin.objective.modalities)
    ref, g2 = run(lambda out: _reference_terms(plugin.objective, batch,
                                               {m: out.channel(m) for m in plugin.objective.modalities},
                                               out.channel()))
    assert set(got) == set(ref) == {"chns", "syn"}
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-12)
    for p, a, r in zip(params, g1, g2):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)
