"""CROSS component ablation (Fig. 6: ILDA / DT / CNA / CLA) and alignment strategy (Fig. 7:
bidirectional / one-way / dynamic) on one backbone, same seed.

    python scripts/cross_ablation.py --data ../shared/data/tiktok --backbone freedom --kind components
    python scripts/cross_ablation.py --data ../shared/data/tiktok --backbone lightgcn --kind strategies
"""
from cross_common import base_parser, run, pick, setup

from mmgraph.plugins.experiments import COMPONENT_VARIANTS, STRATEGY_VARIANTS, comparison, format_table


def main(argv=None) -> int:
    p = base_parser(" ".join(__doc__.split("\n\n")[0].split()), "runs/cross_ablation")
    p.add_argument("--backbone", default="freedom")
    p.add_argument("--kind", choices=["components", "strategies", "both"], default="components")
    p.add_argument("--variants", help="subset, comma-separated (default: all of --kind)")
    args = p.parse_args(argv)
    overrides = setup(args)
    variants = {}
    if args.kind in ("components", "both"):
        variants.update(COMPONENT_VARIANTS)
    if args.kind in ("strategies", "both"):
        variants.update(STRATEGY_VARIANTS)
    if args.variants:
        variants = pick(variants, args.variants, "variant")
    rows = comparison(args.data, [args.backbone], variants, args.out, overrides, progress=args.progress)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    run(main)
