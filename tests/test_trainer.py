import json

import pytest
import torch

from mmgraph.data import make_synthetic
from mmgraph.errors import TrainingError
from mmgraph.models.base import LossOutput
from mmgraph.train.config import load_config
from mmgraph.train.run import build_model, load_run, train
from mmgraph.train.trainer import Trainer


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n_users=200, n_items=150, seed=2)


def _cfg(**kw):
    return load_config("mf", overrides={"epochs": 6, "patience": 100, "seed": 3, **kw})


def test_run_directory_contents_and_final_metrics(synth, tmp_path):
    result, trainer = train("mf", synth, _cfg(), tmp_path, progress=False)
    for name in ("config.yaml", "meta.json", "history.csv", "history.json", "best.pt", "last.pt",
                 "final_metrics.json", "train.log"):
        assert (tmp_path / name).exists(), name
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert set(final) >= {"valid", "test", "best_epoch", "epochs_run", "seconds_per_epoch", "train_seconds"}
    assert final["epochs_run"] == 6 and 0 <= final["best_epoch"] < 6
    assert "recall@20" in final["test"] and "ndcg@20" in final["valid"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["seed"] == 3 and "torch" in meta["versions"]
    assert meta["versions"]["onednn_linear"] in ("on", "off")   # large CPU products' kernel (float rounding)
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 6 and {"align", "uniform_user", "uniform_item", "train_loss"} <= set(history[0])
    # best checkpoint is a plain state dict loadable with weights_only=True and reproduces the metrics
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    model, _, _ = load_run(tmp_path, synth)
    from mmgraph.evaluation import Evaluator
    test = Evaluator(synth, "test").evaluate(*model.embeddings())
    assert abs(test["recall@20"] - final["test"]["recall@20"]) < 1e-9


def test_early_stopping_strict_improvement(synth):
    cfg = _cfg(epochs=200, patience=3, learning_rate=0.0)  # lr 0: valid metric never strictly improves
    result, trainer = train("mf", synth, cfg, progress=False)
    assert result["best_epoch"] == 0
    # as MMRec: epoch 0 sets the best, and the run stops after patience + 1 = 4 epochs without improvement
    assert result["epochs_run"] == 5


def test_resume_matches_uninterrupted_run(synth, tmp_path):
    full, _ = train("lightgcn", synth, load_config("lightgcn", overrides={"epochs": 6, "patience": 100,
                                                                          "seed": 4}), None, progress=False)
    part_cfg = load_config("lightgcn", overrides={"epochs": 3, "patience": 100, "seed": 4})
    train("lightgcn", synth, part_cfg, tmp_path, progress=False)
    resumed, trainer = train("lightgcn", synth, {**part_cfg, "epochs": 6}, tmp_path, resume=True, progress=False)
    assert len(trainer.history) == 6
    assert resumed["best_epoch"] == full["best_epoch"]
    assert abs(resumed["test"]["recall@20"] - full["test"]["recall@20"]) < 1e-9
    assert abs(resumed["test"]["ndcg@20"] - full["test"]["ndcg@20"]) < 1e-9


def test_nan_loss_stops_with_clear_error(synth):
    model = build_model("mf", synth, {})

    def bad_loss(batch):
        return LossOutput(model.user_emb.weight.sum() * float("nan"), {})

    model.loss = bad_loss
    trainer = Trainer(model, synth, _cfg(), progress=False)
    with pytest.raises(TrainingError, match="loss became nan at epoch 0"):
        trainer.fit()


@pytest.mark.parametrize("enabled", [True, False])
def test_malloc_tuning_follows_the_config_on_cpu(synth, monkeypatch, enabled):
    import mmgraph.train.trainer as trainer_module
    calls = []
    monkeypatch.setattr(trainer_module, "tune_glibc_malloc", lambda: calls.append(1) or True)
    cfg = _cfg(malloc_tuning=enabled)
    Trainer(build_model("mf", synth, cfg, torch.device("cpu")), synth, cfg, progress=False)
    assert calls == ([1] if enabled else [])


def test_malloc_tuning_reuses_blocks_above_the_mmap_threshold():
    """A 64 MB buffer allocated again after a free must not fault its pages in again (Baby's [I, 4096] feature
    gradients: ~51k page faults and 2x the step without this)."""
    import resource

    from mmgraph.utils.memory import tune_glibc_malloc
    if not tune_glibc_malloc():
        pytest.skip("glibc malloc tuning is not available on this platform")

    def touch() -> None:
        buf = torch.empty(16 << 20)  # 64 MB, twice glibc's largest mmap threshold
        buf.fill_(1.0)
        del buf

    for _ in range(10):  # the heap settles into a few reusable blocks (glibc places small allocations between)
        touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000  # 16k without the tuning


def test_threads_setting_is_restored_and_reruns_name_the_python_keyword(synth, tmp_path):
    from mmgraph.errors import ConfigError
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    train("mf", synth, _cfg(epochs=1, threads=want), tmp_path, progress=False)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match=r"overwrite=True in Python"):
        train("mf", synth, _cfg(epochs=1), tmp_path, progress=False)


def test_multimodal_method_on_data_without_features_is_one_clear_error(synth):
    from mmgraph.errors import ConfigError
    bare = synth.with_features({})
    with pytest.raises(ConfigError, match=r"'freedom' needs item features, but .* has none: add them .* ID-only"):
        train("freedom", bare, load_config("freedom", overrides={"epochs": 1}), progress=False)


def test_settings_a_method_cannot_run_with_are_refused_before_the_graph_is_built(synth, monkeypatch):
    from mmgraph.errors import ConfigError
    from mmgraph.train import run as run_mod

    def no_graph(*args, **kwargs):
        raise AssertionError("the graph was built before the settings were checked")

    monkeypatch.setattr(run_mod, "build_run_graph", no_graph)
    with pytest.raises(ConfigError, match="cm3 trains on the full graph only"):
        train("cm3", synth, load_config("cm3", overrides={"epochs": 1, "graph_batching": "sampled"}), progress=False)
