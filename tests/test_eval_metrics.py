"""Evaluation metrics and the full-ranking Evaluator against a plain per-user reference."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgraph.data.dataset import RecDataset
from mmgraph.errors import ConfigError, DataError
from mmgraph.evaluation import (Evaluator, combine_shards, metric_names, popularity_group_metrics,
                                popularity_groups, topk_metrics, unseen_items, user_group_metrics)

KS = (5, 10, 20, 50)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ------------------------------------------------------------------ brute-force reference
def ref_user(ranked, gt, ks):
    """Protocol formulas written out for one user: ranked item list, ground-truth set."""
    out = {}
    for k in ks:
        hits = [1.0 if i in gt else 0.0 for i in list(ranked[:k])]
        hits += [0.0] * (k - len(hits))
        n_hits = sum(hits)
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(gt), k)))
        ap = sum(hits[r] * sum(hits[:r + 1]) / (r + 1) for r in range(k)) / min(len(gt), k)
        out.update({f"recall@{k}": n_hits / len(gt), f"ndcg@{k}": dcg / idcg, f"precision@{k}": n_hits / k,
                    f"map@{k}": ap, f"hit@{k}": float(n_hits > 0)})
    return out


def ref_evaluate(scores, ds, split, ks, users=None, candidates=None, mask=("train",)):
    """Loop over users: mask train items with -inf, numpy argsort, formulas from ref_user."""
    cand = np.arange(ds.n_items) if candidates is None else np.asarray(candidates)
    sets = {s: [set() for _ in range(ds.n_users)] for s in ("train", "valid", "test")}
    for s in sets:
        for u, i in ds.split(s):
            sets[s][u].add(int(i))
    per_user = {}
    for u in range(ds.n_users) if users is None else users:
        gt = sets[split][u] & set(cand.tolist())
        if not gt:
            continue
        s = scores[u].astype(np.float64).copy()
        for m in mask:
            s[list(sets[m][u])] = -np.inf
        ranked = cand[np.argsort(-s[cand], kind="stable")]
        per_user[u] = ref_user(ranked, gt, ks)
    names = metric_names(ks)
    means = {n: float(np.mean([v[n] for v in per_user.values()])) for n in names}
    return means, per_user


def random_dataset(n_users=90, n_items=160, seed=0, max_test=75):
    """Random disjoint train/valid/test per user, split sizes from 0 to > max(K)."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        perm = rng.permutation(n_items)
        n_tr, n_va = rng.integers(1, 30), rng.integers(0, 6)
        n_te = int(rng.choice([0, 1, 2, 3, 7, 15, 30, max_test]))
        parts = {"train": perm[:n_tr], "valid": perm[n_tr:n_tr + n_va],
                 "test": perm[n_tr + n_va:n_tr + n_va + n_te]}
        for s, items in parts.items():
            rows[s] += [(u, int(i)) for i in items]
    return RecDataset(n_users, n_items, **{s: np.array(r, dtype=np.int64).reshape(-1, 2) for s, r in rows.items()})


def assert_close(a, b, tol=1e-6):
    assert a.keys() == b.keys()
    for n in a:
        assert abs(a[n] - b[n]) <= tol, (n, a[n], b[n])


@pytest.fixture(scope="module")
def data():
    ds = random_dataset()
    g = torch.Generator().manual_seed(1)
    ue = torch.randn(ds.n_users, 8, generator=g, dtype=torch.float64)
    ie = torch.randn(ds.n_items, 8, generator=g, dtype=torch.float64)
    return ds, ue, ie, (ue @ ie.T).numpy()


# ------------------------------------------------------------------ topk_metrics
def test_topk_metrics_hand_example():
    hits = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)
    n_pos = torch.tensor([2, 3, 9, 0])
    m = topk_metrics(hits, n_pos, [5])
    assert m["recall@5"][0] == pytest.approx(1.0)
    assert m["ndcg@5"][0] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m["precision@5"][0] == pytest.approx(0.4)
    assert m["map@5"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert m["hit@5"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert m["recall@5"][2] == pytest.approx(5 / 9)  # full |S_u| denominator
    assert m["ndcg@5"][2] == pytest.approx(1.0) and m["map@5"][2] == pytest.approx(1.0)
    assert all(float(m[n][3]) == 0.0 for n in ("recall@5", "ndcg@5", "map@5"))  # no positives: 0
    assert list(m) == metric_names([5])


def test_topk_metrics_random_vs_reference():
    rng = np.random.default_rng(3)
    B, kmax = 200, 50
    hits = rng.random((B, kmax)) < 0.2
    n_pos = np.maximum(hits.sum(1), rng.integers(1, 80, B))  # |S_u| >= hits, often > K
    m = topk_metrics(torch.from_numpy(hits), torch.from_numpy(n_pos), KS)
    for b in range(B):
        gt = set(np.flatnonzero(hits[b]).tolist()) | {1000 + j for j in range(n_pos[b] - hits[b].sum())}
        ref = ref_user(np.arange(kmax), gt, KS)
        for n, v in ref.items():
            assert abs(float(m[n][b]) - v) < 1e-9, (n, b)


def test_topk_metrics_fewer_columns_than_k():
    hits = torch.tensor([[True, False, True]])
    m = topk_metrics(hits, torch.tensor([4]), [2, 5])
    assert m["recall@5"].item() == pytest.approx(0.5) and m["precision@5"].item() == pytest.approx(0.4)
    assert m["map@5"].item() == pytest.approx((1 + 2 / 3) / 4)


# ------------------------------------------------------------------ Evaluator
@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluator_matches_reference(data, split):
    ds, ue, ie, scores = data
    ev = Evaluator(ds, split, ks=KS, batch_size=17)
    ref, ref_pu = ref_evaluate(scores, ds, split, KS)
    assert_close(ev.evaluate(ue, ie), ref)
    assert len(ev.users) == len(ref_pu)
    pu = ev.evaluate(ue, ie, per_user=True)
    assert pu["users"].tolist() == sorted(ref_pu)
    for j, u in enumerate(pu["users"].tolist()):
        for n in ev.names:
            assert abs(float(pu[n][j]) - ref_pu[u][n]) < 1e-6


def test_evaluate_scores_and_batch_size_independence(data):
    ds, ue, ie, scores = data
    full = torch.from_numpy(scores)
    results = [Evaluator(ds, "test", batch_size=bs).evaluate(ue, ie) for bs in (1, 7, 1000)]
    results.append(Evaluator(ds, "test", memory_budget_mb=0.01).evaluate(ue, ie))
    results.append(Evaluator(ds, "test").evaluate_scores(lambda u: full[u]))
    for r in results[1:]:
        assert_close(r, results[0], tol=1e-12)


def test_masking_only_training_items(data):
    ds, ue, ie, scores = data
    train_ptr, train_idx = ds.user_item_csr("train")
    valid_ptr, valid_idx = ds.user_item_csr("valid")
    # valid items score highest: they must be ranked first when testing (not masked)
    boost = torch.from_numpy(scores).clone()
    boost[torch.from_numpy(ds.valid[:, 0]), torch.from_numpy(ds.valid[:, 1])] += 1e6
    boost[torch.from_numpy(ds.train[:, 0]), torch.from_numpy(ds.train[:, 1])] += 2e6
    ev = Evaluator(ds, "test", batch_size=13)
    seen = 0
    for u, top, _ in ev.iter_topk(score_fn=lambda u: boost[u]):
        for b, user in enumerate(u.tolist()):
            tr = set(train_idx[train_ptr[user]:train_ptr[user + 1]].tolist())
            va = set(valid_idx[valid_ptr[user]:valid_ptr[user + 1]].tolist())
            assert not tr & set(top[b].tolist())
            assert set(top[b, :len(va)].tolist()) == va
            seen += 1
    assert seen == len(ev.users)
    # the reference with train+valid masked differs, and masking valid too is an option
    both = Evaluator(ds, "test", mask_split=("train", "valid")).evaluate(ue, ie)
    assert_close(both, ref_evaluate(scores, ds, "test", KS, mask=("train", "valid"))[0])


@pytest.mark.parametrize("retrieval", ["exact", "faiss"])
def test_masked_item_in_the_split_is_never_a_hit(retrieval):
    # fewer unmasked items than k, and a training item that is also a test item: the masked (-inf) slot
    # must not count as a hit (it did in the exact path: 1.0 instead of 0.5)
    none = np.zeros((0, 2), dtype=np.int64)
    ds = RecDataset(1, 6, np.array([[0, 0], [0, 1], [0, 2]]), none, np.array([[0, 3], [0, 0]]), {})
    ue, ie = torch.ones(1, 1), torch.tensor([[9.0], [8.0], [7.0], [1.0], [2.0], [3.0]])
    ev = Evaluator(ds, "test", ks=[5], retrieval=retrieval)
    res = ev.evaluate(ue, ie)
    assert res["recall@5"] == pytest.approx(0.5) and res["precision@5"] == pytest.approx(0.2)
    (_, top, hits), = list(ev.iter_topk(ue, ie))
    assert top[0].tolist() == [5, 4, 3, -1, -1] and hits[0].tolist() == [False, False, True, False, False]


def test_score_fn_view_is_not_modified(data):
    ds, ue, ie, scores = data
    cache = torch.from_numpy(scores).clone()
    before = cache.clone()
    ev = Evaluator(ds, "test", batch_size=ds.n_users)  # one batch: score_fn may return a slice
    r = ev.evaluate_scores(lambda u: cache[: len(u)] if len(u) == ds.n_users else cache[u])
    assert torch.equal(cache, before)
    assert r.keys() == set(ev.names)


def test_sharded_evaluation_equals_full(data):
    ds, ue, ie, _ = data
    ev = Evaluator(ds, "test", batch_size=11)
    full = ev.evaluate(ue, ie)
    shards = [ev.evaluate_shard(ue, ie, users=ev.shard(r, 3)) for r in range(3)]
    assert sum(c for _, c in shards) == len(ev.users)
    assert_close(combine_shards(shards), full, tol=1e-12)
    # any user list works: non-evaluated users are skipped
    half = torch.arange(0, ds.n_users, 2)
    assert_close(Evaluator.combine_shards([ev.evaluate_shard(ue, ie, users=half),
                                           ev.evaluate_shard(ue, ie, users=half + 1)]), full, tol=1e-12)


def test_subset_of_users(data):
    ds, ue, ie, scores = data
    users = [3, 5, 8, 13, 21, 34, 55, 89]
    ev = Evaluator(ds, "test", batch_size=3)
    ref, ref_pu = ref_evaluate(scores, ds, "test", KS, users=users)
    pu = ev.evaluate(ue, ie, users=torch.tensor(users), per_user=True)
    assert pu["users"].tolist() == [u for u in users if u in ref_pu]
    assert_close(ev.evaluate(ue, ie, users=users), ref)


def test_candidate_items(data):
    ds, ue, ie, scores = data
    cand = np.random.default_rng(5).choice(ds.n_items, 40, replace=False)
    ev = Evaluator(ds, "test", candidate_items=torch.from_numpy(cand), batch_size=9)
    ref, ref_pu = ref_evaluate(scores, ds, "test", KS, candidates=np.sort(cand))
    assert_close(ev.evaluate(ue, ie), ref)
    assert len(ev.users) == len(ref_pu)
    mask = np.zeros(ds.n_items, dtype=bool)
    mask[cand] = True
    full = torch.from_numpy(scores)
    assert_close(Evaluator(ds, "test", candidate_items=mask).evaluate_scores(lambda u: full[u]), ref)


def test_cold_start_split():
    from mmgraph.data.synthetic import make_synthetic
    ds = make_synthetic(200, 150, split="cold", seed=2, modalities={})
    cold = unseen_items(ds)
    assert len(cold) and not np.isin(ds.test[:, 1], np.setdiff1d(np.arange(ds.n_items), cold)).any()
    g = torch.Generator().manual_seed(0)
    ue, ie = torch.randn(ds.n_users, 8, generator=g, dtype=torch.float64), torch.randn(ds.n_items, 8, generator=g,
                                                                                          dtype=torch.float64)
    scores = (ue @ ie.T).numpy()
    assert_close(Evaluator(ds, "test").evaluate(ue, ie), ref_evaluate(scores, ds, "test", KS)[0])
    assert_close(Evaluator(ds, "test", candidate_items=cold).evaluate(ue, ie),
                 ref_evaluate(scores, ds, "test", KS, candidates=cold)[0])


def test_argument_errors(data):
    ds, ue, ie, _ = data
    with pytest.raises(ConfigError):
        Evaluator(ds, "nope")
    with pytest.raises(ConfigError):
        Evaluator(ds, "test", mask_split=("train", "test"))
    with pytest.raises(ConfigError):
        Evaluator(ds, "test", ks=[0, 5])
    with pytest.raises(DataError):
        Evaluator(ds, "test").evaluate(ue[:-1], ie)
    with pytest.raises(DataError):
        Evaluator(ds, "test").evaluate_scores(lambda u: torch.zeros(len(u), 3))


# ------------------------------------------------------------------ groups
def test_popularity_groups_partition():
    pop = np.array([5, 0, 9, 9, 1, 3, 7, 2, 0, 4])
    group, names = popularity_groups(pop)
    assert names == ["head", "tail1", "tail2", "tail3", "tail4"]
    assert sorted(np.flatnonzero(group == 0).tolist()) == [2, 3]  # top 20 %
    assert [int((group == g).sum()) for g in range(1, 5)] == [2, 2, 2, 2]
    for g in range(1, 4):  # tail groups in decreasing popularity
        assert pop[group == g].min() >= pop[group == g + 1].max()


def test_popularity_group_metrics_vs_bruteforce(data):
    ds, ue, ie, scores = data
    ev = Evaluator(ds, "test", batch_size=10)
    res = popularity_group_metrics(ev, ue, ie, ks=(10, 20))
    group, names = popularity_groups(ds.item_popularity("train"))
    tr = [set() for _ in range(ds.n_users)]
    te = [set() for _ in range(ds.n_users)]
    for u, i in ds.train:
        tr[u].add(int(i))
    for u, i in ds.test:
        te[u].add(int(i))
    for g, name in enumerate(names):
        for k in (10, 20):
            vals = []
            for u in range(ds.n_users):
                gt = {i for i in te[u] if group[i] == g}
                if not gt:
                    continue
                s = scores[u].copy()
                s[list(tr[u])] = -np.inf
                top = np.argsort(-s, kind="stable")[:k]
                vals.append(len(gt & set(top.tolist())) / len(gt))
            assert res[name][f"recall@{k}"] == pytest.approx(np.mean(vals), abs=1e-9)
            assert res[name]["n_users"] == len(vals)
    # score_fn path gives the same
    full = torch.from_numpy(scores)
    assert popularity_group_metrics(ev, score_fn=lambda u: full[u], ks=(10, 20)) == res


def test_user_group_metrics(data):
    ds, ue, ie, _ = data
    ev = Evaluator(ds, "test")
    res = user_group_metrics(ev, ue, ie, n_groups=3)
    assert sum(r["n_users"] for r in res.values()) == len(ev.users)
    full = ev.evaluate(ue, ie)
    weighted = sum(r["recall@20"] * r["n_users"] for r in res.values()) / len(ev.users)
    assert weighted == pytest.approx(full["recall@20"])
    assert res["users1"]["max_train"] <= res["users3"]["min_train"]


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "tiktok").exists(), reason="../shared/data/tiktok not present")
def test_real_data_subset_vs_reference():
    from mmgraph.data.atomic import load_atomic
    ds = load_atomic(SHARED / "tiktok", modalities=[])
    g = torch.Generator().manual_seed(0)
    ue = torch.randn(ds.n_users, 16, generator=g, dtype=torch.float64)
    ie = torch.randn(ds.n_items, 16, generator=g, dtype=torch.float64)
    users = list(range(0, ds.n_users, 31))
    scores = (ue[users] @ ie.T).numpy()
    full = np.zeros((ds.n_users, ds.n_items))
    full[users] = scores
    ev = Evaluator(ds, "test", batch_size=64)
    assert_close(ev.evaluate(ue, ie, users=users), ref_evaluate(full, ds, "test", KS, users=users)[0])


@pytest.mark.skipif(not __import__("mmgraph.nn.linear", fromlist=["ENABLED"]).ENABLED,
                    reason="this PyTorch build has no oneDNN linear kernel")
def test_one_block_of_float32_scores_goes_through_onednn_in_float32(data, monkeypatch):
    """A float32 CPU evaluation that fits one score block takes oneDNN's product (a fresh block); several blocks
    keep ``torch.mm`` into one reused buffer. Same metrics, and float32 scores even where ``matmul_precision``
    turned bfloat16 products on for training."""
    from mmgraph.nn import linear as L

    ds, ue, ie, _ = data
    ue, ie = ue.float(), ie.float()
    ran, kernel = [], L.KERNEL

    def counted(x, w, *rest):
        ran.append((x.shape[0], w.shape[0]))
        return kernel(x, w, *rest)

    monkeypatch.setattr(L, "KERNEL", counted)
    monkeypatch.setattr(L, "MIN_MACS", 1)
    blocks = Evaluator(ds, "test", batch_size=7).evaluate(ue, ie)
    assert ran == []
    one = Evaluator(ds, "test", batch_size=1000)
    assert_close(one.evaluate(ue, ie), blocks, tol=1e-12)
    assert ran == [(len(one.users), ds.n_items)]
    monkeypatch.setattr(L, "BF16", True)          # as inside a matmul_precision=medium run on a bfloat16 CPU
    assert_close(one.evaluate(ue, ie), blocks, tol=1e-12)
    assert len(ran) == 2


@pytest.mark.skipif(not __import__("mmgraph.nn.linear", fromlist=["ENABLED"]).ENABLED,
                    reason="this PyTorch build has no oneDNN linear kernel")
def test_topk_exact_in_one_block_equals_several(monkeypatch):
    from mmgraph.evaluation import topk_exact
    from mmgraph.nn import linear as L

    monkeypatch.setattr(L, "MIN_MACS", 1)
    g = torch.Generator().manual_seed(3)
    users, items = torch.randn(120, 8, generator=g), torch.randn(300, 8, generator=g)
    s1, i1 = topk_exact(users, items, 20)                    # one block: oneDNN
    s2, i2 = topk_exact(users, items, 20, batch_size=13)     # several: torch.mm into a buffer
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(s1, torch.topk(users @ items.T, 20).values)
