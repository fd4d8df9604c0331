"""The settings schema built from the YAML configs (issue 11): names, types, ranges, grid roles."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from mmgraph.errors import ConfigError
from mmgraph.models.registry import available_methods
from mmgraph.plugins import available_plugins
from mmgraph.train.config import CONFIG_DIR, load_config, validate_config
from mmgraph.train.schema import build_schema, parse_alts, suggest


# ------------------------------------------------------------------------------------------ the shipped configs
@pytest.mark.parametrize("method", sorted(available_methods()))
def test_every_method_config_builds_a_schema_that_covers_the_model(method):
    """Each configs/methods/*.yaml types all its keys (null defaults included), its grid axes are tunable
    declared keys, and every key the model class reads by default is a declared setting."""
    cls = available_methods()[method]
    for plugins in ([], *([name] for name in available_plugins())):
        schema = build_schema(method, plugins)
        for key, values in schema.grid.items():
            assert schema[key].tunable and all(schema[key].check(v) == v for v in values)
    missing = [k for k in getattr(cls, "defaults", {}) if k not in build_schema(method)]
    assert not missing, f"{method}: keys read by the model but declared in no YAML: {missing}"


@pytest.mark.parametrize("plugin", sorted(available_plugins()))
def test_every_plugin_key_is_declared(plugin):
    cls = available_plugins()[plugin]
    schema = build_schema("mf", [plugin])
    fixed = set(getattr(cls, "fixed", {}))
    assert [k for k in cls.defaults if k not in schema and k not in fixed] == []


def test_list_valued_keys_are_values_never_grid_axes():
    cfg = load_config("freedom", overrides={"plugins": ["cross"], "topk": [10, 20], "modalities": ["image"],
                                            "noise_modalities": ["image"]})
    assert cfg["plugins"] == ["cross"] and cfg["topk"] == [10, 20] and cfg["modalities"] == ["image"]
    assert set(cfg["grid"]) == set(build_schema("freedom").grid)   # nothing of yours: the method's own grid
    schema = build_schema("freedom", ["cross"])
    for key in ("plugins", "topk", "modalities", "noise_modalities"):
        assert schema[key].role == "value" and not schema[key].tunable
    assert load_config("mf", overrides={"plugins": "cross"})["plugins"] == ["cross"]   # one name = a list


def test_a_list_is_a_grid_axis_only_on_tunable_keys():
    cfg = load_config("lightgcn", overrides={"reg_weight": [1e-4, 1e-3]})
    assert cfg["grid"] == {"reg_weight": [1e-4, 1e-3]}                 # your axes only
    both = load_config("lightgcn", overrides={"reg_weight": [1e-4, 1e-3]}, method_grid=True)
    assert both["grid"] == {"n_layers": [1, 2, 3, 4], "reg_weight": [1e-4, 1e-3]}
    assert load_config("lightgcn")["grid"]["n_layers"] == [1, 2, 3, 4]  # no axis of yours: the method's grid
    assert load_config("lightgcn", overrides={"seed": [1, 2, 3]})["grid"] == {"seed": [1, 2, 3]}
    for key, values in (("device", ["cpu", "cpu"]), ("epochs", [1, 2]), ("valid_metric", ["recall@20"])):
        with pytest.raises(ConfigError, match=f"{key} is a run setting, not a grid axis"):
            load_config("mf", overrides={key: values})
    with pytest.raises(ConfigError, match="a value is repeated"):
        load_config("mf", overrides={"reg_weight": [1e-4, 1e-4]})


@pytest.mark.parametrize("overrides,needle", [
    ({"lr": 0.1}, "unknown setting 'lr' for mf (--set); did you mean learning_rate"),
    ({"nosuch_key": 1}, "unknown setting 'nosuch_key'"),
    ({"reg_wieght": 1e-3}, "did you mean reg_weight"),
    ({"cross_alpha": 1.0}, "it belongs to plug-in cross"),
    ({"knn_k": 5}, "it is a setting of "),   # every method with an item kNN graph, not mf
    ({"learning_rate": "abc"}, "learning_rate: expected a number >= 0, got 'abc'"),
    ({"epochs": 0}, "epochs: expected an integer >= 1, got 0"),
    ({"epochs": 2.5}, "epochs: expected an integer >= 1, got 2.5"),
    ({"embedding_size": 0}, "embedding_size: expected an integer >= 1"),
    ({"batch_size": True}, "batch_size: expected an integer >= 1, got True"),
    ({"retrieval": "fais"}, "retrieval: expected one of exact, faiss, auto, got 'fais'"),
    ({"threads": 0}, "threads: expected an integer >= 1 or null"),
    ({"topk": [0, 10]}, "topk: expected a list of an integer >= 1"),
    ({"valid_metric": "recal@20"}, "valid_metric: expected NAME@K"),
    ({"plugins": ["crosss"]}, "did you mean cross"),
    ({"method": "lightgcn"}, "'method' is not a setting"),
    ({"noise_features": 1.5}, "noise_features: expected a number in [0, 1]"),
])
def test_unknown_or_bad_settings_name_the_key_and_expectation(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config("mf", overrides=overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_method_and_plugin_keys_are_checked_with_their_declared_types():
    with pytest.raises(ConfigError, match=r"dropout: expected a number in \[0, 1\)"):
        load_config("freedom", overrides={"dropout": 1.0})
    with pytest.raises(ConfigError, match="fusion: expected one of slerp, linear, none"):
        load_config("cm3", overrides={"fusion": "slurp"})
    assert load_config("cm3", overrides={"eval_lambda": "last"})["eval_lambda"] == "last"
    with pytest.raises(ConfigError, match=r"eval_lambda: expected a number in \[0, 1\] or 'last'"):
        load_config("cm3", overrides={"eval_lambda": 2})
    cfg = load_config("lightgcn", overrides={"plugins": ["cross"], "cross_alpha": 1e-2, "cross_k": 3})
    assert (cfg["cross_alpha"], cfg["cross_k"]) == (1e-2, 3)
    with pytest.raises(ConfigError, match="cross_k: expected an integer >= 1"):
        load_config("lightgcn", overrides={"plugins": ["cross"], "cross_k": 0})
    assert load_config("mf", overrides={"epochs": 1e3})["epochs"] == 1000        # 1e3 parses as a float


def test_hand_built_configs_are_validated_too(tmp_path):
    from mmgraph.data import make_synthetic
    from mmgraph.train import train

    with pytest.raises(ConfigError, match="unknown setting 'n_layer'"):
        train("lightgcn", make_synthetic(n_users=30, n_items=25, seed=0), {"n_layer": 2, "epochs": 1})
    with pytest.raises(ConfigError, match="for method 'mf', not 'lightgcn'"):
        validate_config("lightgcn", load_config("mf"))


# ------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize("spec,good,bad", [
    ("int >= 1 | null", [1, 7, None, 3.0], [0, -1, 1.5, "a", True]),
    ("float in [0, 1)", [0, 0.5, 0.999], [1, -0.1, float("nan"), float("inf"), "x"]),
    ("float > 0", [1e-9, 3], [0, -1]),
    ("slerp | linear | none", ["slerp", "none"], ["SLERP", None, 1]),
    ("list[int >= 1]", [[1, 2], []], [[0], [1.5], "x"]),
    ("dict[float >= 0] | null", [{"image": 0.1}, None], [{"image": -1}, {1: 0.5}, [0.1]]),
    ("str | list[str] | null", ["a", ["a", "b"], None], [1, [1]]),
])
def test_schema_grammar(spec, good, bad):
    from mmgraph.train.schema import _accept_any

    alts = parse_alts(spec, "test")
    assert all(_accept_any(alts, v)[0] for v in good)
    assert not any(_accept_any(alts, v)[0] for v in bad)


def test_suggestions():
    names = ["learning_rate", "lr_decay", "lr_decay_step", "reg_weight", "n_layers"]
    assert suggest("lr", names)[0] == "learning_rate"
    assert suggest("nlayers", names) == ["n_layers"]
    assert suggest("zzz", names) == []


# ------------------------------------------------------------------------------------------ new YAML files
def _config_dir(tmp_path: Path, method_yaml: str, defaults_extra: str = "") -> Path:
    root = tmp_path / "configs"
    (root / "methods").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "defaults.yaml").write_text((CONFIG_DIR / "defaults.yaml").read_text() + defaults_extra)
    (root / "methods" / "mf.yaml").write_text(textwrap.dedent(method_yaml))
    return root


def test_a_new_method_yaml_needs_nothing_else(tmp_path):
    root = _config_dir(tmp_path, """\
        embedding_size: 32          # shared declaration: int >= 1
        temperature: 0.2            # inferred: a number >= 0
        mode: fast                  # inferred: a string
        weights: null               # declared below
        neighbours: [10, 5]         # inferred: a list (a value, never an axis)
        grid:
          temperature: [0.1, 0.2]
        schema:
          weights: dict[float >= 0] | null
          mode: fast | slow
        """)
    schema = build_schema("mf", config_dir=root)
    assert schema["embedding_size"].spec == "int >= 1" and schema["temperature"].spec == "float >= 0"
    assert schema["neighbours"].role == "value" and schema["temperature"].role == "axis"
    assert schema["mode"].check("slow") == "slow"
    cfg = load_config("mf", overrides={"neighbours": [20, 10]}, config_dir=root)
    assert cfg["neighbours"] == [20, 10] and cfg["grid"] == {"temperature": [0.1, 0.2]}
    assert schema["weights"].comment == "declared below"
    with pytest.raises(ConfigError, match="embedding_size: expected an integer >= 1"):
        load_config("mf", overrides={"embedding_size": 0}, config_dir=root)


@pytest.mark.parametrize("method_yaml,needle", [
    ("alpha: null\n", "'alpha' defaults to null; declare its type"),
    ("alpha: 0.5\nschema:\n  alpha: int >= 1\n", "the default of 'alpha' (0.5) is not an integer >= 1"),
    ("alpha: 0.5\ngrid:\n  beta: [1, 2]\n", "grid axis 'beta' is not a declared key"),
    ("topk: [10]\ngrid:\n  topk: [[10], [20]]\n", "grid axis 'topk' is not tunable"),
    ("alpha: 0.5\nschema:\n  alpha: float in [0, 1\n", "cannot read the range"),
    ("alpha: 0.5\nschema:\n  alpha: float; tunable\n", "unknown flag"),
])
def test_malformed_declarations_are_one_line_errors(tmp_path, method_yaml, needle):
    root = _config_dir(tmp_path, method_yaml)
    with pytest.raises(ConfigError, match=None) as info:
        build_schema("mf", config_dir=root)
    assert needle in str(info.value) and "mf.yaml" in str(info.value)


def test_dataset_config_layer_is_applied_and_validated(tmp_path):
    root = _config_dir(tmp_path, "reg_weight: 1.0e-4\n")
    (root / "datasets").mkdir()
    (root / "datasets" / "toy.yaml").write_text("batch_size: 512\nmethods:\n  mf:\n    reg_weight: 0.01\n")
    cfg = load_config("mf", "toy", overrides={"epochs": 3}, config_dir=root)
    assert (cfg["batch_size"], cfg["reg_weight"], cfg["epochs"]) == (512, 0.01, 3)
    (root / "datasets" / "toy.yaml").write_text("batchsize: 512\n")
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'.*toy.yaml.*did you mean batch_size"):
        load_config("mf", "toy", config_dir=root)


def test_config_file_values_and_grid(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("reg_weight: 0.01\ngrid:\n  learning_rate: [0.001, 0.01]\n")
    cfg = load_config("lightgcn", config_file=str(path))
    assert cfg["reg_weight"] == 0.01 and cfg["grid"] == {"learning_rate": [0.001, 0.01]}
    path.write_text("reg_weight: 1e-2\ngrid:\n  learning_rate: [1e-3, 5E-3]\n")   # YAML 1.2 floats, no dot
    cfg = load_config("lightgcn", config_file=str(path))
    assert cfg["reg_weight"] == 0.01 and cfg["grid"] == {"learning_rate": [0.001, 0.005]}
    path.write_text("n_layers: many\n")
    with pytest.raises(ConfigError, match=r"n_layers: expected an integer >= 0, got 'many' \(--config"):
        load_config("lightgcn", config_file=str(path))


def test_yaml_values_follow_the_1_2_core_schema():
    from mmgraph.train.config import parse_overrides
    from mmgraph.utils.io import load_yaml

    # YAML 1.1 (PyYAML) would give 8, 750, a date, False, False and the text '1.5e3'
    assert load_yaml("[010, '12:30', 12:30, 2026-12-06, no, off, 1.5e3, 0o17, 0x1f, 1_000, .5, -.inf, true]") == [
        10, "12:30", "12:30", "2026-12-06", "no", "off", 1500.0, 15, 31, 1000, 0.5, float("-inf"), True]
    assert parse_overrides(["n_layers=02", "learning_rate=1E-3"]) == {"n_layers": 2, "learning_rate": 0.001}
    with pytest.raises(ConfigError, match=r"frozen_embeddings: expected true or false, got 'no'"):
        validate_config("mmgcn", {**load_config("mmgcn"), "frozen_embeddings": parse_overrides(
            ["frozen_embeddings=no"])["frozen_embeddings"]})
    with pytest.raises(ConfigError, match=r"n_layers: expected an integer >= 0, got '1:30'"):
        validate_config("lightgcn", {**load_config("lightgcn"), **parse_overrides(["n_layers=1:30"])})


def test_api_configs_get_the_defaults_and_are_checked_before_use(tmp_path):
    from mmgraph.train import train
    from mmgraph.train.config import validate_config

    # a hand-built partial config: the method's defaults fill what it leaves out (recorded in config.yaml)
    train("lattice", "synthetic:users=120,items=90", {"epochs": 1, "threads": 1}, out_dir=tmp_path / "r",
          progress=False)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    want = load_config("lattice")
    assert saved["learning_rate"] == want["learning_rate"] and saved["lr_decay"] == want["lr_decay"]
    for bad, needle in (({"modalities": 5}, "modalities: expected"), ([1, 2], "expected a mapping"),
                        ({1: 2}, "setting names must be strings")):
        with pytest.raises(ConfigError, match=needle):
            train("mf", "synthetic:users=120,items=90", bad, progress=False)
    # plug-in names are case-insensitive like method names; cross and fettle exclude each other
    assert validate_config("mf", {"plugins": ["Cross"], "cross_alpha": 0.1})["plugins"] == ["cross"]
    with pytest.raises(ConfigError, match="cross and fettle are two modes"):
        load_config("mf", overrides={"plugins": ["cross", "fettle"]})


def test_a_methods_block_matches_names_case_insensitively_and_refuses_unknown_ones(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("methods:\n  LightGCN: {n_layers: 4}\n")
    assert load_config("lightgcn", config_file=str(path))["n_layers"] == 4
    path.write_text("methods:\n  lightgnc: {n_layers: 3}\n")
    with pytest.raises(ConfigError, match="methods: 'lightgnc' is not a method"):
        load_config("lightgcn", config_file=str(path))


def test_every_setting_of_every_method_and_plugin_has_a_description():
    for method in available_methods():
        for plugins in ([], *([p] for p in available_plugins())):
            schema = build_schema(method, plugins)
            missing = [k for k, s in schema.settings.items() if not s.comment]
            assert not missing, (method, plugins, missing)


def test_device_names_are_checked_with_the_config():
    # before any data is read (a misspelt device used to surface only when training started)
    base = load_config("lightgcn")
    for name in ("cpu", "auto", "cuda", "cuda:1"):
        assert validate_config("lightgcn", {**base, "device": name})["device"] == name
    with pytest.raises(ConfigError, match="device 'banana': expected auto, cpu, cuda or cuda:N"):
        validate_config("lightgcn", {**base, "device": "banana"})
    with pytest.raises(ConfigError, match="device 'mps': mmgraph runs on cpu or cuda"):
        validate_config("lightgcn", {**base, "device": "mps"})
