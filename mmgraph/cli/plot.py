"""``mmgraph plot``: per-epoch curves (metrics, losses, alignment/uniformity) of one or more runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmgraph.errors import ConfigError, DataError
from mmgraph.utils.io import save_figure

DEFAULT_KEYS = ["valid_recall@20", "train_loss", "align", "uniform_item"]


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot per-epoch curves of one or several runs to PNG")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--keys", default=",".join(DEFAULT_KEYS),
                   help="comma-separated history columns (default: %(default)s)")
    p.add_argument("--output", required=True, help="PNG file")
    p.set_defaults(func=run_plot)


def load_history(run_dir) -> list:
    """The per-epoch records of a run folder (of a grid folder: its selected point's)."""
    from mmgraph.train.run import resolve_run_dir

    path = resolve_run_dir(run_dir) / "history.json"
    if not path.exists():
        raise DataError(f"{run_dir}: no history.json (is it a run directory?)")
    return json.loads(path.read_text())


def plot_histories(run_dirs, keys, output) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'mmgraph[plot]'") from None
    from mmgraph.analysis.spaces import run_labels

    histories = dict(zip(run_labels(run_dirs), (load_history(r) for r in run_dirs)))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        found = False
        for label, hist in histories.items():
            pts = [(r["epoch"], r[key]) for r in hist if key in r and r[key] is not None]
            if pts:
                found = True
                ax.plot(*zip(*pts), label=label)
        if not found:
            first = next(iter(histories.values()))
            raise DataError(f"no run has a '{key}' column; available: {sorted(first[0]) if first else []}")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, output)


def run_plot(args: argparse.Namespace) -> int:
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if not keys:
        raise ConfigError(f"--keys {args.keys!r} names no history column (e.g. --keys {','.join(DEFAULT_KEYS)})")
    out = plot_histories(args.run_dirs, keys, args.output)
    print(f"wrote {out}")
    return 0
