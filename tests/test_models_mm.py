import numpy as np
import pytest
import torch

from mmgraph.data import make_synthetic
from mmgraph.graph.bipartite import normalized_bipartite_adj
from mmgraph.models.freedom import DegreeSensitivePruning
from mmgraph.train import build_model, load_config, train
from tests.helpers import popularity_recall


@pytest.mark.parametrize("method,extra", [("vbpr", {}), ("bm3", {}),
                                          ("freedom", {"reg_weight": 1e-3, "graph_cache": False})])
def test_multimodal_models_beat_popularity_and_mf(synth, mf_recall, method, extra):
    cfg = load_config(method, overrides={"epochs": 30, "patience": 5, "seed": 1, "learning_rate": 5e-3,
                                         "batch_size": 256, "log_geometry": False, **extra})
    result, _ = train(method, synth, cfg, progress=False)
    assert result["test"]["recall@20"] > popularity_recall(synth) + 0.01
    assert result["test"]["recall@20"] > mf_recall


def test_pruning_keeps_exact_count_and_renormalises(synth):
    pairs = np.unique(synth.train, axis=0)
    p = DegreeSensitivePruning(torch.from_numpy(pairs.T.copy()), synth.n_users, synth.n_items, rho=0.8)
    keep = p.sample()
    assert len(keep) == int(len(pairs) * 0.2) == len(torch.unique(keep))
    adj = p.adjacency(keep)
    kept = pairs[keep.numpy()]
    ref = normalized_bipartite_adj(kept, synth.n_users, synth.n_items).csr.to_dense()
    torch.testing.assert_close(adj.csr.to_dense(), ref)


def test_pruning_probabilities_are_degree_sensitive():
    # tiny graph; keeping a single edge makes the draw distribution exactly p_e / sum(p)
    pairs = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [2, 0], [3, 3]])
    p = DegreeSensitivePruning(torch.from_numpy(pairs.T.copy()), 4, 4, rho=1 - 1.5 / 6)  # keep floor(6 * 0.25) = 1
    du = np.bincount(pairs[:, 0], minlength=4)
    di = np.bincount(pairs[:, 1], minlength=4)
    expected = 1 / np.sqrt(du[pairs[:, 0]] * di[pairs[:, 1]])
    expected /= expected.sum()
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = np.bincount(torch.cat([p.sample(g) for _ in range(n)]).numpy(), minlength=6)
    chi2 = (((counts - n * expected) ** 2) / (n * expected)).sum()
    assert chi2 < 20.5  # p = 0.001 critical value for 5 degrees of freedom


def test_freedom_trains_on_pruned_graph_and_scores_on_full_graph(synth):
    model = build_model("freedom", synth, {"dropout": 0.8, "graph_cache": False})
    full_u, full_i = model.embeddings()
    model.on_epoch_start(0)
    assert model.train_adj.nnz < model.adj.nnz
    u_pruned, _ = model.forward(model.train_adj)
    assert not torch.allclose(u_pruned, full_u)
    u2, i2 = model.embeddings()  # scoring ignores the pruned graph
    torch.testing.assert_close(u2, full_u)
    torch.testing.assert_close(i2, full_i)
    # item branch = S @ E_item with the FREEDOM graph (rows sum to 1)
    sums = model.item_graph.csr.to_dense().sum(1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_freedom_scores_are_the_dense_formula(synth):
    """FREEDOM (MMRec): users / items = mean over layers 0..L of LightGCN on the normalised user-item graph; items
    add ``S^(n_mm_layers) E_item`` with S the frozen kNN graph built independently here, all dense."""
    from mmgraph.graph import freedom_graph
    from mmgraph.graph.bipartite import normalized_bipartite_adj
    model = build_model("freedom", synth, {"n_ui_layers": 2, "n_mm_layers": 2, "graph_cache": False})
    adj = normalized_bipartite_adj(synth.train, synth.n_users, synth.n_items).csr.to_dense().double()
    s = freedom_graph(synth.features, 10, image_weight=model.config["mm_image_weight"]).to_dense().double()
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().double()
    mean = (x + adj @ x + adj @ adj @ x) / 3
    branch = s @ (s @ model.item_emb.weight.detach().double())
    u, i = model.embeddings()
    torch.testing.assert_close(u.double(), mean[:synth.n_users], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i.double(), mean[synth.n_users:] + branch, atol=1e-5, rtol=1e-4)


def test_freedom_image_weight_and_any_modalities(synth):
    ds = make_synthetic(n_users=100, n_items=80, modalities={"image": 16, "audio": 8, "text": 8}, seed=1)
    from mmgraph.graph import freedom_graph
    model = build_model("freedom", ds, {"mm_image_weight": 0.1, "graph_cache": False})
    ref = freedom_graph(ds.features, 10, weights={"image": 0.1, "audio": 0.45, "text": 0.45})
    torch.testing.assert_close(model.item_graph.csr.to_dense(), ref.to_dense())


def test_bm3_folded_modality_map_equals_predictor_of_projection(synth):
    """BM3's modality channel ``predictor(Linear_m(x_m))`` applied as one affine map: same rows and gradients."""
    model = build_model("bm3", synth, {"embedding_size": 16}).double()
    items = torch.tensor([0, 3, 3, 7])
    for m in model.modal.modalities:
        params = [model.predictor.weight, model.predictor.bias, model.modal.proj[m].weight, model.modal.proj[m].bias,
                  model.modal.tables[m]]
        ref = model.predictor(model.modal.project(m, items))
        got = model.predicted_modality(m, items)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(model.predicted_modality(m), model.predictor(model.modal.project(m)))
        w = torch.randn_like(ref)
        for g, r in zip(torch.autograd.grad((got * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)):
            torch.testing.assert_close(g, r)


def test_freedom_feature_bpr_equals_the_per_side_form(synth):
    """One gather of the distinct pos / neg rows per modality: the values and gradients (trainable feature
    tables and projections) of projecting each side separately (float64)."""
    from mmgraph.losses import bpr_loss
    from tests.helpers import assert_same_gradients, random_batch
    model = build_model("freedom", synth, {"reg_weight": 1e-3, "graph_cache": False}).double()
    batch = random_batch(synth, n=64, seed=3)
    users = torch.randn(64, model.embedding_size, dtype=torch.float64)
    got, scores = model.feature_bpr(users, batch.pos, batch.neg)
    ref_scores = {m: ((users * model.modal.project(m, batch.pos)).sum(-1),
                      (users * model.modal.project(m, batch.neg)).sum(-1)) for m in model.modal.modalities}
    ref = sum(bpr_loss(*s) for s in ref_scores.values())
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-12)
    assert len(torch.unique(torch.cat([batch.pos, batch.neg]))) < 128      # shared items are exercised
    assert_same_gradients(got, ref, [p for p in model.parameters() if p.requires_grad])


def test_vbpr_scores_and_loss_equal_the_paper_formula(synth):
    """VBPR (He & McAuley, eq. 1 without biases, as MMRec): ``s(u, i) = gamma_u . gamma_i + theta_u . (W x_i + b)``
    with ``x_i`` the item's modalities concatenated; loss BPR + reg_weight * MMRec's EmbLoss of the batch rows;
    a modality channel scores ``theta_u . W_m x_m`` (``W_m``: its columns of ``W``)."""
    import torch.nn.functional as F

    from mmgraph.losses import bpr_loss, emb_reg
    from mmgraph.models.base import Batch

    torch.manual_seed(0)
    model = build_model("vbpr", synth, {"reg_weight": 1e-2})
    feats = model.features
    x = torch.cat([feats.raw(m) for m in feats.modalities], 1).double()              # [I, sum d_m]
    w, b = model.item_linear.weight.double(), model.item_linear.bias.double()
    theta_u = model.user_emb.double()[:, model.embedding_size:]
    items = torch.cat([model.item_emb.double(), F.linear(x, w, b)], 1)              # [I, 2d]
    users, pos, neg = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 1]), torch.tensor([4, 2, 9])   # repeats
    torch.testing.assert_close(model.item_representation(pos).double(), items[pos], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.forward()[1].double(), items, rtol=1e-5, atol=1e-5)
    eu = model.user_emb.double()[users]
    s_pos, s_neg = (eu * items[pos]).sum(1), (eu * items[neg]).sum(1)
    want = bpr_loss(s_pos, s_neg) + 1e-2 * emb_reg(eu, items[pos], items[neg])
    out = model.loss(Batch(users, pos, neg))
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)
    # gradients: against the same formula on the model's own float32 parameters, rows indexed plainly
    params = [model.user_emb, model.item_emb, model.item_linear.weight, model.item_linear.bias]
    got_g = torch.autograd.grad(out.loss, params)
    rows = torch.cat([model.item_emb, F.linear(x.float(), model.item_linear.weight, model.item_linear.bias)], 1)
    eu32 = model.user_emb[users]
    ref = (bpr_loss((eu32 * rows[pos]).sum(1), (eu32 * rows[neg]).sum(1))
           + 1e-2 * emb_reg(eu32, rows[pos], rows[neg]))
    for a, b in zip(got_g, torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    start = 0
    for m in feats.modalities:
        d_m = feats.dims[m]
        rows = x[:, start:start + d_m] @ w[:, start:start + d_m].t()
        got = out.channel(m).item_rows(pos).double()
        torch.testing.assert_close(got, rows[pos], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.channel(m).user_rows(users).double(), theta_u[users], rtol=0, atol=0)
        start += d_m


@pytest.mark.parametrize("trainable", [True, False])
def test_modality_projection_of_repeated_items_equals_plain_indexing(trainable, monkeypatch):
    """``ModalityEncoder.project`` projects each distinct item once: the rows and every gradient equal those of
    ``F.linear(table[items])``."""
    import torch.nn.functional as F

    import mmgraph.nn.features as features
    from mmgraph.nn.features import ModalityEncoder

    rows, plain = [], features.linear
    monkeypatch.setattr(features, "linear", lambda x, *a: rows.append(x.shape[0]) or plain(x, *a))

    g = torch.Generator().manual_seed(0)
    enc = ModalityEncoder({"image": torch.randn(30, 12, generator=g, dtype=torch.float64)}, 5, trainable=trainable)
    enc.double()
    items = torch.tensor([4, 9, 4, 0, 29, 9, 9, 17])
    table, lin = enc.table("image"), enc.proj["image"]
    params = [p for p in (table, lin.weight, lin.bias) if p.requires_grad]
    coef = torch.randn(len(items), 5, generator=g, dtype=torch.float64)
    got = enc.project("image", items)
    got_g = torch.autograd.grad((got * coef).sum(), params)
    want = F.linear(table[items], lin.weight, lin.bias)
    want_g = torch.autograd.grad((want * coef).sum(), params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert rows == [5] and len(params) == (3 if trainable else 2)      # 5 distinct of the 8 items
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_vbpr_initialises_as_mmrec(synth):
    # MMRec: xavier_uniform_ user / item tables, then xavier_normal_initialization on the Linear (zero bias)
    torch.manual_seed(0)
    model = build_model("vbpr", synth, {"graph_cache": False})
    w = model.item_linear.weight.detach()
    assert torch.equal(model.item_linear.bias, torch.zeros_like(model.item_linear.bias))
    fan_out, fan_in = w.shape
    assert float(w.std()) == pytest.approx((2.0 / (fan_in + fan_out)) ** 0.5, rel=0.15)
    bound = (6.0 / (model.n_users + model.user_emb.shape[1])) ** 0.5
    assert float(model.user_emb.detach().abs().max()) <= bound


def test_bm3_initialises_as_mmrec(synth):
    # MMRec's BM3: xavier_uniform_ ID tables; xavier_normal_ on the predictor's and projections' weights only
    torch.manual_seed(0)
    model = build_model("bm3", synth, {"graph_cache": False})
    for table in (model.user_emb.weight.detach(), model.item_emb.weight.detach()):
        assert float(table.abs().max()) <= (6.0 / sum(table.shape)) ** 0.5
    for lin in model.modal.proj.values():
        weight, bias = lin.weight.detach(), lin.bias.detach()
        fan_in = weight.shape[1]
        assert bias.abs().max() > 0 and float(bias.abs().max()) <= fan_in ** -0.5   # PyTorch's default
        assert float(weight.std()) == pytest.approx((2.0 / (fan_in + weight.shape[0])) ** 0.5, rel=0.2)


def test_modality_encoder_inits():
    from mmgraph.nn.features import ModalityEncoder
    feats = {"image": torch.randn(30, 40)}
    torch.manual_seed(0)
    zero = ModalityEncoder(feats, 16, init="xavier_normal").proj["image"]
    weight_only = ModalityEncoder(feats, 16, init="xavier_normal_weight").proj["image"]
    default = ModalityEncoder(feats, 16).proj["image"]
    assert not zero.bias.any() and weight_only.bias.any() and default.bias.any()
    assert float(default.weight.detach().abs().max()) <= 40 ** -0.5 < float(weight_only.weight.detach().abs().max())
    with pytest.raises(ValueError, match="init: expected one of"):
        ModalityEncoder(feats, 16, init="kaiming")
