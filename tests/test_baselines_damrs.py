"""DA-MRS (learning and plug-ins: tests/test_baselines.py): its denoised item graphs, behaviour graph, pseudo-labels,
neighbour discrimination, feedback weights and scores match brute-force references (MMRec's dense formulas,
written out here)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.graph.denoised import denoised_knn_graphs, mean_cosine
from mmgraph.models.damrs import (KL_EPS, SESSION, bernoulli_kl, discrimination_loss, feedback_weights,
                                  symmetric_bernoulli_kl)
from mmgraph.train import build_model
from tests.helpers import assert_same_gradients, random_batch as _batch
from tests.test_baselines_dualgnn import brute_cocount_topk


@pytest.fixture(scope="module")
def tiny():
    ds = make_synthetic(n_users=40, n_items=30, modalities={"image": 6, "text": 5}, seed=3)
    # non-negative features (as CNN / sentence features after ReLU): every cosine >= 0
    ds.features = {m: np.abs(f) for m, f in ds.features.items()}
    return ds


def _mmrec_denoised(v, t, k):
    """MMRec's DAMRS.get_knn_adj_mat, dense, as written there."""
    def sim(x):
        xn = x / x.norm(dim=1, keepdim=True)
        return xn @ xn.t()
    v_sim, t_sim = sim(v), sim(t)
    mask_v, mask_t = v_sim < v_sim.mean(), t_sim < t_sim.mean()
    t_sim[mask_v] = 0
    v_sim[mask_t] = 0
    t_sim[mask_t] = 0
    v_sim[mask_v] = 0
    n = v.shape[0]
    av, at = torch.zeros(n, n), torch.zeros(n, n)
    for i in range(n):
        num = len(torch.nonzero(t_sim[i]))
        kk = num if num <= k else k
        av[i, torch.topk(v_sim[i], kk).indices] = 1
        at[i, torch.topk(t_sim[i], kk).indices] = 1

    def lap(a):
        d = (a.sum(1) + 1e-7).pow(-0.5)
        return d[:, None] * a * d[None, :]
    return lap(av), lap(at)


@pytest.mark.parametrize("k,block", [(3, 1 << 22), (10, 64)])
def test_denoised_graphs_match_mmrec_dense(tiny, k, block):
    v, t = (torch.as_tensor(tiny.features[m]) for m in ("image", "text"))
    ref_v, ref_t = _mmrec_denoised(v.clone(), t.clone(), k)
    got = denoised_knn_graphs(tiny.features, k, max_block_elems=block)
    torch.testing.assert_close(got["image"].to_dense(), ref_v)
    torch.testing.assert_close(got["text"].to_dense(), ref_t)
    if k == 10:   # the denoising bites: some items keep fewer than k supported neighbours
        assert bool((got["image"].row_counts() < k).any())
    xn = F.normalize(v)
    assert abs(mean_cosine(xn) - float((xn @ xn.t()).mean())) < 1e-6


def test_behaviour_graph_and_views_match_brute_force(tiny):
    torch.manual_seed(0)
    model = build_model("damrs", tiny, {"graph_cache": False, "session_k": 4, "knn_k": 3})
    n = tiny.n_items
    a = torch.eye(n)
    for i, nb in brute_cocount_topk(np.unique(tiny.train, axis=0)[:, ::-1], n, tiny.n_users, 4, 2).items():
        for j, _ in nb:
            a[i, j] = 1
    d = a.sum(1).rsqrt()
    torch.testing.assert_close(model.view_adj[SESSION].csr.to_dense(), d[:, None] * a * d[None, :])
    ref_v, ref_t = _mmrec_denoised(*(torch.as_tensor(tiny.features[m]) for m in ("image", "text")), 3)
    torch.testing.assert_close(model.view_adj["image"].csr.to_dense(), ref_v)
    e = model.item_emb.weight
    views = [ref_v @ e, ref_t @ e, model.view_adj[SESSION].csr.to_dense() @ e]
    users, items = model.embeddings()
    lu, li = model.propagate()
    torch.testing.assert_close(users, lu)
    torch.testing.assert_close(items, li + sum(views) / 3, atol=1e-5, rtol=1e-5)


def _plain_nd(nb, nv, n_pseudo=10, temperature=0.2):
    """MMRec's neighbour discrimination over whole matrices: per view a softmax over all items, the pseudo-labels,
    the two-level InfoNCE, averaged over the views."""
    cos = [nb[v] @ nv[v].t() for v in range(nv.shape[0])]
    probs = torch.softmax(torch.stack([c.detach() for c in cos]), dim=-1)
    nd = 0
    for a in range(len(cos)):
        mm = torch.topk(probs.sum(0) + probs[a], n_pseudo, dim=-1).indices
        single = torch.topk(probs[a].clone().scatter_(1, mm, 0), n_pseudo, dim=-1).indices
        ex = lambda idx: ((nb[a].unsqueeze(1) * nv[a][idx]).sum(-1) / temperature).exp().sum(1)  # noqa: E731
        tot = (cos[a] / temperature).exp().sum(1)
        nd = nd + (-torch.log(ex(mm) / tot + 1e-9) - torch.log(ex(single) / (tot - ex(mm)) + 1e-9)).mean()
    return nd / len(cos)


def test_discrimination_matches_mmrec_row_by_row():
    """Pseudo-labels and loss as MMRec writes them, one row and one view at a time (scalar sums)."""
    torch.manual_seed(0)
    nv = F.normalize(torch.randn(3, 40, 8, dtype=torch.float64), dim=-1)
    iid = torch.tensor([1, 4, 9, 17, 33])
    nb = nv[:, iid]
    probs = torch.softmax(torch.bmm(nb, nv.transpose(1, 2)), -1)
    losses = []
    for own in range(3):
        others = [probs[v] for v in range(3) if v != own]
        mm = torch.topk(others[0] + others[1] + probs[own] + probs[own], 10, dim=-1).indices
        single = torch.topk(probs[own].clone().scatter_(1, mm, 0), 10, dim=-1).indices
        assert not set(mm[0].tolist()) & set(single[0].tolist())
        for b in range(len(iid)):
            ex = lambda j: torch.exp(nb[own, b] @ nv[own, j] / 0.2)   # noqa: E731
            pos1 = sum(ex(j) for j in mm[b])
            pos2 = sum(ex(j) for j in single[b])
            tot = sum(ex(j) for j in range(40))
            losses.append(-torch.log(pos1 / tot + 1e-9) - torch.log(pos2 / (tot - pos1) + 1e-9))
    torch.testing.assert_close(discrimination_loss(nb, nv, 10), torch.stack(losses).mean(), rtol=1e-12, atol=1e-12)


def test_feedback_weights_match_mmrec():
    torch.manual_seed(1)
    u, pos, neg = torch.randn(16, 8), torch.randn(3, 16, 8), torch.randn(3, 16, 8)
    p = torch.sigmoid(torch.stack([(u * F.normalize(pos[v], dim=-1)).sum(1) for v in range(3)]))
    q = torch.sigmoid(torch.stack([(u * F.normalize(neg[v], dim=-1)).sum(1) for v in range(3)]))
    w_pos = torch.clamp(p.mean(0) * torch.exp(-torch.var(p, dim=0)) ** 2, 0, 1)
    mask = (p.mean(0) < q.mean()).float()
    w_neg = torch.clamp((p.max(0).values - q.mean()) * mask, 0, 1)
    got = feedback_weights(u, pos, neg)
    torch.testing.assert_close(got[0], w_pos)
    torch.testing.assert_close(got[1], w_neg)
    assert mask.sum() > 0   # the negative branch is exercised


def test_damrs_loss_terms(tiny):
    torch.manual_seed(0)
    model = build_model("damrs", tiny, {"graph_cache": False, "kl_weight": 0.5, "neighbor_weight": 0.1})
    batch = _batch(tiny)
    out = model.loss(batch)
    t = out.terms
    torch.testing.assert_close(out.loss, t["bpr"] + 0.1 * t["nd"] + 0.5 * t["kl"])
    assert all(torch.isfinite(v) and v >= 0 for v in t.values())
    out.loss.backward()
    assert model.item_emb.weight.grad.abs().sum() > 0 and model.user_emb.weight.grad.abs().sum() > 0


def _plain_loss(model, batch):
    """The DA-MRS objective written as MMRec does (stacked softmax, clamped sigmoids, both Bernoulli KLs, the
    plain exp-sum), on the model's own representations."""
    users, items = model.propagate()
    views = model.views()
    fused = views.mean(0)
    uid, iid = torch.unique(batch.users), torch.unique(torch.cat([batch.pos, batch.neg]))
    nv = F.normalize(views, dim=-1)
    nd = _plain_nd(nv[:, iid], nv)
    ub = users[uid]
    p_g = torch.sigmoid(ub @ F.normalize(items[iid], dim=-1).t()).clamp(KL_EPS, 1 - KL_EPS)
    p_t = torch.sigmoid(ub @ F.normalize(fused[iid], dim=-1).t()).clamp(KL_EPS, 1 - KL_EPS)
    kl = (bernoulli_kl(p_g, p_t) + bernoulli_kl(p_t, p_g)).mean()
    eu = users[batch.users]
    w_pos, w_neg = feedback_weights(eu, views[:, batch.pos], views[:, batch.neg])
    item_all = items + fused
    diff = (eu * item_all[batch.pos]).sum(-1) - (eu * item_all[batch.neg]).sum(-1)
    bpr = -(F.logsigmoid(diff) * w_pos + F.logsigmoid(-diff) * w_neg).mean()
    return {"bpr": bpr, "nd": nd, "kl": kl}


def test_damrs_loss_and_gradients_equal_the_plain_formulas(tiny):
    """The optimised objective (one softmax buffer, the exp-sum's own backward, the KL pair as (p - q)(a - b))
    gives MMRec's formulas' terms and gradients."""
    torch.manual_seed(0)
    model = build_model("damrs", tiny, {"graph_cache": False, "kl_weight": 0.5, "neighbor_weight": 0.1}).double()
    with torch.no_grad():
        model.user_emb.weight.mul_(20)    # some scores past logit(1 - 1e-7): the clamps are exercised
    batch = _batch(tiny)
    params = [p for p in model.parameters() if p.requires_grad]
    got, ref = model.loss(batch).terms, _plain_loss(model, batch)
    for name in ("bpr", "nd", "kl"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-12)
        assert_same_gradients(got[name], ref[name], params, rtol=1e-8, atol=1e-12)


def test_symmetric_kl_equals_its_plain_form():
    g = torch.Generator().manual_seed(2)
    a = (torch.randn(7, 9, generator=g, dtype=torch.float64) * 12).requires_grad_()
    b = (torch.randn(7, 9, generator=g, dtype=torch.float64) * 12).requires_grad_()
    assert float((a.detach().abs() > 16.2).float().mean()) > 0.05     # a part of the entries is clamped
    p, q = (torch.sigmoid(x).clamp(KL_EPS, 1 - KL_EPS) for x in (a, b))
    ref = (bernoulli_kl(p, q) + bernoulli_kl(q, p)).sum()
    got = symmetric_bernoulli_kl(a, b).sum()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    for x, y in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(ref, (a, b))):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("block", [1, 4, 1000])
def test_blocked_discrimination_equals_the_whole_batch_form(block):
    g = torch.Generator().manual_seed(4)
    nv = F.normalize(torch.randn(3, 40, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    iid = torch.tensor([0, 3, 5, 7, 11, 12, 20, 39, 38])
    ref = _plain_nd(nv[:, iid], nv, 5)
    got = discrimination_loss(nv[:, iid], nv, 5, block=block)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(3 * got, nv)[0], torch.autograd.grad(3 * ref, nv)[0],
                               rtol=1e-10, atol=1e-12)
