"""Configuration: defaults.yaml <- methods/<method>.yaml (<- plugins/<plugin>.yaml for keys not set yet)
<- datasets/<dataset>.yaml (if present) <- --config FILE <- --set key=value.

Configs are flat dictionaries. Every key is checked against the schema built from the YAML files
(:mod:`mmgraph.train.schema`): an unknown key, a wrong type or an out-of-range value is a
:class:`~mmgraph.errors.ConfigError` naming the key.

Grids: a method's ``grid:`` block is its built-in search space. ``--set key=[a,b]`` on a *tunable* key
(or a ``grid:`` block in a ``--config`` file) is one of *your* axes; keys whose values are lists
(``plugins``, ``topk``, ``modalities`` ...) take a list as their value. The grid a run searches is your
axes when you gave any, else the method's grid (``method_grid=True`` adds the method's axes to yours).
``seed=[1,2,3]`` asks for repetitions, never a choice (see :func:`mmgraph.train.run.grid_search`).
:func:`expand_grid` turns a config into the list of grid points.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from mmgraph.errors import ConfigError
from mmgraph.utils.io import load_yaml

CONFIG_DIR = Path(os.environ.get("MMGRAPH_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


def _read_yaml(path: Path) -> Dict[str, Any]:
    from mmgraph.train.schema import read_yaml_mapping

    return read_yaml_mapping(path)


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value with YAML rules, plus ``1e-4``-style floats that YAML 1.1 leaves as text."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if value.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity") else value
    if isinstance(value, list):
        return [parse_value(v) if isinstance(v, str) else v for v in value]
    return value


def parse_overrides(items: Optional[Iterable[str]]) -> Dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--set``) -> ``{key: value}``, each value parsed as YAML
    (``1e-3`` a float, ``[a, b]`` a list, ``null`` None); a malformed item, or a key given twice with two values
    (which one was meant?), is a one-line :class:`ConfigError`."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r} (no key)")
        parsed = parse_value(value.strip())
        if key in out and out[key] != parsed:
            raise ConfigError(f"--set gives {key} twice ({key}={out[key]!r}, then {key}={parsed!r}); give it once "
                              f"(a list, {key}=[a,b], is a grid axis)")
        out[key] = parsed
    return out


def _override_layer(path: Path, method: str) -> Tuple[Dict[str, Any], Dict[str, List[Any]]]:
    """Values and grid of an override file (a dataset config or ``--config``); its ``methods:`` block
    holds per-method values (``methods: {lightgcn: {n_layers: 3}}``)."""
    data = _read_yaml(path)
    grid = data.pop("grid", None) or {}
    per_method = data.pop("methods", None) or {}
    if not isinstance(grid, dict) or not isinstance(per_method, dict):
        raise ConfigError(f"{path}: 'grid:' and 'methods:' must be mappings")
    if "schema" in data:
        raise ConfigError(f"{path}: a 'schema:' block belongs in configs/methods or configs/plugins files")
    from mmgraph.models.registry import available_methods
    known = set(available_methods())
    unknown = [str(m) for m in per_method if str(m).lower() not in known]
    if unknown:
        raise ConfigError(f"{path}: methods: {unknown[0]!r} is not a method; choose from {', '.join(sorted(known))}")
    mine = next((v for m, v in per_method.items() if str(m).lower() == method), None) or {}
    if not isinstance(mine, dict):
        raise ConfigError(f"{path}: methods: {method}: must be a mapping of key: value")
    data.update(mine)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid axis {key!r} must be a non-empty list of values")
    return data, grid


def load_config(method: str, dataset_name: Optional[str] = None, config_file: Optional[str] = None,
                overrides: Optional[Dict[str, Any]] = None, config_dir: Optional[Path] = None,
                method_grid: Optional[bool] = None) -> Dict[str, Any]:
    """Resolve and validate the flat config for ``method``; the grid to search is kept under ``grid``.

    Args:
        dataset_name: applies ``configs/datasets/<dataset_name>.yaml`` when that file exists.
        config_file: a YAML file of values (optionally ``grid:`` and ``methods: {name: {...}}``).
        overrides: ``--set`` values; a list on a tunable key is a grid axis.
        method_grid: search the method's ``grid:`` block too. ``None``: only when you gave no axis.
    """
    from mmgraph.train.schema import build_schema, plugin_list, read_declarations

    method = str(method).lower()
    _check_method(method)
    root = Path(config_dir) if config_dir else CONFIG_DIR
    method_file = root / "methods" / f"{method}.yaml"
    method_values = read_declarations(method_file).values if method_file.exists() else {}

    layers: List[Tuple[str, Dict[str, Any], Dict[str, List[Any]]]] = []
    builtin_layers = 0
    if dataset_name:
        path = root / "datasets" / f"{dataset_name}.yaml"
        if path.exists():
            layers.append((str(path), *_override_layer(path, method)))
            builtin_layers = 1
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        layers.append((f"--config {path}", *_override_layer(path, method)))
    overrides = dict(overrides or {})

    # the plug-ins decide which keys exist: find them first (last layer that sets them wins)
    plugins_value: Any = method_values.get("plugins", read_declarations(root / "defaults.yaml").values.get("plugins"))
    origin = "defaults"
    for name, values, _ in layers:
        if "plugins" in values:
            plugins_value, origin = values["plugins"], name
    if "plugins" in overrides:
        plugins_value, origin = overrides["plugins"], "--set"
    plugins = plugin_list(plugins_value, origin)
    _check_plugins(plugins, origin)
    schema = build_schema(method, plugins, root)

    config = schema.defaults()
    builtin_grid = dict(schema.grid)
    user_grid: Dict[str, List[Any]] = {}
    for k, (name, values, grid) in enumerate(layers):
        target = builtin_grid if k < builtin_layers else user_grid
        for key, value in values.items():
            config[key] = schema.check(key, value, name)
            builtin_grid.pop(key, None)
            user_grid.pop(key, None)
        for key, axis in grid.items():
            target[key] = _axis(schema, key, axis, name)
    for key, value in overrides.items():
        setting = schema.setting(key, "--set")
        if isinstance(value, list) and not setting.accepts_list:
            user_grid[key] = _axis(schema, key, value, "--set")
            builtin_grid.pop(key, None)
        else:
            config[key] = setting.check(value, "--set")
            builtin_grid.pop(key, None)
            user_grid.pop(key, None)
    if "plugins" in config:
        config["plugins"] = plugins   # names as registered (lower case)
    check_semantics(config)
    if method_grid is None:
        method_grid = not user_grid
    grid = {**builtin_grid, **user_grid} if method_grid else user_grid
    config["method"] = method
    config["grid"] = grid
    return config


def _axis(schema, key: str, values: List[Any], origin: str) -> List[Any]:
    setting = schema.setting(key, origin)
    if setting.role not in ("axis", "repeat"):
        what = "a run setting" if setting.role == "fixed" else "a list-valued setting"
        raise ConfigError(f"{key}=[...] ({origin}): {key} is {what}, not a grid axis; give one value")
    if not values:
        raise ConfigError(f"{key}=[] ({origin}): an empty list; give values to search, or one value")
    checked = [setting.check(v, origin) for v in values]
    if len({repr(v) for v in checked}) != len(checked):
        raise ConfigError(f"{key}={values} ({origin}): a value is repeated")
    return checked


def _check_method(method: str) -> None:
    from mmgraph.models.registry import get_model_class

    get_model_class(method)  # a one-line error listing the methods when unknown


def _check_plugins(names: List[str], origin: str) -> None:
    if not names:
        return
    from mmgraph.plugins import available_plugins
    from mmgraph.train.schema import suggest

    known = available_plugins()
    for name in names:
        if name.lower() not in known:
            close = suggest(name.lower(), known)
            raise ConfigError(f"plugins: unknown plug-in {name!r} ({origin}); available: {', '.join(known)}"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
    if len(set(names)) != len(names):
        raise ConfigError(f"plugins: {names} names a plug-in twice ({origin})")
    if {"cross", "fettle"} <= set(names):
        raise ConfigError(f"plugins: cross and fettle are two modes of one plug-in (both read the cross_* keys); "
                          f"choose one ({origin})")


def check_semantics(config: Dict[str, Any]) -> None:
    """Checks beyond a key's own type: values that must agree with other parts of the library."""
    epochs, step = config.get("epochs"), config.get("eval_step")
    if isinstance(epochs, int) and isinstance(step, int) and step > epochs:
        raise ConfigError(f"eval_step: {step} is more than epochs ({epochs}): the run would never validate, "
                          "so it would have no best checkpoint")
    if config.get("device") is not None:
        from mmgraph.train.reproducibility import parse_device

        parse_device(config["device"])
    metric = config.get("valid_metric")
    if metric is not None:
        from mmgraph.evaluation.metrics import METRICS

        name, _, k = str(metric).lower().partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"valid_metric: expected NAME@K with NAME one of {', '.join(METRICS)} and K >= 1 "
                              f"(e.g. recall@20), got {metric!r}")


def validate_config(method: str, config: Dict[str, Any], config_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Check a resolved config (as :func:`load_config` returns, or built by hand) against ``method``'s
    schema; returns it with values as stored (``plugins: cross`` -> ``[cross]``). ``grid`` is dropped."""
    from mmgraph.train.schema import build_schema, plugin_list

    method = str(method).lower()
    _check_method(method)
    given = config.get("method")
    if given is not None and str(given).lower() != str(method).lower():
        raise ConfigError(f"the config is for method {given!r}, not {method!r}")
    plugins = plugin_list(config.get("plugins"), "config")
    _check_plugins(plugins, "config")
    schema = build_schema(method, plugins, config_dir)
    out = {}
    bad = [k for k in config if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config: setting names must be strings, got {bad[0]!r}")
    for key, value in config.items():
        if key in ("grid", "method"):
            continue
        out[key] = schema.check(key, value, "config")
    if "plugins" in out:
        out["plugins"] = plugins      # names as registered (lower case)
    check_semantics(out)
    out["method"] = method
    return out


def merge_plugin_defaults(config: Dict[str, Any], root: Optional[Path] = None) -> Dict[str, Any]:
    """For each plug-in named in ``config['plugins']``, add the keys of ``plugins/<name>.yaml`` that the
    config does not set yet (so ``--set`` / ``--config`` / method configs win). A bare string
    ``plugins: cross`` becomes ``[cross]``. Modifies and returns ``config``."""
    from mmgraph.train.schema import plugin_list, read_declarations

    names = plugin_list(config.get("plugins"))
    config["plugins"] = names
    root = Path(root) if root else CONFIG_DIR
    for name in names:
        path = root / "plugins" / f"{name}.yaml"
        if path.exists():
            for key, value in read_declarations(path).values.items():
                config.setdefault(key, value)
    return config


def expand_grid(config: Dict[str, Any]) -> List[Dict[str, Any]]:
    """All grid points of ``config`` (a single point when it has no grid)."""
    grid = config.get("grid") or {}
    base = {k: v for k, v in config.items() if k != "grid"}
    if not grid:
        return [base]
    keys = sorted(grid)
    return [{**base, **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))]
