"""Neighbourhood overlap between embedding spaces (AnchorRec, Fig. 4): ``mmgraph analyze overlap``.

For every item, its top-``K`` cosine neighbours (itself excluded) in each space; the overlap of two spaces
is the mean over items of ``|N_a(i) & N_b(i)| / K`` (``metric: overlap``, the paper's measure) or of the
Jaccard index ``|N_a & N_b| / |N_a | N_b|`` (``metric: jaccard``). High overlap = shared neighbourhood
structure; the diagonal is 1. Items without neighbours in a space (all-zero rows) are left out of the
pairs that involve that space.

The neighbours come from :func:`mmgraph.graph.knn.knn_graph` (FAISS flat inner product or blockwise torch):
no ``I x I`` matrix; the intersections are counted in row blocks.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from mmgraph.errors import ConfigError
from mmgraph.utils.io import save_figure

log = logging.getLogger(__name__)

METRICS = ("overlap", "jaccard")


def topk_neighbours(x, k: int = 10, backend: str = "faiss") -> np.ndarray:
    """``[N, k]`` ids of the top-``k`` cosine neighbours of each row of ``x [N, d]`` (itself excluded),
    by decreasing similarity, ``-1`` padded."""
    from mmgraph.graph.knn import knn_graph

    return knn_graph(np.asarray(x, dtype=np.float32), int(k), "exclude", backend=backend).indices


def intersection_counts(a: np.ndarray, b: np.ndarray, block: int = 4096) -> np.ndarray:
    """``[N]`` ``|A_i & B_i|`` of two ``[N, k]`` neighbour-id tables (``-1`` = no neighbour, never counted;
    ids within a row are distinct)."""
    if a.shape[0] != b.shape[0]:
        raise ConfigError(f"neighbour tables cover {a.shape[0]} and {b.shape[0]} items")
    out = np.empty(a.shape[0], dtype=np.int64)
    for s in range(0, a.shape[0], block):
        aa, bb = a[s:s + block], b[s:s + block]
        hit = (aa[:, :, None] == bb[:, None, :]) & (aa[:, :, None] >= 0)
        out[s:s + block] = hit.any(-1).sum(-1)
    return out


def neighbourhood_overlap(a: np.ndarray, b: np.ndarray, metric: str = "overlap") -> float:
    """Mean over items of the overlap (``|A & B| / K``, ``K`` = table width) or Jaccard index of two
    neighbour tables ``[N, K]``; items with an empty list in either table are skipped (NaN if none left)."""
    if metric not in METRICS:
        raise ConfigError(f"overlap metric must be one of {list(METRICS)}, got {metric!r}")
    a, b = np.asarray(a), np.asarray(b)
    inter = intersection_counts(a, b).astype(np.float64)
    size_a, size_b = (a >= 0).sum(1), (b >= 0).sum(1)
    ok = (size_a > 0) & (size_b > 0)
    if not ok.any():
        return float("nan")
    if metric == "overlap":
        values = inter / a.shape[1]
    else:
        values = inter / np.maximum(size_a + size_b - inter, 1)
    return float(values[ok].mean())


def overlap_matrix(spaces: Dict[str, np.ndarray], k: int = 10, metric: str = "overlap",
                   backend: str = "faiss") -> pd.DataFrame:
    """The ``[S, S]`` mean neighbourhood overlap between the spaces ``{name: [I, d]}`` (symmetric)."""
    if metric not in METRICS:
        raise ConfigError(f"overlap metric must be one of {list(METRICS)}, got {metric!r}")
    sizes = {name: np.shape(x)[0] for name, x in spaces.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"spaces cover different item counts: {sizes}")
    n_items = next(iter(sizes.values()), 0)
    if int(k) >= n_items:
        raise ConfigError(f"--k {k}: a space of {n_items} items has {n_items - 1} neighbours per item; give "
                          f"k < {n_items} (every list would hold all the other items)")
    names = list(spaces)
    nbrs = {name: topk_neighbours(spaces[name], k, backend) for name in names}
    m = np.ones((len(names), len(names)))
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            m[a, b] = m[b, a] = neighbourhood_overlap(nbrs[names[a]], nbrs[names[b]], metric)
    return pd.DataFrame(m, index=names, columns=names)


def versus_raw(table: pd.DataFrame) -> pd.DataFrame:
    """The part of an :func:`overlap_matrix` that compares trained spaces with raw features: rows the trained
    spaces (``run:space``, in the table's order), columns the raw ones (``raw:<m>``)."""
    from mmgraph.analysis.spaces import RAW

    raw = [c for c in table.columns if c.startswith(f"{RAW}:")]
    rows = [r for r in table.index if not r.startswith(f"{RAW}:")]
    if not raw or not rows:
        raise ConfigError("the overlap table needs both raw feature spaces and trained spaces to compare them")
    return table.loc[rows, raw]


def plot_heatmap(table: pd.DataFrame, path, title: str = "") -> Path:
    """Write ``table`` (values in [0, 1]) as an annotated heat map PNG."""
    from mmgraph.analysis.plotting import pyplot

    plt = pyplot()
    n = len(table)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(table.values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), table.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), table.index, fontsize=7)
    if n <= 24:
        for r in range(n):
            for c in range(n):
                v = table.values[r, c]
                ax.text(c, r, "" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                        color="black" if v > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=130)


def analyze_overlap(run_dirs: Sequence, out_dir, k: int = 10, metric: str = "overlap",
                    spaces: Optional[Sequence[str]] = None, include_raw: bool = True, data=None,
                    checkpoint: str = "best.pt", backend: str = "faiss") -> pd.DataFrame:
    """Load the runs, compute :func:`overlap_matrix` over their spaces (and the raw features), write
    ``overlap.csv`` and ``overlap.png`` into ``out_dir``; returns the table."""
    from mmgraph.analysis.spaces import collect_spaces, load_runs

    runs, dataset = load_runs(run_dirs, data, checkpoint)
    table = overlap_matrix(collect_spaces(runs, dataset, include_raw, spaces), k, metric, backend)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "overlap.csv", float_format="%.4f")
    plot_heatmap(table, out / "overlap.png", f"mean top-{k} neighbourhood {metric}")
    return table


# ---------------------------------------------------------------------------------------------- CLI
def register_cli(actions) -> None:
    p = actions.add_parser("overlap", help="mean top-K neighbourhood overlap between embedding spaces (heat map)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one dataset)")
    p.add_argument("--k", type=int, default=10, help="neighbours per item (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default="overlap")
    p.add_argument("--spaces", help="comma-separated spaces to keep (e.g. final,proj_mm,raw:image; default all)")
    p.add_argument("--no-raw", action="store_true", help="leave the raw feature spaces out")
    p.add_argument("--versus-raw", action="store_true",
                   help="print (and write as overlap_vs_raw.csv) only the trained spaces against the raw features")
    p.add_argument("--data", help="dataset path (default: the one recorded in the runs)")
    p.add_argument("--checkpoint", choices=["best.pt", "last.pt"], default="best.pt")
    p.add_argument("--out", default="analysis/overlap", help="output folder (default: %(default)s)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()] if args.spaces else None
    if args.versus_raw and args.no_raw:
        raise ConfigError("--versus-raw compares with the raw features: drop --no-raw")
    table = analyze_overlap(args.runs, args.out, args.k, args.metric, spaces, not args.no_raw, args.data,
                            args.checkpoint)
    written = [Path(args.out) / "overlap.csv", Path(args.out) / "overlap.png"]
    if args.versus_raw:
        table = versus_raw(table)
        table.to_csv(Path(args.out) / "overlap_vs_raw.csv", float_format="%.4f")
        written.append(Path(args.out) / "overlap_vs_raw.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.round(3).to_string())
    print(f"wrote {', '.join(map(str, written))}")
    return 0
