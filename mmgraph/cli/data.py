"""``mmgraph data prepare`` and ``mmgraph data stats``."""
from __future__ import annotations

import argparse
import json
import sys
import time

from mmgraph.errors import DataError

PREPARE_EPILOG = """examples:
  mmgraph data prepare --ratings ratings.csv --rating-equals 1 --kcore 5 --split warm \\
      --items items.tsv --item-key item_id --text-cols title --out data/dbbook
  mmgraph data prepare --ratings inter.parquet --timestamp-col ts --split loo \\
      --features image=img.npy --feature-ids image=img_ids.txt --out data/mine

feature files (--features NAME=FILE, keyed by raw item id):
  FILE.npy [R, d] with --feature-ids NAME=IDS (one raw id per line, or a table with the id column):
      row r belongs to the r-th listed id
  FILE.npy without --feature-ids: row r belongs to the item whose raw id is the integer r
  FILE.csv/.tsv/.parquet: the id column (--feature-key, default --item-key) + one column per dimension
"""


def register(subparsers) -> None:
    """Add the ``data`` command with its ``prepare`` and ``stats`` sub-commands."""
    data = subparsers.add_parser("data", help="prepare raw data and inspect datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("prepare", help="raw ratings (+ item features/texts) -> MMRec atomic folder",
                       epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("interactions")
    src.add_argument("--ratings", required=True, metavar="FILE", help="CSV/TSV/Parquet interactions")
    src.add_argument("--user-col", default="user_id")
    src.add_argument("--item-col", default="item_id")
    src.add_argument("--rating-col", default=None,
                     help="rating column (default 'rating' when a rating filter is given)")
    src.add_argument("--timestamp-col", default=None, help="timestamp column (used by --split loo)")
    src.add_argument("--min-rating", type=float, default=None, metavar="X", help="keep rating >= X")
    src.add_argument("--rating-equals", type=float, default=None, metavar="X", help="keep rating == X")
    itm = p.add_argument_group("item features")
    itm.add_argument("--items", metavar="FILE", help="item table with texts to embed")
    itm.add_argument("--item-key", default="item_id", help="raw item id column of --items")
    itm.add_argument("--text-cols", default=None, metavar="COL,...",
                     help="columns of --items joined with ' ' and embedded (all-MiniLM-L6-v2, 384-d)")
    itm.add_argument("--text-name", default="text", help="modality name of the embedded texts")
    itm.add_argument("--text-batch-size", type=int, default=64)
    itm.add_argument("--features", nargs="+", action="extend", default=[], metavar="NAME=FILE",
                     help="per-item feature files keyed by raw item id")
    itm.add_argument("--feature-ids", nargs="+", action="extend", default=[], metavar="NAME=FILE",
                     help="raw item id list of a .npy feature file")
    itm.add_argument("--feature-key", default=None, help="id column of feature tables (default --item-key)")
    itm.add_argument("--allow-missing-features", action="store_true",
                     help="fill items without a feature row with zeros instead of failing")
    proc = p.add_argument_group("filtering and split")
    proc.add_argument("--kcore", type=int, default=5, metavar="K",
                      help="drop users/items with < K interactions until stable (default 5; 0 = off)")
    proc.add_argument("--split", choices=("warm", "cold", "loo"), default="warm")
    proc.add_argument("--cold-fraction", type=float, default=0.2, help="share of items held out by --split cold")
    proc.add_argument("--seed", type=int, default=42)
    dst = p.add_argument_group("output")
    dst.add_argument("--out", required=True, metavar="DIR")
    dst.add_argument("--name", default=None, help="dataset name (default: the --out folder name)")
    dst.add_argument("--no-progress", action="store_true", help="hide the embedding progress bar")
    p.set_defaults(func=run_prepare)

    s = sub.add_parser("stats", help="counts of an MMRec atomic folder")
    s.add_argument("path", metavar="PATH", help="dataset folder (or its .inter file), or synthetic[:users=...]")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_stats)


def run_prepare(args: argparse.Namespace) -> int:
    from mmgraph.data.prepare import prepare_dataset
    from mmgraph.data.raw import parse_named_paths
    from mmgraph.data.stats import dataset_stats, format_stats

    text_cols = [c.strip() for c in args.text_cols.split(",") if c.strip()] if args.text_cols else None
    if args.text_cols is not None and not text_cols:
        raise DataError(f"--text-cols {args.text_cols!r}: expected comma-separated column names")
    started = time.perf_counter()
    report: dict = {}
    ds = prepare_dataset(
        args.ratings, args.out, user_col=args.user_col, item_col=args.item_col,
        rating_col=args.rating_col, timestamp_col=args.timestamp_col, min_rating=args.min_rating,
        rating_equals=args.rating_equals, items=args.items, item_key=args.item_key, text_cols=text_cols,
        text_name=args.text_name, features=parse_named_paths(args.features, "--features"),
        feature_ids=parse_named_paths(args.feature_ids, "--feature-ids"), feature_key=args.feature_key,
        allow_missing_features=args.allow_missing_features, kcore=args.kcore, split=args.split,
        seed=args.seed, cold_fraction=args.cold_fraction, name=args.name,
        text_batch_size=args.text_batch_size, show_progress=not args.no_progress, report=report)
    print(format_stats(dataset_stats(ds)))
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from mmgraph.data.atomic import load_atomic
    from mmgraph.data.stats import dataset_stats, format_stats
    from mmgraph.train.run import SYNTHETIC_PREFIX, load_dataset

    text = str(args.path)
    synthetic = text == SYNTHETIC_PREFIX or text.startswith(SYNTHETIC_PREFIX + ":")
    stats = dataset_stats(load_dataset(text) if synthetic else load_atomic(args.path, mmap=True))
    if args.json:
        json.dump(stats, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_stats(stats))
    return 0
