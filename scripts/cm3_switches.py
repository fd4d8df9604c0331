#!/usr/bin/env python
"""CM3's switches, one at a time: the evidence behind ``configs/methods/cm3.yaml``'s defaults.

Where the released CM3 code and the paper's text differ, the library exposes a switch (see
``mmgraph.models.cm3.VARIANTS``). This script trains the released behaviour (``variant: released``),
every single-switch deviation from it towards the paper's text, and the paper's text as a whole
(``variant: paper``), over several seeds and datasets, and prints per dataset the mean +- std of valid and
test Recall@20 and the mean paired difference to the released runs (same seed). A deviation earns a
default only when it wins on validation on every dataset.

    python scripts/cm3_switches.py --data ../shared/data/tiktok synthetic --seeds 1 2 3 \\
        --set n_ui_layers=3 gamma=0.9 max_sim=1.0 alpha=0.5 --out runs/cm3_switches

One run directory per (dataset, variant, seed) under ``--out``; finished runs are reused, so an
interrupted command resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgraph.models.cm3 import SWITCHES, VARIANTS  # noqa: E402
from mmgraph.plugins.experiments import run_variant  # noqa: E402
from mmgraph.train.config import parse_overrides  # noqa: E402


def deviations() -> Dict[str, Dict[str, object]]:
    """``{label: overrides}``: released, each switch set to the paper's value, and paper."""
    out: Dict[str, Dict[str, object]] = {"released": {"variant": "released"}}
    for key in SWITCHES:
        if VARIANTS["paper"][key] != VARIANTS["released"][key]:
            out[f"{key}={VARIANTS['paper'][key]}"] = {"variant": "released", key: VARIANTS["paper"][key]}
    out["user_pairs=distinct"] = {"variant": "released", "user_pairs": "distinct"}
    out["paper"] = {"variant": "paper"}
    # the combination that collapsed on held-out data (issue 18): the paper's switches, items by multiplicity
    out["paper+item_pairs=rows"] = {"variant": "paper", "item_pairs": "rows"}
    return out


def data_label(spec: str) -> str:
    return Path(spec).name if not spec.startswith("synthetic") else spec.replace(":", "_").replace(",", "_")


def summarise(rows: List[dict], datasets: List[str], labels: List[str]) -> str:
    lines = []
    for ds in datasets:
        lines.append(f"\n{ds}")
        header = (f"{'variant':28s} {'valid R@20':>17s} {'test R@20':>17s} {'d valid':>9s} {'d test':>9s} "
                  f"{'seeds':>5s}")
        lines += [header, "-" * len(header)]
        base = {r["seed"]: r for r in rows if r["data"] == ds and r["variant"] == "released"}
        for label in labels:
            runs = [r for r in rows if r["data"] == ds and r["variant"] == label]
            if not runs:
                continue
            v = np.array([r["valid"] for r in runs])
            t = np.array([r["test"] for r in runs])
            paired = [(r["valid"] - base[r["seed"]]["valid"], r["test"] - base[r["seed"]]["test"])
                      for r in runs if r["seed"] in base]
            dv = np.mean([p[0] for p in paired]) if paired else float("nan")
            dt = np.mean([p[1] for p in paired]) if paired else float("nan")
            lines.append(f"{label:28s} {v.mean():8.4f} +- {v.std():.4f} {t.mean():8.4f} +- {t.std():.4f} "
                         f"{dv:+9.4f} {dt:+9.4f} {len(runs):5d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="dataset folders and/or synthetic[:...] specs")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides applied to every run")
    p.add_argument("--variants", help="comma-separated subset of the variant labels (default: all)")
    p.add_argument("--out", required=True, help="folder for the run directories and summary.json")
    p.add_argument("--epochs", type=int)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("mmgraph").setLevel(logging.WARNING)
    variants = deviations()
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            p.error(f"unknown variants {unknown}; choose from {list(variants)}")
        variants = {k: variants[k] for k in ["released"] + wanted if k in variants}
    overrides = parse_overrides(args.set)
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.threads:
        overrides["threads"] = args.threads
    out = Path(args.out)
    rows = []
    for spec in args.data:
        ds = data_label(spec)
        for label, switches in variants.items():
            for seed in args.seeds:
                run_dir = out / ds / label.replace("=", "-") / f"seed{seed}"
                result = run_variant("cm3", spec, {**overrides, **switches, "seed": seed}, run_dir, data_spec=spec)
                rows.append({"data": ds, "variant": label, "seed": seed, "valid": result["valid"]["recall@20"],
                             "test": result["test"]["recall@20"], "best_epoch": result["best_epoch"],
                             "epochs_run": result["epochs_run"]})
                print(f"{ds} {label:28s} seed {seed}: valid R@20 {rows[-1]['valid']:.4f} test R@20 "
                      f"{rows[-1]['test']:.4f} (best epoch {result['best_epoch']} of {result['epochs_run']})",
                      flush=True)
                out.mkdir(parents=True, exist_ok=True)
                (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(summarise(rows, [data_label(s) for s in args.data], list(variants)))
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
