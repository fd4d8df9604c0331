"""The benchmark's files: ``results.csv`` (one row per reported run: each seed of the selected point; a grid's
other points stay in its folder's ``grid_summary.json``), ``summary.csv`` / ``summary.md`` (mean +- std
over seeds per method and dataset, the best per column in bold, paired t-tests against the reference
method), ``summary.png`` (bars with error bars) and, with groups, ``groups.csv`` / ``groups.md``
(popularity-group Recall).

Everything here reads the rows :func:`mmgraph.benchmark.runner.run_benchmark` collects, or
``results.csv`` itself (:func:`read_results`), so a report can be rebuilt without training.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmgraph.benchmark.stats import mean_std, paired_ttest
from mmgraph.errors import DataError
from mmgraph.utils.io import atomic_write, save_figure

log = logging.getLogger("mmgraph.benchmark")

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP", "hit": "H"}
LONG = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP", "hit": "Hit"}
RUN_COLUMNS = ("dataset", "method", "seed", "point", "params", "run_dir", "best_epoch", "epochs_run",
               "seconds_per_epoch")


def short(metric: str) -> str:
    """``recall@20`` -> ``R@20``."""
    name, _, k = metric.partition("@")
    return f"{SHORT.get(name, name)}@{k}"


def long_name(metric: str) -> str:
    """``recall@20`` -> ``Recall@20``, ``ndcg@10`` -> ``NDCG@10``."""
    name, _, k = metric.partition("@")
    return f"{LONG.get(name, name)}@{k}" if k else LONG.get(name, name)


# ------------------------------------------------------------------------------------------ results.csv
def write_results(rows: Sequence[Dict[str, Any]], path: Path) -> Path:
    """One row per run: identity columns, then ``test_<metric>`` and ``valid_<metric>`` for every metric
    the runs report."""
    metrics = sorted({m for r in rows for m in r["test"]}, key=_metric_order)
    header = list(RUN_COLUMNS) + [f"test_{m}" for m in metrics] + [f"valid_{m}" for m in metrics]
    with atomic_write(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([r["dataset"], r["method"], r["seed"], r["point"], json.dumps(r["params"], sort_keys=True),
                        r["run_dir"], r["best_epoch"], r["epochs_run"], f"{r['seconds_per_epoch']:.4g}"]
                       + [_num(r["test"].get(m)) for m in metrics] + [_num(r["valid"].get(m)) for m in metrics])
    return path


def _metric_order(metric: str) -> Tuple[int, int, str]:
    name, _, k = metric.partition("@")
    order = ["recall", "ndcg", "precision", "map", "hit"]
    return (order.index(name) if name in order else len(order), int(k) if k.isdigit() else 0, name)


def _num(x: Optional[float]) -> str:
    return "" if x is None else repr(float(x))


def read_results(path: Path) -> List[Dict[str, Any]]:
    """``results.csv`` back into rows (``test`` / ``valid`` metric dicts)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist (run `mmgraph benchmark ... --out {path.parent}` first)")
    rows = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            try:
                rows.append({
                    "dataset": rec["dataset"], "method": rec["method"], "seed": int(rec["seed"]),
                    "point": int(rec["point"]), "params": json.loads(rec["params"] or "{}"),
                    "run_dir": rec["run_dir"], "best_epoch": int(rec["best_epoch"]),
                    "epochs_run": int(rec["epochs_run"]), "seconds_per_epoch": float(rec["seconds_per_epoch"]),
                    "test": {k[5:]: float(v) for k, v in rec.items() if k.startswith("test_") and v != ""},
                    "valid": {k[6:]: float(v) for k, v in rec.items() if k.startswith("valid_") and v != ""}})
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{path}: malformed row {rec} ({exc})") from None
    return rows


# ------------------------------------------------------------------------------------------ summary
def summarise(rows: Sequence[Dict[str, Any]], reference: str,
              metrics: Sequence[str] = METRICS) -> List[Dict[str, Any]]:
    """Per (dataset, method), in first-seen order: ``n`` seeds, ``params``, ``mean`` / ``std`` per test
    metric, ``valid_mean`` of the same metrics, and ``p`` / ``t`` per metric: the paired t-test (over the
    seeds both ran) against ``reference`` on that dataset (``None`` for the reference itself)."""
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        entry: Dict[str, Any] = {"dataset": dataset, "method": method, "n": len(runs),
                                 "seeds": [r["seed"] for r in runs], "params": runs[0]["params"],
                                 "mean": {}, "std": {}, "valid_mean": {}, "p": {}, "t": {}, "diff": {}}
        ref_runs = {r["seed"]: r for r in groups.get((dataset, reference), [])}
        for m in metrics:
            entry["mean"][m], entry["std"][m] = mean_std([r["test"][m] for r in runs])
            entry["valid_mean"][m] = mean_std([r["valid"].get(m, math.nan) for r in runs])[0]
            if method == reference or not ref_runs:
                entry["p"][m] = entry["t"][m] = entry["diff"][m] = None
                continue
            shared = [r for r in runs if r["seed"] in ref_runs]
            test = paired_ttest([r["test"][m] for r in shared], [ref_runs[r["seed"]]["test"][m] for r in shared])
            entry["p"][m], entry["t"][m], entry["diff"][m] = test.pvalue, test.statistic, test.mean_diff
        out.append(entry)
    return out


def best_per_column(summary: Sequence[Dict[str, Any]], dataset: str, metric: str) -> float:
    return max(e["mean"][metric] for e in summary if e["dataset"] == dataset)


def write_summary_csv(summary: Sequence[Dict[str, Any]], path: Path, metrics: Sequence[str] = METRICS) -> Path:
    header = ["dataset", "method", "n_seeds", "params"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_p"]
    header += [f"valid_{m}_mean" for m in metrics]
    with atomic_write(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for e in summary:
            row = [e["dataset"], e["method"], e["n"], json.dumps(e["params"], sort_keys=True)]
            for m in metrics:
                row += [_num(e["mean"][m]), _num(e["std"][m]), _num(e["p"][m])]
            row += [_num(e["valid_mean"][m]) for m in metrics]
            w.writerow(row)
    return path


def _cell(mean: float, std: float, bold: bool) -> str:
    text = f"{mean:.4f}" + (f" ± {std:.4f}" if not math.isnan(std) else "")
    return f"**{text}**" if bold else text


def _p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def summary_tables(summary: Sequence[Dict[str, Any]], reference: str,
                   metrics: Sequence[str] = METRICS) -> str:
    """Markdown: per dataset, the mean ± std table (best mean per column in bold) and the paired
    t-test table against ``reference``."""
    lines: List[str] = []
    for dataset in dict.fromkeys(e["dataset"] for e in summary):
        entries = [e for e in summary if e["dataset"] == dataset]
        n = sorted({e["n"] for e in entries})
        lines += [f"### {dataset}", "",
                  f"Test metrics at the best validation epoch, mean ± sample std over {'/'.join(map(str, n))} "
                  "seeds; the best mean per column in bold.", ""]
        lines.append("| method | " + " | ".join(short(m) for m in metrics) + " | valid R@20 | grid point |")
        lines.append("|---|" + "---:|" * (len(metrics) + 1) + "---|")
        best = {m: best_per_column(summary, dataset, m) for m in metrics}
        for e in entries:
            cells = [_cell(e["mean"][m], e["std"][m], e["mean"][m] == best[m]) for m in metrics]
            params = ", ".join(f"{k}={v}" for k, v in e["params"].items()) or "– (no search)"
            label = e["method"] + (" (reference)" if e["method"] == reference else "")
            valid = e["valid_mean"].get("recall@20", float("nan"))
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {valid:.4f} | {params} |")
        others = [e for e in entries if e["method"] != reference]
        if others and any(e["method"] == reference for e in entries):
            lines += ["", f"Paired t-test (two-sided, over the seeds both ran) against {reference}: difference of "
                      "the means, and p.", ""]
            lines.append("| method | " + " | ".join(f"Δ{short(m)} | p" for m in metrics) + " |")
            lines.append("|---|" + "---:|---:|" * len(metrics))
            for e in others:
                cells = [f"{e['diff'][m]:+.4f} | {_p(e['p'][m])}" for m in metrics]
                lines.append(f"| {e['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary_md(summary: Sequence[Dict[str, Any]], path: Path, reference: str, meta: Dict[str, Any],
                     groups: Optional[str] = None) -> Path:
    seeds = meta.get("seeds") or []
    how = ("each method's grid (its config's grid: block), the point with the best mean validation "
           f"{meta.get('metric', 'recall@20')} over the seeds" if meta.get("grid")
           else "each method's default config (no search)")
    text = ["# Benchmark summary", "",
            f"Command: `{meta.get('command', '')}`", "",
            f"Seeds {', '.join(map(str, seeds))}; hyper-parameters: {how}. Test metrics never enter a choice.",
            "", summary_tables(summary, reference)]
    if groups:
        text += [groups, ""]
    Path(path).write_text("\n".join(text).rstrip() + "\n")
    return Path(path)


# ------------------------------------------------------------------------------------------ chart
def plot_summary(summary: Sequence[Dict[str, Any]], path: Path, metrics: Sequence[str] = METRICS) -> Optional[Path]:
    """Bars (mean test metric) with error bars (sample std over seeds), one panel per dataset; ``None``
    (and a warning) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'mmgraph[plot]')", Path(path).name)
        return None
    datasets = list(dict.fromkeys(e["dataset"] for e in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=((1.5 + 1.1 * len(metrics)) * len(datasets), 3.6),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        entries = [e for e in summary if e["dataset"] == dataset]
        width = 0.8 / max(1, len(entries))
        for j, e in enumerate(entries):
            xs = [i + (j - (len(entries) - 1) / 2) * width for i in range(len(metrics))]
            ys = [e["mean"][m] for m in metrics]
            err = [0.0 if math.isnan(e["std"][m]) else e["std"][m] for m in metrics]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=e["method"])
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels([short(m) for m in metrics])
        ax.set_title(f"{dataset} (mean ± std over seeds)")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------ groups
def group_metrics(out: Path, rows: Sequence[Dict[str, Any]], ks: Sequence[int] = (10, 20)) -> List[Dict[str, Any]]:
    """Test Recall@K per item-popularity group (head 20 %, four tail groups) of every run, computed from
    its best checkpoint; cached in ``out/groups/`` (keyed by the checkpoint's content hash)."""
    from mmgraph.evaluation import Evaluator, popularity_group_metrics
    from mmgraph.train.run import as_in_the_run, load_run
    from mmgraph.train.rundir import file_hash
    from mmgraph.utils.io import write_json

    out = Path(out)
    result = []
    for r in rows:
        run_dir = out / r["run_dir"]
        digest = file_hash(run_dir / "best.pt")
        cache = out / "groups" / (r["run_dir"].replace("/", "__") + ".json")
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        if cached.get("checkpoint") == digest and cached.get("ks") == list(ks):
            groups = cached["groups"]
        else:
            model, dataset, config = load_run(run_dir)
            with as_in_the_run(config, model.device):
                users, items = model.embeddings()
            evaluator = Evaluator(dataset, "test", ks=list(ks), device=users.device)
            groups = popularity_group_metrics(evaluator, users, items, ks=ks)
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache, {"checkpoint": digest, "ks": list(ks), "groups": groups})
        result.append({"dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "groups": groups})
    return result


def write_groups(records: Sequence[Dict[str, Any]], csv_path: Path, ks: Sequence[int] = (10, 20)) -> str:
    """``groups.csv`` (mean / std per dataset, method, group and K) and the markdown table (Recall@20
    or the largest K), returned."""
    table: Dict[Tuple[str, str, str], Dict[str, List[float]]] = {}
    names: Dict[Tuple[str, str], int] = {}     # (dataset, group) -> the group's items in that dataset
    for rec in records:
        for g, vals in rec["groups"].items():
            names.setdefault((rec["dataset"], g), vals.get("n_items", 0))
            cell = table.setdefault((rec["dataset"], rec["method"], g), {})
            for k in ks:
                cell.setdefault(f"recall@{k}", []).append(vals[f"recall@{k}"])
    with atomic_write(csv_path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "method", "group", "n_items"] + [f"{s}recall@{k}" for k in ks for s in ("", "std_")])
        for (dataset, method, g), cell in table.items():
            row = [dataset, method, g, names[(dataset, g)]]
            for k in ks:
                row += [_num(v) for v in mean_std(cell[f"recall@{k}"])]
            w.writerow(row)
    k = max(ks)
    groups = list(dict.fromkeys(g for _, g in names))
    lines = ["### Popularity groups", "",
             f"Test Recall@{k} per item-popularity group (head = top 20 % of items by training interactions, "
             "tail1 = most popular quarter of the rest ... tail4 = least popular), mean ± std over seeds.", ""]
    for dataset in dict.fromkeys(d for d, _, _ in table):
        lines += [f"{dataset}:", "", "| method | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
        for method in dict.fromkeys(m for d, m, _ in table if d == dataset):
            cells = []
            for g in groups:
                vals = table.get((dataset, method, g), {}).get(f"recall@{k}", [])
                mean, std = mean_std(vals)
                cells.append(_cell(mean, std, False) if vals else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ all files
def write_report(out: Path, rows: Sequence[Dict[str, Any]], reference: str, meta: Dict[str, Any],
                 groups: bool = False, chart: bool = True) -> Dict[str, Path]:
    """Write the files of the benchmark folder from its rows (``summary.png`` unless ``chart=False``,
    the popularity groups with ``groups``); returns ``{name: path}``."""
    out = Path(out)
    files = {"results": write_results(rows, out / "results.csv")}
    summary = summarise(rows, reference)
    files["summary_csv"] = write_summary_csv(summary, out / "summary.csv")
    group_text = None
    if groups:
        group_text = write_groups(group_metrics(out, rows), out / "groups.csv")
        files["groups"] = out / "groups.csv"
    files["summary_md"] = write_summary_md(summary, out / "summary.md", reference, meta, group_text)
    png = plot_summary(summary, out / "summary.png") if chart else None
    if png is not None:
        files["chart"] = png
    return files
