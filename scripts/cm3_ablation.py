#!/usr/bin/env python
"""CM3 ablations (paper Table 4, optionally Table 5) on one dataset, printed as a table.

Trains, with everything else fixed, the variants

    w/o F    fusion: none      (no fused channel)
    w LF     fusion: linear    (linear interpolation instead of slerp)
    w StdU   uniformity: standard
    CM3      the full model
    w/o <m>  drop_modality: <m> for every modality of the dataset (``--modalities``; Table 5)

and prints test Recall@20 / NDCG@20 (best validation epoch) per variant, like the paper's table.

Example (the TikTok setting, from the released-code behaviour and from the paper's text)::

    python scripts/cm3_ablation.py --data ../shared/data/tiktok \\
        --set n_ui_layers=3 gamma=0.9 max_sim=1.0 alpha=0.5 --base released paper --out runs/cm3_ablation

Each run writes a normal run directory (``<out>/<base>/<variant>``; ``mmgraph plot`` works on them);
finished runs there are reused, so an interrupted command resumes.

With ``--seeds N`` every variant runs with N seeds through ``mmgraph benchmark``'s machinery
(``<out>/<base>/seeds/``: results.csv, summary.md with mean ± std and a paired t-test of each variant
against the full CM3, as the paper's significance claims need)::

    python scripts/cm3_ablation.py --data ../shared/data/tiktok --seeds 3 --out runs/cm3_ablation
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgraph.models.cm3 import VARIANTS  # noqa: E402
from mmgraph.plugins.experiments import run_variant  # noqa: E402
from mmgraph.train.config import parse_overrides  # noqa: E402
from mmgraph.train.run import load_dataset  # noqa: E402

TABLE4 = {"wo_f": ("CM3 w/o F", {"fusion": "none"}),
          "lf": ("CM3 w LF", {"fusion": "linear"}),
          "stdu": ("CM3 w StdU", {"uniformity": "standard"}),
          "full": ("CM3", {})}
MODALITY_LABELS = {"image": "V", "text": "T", "audio": "A"}


def variants_for(dataset, names, with_modalities: bool):
    out = {k: TABLE4[k] for k in names}
    if with_modalities and len(dataset.features) > 1:
        for m in dataset.features:
            out[f"wo_{m}"] = (f"CM3 w/o {MODALITY_LABELS.get(m, m)}", {"drop_modality": m})
    return out


def format_table(results, bases, labels) -> str:
    """Rows: (base, metric); columns: the variants, in the paper's order."""
    keys = list(labels)
    header = f"{'base':10s} {'metric':8s} " + " ".join(f"{labels[k]:>12s}" for k in keys)
    lines = [header, "-" * len(header)]
    for base in bases:
        for label, metric in (("R@20", "recall@20"), ("N@20", "ndcg@20")):
            cells = [f"{results[(base, k)]['test'][metric]:12.4f}" if (base, k) in results else f"{'-':>12s}"
                     for k in keys]
            lines.append(f"{base:10s} {label:8s} " + " ".join(cells))
        cells = [f"{'%d/%d' % (results[(base, k)]['best_epoch'], results[(base, k)]['epochs_run']):>12s}"
                 if (base, k) in results else f"{'-':>12s}" for k in keys]
        lines.append(f"{base:10s} {'best/run':8s} " + " ".join(cells))
    return "\n".join(lines)


def over_seeds(data: str, variants, bases, n_seeds: int, overrides, out: Path) -> int:
    """Every variant over seeds 1..n_seeds (one benchmark per base), t-tested against the full CM3."""
    from mmgraph.benchmark import MethodSpec, run_benchmark, seed_list
    from mmgraph.benchmark.report import summarise, summary_tables, write_report

    reference = TABLE4["full"][0]
    for base in bases:
        specs = [MethodSpec(label, "cm3", (), tuple(sorted({"variant": base, **switches}.items())))
                 for label, switches in variants.values()]
        if reference not in [s.label for s in specs]:
            specs.append(MethodSpec(reference, "cm3", (), (("variant", base),)))
        command = "python scripts/cm3_ablation.py " + " ".join(sys.argv[1:])
        result = run_benchmark(specs, [data], seed_list(n_seeds), out / base / "seeds", overrides=overrides,
                               reference=reference, progress=False, command=command)
        files = write_report(result.out, result.rows, reference, result.meta)
        print(f"\nCM3 ablations, base {base} ({files['summary_md']})")
        print(summary_tables(summarise(result.rows, reference), reference))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder (MMRec atomic) or synthetic[:...]")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides applied to every variant")
    p.add_argument("--base", nargs="+", default=["default"], choices=sorted(VARIANTS),
                   help="variant preset(s) the ablations start from (default: default, the library default)")
    p.add_argument("--variants", default="wo_f,lf,stdu,full",
                   help="comma-separated subset of wo_f,lf,stdu,full (default: all four, Table 4)")
    p.add_argument("--modalities", action="store_true", help="also drop each modality in turn (Table 5)")
    p.add_argument("--out", help="folder for the run directories and summary.json")
    p.add_argument("--epochs", type=int, help="maximum epochs per run")
    p.add_argument("--threads", type=int, help="torch CPU threads per run")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", type=int, help="run every variant with seeds 1..N and t-test it against CM3 "
                                             "(needs --out; replaces --seed)")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("mmgraph").setLevel(logging.INFO)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in TABLE4]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(TABLE4)}")
    dataset = load_dataset(args.data)
    variants = variants_for(dataset, names, args.modalities)
    labels = {k: v[0] for k, v in variants.items()}
    overrides = parse_overrides(args.set)
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.threads:
        overrides["threads"] = args.threads
    if args.seed is not None:
        overrides["seed"] = args.seed
    out = Path(args.out) if args.out else None
    if args.seeds is not None:
        if out is None or args.seed is not None:
            p.error("--seeds needs --out and replaces --seed")
        return over_seeds(args.data, variants, args.base, args.seeds, overrides, out)
    results, summary = {}, []
    for base in args.base:
        for key, (label, switches) in variants.items():
            run_dir = out / base / key if out else None
            t0 = time.time()
            # a finished run in run_dir is reused, so an interrupted ablation resumes where it stopped
            result = run_variant("cm3", dataset, {**overrides, "variant": base, **switches}, run_dir,
                                 data_spec=args.data)
            results[(base, key)] = result
            summary.append({"base": base, "variant": key, "label": label, "switches": switches,
                            "test": result["test"], "valid": result["valid"], "best_epoch": result["best_epoch"],
                            "epochs_run": result["epochs_run"], "seconds_per_epoch": result["seconds_per_epoch"],
                            "wall_seconds": time.time() - t0})
            print(f"[{base}] {label:14s} test R@20 {result['test']['recall@20']:.4f} "
                  f"N@20 {result['test']['ndcg@20']:.4f} (valid R@20 {result['valid']['recall@20']:.4f}, "
                  f"best epoch {result['best_epoch']} of {result['epochs_run']})", flush=True)
            if out:
                out.mkdir(parents=True, exist_ok=True)
                (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(f"CM3 ablations on {dataset.name} (test metrics at the best validation epoch)")
    print(format_table(results, args.base, labels))
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
