"""``docs/results.md`` from a benchmark folder: what it covers, the command that produced it, the tables,
and published claims checked against it (paired t-test over seeds, ``p < alpha``).

A claims file (YAML) lists what the seed papers state::

    claims:
      - claim: CROSS improves LightGCN
        source: CROSS paper, Table 3 (TikTok)
        better: lightgcn+cross           # method labels as in --methods
        worse: lightgcn
        metrics: [recall@20, ndcg@20]
        data: [tiktok]                   # optional: the datasets the claim is about (default: every one)

Each claim is checked on every benchmarked dataset it applies to, per metric: ``holds`` (better > worse,
p < alpha), ``contradicted`` (worse > better, p < alpha), ``not significant``, or ``not measured`` when
the benchmark lacks one of the methods (the doc lists those claims as open rather than hiding them).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mmgraph.benchmark.report import _p, long_name, read_results, short, summarise, summary_tables
from mmgraph.benchmark.stats import mean_std, paired_ttest
from mmgraph.errors import ConfigError, DataError
from mmgraph.utils.io import atomic_write, load_yaml


def load_claims(path: Optional[Path]) -> List[Dict[str, Any]]:
    """The ``claims:`` list of a YAML file, each with ``claim``, ``better``, ``worse`` (``metrics``,
    ``source``, ``data`` optional); one-line errors for anything else."""
    if path is None:
        return []
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--claims {path} does not exist")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: unreadable YAML ({' '.join(str(exc).split())[:160]})") from None
    claims = data.get("claims") if isinstance(data, dict) else None
    if not isinstance(claims, list):
        raise DataError(f"{path}: expected a 'claims:' list")
    out = []
    for i, c in enumerate(claims):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("claim", "better", "worse")):
            raise DataError(f"{path}: claim {i + 1} needs text fields claim, better and worse")
        metrics = c.get("metrics") or ["recall@20", "ndcg@20"]
        data_names = c.get("data")
        out.append({"claim": c["claim"], "source": str(c.get("source", "")), "better": c["better"].lower(),
                    "worse": c["worse"].lower(), "metrics": [str(m).lower() for m in metrics],
                    "data": [data_names] if isinstance(data_names, str) else list(data_names or [])})
    return out


def check_claim(rows: Sequence[Dict[str, Any]], claim: Dict[str, Any], dataset: str, metric: str,
                alpha: float = 0.05) -> Dict[str, Any]:
    """The verdict of ``claim`` on ``dataset`` for ``metric``: ``verdict``, ``diff`` (better - worse, mean
    over the shared seeds), ``p``, ``n`` (shared seeds)."""
    def runs(method):
        return {r["seed"]: r for r in rows if r["dataset"] == dataset and r["method"] == method}

    a, b = runs(claim["better"]), runs(claim["worse"])
    seeds = sorted(set(a) & set(b))
    if not a or not b:
        missing = [m for m, r in ((claim["better"], a), (claim["worse"], b)) if not r]
        return {"verdict": "not measured", "diff": None, "p": None, "n": 0,
                "why": f"{' and '.join(missing)} not in this benchmark"}
    if any(metric not in r["test"] for r in list(a.values()) + list(b.values())):
        return {"verdict": "not measured", "diff": None, "p": None, "n": 0, "why": f"no {metric} in the runs"}
    test = paired_ttest([a[s]["test"][metric] for s in seeds], [b[s]["test"][metric] for s in seeds])
    if len(seeds) < 2 or math.isnan(test.pvalue):
        verdict = "too few seeds" if len(seeds) < 2 else "not significant"
    elif test.pvalue < alpha:
        verdict = "holds" if test.mean_diff > 0 else "contradicted"
    else:
        verdict = "not significant"
    return {"verdict": verdict, "diff": test.mean_diff, "p": test.pvalue, "n": len(seeds), "why": ""}


def render(bench_dir: Path, claims: Sequence[Dict[str, Any]] = (), alpha: float = 0.05,
           note: Optional[str] = None, doc_command: Optional[str] = None) -> str:
    """The markdown of ``docs/results.md`` for the benchmark in ``bench_dir``."""
    from mmgraph.models.registry import available_methods

    bench_dir = Path(bench_dir)
    meta_path = bench_dir / "benchmark.json"
    if not meta_path.exists():
        raise DataError(f"{bench_dir}: not a benchmark folder (no benchmark.json); run `mmgraph benchmark "
                        f"... --out {bench_dir}` first")
    meta = json.loads(meta_path.read_text())
    rows = read_results(bench_dir / "results.csv")
    if not rows:
        raise DataError(f"{bench_dir}/results.csv holds no runs")
    reference = str(meta.get("reference") or rows[0]["method"])
    summary = summarise(rows, reference)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    covered = {m.split("+")[0] for m in methods}
    missing = [m for m in available_methods() if m not in covered]
    metric = long_name(str(meta.get("metric") or "recall@20"))
    how = (f"each method's grid, selected on mean validation {metric} over the seeds" if meta.get("grid")
           else "each method's default config (configs/methods/<method>.yaml; no search)")
    overrides = meta.get("overrides") or {}
    lines = ["# Results", "",
             f"Generated by `{doc_command or 'mmgraph results-doc ' + str(bench_dir)}` from the benchmark "
             "folder written by:", "", "```bash", str(meta.get("command", "")), "```", ""]
    if note:
        lines += [note.strip(), ""]
    lines += ["What this table covers:", "",
              f"* datasets: {', '.join(datasets)}; methods: {', '.join(methods)}; seeds: "
              f"{', '.join(map(str, seeds))} (every method runs every seed; paired by seed);",
              f"* hyper-parameters: {how}"
              + (f"; settings for every run: {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides
                 else "") + ";",
              "* metrics: test split, full ranking (MMRec protocol), at the best validation epoch; mean ± sample "
              "standard deviation over the seeds;"]
    if missing:
        lines.append(f"* **not covered**: {', '.join(missing)} (methods of the library absent from this "
                     "benchmark: no claim below is made about them).")
    lines += ["", "## Tables", "", summary_tables(summary, reference)]
    lines += ["## Epochs and time", "", "| dataset | method | best epoch (mean) | epochs run (mean) | s / epoch |",
              "|---|---|---:|---:|---:|"]
    for dataset in datasets:
        for method in methods:
            rs = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            if rs:
                lines.append(f"| {dataset} | {method} | {mean_std([r['best_epoch'] for r in rs])[0]:.1f} | "
                             f"{mean_std([r['epochs_run'] for r in rs])[0]:.1f} | "
                             f"{mean_std([r['seconds_per_epoch'] for r in rs])[0]:.2f} |")
    lines.append("")
    if claims:
        lines += ["## Claims", "",
                  f"Each claim checked per dataset and metric with a two-sided paired t-test over the seeds "
                  f"(test split): *holds* = the claimed order with p < {alpha:g}; *contradicted* = the opposite "
                  f"order with p < {alpha:g}; *not significant* = p ≥ {alpha:g} (the seeds cannot tell); *not "
                  "measured* = a method is not in this benchmark.", "",
                  "| claim | source | data | metric | Δ (better − worse) | p | verdict |",
                  "|---|---|---|---|---:|---:|---|"]
        for c in claims:
            for dataset in [d for d in datasets if not c["data"] or d in c["data"]]:
                first = check_claim(rows, c, dataset, c["metrics"][0], alpha)
                if first["verdict"] == "not measured":     # one line, not one per metric
                    lines.append(f"| {c['claim']} ({c['better']} > {c['worse']}) | {c['source']} | {dataset} | "
                                 f"{', '.join(short(m) for m in c['metrics'])} | – | – | not measured "
                                 f"({first['why']}) |")
                    continue
                for metric in c["metrics"]:
                    v = check_claim(rows, c, dataset, metric, alpha)
                    diff = "–" if v["diff"] is None else f"{v['diff']:+.4f}"
                    verdict = v["verdict"] if v["verdict"] != "holds" else "**holds**"
                    if v["why"]:
                        verdict += f" ({v['why']})"
                    lines.append(f"| {c['claim']} ({c['better']} > {c['worse']}) | {c['source']} | {dataset} | "
                                 f"{short(metric)} | {diff} | {_p(v['p'])} | {verdict} |")
            if c["data"] and not any(d in c["data"] for d in datasets):
                lines.append(f"| {c['claim']} ({c['better']} > {c['worse']}) | {c['source']} | "
                             f"{', '.join(c['data'])} | – | – | – | "
                             "not measured (dataset not in this benchmark) |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_results_doc(bench_dir: Path, output: Path, claims_file: Optional[Path] = None, alpha: float = 0.05,
                      note: Optional[str] = None, doc_command: Optional[str] = None) -> Path:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must be in (0, 1), got {alpha}")
    text = render(Path(bench_dir), load_claims(claims_file), alpha, note, doc_command)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    chart = Path(bench_dir) / "summary.png"
    if chart.exists():   # the bar chart next to the page (results.md -> results.png), linked under the tables
        import shutil

        if chart.resolve() != output.with_suffix(".png").resolve():   # the page may be written into the folder
            shutil.copyfile(chart, output.with_suffix(".png"))
        text = text.replace("\n## Epochs and time", f"\n![mean ± std over seeds]({output.with_suffix('.png').name})"
                            "\n\n## Epochs and time", 1)
    with atomic_write(output, "w") as fh:
        fh.write(text)
    return output
