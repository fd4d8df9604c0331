"""BR-MRS ablation (paper Table 3: CHNS x Syn-BPR) and negative-sampling comparison (section 3.6), same seed.

    python scripts/brmrs_ablation.py --data ../shared/data/tiktok --threads 1                  # both tables
    python scripts/brmrs_ablation.py --data ../shared/data/tiktok --kind table3 --subsets     # + user subsets
    python scripts/brmrs_ablation.py --data ../shared/data/tiktok --backbone freedom \\
        --set dropout=0.8 reg_weight=1e-4                                                    # the plug-in

With ``--backbone brmrs`` (default) the variants switch the method's terms (``brmrs_chns``, ``brmrs_syn``;
the fused BPR stays on, plus one row without it = Algorithm 1 as printed); with another backbone they are
``plugins=[brmrs]`` with the same switches, and "neither" is the vanilla backbone. The negative strategies
(``brmrs_negatives``): cross (CHNS), uniform, hardest in the fused space, hardest in each branch's own
space (self), and hardest in one modality for every branch. Each run has its own folder under ``--out``;
finished runs are reused and an interrupted one resumes, so the command can simply be run again. Each table's
rows go to ``results_table3.json`` / ``results_negatives.json``, both tables to ``brmrs_ablation.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from cross_common import base_parser, parse_grid, pick, run, setup

from mmgraph.plugins.experiments import _slug, comparison, format_table
from mmgraph.utils.io import write_json

FULL = "CHNS+Syn"


def table3_variants(backbone: str) -> Dict[str, Dict[str, Any]]:
    """The 2 x 2 of Table 3 (full model first)."""
    plug = {"plugins": ["brmrs"]} if backbone != "brmrs" else {}
    out = {FULL: {**plug, "brmrs_chns": True, "brmrs_syn": True},
           "CHNS": {**plug, "brmrs_chns": True, "brmrs_syn": False},
           "Syn": {**plug, "brmrs_chns": False, "brmrs_syn": True},
           "neither": {**plug, "brmrs_chns": False, "brmrs_syn": False} if backbone == "brmrs" else {"plugins": []}}
    if backbone == "brmrs":
        out["CHNS+Syn, no fused BPR"] = {"brmrs_chns": True, "brmrs_syn": True, "brmrs_fused_bpr": False}
    return out


def negative_variants(backbone: str, modalities: List[str]) -> Dict[str, Dict[str, Any]]:
    """CHNS vs the other negative strategies, Syn-BPR on (the full-model row is shared with Table 3)."""
    plug = {"plugins": ["brmrs"]} if backbone != "brmrs" else {}
    base = {**plug, "brmrs_chns": True, "brmrs_syn": True}
    out = {FULL: {**base, "brmrs_negatives": "cross"}}
    for strategy in ["uniform", "fused", "self"] + list(modalities):
        out[f"negatives={strategy}"] = {**base, "brmrs_negatives": strategy}
    return out


def run_dirs(out: Path, method: str, rows: List[Dict[str, Any]]) -> Dict[str, Path]:
    """The run folder of each row's selected point (the naming of :func:`comparison`)."""
    dirs = {}
    for row in rows:
        point = row.get("params") or {}
        tag = _slug(row["variant"]) + ("" if not point else "__" + "_".join(f"{k}={v}" for k, v in point.items()))
        dirs[row["variant"]] = out / method / tag
    return dirs


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], "runs/brmrs_ablation")
    p.add_argument("--backbone", default="brmrs", help="brmrs (the method) or a backbone for plugins=[brmrs]")
    p.add_argument("--kind", choices=["table3", "negatives", "both"], default="both")
    p.add_argument("--variants", help="subset, comma-separated (default: all of --kind)")
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="plug-in search axes (with --backbone other than brmrs); chosen on validation")
    p.add_argument("--subsets", action="store_true", help="also print the unique / synergy / degradation user "
                   "subsets (test, top-20) of every run")
    args = p.parse_args(argv)
    overrides = setup(args)
    from mmgraph.train.run import load_dataset

    modalities = list(load_dataset(args.data).modalities)
    tables = []
    if args.kind in ("table3", "both"):
        tables.append(("Table 3: CHNS x Syn-BPR", "results_table3.json", table3_variants(args.backbone)))
    if args.kind in ("negatives", "both"):
        tables.append(("negative sampling (section 3.6)", "results_negatives.json",
                       negative_variants(args.backbone, modalities)))
    out = Path(args.out)
    subset_runs: Dict[str, Path] = {}
    summary: Dict[str, Any] = {}
    for title, results_file, variants in tables:
        if args.variants:
            variants = pick(variants, args.variants, "variant")
        rows = comparison(args.data, [args.backbone], variants, out, overrides, parse_grid(args.grid),
                          progress=args.progress, results_file=results_file)
        print(f"\n{title} ({args.backbone}, test metrics of the best-validation epoch; d = vs the first row)")
        print(format_table(rows))
        subset_runs.update(run_dirs(out, args.backbone, rows))
        summary[title] = rows
        write_json(out / "brmrs_ablation.json", summary)
    if args.subsets:
        from mmgraph.analysis.subsets import analyze_runs, format_table as subsets_table, table_csv

        results = analyze_runs([str(d) for d in subset_runs.values()])
        results = dict(zip(subset_runs, results.values()))
        print("\nuser subsets (test, hit in the top-20)")
        print(subsets_table(results))
        (out / "subsets_test_k20.csv").write_text(table_csv(results))
    print(f"(runs and brmrs_ablation.json in {out})")
    return 0


if __name__ == "__main__":
    run(main)
