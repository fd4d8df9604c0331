"""LATTICE: the mixed learned / frozen item graph equals MMRec's dense construction (values and
gradients), the user-item adjacency is D^-1 (A + I), and the graph is rebuilt once per epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.models.base import Batch
from mmgraph.train import build_model


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=70, n_items=50, modalities={"image": 12, "text": 8}, seed=3)


def _model(ds, **kw):
    torch.manual_seed(0)
    return build_model("lattice", ds, {"graph_cache": False, "knn_k": 5, **kw}, torch.device("cpu"))


# ---- MMRec's dense formulas (utils.build_sim / build_knn_neighbourhood / compute_normalized_laplacian)
def dense_knn(x, k):
    xn = x / x.norm(dim=-1, keepdim=True)
    sim = xn @ xn.t()
    val, ind = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter_(-1, ind, val)


def dense_laplacian(adj):
    d = adj.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0
    return torch.diag(d) @ adj @ torch.diag(d)


def dense_reference(model, ds, k, lam):
    w = torch.softmax(model.modal_weight, 0)
    learned, frozen = 0, 0
    for j, m in enumerate(model.modal.modalities):
        learned = learned + w[j] * dense_knn(model.modal.project(m), k)
        frozen = frozen + w[j] * dense_laplacian(dense_knn(torch.from_numpy(ds.features[m]), k))
    return (1 - lam) * dense_laplacian(learned) + lam * frozen


@pytest.mark.parametrize("lam", [0.9, 0.3])
def test_item_graph_matches_dense_mmrec_construction(small, lam):
    model = _model(small, lambda_coeff=lam)
    ours = model.item_graph().to_dense()
    ref = dense_reference(model, small, 5, lam)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    # never more than k learned + k frozen neighbours per item and modality
    assert int((ours != 0).sum(1).max()) <= 2 * 5 * len(small.features)


def test_item_graph_gradients_match_dense_reference(small):
    model = _model(small)
    probe = torch.randn(small.n_items, small.n_items, generator=torch.Generator().manual_seed(1))
    (model.item_graph().to_dense() * probe).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (dense_reference(model, small, 5, 0.9) * probe).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == set(ref) and "modal_weight" in ours and any(n.startswith("modal.proj") for n in ours)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-3)


def test_item_branch_uses_the_sparse_graph_like_a_dense_product(small):
    model = _model(small)
    graph = model.item_graph()
    dense = graph.to_dense().detach()
    torch.testing.assert_close(model.item_branch(graph), dense @ model.item_emb.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.item_branch(graph.detached()), dense @ model.item_emb.weight,
                               atol=1e-5, rtol=1e-4)


def test_user_item_adjacency_is_random_walk_with_self_loops(small):
    model = _model(small)
    n_u, n_i = small.n_users, small.n_items
    a = torch.zeros(n_u + n_i, n_u + n_i)
    pairs = np.unique(small.train, axis=0)
    a[pairs[:, 0], pairs[:, 1] + n_u] = 1
    a[pairs[:, 1] + n_u, pairs[:, 0]] = 1
    a = a + torch.eye(n_u + n_i)
    ref = a / a.sum(1, keepdim=True)
    torch.testing.assert_close(model.adj.csr.to_dense(), ref)
    # forward = mean over layers 0..len(weight_size) of the propagated embeddings + norm(item branch)
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    layers = [x, ref @ x, ref @ ref @ x]
    mean = sum(layers) / 3
    u, i = model.forward()
    h = dense_reference(model, small, 5, 0.9).detach() @ model.item_emb.weight.detach()
    torch.testing.assert_close(u, mean[:n_u], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i, mean[n_u:] + F.normalize(h, dim=1), atol=1e-5, rtol=1e-4)


def test_graph_is_rebuilt_with_gradient_once_per_epoch(small):
    model = _model(small)
    rng = np.random.default_rng(0)
    rows = small.train[rng.integers(0, len(small.train), 64)]
    batch = Batch(torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1]),
                  torch.from_numpy(rng.integers(0, small.n_items, 64)))
    proj = next(iter(model.modal.proj.values())).weight

    def step():
        model.zero_grad()
        model.loss(batch).loss.backward()
        return proj.grad is not None and bool(proj.grad.abs().sum() > 0)

    model.on_epoch_start(0)
    assert step()                      # the building step: gradient into the projections
    assert not step()                  # the rest of the epoch: the graph is fixed
    assert model.item_emb.weight.grad.abs().sum() > 0
    model.on_epoch_start(1)
    assert step()


def test_mf_variant_and_bad_cf_model(small):
    model = _model(small, cf_model="mf")
    u, i = model.forward()
    torch.testing.assert_close(u, model.user_emb.weight)
    from mmgraph.errors import ConfigError
    with pytest.raises(ConfigError, match="cf_model"):
        _model(small, cf_model="ngcf")
