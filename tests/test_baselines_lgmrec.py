"""LGMRec: the forward pass equals MMRec's dense formulas (with the Gumbel noise switched off), the
hypergraph InfoNCE equals its per-row definition, and the interaction matrices are normalised as stated."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.models import lgmrec as lg
from mmgraph.models.base import Batch
from mmgraph.train import build_model
from tests.helpers import assert_same_gradients


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=60, n_items=40, modalities={"image": 12, "text": 8}, seed=2)


def _model(ds, **kw):
    torch.manual_seed(0)
    return build_model("lgmrec", ds, {"graph_cache": False, **kw}, torch.device("cpu"))


def _dense_r(ds):
    r = torch.zeros(ds.n_users, ds.n_items)
    pairs = np.unique(ds.train, axis=0)
    r[pairs[:, 0], pairs[:, 1]] = 1
    return r


def _a_hat(r):
    n_u, n_i = r.shape
    a = torch.zeros(n_u + n_i, n_u + n_i)
    a[:n_u, n_u:], a[n_u:, :n_u] = r, r.t()
    d = (a.sum(1) + 1e-7).pow(-0.5)
    return d[:, None] * a * d[None, :]


def test_user_item_matrices(small):
    r = _dense_r(small)
    edges = torch.from_numpy(np.unique(small.train, axis=0).T.copy())
    torch.testing.assert_close(lg.user_item_matrix(edges, small.n_users, small.n_items).csr.to_dense(), r)
    mean = lg.user_item_matrix(edges, small.n_users, small.n_items, "mean").csr.to_dense()
    torch.testing.assert_close(mean, r / r.sum(1, keepdim=True))
    sym = lg.user_item_matrix(edges, small.n_users, small.n_items, "sym").csr.to_dense()
    torch.testing.assert_close(sym, _a_hat(r)[:small.n_users, small.n_users:], atol=1e-6, rtol=1e-5)


def test_hyper_infonce_matches_per_row_definition():
    g = torch.Generator().manual_seed(0)
    a, p, x = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    ref = 0.0
    for b in range(7):
        pos = torch.exp(F.cosine_similarity(a[b], p[b], dim=0) / 0.2)
        ttl = sum(torch.exp(F.cosine_similarity(a[b], x[j], dim=0) / 0.2) for j in range(11))
        ref = ref - torch.log(pos / ttl)
    torch.testing.assert_close(lg.hyper_infonce(a, p, x), ref, atol=1e-4, rtol=1e-5)


def test_forward_matches_dense_formulas_without_noise(small, monkeypatch):
    # Gumbel noise off: gumbel_softmax(logits, tau) becomes softmax(logits / tau)
    monkeypatch.setattr(lg.F, "gumbel_softmax", lambda x, tau, hard=False, dim=1: torch.softmax(x / tau, dim))
    model = _model(small).eval()
    r, a = _dense_r(small), _a_hat(_dense_r(small))
    n_u = small.n_users
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    cge = (x + a @ x + a @ a @ x) / 3
    local, ghe = cge.clone(), 0
    for m in ("image", "text"):
        feat = torch.from_numpy(small.features[m])
        items = feat @ model.trs[m].detach()
        users = (r @ items) / r.sum(1, keepdim=True)
        mge = a @ (a @ torch.cat([users, items]))
        local = local + F.normalize(mge, dim=1)
        ih = torch.softmax(feat @ model.hyper[m].detach() / 0.2, 1)
        uh = torch.softmax(r @ (feat @ model.hyper[m].detach()) / 0.2, 1)
        lat = ih.t() @ cge[n_u:]
        ghe = ghe + torch.cat([uh @ lat, ih @ lat])
    ref = local + 0.3 * F.normalize(ghe, dim=1)
    u, i = model.embeddings()
    torch.testing.assert_close(u, ref[:n_u], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i, ref[n_u:], atol=1e-5, rtol=1e-4)


def test_gumbel_noise_and_hyperedge_dropout(small):
    model = _model(small)
    h_users, h_items = model.hyperedges("image")
    torch.testing.assert_close(h_items.sum(1), torch.ones(small.n_items))
    assert h_users.shape == (small.n_users, 4)
    model.eval()
    u1, _ = model.embeddings()
    u2, _ = model.embeddings()
    assert not torch.allclose(u1, u2)       # MMRec draws the Gumbel noise at evaluation too


def test_loss_terms_and_gradients(small):
    model = _model(small, cl_weight=1.0)
    rng = np.random.default_rng(0)
    rows = small.train[rng.integers(0, len(small.train), 32)]
    batch = Batch(torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1]),
                  torch.from_numpy(rng.integers(0, small.n_items, 32)))
    out = model.loss(batch)
    assert set(out.terms) == {"bpr", "hcl", "reg"} and float(out.terms["hcl"].detach()) > 0
    out.loss.backward()
    for name in ("trs.image", "trs.text", "hyper.image", "hyper.text", "user_emb.weight", "item_emb.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    assert set(out.channels) == {"image", "text"}


@pytest.mark.parametrize("tau", [0.2, 0.01])   # the fused bounded path, and the logsumexp fallback
def test_hyper_infonce_gradients_match_autograd_reference(tau):
    g = torch.Generator().manual_seed(3)
    a, p, x = (torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True) for n in (9, 9, 13))

    def ref(a, p, x):
        an, pn, xn = F.normalize(a, dim=1), F.normalize(p, dim=1), F.normalize(x, dim=1)
        return (torch.logsumexp(an @ xn.t() / tau, 1) - (an * pn).sum(1) / tau).sum()

    ours = lg.hyper_infonce(a, p, x, tau)
    expect = ref(a, p, x)
    torch.testing.assert_close(ours, expect)
    for got, want in zip(torch.autograd.grad(ours, (a, p, x)), torch.autograd.grad(expect, (a, p, x))):
        torch.testing.assert_close(got, want)


def test_contrast_over_distinct_nodes_equals_the_per_row_sum(small, monkeypatch):
    monkeypatch.setattr(lg.F, "gumbel_softmax", lambda x, tau, hard=False, dim=1: torch.softmax(x / tau, dim))
    model = _model(small, keep_rate=1.0)
    users = torch.tensor([3, 3, 5, 7, 3, 5]); pos = torch.tensor([1, 2, 2, 2, 9, 1])
    out = model.loss(Batch(users, pos, torch.tensor([0, 4, 6, 8, 10, 12])))
    _, _, ghes = model.parts()
    ga, gb = ghes["image"], ghes["text"]
    rows = lg.hyper_infonce(ga.users[users], gb.users[users], gb.users) \
        + lg.hyper_infonce(ga.items[pos], gb.items[pos], gb.items)
    torch.testing.assert_close(out.terms["hcl"], rows)


@pytest.mark.parametrize("tau", [0.2, 0.01])
@pytest.mark.parametrize("rank", [3, 8])   # below d: the factored cosines; at d: the dense rows
def test_hyper_infonce_on_factored_rows_equals_the_dense_rows(tau, rank):
    g = torch.Generator().manual_seed(5)
    a, p = (torch.randn(9, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    factor = torch.rand(13, rank, generator=g, dtype=torch.float64)
    factor[[2, 7]] = 0.0                      # rows a dropout emptied: zero vectors, as F.normalize leaves them
    factor.requires_grad_(True)
    basis = torch.randn(rank, 8, generator=g, dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([1, 2, 1, 3, 1, 1, 2, 1, 1])
    ours = lg.hyper_infonce(a, p, (factor, basis), tau, counts=counts)
    ref = lg.hyper_infonce(a, p, factor @ basis, tau, counts=counts)
    torch.testing.assert_close(ours, ref)
    assert_same_gradients(ours, ref, [a, p, factor, basis], rtol=1e-7, atol=1e-9)


def test_evaluate_and_export_reproduce_the_runs_final_metrics_despite_evaluation_noise(tmp_path, capsys):
    # LGMRec draws Gumbel noise at evaluation (as MMRec): the final evaluation and `mmgraph evaluate` both
    # compute their embeddings from the run's seed, so they agree, and two exports are the same
    import json

    from mmgraph.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--method", "lgmrec", "--data", "synthetic:users=120,items=90", "--epochs", "2",
                 "--out", str(run), "--no-progress", "--set", "threads=1", "log_geometry=false"]) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    capsys.readouterr()
    for split in ("test", "valid"):
        assert main(["evaluate", str(run), "--split", split, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[split] == final[split]
    for name in ("a.csv", "b.csv"):
        assert main(["export", str(run), "--k", "5", "--output", str(tmp_path / name)]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
