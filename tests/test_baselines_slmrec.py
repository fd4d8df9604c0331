"""SLMRec: branches, fusion, the main InfoNCE and the FAC chain equal MMRec's formulas on small data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError
from mmgraph.models.base import Batch
from mmgraph.train import build_model
from tests.helpers import assert_same_gradients
from tests.test_baselines_lgmrec import _a_hat, _dense_r


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=60, n_items=40, modalities={"text": 8, "image": 12}, seed=8)


def _model(ds, **kw):
    torch.manual_seed(0)
    return build_model("slmrec", ds, {"graph_cache": False, **kw}, torch.device("cpu"))


def test_branches_and_fusion_match_dense_lightgcn(small):
    model = _model(small)
    assert model.mods == ["image", "text"]            # image first (MMRec's v), then the other file (t)
    a = _a_hat(_dense_r(small))
    n_u = small.n_users

    def lgcn(x):
        out, layers = x, [x]
        for _ in range(3):
            out = a @ out
            layers.append(out)
        return sum(layers) / 4

    ue, ie = model.user_emb.weight, model.item_emb.weight
    views = [lgcn(torch.cat([ue, ie]))]
    for m in ("image", "text"):
        x = F.normalize(torch.from_numpy(small.features[m]), dim=1)
        views.append(lgcn(torch.cat([ue, model.dense[m](x)])))
    u_ref = model.user_fuse(torch.cat([v[:n_u] for v in views], 1))
    i_ref = model.item_fuse(torch.cat([v[n_u:] for v in views], 1))
    u, i = model.forward()
    torch.testing.assert_close(u, u_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i, i_ref, atol=1e-5, rtol=1e-4)
    bu, bi = model.branches()
    torch.testing.assert_close(bi[:, 2], views[2][n_u:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_matches_mmrec_fac_chain(small, dtype):
    """The loss (fused on the batch's rows, FAC on the distinct positives with counts) equals MMRec's formula
    over every node and the batch's repeated rows; in float64 every gradient too."""
    model = _model(small, ssl_alpha=0.5, temp=0.3, ssl_temp=0.7).to(dtype)
    rng = np.random.default_rng(2)
    rows = small.train[rng.integers(0, len(small.train), 32)]
    users, pos = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    out = model.loss(Batch(users, pos, torch.from_numpy(rng.integers(0, small.n_items, 32))))
    bu, bi = model.branches()
    u, i = model.fuse(bu, bi)
    labels = torch.arange(32)
    main = F.cross_entropy(F.normalize(u[users], dim=1) @ F.normalize(i[pos], dim=1).t() / 0.3, labels)
    # MMRec's names: g_i_iv, g_v_iv, g_iv_iva, g_iva_ivat, g_t_ivat
    g_i_iv, g_iv_iva, g_iva_ivat = model.fac.steps
    g_v_iv, g_t_ivat = model.fac.targets["image"], model.fac.targets["text"]
    x_i_iv = g_i_iv(bi[pos, 0])
    v_loss = F.cross_entropy(x_i_iv @ g_v_iv(bi[pos, 1]).t() / 0.7, labels)
    x_iva_ivat = g_iva_ivat(g_iv_iva(x_i_iv))
    t_loss = F.cross_entropy(x_iva_ivat @ g_t_ivat(bi[pos, 2]).t() / 0.7, labels)
    assert g_iva_ivat.out_features == g_t_ivat.out_features == 32
    ref = main + 0.5 * (v_loss + t_loss)
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-4)
    assert set(out.channels) == {"id", "image", "text"}
    torch.testing.assert_close(out.item_rows(pos), i[pos], atol=1e-6, rtol=1e-5)
    if dtype == torch.float64:
        assert len(torch.unique(pos)) < len(pos)       # repeated positives: the counts path is exercised
        torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
        assert_same_gradients(out.loss, ref, [p for p in model.parameters() if p.requires_grad],
                              rtol=1e-9, atol=1e-12)
    out.loss.backward()
    assert model.dense["text"].weight.grad.abs().sum() > 0


def test_three_modalities_keep_the_middle_term_and_unknown_tasks_fail():
    ds = make_synthetic(n_users=40, n_items=30, modalities={"image": 6, "audio": 5, "text": 4}, seed=1)
    model = _model(ds)
    assert model.fac.plan == ["image", "audio", "text"] and set(model.fac.targets) == {"image", "audio", "text"}
    with pytest.raises(ConfigError, match="ssl_task"):
        _model(ds, ssl_task="FD")
