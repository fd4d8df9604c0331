"""CM3: calibrated uniformity (Theorem 1), the model's pieces, gradients and the ablation switches."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError
from mmgraph.graph import freedom_graph
from mmgraph.graph.bipartite import normalized_bipartite_adj
from mmgraph.losses import alignment, calibrated_uniformity, clamped_cosine, uniformity
from mmgraph.models.base import Batch
from mmgraph.models.cm3 import CM3, VARIANTS, _ChannelWeights
from mmgraph.train.run import build_model
from mmgraph.nn.normalize import row_normalize
from mmgraph.models.registry import get_model_class
from mmgraph.nn import slerp
from mmgraph.nn.conv import LightGCNEncoder


# ----------------------------------------------------------------------------- calibrated uniformity
def _pairs(x):
    n = x.shape[0]
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def _pdist_uniformity(x, t):
    """The standard uniformity from the explicit pair distances (the reference)."""
    d2 = torch.pdist(x).pow(2)
    return torch.logsumexp(-t * d2, 0) - math.log(d2.numel())


def test_theorem_1_calibrated_vs_standard_differ_by_the_per_pair_factor():
    torch.manual_seed(0)
    t = 2.0
    x = F.normalize(torch.randn(12, 6, dtype=torch.float64), dim=1)
    s = clamped_cosine(torch.randn(12, 4, dtype=torch.float64), None, 0.0, 1.0)
    # a single pair: log-terms differ by exactly 2t (1 - s)
    for a, b in [(0, 1), (3, 7), (10, 11)]:
        pair = x[[a, b]]
        s_ab = s[a, b]
        cal = calibrated_uniformity(pair, s[[a, b]][:, [a, b]], t)
        std = _pdist_uniformity(pair, t)
        assert abs(float(cal - std) - 2 * t * (1 - float(s_ab))) < 1e-12
        assert abs(math.exp(float(cal - std)) - math.exp(2 * t * (1 - float(s_ab)))) < 1e-9
    # the whole set: each standard pair term re-weighted by exp(2t (1 - s_ab))
    terms = [math.exp(-t * float(((x[a] - x[b]) ** 2).sum())) * math.exp(2 * t * (1 - float(s[a, b])))
             for a, b in _pairs(x)]
    assert abs(float(calibrated_uniformity(x, s, t)) - math.log(sum(terms) / len(terms))) < 1e-12
    # s = 1 everywhere: the standard uniformity; s < 1 amplifies (e^{2t(1-s)} > 1)
    ones = torch.ones(12, 12, dtype=torch.float64)
    assert abs(float(calibrated_uniformity(x, ones, t)) - float(_pdist_uniformity(x, t))) < 1e-12
    assert abs(float(calibrated_uniformity(x, None, t)) - float(_pdist_uniformity(x, t))) < 1e-12
    assert float(calibrated_uniformity(x, s, t)) > float(_pdist_uniformity(x, t))


def test_calibrated_uniformity_matches_eq_10_brute_force_and_features_path():
    torch.manual_seed(1)
    x = F.normalize(torch.randn(15, 5, dtype=torch.float64), dim=1)
    h = torch.randn(15, 3, dtype=torch.float64)
    for lo, hi, t in [(0.0, 1.0, 2.0), (0.0, 0.8, 2.0), (-1.0, 1.0, 0.5)]:
        hn = F.normalize(h, dim=1)
        vals = [math.exp(-t * (float(((x[a] - x[b]) ** 2).sum()) - 2
                               + 2 * min(max(float(hn[a] @ hn[b]), lo), hi))) for a, b in _pairs(x)]
        ref = math.log(sum(vals) / len(vals))
        assert abs(float(calibrated_uniformity(x, clamped_cosine(h, None, lo, hi), t)) - ref) < 1e-12
        assert abs(float(calibrated_uniformity(x, None, t, features=h, min_sim=lo, max_sim=hi)) - ref) < 1e-12


def _released_item_uniformity(x_rows, h_rows, t=2.0, min_sim=0.0, max_sim=1.0):
    """The released CM3 code, literally: pdist over every pair of batch rows (duplicates included)."""
    hn = h_rows / h_rows.norm(dim=-1, keepdim=True)
    sim_mt = (hn @ hn.t()).clamp(min_sim, max_sim)
    idx = torch.combinations(torch.arange(x_rows.shape[0]))
    sim = sim_mt[idx[:, 0], idx[:, 1]]
    return (torch.pdist(x_rows, p=2).pow(2) - 2 + 2 * sim).mul(-t).exp().mean().log()


def test_counts_give_the_loss_over_every_pair_of_batch_rows():
    torch.manual_seed(2)
    table = F.normalize(torch.randn(20, 6, dtype=torch.float64), dim=1)
    feats = torch.randn(20, 4, dtype=torch.float64)
    rows = torch.randint(0, 20, (60,))  # repeated ids, as in a BPR batch
    ids, counts = torch.unique(rows, return_counts=True)
    for max_sim in (1.0, 0.8):
        ref = _released_item_uniformity(table[rows], feats[rows], max_sim=max_sim)
        ours = calibrated_uniformity(table[ids], None, 2.0, counts, features=feats[ids], max_sim=max_sim)
        assert abs(float(ours) - float(ref)) < 1e-10
    # standard uniformity over rows with duplicates
    ref = torch.pdist(table[rows]).pow(2).mul(-2).exp().mean().log()
    assert abs(float(calibrated_uniformity(table[ids], None, 2.0, counts)) - float(ref)) < 1e-10


def test_calibrated_uniformity_gradients():
    torch.manual_seed(3)
    x = torch.randn(14, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(14, 3, dtype=torch.float64, requires_grad=True)
    counts = torch.randint(1, 4, (14,))
    for c in (None, counts):
        assert torch.autograd.gradcheck(
            lambda x, h: calibrated_uniformity(F.normalize(x, dim=1), None, 2.0, c, features=h, max_sim=0.8),
            (x, h))
        assert torch.autograd.gradcheck(
            lambda x, h: calibrated_uniformity(x, clamped_cosine(h), 1.5, c), (x, h))
    # the same gradients as autograd through the literal formula
    rows = torch.randint(0, 14, (40,))
    ids, cnt = torch.unique(rows, return_counts=True)
    ref = _released_item_uniformity(F.normalize(x, dim=1)[rows], h[rows])
    g_ref = torch.autograd.grad(ref, (x, h))
    ours = calibrated_uniformity(F.normalize(x, dim=1)[ids], None, 2.0, cnt, features=h[ids])
    g_ours = torch.autograd.grad(ours, (x, h))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)
    # a detached similarity is a constant weight: no gradient to h
    out = calibrated_uniformity(F.normalize(x, dim=1), None, 2.0, features=h.detach())
    out.backward()
    assert h.grad is None


def test_calibrated_uniformity_edge_cases():
    x = torch.randn(1, 4)
    assert float(calibrated_uniformity(x)) == 0.0
    # one distinct row standing for 3 copies: all pairs at distance 0
    assert abs(float(calibrated_uniformity(F.normalize(x, dim=1), None, 2.0, torch.tensor([3])))) < 1e-6
    with pytest.raises(ValueError):
        calibrated_uniformity(torch.randn(3, 2), torch.ones(3, 3), features=torch.randn(3, 2))
    with pytest.raises(ValueError):
        calibrated_uniformity(torch.randn(3, 2), torch.ones(2, 2))


# ----------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n_users=120, n_items=90, modalities={"image": 24, "text": 16}, seed=3)


@pytest.fixture(scope="module")
def batch(synth):
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, len(synth.train), (256,), generator=g)
    pairs = torch.as_tensor(synth.train)[rows]
    return Batch(pairs[:, 0], pairs[:, 1], torch.randint(0, synth.n_items, (256,), generator=g))


def make(ds, **cfg):
    # the explicit Linear fusion inputs (released code) keep the fused channel's own parameters in
    # these tests; the library default (projection: fuse the z^m) has its own tests below
    # variant paper: the tests below deviate one switch at a time from the paper's switches
    return build_model("cm3", ds, {"graph_cache": False, "variant": "paper", "fusion_input": "linear", **cfg})


def clone_into(src, **cfg):
    """A model with other switches but the same parameters (the switches add no parameters)."""
    dst = make(src._ds, **cfg)
    dst.load_state_dict(src.state_dict())
    return dst


def loss_terms(model, batch, seed=0):
    torch.manual_seed(seed)  # the same Beta draw for every model
    return model.loss(batch)


@pytest.fixture()
def model(synth):
    torch.manual_seed(0)
    m = make(synth)
    m._ds = synth
    return m


def test_registry_and_config():
    from mmgraph.train import load_config
    assert get_model_class("cm3") is CM3
    cfg = load_config("cm3")
    assert cfg["patience"] == 10 and cfg["n_ui_layers"] == 3 and cfg["gamma"] == 0.9
    assert cfg["embedding_size"] == 64 and cfg["hidden_size"] == 256 and cfg["uniformity_t"] == 2.0
    for key in CM3.defaults:
        assert key in cfg, key


def test_default_variant_is_the_released_code_with_a_detached_similarity():
    """Issue 18: the shipped default keeps every released switch but ``detach_sim``; ``variant=released``
    still means the released code, whatever the default."""
    from mmgraph.models.cm3 import SWITCHES, VARIANTS
    from mmgraph.train import load_config
    resolved = CM3.resolve_config(load_config("cm3"))
    assert {k: resolved[k] for k in SWITCHES} == {**VARIANTS["released"], "detach_sim": "auto"}
    assert CM3.resolve_config({})["detach_sim"] == "auto"  # the Python API without a config: the same default
    released = CM3.resolve_config(load_config("cm3", overrides={"variant": "released"}))
    assert {k: released[k] for k in SWITCHES} == VARIANTS["released"]
    paper = CM3.resolve_config(load_config("cm3", overrides={"variant": "paper"}))
    assert {k: paper[k] for k in SWITCHES} == VARIANTS["paper"]


def test_detach_sim_auto_detaches_with_two_modalities_only(synth):
    """``auto`` (the default): ``s`` follows the per-step lam draw only when there are >= 2 modalities."""
    two = build_model("cm3", synth, {"graph_cache": False})
    one = build_model("cm3", synth, {"graph_cache": False, "drop_modality": "image"})
    assert two.config["detach_sim"] is True and one.config["detach_sim"] is False
    assert build_model("cm3", synth, {"graph_cache": False, "detach_sim": False}).config["detach_sim"] is False
    with pytest.raises(ConfigError, match="detach_sim"):
        build_model("cm3", synth, {"graph_cache": False, "detach_sim": "sometimes"})


def test_shapes_channels_and_unit_inputs(model, synth):
    d = model.embedding_size
    assert model.n_channels == 3
    u, i = model.forward()
    assert u.shape == (synth.n_users, 3 * d) and i.shape == (synth.n_items, 3 * d)
    # eq. 1: d_m -> 256 -> 64, LeakyReLU, no bias on W2
    mlp = model.mlp["image"]
    assert (mlp.lin1.in_features, mlp.lin1.out_features, mlp.lin2.out_features) == (24, 256, d)
    assert mlp.lin2.bias is None
    # user preference weights W3 [U, |M|+1, 1]
    assert model.user_pref.shape == (synth.n_users, 3, 1)


def test_encode_follows_the_equations(model, synth):
    """Item input = [norm z^0, norm z^1, norm slerp]; LightGCN SUM; softmax user weights; residual item hop."""
    model.eval()
    d = model.embedding_size
    with torch.no_grad():
        z = {m: model.mlp[m](torch.as_tensor(synth.features[m])) for m in model.modalities}
        p = [F.normalize(model.fusion_proj[m](torch.as_tensor(synth.features[m])), dim=-1) for m in model.modalities]
        h = slerp(p[1], p[0], 0.5)  # f(x^1, x^0), deterministic lambda = 0.5 at evaluation
        items_in = torch.cat([F.normalize(z[m], dim=-1) for m in model.modalities] + [F.normalize(h, dim=-1)], 1)
        users_in = F.normalize(model.user_emb, dim=-1).reshape(synth.n_users, -1)
        adj = normalized_bipartite_adj(synth.train, synth.n_users, synth.n_items)
        rep = LightGCNEncoder(3, "sum")(torch.cat([users_in, items_in]), adj)
        w = torch.softmax(model.user_pref, dim=1)
        users = (w * rep[: synth.n_users].view(-1, 3, d)).reshape(synth.n_users, -1)
        s = freedom_graph(synth.features, 10, weights={"image": 0.1, "text": 0.9}).to_dense()
        items = rep[synth.n_users:] + s @ rep[synth.n_users:]
        u, i = model.forward()
    torch.testing.assert_close(u, users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i, items, atol=1e-5, rtol=1e-5)
    # scoring (eq. 13): the raw representations by default
    eu, ei = model.embeddings()
    torch.testing.assert_close(eu, users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ei, items, atol=1e-5, rtol=1e-5)


def test_item_graph_weights_follow_the_modalities():
    ds = make_synthetic(n_users=60, n_items=50, modalities={"image": 8, "audio": 8}, seed=1)
    m = make(ds)
    ref = freedom_graph(ds.features, 10, weights={"image": 0.1, "audio": 0.9})
    torch.testing.assert_close(m.item_graph.csr.to_dense(), ref.to_dense())
    ds3 = make_synthetic(n_users=60, n_items=50, modalities={"image": 8, "audio": 8, "text": 4}, seed=1)
    m3 = make(ds3)
    ref3 = freedom_graph(ds3.features, 10)  # equal weights for other modality sets
    torch.testing.assert_close(m3.item_graph.csr.to_dense(), ref3.to_dense())
    assert m3.n_channels == 4 and m3.last_lam.shape == (50, 2)


def test_loss_is_align_plus_gamma_uniformities(model, batch):
    out = loss_terms(model, batch)
    terms = out.terms
    assert set(terms) == {"align", "uniform_user", "uniform_item"}
    expected = terms["align"] + 0.9 * (terms["uniform_user"] + terms["uniform_item"]) / 2
    assert abs(float(out.loss.detach()) - float(expected.detach())) < 1e-6
    # the terms themselves, from the representations the step used
    terms = {k: v.detach() for k, v in terms.items()}
    all_users = out.user_rows(torch.arange(model.n_users)).detach()  # rows on demand, same graph
    torch.manual_seed(0)
    ref_users, ref_items, _ = model.encode()  # the same Beta draw as the loss
    torch.testing.assert_close(all_users, ref_users.detach())
    torch.testing.assert_close(out.item_emb.detach(), ref_items.detach())
    u, i = F.normalize(all_users, dim=-1), F.normalize(out.item_emb.detach(), dim=-1)
    assert abs(float(terms["align"]) - float(alignment(u[batch.users], i[batch.pos]))) < 1e-6
    ref_uu = torch.pdist(u[batch.users]).pow(2).mul(-2).exp().mean().log()  # every batch row (released)
    assert abs(float(terms["uniform_user"]) - float(ref_uu)) < 1e-4
    assert "bpr" not in terms


def test_gradients_flow_to_projections_users_and_preferences(model, batch):
    loss_terms(model, batch).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert not any(b.requires_grad for b in model.buffers())  # frozen raw features


def test_detach_sim_changes_only_the_similarity_gradient(model, batch):
    other = clone_into(model, detach_sim=False)
    a, b = loss_terms(model, batch), loss_terms(other, batch)
    for k in a.terms:
        assert abs(float(a.terms[k].detach()) - float(b.terms[k].detach())) < 1e-6
    a.loss.backward()
    b.loss.backward()
    ga, gb = model.fusion_proj["image"].weight.grad, other.fusion_proj["image"].weight.grad
    assert not torch.allclose(ga, gb)  # the extra path through s
    torch.testing.assert_close(model.mlp["image"].lin1.weight.grad, other.mlp["image"].lin1.weight.grad)
    torch.testing.assert_close(model.user_emb.grad, other.user_emb.grad)


def _changed(a, b, tol=1e-6):
    return {k for k in a.terms if abs(float(a.terms[k].detach()) - float(b.terms[k].detach())) > tol}


def test_uniformity_switch_standard_changes_only_the_item_term(model, batch):
    std = clone_into(model, uniformity="standard")
    a, b = loss_terms(model, batch), loss_terms(std, batch)
    assert _changed(a, b) == {"uniform_item"}
    ids = torch.unique(torch.cat([batch.pos, batch.neg]))
    ref = uniformity(F.normalize(b.item_emb[ids], dim=-1))
    assert abs(float(b.terms["uniform_item"].detach()) - float(ref.detach())) < 1e-5


def test_item_set_switch_negatives_only(model, batch):
    neg = clone_into(model, uniform_items="neg")
    a, b = loss_terms(model, batch), loss_terms(neg, batch)
    assert _changed(a, b) == {"uniform_item"}
    ids = torch.unique(batch.neg)
    torch.manual_seed(0)  # the same draw as in loss_terms
    _, items, h = neg.encode()
    ref = calibrated_uniformity(F.normalize(items[ids], dim=-1), clamped_cosine(h[ids]), 2.0)
    assert abs(float(b.terms["uniform_item"].detach()) - float(ref.detach())) < 1e-5


def test_pair_weighting_switches(model, batch):
    rows = clone_into(model, item_pairs="rows")
    a, b = loss_terms(model, batch), loss_terms(rows, batch)
    assert _changed(a, b) == {"uniform_item"}
    distinct = clone_into(model, user_pairs="distinct")
    c = loss_terms(distinct, batch)
    assert _changed(a, c) == {"uniform_user"}
    u = F.normalize(c.user_rows(torch.unique(batch.users)), dim=-1)
    assert abs(float(c.terms["uniform_user"].detach()) - float(uniformity(u).detach())) < 1e-5


def test_gamma_weighs_the_halved_bracket_whatever_the_switches(model, batch):
    for cfg in ({}, {"variant": "released"}, {"item_pairs": "rows", "detach_sim": False}):
        b = loss_terms(clone_into(model, **cfg), batch)
        t = {k: v.detach() for k, v in b.terms.items()}
        assert abs(float(b.loss.detach()) - float(t["align"] + 0.9 * (t["uniform_user"] + t["uniform_item"]) / 2)) < 1e-6
    with pytest.raises(ConfigError, match="halve_uniform"):
        clone_into(model, halve_uniform=True)


def test_multiplicity_weighted_batch_items_warn(model, caplog):
    """Issue 18: items weighted by their batch count over positives + negatives is allowed, with a warning."""
    with caplog.at_level("WARNING", logger="mmgraph.models.cm3"):
        clone_into(model, item_pairs="rows", uniform_items="batch")
    assert "item_pairs=rows with uniform_items=batch" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmgraph.models.cm3"):
        clone_into(model, item_pairs="rows", uniform_items="neg")
        clone_into(model, item_pairs="distinct", uniform_items="batch")
    assert "item_pairs=rows" not in caplog.text


def test_fusion_switches_change_only_the_fused_channel(model, synth):
    # lambda = 0.3: at 0.5 the normalised linear and spherical midpoints coincide
    sl = clone_into(model, eval_lambda=0.3).eval()
    lf = clone_into(model, fusion="linear", eval_lambda=0.3).eval()
    d = model.embedding_size
    with torch.no_grad():
        x_s, x_l = sl.item_inputs()[0], lf.item_inputs()[0]
    torch.testing.assert_close(x_s[:, : 2 * d], x_l[:, : 2 * d])
    assert not torch.allclose(x_s[:, 2 * d:], x_l[:, 2 * d:])
    p = [F.normalize(model.fusion_proj[m](torch.as_tensor(synth.features[m])), dim=-1) for m in model.modalities]
    with torch.no_grad():
        torch.testing.assert_close(x_l[:, 2 * d:], F.normalize(0.3 * p[1] + 0.7 * p[0], dim=-1))
        torch.testing.assert_close(x_s[:, 2 * d:], slerp(p[1], p[0], 0.3))
    # w/o F: no fused channel at all
    nof = make(synth, fusion="none")
    assert nof.n_channels == 2 and nof.user_emb.shape[1] == 2
    u, i = nof.forward()
    assert i.shape[1] == 2 * d


@pytest.mark.parametrize("variant", ["default", "released", "paper"])
def test_without_fusion_the_similarity_source_is_the_trained_z_vectors(synth, variant):
    # w/o F changes the fusion only: s still comes from the z^m that training moves (with the released Linear
    # fusion inputs it came from their random initialisation, which nothing trains without the fusion)
    torch.manual_seed(0)
    m = build_model("cm3", synth, {"graph_cache": False, "variant": variant, "fusion": "none"}).eval()
    with torch.no_grad():
        x, src = m.item_inputs()
        z = [F.normalize(m.mlp[k](torch.as_tensor(synth.features[k])), dim=-1) for k in m.modalities]
    torch.testing.assert_close(src, torch.cat(z, 1))
    torch.testing.assert_close(x, torch.cat(z, 1))


def test_fused_channel_stays_unit_for_antipodal_fusion_inputs():
    ds = make_synthetic(n_users=40, n_items=30, modalities={"image": 8, "text": 8}, seed=1)
    ds.features["text"] = ds.features["image"].copy()
    torch.manual_seed(0)
    m = build_model("cm3", ds, {"graph_cache": False, "variant": "released", "eval_lambda": 0.3}).eval()
    with torch.no_grad():   # text's fusion input = -(image's): every item's two inputs are antipodal
        m.fusion_proj["text"].weight.copy_(-m.fusion_proj["image"].weight)
        m.fusion_proj["text"].bias.copy_(-m.fusion_proj["image"].bias)
        x, h = m.item_inputs()
    norms = torch.linalg.vector_norm(x.view(ds.n_items, -1, m.embedding_size), dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    torch.testing.assert_close(torch.linalg.vector_norm(h, dim=1), torch.ones(ds.n_items))


def test_fusion_input_projection_fuses_the_z_vectors(synth):
    assert VARIANTS["paper"]["fusion_input"] == "projection"  # paper eq. 2 on the eq. 1 outputs
    torch.manual_seed(0)
    m = build_model("cm3", synth, {"graph_cache": False, "variant": "paper"}).eval()
    assert len(m.fusion_proj) == 0
    with torch.no_grad():
        x, h = m.item_inputs()
        z = [F.normalize(m.mlp[k](torch.as_tensor(synth.features[k])), dim=-1) for k in m.modalities]
        torch.testing.assert_close(h, slerp(z[1], z[0], 0.5))
        torch.testing.assert_close(x, torch.cat(z + [h], 1))
    # the fused channel is trained through the modality MLPs: gradients reach them from every channel
    m.train()
    out = m.loss(Batch(torch.as_tensor(synth.train[:64, 0]), torch.as_tensor(synth.train[:64, 1]),
                       torch.as_tensor(synth.train[64:128, 1])))
    out.loss.backward()
    assert all(float(m.mlp[k].lin1.weight.grad.abs().sum()) > 0 for k in m.modalities)


def test_drop_modality(synth):
    m = make(synth, drop_modality="image")
    assert m.modalities == ["text"] and m.n_channels == 2 and "image" not in m.mlp
    ref = freedom_graph({"text": synth.features["text"]}, 10)
    torch.testing.assert_close(m.item_graph.csr.to_dense(), ref.to_dense())
    u, i = m.forward()
    assert i.shape[1] == 2 * m.embedding_size
    with pytest.raises(ConfigError):
        make(synth, drop_modality=["image", "text"])
    with pytest.raises(ConfigError):
        make(synth, drop_modality="video")


def test_scoring_switch_and_lambda_at_evaluation(model, batch):
    assert model.config["score_norm"] is False  # eq. 13: raw e_u . x_i by default
    model.eval()
    u, i = model.embeddings()
    fu, fi = model.forward()
    torch.testing.assert_close(u, fu)
    torch.testing.assert_close(i, fi)
    assert not torch.allclose(u.norm(dim=-1), torch.ones(len(u)))
    normed = clone_into(model, score_norm=True)
    normed.eval()
    nu, ni = normed.embeddings()
    torch.testing.assert_close(nu.norm(dim=-1), torch.ones(len(nu)))
    torch.testing.assert_close(ni, torch.nn.functional.normalize(i, dim=-1))
    # evaluation is deterministic (lambda = 0.5), training draws a new lambda per item each forward
    torch.testing.assert_close(model.embeddings()[1], model.embeddings()[1])
    model.train()
    model.forward()
    first = model.last_lam.clone()
    model.forward()
    assert not torch.allclose(first, model.last_lam)
    assert first.shape == (model.n_items, 1) and 0 <= float(first.min()) and float(first.max()) <= 1
    # eval_lambda: last reuses the latest training draw (the released code's behaviour)
    last = clone_into(model, eval_lambda="last")
    last.last_lam.copy_(first)
    last.eval()
    with torch.no_grad():
        _, h = last.item_inputs()
        model.eval()
        _, h05 = model.item_inputs()
    assert not torch.allclose(h, h05)
    with pytest.raises(ConfigError):
        make(model._ds, eval_lambda=2)


def test_released_variant_reproduces_the_released_loss(model, batch):
    rel = clone_into(model, variant="released", fusion_input=None)
    for key, value in VARIANTS["released"].items():
        assert rel.config[key] == value
    out = loss_terms(rel, batch)
    torch.manual_seed(0)
    users, items, h = rel.encode()
    u, i = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
    align = alignment(u[batch.users], i[batch.pos])
    uu = torch.pdist(u[batch.users]).pow(2).mul(-2).exp().mean().log()
    ui = _released_item_uniformity(i[batch.neg], h[batch.neg])
    ref = align + 0.9 * (uu + ui) / 2
    assert abs(float(out.loss.detach()) - float(ref.detach())) < 1e-4
    # gradients equal too (similarity not detached)
    g_ours = torch.autograd.grad(out.loss, [rel.fusion_proj["image"].weight, rel.user_emb])
    g_ref = torch.autograd.grad(ref, [rel.fusion_proj["image"].weight, rel.user_emb])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    # raw scoring
    assert rel.config["score_norm"] is False


def test_bad_switch_values_are_config_errors(synth):
    for key, value in [("fusion", "cubic"), ("uniformity", "x"), ("uniform_items", "all"), ("variant", "nope"),
                       ("user_pairs", "x"), ("fusion_input", "x")]:
        with pytest.raises(ConfigError):
            make(synth, **{key: value})


def test_fast_sparse_paths_match_reference(model, synth):
    x = torch.randn(synth.n_items, 7, requires_grad=True)
    a, b = model.item_graph.matmul(x), model.item_graph.csr.to_dense() @ x
    torch.testing.assert_close(a, b)
    g = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0])
    y = torch.randn(5, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(row_normalize, (y,))
    w = torch.randn(5, 3, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ChannelWeights.apply, (w, y))
    a = normalized_bipartite_adj(synth.train, synth.n_users, synth.n_items).csr.to_dense()
    for layers in (0, 1, 3):
        model.encoder.n_layers = layers
        x = torch.randn(synth.n_users + synth.n_items, 6, requires_grad=True)
        ref, h = x, x
        for _ in range(layers):  # dense reference of the sum readout
            h = a @ h
            ref = ref + h
        pu, pi = model.propagate(x[: synth.n_users], x[synth.n_users:])
        out = torch.cat([pu, pi])
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                                   atol=1e-5, rtol=1e-5)
    model.encoder.n_layers = 3


def test_malloc_tuning_is_idempotent():
    from mmgraph.utils.memory import tune_glibc_malloc
    first = tune_glibc_malloc()
    assert isinstance(first, bool) and tune_glibc_malloc() == first


def test_runs_use_the_fused_optimizer_by_default(synth):
    from mmgraph.train import load_config
    from mmgraph.train.trainer import Trainer
    for method in ("cm3", "freedom"):
        cfg = load_config(method, overrides={"graph_cache": False, "log_geometry": False})
        assert cfg["fused_optimizer"] is True
    cfg = load_config("cm3", overrides={"graph_cache": False, "log_geometry": False})
    trainer = Trainer(make(synth, **cfg), synth, cfg)
    assert trainer.optimizer.defaults.get("fused") is True
    plain = Trainer(make(synth), synth, {"log_geometry": False, "fused_optimizer": False})
    assert not plain.optimizer.defaults.get("fused")
