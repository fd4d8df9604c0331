"""SMORE: the max-pooled fusion graph, the spectrum filters, the forward pass and the loss equal MMRec's
dense formulas on small data; per-modality k."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.losses import bpr_loss, unit_info_nce
from mmgraph.models.base import Batch
from mmgraph.models.smore import max_pool_graphs
from mmgraph.train import build_model
from tests.helpers import assert_same_gradients
from tests.test_baselines_lattice import dense_knn, dense_laplacian
from tests.test_baselines_lgmrec import _a_hat, _dense_r

K = {"image": 4, "text": 6}


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=60, n_items=40, modalities={"image": 12, "text": 8}, seed=6)


def _model(ds, **kw):
    torch.manual_seed(0)
    return build_model("smore", ds, {"graph_cache": False, "image_knn_k": K["image"], "text_knn_k": K["text"],
                                     **kw}, torch.device("cpu"))


def frozen(ds, m):
    return dense_laplacian(dense_knn(torch.from_numpy(ds.features[m]), K[m]))


def dense_max_pool(mats):
    """MMRec's max_pool_fusion on dense matrices: over the union of edges, the largest present weight."""
    present = torch.stack([a != 0 for a in mats])
    vals = torch.stack([torch.where(a != 0, a, torch.full_like(a, -float("inf"))) for a in mats]).max(0).values
    return torch.where(present.any(0), vals, torch.zeros_like(vals))


def test_per_modality_k_and_max_pool_fusion(small):
    model = _model(small)
    for m in ("image", "text"):
        g = model.item_graphs[m].csr.to_dense()
        assert int((g != 0).sum(1).max()) == K[m]
        torch.testing.assert_close(g, frozen(small, m), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.item_graphs["fusion"].csr.to_dense(),
                               dense_max_pool([frozen(small, "image"), frozen(small, "text")]), atol=1e-6, rtol=1e-5)


def test_max_pool_takes_the_largest_weight_of_shared_edges():
    a = (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([0.5, -0.2, 0.3]))
    b = (torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([-0.4, 0.7]))
    dense = max_pool_graphs([a, b], 2).csr.to_dense()
    torch.testing.assert_close(dense, torch.tensor([[0.5, -0.2], [0.7, 0.3]]))


def reference(model, ds):
    """MMRec SMORE.forward(train=True) in eval mode (no dropout), dense: (users, items, side, content)."""
    a = _a_hat(_dense_r(ds))
    n_u, d = ds.n_users, model.embedding_size
    r_hat = a[:n_u, n_u:]
    x = torch.cat([model.user_emb.weight, model.item_emb.weight])
    content = (x + a @ x + a @ a @ x + a @ a @ a @ x) / 4
    img, txt = model.modal.project("image"), model.modal.project("text")
    fi, ft = torch.fft.rfft(img, dim=1, norm="ortho"), torch.fft.rfft(txt, dim=1, norm="ortho")
    w = {k: torch.view_as_complex(model.filters[k]) for k in ("image", "text", "fusion")}
    conv = {"image": torch.fft.irfft(fi * w["image"], n=d, dim=1, norm="ortho"),
            "text": torch.fft.irfft(ft * w["text"], n=d, dim=1, norm="ortho"),
            "fusion": torch.fft.irfft(ft * fi * w["fusion"], n=d, dim=1, norm="ortho")}
    graphs = {"image": frozen(ds, "image"), "text": frozen(ds, "text")}
    graphs["fusion"] = dense_max_pool([graphs["image"], graphs["text"]])
    views = {}
    for k in ("image", "text", "fusion"):
        h = graphs[k] @ (model.item_emb.weight * torch.sigmoid(model.gate_item[k][0](conv[k])))
        views[k] = torch.cat([r_hat @ h, h])
    agg = {m: torch.softmax(model.query[m](views["fusion"]), dim=-1) * views[m] for m in ("image", "text")}
    pref = {k: torch.sigmoid(model.gate_prefer[k][0](content)) for k in ("image", "text", "fusion")}
    side = (pref["image"] * agg["image"] + pref["text"] * agg["text"] + pref["fusion"] * views["fusion"]) / 3
    final = content + side
    return final[:n_u], final[n_u:], side, content


def test_forward_matches_dense_reference(small):
    model = _model(small).eval()
    u_ref, i_ref, _, _ = reference(model, small)
    u, i = model.forward()
    torch.testing.assert_close(u, u_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i, i_ref, atol=1e-5, rtol=1e-4)


def _rows(ds, seed, n=48):
    """``(users, pos, neg)``: ``n`` random training pairs and uniform negatives."""
    rng = np.random.default_rng(seed)
    rows = ds.train[rng.integers(0, len(ds.train), n)]
    return torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1]), torch.from_numpy(rng.integers(0, ds.n_items, n))


def test_loss_matches_mmrec_formula(small):
    model = _model(small, cl_loss=0.1, reg_weight=1e-2, batch_size=64, temperature=0.5).eval()
    users, pos, neg = _rows(small, 1)
    out = model.loss(Batch(users, pos, neg))
    u, i, side, content = reference(model, small)
    eu, ep, en = u[users], i[pos], i[neg]
    bpr = -F.logsigmoid((eu * ep).sum(1) - (eu * en).sum(1)).mean()
    reg = 1e-2 * 0.5 * (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / 64

    def infonce(v1, v2, t=0.5):
        v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
        return -torch.log(torch.exp((v1 * v2).sum(-1) / t) / torch.exp(v1 @ v2.t() / t).sum(1)).mean()

    n_u = small.n_users
    cl = infonce(side[n_u:][pos], content[n_u:][pos]) + infonce(side[:n_u][users], content[:n_u][users])
    torch.testing.assert_close(out.loss, bpr + reg + 0.1 * cl, atol=1e-5, rtol=1e-4)
    assert set(out.channels) == {"image", "text", "fusion"}
    out.loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.filters.values())


def test_loss_gradients_equal_the_every_node_form(small):
    """The step's preference on the batch's distinct nodes and its InfoNCE on distinct rows with counts give
    the values and gradients of the every-node, repeated-rows form (float64)."""
    model = _model(small, cl_loss=0.1, reg_weight=1e-2, batch_size=64, temperature=0.5).double()
    users, pos, neg = _rows(small, 2)
    out = model.loss(Batch(users, pos, neg))
    content, side, _ = model.parts()
    n_u = small.n_users
    fin = content + side
    fu, fi = fin[:n_u], fin[n_u:]
    plain = bpr_loss((fu[users] * fi[pos]).sum(1), (fu[users] * fi[neg]).sum(1)) + \
        1e-2 * 0.5 * (fu[users].pow(2).sum() + fi[pos].pow(2).sum() + fi[neg].pow(2).sum()) / 64 + \
        0.1 * (unit_info_nce(side[n_u:][pos], content[n_u:][pos], 0.5) +
               unit_info_nce(side[:n_u][users], content[:n_u][users], 0.5))
    torch.testing.assert_close(out.loss, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.item_rows(neg), fi[neg], rtol=1e-12, atol=1e-12)
    assert_same_gradients(out.loss, plain, [p for p in model.parameters() if p.requires_grad],
                          rtol=1e-9, atol=1e-12)


def test_preference_dropout_only_in_training(small):
    model = _model(small, dropout_rate=0.5)
    torch.manual_seed(1)
    u1, _ = model.forward()
    u2, _ = model.forward()
    assert not torch.allclose(u1, u2)
    model.eval()
    torch.testing.assert_close(model.forward()[0], model.forward()[0])
