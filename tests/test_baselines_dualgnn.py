"""DualGNN (learning and plug-ins: tests/test_baselines.py): its user graph is the brute-force co-occurrence top-k,
and its forward and loss match brute force."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.graph.cooccurrence import cooccurrence_topk
from mmgraph.graph.relations import Relation, build_relation, relation_graph
from mmgraph.models.dualgnn import USER_GRAPH, user_graph_relation
from mmgraph.train import build_model
from tests.helpers import random_batch as _batch


def brute_cocount_topk(pairs: np.ndarray, n_rows: int, n_cols: int, k: int, min_count: int = 1):
    """``{row: [(neighbour, count), ...]}``: rows sharing >= min_count columns, by count desc, id asc."""
    r = np.zeros((n_rows, n_cols), dtype=np.int64)
    r[pairs[:, 0], pairs[:, 1]] = 1
    c = r @ r.T
    out = {}
    for a in range(n_rows):
        cand = [(b, int(c[a, b])) for b in range(n_rows) if b != a and c[a, b] >= min_count]
        out[a] = sorted(cand, key=lambda t: (-t[1], t[0]))[:k]
    return out


@pytest.mark.parametrize("k,min_count", [(3, 1), (40, 1), (5, 2)])
def test_count_cooccurrence_equals_brute_force(tiny, k, min_count):
    pairs = np.unique(tiny.train, axis=0)
    # items (DA-MRS's behaviour graph) ...
    res = cooccurrence_topk(pairs, k, n_users=tiny.n_users, n_items=tiny.n_items, measure="count",
                            min_count=min_count, block_size=7)
    ref = brute_cocount_topk(pairs[:, ::-1], tiny.n_items, tiny.n_users, k, min_count)
    for i in range(tiny.n_items):
        got = [(int(j), float(s)) for j, s in zip(res.indices[i], res.similarities[i]) if j >= 0]
        assert got == [(j, float(c)) for j, c in ref[i]]
    # ... and users: the relation DualGNN / DRAGON read
    rel = user_graph_relation(k) if min_count == 1 else \
        Relation("uu", "user_cooccurrence", {"k": k, "measure": "count", "min_count": min_count})
    g = build_relation(tiny, rel)
    ref = brute_cocount_topk(pairs, tiny.n_users, tiny.n_items, k, min_count)
    got = {u: [] for u in range(tiny.n_users)}
    for r, c, w in zip(g.row.tolist(), g.col.tolist(), g.edge_weight.tolist()):
        got[r].append((c, w))
    for u in range(tiny.n_users):
        assert sorted(got[u]) == sorted((v, float(c)) for v, c in ref[u])


def _dense_sym(ds):
    U, n = ds.n_users, ds.n_users + ds.n_items
    a = torch.zeros(n, n)
    for u, i in {tuple(r) for r in ds.train.tolist()}:
        a[u, U + i] = a[U + i, u] = 1.0
    d = a.sum(1).clamp(min=1).rsqrt()
    return d[:, None] * a * d[None, :]


def _dense_user_softmax(ds, k):
    pairs = np.unique(ds.train, axis=0)
    w = torch.zeros(ds.n_users, ds.n_users)
    for u, nb in brute_cocount_topk(pairs, ds.n_users, ds.n_items, k).items():
        if nb:
            sm = torch.softmax(torch.tensor([float(c) for _, c in nb]), 0)
            for (v, _), s in zip(nb, sm):
                w[u, v] = s
    return w


def test_dualgnn_forward_matches_brute_force(tiny):
    torch.manual_seed(0)
    model = build_model("dualgnn", tiny, {"graph_cache": False, "user_knn_k": 4})
    U = tiny.n_users
    a, s = _dense_sym(tiny), _dense_user_softmax(tiny, 4)
    torch.testing.assert_close(model.user_graph.csr.to_dense(), s)
    reps = []
    for m in model.modalities:
        b = model.branches[m]
        x = F.normalize(torch.cat([b.preference, b.mlp_1(F.leaky_relu(b.mlp(model.features.raw(m))))]))
        reps.append(x + a @ x + a @ a @ x)
    users = sum(model.weight_u[:, k:k + 1] * r[:U] for k, r in enumerate(reps))
    users = users + s @ users
    items = sum(r[U:] for r in reps)
    got_u, got_i = model.embeddings()
    torch.testing.assert_close(got_u, users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_i, items, atol=1e-5, rtol=1e-5)
    # MMRec's initial per-user modality weights are a softmax: rows sum to 1
    torch.testing.assert_close(model.weight_u.sum(1), torch.ones(U))


def test_dualgnn_loss_is_mmrec_log2_bpr_plus_reg(tiny):
    torch.manual_seed(0)
    model = build_model("dualgnn", tiny, {"reg_weight": 0.1, "graph_cache": False})
    batch = _batch(tiny)
    out = model.loss(batch)
    eu = out.user_emb[batch.users]
    diff = (eu * out.item_emb[batch.pos]).sum(1) - (eu * out.item_emb[batch.neg]).sum(1)
    bpr = -torch.log2(torch.sigmoid(diff)).mean()
    reg = sum((model.branches[m].preference[batch.users] ** 2).mean() for m in model.modalities)
    reg = 0.1 * reg + 0.1 * (model.weight_u ** 2).mean()
    torch.testing.assert_close(out.loss, bpr + reg, atol=1e-5, rtol=1e-5)
    assert math.isclose(float(out.terms["bpr"].detach()), float(bpr.detach()), rel_tol=1e-5)


def test_dualgnn_reads_the_user_relation_of_the_run_graph(tiny):
    model = build_model("dualgnn", tiny, {"graph_cache": False})
    from mmgraph.train.run import build_run_graph
    data = build_run_graph("dualgnn", tiny, {"graph_cache": False})
    g = relation_graph(data, USER_GRAPH, "user")
    assert g.num_nodes == tiny.n_users and model.user_graph.nnz == g.num_edges
    assert int(g.row_counts().max()) <= 40

