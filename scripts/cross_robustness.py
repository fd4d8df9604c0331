"""Robustness (CROSS paper, Fig. 8): a fraction of the items' modality features replaced by Gaussian
noise ("missing"), and fake training interactions ("noisy" feedback), for vanilla / +FETTLE / +CROSS.

    python scripts/cross_robustness.py --data ../shared/data/tiktok --backbone freedom
    python scripts/cross_robustness.py --data ../shared/data/tiktok --mode noisy --noisy-rates 0.1

Any single run can use the same transforms: mmgraph train ... --set noise_features=0.4 (or
fake_interactions=0.1, noise_modalities=[image], transform_seed=0).
"""
from cross_common import base_parser, check_metric, pick, rates, run, setup

from mmgraph.plugins.experiments import MAIN_VARIANTS, format_robustness, robustness


def main(argv=None) -> int:
    p = base_parser(" ".join(__doc__.split("\n\n")[0].split()), "runs/cross_robustness")
    p.add_argument("--backbone", default="freedom")
    p.add_argument("--mode", choices=["missing", "noisy", "both"], default="both")
    p.add_argument("--missing-rates", type=rates, default="0.2,0.4,0.6,0.8",
                   help="fractions of items with noise features")
    p.add_argument("--noisy-rates", type=rates, default="0.05,0.1,0.15,0.2",
                   help="fake interactions / training size")
    p.add_argument("--variants", default="vanilla,fettle,cross")
    p.add_argument("--metric", default="recall@10")
    args = p.parse_args(argv)
    overrides = setup(args)
    metric = check_metric(args.metric, overrides)
    variants = pick(MAIN_VARIANTS, args.variants, "variant")
    modes = ["missing", "noisy"] if args.mode == "both" else [args.mode]
    tables = []
    for mode in modes:
        levels = args.missing_rates if mode == "missing" else args.noisy_rates
        rows = robustness(args.data, args.backbone, variants, args.out, mode, levels, overrides,
                          progress=args.progress)
        tables.append(format_robustness(rows, metric))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    run(main)
