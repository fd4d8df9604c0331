"""Popularity groups (CROSS paper, Fig. 10): test Recall@10/@20 for head items (top 20 % by training
interactions) and four equal tail groups, backbone vs +CNA&CLA (multi-grained collaborative alignment)
vs +CROSS.

    python scripts/cross_popularity.py --data ../shared/data/tiktok --backbone freedom
"""
from cross_common import base_parser, run, pick, setup

from mmgraph.plugins.experiments import COMPONENT_VARIANTS, MAIN_VARIANTS, format_popularity, popularity


def main(argv=None) -> int:
    p = base_parser(" ".join(__doc__.split("\n\n")[0].split()), "runs/cross_popularity")
    p.add_argument("--backbone", default="freedom")
    p.add_argument("--variants", default="vanilla,cna&cla,cross", help="from: vanilla, cna&cla, fettle, cross")
    p.add_argument("--k", type=int, default=10, help="cut-off shown in the table (10 and 20 are computed)")
    args = p.parse_args(argv)
    overrides = setup(args)
    known = {**MAIN_VARIANTS, "+CNA&CLA": COMPONENT_VARIANTS["+CNA&CLA"]}
    result = popularity(args.data, args.backbone, pick(known, args.variants, "variant"), args.out, overrides,
                        ks=sorted({10, 20, args.k}), progress=args.progress)
    print(format_popularity(result, args.k))
    return 0


if __name__ == "__main__":
    run(main)
