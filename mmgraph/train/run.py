"""End-to-end runs: resolve the config, load the data, build the model, train, save the run directory.

A run directory holds ``config.yaml`` (resolved), ``meta.json`` (seed, data path, versions,
command), ``history.csv``/``history.json`` (per epoch), ``best.pt`` (state dict of the best
validation epoch), ``last.pt`` (resume state) and ``final_metrics.json``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import yaml

from mmgraph.data import RecDataset, load_atomic, make_synthetic
from mmgraph.data.transforms import apply_transforms
from mmgraph.errors import ConfigError
from mmgraph.graph.relations import (Relation, attach_features, build_graph, check_graph, load_graph,
                                     node_features, unique_relations)
from mmgraph.models.base import Recommender
from mmgraph.models.registry import get_model_class
from mmgraph.train.config import expand_grid, load_config
from mmgraph.train.reproducibility import DEFAULT_SEED, library_versions, resolve_device, seed_everything
from mmgraph.train.trainer import Trainer
from mmgraph.utils.io import atomic_write, write_json

log = logging.getLogger("mmgraph.train")

SYNTHETIC_PREFIX = "synthetic"


def load_dataset(spec: Union[str, Path, RecDataset], modalities=None) -> RecDataset:
    """A dataset from a folder path, or ``synthetic`` / ``synthetic:users=500,items=400,seed=1``."""
    if isinstance(spec, RecDataset):
        return spec
    text = str(spec)
    if text == SYNTHETIC_PREFIX or text.startswith(SYNTHETIC_PREFIX + ":"):
        kwargs: Dict[str, Any] = {}
        if ":" in text:
            for part in text.split(":", 1)[1].split(","):
                key, _, value = part.partition("=")
                key = {"users": "n_users", "items": "n_items"}.get(key.strip(), key.strip())
                kwargs[key] = value if key == "split" else float(value) if "." in value else int(value)
        ds = make_synthetic(**kwargs)
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


def build_model(method: str, data, config: Dict[str, Any], device: Optional[torch.device] = None) -> Recommender:
    """``method``'s model on ``data``: the run's ``HeteroData``, or a :class:`RecDataset` (its graph is
    built with the relations the method and ``config``'s plug-ins need)."""
    cls = get_model_class(method)
    name = data.name if isinstance(data, RecDataset) else "the graph"
    has_features = bool(data.features) if isinstance(data, RecDataset) else bool(node_features(data))
    if getattr(cls, "multimodal", False) and not has_features:
        raise ConfigError(f"method {method!r} needs item features, but {name} has none")
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


def train(method: str, data: Union[str, Path, RecDataset], config: Optional[Dict[str, Any]] = None,
          out_dir: Optional[Union[str, Path]] = None, resume: bool = False,
          progress: Optional[bool] = None, data_spec: Optional[str] = None,
          graph=None) -> Tuple[Dict[str, Any], Trainer]:
    """Train one configuration. ``config`` is a resolved config (see :func:`load_config`); when it is
    ``None`` the defaults for ``method`` (and the dataset's config) are used.

    ``data_spec`` is recorded in ``meta.json`` so that ``evaluate``/``export`` can reload the data
    (default: the path or spec ``data`` was given as). ``graph``: a saved graph file (or a
    ``HeteroData``) to train on instead of building the run's graph (see :func:`build_run_graph`).

    Returns ``(final_metrics, trainer)``.
    """
    dataset = load_dataset(data, (config or {}).get("modalities"))
    if config is None:
        config = load_config(method, dataset.name)
    config = {k: v for k, v in config.items() if k != "grid"}
    dataset = apply_transforms(dataset, config)
    seed = int(config.get("seed", DEFAULT_SEED))
    seed_everything(seed)
    if config.get("threads"):  # e.g. 1 on a shared, oversubscribed CPU
        torch.set_num_threads(int(config["threads"]))
    device = resolve_device(config.get("device", "auto"))
    data = build_run_graph(method, dataset, config, graph)
    model = build_model(method, data, config, device)
    plugins = build_plugins(config, data, model)
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            with atomic_write(out / "config.yaml", "w") as fh:
                yaml.safe_dump(config, fh, sort_keys=True)
            write_json(out / "meta.json", {
                "method": method, "data": data_spec or _data_spec(data, dataset),
                "dataset": repr(dataset), "seed": seed, "device": str(device), "versions": library_versions(),
                "graph": str(Path(graph).resolve()) if isinstance(graph, (str, Path)) else None,
                "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        _add_file_log(out / "train.log")
    log.info("%s on %r (%s); %d parameters", method, dataset, device,
             sum(p.numel() for p in model.parameters()))
    trainer = Trainer(model, dataset, config, out, plugins, progress)
    result = trainer.fit(resume=resume)
    return result, trainer


def _data_spec(data, dataset: RecDataset) -> str:
    if not isinstance(data, RecDataset):
        return str(data)
    return str(Path(dataset.source).parent) if dataset.source else dataset.name


def _add_file_log(path: Path) -> None:
    logger = logging.getLogger("mmgraph")
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve():
            return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def grid_search(method: str, data, config: Dict[str, Any], out_dir: Optional[Union[str, Path]] = None,
                progress: Optional[bool] = None, data_spec: Optional[str] = None, graph=None) -> Dict[str, Any]:
    """Train every grid point; select on the validation metric only. Returns a summary dict."""
    points = expand_grid(config)
    dataset = load_dataset(data, config.get("modalities"))
    metric = str(config.get("valid_metric", "recall@20")).lower()
    rows = []
    for k, point in enumerate(points):
        axes = {key: point[key] for key in sorted(config.get("grid") or {})}
        log.info("grid point %d/%d: %s", k + 1, len(points), axes)
        sub = Path(out_dir) / f"point_{k:03d}" if out_dir else None
        result, _ = train(method, dataset, point, sub, progress=progress,
                          data_spec=data_spec or _data_spec(data, dataset), graph=graph)
        rows.append({"point": k, "params": axes, "valid": result["valid"], "test": result["test"],
                     "best_epoch": result["best_epoch"]})
    best = max(rows, key=lambda r: r["valid"][metric])
    summary = {"metric": metric, "best": best, "points": rows}
    if out_dir:
        write_json(Path(out_dir) / "grid_summary.json", summary)
    return summary


def load_run(run_dir: Union[str, Path], data: Optional[Union[str, Path, RecDataset]] = None,
             checkpoint: str = "best.pt", device: Optional[str] = None):
    """Rebuild a trained model from its run directory. Returns ``(model, dataset, config)``.

    Args:
        data: the dataset (default: the path recorded in ``meta.json``).
        checkpoint: ``best.pt`` (best validation epoch) or ``last.pt``.
    """
    import json

    run = Path(run_dir)
    for name in ("config.yaml", "meta.json", checkpoint):
        if not (run / name).exists():
            raise ConfigError(f"{run}: not a finished run directory ({name} is missing)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    meta = json.loads((run / "meta.json").read_text())
    dataset = load_dataset(data if data is not None else meta["data"], config.get("modalities"))
    dataset = apply_transforms(dataset, config)   # the training data the run saw (masking, features)
    if device is not None:
        config["device"] = device
    graph = meta.get("graph")
    data = build_run_graph(meta["method"], dataset, config, graph if graph and Path(graph).exists() else None)
    model = build_model(meta["method"], data, config)
    state = torch.load(run / checkpoint, map_location=model.device, weights_only=True)
    if "state" in state:  # last.pt
        state = state["state"]
    model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    model.eval()
    return model, dataset, config
