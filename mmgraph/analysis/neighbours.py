"""Top-k neighbours of one item under several trained runs (AnchorRec, Fig. 5): ``mmgraph analyze neighbours``.

For a target item ``t`` and each run: the ``k`` items closest to ``t`` by cosine in one of the run's item
spaces (default its scoring space ``final``), each with

* ``cosine``: its similarity to ``t`` in that space;
* ``two_hop``: the 2-hop interaction proximity, the number of training users who interacted with both
  ``t`` and the neighbour (paths ``t - u - j`` in the user-item graph), and ``two_hop_norm`` =
  ``two_hop / sqrt(d_t d_j)`` (their co-occurrence cosine);
* ``sim_<m>``: the raw-feature cosine of ``t`` and the neighbour for every modality ``m``.

The summary (mean per run) is drawn as grouped bars: interaction-driven neighbourhoods show a high 2-hop
proximity and low feature similarity. Only one ``[I]`` score row per run is formed.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from mmgraph.errors import ConfigError
from mmgraph.utils.io import save_figure



def cosine_to(x: np.ndarray, target: int) -> np.ndarray:
    """``[I]`` cosine similarity of every row of ``x [I, d]`` with row ``target`` (zero rows: 0)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    dots = x @ x[target]
    denom = norms * norms[target]
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def top_neighbours(x: np.ndarray, target: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids [k], cosines [k])`` of the ``k`` rows of ``x`` closest to ``target`` (itself excluded), by
    decreasing cosine, ties by lower id."""
    sims = cosine_to(x, target)
    sims[target] = -np.inf
    order = np.lexsort((np.arange(len(sims)), -sims))[:k]
    return order, sims[order]


def two_hop_proximity(train: np.ndarray, n_items: int, target: int,
                      items: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(counts, normalised)`` for ``items``: the number of distinct training users shared with ``target``
    and that count over ``sqrt(d_target d_item)`` (degrees in distinct users)."""
    pairs = np.unique(np.asarray(train, dtype=np.int64), axis=0)
    users_of_t = np.unique(pairs[pairs[:, 1] == target, 0])
    shared = pairs[np.isin(pairs[:, 0], users_of_t)]
    co = np.bincount(shared[:, 1], minlength=n_items)
    deg = np.bincount(pairs[:, 1], minlength=n_items).astype(np.float64)
    counts = co[items]
    denom = np.sqrt(deg[target] * deg[items])
    return counts, np.divide(counts, denom, out=np.zeros(len(items)), where=denom > 0)


def neighbour_table(runs: Sequence[Tuple[str, Dict[str, np.ndarray]]], dataset, target: int, k: int = 3,
                    space: str = "final") -> pd.DataFrame:
    """One row per (run, rank): the neighbour, its cosine in the run's ``space``, 2-hop proximity and the
    raw-feature similarities (see the module docstring). ``runs`` = ``[(label, {space: items [I, d]})]``."""
    if not 0 <= int(target) < dataset.n_items:
        raise ConfigError(f"--item {target} is not an item id (0..{dataset.n_items - 1})")
    target = int(target)
    raw = {m: cosine_to(f, target) for m, f in dataset.features.items()}
    rows: List[Dict[str, object]] = []
    for label, spaces in runs:
        if space not in spaces:
            raise ConfigError(f"run {label} has no item space {space!r}; it has: {', '.join(spaces)}")
        ids, sims = top_neighbours(spaces[space], target, k)
        hop, hop_norm = two_hop_proximity(dataset.train, dataset.n_items, target, ids)
        for rank, (j, s) in enumerate(zip(ids, sims), 1):
            row: Dict[str, object] = {"run": label, "rank": rank, "item": int(j),
                                      "raw_item": dataset.raw_item_id(int(j)), "cosine": float(s),
                                      "two_hop": int(hop[rank - 1]), "two_hop_norm": float(hop_norm[rank - 1])}
            row.update({f"sim_{m}": float(v[j]) for m, v in raw.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def plot_summary(table: pd.DataFrame, path, title: str = "") -> Path:
    """Grouped bars of the per-run means of ``two_hop_norm`` and every ``sim_<m>`` column."""
    from mmgraph.analysis.plotting import pyplot

    plt = pyplot()
    cols = ["two_hop_norm"] + [c for c in table.columns if c.startswith("sim_")]
    means = table.groupby("run", sort=False)[cols].mean()
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(cols), 3.2))
    width = 0.8 / max(len(means), 1)
    x = np.arange(len(cols))
    for n, (run, vals) in enumerate(means.iterrows()):
        ax.bar(x + n * width, vals.values, width, label=str(run))
    ax.set_xticks(x + width * (len(means) - 1) / 2, cols, fontsize=8)
    ax.set_ylabel("mean over the top-k neighbours")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=130)


def analyze_neighbours(run_dirs: Sequence, target: int, out_dir, k: int = 3, space: str = "final",
                       data=None, checkpoint: str = "best.pt") -> pd.DataFrame:
    """Load the runs, build :func:`neighbour_table`, write ``neighbours_<item>.csv`` and ``.png``."""
    from mmgraph.analysis.spaces import load_runs, model_spaces

    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    runs, dataset = load_runs(run_dirs, data, checkpoint)
    if k >= dataset.n_items:
        raise ConfigError(f"--k {k}: an item of {dataset.name} has {dataset.n_items - 1} other items; give "
                          f"k < {dataset.n_items}")
    table = neighbour_table([(label, model_spaces(model)) for label, model in runs], dataset, target, k, space)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"neighbours_{int(target)}.csv", index=False, float_format="%.4f")
    plot_summary(table, out / f"neighbours_{int(target)}.png", f"top-{k} neighbours of item {int(target)} ({space})")
    return table


# ---------------------------------------------------------------------------------------------- CLI
def register_cli(actions) -> None:
    p = actions.add_parser("neighbours", help="top-k neighbours of an item under trained runs, with 2-hop "
                                              "proximity and per-modality similarity")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders to compare (one dataset), e.g. RUN_A RUN_B")
    p.add_argument("--item", type=int, required=True, help="target item (internal id 0..n_items-1)")
    p.add_argument("--k", type=int, default=3, help="neighbours per run (default: %(default)s)")
    p.add_argument("--space", default="final", help="item space to search (a channel, e.g. final, mm, proj_mm)")
    p.add_argument("--data", help="dataset path (default: the one recorded in the runs)")
    p.add_argument("--checkpoint", choices=["best.pt", "last.pt"], default="best.pt")
    p.add_argument("--out", default="analysis/neighbours", help="output folder (default: %(default)s)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    table = analyze_neighbours(args.runs, args.item, args.out, args.k, args.space, args.data, args.checkpoint)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.round(4).to_string(index=False))
    print(f"wrote {Path(args.out) / f'neighbours_{args.item}.csv'} and the .png beside it")
    return 0
