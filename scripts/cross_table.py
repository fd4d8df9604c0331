"""Backbone x {vanilla, +FETTLE, +CROSS} (CROSS paper, Tables 2-3), same seed and backbone settings.

    python scripts/cross_table.py --data ../shared/data/tiktok --backbones lightgcn,freedom
    python scripts/cross_table.py --data ../shared/data/tiktok --backbones lightgcn \\
        --grid cross_alpha=1,10,100 cross_beta=1,10,100      # the paper's CF grid, chosen on validation
    python scripts/cross_table.py --data ../shared/data/tiktok --backbones lightgcn --seeds 3
        # every variant over seeds 1..3 (mmgraph benchmark's machinery), t-tested against the vanilla backbone
"""
import sys

from cross_common import base_parser, run, parse_grid, pick, setup

from mmgraph.plugins.experiments import MAIN_VARIANTS, comparison, format_table


def over_seeds(args, variants, overrides) -> int:
    """Backbone x variants over seeds 1..N through mmgraph.benchmark: labels ``lightgcn``, ``lightgcn+fettle``,
    ``lightgcn+cross`` (as in docs/claims.yaml), the vanilla backbone as the t-test reference."""
    from pathlib import Path

    from mmgraph.benchmark import MethodSpec, run_benchmark, seed_list
    from mmgraph.benchmark.report import summarise, summary_tables, write_report
    from mmgraph.plugins.experiments import variant_config

    for method in args.backbones.split(","):
        specs = []
        for variant in variants.values():
            cfg = variant_config(method, variant, overrides)
            plugins = tuple(cfg.pop("plugins", []) or [])
            specs.append(MethodSpec("+".join((method,) + plugins), method, plugins, tuple(sorted(cfg.items()))))
        reference = specs[0].label
        command = "python scripts/cross_table.py " + " ".join(sys.argv[1:])
        result = run_benchmark(specs, [args.data], seed_list(args.seeds), Path(args.out) / method / "seeds",
                               reference=reference, progress=args.progress or None, command=command)
        files = write_report(result.out, result.rows, reference, result.meta)
        print(f"\n{method}: vanilla / +FETTLE / +CROSS over {args.seeds} seeds ({files['summary_md']})")
        print(summary_tables(summarise(result.rows, reference), reference))
    return 0


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], "runs/cross_table")
    p.add_argument("--backbones", default="lightgcn,freedom", help="comma-separated methods")
    p.add_argument("--variants", default="vanilla,fettle,cross", help="from: vanilla, fettle, cross")
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="plug-in search axes; each plug-in variant takes the point best on validation")
    p.add_argument("--all-points", action="store_true", help="also print every grid point")
    p.add_argument("--seeds", type=int, help="run every variant with seeds 1..N (replaces --seed) and t-test it "
                                             "against the vanilla backbone (one benchmark per backbone in --out)")
    args = p.parse_args(argv)
    overrides = setup(args)
    if args.seeds is not None:
        if args.grid:
            p.error("--seeds and --grid: run the grid once to choose the plug-in settings, then --set them with --seeds")
        overrides.pop("seed", None)
        return over_seeds(args, pick(MAIN_VARIANTS, args.variants, "variant"), overrides)
    rows = comparison(args.data, args.backbones.split(","), pick(MAIN_VARIANTS, args.variants, "variant"),
                      args.out, overrides, parse_grid(args.grid), progress=args.progress)
    print(format_table(rows))
    if args.all_points:
        for row in rows:
            for pt in row["points"]:
                print(f"{row['method']:10s} {row['variant']:10s} {pt['params']}: valid R@20 "
                      f"{pt['valid']['recall@20']:.4f}  test R@20 {pt['test']['recall@20']:.4f}")
    print(f"(test metrics of the best-validation epoch; runs and results.json in {args.out})")
    return 0


if __name__ == "__main__":
    run(main)
