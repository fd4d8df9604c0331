"""``mmgraph benchmark`` (methods x datasets x seeds -> one table) and ``mmgraph results-doc``."""
from __future__ import annotations

import argparse
import shlex
import sys

BENCH_EPILOG = """methods:
  comma-separated names from `mmgraph methods`; METHOD+PLUGIN[+PLUGIN] trains the method with those
  plug-ins (lightgcn+cross = lightgcn with --set plugins=[cross]). The first method is the reference of
  the t-tests unless --reference names another.

settings (--set KEY=VALUE ...):
  each method takes the keys it declares (n_layers for lightgcn, cross_alpha for the +cross methods);
  a key no method declares is an error. With --grid, a value fixes that key of the method's grid and a
  list replaces the axis (--set reg_weight=[1e-4,1e-3]); without --grid lists are refused.

folder (--out DIR):
  runs/<dataset>/<method>/ holds one grid folder per (dataset, method) (point_000/seed_1 ...); finished
  runs are reused and interrupted ones resumed, so the same command continues an interrupted benchmark.
  results.csv (one row per reported run: with --grid, each seed of the selected point; every point's
  results stay in runs/<dataset>/<method>/grid_summary.json), summary.md / summary.csv (mean ± std,
  best in bold, paired t-tests), summary.png (bars with error bars) and, with --groups, groups.csv.
"""


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="methods x datasets x seeds: mean ± std, paired t-tests, one table",
                       description="Train every (method, dataset, seed); select hyper-parameters on validation "
                                   "only; write results.csv, summary.md/csv and a chart.",
                       epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", required=True, help="e.g. lightgcn,freedom,cm3,lightgcn+cross")
    p.add_argument("--data", nargs="+", required=True, metavar="DATA",
                   help="dataset folders (MMRec atomic) or synthetic[:users=..,items=..]")
    p.add_argument("--seeds", type=int, default=5, help="seeds per (method, dataset) (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=1, help="seeds are FIRST..FIRST+N-1 (default: %(default)s)")
    p.add_argument("--grid", action="store_true",
                   help="search each method's grid: block; the point with the best mean validation metric "
                        "over the seeds is reported")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="settings for every method that declares the key (see below)")
    p.add_argument("--reference", help="method the others are t-tested against (default: the first)")
    p.add_argument("--groups", action="store_true", help="also the popularity-group Recall table (head/tail)")
    p.add_argument("--out", required=True, help="benchmark folder (runs, results.csv, summary.md ...)")
    p.add_argument("--epochs", type=int, help="maximum epochs per run (shortcut for --set epochs=N)")
    p.add_argument("--device", help="cpu | cuda | auto (shortcut for --set device=...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per run instead)")
    p.add_argument("--epoch-progress", action="store_true", help="also a progress bar per epoch")
    p.set_defaults(func=run_benchmark_command)

    d = sub.add_parser("results-doc", help="write docs/results.md from a benchmark folder, claims checked",
                       description="Markdown from a benchmark folder: coverage, the command, the tables, and "
                                   "published claims checked with paired t-tests over seeds.")
    d.add_argument("bench_dir", help="a folder written by `mmgraph benchmark --out`")
    d.add_argument("--output", default="docs/results.md", help="(default: %(default)s)")
    d.add_argument("--claims", help="YAML file of claims (default: docs/claims.yaml of the working folder, else "
                   "of the mmgraph checkout, when it exists)")
    d.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    d.add_argument("--note", help="a paragraph placed under the command (e.g. what the table leaves out)")
    d.set_defaults(func=run_results_doc)


def _command(argv) -> str:
    """The command line as the user typed it (``mmgraph ...``), for the records."""
    return "mmgraph " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def run_benchmark_command(args: argparse.Namespace) -> int:
    from mmgraph.benchmark.report import summarise, summary_tables, write_report
    from mmgraph.benchmark.runner import parse_methods, run_benchmark, seed_list
    from mmgraph.cli.train import _overrides

    specs = parse_methods(args.methods)
    seeds = seed_list(args.seeds, args.first_seed)
    args.seed = None
    overrides = _overrides(args)
    def partial(res):   # results.csv and the summary so far, after each (dataset, method)
        write_report(res.out, res.rows, res.reference, res.meta, chart=False)

    result = run_benchmark(specs, args.data, seeds, args.out, grid=args.grid, overrides=overrides,
                           reference=args.reference, progress=False if args.no_progress else None,
                           epoch_progress=args.epoch_progress, command=_command(getattr(args, "argv", None)),
                           on_job=partial)
    files = write_report(result.out, result.rows, result.reference, result.meta, groups=args.groups)
    print(summary_tables(summarise(result.rows, result.reference), result.reference))
    resumed = f" ({result.resumed} of them resumed)" if result.resumed else ""
    print(f"{result.trained} run(s) trained{resumed}, {result.reused} reused; wrote "
          + ", ".join(str(p) for p in files.values()))
    return 0


def run_results_doc(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmgraph.benchmark.doc import write_results_doc

    claims = args.claims
    if claims is None:   # the working folder's docs/, else the checkout's (an editable install)
        shipped = Path(__file__).resolve().parents[2] / "docs" / "claims.yaml"
        claims = next((str(p) for p in (Path("docs/claims.yaml"), shipped) if p.exists()), None)
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if args.note is not None:   # the note is printed under the command: shown once
        argv = [a if a != args.note else "'<the paragraph below>'" for a in argv]
    out = write_results_doc(Path(args.bench_dir), Path(args.output), Path(claims) if claims else None,
                            args.alpha, args.note, doc_command="mmgraph " + " ".join(
                                a if a.startswith("'<") else shlex.quote(a) for a in argv))
    print(f"wrote {out}")
    return 0
