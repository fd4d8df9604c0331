"""Mini-batch graph training (issue 17): the vectorised neighbour sampler against brute-force references,
PyG's LinkLoader batches, exactness of sampled propagation at full fanout, and that sampled LightGCN and
FREEDOM learn."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError
from mmgraph.graph.hetero import INTERACTS, REV_INTERACTS
from mmgraph.graph.sampling import BipartiteNeighborSampler, choose_neighbors, torch_sparse_available
from mmgraph.models.base import Batch
from mmgraph.nn.sparse import SparseAdj
from mmgraph.train.config import load_config
from mmgraph.train.link_batches import SubgraphBatches, layer_fanouts
from mmgraph.train.run import build_model, build_run_graph, train
from tests.helpers import popularity_recall


@pytest.fixture(scope="module")
def small():
    ds = make_synthetic(70, 50, seed=4)
    cfg = load_config("lightgcn", overrides={"graph_cache": False})
    return ds, build_run_graph("lightgcn", ds, cfg)


def _adjacency(data):
    ei = data[INTERACTS].edge_index
    items_of, users_of = {}, {}
    for u, i in ei.t().tolist():
        items_of.setdefault(u, set()).add(i)
        users_of.setdefault(i, set()).add(u)
    return items_of, users_of


def test_choose_neighbors_rows_sizes_and_distinctness():
    gen = torch.Generator().manual_seed(0)
    deg = torch.tensor([0, 1, 3, 5, 12, 40, 7])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(deg, 0)])
    targets = torch.tensor([6, 0, 4, 5, 5, 1, 2, 3])
    for fanout in (1, 3, 5, 8):
        t, pos = choose_neighbors(indptr, targets, fanout, gen)
        for k, row in enumerate(targets.tolist()):
            got = pos[t == k].tolist()
            assert len(got) == min(fanout, int(deg[row]))
            assert len(set(got)) == len(got)
            assert all(indptr[row] <= p < indptr[row + 1] for p in got)


def test_choose_neighbors_is_uniform_over_subsets():
    """Every 3-subset of a 7-neighbour row is equally likely (chi-square against the uniform law)."""
    gen = torch.Generator().manual_seed(1)
    indptr = torch.tensor([0, 7])
    n = 35_000
    t, pos = choose_neighbors(indptr, torch.zeros(n, dtype=torch.long), 3, gen)
    subsets = Counter(tuple(sorted(r)) for r in pos.view(n, 3).tolist())
    assert set(subsets) == set(itertools.combinations(range(7), 3))
    expected = n / 35
    chi2 = sum((c - expected) ** 2 / expected for c in subsets.values())
    assert chi2 < 80  # 34 degrees of freedom: P(chi2 > 80) < 1e-4


def _bfs(users, items, items_of, users_of, fanouts):
    """Brute force: nodes reached in len(fanouts) hops when every node keeps all its neighbours, and the
    message edges (src, dst) each node at hop < L receives."""
    seen_u, seen_i = set(users), set(items)
    front_u, front_i = set(users), set(items)
    to_item, to_user = set(), set()
    for _ in fanouts:
        new_u, new_i = set(), set()
        for u in front_u:
            for i in items_of.get(u, ()):
                to_user.add((i, u))
                new_i.add(i)
        for i in front_i:
            for u in users_of.get(i, ()):
                to_item.add((u, i))
                new_u.add(u)
        front_u, front_i = new_u - seen_u, new_i - seen_i
        seen_u |= new_u
        seen_i |= new_i
    return seen_u, seen_i, to_item, to_user


def test_full_fanout_sample_equals_brute_force_neighbourhood(small):
    ds, data = small
    items_of, users_of = _adjacency(data)
    sampler = BipartiteNeighborSampler(data, [1000, 1000], generator=torch.Generator().manual_seed(0), kernel="torch")
    users, items = torch.tensor([3, 9, 3]), torch.tensor([5, 11])
    out = sampler.sample(users, items)
    su, si, to_item, to_user = _bfs([3, 9], [5, 11], items_of, users_of, [0, 0])
    assert set(out["user"].tolist()) == su and set(out["item"].tolist()) == si
    src, dst, eid = out[INTERACTS]
    assert set(zip(src.tolist(), dst.tolist())) == to_item and len(src) == len(to_item)
    src, dst, eid2 = out[REV_INTERACTS]
    assert set(zip(src.tolist(), dst.tolist())) == to_user and len(src) == len(to_user)
    ei = data[INTERACTS].edge_index
    assert torch.equal(ei[:, eid2], torch.stack([dst, src]))  # edge ids name the stored interactions


def test_small_fanout_sample_follows_the_graph(small):
    ds, data = small
    items_of, users_of = _adjacency(data)
    sampler = BipartiteNeighborSampler(data, [2, 3], generator=torch.Generator().manual_seed(2), kernel="torch")
    out = sampler.sample(torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5]))
    for (src, dst, _), is_item in ((out[INTERACTS], True), (out[REV_INTERACTS], False)):
        for s, d in zip(src.tolist(), dst.tolist()):
            assert (s in users_of[d]) if is_item else (s in items_of[d])
    # hop 1 nodes got at most 3 messages, seeds at most 2, and min(f, degree) exactly
    _, dst_u, _ = out[REV_INTERACTS]
    counts = Counter(dst_u.tolist())
    for u in (0, 1, 2, 3):
        assert counts[u] == min(2, len(items_of[u]))
    # every node of the output is a seed or the source of a sampled edge
    src_users = set(out[INTERACTS][0].tolist()) | {0, 1, 2, 3}
    assert set(out["user"].tolist()) == src_users


def test_sampled_batches_through_pyg_linkloader(small):
    ds, data = small
    batches = SubgraphBatches(data, ds, 64, seed=0, num_neighbors=[3, 3])
    train_keys = set(map(tuple, ds.train.tolist()))
    rows = 0
    for batch in batches.epoch():
        sub = batch.extras["subgraph"]
        assert all((u, p) in train_keys for u, p in zip(batch.users.tolist(), batch.pos.tolist()))
        assert not any((u, n) in train_keys for u, n in zip(batch.users.tolist(), batch.neg.tolist()))
        nu, ni = sub["user"].n_id, sub["item"].n_id
        for ids in (nu, ni):   # sorted, distinct
            assert bool((ids[1:] > ids[:-1]).all())
        # local ids name the batch's nodes and the stored interactions
        assert torch.equal(nu[sub["user"].src_index], batch.users)
        assert torch.equal(ni[sub["item"].dst_pos_index], batch.pos)
        assert torch.equal(ni[sub["item"].dst_neg_index], batch.neg)
        stored = data[INTERACTS].edge_index
        for rel, (users, items) in ((INTERACTS, (0, 1)), (REV_INTERACTS, (1, 0))):
            ei = sub[rel].edge_index
            assert torch.equal(torch.stack([nu[ei[users]], ni[ei[items]]]), stored[:, sub[rel].e_id])
        rows += len(batch)
    assert rows == len(np.unique(ds.train, axis=0)) and len(batches) == -(-rows // 64)


def _batch_of(ds, n=40, seed=0):
    rng = np.random.default_rng(seed)
    pairs = np.unique(ds.train, axis=0)[rng.choice(len(np.unique(ds.train, axis=0)), n, replace=False)]
    neg = rng.integers(0, ds.n_items, n)
    return pairs, neg


@pytest.mark.parametrize("method", ["lightgcn", "freedom", "freedom_pruned", "directau"])
def test_sampled_loss_equals_full_graph_at_full_fanout(method):
    """At a fanout above every degree the sampled step IS the full-graph step (loss and gradients); for
    FREEDOM also on the epoch's pruned graph (the same kept edges on both sides)."""
    ds = make_synthetic(60, 45, seed=5)
    base = {"graph_cache": False}
    if method == "directau":
        base["encoder"] = "lightgcn"
    if method.startswith("freedom"):
        base["dropout"] = 0.5 if method == "freedom_pruned" else 0.0
        method = "freedom"
    full_cfg = load_config(method, overrides=base)
    samp_cfg = load_config(method, overrides={**base, "graph_batching": "sampled", "num_neighbors": [10_000]})
    data = build_run_graph(method, ds, full_cfg)
    torch.manual_seed(0)
    full = build_model(method, data, full_cfg, torch.device("cpu"))
    torch.manual_seed(0)
    samp = build_model(method, data, samp_cfg, torch.device("cpu"))
    batches = samp.make_sampler(ds, 32, 0)
    if base.get("dropout"):
        full.on_epoch_start(0, torch.Generator().manual_seed(7))    # the same kept edges on both sides
        samp.on_epoch_start(0, torch.Generator().manual_seed(7))
        assert full.train_adj.nnz < full.adj.nnz
    batch = next(iter(batches.epoch()))
    plain = Batch(batch.users, batch.pos, batch.neg)
    lf, ls = full.loss(plain).loss, samp.loss(batch).loss
    assert float(ls.detach()) == pytest.approx(float(lf.detach()), rel=1e-5, abs=1e-6)
    gf = torch.autograd.grad(lf, [full.user_emb.weight, full.item_emb.weight])
    gs = torch.autograd.grad(ls, [samp.user_emb.weight, samp.item_emb.weight])
    for a, b in zip(gf, gs):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-4)


def test_rows_matmul_matches_dense_power():
    g = torch.Generator().manual_seed(0)
    n = 30
    edge_index = torch.randint(0, n, (2, 120), generator=g)
    adj = SparseAdj(edge_index, torch.rand(120, generator=g), (n, n))
    x = torch.randn(n, 4, generator=g, requires_grad=True)
    dense = adj.csr.to_dense()
    rows = torch.tensor([3, 7, 7, 0, 29])
    for power in (0, 1, 2, 3):
        want = (torch.linalg.matrix_power(dense, power) @ x)[rows]
        got = adj.rows_matmul(x, rows, power)
        assert torch.allclose(got, want, atol=1e-5)
    gx = torch.autograd.grad(adj.rows_matmul(x, rows, 2).sum(), x)[0]
    gw = torch.autograd.grad((torch.linalg.matrix_power(dense, 2) @ x)[rows].sum(), x)[0]
    assert torch.allclose(gx, gw, atol=1e-5)


@pytest.mark.parametrize("method", ["lightgcn", "freedom", "directau"])
def test_sampled_training_learns(method):
    ds = make_synthetic(300, 200, seed=0)
    extra = {"encoder": "lightgcn"} if method == "directau" else {}
    cfg = load_config(method, overrides={"graph_batching": "sampled", "num_neighbors": [5, 5], "epochs": 8,
                                         "batch_size": 256, "learning_rate": 5e-3, "threads": 1,
                                         "log_geometry": False, "graph_cache": False, **extra})
    result, trainer = train(method, ds, cfg)
    assert result["test"]["recall@20"] > 1.1 * popularity_recall(ds)


def test_sampled_settings_are_checked():
    ds = make_synthetic(40, 30, seed=1)
    with pytest.raises(ConfigError, match="full graph only"):
        train("mf", ds, load_config("mf", overrides={"graph_batching": "sampled", "epochs": 1}))
    with pytest.raises(ConfigError, match="propagation layers"):
        layer_fanouts([5, 5, 5], 2)
    with pytest.raises(ConfigError, match="encoder=lightgcn"):    # DirectAU's MF encoder has no layer to sample
        train("directau", ds, load_config("directau", overrides={"graph_batching": "sampled", "epochs": 1}))
    assert layer_fanouts([7], 3) == [7, 7, 7]


@pytest.mark.skipif(not torch_sparse_available(), reason="torch-sparse not installed (mmgraph[sparse])")
def test_torch_sparse_kernel_samples_like_the_torch_one():
    deg = torch.tensor([2, 9, 4, 30])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(deg, 0)])
    targets = torch.tensor([0, 1, 2, 3, 3])
    from mmgraph.graph.sampling import _choose_torch_sparse
    t, pos = _choose_torch_sparse(indptr, torch.arange(int(indptr[-1])) % 7, targets, 5)
    for k, row in enumerate(targets.tolist()):
        got = pos[t == k].tolist()
        assert len(got) == min(5, int(deg[row])) and len(set(got)) == len(got)
        assert all(indptr[row] <= p < indptr[row + 1] for p in got)
