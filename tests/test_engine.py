"""The engine: one HeteroData on the training path, propagation through MessagePassing, channels,
model samplers, plug-in hooks, FAISS evaluation and the defects fixed with it."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgraph.cli.main import main
from mmgraph.data import make_synthetic, save_atomic
from mmgraph.errors import ConfigError
from mmgraph.evaluation import Evaluator
from mmgraph.graph import Relation, build_graph, load_graph, relation_graph, save_graph
from mmgraph.graph.base import ItemGraph
from mmgraph.graph.relations import set_relation
from mmgraph.models.base import Batch
from mmgraph.nn.conv import LightGCNConv
from mmgraph.train import build_model, load_config, train
from mmgraph.train.trainer import Trainer, make_adam

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=120, n_items=90, modalities={"image": 12, "text": 6}, seed=5)


def _cfg(method, **kw):
    return load_config(method, overrides={"epochs": 4, "patience": 100, "seed": 2, "graph_cache": False,
                                          "log_geometry": False, **kw})


# ------------------------------------------------------------------------------------------ one graph
def test_no_graph_builder_is_called_from_models_or_plugins():
    builders = r"\b(knn_graph|knn_item_graph|freedom_graph|freedom_modality_graph|anchorrec_graphs?|" \
               r"brmrs_item_graph|build_item_graphs|cooccurrence_graph|cooccurrence_topk|build_graph|" \
               r"build_relation|normalized_bipartite(_adj)?|build_hetero_data)\s*\("
    for folder in ("models", "plugins"):
        for path in (ROOT / "mmgraph" / folder).glob("*.py"):
            if path.name == "experiments.py":  # drives whole runs, not a model
                continue
            hits = re.findall(builders, path.read_text())
            assert not hits, f"{path.name} calls a graph builder: {hits}"


@pytest.mark.parametrize("method", ["lightgcn", "freedom"])
def test_training_from_a_graph_file_equals_the_default_path(small, tmp_path, method, capsys):
    folder = tmp_path / "toy"
    save_atomic(small, folder, name="toy")
    graph_file = tmp_path / "g.pt"
    assert main(["graph", "build", "--data", str(folder), "--method", method, "--no-cache",
                 "--out", str(graph_file)]) == 0
    capsys.readouterr()
    from mmgraph.data import load_atomic
    ds = load_atomic(folder)
    cfg = _cfg(method)
    direct, _ = train(method, ds, cfg, progress=False)
    from_file, _ = train(method, ds, cfg, progress=False, graph=graph_file)
    assert from_file["test"] == direct["test"] and from_file["valid"] == direct["valid"]


def test_a_hand_made_item_relation_is_used_through_graph(small, tmp_path, capsys):
    folder = tmp_path / "toy"
    save_atomic(small, folder, name="toy")
    data = build_graph(small, [])
    # a user-made relation under the name FREEDOM reads: every item linked to its two id-neighbours
    n = small.n_items
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([(np.arange(n) + 1) % n, (np.arange(n) - 1) % n], 1).reshape(-1)
    mine = ItemGraph.from_edges(rows, cols, np.full(2 * n, 0.5, dtype=np.float32), num_nodes=n)
    set_relation(data, ("item", "knn_mm", "item"), mine)
    graph_file = tmp_path / "mine.pt"
    save_graph(data, graph_file)
    model = build_model("freedom", load_graph(graph_file, small), _cfg("freedom"))
    torch.testing.assert_close(model.item_graph.csr.to_dense(), mine.to_dense())
    out = tmp_path / "run"
    rc = main(["train", "--method", "freedom", "--data", str(folder), "--graph", str(graph_file), "--epochs", "2",
               "--set", "graph_cache=false", "log_geometry=false", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert json.loads((out / "meta.json").read_text())["graph"] == str(graph_file.resolve())
    # evaluate reloads the same graph from the run folder
    assert main(["evaluate", str(out), "--json"]) == 0
    capsys.readouterr()


def test_a_graph_that_does_not_fit_is_a_clear_error(small, tmp_path, capsys):
    folder = tmp_path / "toy"
    save_atomic(small, folder, name="toy")
    other = make_synthetic(n_users=120, n_items=90, modalities={"image": 12, "text": 6}, seed=6)
    save_graph(build_graph(other, []), tmp_path / "other.pt")
    save_graph(build_graph(small, []), tmp_path / "bare.pt")
    smaller = make_synthetic(n_users=100, n_items=90, modalities={"image": 12}, seed=5)
    save_graph(build_graph(smaller, []), tmp_path / "smaller.pt")
    for name, expected in (("other.pt", "training interactions"), ("bare.pt", "knn_mm"),
                           ("smaller.pt", "user nodes")):
        rc = main(["train", "--method", "freedom", "--data", str(folder), "--graph", str(tmp_path / name),
                   "--epochs", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and expected in err[0], err


def test_graph_file_round_trip_and_relation_kinds(small, tmp_path):
    rels = [Relation("knn_mm", "freedom", {"k": 4}), Relation("knn_image", "knn", {"modality": "image", "k": 3}),
            Relation("cooccur", "cooccurrence", {"k": 3}), Relation("uu", "user_cooccurrence", {"k": 4}),
            Relation("anchorrec_mm", "anchorrec", {"feature": "mm", "k": 3})]
    data = build_graph(small, rels)
    assert ("user", "uu", "user") in data.edge_types
    uu = relation_graph(data, "uu", "user")
    assert uu.num_nodes == small.n_users and int(uu.row_counts().max()) <= 4
    save_graph(data, tmp_path / "g.pt")
    back = load_graph(tmp_path / "g.pt", small)
    for rel in rels:
        assert relation_graph(back, rel.name, rel.node).equal(relation_graph(data, rel.name, rel.node))
    assert back.relations["knn_image"]["kind"] == "knn"
    torch.testing.assert_close(back["item"].x_image, torch.from_numpy(small.features["image"]))
    with pytest.raises(ConfigError):
        Relation("x", "nope")
    with pytest.raises(ConfigError):
        build_graph(small, [Relation("a", "knn", {"modality": "image"}), Relation("a", "knn", {"modality": "text"})])


def test_user_cooccurrence_matches_brute_force(small):
    from mmgraph.graph.relations import build_relation
    g = build_relation(small, Relation("uu", "user_cooccurrence", {"k": 3}))
    r = np.zeros((small.n_users, small.n_items))
    r[small.train[:, 0], small.train[:, 1]] = 1
    co = r @ r.T
    deg = np.diag(co).copy()
    cos = co / np.sqrt(np.outer(deg, deg) + 1e-12)
    np.fill_diagonal(cos, 0)
    for u in range(0, small.n_users, 7):
        nb, w = g.neighbours(u)
        top = np.sort(cos[u][cos[u] > 0])[::-1][:3]   # the top-3 values (ties may pick either user)
        np.testing.assert_allclose(np.sort(w.numpy())[::-1], top, rtol=1e-5)
        np.testing.assert_allclose(w.numpy(), cos[u, nb.numpy()], rtol=1e-5)


# ------------------------------------------------------------------------------------------ propagation
@pytest.mark.parametrize("method", ["lightgcn", "freedom", "cm3", "directau"])
def test_training_step_propagates_through_message_passing(small, method):
    extra = {"encoder": "lightgcn"} if method == "directau" else {}   # a key only DirectAU declares
    model = build_model(method, small, _cfg(method, **extra))
    calls = []
    # a bipartite graph's user and item tables come out of one call as a pair
    handles = [m.register_message_and_aggregate_forward_hook(
        lambda mod, inp, out: calls.append(out.shape if torch.is_tensor(out) else [o.shape for o in out]))
               for m in model.modules() if isinstance(m, LightGCNConv)]
    assert handles, "the model has no LightGCNConv"
    batch = Batch(torch.as_tensor(small.train[:64, 0]), torch.as_tensor(small.train[:64, 1]),
                  torch.randint(0, small.n_items, (64,)))
    model.on_epoch_start(0)
    model.loss(batch).loss.backward()
    assert len(calls) >= 1
    # and it propagates: users outside the batch get a gradient through their items' neighbourhoods
    outside = torch.ones(small.n_users, dtype=torch.bool)
    outside[batch.users] = False
    user_tables = [p for p in model.parameters()
                   if p.dim() >= 2 and p.shape[0] == small.n_users and p.grad is not None]
    assert user_tables and any(p.grad[outside].abs().sum() > 0 for p in user_tables)


@pytest.mark.parametrize("channels", [None, 3])
def test_fused_path_equals_gather_scatter_values_and_gradients(small, channels):
    from mmgraph.graph.relations import interaction_adj
    data = build_graph(small, [])
    adj = interaction_adj(data)
    ei = adj.edge_index()                     # (target, source) rows of the CSR
    w = adj.edge_weight()
    conv = LightGCNConv()
    n = small.n_users + small.n_items
    shape = (n, 8) if channels is None else (n, channels, 4)
    x1 = torch.randn(*shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1 = conv(conv(x1, adj), adj)
    y2 = conv(conv(x2, ei.flip(0), w), ei.flip(0), w)   # PyG order: source -> target
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-5)
    g = torch.randn(shape)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_adjacency_follows_the_module_to_another_dtype_and_is_not_checkpointed(small):
    model = build_model("freedom", small, _cfg("freedom"))
    assert not any(k.startswith("adj") or "item_graph" in k for k in model.state_dict())
    model.double()
    assert model.adj.csr.dtype == torch.float64 and model.item_graph.csr.dtype == torch.float64
    u, i = model.embeddings()
    assert u.dtype == torch.float64


# ------------------------------------------------------------------------------------------ channels
@pytest.mark.parametrize("method,names", [("freedom", {"image", "text"}), ("vbpr", {"id", "image", "text"}),
                                          ("bm3", {"image", "text"}), ("cm3", {"image", "text", "fused"})])
def test_models_expose_their_channels(small, method, names):
    # FREEDOM without its edge pruning, so that the step's graph is the evaluation's
    model = build_model(method, small, _cfg(method, **({"dropout": 0.0} if method == "freedom" else {})))
    batch = Batch(torch.as_tensor(small.train[:32, 0]), torch.as_tensor(small.train[:32, 1]),
                  torch.randint(0, small.n_items, (32,)))
    out = model.loss(batch)
    assert names <= set(out.channels)
    for name in names:
        s = out.channel(name).score(batch.users, batch.pos)
        assert s.shape == (32,) and s.requires_grad
        pool = out.channel(name).score(batch.users, torch.randint(0, small.n_items, (32, 5)))
        assert pool.shape == (32, 5)
    evals = model.channel_embeddings()
    assert {"final"} | names <= set(evals)
    for name in names | {"final"}:
        users, items = evals[name]
        assert users.shape[0] == small.n_users and items.shape[0] == small.n_items
        # the per-step channel and the evaluation channel score the same way (no dropout in either)
        step = out.channel(name).score(batch.users, batch.pos).detach()
        torch.testing.assert_close(step, (users[batch.users] * items[batch.pos]).sum(-1), atol=1e-5, rtol=1e-5)
    final_u, final_i = model.embeddings()
    torch.testing.assert_close(evals["final"][0] @ evals["final"][1].T, final_u @ final_i.T)


def test_cm3_channels_sum_to_the_final_score(small):
    model = build_model("cm3", small, _cfg("cm3")).eval()
    ch = model.channel_embeddings()
    u, i = ch["final"]
    total = sum(ch[n][0] @ ch[n][1].T for n in model.channel_names)
    torch.testing.assert_close(total, u @ i.T, atol=1e-4, rtol=1e-4)


def test_evaluate_by_channel_and_unknown_channel(small, tmp_path, capsys):
    folder = tmp_path / "toy"
    save_atomic(small, folder, name="toy")
    out = tmp_path / "run"
    assert main(["train", "--method", "freedom", "--data", str(folder), "--epochs", "2", "--out", str(out),
                 "--set", "graph_cache=false", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--channel", "image", "--json"]) == 0
    by_image = json.loads(capsys.readouterr().out)["test"]
    assert main(["evaluate", str(out), "--json"]) == 0
    final = json.loads(capsys.readouterr().out)["test"]
    assert by_image != final
    assert main(["evaluate", str(out), "--channel", "smell"]) == 2
    err = capsys.readouterr().err
    assert "image" in err and "text" in err


# ------------------------------------------------------------------------------------------ sampler, plug-ins
def test_candidate_pools_are_negatives_and_resume_exactly(small):
    from mmgraph.train.sampler import BPRSampler
    s = BPRSampler(small, 64, seed=3, n_candidates=5)
    seen = {tuple(p) for p in small.train.tolist()}
    batch = next(iter(s.epoch()))
    cand = batch.extras["candidates"]
    assert cand.shape == (64, 5)
    assert not any((int(u), int(c)) in seen for u, row in zip(batch.users, cand) for c in row)
    state = s.state_dict()
    first = [b.extras["candidates"] for b in s.epoch()]
    s.load_state_dict(state)
    again = [b.extras["candidates"] for b in s.epoch()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert batch.to("cpu").extras["candidates"] is not None


def test_plugins_get_the_epoch_hook_and_sampler_options(small):
    from mmgraph.plugins.base import Plugin

    class Probe(Plugin):
        epochs = []

        def sampler_options(self):
            return {"n_candidates": 3}

        def on_epoch_start(self, epoch):
            self.epochs.append(epoch)

        def loss(self, batch, output):
            assert batch.extras["candidates"].shape[1] == 3
            return {}

    model = build_model("mf", small, _cfg("mf"))
    data = build_graph(small, [])
    trainer = Trainer(model, small, _cfg("mf", epochs=3), plugins=[Probe(data, model, {})], progress=False)
    trainer.fit()
    assert Probe.epochs == [0, 1, 2]


# ------------------------------------------------------------------------------------------ FAISS evaluation
@pytest.mark.parametrize("split", ["valid", "test"])
def test_faiss_evaluation_gives_identical_metrics(small, split):
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(small.n_users, 16, generator=g), torch.randn(small.n_items, 16, generator=g)
    exact = Evaluator(small, split, retrieval="exact").evaluate(users, items)
    faiss = Evaluator(small, split, retrieval="faiss").evaluate(users, items)
    assert exact == pytest.approx(faiss, abs=1e-12)
    cold = np.arange(0, small.n_items, 3)
    e2 = Evaluator(small, split, candidate_items=cold, retrieval="exact").evaluate(users, items)
    f2 = Evaluator(small, split, candidate_items=cold, retrieval="faiss").evaluate(users, items)
    assert e2 == pytest.approx(f2, abs=1e-12)
    with pytest.raises(ConfigError):
        Evaluator(small, split, retrieval="annoy")


def test_auto_retrieval_is_exact_without_a_gpu(small, monkeypatch):
    from mmgraph.evaluation.evaluator import resolve_retrieval
    from mmgraph.utils import faiss_utils
    monkeypatch.setattr(faiss_utils, "faiss_gpu_count", lambda: 0)
    assert resolve_retrieval("auto") == "exact"
    monkeypatch.setattr(faiss_utils, "faiss_gpu_count", lambda: 1)
    assert resolve_retrieval("auto") == "faiss"


def test_training_with_faiss_retrieval_matches_exact(small):
    exact, _ = train("mf", small, _cfg("mf", retrieval="exact"), progress=False)
    faiss, _ = train("mf", small, _cfg("mf", retrieval="faiss"), progress=False)
    assert exact["test"] == pytest.approx(faiss["test"], abs=1e-12)


# ------------------------------------------------------------------------------------------ defects
def test_bm3_regulariser_divides_by_the_number_of_items(small):
    from mmgraph.losses import emb_reg
    u, i = torch.randn(7, 4), torch.randn(11, 4)
    ref = (torch.linalg.vector_norm(u) + torch.linalg.vector_norm(i)) / 11  # MMRec EmbLoss: last argument
    torch.testing.assert_close(emb_reg(u, i), ref)
    model = build_model("bm3", small, _cfg("bm3", reg_weight=1.0, cl_weight=0.0))
    batch = Batch(torch.as_tensor(small.train[:16, 0]), torch.as_tensor(small.train[:16, 1]),
                  torch.zeros(16, dtype=torch.long))
    torch.manual_seed(0)
    out = model.loss(batch)
    u_all, i_all = model.forward()
    torch.testing.assert_close(out.terms["reg"], emb_reg(u_all, i_all))
    assert small.n_users != small.n_items


def test_bm3_loss_is_the_papers_formula(small, monkeypatch):
    """BM3 (MMRec): ``1 - cos`` of (P e_u, sg(drop(e_i))) + (P e_i, sg(drop(e_u))) + cl_weight * sum_m [(P f_m,
    sg(drop(e_i))) + (P f_m, sg(drop(f_m)))] + reg_weight * (||U|| + ||I||) / I, with ``e`` the LightGCN output (the
    item ID embedding added), ``f_m = W_m x_m + b_m``, ``P`` the shared predictor. Dropout is replaced by a fixed
    mask so the targets are known, and the test checks it is applied to every target with the configured p."""
    import mmgraph.models.bm3 as bm3
    calls = []

    def fixed_dropout(x, p, training=True):
        calls.append(p)
        keep = (torch.arange(x.shape[-1]) % 3 != 0).to(x.dtype)
        return x * keep / (1 - p)
    monkeypatch.setattr(bm3, "dropout", fixed_dropout)
    model = build_model("bm3", small, _cfg("bm3", reg_weight=0.07, cl_weight=1.7, dropout=0.3))
    users, pos = torch.as_tensor(small.train[:24, 0]), torch.as_tensor(small.train[:24, 1])
    out = model.loss(Batch(users, pos, torch.zeros_like(users)))
    assert calls == [0.3] * (2 + len(model.modal.modalities))

    def cos_loss(a, b):
        return 1 - float(torch.stack([torch.dot(x, y) / (x.norm() * y.norm()) for x, y in zip(a, b)]).mean())
    with torch.no_grad():
        u_all, i_all = model.propagate()
        i_all = i_all + model.item_emb.weight
        u_all, i_all = u_all.double(), i_all.double()
        pw, pb = model.predictor.weight.double(), model.predictor.bias.double()
        pred = lambda x: x @ pw.t() + pb                                                  # noqa: E731
        keep = (torch.arange(u_all.shape[1]) % 3 != 0).double() / 0.7
        e_u, e_i = u_all[users], i_all[pos]
        ref = cos_loss(pred(e_u), e_i * keep) + cos_loss(pred(e_i), e_u * keep)
        cl = 0.0
        for m in model.modal.modalities:
            lin = model.modal.proj[m]
            f = model.modal.table(m).double()[pos] @ lin.weight.double().t() + lin.bias.double()
            cl += cos_loss(pred(f), e_i * keep) + cos_loss(pred(f), f * keep)
        reg = 0.07 * float(u_all.norm() + i_all.norm()) / small.n_items
    assert out.loss.item() == pytest.approx(ref + 1.7 * cl + reg, rel=1e-5)
    assert out.terms["cl"].item() == pytest.approx(cl, rel=1e-5)


def test_resume_of_a_run_that_stopped_early_trains_no_more(small, tmp_path):
    cfg = _cfg("mf", epochs=200, patience=2, learning_rate=0.0)
    first, _ = train("mf", small, cfg, tmp_path, progress=False)
    again, trainer = train("mf", small, cfg, tmp_path, resume=True, progress=False)
    assert again["epochs_run"] == first["epochs_run"] == 4  # MMRec: stop after patience + 1 bad epochs
    assert len(trainer.history) == first["epochs_run"]
    assert again["best_epoch"] == first["best_epoch"] and again["test"] == first["test"]


def test_a_broken_builtin_module_is_an_error_not_a_missing_method(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("from fakepkg import REG\n@REG.register('good')\nclass Good: pass\n")
    (pkg / "bad.py").write_text("import no_such_module_xyz\n")
    (pkg / "__init__.py").write_text("from mmgraph.utils.registry import Registry\n"
                                     "REG = Registry('method', 'method_name', 'fakepkg')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakepkg
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        fakepkg.REG.get("good")
    # every method module of the library registers (auto-discovered: no list to keep in sync)
    from mmgraph.models.registry import METHODS, available_methods
    names = available_methods()
    for module in METHODS.builtin_modules():
        assert any(cls.__module__ == module for cls in names.values()), module
    sys.modules.pop("fakepkg", None)


def test_one_default_seed_everywhere(small):
    import yaml
    from mmgraph.plugins.base import Plugin
    from mmgraph.train.reproducibility import DEFAULT_SEED
    from mmgraph.train.sampler import BPRSampler
    assert yaml.safe_load((ROOT / "configs" / "defaults.yaml").read_text())["seed"] == DEFAULT_SEED
    assert BPRSampler.__init__.__defaults__[1] == DEFAULT_SEED
    model = build_model("mf", small, {"graph_cache": False})
    assert Plugin(build_graph(small, []), model, {}).seed == DEFAULT_SEED
    trainer = Trainer(model, small, {"log_geometry": False})
    ref = BPRSampler(small, 2048, seed=DEFAULT_SEED)
    assert trainer.sampler.state_dict() == ref.state_dict()


def test_fused_adam_falls_back_where_unsupported(monkeypatch):
    p = [torch.nn.Parameter(torch.randn(3))]
    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = make_adam(p, 1e-3, fused=True)
    assert not opt.defaults.get("fused")


def test_readme_and_pyproject_describe_what_exists():
    from mmgraph.models.registry import available_methods
    from mmgraph.plugins import available_plugins
    readme = (ROOT / "README.md").read_text().lower()
    pyproject = (ROOT / "pyproject.toml").read_text().lower()
    known = set(available_methods()) | set(available_plugins())
    for name in ("anchorrec", "br-mrs", "brmrs"):
        if name.replace("-", "") not in known:
            assert name not in pyproject, f"pyproject mentions {name}, which does not exist"
            for line in readme.splitlines():  # its item graph builder exists; the method must not be claimed
                if name in line and "graph" not in line:
                    assert "planned" in line or "not yet" in line, f"README presents {name} as existing: {line}"
