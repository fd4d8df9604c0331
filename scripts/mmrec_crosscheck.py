#!/usr/bin/env python
"""The issue-14 baselines against MMRec's OWN model classes, on the same tiny data and parameters.

For each method: our model is built on tiny synthetic data (seeded, every parameter perturbed), its
parameters are written under MMRec's names; then MMRec's class (``../shared/peers/mmrec/src``, run in
the peers' Python, e.g. ``/tmp/peers-venv``) is built on the same interactions and feature files,
loaded with those parameters, and both give the scores of every (user, item) pair (evaluation mode)
and the loss of one batch with its gradients. Stochastic parts are switched off on both sides (LGMRec's
Gumbel noise and hyperedge dropout, SMORE's dropout at its default 0). DA-MRS reads its behaviour graph
(MMRec's ``item_graph_dict_2.npy``) from the data folder: the check writes it from the same interactions
(items sharing at least two users, the 200 most shared per item). Prints one line per method::

    python scripts/mmrec_crosscheck.py --methods lattice,lgmrec,mgcn,smore,slmrec,mmgcn,damrs \
        --peer-python /tmp/peers-venv/bin/python --mmrec ../shared/peers/mmrec/src
    python scripts/mmrec_crosscheck.py --methods mmgcn --set frozen_embeddings=true   # MMRec's trainable set

MMRec's code runs from a temporary copy (nothing is written into the peers folder) and is never
imported by mmgraph itself.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mmgraph.data import make_synthetic  # noqa: E402
from mmgraph.errors import ConfigError  # noqa: E402
from mmgraph.models.base import Batch  # noqa: E402
from mmgraph.train import build_model  # noqa: E402
from mmgraph.train.config import parse_overrides  # noqa: E402

MMREC_NAMES = {"lattice": "LATTICE", "lgmrec": "LGMRec", "mgcn": "MGCN", "smore": "SMORE", "slmrec": "SLMRec",
               "mmgcn": "MMGCN", "damrs": "DAMRS"}
#: settings of the check (both sides), beyond the defaults
EXTRA = {"lgmrec": {"keep_rate": 1.0, "cl_weight": 0.1, "reg_weight": 1e-3},
         "mgcn": {"cl_loss": 0.1, "reg_weight": 1e-3}, "smore": {"cl_loss": 0.1, "reg_weight": 1e-3},
         "lattice": {"reg_weight": 1e-3}, "slmrec": {"ssl_alpha": 0.5}, "mmgcn": {"reg_weight": 1e-3},
         "damrs": {"neighbor_weight": 0.1}}


def no_gumbel_noise(x, tau, hard=False, dim=1):
    """``gumbel_softmax`` without the noise: ``softmax(x / tau)``."""
    return torch.softmax(x / tau, dim)


def mmrec_names(method: str) -> dict:
    """Our state-dict key -> MMRec's parameter name."""
    names = {
        "lattice": {"user_emb.weight": "user_embedding.weight", "item_emb.weight": "item_id_embedding.weight",
                    "modal.tables.image": "image_embedding.weight", "modal.tables.text": "text_embedding.weight",
                    "modal.proj.image.weight": "image_trs.weight", "modal.proj.image.bias": "image_trs.bias",
                    "modal.proj.text.weight": "text_trs.weight", "modal.proj.text.bias": "text_trs.bias",
                    "modal_weight": "modal_weight"},
        "lgmrec": {"user_emb.weight": "user_embedding.weight", "item_emb.weight": "item_id_embedding.weight",
                   "trs.image": "item_image_trs", "trs.text": "item_text_trs", "hyper.image": "v_hyper", "hyper.text": "t_hyper"},
        "mgcn": {"user_emb.weight": "user_embedding.weight", "item_emb.weight": "item_id_embedding.weight",
                 "modal.tables.image": "image_embedding.weight", "modal.tables.text": "text_embedding.weight",
                 "modal.proj.image.weight": "image_trs.weight", "modal.proj.image.bias": "image_trs.bias",
                 "modal.proj.text.weight": "text_trs.weight", "modal.proj.text.bias": "text_trs.bias",
                 "gate_item.image.0.weight": "gate_v.0.weight", "gate_item.image.0.bias": "gate_v.0.bias",
                 "gate_item.text.0.weight": "gate_t.0.weight", "gate_item.text.0.bias": "gate_t.0.bias",
                 "gate_prefer.image.0.weight": "gate_image_prefer.0.weight", "gate_prefer.image.0.bias": "gate_image_prefer.0.bias",
                 "gate_prefer.text.0.weight": "gate_text_prefer.0.weight", "gate_prefer.text.0.bias": "gate_text_prefer.0.bias",
                 "query_common.0.weight": "query_common.0.weight", "query_common.0.bias": "query_common.0.bias",
                 "query_common.2.weight": "query_common.2.weight"},
        "slmrec": {"user_emb.weight": "embedding_user.weight", "item_emb.weight": "embedding_item.weight",
                   "dense.image.weight": "v_dense.weight", "dense.image.bias": "v_dense.bias",
                   "dense.text.weight": "t_dense.weight", "dense.text.bias": "t_dense.bias",
                   "user_fuse.weight": "embedding_user_after_GCN.weight", "user_fuse.bias": "embedding_user_after_GCN.bias",
                   "item_fuse.weight": "embedding_item_after_GCN.weight", "item_fuse.bias": "embedding_item_after_GCN.bias",
                   "fac.steps.0.weight": "g_i_iv.weight", "fac.steps.0.bias": "g_i_iv.bias",
                   "fac.targets.image.weight": "g_v_iv.weight", "fac.targets.image.bias": "g_v_iv.bias",
                   "fac.steps.1.weight": "g_iv_iva.weight", "fac.steps.1.bias": "g_iv_iva.bias",
                   "fac.steps.2.weight": "g_iva_ivat.weight", "fac.steps.2.bias": "g_iva_ivat.bias",
                   "fac.targets.text.weight": "g_t_ivat.weight", "fac.targets.text.bias": "g_t_ivat.bias"},
        "damrs": {"user_emb.weight": "user_embedding.weight", "item_emb.weight": "item_id_embedding.weight"},
    }
    if method == "mmgcn":
        # MMRec keeps the ID embeddings and the preferences as plain tensors (set as attributes, not loaded)
        m = {"id_emb": "id_embedding"}
        for mod, g in (("image", "v_gcn"), ("text", "t_gcn")):
            m[f"gcn.{mod}.preference"] = f"{g}.preference"
            if mod == "image":
                m[f"gcn.{mod}.mlp.weight"], m[f"gcn.{mod}.mlp.bias"] = f"{g}.MLP.weight", f"{g}.MLP.bias"
            for l in range(3):
                m[f"gcn.{mod}.conv_weight.{l}"] = f"{g}.conv_embed_{l + 1}.weight"
                for k in ("weight", "bias"):
                    m[f"gcn.{mod}.linear.{l}.{k}"] = f"{g}.linear_layer{l + 1}.{k}"
                    m[f"gcn.{mod}.combine.{l}.{k}"] = f"{g}.g_layer{l + 1}.{k}"
        names["mmgcn"] = m
    if method == "smore":
        m = dict(names["mgcn"]); del m["query_common.0.weight"], m["query_common.0.bias"], m["query_common.2.weight"]
        for ours, theirs in (("fusion", "gate_f"),):
            m[f"gate_item.{ours}.0.weight"], m[f"gate_item.{ours}.0.bias"] = f"{theirs}.0.weight", f"{theirs}.0.bias"
        m["gate_prefer.fusion.0.weight"], m["gate_prefer.fusion.0.bias"] = "gate_fusion_prefer.0.weight", "gate_fusion_prefer.0.bias"
        for mod, q in (("image", "query_v"), ("text", "query_t")):
            for k in ("0.weight", "0.bias", "2.weight"):
                m[f"query.{mod}.{k}"] = f"{q}.{k}"
        for k in ("image", "text", "fusion"):
            m[f"filters.{k}"] = f"{k}_complex_weight"
        names["smore"] = m
    return names[method]


def ours(method: str, folder: Path, settings: Optional[dict] = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_synthetic(n_users=80, n_items=60, modalities={"image": 12, "text": 8}, seed=11)
    np.save(folder / "image_feat.npy", ds.features["image"])
    np.save(folder / "text_feat.npy", ds.features["text"])
    train = np.unique(ds.train, axis=0)
    np.save(folder / "train.npy", train)
    torch.manual_seed(0)
    model = build_model(method, ds, {"graph_cache": False, "batch_size": 64, **EXTRA[method], **(settings or {})},
                        torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    names = mmrec_names(method)
    np.savez(folder / "params.npz", **{theirs: sd[k] for k, theirs in names.items()})
    model.eval()
    with torch.no_grad():
        u, i = model.embeddings()
    np.save(folder / "scores.npy", (u @ i.t()).numpy())
    rng = np.random.default_rng(0)
    rows = train[rng.integers(0, len(train), 64)]
    neg = rng.integers(0, ds.n_items, 64)
    np.save(folder / "batch.npy", np.stack([rows[:, 0], rows[:, 1], neg]))
    model.train()
    model.on_epoch_start(0)
    loss_t = model.loss(Batch(*[torch.from_numpy(x) for x in (rows[:, 0], rows[:, 1], neg)])).loss
    loss = float(loss_t.detach())
    # the batch loss's gradients under MMRec's names (only the tensors that train on our side)
    named = dict(model.named_parameters())
    trained = [k for k in names if k in named]
    grads = torch.autograd.grad(loss_t, [named[k] for k in trained], allow_unused=True)
    np.savez(folder / "grads.npz", **{names[k]: (torch.zeros_like(named[k]) if g is None else g).numpy()
                                      for k, g in zip(trained, grads)})
    info = {"loss": loss, "n_users": ds.n_users, "n_items": ds.n_items, "cfg": EXTRA[method],
            "unmapped": [k for k in sd if k not in names]}
    json.dump(info, open(folder / "ours.json", "w"))
    return info


THEIRS = r'''
import sys, json, os
from pathlib import Path
import numpy as np, scipy.sparse as sp, torch
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
model_name, folder = sys.argv[1], Path(sys.argv[2])
info = json.load(open(folder / "ours.json"))
train = np.load(folder / "train.npy")
n_u, n_i = info["n_users"], info["n_items"]

class DS:
    def get_user_num(self): return n_u
    def get_item_num(self): return n_i
    def inter_matrix(self, form="coo"):
        m = sp.coo_matrix((np.ones(len(train), np.float32), (train[:, 0], train[:, 1])), shape=(n_u, n_i))
        return m.asformat(form)

class DL(DS):
    dataset = DS()

defaults = {
    "LATTICE": {"embedding_size": 64, "feat_embed_dim": 64, "weight_size": [64, 64], "lambda_coeff": 0.9,
                "reg_weight": 0.0, "cf_model": "lightgcn", "n_layers": 1, "knn_k": 10, "mess_dropout": [0.1, 0.1]},
    "LGMRec": {"embedding_size": 64, "feat_embed_dim": 64, "cf_model": "lightgcn", "n_ui_layers": 2, "n_mm_layers": 2,
               "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 1e-4, "reg_weight": 1e-6},
    "MGCN": {"embedding_size": 64, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10, "reg_weight": 1e-4, "cl_loss": 1e-3},
    "SMORE": {"embedding_size": 64, "n_ui_layers": 3, "n_layers": 1, "reg_weight": 1e-5, "cl_loss": 0.01,
              "image_knn_k": 10, "text_knn_k": 10, "dropout_rate": 0.0},
    "MMGCN": {"embedding_size": 64, "n_layers": 3, "reg_weight": 0.0},
    "DAMRS": {"embedding_size": 64, "n_ui_layers": 2, "n_mm_layers": 1, "knn_k": 10, "kl_weight": 1.0,
              "neighbor_weight": 0.001, "lambda_coeff": 0.9, "cf_model": "lightgcn", "reg_weight": 0.0,
              "item_graph_dict_file": "item_graph_dict_2.npy"},
    "SLMRec": {"recdim": 64, "layer_num": 3, "ssl_task": "FAC", "ssl_alpha": 0.01, "ssl_temp": 0.1,
               "mm_fusion_mode": "concat", "temp": 0.2, "init": "xavier", "adj_type": "pre"},
}[model_name]
cfg = {"USER_ID_FIELD": "u", "ITEM_ID_FIELD": "i", "NEG_PREFIX": "neg_", "train_batch_size": 64,
       "device": torch.device("cpu"), "end2end": False, "is_multimodal_model": True,
       "data_path": str(folder.parent) + "/", "dataset": folder.name,
       "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy", **defaults, **info["cfg"]}
if model_name == "DAMRS":   # the behaviour graph MMRec reads: items sharing >= 2 users, the 200 most shared
    r = sp.csr_matrix((np.ones(len(train), np.float32), (train[:, 0], train[:, 1])), shape=(n_u, n_i))
    co = (r.T @ r).tolil()
    co.setdiag(0)
    co = co.tocsr()
    graph = {}
    for i in range(n_i):
        cols, vals = co.indices[co.indptr[i]:co.indptr[i + 1]], co.data[co.indptr[i]:co.indptr[i + 1]]
        keep = vals >= 2
        cols, vals = cols[keep], vals[keep]
        order = np.argsort(-vals, kind="stable")[:200]
        if len(order):
            graph[i] = [cols[order].tolist(), vals[order].tolist()]
    np.save(folder / "item_graph_dict_2.npy", graph, allow_pickle=True)
if model_name == "LGMRec":
    F.gumbel_softmax = lambda x, tau, hard=False, dim=1: torch.softmax(x / tau, dim)
import importlib
cls = getattr(importlib.import_module(f"models.{model_name.lower()}"), model_name)
torch.manual_seed(0)
model = cls(cfg, DL())
def owner_of(name):
    """``(object, attribute)`` of a dotted name on the model (plain tensor attributes too)."""
    *path, leaf = name.split(".")
    owner = model
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf

params = dict(np.load(folder / "params.npz"))
sd = model.state_dict()
for k, v in params.items():
    t = torch.from_numpy(v)
    if k in sd:
        sd[k] = t.view(sd[k].shape)
    else:   # a plain tensor attribute (MMGCN's id_embedding / preference)
        setattr(*owner_of(k), t.clone().requires_grad_())
model.load_state_dict(sd)
untouched = [k for k in dict(model.named_parameters()) if k not in params]
model.eval()
users = torch.arange(n_u)
with torch.no_grad():
    if model_name == "SLMRec":
        u, i = model.compute(); scores = u @ i.t()
    elif model_name == "MMGCN":
        model.forward(); scores = model.full_sort_predict([users])
    else:
        scores = model.full_sort_predict([users])
ours = torch.from_numpy(np.load(folder / "scores.npy"))
b = torch.from_numpy(np.load(folder / "batch.npy"))
model.train()
if model_name == "LATTICE":
    model.pre_epoch_processing()
loss_t = model.calculate_loss([b[0], b[1], b[2]])
loss = float(loss_t)
# gradients of the batch loss w.r.t. the tensors our side trains, by MMRec's names (plain tensor attributes
# included: MMRec computes their gradients even where its optimiser never applies them)
our_grads = dict(np.load(folder / "grads.npz"))
tensors = {k: getattr(*owner_of(k)) for k in our_grads}
theirs_g = torch.autograd.grad(loss_t, list(tensors.values()), allow_unused=True)
gdiff, gscale = 0.0, 0.0
for (k, t), g in zip(tensors.items(), theirs_g):
    g = torch.zeros_like(t) if g is None else g
    mine = torch.from_numpy(our_grads[k]).view(g.shape)
    gdiff, gscale = max(gdiff, float((g - mine).abs().max())), max(gscale, float(mine.abs().max()))
print(model_name, "max |score diff|", float((scores - ours).abs().max()), "score scale", float(ours.abs().max()),
      "| loss theirs", loss, "ours", info["loss"], "| max |grad diff|", gdiff, "grad scale", gscale,
      "| MMRec params not set:", untouched)
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(MMREC_NAMES))
    ap.add_argument("--peer-python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--mmrec", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "peers" / "mmrec" / "src"))
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="mmgraph-side settings of every checked model, e.g. frozen_embeddings=true (MMGCN as MMRec "
                         "trains it)")
    args = ap.parse_args(argv)
    settings = parse_overrides(args.set)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in MMREC_NAMES]
    if unknown:
        raise ConfigError(f"--methods: {unknown[0]!r} has no cross-check; choose from {', '.join(MMREC_NAMES)}")
    if not Path(args.peer_python).exists():
        raise ConfigError(f"--peer-python {args.peer_python} does not exist (the peers' virtual environment: see "
                          "../shared/peers/README)")
    if not Path(args.mmrec).is_dir():
        raise ConfigError(f"--mmrec {args.mmrec} is not a folder (MMRec's src/)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(args.mmrec, src)
        (Path(tmp) / "theirs.py").write_text(THEIRS)
        for method in methods:
            gumbel = F.gumbel_softmax
            if method == "lgmrec":
                F.gumbel_softmax = no_gumbel_noise
            try:
                ours(method, Path(tmp) / "data" / method, settings)
            finally:
                F.gumbel_softmax = gumbel
            res = subprocess.run([args.peer_python, str(Path(tmp) / "theirs.py"), MMREC_NAMES[method],
                                  str(Path(tmp) / "data" / method)], cwd=src, capture_output=True, text=True)
            line = [ln for ln in res.stdout.splitlines() if "max |score diff|" in ln]
            print(line[-1] if line else f"{method}: MMRec side failed: {res.stderr.strip().splitlines()[-1:]}")
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
