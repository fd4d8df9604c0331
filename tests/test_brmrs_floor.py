"""scripts/brmrs_floor.py: the BR-MRS plug-in cut down to its kernels runs the plug-in's selection and backward."""
from __future__ import annotations


import pytest
import torch

from mmgraph.data import make_synthetic
from mmgraph.errors import ConfigError
from mmgraph.nn import affine
from mmgraph.train.config import load_config
from mmgraph.train.run import build_model, build_plugins
from mmgraph.train.trainer import Trainer

from tests.helpers import load_script


@pytest.fixture(scope="module")
def floor():
    return load_script("brmrs_floor")


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=60, n_items=50, modalities={"image": 10, "text": 6}, seed=3)


def _grads(method, stage, small, floor, **over):
    """``({parameter name: gradient of the plug-in's terms or None}, batch)`` on one batch (float64)."""
    cfg = {k: v for k, v in load_config(method, overrides={
        "seed": 4, "log_geometry": False, "graph_cache": False, "batch_size": 128,
        "plugins": ["brmrs"], **over}).items() if k != "grid"}
    model = build_model(method, small, cfg, torch.device("cpu")).double()
    with floor.brmrs_as(stage):
        plugin = build_plugins(cfg, small, model)[0]
    assert type(plugin).__name__ == ("BRMRS" if stage == "brmrs" else f"FloorStage_{stage}")
    trainer = Trainer(model, small, cfg, plugins=[plugin], progress=False)
    model.train()
    batch = next(trainer.sampler.epoch())
    torch.manual_seed(5)
    out = model.loss(batch)
    terms = plugin.loss(batch, out)
    params = dict(model.named_parameters())
    if stage == "pools":     # the selection alone: no gradient
        assert set(terms) == {"floor"} and not terms["floor"].requires_grad
        return {}, batch
    grads = torch.autograd.grad(sum(terms.values()), list(params.values()), allow_unused=True)
    return dict(zip(params, grads)), batch


def _rows(grad):
    return grad.abs().sum(1) > 0


@pytest.mark.parametrize("method", ["freedom", "vbpr", "bm3"])
@pytest.mark.parametrize("feature_space", [True, False])
def test_stages_differentiate_what_the_plugin_does(floor, small, method, feature_space, monkeypatch):
    monkeypatch.setattr(affine, "FEATURE_SPACE_RATIO", 1e9 if feature_space else 0.0)
    real, batch = _grads(method, "brmrs", small, floor)
    chns, _ = _grads(method, "brmrs", small, floor, brmrs_syn=False)     # gradient rows: i+ and the hard negatives
    kernels, _ = _grads(method, "kernels", small, floor)
    hard, _ = _grads(method, "hard", small, floor)
    _grads(method, "pools", small, floor)
    assert any(g is not None for g in real.values())
    items = torch.arange(small.n_items)
    pos, neg = torch.isin(items, batch.pos), torch.isin(items, batch.neg)
    tables = 0
    for name, g in real.items():
        assert (kernels[name] is None) == (g is None), name
        if g is None or ".tables." not in name:
            continue
        # a trainable feature table (FREEDOM's): the floor's gradient rows are those the plug-in selects
        tables += 1
        assert torch.equal(_rows(kernels[name]), _rows(chns[name]) | neg), name
        assert not (_rows(hard[name]) & ~_rows(chns[name])).any(), name
        assert not (_rows(chns[name]) & ~(_rows(hard[name]) | pos)).any(), name
    assert tables == (0 if method == "vbpr" else 2)     # VBPR's features are frozen; FREEDOM and BM3 train theirs


def test_table_lists_each_stage_with_its_ratio(floor, capsys):
    assert floor.main(["--data", "synthetic:users=120,items=90,seed=3", "--backbones", "vbpr", "--steps", "1",
                       "--set", "threads=1"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("vbpr ")]
    stages = {parts[1]: [float(v.lstrip("x")) for v in parts[2:]] for parts in lines if len(parts) == 6}
    assert list(stages) == ["pools", "hard", "kernels", "brmrs"]
    for base, step, added, ratio in stages.values():
        assert added == pytest.approx(step - base, abs=0.11)
        assert ratio == pytest.approx(step / base, rel=0.05, abs=0.02)
    assert any("x1.50 allows" in " ".join(parts) for parts in lines)


@pytest.mark.parametrize("args, message", [
    (["--backbones", "lightgcn"], "needs a backbone with per-modality channels"),
    (["--backbones", "vbpr+cross"], "expected comma-separated method names"),
    (["--backbones", "vbpr", "--set", "freedom:reg_weight=1"], "freedom is not among --backbones"),
    (["--backbones", "vbpr", "--set", "brmrs_negatives=uniform"], "the stages score candidate pools"),
    (["--backbones", "vbpr", "--steps", "0"], "--steps must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(floor, args, message):
    with pytest.raises(ConfigError, match=message):
        floor.main(["--data", "synthetic:users=60,items=40,seed=3", "--set", "threads=1", *args])
