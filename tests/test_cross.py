"""CROSS / FETTLE plug-in: direction sets, DT sign, Sinkhorn, CNA neighbours, losses vs brute force,
zero weights leave the backbone untouched, every backbone trains with it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError
from mmgraph.models.base import Batch
from mmgraph.plugins import available_plugins, get_plugin_class
from mmgraph.plugins.cross import (CROSS, FETTLE, batch_items, compensation, direction_sets, item_strengths,
                                   sinkhorn)
from mmgraph.train.config import load_config
from mmgraph.train.run import build_model, build_plugins, train
from mmgraph.train.trainer import Trainer
from tests.test_graph_cooccurrence import dense_reference


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n_users=120, n_items=90, seed=5)


def _config(method="lightgcn", **kw):
    over = {"plugins": ["cross"], "seed": 4, "log_geometry": False, "graph_cache": False, "batch_size": 256,
            "cross_prototypes": 32, **kw}
    return {k: v for k, v in load_config(method, overrides=over).items() if k != "grid"}


def _build(ds, method="lightgcn", **kw):
    cfg = _config(method, **kw)
    model = build_model(method, ds, cfg, torch.device("cpu"))
    return model, build_plugins(cfg, ds, model)[0], cfg


def _batch(ds, n=200, seed=0):
    rng = np.random.default_rng(seed)
    rows = ds.train[rng.integers(0, len(ds.train), size=n)]
    neg = rng.integers(0, ds.n_items, size=n)
    return Batch(torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1]), torch.from_numpy(neg))


# ------------------------------------------------------------------------------ direction sets
S_ID = [0.5, 0.1, 0.3]
S_IMG = [0.49, 0.9, 0.1]


def _pop_var(xs):
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / len(xs)


def test_direction_sets_without_compensation_fettle():
    s = torch.tensor([S_ID, S_IMG])
    d = direction_sets(s, "oneway")
    # a -> b iff s_b > s_a: item 0 img -> id, item 1 id -> img, item 2 img -> id
    assert d[0, 1].tolist() == [False, True, False]      # id -> img
    assert d[1, 0].tolist() == [True, False, True]       # img -> id
    assert not d[0, 0].any() and not d[1, 1].any()


def test_direction_sets_with_compensation_by_hand():
    s = torch.tensor([S_ID, S_IMG], dtype=torch.float64)
    g_id = [_pop_var(S_ID) * (math.exp(1 - x) - 1) for x in S_ID]
    g_img = [_pop_var(S_IMG) * (math.exp(1 - x) - 1) for x in S_IMG]
    torch.testing.assert_close(compensation(s), torch.tensor([g_id, g_img], dtype=torch.float64))
    d = direction_sets(s, "dynamic")
    expect_id_img = [S_IMG[i] + g_img[i] > S_ID[i] for i in range(3)]
    expect_img_id = [S_ID[i] + g_id[i] > S_IMG[i] for i in range(3)]
    assert d[0, 1].tolist() == expect_id_img
    assert d[1, 0].tolist() == expect_img_id
    # item 0 (0.5 vs 0.49, large image variance): the compensation makes the alignment bidirectional
    assert expect_id_img[0] and expect_img_id[0]
    assert d[0, 1].tolist() == [True, True, False] and d[1, 0].tolist() == [True, False, True]


def test_direction_sets_three_modalities_and_bidirectional():
    s = torch.tensor([[0.2, 0.8], [0.5, 0.1], [0.9, 0.4]])
    d = direction_sets(s, "oneway")
    for a in range(3):
        for b in range(3):
            for i in range(2):
                assert bool(d[a, b, i]) == (a != b and float(s[b, i]) > float(s[a, i]))
    # equal strengths: no direction without compensation
    assert not direction_sets(torch.full((3, 4), 0.3), "oneway").any()
    bi = direction_sets(s, "bidirectional")
    assert bi.sum() == 3 * 2 * 2 and not bi[torch.arange(3), torch.arange(3)].any()
    with pytest.raises(ConfigError):
        direction_sets(s, "topmost")


def test_item_strengths_match_loop():
    g = torch.Generator().manual_seed(0)
    users = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    pos = torch.tensor([3, 1, 3, 7, 1, 3, 9, 9, 2, 7, 3, 1])
    items, inv, counts = batch_items(pos)
    emb = F.normalize(torch.randn(3, len(items), 8, generator=g), dim=-1)
    s = item_strengths(users, emb, inv, counts)
    for m in range(3):
        for k, it in enumerate(items.tolist()):
            rows = (pos == it).nonzero().squeeze(1)
            ref = torch.stack([users[r] @ emb[m, k] for r in rows]).mean()
            torch.testing.assert_close(s[m, k], ref)


# ------------------------------------------------------------------------------ Sinkhorn
def _swav_reference(scores, eps, iters):
    q = torch.exp(scores.double() / eps).t()
    q /= q.sum()
    p, n = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True)
        q /= p
        q /= q.sum(0, keepdim=True)
        q /= n
    return (q * n).t()


@pytest.mark.parametrize("n,p", [(40, 16), (16, 40), (100, 100)])
def test_sinkhorn_marginals(n, p):
    g = torch.Generator().manual_seed(n + p)
    scores = F.normalize(torch.randn(n, 8, generator=g), dim=-1) @ F.normalize(torch.randn(p, 8, generator=g),
                                                                                dim=-1).t()
    q = sinkhorn(scores, 0.05, 3)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(n), atol=1e-5, rtol=0)   # each sample: one unit of mass
    torch.testing.assert_close(q.double(), _swav_reference(scores, 0.05, 3), atol=1e-5, rtol=1e-4)
    # run to convergence: every prototype gets the same mass n / P
    q = sinkhorn(scores, 0.05, 300)
    torch.testing.assert_close(q.sum(1), torch.ones(n), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((p,), n / p), atol=1e-3, rtol=1e-3)
    # scale: the codes of scale * scores, without modifying the scores unless inplace
    kept = scores.clone()
    scaled = sinkhorn(scores, 0.05, 3, scale=torch.tensor(0.3))
    torch.testing.assert_close(scaled, sinkhorn(scores * 0.3, 0.05, 3))
    assert torch.equal(scores, kept)
    torch.testing.assert_close(sinkhorn(scores.clone(), 0.05, 3, inplace=True, scale=0.3), scaled)
    with pytest.raises(ValueError, match="scale / eps > 0"):
        sinkhorn(scores, 0.05, 3, scale=0.0)


# ------------------------------------------------------------------------------ CNA neighbours
def test_cna_neighbours_equal_bruteforce_topk(synth):
    _, plugin, _ = _build(synth, cross_k=4)
    ref_idx, _, _ = dense_reference(synth.train, synth.n_users, synth.n_items, 4)
    np.testing.assert_array_equal(plugin.neighbors.numpy(), ref_idx)


def test_cna_loss_matches_equation_9(synth):
    model, plugin, _ = _build(synth, cross_alpha=0.0, cross_beta=0.0, cross_gamma=1.0, cross_k=3)
    batch = _batch(synth, seed=3)
    out = model.loss(batch)
    got = plugin.loss(batch, out)
    assert set(got) == {"cna"}
    # brute force: per modality, per distinct item with >= 1 neighbour
    i_all = out.item_emb
    items = torch.unique(batch.pos)
    emb_all = {"id": F.normalize(i_all, dim=-1)}
    for m in synth.features:
        emb_all[m] = F.normalize(plugin.proj[m](plugin.feats.table(m)), dim=-1)
    lam = plugin.lambda_n
    total = 0.0
    for m, e in emb_all.items():
        terms = []
        for i in items.tolist():
            nb = [j for j in plugin.neighbors[i].tolist() if j >= 0]
            if not nb:
                continue
            target = F.normalize(torch.stack([e[j] for j in nb]).mean(0), dim=-1)
            num = (e[i] @ target) / lam
            den = torch.logsumexp(torch.stack([e[i] @ e[j] / lam for j in items.tolist()]), 0)
            terms.append(den - num)
        total = total + torch.stack(terms).mean()
    torch.testing.assert_close(got["cna"], total / len(emb_all), rtol=1e-4, atol=1e-5)
    params = [p for p in list(plugin.parameters()) + list(model.parameters()) if p.requires_grad]
    for a, r in zip(torch.autograd.grad(got["cna"], params, allow_unused=True, retain_graph=True),
                    torch.autograd.grad(total / len(emb_all), params, allow_unused=True)):
        if r is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------ ILDA / DT / CLA vs loops
def test_ilda_and_dt_match_per_item_loops(synth):
    model, plugin, _ = _build(synth, cross_cna=False, cross_cla=False, cross_alpha=1.0)
    batch = _batch(synth, seed=1)
    out = model.loss(batch)
    got = plugin.loss(batch, out)
    items, inv, counts = batch_items(batch.pos)
    emb = plugin.modality_embeddings(out, items)
    u = F.normalize(out.user_emb[batch.users], dim=-1)
    s = item_strengths(u, torch.stack(emb), inv, counts).detach()      # strengths: no gradient
    d = direction_sets(s, "dynamic")
    mods = plugin.modalities
    tau = plugin.lambda_f.value
    teacher = [e.detach() for e in emb]                                  # sg(j^b)
    n, n_dirs = len(items), len(mods) * (len(mods) - 1)
    ilda, dt = 0.0, 0.0
    for a in range(len(mods)):
        for b in range(len(mods)):
            if a == b:
                continue
            w = plugin.maps[f"{mods[a]}_to_{mods[b]}"].weight
            for k in range(n):
                if not d[a, b, k]:
                    continue
                f = F.normalize(emb[a][k] + w @ emb[a][k], dim=0)
                logits = torch.stack([f @ teacher[b][j] for j in range(n)]) / tau
                ilda = ilda - torch.log_softmax(logits, 0)[k]
                rows = (inv == k).nonzero().squeeze(1)
                post = torch.stack([u[r].detach() @ f for r in rows]).mean()   # sg(u)
                dt = dt - (post - s[a, k])
    torch.testing.assert_close(got["ilda"], ilda / (n_dirs * n), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["dt"], dt / (n_dirs * n), rtol=1e-4, atol=1e-6)
    # the same gradients (maps, temperature, projections, backbone)
    params = [p for p in list(plugin.parameters()) + list(model.parameters()) if p.requires_grad]
    for term, ref in (("ilda", ilda), ("dt", dt)):
        for a, r in zip(torch.autograd.grad(got[term], params, allow_unused=True, retain_graph=True),
                        torch.autograd.grad(ref / (n_dirs * n), params, allow_unused=True, retain_graph=True)):
            if r is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-6)


def test_ilda_teacher_is_stop_gradient(synth, monkeypatch):
    import mmgraph.plugins.cross as cross_mod
    _, plugin, _ = _build(synth, cross_dt=False)
    batch = _batch(synth, seed=2)
    items, inv, counts = batch_items(batch.pos)
    g = torch.Generator().manual_seed(1)
    emb = [F.normalize(torch.randn(len(items), plugin.width, generator=g), dim=-1).requires_grad_()
           for _ in plugin.modalities]
    users = F.normalize(torch.randn(len(batch), plugin.width, generator=g), dim=-1)
    only = torch.zeros(len(emb), len(emb), len(items), dtype=torch.bool)
    only[0, 1] = True                                   # every item: id -> modality 1 only
    monkeypatch.setattr(cross_mod, "direction_sets", lambda s, strategy: only)
    ilda, _ = plugin.ilda_dt(emb, users, inv, counts)
    grads = torch.autograd.grad(ilda, emb, allow_unused=True, retain_graph=True)
    assert grads[0].abs().sum() > 0                     # the student moves
    assert grads[1] is None or not grads[1].any()       # sg(i^b): the teacher does not
    assert plugin.maps[f"id_to_{plugin.modalities[1]}"].weight.grad is None
    ilda.backward()
    assert plugin.maps[f"id_to_{plugin.modalities[1]}"].weight.grad.abs().sum() > 0


def test_dt_sign(synth):
    """L_DT = -(post-alignment user score - s_i^a): zero for identity maps, and minimising it raises the
    users' cosine with the mapped embeddings."""
    model, plugin, _ = _build(synth, cross_cna=False, cross_cla=False, cross_ilda=False, cross_alpha=1.0)
    for lin in plugin.maps.values():
        lin.weight.data.zero_()
    batch = _batch(synth, seed=4)
    with torch.no_grad():
        out = model.loss(batch)
        assert abs(float(plugin.loss(batch, out)["dt"])) < 1e-6   # f(x) = x: no gain, no loss
    opt = torch.optim.SGD(plugin.maps.parameters(), lr=0.5)
    values = []
    for _ in range(30):
        out = model.loss(batch)
        out = type(out)(out.loss, out.terms, out.user_emb.detach(), out.item_emb.detach())
        dt = plugin.loss(batch, out)["dt"]
        values.append(float(dt.detach()))
        opt.zero_grad()
        dt.backward()
        opt.step()
    assert values[-1] < -1e-3 < 0           # mapped embeddings now score higher with their users
    assert values[-1] < values[0]


def test_cla_matches_row_gather_reference(synth):
    model, plugin, _ = _build(synth, cross_ilda=False, cross_dt=False, cross_cna=False, cross_beta=1.0)
    batch = _batch(synth, seed=5)
    out = model.loss(batch)
    got = plugin.loss(batch, out)["cla"]    # normalises the codebooks in place first
    items, inv, _ = batch_items(batch.pos)
    emb = plugin.modality_embeddings(out, items)
    tau = plugin.lambda_c.value
    c_itv, c_ui = plugin.codebook_itv, plugin.codebook_ui

    def l(q, z):
        return -(q * F.log_softmax(z / tau, dim=-1)).sum(-1).mean()

    z = [e @ c_itv.t() for e in emb]
    q = [_swav_reference(x.detach(), 0.05, 3).float() for x in z]
    pairs = [(a, b) for a in range(len(z)) for b in range(len(z)) if a != b]
    itv = sum(l(q[a], z[b]) for a, b in pairs) / len(pairs)
    uu, uinv = torch.unique(batch.users, return_inverse=True)
    zu = F.normalize(out.user_emb[uu], dim=-1) @ c_ui.t()
    zi = emb[0] @ c_ui.t()
    qu, qi = _swav_reference(zu.detach(), 0.05, 3).float(), _swav_reference(zi.detach(), 0.05, 3).float()
    ui = 0.5 * (l(qu[uinv], zi[inv]) + l(qi[inv], zu[uinv]))
    torch.testing.assert_close(got, ui + itv, rtol=1e-4, atol=1e-5)
    # and the same gradients: codebooks, temperature, the modality projections and the backbone
    params = [p for p in list(plugin.parameters()) + list(model.parameters()) if p.requires_grad]
    for a, r in zip(torch.autograd.grad(got, params, allow_unused=True, retain_graph=True),
                    torch.autograd.grad(ui + itv, params, allow_unused=True)):
        assert (a is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------ plug-in behaviour
def _fit(ds, method, cfg, epochs=2):
    from mmgraph.train.reproducibility import seed_everything
    seed_everything(int(cfg["seed"]))
    model = build_model(method, ds, cfg, torch.device("cpu"))
    trainer = Trainer(model, ds, {**cfg, "epochs": epochs, "patience": 100}, None,
                      build_plugins(cfg, ds, model), progress=False)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("method", ["lightgcn", "freedom"])
def test_zero_weights_leave_the_backbone_unchanged(synth, method):
    base_cfg = {**_config(method), "plugins": []}
    zero_cfg = _config(method, cross_alpha=0.0, cross_beta=0.0, cross_gamma=0.0)
    base = _fit(synth, method, base_cfg)
    zero = _fit(synth, method, zero_cfg)
    assert len(zero.plugins) == 1 and sum(p.numel() for p in zero.plugins.parameters()) > 0
    for hb, hz in zip(base.history, zero.history):
        assert hb["train_loss"] == hz["train_loss"]
        assert hb["valid_recall@20"] == hz["valid_recall@20"]
    for (name, p), q in zip(base.model.state_dict().items(), zero.model.state_dict().values()):
        assert torch.equal(p, q), name
    # with weights > 0 the backbone's own loss at the first step is still the same number
    torch.manual_seed(0)
    model, plugin, _ = _build(synth, method)
    torch.manual_seed(0)
    ref_model = build_model(method, synth, base_cfg, torch.device("cpu"))
    batch = _batch(synth)
    out, ref = model.loss(batch), ref_model.loss(batch)
    terms = plugin.loss(batch, out)
    assert set(terms) == {"ilda", "dt", "cna", "cla"} and all(torch.isfinite(t) for t in terms.values())
    assert torch.equal(out.loss, ref.loss)


@pytest.mark.parametrize("method", ["mf", "lightgcn", "directau", "vbpr", "freedom", "bm3", "cm3"])
def test_every_backbone_trains_with_cross(synth, method):
    model, plugin, _ = _build(synth, method, cross_alpha=1.0, cross_beta=1.0)
    width = model.embeddings()[1].shape[1]
    assert plugin.width == width == {"vbpr": 128, "cm3": 3 * 64}.get(method, 64)
    batch = _batch(synth)
    out = model.loss(batch)
    terms = plugin.loss(batch, out)
    assert set(terms) == {"ilda", "dt", "cna", "cla"}
    total = out.loss + sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert plugin.proj[synth.modalities[0]].weight.grad.abs().sum() > 0
    assert plugin.codebook_ui.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_fettle_mode_and_switches(synth):
    assert {"cross", "fettle"} <= set(available_plugins())
    assert get_plugin_class("FETTLE") is FETTLE
    _, fettle, _ = _build(synth, plugins=["fettle"])
    assert fettle.strategy == "oneway" and not fettle.use_cna
    with pytest.raises(ConfigError, match="cross_strategy"):  # FETTLE fixes it: not one of its settings
        _build(synth, plugins=["fettle"], cross_strategy="dynamic")
    for key, value in (("cross_k", 10), ("cross_gamma", 0.5), ("cross_lambda_n", 2.0),
                       ("cross_cna_negatives", "targets")):    # CNA's keys: nothing for them to change
        with pytest.raises(ConfigError, match=f"fettle.*no neighbour alignment.*{key}="):
            _build(synth, plugins=["fettle"], **{key: value})
    _build(synth, plugins=["fettle"], cross_k=5)   # the default (as every saved FETTLE config has it) is fine
    model, plugin, _ = _build(synth, cross_dt=False, cross_cla=False)
    batch = _batch(synth)
    assert set(plugin.loss(batch, model.loss(batch))) == {"ilda", "cna"}
    with pytest.raises(ConfigError):
        _build(synth, cross_strategy="sideways")
    # automatic weights by backbone type
    _, cf, _ = _build(synth, "mf")
    _, mm, _ = _build(synth, "freedom")
    assert (cf.alpha, cf.beta, cf.gamma) == (1e-2, 1e-2, 1e-2)
    assert (mm.alpha, mm.beta, mm.gamma) == (1e-3, 1e-4, 1e-3)
    with pytest.raises(ConfigError, match="features"):
        _build(synth.with_features({}), "mf")


def test_temperatures_learn_by_default_and_stay_fixed_when_asked(synth):
    def step(**kw):
        model, plugin, cfg = _build(synth, cross_alpha=1.0, cross_beta=1.0, **kw)
        opt = torch.optim.Adam(list(model.parameters()) + list(plugin.parameters()), lr=1e-2)
        batch = _batch(synth)
        for _ in range(3):
            opt.zero_grad()
            out = model.loss(batch)
            (out.loss + sum(plugin.loss(batch, out).values())).backward()
            opt.step()
        return plugin.lambda_f().item(), plugin.lambda_c().item()
    f, c = step()
    assert f != pytest.approx(0.1) and c != pytest.approx(0.3)     # the spec: learnable
    assert step(cross_learn_temperatures=False, cross_lambda_f=0.05, cross_lambda_c=0.1) == \
        pytest.approx((0.05, 0.1))                                    # the paper: fixed hyper-parameters


def test_the_user_item_codebook_can_have_its_own_size(synth):
    _, same, _ = _build(synth)
    assert same.codebook_itv.shape[0] == same.codebook_ui.shape[0] == 32
    model, plugin, _ = _build(synth, cross_prototypes_ui=48)
    assert plugin.codebook_itv.shape[0] == 32 and plugin.codebook_ui.shape[0] == 48
    torch.testing.assert_close(plugin.codebook_itv, same.codebook_itv)   # the same draw for the ITV codebook
    batch = _batch(synth)
    assert torch.isfinite(plugin.loss(batch, model.loss(batch))["cla"])
    with pytest.raises(ConfigError, match="cross_prototypes_ui"):
        _build(synth, cross_prototypes_ui=0)


def test_plugin_config_merge():
    cfg = load_config("lightgcn", overrides={"plugins": ["cross"], "cross_k": 10})
    assert cfg["cross_k"] == 10 and cfg["cross_lambda_n"] == 0.2 and cfg["cross_strategy"] == "dynamic"
    assert "cross_alpha" not in cfg["grid"]
    assert "cross_k" not in load_config("lightgcn")
    assert load_config("lightgcn", overrides={"plugins": "cross"})["plugins"] == ["cross"]
    # the YAML files mirror the plug-in defaults
    from mmgraph.train.config import CONFIG_DIR, _read_yaml
    for name, cls in (("cross", CROSS), ("fettle", FETTLE)):
        data = _read_yaml(CONFIG_DIR / "plugins" / f"{name}.yaml")
        data.pop("grid")
        data.pop("schema")
        assert data == {k: v for k, v in cls.defaults.items() if k not in cls.fixed}


def test_cli_style_training_run_with_plugin(synth, tmp_path):
    cfg = _config("lightgcn", epochs=2)
    result, trainer = train("lightgcn", synth, cfg, tmp_path, progress=False)
    assert result["epochs_run"] == 2
    hist = trainer.history[-1]
    assert {"train_cross_ilda", "train_cross_dt", "train_cross_cna", "train_cross_cla"} <= set(hist)
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert any(k.startswith("plugins.0.codebook_itv") for k in state)
    assert not any("x_" in k or "neighbors" in k for k in state)   # frozen inputs stay out
