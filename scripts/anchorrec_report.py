"""AnchorRec's paper checks in one command: accuracy beside LightGCN / FREEDOM / BM3, and the neighbourhood
overlap of each trained space with the raw features (the paper's Fig. 4 claim), per dataset, as markdown.

    python scripts/anchorrec_report.py --data ../shared/data/tiktok data/dbbook --out runs/anchorrec_report \\
        --doc docs/anchorrec.md

Every (dataset, method) trains once at ``--seed`` with the method's defaults in ``OUT/<dataset>/<method>``;
finished runs are reused and an interrupted one resumes, so the command can simply be run again. Checked
(:func:`claim_rows`): the paper's Fig. 4 statements -- AnchorRec's origin-space embeddings ``h_m`` keep their
own modality's raw neighbourhood, the projection domain ``p_m`` leaves it and the projected modalities agree
with each other -- and how much of each raw neighbourhood AnchorRec's spaces keep against the other methods'
modality channels and scoring spaces.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from mmgraph.analysis.overlap import analyze_overlap, versus_raw  # noqa: E402
from mmgraph.analysis.spaces import RAW  # noqa: E402
from mmgraph.plugins.experiments import run_variant  # noqa: E402
from mmgraph.utils.io import atomic_write  # noqa: E402

log = logging.getLogger("anchorrec_report")

METHODS = ("anchorrec", "lightgcn", "freedom", "bm3")
ANCHORREC = "anchorrec"
FINAL = "final"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` where there is one), for the report's header."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def epoch_seconds(run_dir: Path) -> Optional[float]:
    """Median seconds per epoch (train + validation) of a run, the first epoch excluded."""
    path = run_dir / "history.json"
    if not path.exists():
        return None
    times = [r["epoch_seconds"] for r in json.loads(path.read_text()) if "epoch_seconds" in r]
    times = times[1:] or times
    return statistics.median(times) if times else None


def _value(table: pd.DataFrame, a: str, b: str) -> Optional[float]:
    if a not in table.index or b not in table.columns or pd.isna(table.loc[a, b]):
        return None
    return float(table.loc[a, b])


def _mean_pairwise(table: pd.DataFrame, spaces: Sequence[str]) -> Optional[float]:
    values = [_value(table, a, b) for i, a in enumerate(spaces) for b in spaces[i + 1:]]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _highest(values: Dict[str, Optional[float]]) -> Optional[Tuple[str, float]]:
    """``(key, value)`` of the highest value that is not None, or None."""
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        return None
    key = max(known, key=known.get)
    return key, known[key]


def claim_rows(table: pd.DataFrame, methods: Sequence[str]) -> List[Dict[str, Any]]:
    """The paper's Fig. 4 statements and the comparison with the other methods, one row each:
    ``{check, compared, anchorrec, other, holds}`` with ``holds = anchorrec > other``.

    * ``origin keeps raw:m``: AnchorRec's refined (origin-space) ``h_m`` shares more neighbours with the raw
      ``f_m`` than with any other content modality's raw features (the paper: high diagonal, low
      cross-modality overlap);
    * ``projection leaves raw:m``: ``h_m`` keeps more of ``raw:m`` than the projection ``p_m`` does (the paper:
      projection-domain overlap with the raw features is uniformly low);
    * ``projections agree``: the projected spaces ``proj_*`` overlap each other more than the origin spaces do;
    * ``vs other methods``: AnchorRec's ``h_m`` and ``p_m`` against the best other method's ``m`` channel, and
      the scoring spaces (``final``), in overlap with ``raw:m``.
    ``table`` is :func:`~mmgraph.analysis.overlap.overlap_matrix`'s (``method:space`` and ``raw:m`` names)."""
    a = ANCHORREC
    others = [m for m in methods if m != a]
    modalities = [c.split(":", 1)[1] for c in table.columns if c.startswith(f"{RAW}:")]
    content = [m for m in modalities if m != "mm"]
    rows: List[Dict[str, Any]] = []

    def add(check: str, compared: str, ours: Optional[float], theirs: Optional[float]) -> None:
        if ours is not None and theirs is not None:
            rows.append({"check": check, "compared": compared, "anchorrec": ours, "other": theirs,
                         "holds": bool(ours > theirs)})

    for m in modalities:
        raw, origin, proj = f"{RAW}:{m}", f"{a}:{m}", f"{a}:proj_{m}"
        other_raw = {o: _value(table, f"{RAW}:{o}", origin) for o in content if o != m} if m in content else {}
        cross = _highest(other_raw)
        if cross:
            add(f"origin keeps {raw}", f"{origin} with {raw} vs with {RAW}:{cross[0]}", _value(table, raw, origin),
                cross[1])
        add(f"projection leaves {raw}", f"{origin} vs {proj}, with {raw}", _value(table, raw, origin),
            _value(table, raw, proj))
        channel = _highest({o: _value(table, raw, f"{o}:{m}") for o in others})
        if channel:
            add("vs other methods", f"{origin} vs {channel[0]}:{m}, with {raw}", _value(table, raw, origin), channel[1])
            add("vs other methods", f"{proj} vs {channel[0]}:{m}, with {raw}", _value(table, raw, proj), channel[1])
        final = _highest({o: _value(table, raw, f"{o}:{FINAL}") for o in others})
        if final:
            add("vs other methods", f"{a}:{FINAL} vs {final[0]}:{FINAL}, with {raw}",
                _value(table, raw, f"{a}:{FINAL}"), final[1])
    add("projections agree", f"mean overlap among {a}:proj_* vs among {a}:<modality>",
        _mean_pairwise(table, [f"{a}:proj_{m}" for m in modalities]),
        _mean_pairwise(table, [f"{a}:{m}" for m in modalities]))
    return rows


def dataset_section(name: str, results: Dict[str, Dict[str, Any]], raw: Optional[pd.DataFrame],
                    claims: List[Dict[str, Any]], k: int) -> str:
    lines = [f"## {name}", "", "| method | test R@20 | test N@20 | valid R@20 | best epoch | epochs | s/epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method, r in results.items():
        sec = r.get("s_per_epoch")
        lines.append(f"| {method} | {r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | "
                     f"{r['valid']['recall@20']:.4f} | {r.get('best_epoch', '')} | {r.get('epochs_run', '')} | "
                     f"{'' if sec is None else f'{sec:.2f}'} |")
    if "lightgcn" in results:
        base = results["lightgcn"]["test"]["recall@20"]
        gaps = [(name, r["test"]["recall@20"] - base) for name, r in results.items() if name.startswith(ANCHORREC)]
        lines += [""] + [f"{name} minus LightGCN, test R@20: {gap:+.4f} ({'at least' if gap >= 0 else 'below'} "
                         f"LightGCN at this seed)." for name, gap in gaps]
    if raw is not None:
        lines += ["", f"Mean top-{k} neighbourhood overlap of each trained item space with each raw feature space "
                      "(1 = the same neighbours):", "",
                  "| space | " + " | ".join(raw.columns) + " |", "|---|" + "---:|" * len(raw.columns)]
        lines += [f"| {idx} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for idx, row in raw.iterrows()]
    if claims:
        lines += ["", "The paper's Fig. 4 statements and the comparison with the other methods (overlaps; holds = the "
                      "first is the higher):", "",
                  "| check | compared | first | second | holds |", "|---|---|---:|---:|---|"]
        lines += [f"| {c['check']} | {c['compared']} | {c['anchorrec']:.3f} | {c['other']:.3f} | "
                  f"{'yes' if c['holds'] else 'no'} |" for c in claims]
        paper = [c for c in claims if c["check"] != "vs other methods"]
        versus = [c for c in claims if c["check"] == "vs other methods"]
        lines += ["", f"Summary: {sum(c['holds'] for c in paper)} of {len(paper)} of the paper's statements hold; "
                      f"AnchorRec's space keeps more of the raw neighbourhood in {sum(c['holds'] for c in versus)} "
                      f"of {len(versus)} comparisons with the other methods."]
    return "\n".join(lines)


def report_header(args: argparse.Namespace, out: Path) -> List[str]:
    """The report's title, the command that reproduces it, what the figures are, and the machine."""
    command = f"python scripts/anchorrec_report.py --data {' '.join(args.data)} --seed {args.seed}"
    command += f" --set {' '.join(args.set)}" if args.set else ""
    command += "".join(f" --variant {v}" for v in args.variant)
    command += f" --epochs {args.epochs}" if args.epochs is not None else ""
    command += f" --k {args.k}"
    length = "trained to early stopping" if args.epochs is None else f"at most {args.epochs} epochs"
    return ["# AnchorRec: accuracy and neighbourhood structure", "",
            f"Produced by `{command}`: each method at its defaults (configs/methods/; AnchorRec also with the "
            f"settings of each --variant), one seed, {length}; test metrics at the best validation epoch; s/epoch is "
            "the median epoch (training + validation, first epoch excluded). The overlap tables come from `mmgraph "
            f"analyze overlap` on the same runs (CSV and heat map in `{out}/<dataset>/overlap/`).", "",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores; written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
            ""]


def parse_variants(items: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``["released:gate_source=embedding,amp_similarity=dot"]`` -> ``{"released": {"gate_source": ...}}``."""
    from mmgraph.errors import ConfigError
    from mmgraph.train.config import parse_overrides

    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        label, sep, body = item.partition(":")
        label = label.strip()
        if not sep or not label or not body.strip() or not label.replace("-", "_").isidentifier():
            raise ConfigError(f"--variant expects LABEL:KEY=VALUE[,KEY=VALUE...] with a word as LABEL, got {item!r}")
        if label in out:
            raise ConfigError(f"--variant {label!r} given twice")
        out[label] = parse_overrides([kv.strip() for kv in body.split(",") if kv.strip()])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--data", nargs="+", required=True, help="dataset folders (or synthetic specs)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated methods, AnchorRec among them (default: %(default)s)")
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--epochs", type=int, help="maximum epochs per run (default: the config's, early stopping)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for every run (e.g. threads=1)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE...]",
                   help="also train AnchorRec with these settings (accuracy rows only), e.g. released:"
                        "gate_source=embedding,amp_similarity=dot; repeatable")
    p.add_argument("--k", type=int, default=10, help="neighbours per item in the overlap (default: %(default)s)")
    p.add_argument("--out", default="runs/anchorrec_report", help="experiment folder (default: %(default)s)")
    p.add_argument("--doc", help="also write the report to this markdown file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    from mmgraph.errors import ConfigError
    from mmgraph.models.registry import get_model_class
    from mmgraph.train.config import parse_overrides
    from mmgraph.train.run import load_dataset

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if ANCHORREC not in methods:
        raise ConfigError(f"--methods must include {ANCHORREC}")
    overrides = {**parse_overrides(args.set), "seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    variants = parse_variants(args.variant)
    out = Path(args.out)
    sections, used = [], set()
    for spec in args.data:
        dataset = load_dataset(spec)
        label = dataset.name
        while label in used:   # two folders with one dataset name: never reuse the other's runs
            label += "_"
        used.add(label)
        folder = out / label
        results = {}
        for method in methods:
            run_dir = folder / method
            results[method] = dict(run_variant(method, spec, overrides, run_dir, data_spec=str(spec)))
            results[method]["s_per_epoch"] = epoch_seconds(run_dir)
        for name, settings in variants.items():
            run_dir = folder / f"{ANCHORREC}__{name}"
            key = f"{ANCHORREC} ({name}: {', '.join(f'{k}={v}' for k, v in settings.items())})"
            results[key] = dict(run_variant(ANCHORREC, spec, {**overrides, **settings}, run_dir, data_spec=str(spec)))
            results[key]["s_per_epoch"] = epoch_seconds(run_dir)
        # the overlap compares item spaces with the raw features: only the multimodal methods have such spaces
        multimodal = [m for m in methods if getattr(get_model_class(m), "multimodal", False)]
        raw, claims = None, []
        if dataset.modalities:
            table = analyze_overlap([folder / m for m in multimodal], folder / "overlap", k=args.k)
            raw = versus_raw(table)
            claims = claim_rows(table, multimodal)
        sections.append(dataset_section(label, results, raw, claims, args.k))
        print(sections[-1], flush=True)
    header = report_header(args, out)
    text = "\n".join(header + ["\n\n".join(sections), ""])
    for path in [out / "report.md"] + ([Path(args.doc)] if args.doc else []):
        with atomic_write(path) as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
