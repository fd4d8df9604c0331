"""The unique / synergy / degradation user subsets (BR-MRS paper, sections 1 and 3.6-3.7), for any run whose
model exposes per-modality channels (``mmgraph analyze subsets RUN [RUN ...]``).

Per evaluated user of the split, channel ``c`` *hits* when at least one of the user's split items is in
the top-K of ``c``'s scores (the protocol's full ranking: every item scored, the user's training items
masked). With the modality channels ``m`` (channels named after an item modality) and the fused scores
``f`` (the model's final scoring space):

* ``only_<m>`` -- hit by ``m`` and by no other modality (the unique subsets ``U_t``, ``U_v``);
* ``both`` (two modalities; ``several`` with more) -- hit by at least two modalities;
* ``fused_only`` -- hit by ``f`` and by no modality (the synergy subset ``U_tv``);
* ``lost_by_fusion`` -- hit by at least one modality but not by ``f`` (the degradation subset ``U_r``);
* ``none`` -- hit by nothing.

``only_*``, ``both``/``several`` and "no modality" partition the users; ``fused_only`` and ``lost_by_fusion``
cut across them. The table also counts, per subset, the users the fused scores hit (``fused_hit``).
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from mmgraph.errors import ConfigError, DataError
from mmgraph.utils.io import save_figure

FINAL = "final"


def subset_masks(hits: Mapping[str, np.ndarray], modalities: Sequence[str],
                 fused: str = FINAL) -> Dict[str, np.ndarray]:
    """``{subset: bool [n_users]}`` from per-channel hit vectors (see the module docstring)."""
    if not modalities:
        raise ConfigError("the subset analysis needs at least one per-modality channel")
    modal = np.stack([np.asarray(hits[m], dtype=bool) for m in modalities])       # [M, n]
    f = np.asarray(hits[fused], dtype=bool)
    n_hit = modal.sum(0)
    out = {f"only_{m}": modal[k] & (n_hit == 1) for k, m in enumerate(modalities)}
    if len(modalities) > 1:
        out["both" if len(modalities) == 2 else "several"] = n_hit >= 2
    out["fused_only"] = f & (n_hit == 0)
    out["lost_by_fusion"] = ~f & (n_hit > 0)
    out["none"] = ~f & (n_hit == 0)
    return out


def channel_hits(model, dataset, split: str = "test", k: int = 20,
                 retrieval: str = "exact") -> Tuple[Dict[str, np.ndarray], List[str]]:
    """``({channel: bool hit@k per evaluated user}, modality channel names)``; ``final`` is the fused score."""
    from mmgraph.evaluation import Evaluator

    channels = model.channel_embeddings()
    modalities = [c for c in channels if c != FINAL and c in set(dataset.modalities)]
    if not modalities:
        raise ConfigError(f"{getattr(model, 'method_name', type(model).__name__)} exposes no per-modality channel "
                          f"(it has: {', '.join(channels)}); the subset analysis needs a multimodal model such as "
                          "brmrs, freedom, vbpr, bm3 or cm3")
    users, _ = channels[FINAL]
    evaluator = Evaluator(dataset, split, ks=[k], device=users.device, retrieval=retrieval)
    hits = {}
    for name in [FINAL] + modalities:
        u, i = channels[name]
        per_user = evaluator.evaluate(u, i, per_user=True)
        hits[name] = per_user[f"hit@{k}"].cpu().numpy() > 0
    return hits, modalities


def subset_counts(hits: Mapping[str, np.ndarray], modalities: Sequence[str]) -> List[Dict[str, object]]:
    """Rows ``{subset, users, share, fused_hit}`` (``share`` of the evaluated users)."""
    masks = subset_masks(hits, modalities)
    n = len(hits[FINAL])
    f = np.asarray(hits[FINAL], dtype=bool)
    rows = [{"subset": name, "users": int(mask.sum()), "share": float(mask.sum()) / n if n else 0.0,
             "fused_hit": int((mask & f).sum())} for name, mask in masks.items()]
    rows.append({"subset": "evaluated", "users": n, "share": 1.0, "fused_hit": int(f.sum())})
    return rows


def table_csv(results: Mapping[str, List[Dict[str, object]]]) -> str:
    """Long CSV: ``run,subset,users,share,fused_hit``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "subset", "users", "share", "fused_hit"])
    for run, rows in results.items():
        for r in rows:
            writer.writerow([run, r["subset"], r["users"], f"{r['share']:.6f}", r["fused_hit"]])
    return buf.getvalue()


def format_table(results: Mapping[str, List[Dict[str, object]]]) -> str:
    """Subsets as rows, one ``users (share)`` column per run."""
    runs = list(results)
    subsets = list(dict.fromkeys(r["subset"] for rows in results.values() for r in rows))
    cell = {(run, r["subset"]): r for run in runs for r in results[run]}
    width = max([16] + [len(s) for s in subsets])
    colw = max([18] + [len(r) for r in runs])
    lines = [f"{'subset':{width}s} " + " ".join(f"{r:>{colw}s}" for r in runs)]
    lines.append("-" * len(lines[0]))
    for s in subsets:
        vals = []
        for run in runs:
            r = cell.get((run, s))
            vals.append(f"{r['users']:d} ({100 * r['share']:.1f}%)" if r else "-")
        lines.append(f"{s:{width}s} " + " ".join(f"{v:>{colw}s}" for v in vals))
    return "\n".join(lines)


def plot_subsets(results: Mapping[str, List[Dict[str, object]]], output, title: str = "") -> Path:
    """Grouped bars: subset sizes (users) per run, as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'mmgraph[plot]'") from None
    runs = list(results)
    subsets = [r["subset"] for r in next(iter(results.values())) if r["subset"] != "evaluated"]
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(1.3 * len(subsets) + 2, 3.6))
    x = np.arange(len(subsets))
    for k, run in enumerate(runs):
        sizes = {r["subset"]: r["users"] for r in results[run]}
        ax.bar(x + k * width - 0.4 + width / 2, [sizes.get(s, 0) for s in subsets], width, label=run)
    ax.set_xticks(x)
    ax.set_xticklabels(subsets, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("users")
    if title:
        ax.set_title(title, fontsize=9)
    if len(runs) > 1:
        ax.legend(fontsize=7)
    return save_figure(fig, output)


def analyze_runs(run_dirs: Sequence[str], split: str = "test", k: int = 20, data=None,
                 retrieval: str = "exact") -> Dict[str, List[Dict[str, object]]]:
    """``{run label: subset rows}`` for each trained run (labels: the folder names, made unique)."""
    from mmgraph.train.run import as_in_the_run, load_run

    results: Dict[str, List[Dict[str, object]]] = {}
    for run in run_dirs:
        model, dataset, config = load_run(run, data)
        with as_in_the_run(config, model.device):
            hits, modalities = channel_hits(model, dataset, split, k, retrieval)
        label = Path(run).resolve().name or str(run)
        while label in results:
            label += "'"
        results[label] = subset_counts(hits, modalities)
    return results


def register_cli(sub) -> None:
    p = sub.add_parser("subsets", help="users hit by one modality only, several, the fused score only, or lost "
                                       "by fusion (BR-MRS unique / synergy / degradation subsets)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="trained run folder(s) of multimodal models")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--k", type=int, default=20, help="top-K cut-off of a hit (default: %(default)s)")
    p.add_argument("--data", help="dataset path (default: the one recorded in each run)")
    p.add_argument("--out", help="folder of subsets_<split>_k<K>.csv / .png (default: RUN/analysis of the first RUN)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise DataError(f"--k must be >= 1, got {args.k}")
    results = analyze_runs(args.run_dirs, args.split, args.k, args.data)
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"subsets_{args.split}_k{args.k}"
    (out / f"{stem}.csv").write_text(table_csv(results))
    plot_subsets(results, out / f"{stem}.png", f"{args.split} users hit in the top-{args.k}")
    print(format_table(results))
    print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.png')}")
    return 0
