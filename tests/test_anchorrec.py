"""AnchorRec (issue 12): losses against brute force, the detached anchor, the representations against
their dense formulas, settings and errors, learning on planted-signal data, and CROSS on top of it."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.cli.main import main
from mmgraph.data import make_synthetic, save_atomic
from mmgraph.errors import ConfigError
from mmgraph.graph import anchorrec_graph
from mmgraph.models.anchorrec import (aal_terms, amp_loss, info_nce_counts, amp_weights, cosine_margin_loss, graph_smoothness,
                                      graph_smoothness_quadratic,
                                      mix_weights, resolve_modalities, score_modalities)
from mmgraph.models.base import Batch
from mmgraph.train import build_model, load_config, train
from tests.helpers import popularity_recall


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=80, n_items=60, modalities={"image": 12, "text": 6}, seed=3)


def _cfg(method="anchorrec", **kw):
    return load_config(method, overrides={"epochs": 3, "patience": 100, "seed": 2, "graph_cache": False,
                                          "log_geometry": False, **kw})


def _batch(ds, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(ds.train), (n,), generator=g)
    pairs = torch.as_tensor(ds.train)[rows]
    return Batch(pairs[:, 0], pairs[:, 1], torch.randint(0, ds.n_items, (n,), generator=g))


# ------------------------------------------------------------------------------------------ losses
def test_info_nce_terms_equal_the_formula():
    torch.manual_seed(0)
    p_mm, p_id, p_mix = torch.randn(7, 5), torch.randn(7, 5), torch.randn(7, 5)
    tau = 0.3

    def brute(a, b):
        total = 0.0
        for k in range(a.shape[0]):
            cos = [float(F.cosine_similarity(a[k], b[j], dim=0)) for j in range(b.shape[0])]
            total += -math.log(math.exp(cos[k] / tau) / sum(math.exp(c / tau) for c in cos))
        return total / a.shape[0]

    t_id, t_mix = aal_terms(p_mm, p_id, p_mix, tau)
    assert float(t_id) == pytest.approx(brute(p_mm, p_id), rel=1e-5)
    assert float(t_mix) == pytest.approx(brute(p_mm, p_mix), rel=1e-5)
    # the fused InfoNCE has the gradients of the library's autograd InfoNCE
    from mmgraph.losses import info_nce
    a, b = p_mm.clone().requires_grad_(True), p_id.clone().requires_grad_(True)
    for x, y in zip(torch.autograd.grad(info_nce_counts(a, b, tau), [a, b]),
                    torch.autograd.grad(info_nce(a, b, tau), [a, b])):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_amp_equals_the_pairwise_formula(similarity, gram):
    torch.manual_seed(1)
    h, f = torch.randn(6, 4), torch.randn(6, 9)
    total = 0.0
    for i in range(6):
        for j in range(6):
            learned = (float(F.cosine_similarity(h[i], h[j], dim=0)) if similarity == "cosine"
                       else float(h[i] @ h[j]))
            total += (learned - float(F.cosine_similarity(f[i], f[j], dim=0))) ** 2
    h.requires_grad_(True)
    got = amp_loss(h, F.normalize(f, dim=-1), similarity, gram=gram)
    assert float(got.detach()) == pytest.approx(math.sqrt(total) / 6, rel=1e-5)
    # both ways give the same gradient
    (g,) = torch.autograd.grad(got, h)
    (ref,) = torch.autograd.grad(amp_loss(h, F.normalize(f, dim=-1), similarity, gram=not gram), h)
    torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("gram", [False, True])
def test_distinct_rows_with_counts_equal_the_repeated_batch(gram):
    """AAL and AMP run on the batch's distinct items with their counts: the same values and gradients as
    on the repeated rows (the released code's batch)."""
    torch.manual_seed(3)
    a, b, f = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True), torch.randn(5, 7)
    counts = torch.tensor([1, 3, 1, 2, 4])
    rows = torch.repeat_interleave(torch.arange(5), counts)
    got = info_nce_counts(a, b, 0.2, counts) + amp_loss(a, F.normalize(f, dim=-1), gram=gram, counts=counts)
    from mmgraph.losses import info_nce
    ref = info_nce(a[rows], b[rows], 0.2) + amp_loss(a[rows], F.normalize(f[rows], dim=-1), gram=gram)
    torch.testing.assert_close(got, ref)
    for x, y in zip(torch.autograd.grad(got, [a, b]), torch.autograd.grad(ref, [a, b])):
        torch.testing.assert_close(x, y)


def test_cosine_margin_and_smoothness_equal_their_formulas():
    torch.manual_seed(2)
    u = torch.randn(5, 3, requires_grad=True)
    p, n = torch.randn(5, 3), torch.randn(5, 3)
    ud = u.detach()
    ref = np.mean([max(0.0, 0.2 - float(F.cosine_similarity(ud[k], p[k], dim=0))
                       + float(F.cosine_similarity(ud[k], n[k], dim=0))) for k in range(5)])
    loss = cosine_margin_loss(u, p, n, 0.2)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert not loss.requires_grad            # the user is detached, and p, n are constants here
    h = torch.randn(4, 3)
    ei, w = torch.tensor([[0, 1, 3, 2], [1, 2, 0, 2]]), torch.tensor([0.5, 1.0, 2.0, 0.7])
    ref = np.mean([float(w[e]) * float(((h[ei[0, e]] - h[ei[1, e]]) ** 2).sum()) for e in range(4)])
    assert float(graph_smoothness(h, ei, w)) == pytest.approx(ref, rel=1e-6)


def test_the_model_smoothness_equals_the_edge_formula_with_its_gradient(small):
    model = build_model("anchorrec", small, _cfg())
    h = torch.randn(small.n_items, 8, dtype=torch.float64, requires_grad=True)
    adj = model.item_graphs["mm"].double()
    edges = adj.edge_index()                     # (row = target, col = source), the relation's edges
    ref = graph_smoothness(h, edges, adj.edge_weight())
    got = graph_smoothness_quadratic(h, adj, model.smooth_degree.double(), model.n_smooth_edges)
    assert edges.shape[1] == model.n_smooth_edges
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, h)[0], torch.autograd.grad(ref, h)[0])


def test_the_anchor_is_detached_for_the_unimodal_mix_only():
    p_mm = torch.randn(6, 4, requires_grad=True)
    p_id, p_mix = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    t_id, t_mix = aal_terms(p_mm, p_id, p_mix, 0.1)
    g_mm, g_mix = torch.autograd.grad(t_mix, [p_mm, p_mix], allow_unused=True)
    assert g_mm is None and g_mix.abs().sum() > 0
    g_mm, g_id = torch.autograd.grad(t_id, [p_mm, p_id])
    assert g_mm.abs().sum() > 0 and g_id.abs().sum() > 0


def test_the_anchor_is_detached_in_the_model(small):
    model = build_model("anchorrec", small, _cfg())
    batch = _batch(small)
    _, i_id, h = model.encode()
    t_id, t_mix = model.aal(batch.pos, i_id, h)
    anchor_params = list(model.proj["mm"].parameters())
    mix_params = list(model.proj["text"].parameters()) + list(model.proj["image"].parameters())
    grads = torch.autograd.grad(t_mix, anchor_params + mix_params, allow_unused=True)
    assert all(g is None or not g.any() for g in grads[: len(anchor_params)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(anchor_params):])
    grads = torch.autograd.grad(t_id, anchor_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------ representations
def _dense(adj):
    return adj.csr.to_dense()


@pytest.mark.parametrize("gate_source", ["encoder", "embedding"])
def test_representations_follow_the_dense_formulas(small, gate_source):
    model = build_model("anchorrec", small, _cfg(n_mm_layers=2, lambda_recon=0.1, gate_source=gate_source)).eval()
    d = model.embedding_size
    with torch.no_grad():
        u_id, i_id, h = model.encode()
        # S_m: the similarity-weighted, symmetric-normalised kNN graph of the raw feature (anchor: concat)
        concat = np.concatenate([f / np.linalg.norm(f, axis=1, keepdims=True)
                                 for f in (small.features["image"], small.features["text"])], 1)
        for m, feat in (("image", small.features["image"]), ("text", small.features["text"]), ("mm", concat)):
            torch.testing.assert_close(_dense(model.item_graphs[m]), anchorrec_graph(feat, 10).to_dense(),
                                       atol=1e-5, rtol=1e-5)
            f = torch.as_tensor(feat, dtype=torch.float32)
            gate = torch.sigmoid(model.gate[m](model.trs[m](f)))
            s = _dense(model.item_graphs[m])
            source = i_id if model.config["gate_source"] == "encoder" else model.item_emb.weight
            torch.testing.assert_close(h[m], s @ (s @ (source * gate)), atol=1e-5, rtol=1e-4)
        # R_hat = the user-item block of D^-1/2 A D^-1/2
        full = _dense(model.adj)
        r_hat = full[: small.n_users, small.n_users:]
        torch.testing.assert_close(_dense(model.user_agg), r_hat)
        users, items = model.embeddings()
        exp_items = i_id + h["mm"] + h["text"] + 0.1 * model.recon(model.proj["mm"](h["mm"]))
        exp_users = u_id + r_hat @ h["mm"] + r_hat @ h["text"]
        torch.testing.assert_close(items, exp_items, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(users, exp_users, atol=1e-5, rtol=1e-4)
    assert users.shape == (small.n_users, d) and items.shape == (small.n_items, d)


def test_channels_and_projection_spaces(small):
    model = build_model("anchorrec", small, _cfg())
    ch = model.channel_embeddings()
    assert {"final", "id", "mm", "image", "text"} <= set(ch)
    for name in ("id", "mm", "image", "text"):
        assert ch[name][0].shape == (small.n_users, 64) and ch[name][1].shape == (small.n_items, 64)
    spaces = model.item_spaces()
    assert set(spaces) == {"proj_id", "proj_mm", "proj_image", "proj_text"}
    batch = _batch(small)
    out = model.loss(batch)
    assert {"bpr", "reg", "ui_cosine", "aal", "amp", "smooth"} <= set(out.terms)
    for name in ("id", "mm", "image"):
        s = out.channel(name).score(batch.users, batch.pos)
        assert s.shape == (len(batch),) and s.requires_grad
    picked_first = model.loss(batch).channel("image")   # first used under no_grad (a hard-negative pick)
    with torch.no_grad():
        picked = picked_first.score(batch.users, batch.neg)
    again = picked_first.score(batch.users, batch.neg)  # then differentiable: the users' part must flow too
    direct = model.loss(batch).channel("image")
    plain = direct.score(batch.users, batch.neg)
    assert torch.equal(again.detach(), picked) and torch.equal(again.detach(), plain.detach())
    torch.testing.assert_close(torch.autograd.grad(again.sum(), picked_first.items)[0],
                               torch.autograd.grad(plain.sum(), direct.items)[0])
    users, items = model.forward()                 # the step's rows = the full tables' rows
    torch.testing.assert_close(out.channel().score(batch.users, batch.pos),
                               (users[batch.users] * items[batch.pos]).sum(-1))
    torch.testing.assert_close(out.channel().item_rows(batch.neg), items[batch.neg])


def test_loss_switches_remove_their_terms(small):
    model = build_model("anchorrec", small, _cfg(ui_cosine_weight=0.0, aal_weight=0.0, amp_weight=0.0,
                                                 smooth_weight=0.0))
    out = model.loss(_batch(small))
    assert set(out.terms) == {"bpr", "reg"}


# ------------------------------------------------------------------------------------------ settings
def test_modality_rules():
    assert resolve_modalities({"anchor_modality": "mm"}, ["image", "text"]) == (None, ["image", "text"])
    assert resolve_modalities({"anchor_modality": "mm"}, ["mm", "image", "text"]) == ("mm", ["image", "text"])
    assert resolve_modalities({"anchor_modality": "image"}, ["image", "text"]) == ("image", ["text"])
    assert mix_weights({"mix_alpha": 0.75}, ["image", "text"]) == {"image": 0.25, "text": 0.75}
    assert mix_weights({}, ["image", "audio"]) == {"image": 0.5, "audio": 0.5}
    assert mix_weights({}, ["text"]) == {"text": 1.0}
    assert amp_weights({}, ["image", "text"]) == {"mm": 1.0, "text": 0.03, "image": 0.01}
    assert amp_weights({"amp_weights": {"image": 0.1}}, ["image", "audio"]) == \
        {"mm": 1.0, "image": 0.1, "audio": 0.01}
    assert score_modalities({}, ["image", "text"]) == ["id", "mm", "text"]
    assert score_modalities({}, ["image", "audio"]) == ["id", "mm"]
    # text alone: the default anchor is the text feature, scored once (as mm); a named anchor is another feature
    assert score_modalities({}, ["text"]) == ["id", "mm"]
    assert score_modalities({}, ["text"], anchor_feature="image") == ["id", "mm", "text"]
    assert score_modalities({"score_modalities": ["id", "mm", "text"]}, ["text"]) == ["id", "mm", "text"]
    assert score_modalities({"score_modalities": ["image", "id"]}, ["image", "audio"]) == ["id", "image"]
    for bad in ({"score_modalities": ["smell"]}, {"score_modalities": []}):
        with pytest.raises(ConfigError):
            score_modalities(bad, ["image"])
    with pytest.raises(ConfigError, match="mix_weights"):
        mix_weights({"mix_weights": {"audio": 1.0}}, ["image"])


@pytest.mark.parametrize("tau", [0, -0.5])
def test_nonpositive_tau_is_rejected_in_one_line(small, tau):
    with pytest.raises(ConfigError) as info:
        load_config("anchorrec", overrides={"tau": tau})
    assert "tau" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="tau must be > 0") as info:   # a hand-built config too
        build_model("anchorrec", small, {**_cfg(), "tau": tau})
    assert "\n" not in str(info.value)


def test_unknown_anchor_modality_is_rejected_in_one_line(small, tmp_path, capsys):
    with pytest.raises(ConfigError, match="anchor_modality 'smell' is not a feature") as info:
        build_model("anchorrec", small, _cfg(anchor_modality="smell"))
    assert "\n" not in str(info.value)
    folder = tmp_path / "toy"
    save_atomic(small, folder, name="toy")
    code = main(["train", "--method", "anchorrec", "--data", str(folder), "--epochs", "1", "--no-progress",
                 "--set", "anchor_modality=smell", "graph_cache=false", "threads=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mmgraph: error:") and "anchor_modality 'smell'" in err[-1]


def test_default_anchor_is_logged_and_a_named_anchor_is_used(small, caplog):
    with caplog.at_level(logging.INFO):
        build_model("anchorrec", small, _cfg())
    assert "concatenation of the L2-normalised image+text" in caplog.text
    model = build_model("anchorrec", small, _cfg(anchor_modality="image"))
    assert model.content == ["text"] and model.anchor_feature == "image"
    torch.testing.assert_close(_dense(model.item_graphs["mm"]),
                               anchorrec_graph(small.features["image"], 10).to_dense(), atol=1e-5, rtol=1e-5)


def test_text_only_data_anchor_equals_the_text_graph(caplog):
    ds = make_synthetic(n_users=60, n_items=40, modalities={"text": 8}, seed=2)
    with caplog.at_level(logging.INFO):
        model = build_model("anchorrec", ds, _cfg())
    assert model.content == ["text"] and model.scoring == ["id", "mm"]      # text once: mm is the text feature
    assert "the anchor is the text feature itself; scoring id+mm (text once)" in caplog.text
    torch.testing.assert_close(_dense(model.item_graphs["mm"]), _dense(model.item_graphs["text"]))
    assert torch.isfinite(model.loss(_batch(ds)).loss)


@pytest.mark.parametrize("overrides", [{"projection_input": "raw"}, {"finetune_features": True},
                                       {"amp_similarity": "dot"}, {"gate_source": "embedding"}])
def test_released_variants_train_a_step(small, overrides):
    model = build_model("anchorrec", small, _cfg(**overrides))
    out = model.loss(_batch(small))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    if overrides.get("finetune_features"):
        assert model.feats.tables["image"].grad is not None
    if overrides.get("projection_input") == "raw":
        assert model.proj["image"][0].in_features == 12


# ------------------------------------------------------------------------------------------ learning
@pytest.fixture(scope="module")
def planted():
    return make_synthetic(n_users=400, n_items=300, seed=7)


def test_anchorrec_beats_lightgcn_and_popularity_on_planted_signal(planted):
    common = {"epochs": 30, "patience": 5, "seed": 1, "learning_rate": 5e-3, "batch_size": 256,
              "log_geometry": False, "graph_cache": False}
    lgcn, _ = train("lightgcn", planted, load_config("lightgcn", overrides=common), progress=False)
    anchor, _ = train("anchorrec", planted, load_config("anchorrec", overrides=common), progress=False)
    r_anchor, r_lgcn = anchor["test"]["recall@20"], lgcn["test"]["recall@20"]
    assert r_anchor > popularity_recall(planted) + 0.01
    assert r_anchor > r_lgcn, (r_anchor, r_lgcn)


def test_cross_attaches_to_anchorrec(small):
    result, trainer = train("anchorrec", small, _cfg(plugins=["cross"], epochs=2), progress=False)
    assert np.isfinite(result["test"]["recall@20"])
    assert any(k.startswith("train_cross_") for k in trainer.history[-1])


# ------------------------------------------------------------------------------------------ fast path
def _reference_loss(model, batch):
    """The whole AnchorRec loss written out plainly: dense matrices, the repeated batch rows, ``[B, B]``
    AMP matrices and the library's autograd InfoNCE -- what the optimised ``model.loss`` must equal."""
    from mmgraph.losses import bpr_loss, info_nce, l2_reg
    cfg = model.config
    n_users = model.n_users
    adj = _dense(model.adj)
    x = torch.cat([model.user_emb.weight, model.item_emb.weight])
    layers = [x]
    for _ in range(int(cfg["n_ui_layers"])):
        layers.append(adj @ layers[-1])
    ego = torch.stack(layers).mean(0)
    u_id, i_id = ego[:n_users], ego[n_users:]
    h = {}
    for m in model.refined:
        gate = torch.sigmoid(model.gate[m](model.trs[m](model.feats.table(m))))
        hm = (i_id if cfg["gate_source"] == "encoder" else model.item_emb.weight) * gate
        for _ in range(int(cfg["n_mm_layers"])):
            hm = _dense(model.item_graphs[m]) @ hm
        h[m] = hm
    r_hat = _dense(model.user_agg)
    users = sum(u_id if m == "id" else r_hat @ h[m] for m in model.scoring)
    items = sum(i_id if m == "id" else h[m] for m in model.scoring)
    if float(cfg["lambda_recon"]):
        items = items + float(cfg["lambda_recon"]) * model.recon(model.proj["mm"](h["mm"]))
    eu, ep, en = users[batch.users], items[batch.pos], items[batch.neg]
    loss = bpr_loss((eu * ep).sum(-1), (eu * en).sum(-1)) + float(cfg["reg_weight"]) * l2_reg(eu, ep, en)
    loss = loss + float(cfg["ui_cosine_weight"]) * cosine_margin_loss(eu, ep, en, float(cfg["ui_cosine_margin"]))
    pos = batch.pos
    p_mm = model.proj["mm"](h["mm"][pos])
    raw_in = cfg["projection_input"] == "raw"
    p_mix = sum(w * model.proj[m](model.frozen.raw(m)[pos] if raw_in else h[m][pos])
                for m, w in model.mix.items() if w)
    aal = info_nce(p_mm, model.proj["id"](i_id[pos]), model.tau) + info_nce(p_mm.detach(), p_mix, model.tau)
    amp = 0.0
    for m, lam in model.amp.items():
        a = F.normalize(h[m][pos], dim=-1) if cfg["amp_similarity"] == "cosine" else h[m][pos]
        f = model.raw.raw(m)[pos]                            # L2-normalised once at build time
        amp = amp + lam * torch.linalg.matrix_norm(a @ a.t() - f @ f.t()) / len(pos)
    g = model.item_graphs["mm"]
    smooth = graph_smoothness(h["mm"], g.edge_index(), g.edge_weight())
    return (loss + float(cfg["aal_weight"]) * aal + float(cfg["amp_weight"]) * amp
            + float(cfg["smooth_weight"]) * smooth)


@pytest.mark.parametrize("overrides", [{}, {"n_mm_layers": 2, "lambda_recon": 0.1, "amp_weight": 0.5,
                                            "aal_weight": 0.3, "tau": 0.05},
                                       {"score_modalities": ["image"], "lambda_recon": 0.0},
                                       {"projection_input": "raw", "amp_similarity": "dot", "finetune_features": True,
                                        "gate_source": "embedding"},
                                       {"aal_weight": 0.0, "smooth_weight": 0.0}])
def test_the_optimised_loss_equals_the_plain_reference(small, overrides):
    """The step's loss (distinct items with counts, fused InfoNCE / AMP Grams, shared gathers) equals the
    plain formula on the repeated batch, in value and in every parameter's gradient (float64)."""
    torch.manual_seed(4)
    model = build_model("anchorrec", small, _cfg(**overrides)).double()
    g = torch.Generator().manual_seed(5)
    pairs = torch.as_tensor(small.train)[torch.randint(0, len(small.train), (40,), generator=g)]
    pos = torch.cat([pairs[:, 1], pairs[:8, 1]])          # repeated positives, as in real batches
    users = torch.cat([pairs[:, 0], pairs[:8, 0]])
    batch = Batch(users, pos, torch.randint(0, small.n_items, (48,), generator=g))
    params = [p for p in model.parameters() if p.requires_grad]
    got = model.loss(batch).loss
    ref = _reference_loss(model, batch)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for x, y in zip(torch.autograd.grad(got, params, allow_unused=True),
                    torch.autograd.grad(ref, params, allow_unused=True)):
        if x is None or y is None:
            assert (x is None or not x.any()) and (y is None or not y.any())
        else:
            torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_mix_alpha_weighs_text_against_the_rest_and_warns_where_it_cannot(caplog):
    assert mix_weights({"mix_alpha": 0.6}, ["image", "text", "audio"]) == \
        pytest.approx({"image": 0.2, "text": 0.6, "audio": 0.2})
    with caplog.at_level(logging.WARNING, logger="mmgraph.models.anchorrec"):
        assert mix_weights({"mix_alpha": 0.75}, ["image", "audio"]) == {"image": 0.5, "audio": 0.5}
        assert not caplog.records                                  # the default: nothing to say
        assert mix_weights({"mix_alpha": 0.1}, ["image", "audio"]) == {"image": 0.5, "audio": 0.5}
        assert mix_weights({"mix_alpha": 0.1}, ["text"]) == {"text": 1.0}
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == ["mix_alpha=0.1 has no effect"] * 2
