"""End-to-end runs: resolve the config, load the data, build the model, train, save the run folder.

A run folder holds ``config.yaml`` (resolved), ``meta.json`` (method, data path and content hash, seed,
graph, versions, command), ``history.csv``/``history.json`` (per epoch), ``best.pt`` (state dict of the
best validation epoch), ``last.pt`` (resume state), ``final_metrics.json`` and ``train.log``.

Folders are guarded (:mod:`mmgraph.train.rundir`): one writing process at a time, a finished or
interrupted run is never replaced without ``overwrite``, a resumed run must see the same method, config and
data, and ``best.pt`` / ``last.pt`` carry the hashes of the config and data that produced them.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mmgraph.data import RecDataset, load_atomic, make_synthetic
from mmgraph.data.transforms import apply_transforms
from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.relations import (Relation, attach_features, build_graph, check_graph, load_graph,
                                     node_features, unique_relations)
from mmgraph.models.base import Recommender
from mmgraph.models.registry import get_model_class
from mmgraph.train import distributed
from mmgraph.train.config import load_config, validate_config
from mmgraph.train.reproducibility import DEFAULT_SEED, library_versions, resolve_device, seed_everything
from mmgraph.train.rundir import (RunLock, check_fresh_folder, config_hash, dataset_file, dataset_hash,
                                  discard_unstarted_grid, file_hash, folder_state, load_checkpoint, read_fingerprint,
                                  read_meta, read_run_config)
from mmgraph.train.trainer import Trainer
from mmgraph.utils.io import atomic_write, write_json

log = logging.getLogger("mmgraph.train")
#: settings the train command also takes as flags of their own (--seed N = --set seed=N)
SHORTCUT_FLAGS = ("seed", "epochs", "device")

SYNTHETIC_PREFIX = "synthetic"
#: ``--data synthetic:NAME=VALUE,...``: NAME -> (make_synthetic argument, type, lower bound, strict)
SYNTHETIC_PARAMS: Dict[str, Tuple[str, type, float, bool]] = {
    "users": ("n_users", int, 1, False), "items": ("n_items", int, 1, False),
    "factors": ("n_factors", int, 1, False), "mean_interactions": ("mean_interactions", float, 0, True),
    "min_interactions": ("min_interactions", int, 1, False), "temperature": ("temperature", float, 0, True),
    "popularity_skew": ("popularity_skew", float, 0, False), "noise": ("noise", float, 0, False),
    "split": ("split", str, 0, False), "seed": ("seed", int, 0, False),
    "preset": ("preset", str, 0, False), "scale": ("scale", float, 0, True),
}
#: parameters a ``preset`` (:mod:`mmgraph.data.synthetic_scale`) accepts besides itself
PRESET_PARAMS = ("scale", "seed")
SYNTHETIC_ALIASES = {"n_users": "users", "n_items": "items", "n_factors": "factors"}


def parse_synthetic(text: str) -> Dict[str, Any]:
    """``synthetic:users=500,items=400,seed=1`` -> keyword arguments of :func:`make_synthetic`."""
    from mmgraph.train.schema import suggest

    kwargs: Dict[str, Any] = {}
    body = text.split(":", 1)[1] if ":" in text else ""
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        name = SYNTHETIC_ALIASES.get(key, key)
        if not sep or not value:
            raise ConfigError(f"--data {text}: expected NAME=VALUE after 'synthetic:', got {part!r}")
        if name not in SYNTHETIC_PARAMS:
            close = suggest(name, SYNTHETIC_PARAMS)
            raise ConfigError(f"--data {text}: unknown synthetic parameter {key!r}"
                              + (f"; did you mean {', '.join(close)}?" if close else "")
                              + f" (accepted: {', '.join(SYNTHETIC_PARAMS)})")
        arg, typ, low, strict = SYNTHETIC_PARAMS[name]
        if name == "preset":
            from mmgraph.data.synthetic_scale import PRESETS
            if value not in PRESETS:
                raise ConfigError(f"--data {text}: unknown preset {value!r} (presets: {', '.join(PRESETS)})")
            kwargs[arg] = value
            continue
        if typ is str:
            if value not in ("warm", "cold"):
                raise ConfigError(f"--data {text}: split must be warm or cold, got {value!r}")
            kwargs[arg] = value
            continue
        try:
            number = float(value)
            if typ is int:
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except ValueError:
            raise ConfigError(f"--data {text}: {name} must be {'an integer' if typ is int else 'a number'}, "
                              f"got {value!r}") from None
        if not math.isfinite(number) or number < low or (strict and number == low):
            raise ConfigError(f"--data {text}: {name} must be {'>' if strict else '>='} {low:g}, got {value}")
        kwargs[arg] = number
    if "preset" in kwargs:
        other = [k for k in kwargs if k not in ("preset", *PRESET_PARAMS)]
        if other:
            raise ConfigError(f"--data {text}: preset={kwargs['preset']} takes only {', '.join(PRESET_PARAMS)} "
                              f"(got {', '.join(other)})")
    elif "scale" in kwargs:
        raise ConfigError(f"--data {text}: scale needs a preset (e.g. preset=electronics,scale=0.25)")
    return kwargs


def load_dataset(spec: Union[str, Path, RecDataset], modalities=None) -> RecDataset:
    """A dataset from a folder path, or ``synthetic`` / ``synthetic:users=500,items=400,seed=1``."""
    if isinstance(spec, RecDataset):
        ds = spec
    else:
        text = str(spec)
        if text == SYNTHETIC_PREFIX or text.startswith(SYNTHETIC_PREFIX + ":"):
            kwargs = parse_synthetic(text)
            if "preset" in kwargs:
                from mmgraph.data.synthetic_scale import make_electronics
                kwargs.pop("preset")
                ds = make_electronics(**kwargs)
            else:
                ds = make_synthetic(**kwargs)
            empty = [s for s in ("train", "valid", "test") if len(getattr(ds, s)) == 0]
            if empty:
                raise DataError(f"--data {text}: the synthetic {empty[0]} split is empty; use more users and "
                                "items (e.g. synthetic:users=100,items=80)")
        else:
            ds = load_atomic(text)
    if modalities is not None:
        missing = [m for m in modalities if m not in ds.features]
        if missing:
            raise ConfigError(f"modalities {missing} not in dataset {ds.name} (has {ds.modalities})")
        ds = ds.with_features({m: ds.features[m] for m in modalities})
    return ds


def plugin_names(config: Dict[str, Any]) -> List[str]:
    names = config.get("plugins") or []
    return [names] if isinstance(names, str) else list(names)


def run_relations(method: str, config: Dict[str, Any], modalities) -> List[Relation]:
    """The graph relations a run reads: the method's and its plug-ins'."""
    from mmgraph.plugins import get_plugin_class

    relations = list(get_model_class(method).relations(config, list(modalities)))
    for name in plugin_names(config):
        relations += get_plugin_class(name).relations(config, list(modalities))
    return unique_relations(relations)


def build_run_graph(method: str, dataset: RecDataset, config: Dict[str, Any], graph=None):
    """The run's ``HeteroData``: ``graph`` (a file written by ``mmgraph graph build`` / :func:`save_graph`,
    or a ``HeteroData``) checked against the dataset and the relations the run needs, else built from
    the dataset (through the graph cache unless ``graph_cache: false``)."""
    relations = run_relations(method, config, dataset.modalities)
    if graph is None:
        return build_graph(dataset, relations, cache=config.get("graph_cache", True))
    if isinstance(graph, (str, Path)):
        data, source = load_graph(graph, dataset), str(graph)
    else:
        data, source = graph, "the given graph"
        if dataset.features and not node_features(data):
            attach_features(data, dataset)
    check_graph(data, dataset, relations, source=source)
    return data


def check_method_data(method: str, data, selected: Optional[Sequence[str]] = None) -> None:
    """A multimodal method on data without item features (a :class:`RecDataset` or a ``HeteroData``): a
    one-line :class:`ConfigError` saying what to do, before any graph is built. ``selected``: the run's
    ``modalities`` setting, which may be what left none."""
    if not getattr(get_model_class(method), "multimodal", False):
        return
    name = data.name if isinstance(data, RecDataset) else "the graph"
    if not (data.features if isinstance(data, RecDataset) else node_features(data)):
        if selected is not None and len(selected) == 0:
            raise ConfigError(f"method {method!r} needs item features, but modalities=[] selects none; name some "
                              "(e.g. modalities=[image]) or leave the setting out to use them all")
        raise ConfigError(f"method {method!r} needs item features, but {name} has none: add them to the data "
                          "folder (README, 'Data') or pick an ID-only method (mf, lightgcn, directau)")


def build_model(method: str, data, config: Dict[str, Any], device: Optional[torch.device] = None) -> Recommender:
    """``method``'s model on ``data``: the run's ``HeteroData``, or a :class:`RecDataset` (its graph is
    built with the relations the method and ``config``'s plug-ins need)."""
    cls = get_model_class(method)
    check_method_data(method, data)
    if isinstance(data, RecDataset):
        data = build_run_graph(method, data, config)
    model = cls(data, config)
    return model.to(device or resolve_device(config.get("device", "auto")))


def build_plugins(config: Dict[str, Any], data, model: Recommender) -> List[torch.nn.Module]:
    """The plug-ins named in ``config['plugins']`` on ``data`` (the run's ``HeteroData`` or a dataset)."""
    names = plugin_names(config)
    if not names:
        return []
    from mmgraph.plugins import get_plugin_class
    if isinstance(data, RecDataset):
        data = build_run_graph(model.method_name, data, config)
    return [get_plugin_class(name)(data, model, config) for name in names]


def runtime_keys(method: str, config: Dict[str, Any]) -> List[str]:
    """Keys that do not change what a run trains (schema flag ``runtime``: epoch budget, device, threads):
    left out of the run's config hash, and allowed to change on resume."""
    from mmgraph.train.schema import build_schema

    schema = build_schema(method, plugin_names(config))
    return [k for k, s in schema.settings.items() if "runtime" in s.flags]


def _differences(a: Dict[str, Any], b: Dict[str, Any], ignore) -> List[str]:
    skip = set(ignore) | {"grid", "method"}
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def train(method: str, data: Union[str, Path, RecDataset], config: Optional[Dict[str, Any]] = None,
          out_dir: Optional[Union[str, Path]] = None, resume: bool = False,
          progress: Optional[bool] = None, data_spec: Optional[str] = None,
          graph=None, overwrite: bool = False) -> Tuple[Dict[str, Any], Trainer]:
    """Train one configuration. ``config`` is a resolved config (see :func:`load_config`; it is
    validated against the method's schema); ``None`` uses the defaults (on ``resume``: the folder's).

    Args:
        out_dir: the run folder; ``None`` keeps everything in memory. It is locked while training.
        resume: continue the interrupted run in ``out_dir``. Method, config (up to runtime keys such as
            ``epochs``), data and graph must be the folder's; a difference is a :class:`ConfigError`.
        overwrite: replace a run already in ``out_dir`` (without it, that is an error).
        data_spec: recorded in ``meta.json`` so that ``evaluate``/``export`` can reload the data
            (default: the path or spec ``data`` was given as).
        graph: a saved graph file (or a ``HeteroData``) to train on instead of building the run's graph
            (see :func:`build_run_graph`).

    Under torchrun (``WORLD_SIZE > 1``) every process calls this; they join one process group
    (:mod:`mmgraph.train.distributed`) and only rank 0 locks and writes ``out_dir``.

    Returns ``(final_metrics, trainer)``.
    """
    out = Path(out_dir) if out_dir else None
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of setting: value (see load_config), got "
                          f"{type(config).__name__}")
    if resume and out is None:
        raise ConfigError("resuming needs the run folder (--out DIR)")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite replaces it: choose one")
    device_setting = (config or {}).get("device", "auto")
    if resume and out is not None and config is None and (out / "config.yaml").exists():
        device_setting = read_run_config(out).get("device", "auto")
    ctx = distributed.init_from_env(device_setting)
    threads = torch.get_num_threads()   # a run's `threads` setting applies to the run, not to the caller
    try:
        with (RunLock(out) if out is not None and ctx.is_main else contextlib.nullcontext()):
            return _train(method, data, config, out, resume, progress, data_spec, graph, overwrite, ctx)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _train(method, data, config, out: Optional[Path], resume: bool, progress, data_spec, graph, overwrite,
           ctx: distributed.DistContext = distributed.SINGLE):
    meta: Dict[str, Any] = {}
    saved: Optional[Dict[str, Any]] = None
    method = str(method).lower()
    if out is not None and resume:
        state = folder_state(out)
        if state in ("missing", "empty"):
            raise ConfigError(f"cannot resume: {out} holds no run")
        if state.startswith("grid"):
            raise ConfigError(f"{out} holds a grid search: resume it with `mmgraph train --resume --out {out}`")
        if not (out / "last.pt").exists():
            raise ConfigError(f"cannot resume {out}: it stopped before its first epoch ended (no last.pt); "
                              "start over with --overwrite")
        meta, saved = read_meta(out), read_run_config(out)
        run_method = str(meta.get("method") or saved.get("method") or method).lower()
        if run_method != method:
            raise ConfigError(f"cannot resume {out} as {method}: the run there trains {run_method}")
        if graph is None:
            graph = meta.get("graph")
        elif isinstance(graph, (str, Path)):
            moved_graph_file(graph, meta, out)
        if config is None:
            config = saved
    elif out is not None and ctx.is_main:
        check_fresh_folder(out, overwrite)

    if config is not None:   # checked before its modalities select the data
        config = validate_config(method, config)
    dataset = load_dataset(data, (config or {}).get("modalities"))
    if config is None:
        config = load_config(method, dataset.name)
    elif saved is None:
        # a hand-built config (Python API) gets the method's (and its plug-ins') defaults for what it leaves
        # out, as --set does on the command line; a resumed run's config is the folder's, as it was
        base = load_config(method, dataset.name, overrides={"plugins": config["plugins"]} if "plugins" in config
                           else None)
        base.pop("grid", None)
        config = {**base, **config}
    config = validate_config(method, config)
    runtime = runtime_keys(method, config)
    if saved is not None:
        diff = _differences(validate_config(method, saved), config, runtime)
        if diff:
            raise ConfigError(f"cannot resume {out} with other settings ({', '.join(diff)} differ from its "
                              "config.yaml); resume takes them from the folder")
    if saved is not None:
        done = _epochs_done(out)
        if int(config.get("epochs", done)) < done:
            raise ConfigError(f"{out} has trained {done} epochs already; epochs={config['epochs']} is fewer: give "
                              f"at least {done} to continue it (or leave epochs out)")
    data_hash = dataset_hash(dataset)
    if meta.get("data_hash") and meta["data_hash"] != data_hash:
        raise DataError(f"cannot resume {out}: the dataset {data_spec or _spec_text(data)} differs from the one "
                        "the run started on (content hash); resume it with the original data")
    graph_hash = None
    if isinstance(graph, (str, Path)):
        if not Path(graph).exists():
            raise DataError(f"graph file {graph} does not exist")
        graph_hash = file_hash(graph)
        if meta.get("graph_hash") and meta["graph_hash"] != graph_hash:
            raise DataError(f"cannot resume {out}: the graph file {graph} changed since the run started")
    fingerprint = {"config_hash": config_hash(method, config, runtime), "data_hash": data_hash}

    dataset = apply_transforms(dataset, config)
    seed = int(config.get("seed", DEFAULT_SEED))
    seed_everything(seed)
    if config.get("threads"):  # e.g. 1 on a shared, oversubscribed CPU
        torch.set_num_threads(int(config["threads"]))
    device = distributed.rank_device(resolve_device(config.get("device", "auto")), ctx)
    get_model_class(method).check_settings(config)
    from mmgraph.plugins import get_plugin_class
    for name in plugin_names(config):
        get_plugin_class(name).check_settings(config)
    too_long = [int(k) for k in config.get("topk") or [] if int(k) >= dataset.n_items]
    if too_long:   # (the defaults' 50 on a toy catalogue included: a warning, not an error)
        log.warning("topk %s: not below the %d items of %s, so every item is in the top-K and recall@K is 1 by "
                    "construction; set topk to smaller cut-offs", too_long, dataset.n_items, dataset.name)
    if graph is None:   # (a given graph may carry the features: build_model checks it)
        check_method_data(method, dataset, config.get("modalities"))
        get_model_class(method).check_modalities(config, dataset.modalities)
        for name in plugin_names(config):
            get_plugin_class(name).check_modalities(config, dataset.modalities)
    run_graph = build_run_graph(method, dataset, config, graph)
    model = build_model(method, run_graph, config, device)
    plugins = build_plugins(config, run_graph, model)
    handler = None
    if out is not None and ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            meta = {
                "method": method, "data": _data_spec(data_spec or data, dataset), "dataset": repr(dataset),
                "dataset_name": dataset.name, "data_hash": data_hash, "config_hash": fingerprint["config_hash"],
                "seed": seed, "device": str(device), "versions": library_versions(),
                "graph": str(Path(graph).resolve()) if isinstance(graph, (str, Path)) else None,
                "graph_hash": graph_hash, "command": " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "processes": ctx.world}
        else:
            launch = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "processes": ctx.world, "device": str(device),
                      "command": " ".join(sys.argv)}
            if library_versions() != meta.get("versions"):
                launch["versions"] = library_versions()
            meta.setdefault("resumed", []).append(launch)
            meta["data"] = _data_spec(data_spec or data, dataset)   # the content hash matched: maybe a new path
            if isinstance(graph, (str, Path)):
                meta["graph"] = str(Path(graph).resolve())             # likewise
        if not resume or _differences(saved or {}, config, ()):
            _write_config(out / "config.yaml", config)   # a resume may change runtime keys (epochs)
        write_json(out / "meta.json", meta)
        handler = _add_file_log(out / "train.log", append=resume)
    try:
        n_model = sum(p.numel() for p in model.parameters())
        n_plugins = sum(p.numel() for plugin in plugins for p in plugin.parameters())
        log.info("%s on %r (%s); %d parameters%s", method, dataset, device, n_model + n_plugins,
                 f" ({n_model} the model's, {n_plugins} its plug-ins')" if n_plugins else "")
        _warn_cold_users(dataset)
        _warn_held_out_in_train(dataset)
        trainer = Trainer(model, dataset, config, out, plugins, progress, fingerprint=fingerprint, dist_ctx=ctx)
        result = trainer.fit(resume=resume)
    finally:
        if handler is not None:
            logging.getLogger("mmgraph").removeHandler(handler)
            handler.close()
    return result, trainer


def _epochs_done(out: Path) -> int:
    """Epochs recorded in a run folder's ``history.json`` (0 when it has none yet)."""
    try:
        history = json.loads((out / "history.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(history) if isinstance(history, list) else 0


def _write_config(path: Path, config: Dict[str, Any]) -> None:
    import yaml

    with atomic_write(path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=True)


def _warn_cold_users(dataset: RecDataset) -> None:
    trained = np.zeros(dataset.n_users, dtype=bool)
    trained[dataset.train[:, 0]] = True
    held = np.unique(np.concatenate([dataset.valid[:, 0], dataset.test[:, 0]]))
    cold = held[~trained[held]]
    if len(cold):
        log.warning("%d user(s) appear only in valid/test (e.g. user %s): they have no training interaction, "
                    "so they are ranked from untrained embeddings", len(cold), dataset.raw_user_id(int(cold[0])))


def _warn_held_out_in_train(dataset: RecDataset) -> None:
    for split in ("valid", "test"):
        rows = dataset.in_train(split)
        if rows.any():
            u, i = dataset.split(split)[int(np.flatnonzero(rows)[0])]
            log.warning("%d of the %d %s rows repeat a training (user, item) pair (e.g. user %s, item %s): "
                        "evaluation masks training items, so they can never be hits and lower the %s metrics; "
                        "keep each pair in one split", int(rows.sum()), len(rows), split,
                        dataset.raw_user_id(int(u)), dataset.raw_item_id(int(i)), split)


def _spec_text(data) -> str:
    return data.name if isinstance(data, RecDataset) else str(data)


def _data_spec(data, dataset: RecDataset) -> str:
    """The dataset as ``meta.json`` records it: ``synthetic[:...]`` as given, a folder as an absolute path (so
    that ``--resume``, ``evaluate`` and ``export`` find it from any working directory)."""
    if not isinstance(data, RecDataset):
        text = str(data)
        if text == SYNTHETIC_PREFIX or text.startswith(SYNTHETIC_PREFIX + ":"):
            return text
        return str(Path(text).resolve())
    return str(Path(dataset.source).resolve().parent) if dataset.source else dataset.name


def _add_file_log(path: Path, append: bool = True) -> logging.Handler:
    """Send the ``mmgraph`` log to ``path`` until the handler is removed (one per run: a grid point's
    train.log holds that point's log only)."""
    handler = logging.FileHandler(path, mode="a" if append else "w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("mmgraph")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


# ------------------------------------------------------------------------------------------ resume (CLI)
def same_data(given: str, recorded: str) -> bool:
    if given == recorded:
        return True
    if given.startswith(SYNTHETIC_PREFIX) or recorded.startswith(SYNTHETIC_PREFIX):
        return False
    return Path(given).resolve() == Path(recorded).resolve()


def resume_run(out_dir: Union[str, Path], method: Optional[str] = None, data: Optional[str] = None,
               config_file: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
               graph: Optional[str] = None, progress: Optional[bool] = None) -> Tuple[str, Dict[str, Any]]:
    """Continue the run (or grid search) in ``out_dir`` with the method, data, config, seed and graph
    recorded there. Given flags must agree with the folder, except runtime keys (``epochs`` to extend a
    run, ``device``, ``threads`` ...), which take the new value. Returns ``("run", final_metrics)`` or
    ``("grid", summary)``."""
    from mmgraph.train.schema import build_schema

    out = Path(out_dir)
    state = folder_state(out)
    if state in ("missing", "empty"):
        raise ConfigError(f"cannot resume: {out} holds no run")
    meta, saved = read_meta(out), read_run_config(out)
    run_method = str(meta.get("method") or saved.get("method") or "")
    if not run_method:
        raise DataError(f"{out}/meta.json names no method; not a run folder mmgraph can resume")
    if method and method.lower() != run_method.lower():
        raise ConfigError(f"--method {method} conflicts with the run in {out} ({run_method}); --resume takes "
                          "the method from the folder")
    recorded = str(meta.get("data") or "")
    if data and recorded and not same_data(str(data), recorded):
        if str(data).startswith(SYNTHETIC_PREFIX) or recorded.startswith(SYNTHETIC_PREFIX):
            raise ConfigError(f"--data {data} conflicts with the run in {out} (trained on {recorded}); --resume "
                              "takes the data from the folder")
        # a dataset folder that moved: accepted when its content hash is the run's (checked by train)
        log.info("resuming %s on --data %s (recorded: %s); its content must be the run's", out, data, recorded)
        recorded = str(data)
    if graph:
        moved_graph_file(graph, meta, out)
    graph = str(graph) if graph else meta.get("graph")
    config = dict(saved)
    requested: List[Tuple[str, Dict[str, Any]]] = []
    if config_file:
        from mmgraph.train.config import _override_layer
        values, grid = _override_layer(Path(config_file), run_method)
        if grid:
            raise ConfigError(f"--config {config_file}: a grid: block cannot change a run being resumed")
        requested.append((f"--config {config_file}", values))
    if overrides:
        requested.append(("--set", overrides))
    schema = build_schema(run_method, plugin_names(config))
    for origin, values in requested:
        for key, value in values.items():
            setting = schema.setting(key, origin)
            if isinstance(value, list) and not setting.accepts_list:
                raise ConfigError(f"{key}=[...] ({origin}): a grid cannot be added to a run being resumed")
            value = setting.check(value, origin)
            if "runtime" in setting.flags:
                config[key] = value
            elif config.get(key) != value:
                given = f"--{key} or --set" if origin == "--set" and key in SHORTCUT_FLAGS else origin
                raise ConfigError(f"{key}={value!r} ({given}) conflicts with the run in {out} ({key}="
                                  f"{config.get(key)!r}); --resume takes the settings from the folder (only "
                                  "runtime settings such as epochs, device and threads may change)")
    spec = recorded or data
    if not spec:
        raise DataError(f"{out}/meta.json records no dataset; pass --data")
    if state.startswith("grid"):
        summary = grid_search(run_method, spec, config, out, progress=progress, data_spec=spec,
                              graph=graph, resume=True)
        return "grid", summary
    result, _ = train(run_method, spec, config, out, resume=True, progress=progress, data_spec=spec,
                      graph=graph)
    return "run", result


# ------------------------------------------------------------------------------------------ grids
def grid_points(grid: Dict[str, List[Any]]) -> Tuple[List[str], List[Dict[str, Any]], Optional[List[Any]]]:
    """``(axes, points, seeds)``: the search axes (sorted), one dict per point, and the seeds the
    ``seed`` axis asks for (``None`` without one: each point runs once, with the config's seed)."""
    grid = dict(grid or {})
    seeds = grid.pop("seed", None)
    axes = sorted(grid)
    points = [dict(zip(axes, values)) for values in itertools.product(*(grid[k] for k in axes))]
    return axes, points, seeds


def _mean_metrics(runs: List[Dict[str, Any]], split: str) -> Dict[str, float]:
    keys = runs[0][split].keys()
    return {k: float(np.mean([r[split][k] for r in runs])) for k in keys}


def grid_search(method: str, data, config: Dict[str, Any], out_dir: Optional[Union[str, Path]] = None,
                progress: Optional[bool] = None, data_spec: Optional[str] = None, graph=None,
                resume: bool = False, overwrite: bool = False,
                on_run: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train every point of ``config['grid']``; select on the validation metric only.

    A ``seed`` axis is not searched: every point runs once per seed, the point is chosen on the mean
    validation metric over the seeds, and every seed's result is reported (``runs``). With only a seed
    axis there is nothing to choose: the summary reports repetitions of one config.

    ``out_dir`` gets one folder per run (``point_000`` or ``point_000/seed_1``) and ``grid_summary.json``;
    it is locked while the grid runs. ``resume`` reuses finished points and resumes an interrupted one
    (see :func:`run_or_reuse`). ``on_run`` is called before each run (``{"event": "start", "point", "seed",
    "params", "dir"}``) and after it (``"event": "done"`` with ``"reused"`` and ``"result"``): progress for
    callers that run many grids (``mmgraph benchmark``).
    Returns the summary: ``metric``, ``axes``, ``seeds``, ``points`` (``params``, ``runs``, mean
    ``valid``/``test``), ``best`` (the selected point) and ``selected`` (its folder).
    """
    axes, points, seeds = grid_points(config.get("grid") or {})
    base = {k: v for k, v in config.items() if k != "grid"}
    out = Path(out_dir) if out_dir else None
    if resume and out is None:
        raise ConfigError("resuming a grid needs its folder (--out DIR)")
    ctx = distributed.init_from_env(config.get("device", "auto"))
    with (RunLock(out) if out is not None and ctx.is_main else contextlib.nullcontext()):
        dataset = load_dataset(data, config.get("modalities"))
        spec = _data_spec(data_spec or data, dataset)
        metric = str(base.get("valid_metric", "recall@20")).lower()
        if out is not None:
            if resume:
                saved = read_run_config(out)
                diff = _differences(saved, config, runtime_keys(method, base))
                if diff or not _same_axes(saved.get("grid"), config.get("grid")):
                    raise ConfigError(f"cannot resume the grid in {out} with other settings "
                                      f"({', '.join(diff or ['grid'])})")
                meta = read_meta(out)
                if meta.get("data_hash") not in (None, dataset_hash(dataset)):
                    raise DataError(f"cannot resume the grid in {out}: the dataset differs from the one it "
                                    "started on (content hash)")
                if saved.get("grid") != config.get("grid"):   # other seeds: each seed's run is its own folder
                    log.info("%s: seeds %s -> %s", out, (saved.get("grid") or {}).get("seed"), seeds)
                    _write_config(out / "config.yaml", {**saved, "grid": config.get("grid") or {}})
                    meta = {**meta, "seeds": seeds}
                    write_json(out / "meta.json", meta)
                if isinstance(graph, (str, Path)) and meta.get("graph") not in (None, str(Path(graph).resolve())):
                    write_json(out / "meta.json", {**meta, "graph": str(Path(graph).resolve())})   # moved, same content
            elif ctx.is_main:
                check_fresh_folder(out, overwrite)
                out.mkdir(parents=True, exist_ok=True)
                _write_config(out / "config.yaml", {**base, "grid": config.get("grid") or {}})
                write_json(out / "meta.json", {
                    "kind": "grid", "method": method, "data": spec, "dataset_name": dataset.name,
                    "data_hash": dataset_hash(dataset), "axes": axes, "seeds": seeds,
                    "graph": str(Path(graph).resolve()) if isinstance(graph, (str, Path)) else None,
                    "graph_hash": file_hash(graph) if isinstance(graph, (str, Path)) else None,
                    "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            rows = [_run_point(method, dataset, base, k, len(points), params, seeds, out, metric, progress=progress,
                               data_spec=spec, graph=graph, on_run=on_run) for k, params in enumerate(points)]
        except Exception:
            if out is not None and ctx.is_main and not resume:
                discard_unstarted_grid(out)
            raise
        best = max(rows, key=lambda r: r["valid"][metric])
        summary = {"metric": metric, "axes": axes, "seeds": seeds, "best": best, "selected": best["dir"],
                   "points": rows}
        if out is not None and ctx.is_main:
            write_json(out / "grid_summary.json", summary)
    return summary


def _run_point(method: str, dataset, base: Dict[str, Any], k: int, total: int, params: Dict[str, Any],
               seeds: Optional[List[Any]], out: Optional[Path], metric: str, progress, data_spec, graph,
               on_run) -> Dict[str, Any]:
    """Train (or reuse) grid point ``k`` once per seed; its summary row (see :func:`grid_search`)."""
    runs = []
    for seed in seeds or [base.get("seed", DEFAULT_SEED)]:
        point = {**base, **params, "seed": seed}
        rel = f"point_{k:03d}" + (f"/seed_{seed}" if seeds else "")
        log.info("grid point %d/%d: %s%s", k + 1, total, params, f" seed {seed}" if seeds else "")
        sub = out / rel if out is not None else None
        info = {"point": k, "seed": seed, "params": params, "dir": rel}
        if on_run is not None:
            on_run({"event": "start", **info})
        result, reused = run_or_reuse(method, dataset, point, sub, progress=progress, data_spec=data_spec,
                                      graph=graph)
        if on_run is not None:
            on_run({"event": "done", **info, "reused": reused, "result": result})
        runs.append({"seed": seed, "dir": rel, "valid": result["valid"], "test": result["test"],
                     **{key: result[key] for key in ("best_epoch", "epochs_run", "seconds_per_epoch")}})
    row = {"point": k, "params": params, "dir": f"point_{k:03d}", "runs": runs,
           "valid": _mean_metrics(runs, "valid"), "test": _mean_metrics(runs, "test")}
    if len(runs) == 1:
        row.update({key: runs[0][key] for key in ("best_epoch", "epochs_run", "seconds_per_epoch")})
    else:
        # sample standard deviation (ddof 1), as `mmgraph benchmark` reports its seeds
        row["valid_std"] = {metric: float(np.std([r["valid"][metric] for r in runs], ddof=1))}
        row["test_std"] = {metric: float(np.std([r["test"][metric] for r in runs], ddof=1))}
    return row


def _same_axes(old: Optional[Dict[str, Any]], new: Optional[Dict[str, Any]]) -> bool:
    """Two grids with the same search axes; their seed lists may differ (a resumed grid may add seeds:
    finished seeds are reused, new ones run), but both have a seed axis or neither (folder layout)."""
    old, new = dict(old or {}), dict(new or {})
    return (old.pop("seed", None) is None) == (new.pop("seed", None) is None) and old == new


def run_or_reuse(method: str, data, config: Dict[str, Any], folder: Optional[Union[str, Path]] = None,
                 progress: Optional[bool] = None, data_spec: Optional[str] = None,
                 graph=None) -> Tuple[Dict[str, Any], bool]:
    """Train ``config`` in ``folder`` unless it already holds that run. Returns ``(final_metrics, reused)``.

    * a finished run with the same settings (up to runtime keys) is reused; one with other settings is
      a :class:`ConfigError`. A larger ``epochs`` budget extends a run that used its whole budget (it is
      resumed); a run that stopped early is reused when it stopped within the new budget.
    * an interrupted run is resumed from ``last.pt``; one that never finished an epoch starts over.
    * without ``folder`` the run is trained in memory.
    """
    out = Path(folder) if folder is not None else None
    state = folder_state(out) if out is not None else "missing"
    if state == "finished":
        saved = validate_config(method, read_run_config(out))
        wanted = validate_config(method, config)
        diff = _differences(saved, wanted, runtime_keys(method, config))
        if diff:
            raise ConfigError(f"{out} holds a finished run with other settings ({', '.join(diff)}); use another "
                              "folder")
        result = json.loads((out / "final_metrics.json").read_text())
        before, after, ran = int(saved.get("epochs", 1000)), int(wanted.get("epochs", 1000)), int(result["epochs_run"])
        if after == before or (ran < before and after >= ran):   # the same budget, or it stopped early within it
            log.info("reusing the finished run in %s", out)
            return result, True
        if after < ran:
            raise ConfigError(f"{out} holds a finished run of {ran} epochs; epochs={after} would have stopped it "
                              f"earlier: use another folder, or epochs >= {ran}")
        log.info("extending the run in %s from %d to %d epochs", out, before, after)
        result, _ = train(method, data, config, out, resume=True, progress=progress, data_spec=data_spec,
                          graph=graph)
        return result, False
    if state.startswith("grid"):
        raise ConfigError(f"{out} holds a grid search, not a single run; use another folder")
    resume = state == "interrupted" and (out / "last.pt").exists()
    result, _ = train(method, data, config, out, resume=resume, progress=progress, data_spec=data_spec,
                      graph=graph, overwrite=state == "interrupted" and not resume)
    return result, False


# ------------------------------------------------------------------------------------------ loading
def _epochs_done(run: Path) -> Optional[int]:
    """Epochs an interrupted run has finished (its history), or None when unreadable."""
    try:
        return len(json.loads((run / "history.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def resolve_run_dir(run_dir: Union[str, Path]) -> Path:
    """A run folder, or the folder of the point a grid search selected (``grid_summary.json``)."""
    run = Path(run_dir)
    summary_path = run / "grid_summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
            best = summary["best"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"{summary_path}: unreadable ({exc})") from None
        runs = best.get("runs") or [{"dir": f"point_{int(best['point']):03d}"}]
        if len(runs) > 1:
            dirs = ", ".join(str(run / r["dir"]) for r in runs)
            raise ConfigError(f"{run} is a grid whose selected point {best['point']} ran once per seed; "
                              f"name one run: {dirs}")
        target = run / runs[0]["dir"]
        log.info("%s is a grid search: using its selected point %s %s", run, target.name, best.get("params"))
        return target
    if folder_state(run) == "grid":
        raise ConfigError(f"{run} holds an unfinished grid search (no grid_summary.json); finish it with "
                          f"`mmgraph train --resume --out {run}`")
    return run


@contextlib.contextmanager
def as_in_the_run(config: Dict[str, Any], device: Optional[torch.device] = None):
    """Within the block a loaded run's model computes as the run's final evaluation did (see ``Trainer``): from
    the run's seed (a model with noise at evaluation, LGMRec, then reproduces ``final_metrics.json``), with
    subnormal floats flushed as in training (``flush_denormals``) and at the run's ``matmul_precision``."""
    from mmgraph.nn.linear import matmul_precision
    from mmgraph.utils.denormals import flush_for, flushing_denormals

    device = torch.device("cpu") if device is None else device
    seed_everything(int(config.get("seed", DEFAULT_SEED)))
    with flushing_denormals(flush_for(config, device)), \
            matmul_precision(config.get("matmul_precision", "highest"), device):
        yield


def moved_graph_file(graph, meta: Dict[str, Any], where) -> bool:
    """Whether ``graph`` (a path) names the graph file the run in ``where`` recorded in ``meta``: the same path,
    or -- a file that moved -- one with the recorded content hash. A different file is a one-line error."""
    recorded = meta.get("graph")
    if not recorded:
        raise ConfigError(f"--graph {graph}: the run in {where} built its graph from its method's settings, not "
                          "from a graph file; drop --graph")
    if str(Path(graph).resolve()) == recorded:
        return False
    if not Path(graph).is_file():
        raise DataError(f"graph file {graph} does not exist")
    if not meta.get("graph_hash"):
        raise ConfigError(f"--graph {graph}: the run in {where} was trained on {recorded} and recorded no content "
                          "hash of it (older mmgraph), so another path cannot be checked; put the file back there")
    if file_hash(graph) != meta["graph_hash"]:
        raise ConfigError(f"--graph {graph} conflicts with the run in {where}, trained on {recorded} (a moved graph "
                          "file is accepted when its content is the same; this one differs)")
    log.info("graph file %s: the content of %s, which the run in %s was trained on", graph, recorded, where)
    return True


def load_run(run_dir: Union[str, Path], data: Optional[Union[str, Path, RecDataset]] = None,
             checkpoint: str = "best.pt", device: Optional[str] = None, graph: Optional[Union[str, Path]] = None):
    """Rebuild a trained model from its run folder (or a grid's selected point). Returns
    ``(model, dataset, config)``.

    The dataset must be the one the run was trained on, and the checkpoint must have been written with
    the folder's ``config.yaml`` (both checked by content hash); otherwise a one-line error.

    Args:
        data: the dataset (default: the path recorded in ``meta.json``).
        checkpoint: ``best.pt`` (best validation epoch) or ``last.pt``.
        graph: for a run trained on a graph file (``--graph``) that has moved since: its new path (its content
            must be the recorded one).
    """
    run = resolve_run_dir(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run}: not a finished run directory (no such folder)")
    for name in ("config.yaml", "meta.json", checkpoint):
        if not (run / name).exists():
            data = dataset_file(run)
            raise ConfigError(f"{run}: not a finished run directory "
                              + (f"but a dataset folder: it holds {data}" if data else f"({name} is missing)"))
    meta = read_meta(run)
    method = str(meta.get("method") or "")
    if not method:
        raise DataError(f"{run}/meta.json names no method")
    config = validate_config(method, read_run_config(run))
    if not (run / "final_metrics.json").exists():
        done = _epochs_done(run)
        log.warning("%s is an unfinished run (stopped%s of %s): its %s holds the best epoch so far; "
                    "`mmgraph train --resume --out %s` finishes it", run, f" after epoch {done}" if done else "",
                    config.get("epochs"),
                    checkpoint, run)
    spec = data if data is not None else meta.get("data")
    if spec is None:
        raise DataError(f"{run}/meta.json records no dataset; pass --data")
    dataset = load_dataset(spec, config.get("modalities"))
    data_hash = dataset_hash(dataset)
    if meta.get("data_hash") and meta["data_hash"] != data_hash:
        raise DataError(f"the dataset {_spec_text(spec)} is not the one {run} was trained on (content hash "
                        "differs); pass --data with the run's dataset")
    ckpt = load_checkpoint(run / checkpoint, map_location="cpu", resume=checkpoint == "last.pt")
    state = ckpt["state"] if checkpoint == "last.pt" else ckpt
    stored = ckpt.get("fingerprint", {}) if checkpoint == "last.pt" else read_fingerprint(ckpt)
    expected = config_hash(method, config, runtime_keys(method, config))
    if stored:
        if stored.get("config_hash") != expected:
            raise ConfigError(f"{run / checkpoint} was not written with {run / 'config.yaml'} (config hash "
                              "differs): the folder mixes files of two runs; train it again with --overwrite")
        if stored.get("data_hash") != data_hash:
            raise DataError(f"{run / checkpoint} was trained on other data than {_spec_text(spec)} (content hash)")
    else:
        log.warning("%s carries no run fingerprint (older mmgraph): config and data not checked against it",
                    run / checkpoint)
    dataset = apply_transforms(dataset, config)   # the training data the run saw (masking, features)
    if device is not None:
        config["device"] = device
    if graph is not None:
        moved_graph_file(graph, meta, run)
        graph = str(graph)
    else:
        graph = meta.get("graph")
        if graph and not Path(graph).exists():
            raise DataError(f"{run} was trained on the graph file {graph}, which no longer exists; if it moved, "
                            "pass its new path with --graph")
        if graph and meta.get("graph_hash") and file_hash(graph) != meta["graph_hash"]:
            raise DataError(f"{run} was trained on the graph file {graph}, which has changed since")
    data_graph = build_run_graph(method, dataset, config, graph or None)
    model = build_model(method, data_graph, config)
    model_state = {k[6:]: v.to(model.device) for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise DataError(f"{run / checkpoint} does not fit the {method} model its config.yaml describes "
                        f"({detail})") from None
    model.eval()
    return model, dataset, config
