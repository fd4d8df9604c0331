"""Shared command-line plumbing of the scripts/cross_*.py experiment commands."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="dataset folder (e.g. ../shared/data/tiktok) or synthetic spec")
    p.add_argument("--out", default=default_out, help="experiment folder: one run directory per run; "
                   "finished runs are reused, so an interrupted command resumes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=999, help="the seed of every run (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="maximum epochs per run (default: the config's, with early stopping)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (backbone or plug-in keys, e.g. cross_alpha=0.01)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    return p


def rates(text: str):
    """argparse type: comma-separated non-negative numbers (``0.2,0.4``)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (e.g. 0.2,0.4), got {text!r}") from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0 (e.g. 0.2,0.4), got {text!r}")
    return values


def check_metric(metric: str, overrides: dict) -> str:
    """``metric`` (``recall@10``) must be one the runs compute: a metric name at one of their ``topk``."""
    from mmgraph.errors import ConfigError
    from mmgraph.evaluation.metrics import DEFAULT_KS, METRICS

    name, _, k = metric.lower().partition("@")
    given = overrides.get("topk", DEFAULT_KS)
    ks = [int(x) for x in (given if isinstance(given, (list, tuple)) else [given])]
    if name not in METRICS or not k.isdigit() or int(k) not in ks:
        raise ConfigError(f"--metric {metric}: expected NAME@K with NAME one of {', '.join(METRICS)} and K one of "
                          f"the runs' topk {ks} (e.g. recall@10)")
    return metric.lower()


def setup(args) -> dict:
    """Logging, threads; returns the overrides shared by every run."""
    import torch

    from mmgraph.train.config import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    overrides = parse_overrides(args.set)
    overrides["seed"] = args.seed
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    for k, v in overrides.items():
        if isinstance(v, list) and k not in ("plugins", "topk", "modalities", "noise_modalities"):
            raise SystemExit(f"--set {k}=[...]: use --grid for search axes")
    return overrides


def parse_grid(items) -> dict:
    """``key=v1,v2,...`` -> ``{key: [v1, v2, ...]}`` (values parsed like --set)."""
    from mmgraph.train.config import parse_value

    grid = {}
    for item in items or []:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--grid expects key=v1,v2,..., got {item!r}")
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def pick(mapping: dict, names: str, what: str) -> dict:
    out = {}
    for name in names.split(","):
        matches = [k for k in mapping if k.lower().lstrip("+") == name.strip().lower().lstrip("+")]
        if not matches:
            raise SystemExit(f"unknown {what} {name!r}; choose from {', '.join(mapping)}")
        out[matches[0]] = mapping[matches[0]]
    return out


def run(main) -> None:
    """Call ``main()``; input errors end with one line on stderr and exit code 2 (like ``mmgraph``)."""
    from mmgraph.errors import run_script

    run_script(main)
