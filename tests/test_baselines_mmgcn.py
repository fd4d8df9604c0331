"""MMGCN: it learns (plug-ins: tests/test_baselines.py), and its layers, frozen-embedding switch and loss match brute
force."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmgraph.models.mmgcn import mean_adj
from mmgraph.train import build_model, load_config, train
from tests.helpers import BASELINE_TRAIN as TRAIN, mmrec_interleaved_bpr, popularity_recall, random_batch as _batch


def _dense_mean(ds):
    U, n = ds.n_users, ds.n_users + ds.n_items
    a = torch.zeros(n, n)
    for u, i in {tuple(r) for r in ds.train.tolist()}:
        a[u, U + i] = a[U + i, u] = 1.0
    return a / a.sum(1, keepdim=True).clamp(min=1)


def test_mmgcn_beats_popularity(synth):
    # MMGCN's stacked non-linear layers converge slowly (best epoch near 50). Its margin over MF on this data
    # depends on the CPU's float rounding (0.351 vs MF 0.389 on one machine, above MF on another), so the
    # test asserts learning only, with a clear margin over popularity
    result, _ = train("mmgcn", synth, load_config("mmgcn", overrides={**TRAIN, "epochs": 80, "patience": 10}),
                      progress=False)
    assert result["test"]["recall@20"] > popularity_recall(synth) + 0.05


def test_mean_adjacency_is_the_neighbour_mean(tiny):
    import numpy as np
    ei = torch.from_numpy(np.unique(tiny.train, axis=0).T.copy())
    adj = mean_adj(ei, tiny.n_users, tiny.n_items)
    torch.testing.assert_close(adj.csr.to_dense(), _dense_mean(tiny))


def test_mmgcn_forward_matches_brute_force(tiny):
    torch.manual_seed(0)
    model = build_model("mmgcn", tiny, {"graph_cache": False, "dim_latent": {"image": 7}})
    a = _dense_mean(tiny)
    reps = []
    for m in model.modalities:
        g = model.gcn[m]
        feat = model.features.raw(m)
        assert (g.mlp is not None) == (m == "image")
        x = F.normalize(torch.cat([g.preference, g.mlp(feat) if g.mlp is not None else feat]))
        assert x.shape[1] == (7 if m == "image" else 5)
        for w, lin, comb in zip(g.conv_weight, g.linear, g.combine):
            h = F.leaky_relu(a @ (x @ w))
            x_hat = F.leaky_relu(lin(x)) + model.id_emb
            x = F.leaky_relu(comb(torch.cat([h, x_hat], 1)))
        reps.append(x)
    ref = torch.stack(reps).mean(0)
    users, items = model.embeddings()
    torch.testing.assert_close(torch.cat([users, items]), ref, atol=1e-5, rtol=1e-5)
    assert len(model.gcn["text"].conv_weight) == 3


def test_mmgcn_loss_is_mmrec_bpr_plus_reg(tiny):
    torch.manual_seed(0)
    model = build_model("mmgcn", tiny, {"reg_weight": 0.01, "graph_cache": False})
    batch = _batch(tiny)
    out = model.loss(batch)
    U = tiny.n_users
    users, items = model()   # the full tables; the loss builds only the batch's rows of the last layer
    bpr, user_tensor, item_tensor = mmrec_interleaved_bpr(SimpleNamespace(user_emb=users, item_emb=items), batch, U)
    reg = (model.id_emb[user_tensor] ** 2 + model.id_emb[item_tensor] ** 2).mean()
    reg = reg + (model.gcn["image"].preference ** 2).mean()
    torch.testing.assert_close(out.loss, bpr + 0.01 * reg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_embeddings_stay_at_their_draw(tiny, frozen):
    torch.manual_seed(0)
    model = build_model("mmgcn", tiny, {"frozen_embeddings": frozen, "graph_cache": False})
    before = model.id_emb.detach().clone(), model.gcn["text"].preference.detach().clone()
    names = {n for n, _ in model.named_parameters()}
    assert ("id_emb" in names) == (not frozen) and ("gcn.text.preference" in names) == (not frozen)
    assert "id_emb" in model.state_dict()   # saved either way
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(_batch(tiny)).loss.backward()
    opt.step()
    assert torch.equal(model.id_emb, before[0]) == frozen
    assert torch.equal(model.gcn["text"].preference, before[1]) == frozen



def test_mmgcn_loss_on_batch_rows_equals_the_full_tables(tiny):
    """The loss finishes the last layer only on the rows it needs: the same loss, gradients and rows (final and per
    modality, for plug-ins) as the full ``[U + I, d]`` tables."""
    from mmgraph.losses import bpr_loss
    torch.manual_seed(0)
    model = build_model("mmgcn", tiny, {"reg_weight": 0.01, "graph_cache": False})
    batch = _batch(tiny)
    out = model.loss(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    parts = model.parts()
    users, items = model._split(parts)
    eu = users[batch.users]
    U = tiny.n_users
    _, user_tensor, item_tensor = mmrec_interleaved_bpr(SimpleNamespace(user_emb=users, item_emb=items), batch, U)
    reg = (model.id_emb[user_tensor] ** 2 + model.id_emb[item_tensor] ** 2).mean()
    reg = reg + (model.gcn["image"].preference ** 2).mean()
    ref = bpr_loss((eu * items[batch.pos]).sum(-1), (eu * items[batch.neg]).sum(-1)) + 0.01 * reg
    torch.testing.assert_close(out.loss, ref)
    ref.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5, msg=name)
    ids = torch.tensor([0, 3, 3, 1])
    torch.testing.assert_close(out.user_rows(ids), users[ids])
    torch.testing.assert_close(out.item_rows(ids), items[ids])
    for m in model.modalities:
        torch.testing.assert_close(out.channel(m).user_rows(ids), parts[m][ids])
        torch.testing.assert_close(out.channel(m).item_rows(ids), parts[m][U + ids])


def test_dim_latent_for_an_absent_modality_is_reported(tiny, caplog):
    cfg = load_config("mmgcn")
    with caplog.at_level("INFO", logger="mmgraph.models.mmgcn"):
        build_model("mmgcn", tiny, {**cfg, "dim_latent": {"txt": 8}})
    assert [r.levelname for r in caplog.records if "dim_latent names txt" in r.message] == ["WARNING"]


def _brute_force_parts(model, a):
    """Every modality's output ``[U + I, d]`` straight from the layer formulas (``x^0`` formed and normalised)."""
    reps = {}
    for m in model.modalities:
        g = model.gcn[m]
        feat = model.features.raw(m)
        x = F.normalize(torch.cat([g.preference, g.mlp(feat) if g.mlp is not None else feat]))
        for w, lin, comb in zip(g.conv_weight, g.linear, g.combine):
            h = F.leaky_relu(a @ (x @ w))
            x = F.leaky_relu(comb(torch.cat([h, F.leaky_relu(lin(x)) + model.id_emb], 1)))
        reps[m] = x
    return reps


@pytest.mark.parametrize("n_layers", [1, 2])
def test_first_layer_from_raw_features_has_the_brute_force_values_and_gradients(tiny, n_layers):
    """With a latent width the items' first-layer products come from the raw features without forming
    ``norm(X W_mlp^T + b)`` (``ModalityGCN._first_layer``): the same outputs and parameter gradients (the MLP's
    included) as the layer formulas, for a one-layer stack (the last layer's Linear already applied) too."""
    torch.manual_seed(1)
    model = build_model("mmgcn", tiny, {"graph_cache": False, "dim_latent": {"image": 9}, "n_layers": n_layers})
    image, text = model.gcn["image"], model.gcn["text"]
    assert image._factored_items(6) and text.mlp is None          # image: 6 -> 9, factored; text raw
    with torch.no_grad():
        image.mlp.bias.mul_(20)            # |b| well above |W x|: the norm's cross and bias terms matter
    parts = model.parts()
    weights = {m: torch.randn_like(p) for m, p in parts.items()}
    sum((parts[m] * weights[m]).sum() for m in parts).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = _brute_force_parts(model, _dense_mean(tiny))
    for m in parts:
        torch.testing.assert_close(parts[m], ref[m], atol=1e-5, rtol=1e-5)
    sum((ref[m] * weights[m]).sum() for m in ref).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=2e-5, rtol=1e-4, msg=name)
    assert got["gcn.image.mlp.weight"].abs().sum() > 0


def test_first_layer_keeps_the_formed_rows_where_they_are_cheaper(tiny):
    model = build_model("mmgcn", tiny, {"graph_cache": False, "dim_latent": {"image": 4}})
    image = model.gcn["image"]
    # width 4 from 6-d features, d = 64: forming the rows costs 6 * 4 + 4 * 68 = 296 multiply-adds a row, the
    # factored form 6 * (4 + 64 + 6 + 1) = 450
    assert not image._factored_items(6)
    with torch.no_grad():
        ref = _brute_force_parts(model, _dense_mean(tiny))["image"]
        torch.testing.assert_close(model.parts()["image"], ref, atol=1e-5, rtol=1e-5)


def test_first_layer_zero_feature_row_normalises_to_zero_like_f_normalize(tiny):
    """A zero latent row (zero feature, zero bias) has norm 0 < eps: ``F.normalize`` keeps it 0, so must the
    factored form (no inf or nan)."""
    import copy
    data = copy.deepcopy(tiny)
    model = build_model("mmgcn", data, {"graph_cache": False, "dim_latent": {"image": 9}, "n_layers": 1})
    image = model.gcn["image"]
    with torch.no_grad():
        image.mlp.bias.zero_()
    feat = model.features.raw("image").clone()
    feat[0] = 0
    conv, lin = image._first_layer(feat)
    assert torch.isfinite(conv).all() and torch.isfinite(lin).all()
    U = tiny.n_users
    torch.testing.assert_close(conv[U], torch.zeros_like(conv[U]))
    torch.testing.assert_close(lin[U], image.linear[0].bias)
