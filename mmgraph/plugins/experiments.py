"""The CROSS paper's experiments as functions (``scripts/cross_*.py`` are their one-line commands).

Every experiment is a set of named *variants* (config overrides) trained with the same seed and the
same backbone settings; each run gets its own run directory under ``out`` and is skipped when its
``final_metrics.json`` exists, so an interrupted experiment resumes where it stopped.

* :func:`comparison` -- backbone x {vanilla, +FETTLE, +CROSS} (Tables 2-3), optionally with a grid over
  plug-in keys per (backbone, variant), selected on validation;
* :data:`COMPONENT_VARIANTS` / :data:`STRATEGY_VARIANTS` -- ablation (Fig. 6) and alignment strategy (Fig. 7);
* :func:`robustness` -- features replaced by noise / fake training interactions at several rates (Fig. 8);
* :func:`popularity` -- Recall@K per item-popularity group (head 20 %, four tail groups; Fig. 10).
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from mmgraph.train.config import load_config
from mmgraph.utils.io import write_json

log = logging.getLogger("mmgraph.experiments")

#: backbone settings used by the experiments unless overridden (TikTok references in the project docs)
BACKBONE_SETTINGS: Dict[str, Dict[str, Any]] = {
    "mf": {"reg_weight": 1e-4},
    "lightgcn": {"n_layers": 2, "reg_weight": 1e-4},
    "directau": {},
    "vbpr": {"reg_weight": 1e-4},
    "freedom": {"dropout": 0.8, "reg_weight": 1e-4},
    "bm3": {},
}

MAIN_VARIANTS: Dict[str, Dict[str, Any]] = {
    "vanilla": {"plugins": []},
    "+FETTLE": {"plugins": ["fettle"]},
    "+CROSS": {"plugins": ["cross"]},
}


def _components(*on: str) -> Dict[str, Any]:
    return {"plugins": ["cross"], **{f"cross_{c}": c in on for c in ("ilda", "dt", "cna", "cla")}}


COMPONENT_VARIANTS: Dict[str, Dict[str, Any]] = {
    "vanilla": {"plugins": []},
    "+ILDA": _components("ilda"),
    "+DT": _components("dt"),
    "+CNA": _components("cna"),
    "+CLA": _components("cla"),
    "+CNA&CLA": _components("cna", "cla"),
    "+ILDA&DT": _components("ilda", "dt"),
    "+ILDA&CNA&CLA": _components("ilda", "cna", "cla"),
    "+ILDA&DT&CNA&CLA": _components("ilda", "dt", "cna", "cla"),
}

STRATEGY_VARIANTS: Dict[str, Dict[str, Any]] = {
    "vanilla": {"plugins": []},
    "bidirectional": {"plugins": ["cross"], "cross_strategy": "bidirectional"},
    "one-way": {"plugins": ["cross"], "cross_strategy": "oneway"},
    "dynamic": {"plugins": ["cross"], "cross_strategy": "dynamic"},
}

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def variant_config(method: str, variant: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None,
                   extra: Optional[Dict[str, Any]] = None,
                   settings: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Backbone settings <- shared overrides <- variant <- extra. Plug-in keys (``cross_*``) are dropped
    from variants without plug-ins, so a vanilla run does not depend on (and is shared across) them."""
    settings = BACKBONE_SETTINGS if settings is None else settings
    cfg = {**settings.get(method, {}), **(overrides or {}), **variant, **(extra or {})}
    if not cfg.get("plugins"):
        cfg = {k: v for k, v in cfg.items() if k not in _plugin_keys(method)}
    return cfg


def _plugin_keys(method: Optional[str] = None) -> set:
    """Keys only plug-ins declare (a key the method itself reads, e.g. brmrs's ``brmrs_*``, is kept)."""
    from mmgraph.plugins import available_plugins

    keys = {k for cls in available_plugins().values() for k in getattr(cls, "defaults", {})}
    if method is not None:
        from mmgraph.models.registry import get_model_class
        keys -= set(getattr(get_model_class(method), "defaults", {}))
    return keys


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace("+", "plus_").replace("&", "_"))
    return out.strip("_") or "run"


def run_variant(method: str, data, overrides: Dict[str, Any], out_dir: Optional[Path] = None,
                progress: bool = False, data_spec: Optional[str] = None) -> Dict[str, Any]:
    """Train ``method`` with ``overrides`` (resolved like ``mmgraph train --set``) in ``out_dir``; a finished
    run there is reused (other settings are an error), an interrupted one resumed
    (:func:`mmgraph.train.run.run_or_reuse`, as ``mmgraph benchmark`` and grid searches do)."""
    from mmgraph.train.run import load_dataset, run_or_reuse

    dataset = load_dataset(data)
    config = load_config(method, dataset.name, overrides=overrides)
    config = {k: v for k, v in config.items() if k != "grid"}
    result, _ = run_or_reuse(method, dataset, config, out_dir, progress=progress,
                             data_spec=data_spec or str(data))
    return result


def grid_points(grid: Optional[Dict[str, Sequence[Any]]]) -> List[Dict[str, Any]]:
    if not grid:
        return [{}]
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def comparison(data, methods: Iterable[str], variants: Dict[str, Dict[str, Any]], out: Path,
               overrides: Optional[Dict[str, Any]] = None, grid: Optional[Dict[str, Sequence[Any]]] = None,
               metric: str = "recall@20", progress: bool = False,
               backbone_settings: Optional[Dict[str, Dict[str, Any]]] = None,
               results_file: str = "results.json") -> List[Dict[str, Any]]:
    """Train every (method, variant); a variant with plug-ins is trained at each ``grid`` point and the
    point with the best VALIDATION ``metric`` is reported. Returns one row per (method, variant) with
    ``valid``, ``test``, ``params`` (the selected point) and ``points`` (every point's valid/test), also written
    to ``out / results_file`` as they come (a caller that compares several tables in one folder names each)."""
    out = Path(out)
    settings = BACKBONE_SETTINGS if backbone_settings is None else backbone_settings
    rows = []
    for method in methods:
        for name, variant in variants.items():
            uses_plugin = bool(variant.get("plugins"))
            points = []
            for point in grid_points(grid if uses_plugin else None):
                cfg = variant_config(method, variant, overrides, point, settings)
                tag = _slug(name) + ("" if not point else "__" + "_".join(f"{k}={v}" for k, v in point.items()))
                result = run_variant(method, data, cfg, out / method / tag, progress)
                points.append({"params": point, "valid": result["valid"], "test": result["test"],
                               "best_epoch": result.get("best_epoch")})
                log.info("%s %s %s: valid %s %.4f test %.4f", method, name, point, metric,
                         result["valid"][metric], result["test"][metric])
            best = max(points, key=lambda p: p["valid"][metric])
            rows.append({"method": method, "variant": name, **best, "points": points})
            write_json(out / results_file, rows)
    return rows


def format_table(rows: List[Dict[str, Any]], metrics: Sequence[str] = METRICS, split: str = "test",
                 key: str = "variant") -> str:
    """Rows grouped by method; the first row of each method is the reference for the Delta column."""
    labels = [row[key] + (f" {row['params']}" if row.get("params") else "") for row in rows]
    width = max([22] + [len(label) for label in labels])
    header = f"{'method':10s} {key:{width}s} " + " ".join(f"{m:>10s}" for m in metrics) + f" {'d' + metrics[1]:>10s}"
    lines = [header, "-" * len(header)]
    ref: Dict[str, float] = {}
    for row, label in zip(rows, labels):
        group = row.get("group", row["method"])
        vals = row[split]
        if group not in ref:
            ref[group] = vals[metrics[1]]
        delta = 100 * (vals[metrics[1]] / ref[group] - 1) if ref[group] else float("nan")
        lines.append(f"{row['method']:10s} {label:{width}s} " + " ".join(f"{vals[m]:10.4f}" for m in metrics)
                     + f" {delta:+9.2f}%")
    return "\n".join(lines)


def robustness(data, method: str, variants: Dict[str, Dict[str, Any]], out: Path, mode: str,
               rates: Sequence[float], overrides: Optional[Dict[str, Any]] = None, metric: str = "recall@10",
               progress: bool = False) -> List[Dict[str, Any]]:
    """``mode='missing'``: ``noise_features = rate`` (every modality, items drawn per modality);
    ``mode='noisy'``: ``fake_interactions = rate``. Every variant at every rate (and at rate 0)."""
    key = {"missing": "noise_features", "noisy": "fake_interactions"}[mode]
    out = Path(out)
    rows = []
    for rate in [0.0] + [float(r) for r in rates if float(r) > 0]:
        for name, variant in variants.items():
            cfg = variant_config(method, variant, overrides, {key: rate} if rate > 0 else {})
            result = run_variant(method, data, cfg, out / method / mode / f"{rate:g}" / _slug(name), progress)
            rows.append({"method": method, "mode": mode, "rate": rate, "variant": name,
                         "valid": result["valid"], "test": result["test"]})
            write_json(out / f"robustness_{mode}.json", rows)
    return rows


def format_robustness(rows: List[Dict[str, Any]], metric: str = "recall@10") -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    rates = list(dict.fromkeys(r["rate"] for r in rows))
    cell = {(r["rate"], r["variant"]): r["test"][metric] for r in rows}
    mode = rows[0]["mode"] if rows else ""
    what = {"missing": "features replaced by noise", "noisy": "fake training interactions"}.get(mode, mode)
    header = f"{'rate':>6s} " + " ".join(f"{v:>12s}" for v in variants)
    lines = [f"test {metric} vs {what} ({rows[0]['method'] if rows else ''})", header, "-" * len(header)]
    for rate in rates:
        lines.append(f"{rate:6.2f} " + " ".join(f"{cell.get((rate, v), float('nan')):12.4f}" for v in variants))
    means = [sum(cell[(r, v)] for r in rates if r > 0 and (r, v) in cell) /
             max(1, sum(1 for r in rates if r > 0 and (r, v) in cell)) for v in variants]
    lines.append(f"{'mean>0':>6s} " + " ".join(f"{m:12.4f}" for m in means))
    return "\n".join(lines)


def popularity(data, method: str, variants: Dict[str, Dict[str, Any]], out: Path,
               overrides: Optional[Dict[str, Any]] = None, ks: Sequence[int] = (10, 20), split: str = "test",
               progress: bool = False) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Train each variant, then Recall@K per popularity group of its best checkpoint:
    ``{variant: {"head": {"recall@10": ...}, "tail1": ..., ...}}`` (tail1 = the most popular tail items)."""
    from mmgraph.evaluation import Evaluator, popularity_group_metrics
    from mmgraph.train.run import as_in_the_run, load_run

    out = Path(out)
    result = {}
    for name, variant in variants.items():
        cfg = variant_config(method, variant, overrides)
        run_dir = out / method / _slug(name)
        run_variant(method, data, cfg, run_dir, progress)
        model, dataset, config = load_run(run_dir, data)
        with as_in_the_run(config, model.device):
            user_emb, item_emb = model.embeddings()
        evaluator = Evaluator(dataset, split, ks=list(ks), device=user_emb.device)
        groups = popularity_group_metrics(evaluator, user_emb, item_emb, ks=ks)
        groups["all"] = {**evaluator.evaluate(user_emb, item_emb)}
        result[name] = groups
        write_json(out / f"popularity_{method}.json", result)
    return result


def format_popularity(result: Dict[str, Dict[str, Dict[str, float]]], k: int = 10) -> str:
    variants = list(result)
    groups = [g for g in next(iter(result.values())) if g != "all"] + ["all"]
    metric = f"recall@{k}"
    header = f"{'group':8s} {'items':>6s} " + " ".join(f"{v:>14s}" for v in variants)
    if len(variants) > 1:
        header += f" {'d(last/first)':>14s}"
    lines = [f"test {metric} per item-popularity group (head = top 20 % by training interactions; "
             "tail1 = most popular quarter of the tail ... tail4 = least popular)", header, "-" * len(header)]
    for g in groups:
        vals = [result[v][g][metric] for v in variants]
        n_items = result[variants[0]][g].get("n_items", "")
        line = f"{g:8s} {str(n_items):>6s} " + " ".join(f"{x:14.4f}" for x in vals)
        if len(vals) > 1:
            line += f" {100 * (vals[-1] / vals[0] - 1):+13.2f}%" if vals[0] else f" {'n/a':>14s}"
        lines.append(line)
    return "\n".join(lines)
