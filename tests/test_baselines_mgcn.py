"""MGCN: the forward pass and the loss equal MMRec's dense formulas on small data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.losses import bpr_loss
from mmgraph.models.base import Batch
from mmgraph.train import build_model
from tests.helpers import assert_same_gradients
from tests.test_baselines_lattice import dense_knn, dense_laplacian
from tests.test_baselines_lgmrec import _a_hat, _dense_r


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=60, n_items=40, modalities={"image": 12, "text": 8}, seed=4)


def _model(ds, **kw):
    torch.manual_seed(0)
    return build_model("mgcn", ds, {"graph_cache": False, "knn_k": 5, **kw}, torch.device("cpu"))


def reference(model, ds):
    """MMRec MGCN.forward(train=True) with dense matrices: (users, items, side, content)."""
    a = _a_hat(_dense_r(ds)).to(model.user_emb.weight.dtype)
    n_u = ds.n_users
    r_hat = a[:n_u, n_u:]
    x = torch.cat([model.user_emb.weight, model.item_emb.weight])
    content = (x + a @ x + a @ a @ x) / 3
    views = []
    for m in ("image", "text"):
        feats = model.modal.project(m)
        h = model.item_emb.weight * torch.sigmoid(model.gate_item[m][0](feats))
        s = dense_laplacian(dense_knn(torch.from_numpy(ds.features[m]), 5)).to(h.dtype)
        h = s @ h
        views.append(torch.cat([r_hat @ h, h]))
    att = torch.softmax(torch.cat([model.query_common(v) for v in views], dim=-1), dim=-1)
    common = att[:, :1] * views[0] + att[:, 1:] * views[1]
    sep = [torch.sigmoid(model.gate_prefer[m][0](content)) * (v - common) for m, v in zip(("image", "text"), views)]
    side = (sep[0] + sep[1] + common) / 3
    final = content + side
    return final[:n_u], final[n_u:], side, content


def test_forward_matches_dense_reference(small):
    model = _model(small)
    u_ref, i_ref, _, _ = reference(model, small)
    u, i = model.forward()
    torch.testing.assert_close(u, u_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i, i_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_matches_mmrec_formula(small, dtype):
    """The loss (fused on the batch's distinct nodes, InfoNCE on distinct rows with counts) and, in float64,
    every parameter's gradient equal MMRec's formula over all nodes with the batch's repeated rows."""
    model = _model(small, cl_loss=0.1, reg_weight=1e-2, batch_size=64).to(dtype)
    rng = np.random.default_rng(1)
    rows = small.train[rng.integers(0, len(small.train), 48)]
    users, pos = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    neg = torch.from_numpy(rng.integers(0, small.n_items, 48))
    out = model.loss(Batch(users, pos, neg))
    u, i, side, content = reference(model, small)
    eu, ep, en = u[users], i[pos], i[neg]
    bpr = -F.logsigmoid((eu * ep).sum(1) - (eu * en).sum(1)).mean()
    reg = 1e-2 * 0.5 * (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / 64   # MMRec divides by train_batch_size

    def infonce(v1, v2, t=0.2):
        v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
        pos_s = torch.exp((v1 * v2).sum(-1) / t)
        return -torch.log(pos_s / torch.exp(v1 @ v2.t() / t).sum(1)).mean()

    n_u = small.n_users
    cl = infonce(side[n_u:][pos], content[n_u:][pos]) + infonce(side[:n_u][users], content[:n_u][users])
    ref = bpr + reg + 0.1 * cl
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-4)
    assert set(out.channels) == {"image", "text"}
    torch.testing.assert_close(out.item_rows(pos), i[pos], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.user_rows(users), u[users], atol=1e-5, rtol=1e-4)
    if dtype == torch.float64:
        # gradients against the same formula on the model's own graphs (every node fused, repeated rows)
        content, views = model.views()
        side = model.side(content, views)
        fin = content + side
        fu, fi = fin[:n_u], fin[n_u:]
        s_p, s_n = (fu[users] * fi[pos]).sum(1), (fu[users] * fi[neg]).sum(1)
        plain = bpr_loss(s_p, s_n) + \
            1e-2 * 0.5 * (fu[users].pow(2).sum() + fi[pos].pow(2).sum() + fi[neg].pow(2).sum()) / 64 + \
            0.1 * (infonce(side[n_u:][pos], content[n_u:][pos]) + infonce(side[:n_u][users], content[:n_u][users]))
        torch.testing.assert_close(out.loss, plain, rtol=1e-12, atol=1e-12)
        assert_same_gradients(out.loss, plain, [p for p in model.parameters() if p.requires_grad],
                              rtol=1e-9, atol=1e-12)
    out.loss.backward()
    assert model.modal.tables["image"].grad.abs().sum() > 0     # MMRec fine-tunes the feature tables
