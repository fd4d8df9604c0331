"""``mmgraph evaluate`` and ``mmgraph export``: use a trained run directory."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmgraph.errors import ConfigError, DataError
from mmgraph.utils.io import check_output_file


def cutoffs(text: str):
    """``--topk 10,20`` -> ``[10, 20]``; anything else is a usage error."""
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1 (e.g. 10,20), got {text!r}")
    return sorted(set(ks))


def register(sub) -> None:
    e = sub.add_parser("evaluate", help="evaluate a trained run (full ranking, protocol metrics)")
    e.add_argument("run_dir", help="a run folder, or a grid folder (its selected point is used)")
    e.add_argument("--split", default="test", choices=["valid", "test"])
    e.add_argument("--data", help="dataset path (default: the one recorded in the run)")
    e.add_argument("--graph", help="a run trained with --graph FILE whose file has moved: its new path (same "
                        "content)")
    e.add_argument("--topk", type=cutoffs, help="comma-separated cut-offs (default: the run's)")
    e.add_argument("--groups", action="store_true", help="also print popularity-group Recall (head/tail)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--channel", default="final",
                   help="rank by one of the model's channels (e.g. image, text, fused; default: final)")
    e.add_argument("--retrieval", choices=["exact", "faiss", "auto"], default=None,
                   help="top-K search (default: the run's `retrieval` setting)")
    e.set_defaults(func=run_evaluate)

    x = sub.add_parser("export", help="export top-K recommendations with raw ids")
    x.add_argument("run_dir", help="a run folder, or a grid folder (its selected point is used)")
    x.add_argument("--k", type=int, default=100)
    x.add_argument("--format", choices=["csv", "parquet", "jsonl"], help="default: from --output's suffix")
    x.add_argument("--output", required=True)
    x.add_argument("--users", help="file with one raw user id per line (default: all users)")
    x.add_argument("--include-seen", action="store_true", help="do not exclude training items")
    x.add_argument("--backend", choices=["exact", "faiss"], default="exact")
    x.add_argument("--data", help="dataset path (default: the one recorded in the run)")
    x.add_argument("--graph", help="a run trained with --graph FILE whose file has moved: its new path (same "
                        "content)")
    x.add_argument("--channel", default="final", help="rank by one of the model's channels (default: final)")
    x.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="split the users over N processes (torchrun); rank 0 gathers and writes the file")
    x.set_defaults(func=run_export)


def _embeddings_like_the_run(model, config, channel: str = "final"):
    """``(users, items)`` of ``channel`` computed as the run's final evaluation computed them
    (:func:`~mmgraph.train.run.as_in_the_run`)."""
    from mmgraph.train.run import as_in_the_run

    with as_in_the_run(config, model.device):
        return channel_embeddings(model, channel)


def channel_embeddings(model, channel: str = "final"):
    """``(users, items)`` of one of the model's channels, or a one-line error naming the available ones."""
    if channel == "final":
        return model.embeddings()
    channels = model.channel_embeddings()
    if channel not in channels:
        raise ConfigError(f"{model.method_name} has no channel {channel!r}; it has: {', '.join(channels)}")
    return channels[channel]


def run_evaluate(args: argparse.Namespace) -> int:
    from mmgraph.evaluation import Evaluator, popularity_group_metrics
    from mmgraph.train.run import load_run

    model, dataset, config = load_run(args.run_dir, args.data, graph=args.graph)
    ks = args.topk or config.get("topk", [5, 10, 20, 50])
    if max(ks) > dataset.n_items:
        raise ConfigError(f"--topk {max(ks)} is more than the {dataset.n_items} items of {dataset.name}; every "
                          "item would be in the top-K")
    user_emb, item_emb = _embeddings_like_the_run(model, config, args.channel)
    evaluator = Evaluator(dataset, args.split, ks=ks, device=user_emb.device,
                          retrieval=args.retrieval or config.get("retrieval", "exact"))
    result = {args.split: evaluator.evaluate(user_emb, item_emb)}
    if args.groups:
        result["groups"] = popularity_group_metrics(evaluator, user_emb, item_emb)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    for key, value in result[args.split].items():
        print(f"{args.split} {key:14s} {value:.4f}")
    if args.groups:
        for group, metrics in result["groups"].items():
            print(f"group {group:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                  if isinstance(v, float)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mmgraph.train import distributed

    if args.nproc != 1:
        return distributed.launch(args.nproc, getattr(args, "argv", None) or sys.argv[1:])
    ctx = distributed.init_from_env("cpu")
    try:
        return _run_export(args, ctx)
    finally:
        distributed.shutdown(ctx)


def _run_export(args: argparse.Namespace, ctx) -> int:
    from mmgraph.evaluation.export import recommend_sharded, resolve_users, write_table
    from mmgraph.train.run import load_run

    if args.k < 1:
        raise DataError(f"--k must be >= 1, got {args.k}")
    check_output_file(args.output)
    suffix = Path(args.output).suffix.lower().lstrip(".")
    if args.format and suffix in ("csv", "parquet", "jsonl") and suffix != args.format:
        raise ConfigError(f"--format {args.format} does not match --output {args.output}; name the file "
                          f".{args.format}, or drop --format (the suffix decides)")
    model, dataset, config = load_run(args.run_dir, args.data, graph=args.graph)
    if args.k > dataset.n_items:
        raise DataError(f"--k {args.k} is more than the {dataset.n_items} items of {dataset.name}; use --k "
                        f"{dataset.n_items} or less")
    raw_users = None
    if args.users:
        path = Path(args.users)
        if not path.exists():
            raise DataError(f"--users file {path} does not exist")
        entries = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        if not entries:
            raise DataError(f"--users file {path} lists no user ids (one id per line)")
        line_numbers, raw_users = zip(*entries)
    users = resolve_users(dataset, raw_users, source=f"--users file {args.users}",
                          line_numbers=line_numbers if raw_users is not None else None)
    user_emb, item_emb = _embeddings_like_the_run(model, config, args.channel)
    table = recommend_sharded(user_emb, item_emb, dataset, args.k, users, exclude_seen=not args.include_seen,
                              backend=args.backend, ctx=ctx)
    if table is None:  # a rank > 0 of a multi-process export: rank 0 writes
        return 0
    out = write_table(table, args.output, args.format)
    print(f"wrote {len(table)} rows for {len(users)} users to {out}")
    return 0
