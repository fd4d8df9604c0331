"""``mmgraph train`` and ``mmgraph methods``."""
from __future__ import annotations

import argparse
import json
import sys

from mmgraph.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a method on a dataset and print its metrics",
                       description="Train METHOD on DATA (an MMRec atomic folder, or 'synthetic').")
    p.add_argument("--method", required=True, help="method name (see `mmgraph methods`)")
    p.add_argument("--data", required=True, help="dataset folder, or synthetic[:users=..,items=..,seed=..]")
    p.add_argument("--config", help="extra YAML config file")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values; a list value [a,b] defines a grid axis")
    p.add_argument("--seed", type=int, help="random seed (default from config)")
    p.add_argument("--out", help="run directory (config, history, checkpoints, final metrics)")
    p.add_argument("--graph", help="train on this graph file (written by `mmgraph graph build`, possibly with "
                                   "your own relations) instead of building the method's graph")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--grid", action="store_true", help="train every grid point, select on validation")
    p.add_argument("--epochs", type=int, help="maximum epochs (shortcut for --set epochs=N)")
    p.add_argument("--device", help="cpu | cuda | auto")
    p.add_argument("--no-progress", action="store_true", help="hide the per-epoch progress bar")
    p.set_defaults(func=run_train)

    m = sub.add_parser("methods", help="list the available methods and their default configs")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_methods)


def _print_metrics(result: dict, ks=(10, 20, 50)) -> None:
    names = ["recall", "ndcg", "precision", "map"]
    for split in ("valid", "test"):
        metrics = result[split]
        cells = [f"{n}@{k} {metrics[f'{n}@{k}']:.4f}" for n in names for k in ks if f"{n}@{k}" in metrics]
        print(f"{split:5s}: " + "  ".join(cells))
    print(f"best epoch {result['best_epoch']} of {result['epochs_run']}, "
          f"{result['seconds_per_epoch']:.2f} s/epoch (train + validation)")


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from mmgraph.train.config import expand_grid, load_config, parse_overrides
    from mmgraph.train.run import grid_search, load_dataset, train

    progress = False if args.no_progress else None
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR")
        cfg_path = Path(args.out) / "config.yaml"
        if not cfg_path.exists():
            raise ConfigError(f"cannot resume: {cfg_path} does not exist")
        config = yaml.safe_load(cfg_path.read_text())
        result, _ = train(args.method, args.data, config, args.out, resume=True, progress=progress,
                          graph=args.graph)
        _print_metrics(result)
        return 0
    overrides = parse_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.device:
        overrides["device"] = args.device
    dataset = load_dataset(args.data)
    config = load_config(args.method, dataset.name, args.config, overrides)
    if args.grid:
        if not config["grid"]:
            raise ConfigError(f"--grid: method {args.method!r} has no grid and --set gave no list values")
        summary = grid_search(args.method, dataset, config, args.out, progress=progress,
                              data_spec=args.data, graph=args.graph)
        metric = summary["metric"]
        for row in summary["points"]:
            print(f"point {row['point']:3d} {row['params']}: valid {metric} {row['valid'][metric]:.4f} "
                  f"test {metric} {row['test'][metric]:.4f}")
        best = summary["best"]
        print(f"selected on validation: point {best['point']} {best['params']}")
        _print_metrics({**best, "epochs_run": "?", "seconds_per_epoch": float("nan")})
        return 0
    if config["grid"] and any(isinstance(v, list) for v in overrides.values()):
        raise ConfigError("list values in --set define a grid; add --grid to run it")
    points = expand_grid({**config, "grid": {}})
    result, _ = train(args.method, dataset, points[0], args.out, progress=progress, data_spec=args.data,
                      graph=args.graph)
    _print_metrics(result)
    return 0


def run_methods(args: argparse.Namespace) -> int:
    from mmgraph.models.registry import available_methods
    from mmgraph.train.config import load_config

    rows = {}
    for name, cls in available_methods().items():
        cfg = load_config(name)
        keys = {k: cfg[k] for k in cls.defaults if k in cfg}
        rows[name] = {"class": f"{cls.__module__}.{cls.__name__}", "multimodal": cls.multimodal,
                      "config": keys, "grid": cfg["grid"]}
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    for name, row in rows.items():
        doc = (available_methods()[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:10s} {'multimodal' if row['multimodal'] else 'ID-only':10s} {doc}")
        print(f"{'':10s} config: {row['config']}")
        if row["grid"]:
            print(f"{'':10s} grid:   {row['grid']}")
    return 0
