"""Run a benchmark: every (method, dataset, seed), hyper-parameters selected on validation only.

A *method* is a name from the registry, optionally with plug-ins: ``lightgcn+cross`` trains LightGCN with
``plugins=[cross]``, ``freedom+brmrs+cross`` with ``plugins=[brmrs, cross]``.

Each (dataset, method) is one grid search (:func:`mmgraph.train.run.grid_search`) whose ``seed`` axis
holds the benchmark's seeds: without ``grid`` that is the method's config repeated once per seed; with
``grid`` every point of the method's ``grid:`` block (with ``--set`` values fixing keys and ``--set``
lists replacing axes) runs once per seed, and the point with the best *mean validation* metric over the
seeds is kept. Test metrics never take part in a choice.

Folder layout (``out``)::

    benchmark.json                      what was asked (methods, datasets, seeds, settings, command)
    runs/<dataset>/<method>/            a grid folder: grid_summary.json, point_000/seed_1/ (run folders)
    results.csv, summary.md, ...        written by :mod:`mmgraph.benchmark.report`

Finished runs are reused and interrupted ones resumed, so running the same command again continues an
interrupted benchmark; adding methods or datasets to it trains only what is new.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from mmgraph.errors import ConfigError

log = logging.getLogger("mmgraph.benchmark")

#: the metrics the summary reports (test split, best validation epoch)
SUMMARY_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


@dataclass(frozen=True)
class MethodSpec:
    """``label`` as given (``lightgcn+cross``), the registry ``method``, its ``plugins`` and fixed
    ``settings`` (``((key, value), ...)``; e.g. an ablation variant ``(("fusion", "linear"),)``), which win
    over ``--set``."""
    label: str
    method: str
    plugins: tuple = ()
    settings: tuple = ()

    @property
    def slug(self) -> str:
        text = self.label.replace("+", "_plus_").replace("/", "_")
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_.") or "method"


def parse_methods(text: str) -> List[MethodSpec]:
    """``"lightgcn,freedom+cross"`` -> specs; unknown methods or plug-ins are one-line errors."""
    from mmgraph.models.registry import available_methods
    from mmgraph.plugins import available_plugins
    from mmgraph.train.schema import suggest

    methods, plugins = available_methods(), available_plugins()
    specs: List[MethodSpec] = []
    for item in (text or "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        name, *extra = [part.strip() for part in item.split("+")]
        if name not in methods:
            close = suggest(name, methods)
            raise ConfigError(f"--methods: unknown method {name!r}; available: {', '.join(methods)}"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
        for plugin in extra:
            if plugin not in plugins:
                close = suggest(plugin, plugins)
                raise ConfigError(f"--methods {item}: unknown plug-in {plugin!r}; available: "
                                  f"{', '.join(plugins) or 'none'}" + (f"; did you mean {', '.join(close)}?"
                                                                       if close else ""))
        if len(set(extra)) != len(extra):
            raise ConfigError(f"--methods {item}: a plug-in is named twice")
        spec = MethodSpec("+".join([name, *extra]), name, tuple(extra))
        if any(s.label == spec.label for s in specs):
            raise ConfigError(f"--methods: {spec.label} is named twice")
        specs.append(spec)
    if not specs:
        raise ConfigError("--methods: give at least one method, e.g. --methods lightgcn,freedom")
    return specs


def seed_list(n: int, first: int = 1) -> List[int]:
    """``n`` consecutive seeds from ``first`` (a one-line error for ``n < 1`` or a negative seed)."""
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1 (the number of seeds per method), got {n}")
    if first < 0:
        raise ConfigError(f"--first-seed must be >= 0, got {first}")
    return list(range(first, first + n))


def method_overrides(spec: MethodSpec, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The ``--set`` values that ``spec``'s settings declare (a key of another method, or of a plug-in
    it does not use, is left out), with its plug-ins."""
    from mmgraph.train.schema import build_schema

    schema = build_schema(spec.method, list(spec.plugins))
    mine = {k: v for k, v in overrides.items() if k in schema}
    mine.update(dict(spec.settings))
    mine["plugins"] = list(spec.plugins)
    return mine


def check_overrides(specs: Sequence[MethodSpec], overrides: Dict[str, Any]) -> None:
    """Every ``--set`` key must be a setting of at least one benchmarked method; ``seed`` and ``plugins``
    have their own flags."""
    from mmgraph.train.schema import build_schema

    for key in ("seed", "plugins"):
        if key in overrides:
            flag = "--seeds N / --first-seed S" if key == "seed" else "METHOD+PLUGIN in --methods"
            raise ConfigError(f"--set {key}=...: the benchmark sets {key}; use {flag}")
    schemas = [build_schema(s.method, list(s.plugins)) for s in specs]
    for key in overrides:
        if not any(key in schema for schema in schemas):
            schemas[0].setting(key, "--set")   # raises, naming the closest valid keys
    if "topk" in overrides:
        from mmgraph.benchmark.report import METRICS
        given = overrides["topk"] if isinstance(overrides["topk"], list) else [overrides["topk"]]
        ks, reported = {int(k) for k in given}, sorted({int(m.split("@")[1]) for m in METRICS})
        needed = [k for k in reported if k not in ks]
        if needed:
            raise ConfigError(f"--set topk={sorted(ks)}: the benchmark's report compares Recall and NDCG at "
                              f"{', '.join(map(str, reported))}; add {', '.join(map(str, needed))} to topk")


@dataclass
class Job:
    """One (dataset, method) grid: its resolved config (with the seed axis) and its folder."""
    dataset_name: str
    data_spec: str
    spec: MethodSpec
    config: Dict[str, Any]
    folder: Path
    n_runs: int

    @property
    def points(self) -> int:
        from mmgraph.train.run import grid_points
        return len(grid_points(self.config["grid"])[1])


@dataclass
class BenchmarkResult:
    """Per (dataset, method): the grid summary; ``rows``: one dict per run of each selected point."""
    out: Path
    specs: List[MethodSpec]
    datasets: List[str]
    seeds: List[int]
    reference: str
    meta: Dict[str, Any] = field(default_factory=dict)
    summaries: Dict[tuple, Dict[str, Any]] = field(default_factory=dict)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    trained: int = 0     # runs trained by this call, resumed ones included
    resumed: int = 0     # of which continued from last.pt (interrupted, or finished and given more epochs)
    reused: int = 0


def plan(specs: Sequence[MethodSpec], datasets: Dict[str, Any], seeds: Sequence[int], out: Path,
         grid: bool = False, overrides: Optional[Dict[str, Any]] = None) -> List[Job]:
    """Resolve every (dataset, method)'s config before anything trains (bad settings fail at once)."""
    from mmgraph.train.config import load_config
    from mmgraph.train.run import grid_points

    overrides = dict(overrides or {})
    check_overrides(specs, overrides)
    jobs = []
    for name, (spec_text, dataset) in datasets.items():
        for spec in specs:
            mine = method_overrides(spec, overrides)
            user_axes = sorted(k for k, v in mine.items() if isinstance(v, list) and k != "plugins"
                               and not _list_valued(spec, k))
            if user_axes and not grid:
                raise ConfigError(f"--set {user_axes[0]}=[...] is a grid axis; add --grid to search it, or give "
                                  "one value")
            mine["seed"] = list(seeds)
            config = load_config(spec.method, dataset.name, overrides=mine, method_grid=grid)
            _, points, _ = grid_points(config["grid"])
            jobs.append(Job(name, spec_text, spec, config, out / "runs" / name / spec.slug,
                            len(points) * len(seeds)))
    return jobs


def _list_valued(spec: MethodSpec, key: str) -> bool:
    from mmgraph.train.schema import build_schema
    return build_schema(spec.method, list(spec.plugins)).settings[key].accepts_list


def load_datasets(paths: Sequence[str]) -> Dict[str, Any]:
    """``{name: (spec, RecDataset)}`` (folders as absolute paths); two datasets with the same name are an
    error."""
    from mmgraph.train.run import load_dataset

    out: Dict[str, Any] = {}
    if not paths:
        raise ConfigError("--data: give at least one dataset folder (or synthetic[:...])")
    for spec in paths:
        ds = load_dataset(spec)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in ds.name) or "data"
        if name in out:
            raise ConfigError(f"--data: two datasets are named {name!r} ({out[name][0]} and {spec}); rename a "
                              "folder")
        synthetic = str(spec).split(":", 1)[0] == "synthetic"
        out[name] = (str(spec) if synthetic else str(Path(spec).resolve()), ds)   # run folders can reload it
    return out


def run_benchmark(specs: Sequence[MethodSpec], data: Sequence[str], seeds: Sequence[int], out,
                  grid: bool = False, overrides: Optional[Dict[str, Any]] = None,
                  reference: Optional[str] = None, progress: Optional[bool] = None,
                  epoch_progress: bool = False, command: Optional[str] = None,
                  on_run: Optional[Callable[[Dict[str, Any]], None]] = None,
                  on_job: Optional[Callable[["BenchmarkResult"], None]] = None) -> BenchmarkResult:
    """Train (or reuse) every run of the benchmark and collect the selected points' runs.

    Args:
        specs: the methods (:func:`parse_methods`); ``reference`` (default: the first) is the method
            every other one is tested against.
        data: dataset folders or ``synthetic[:...]`` specs.
        seeds: the seeds every (method, dataset) runs with (:func:`seed_list`).
        out: the benchmark folder (locked while it runs).
        grid: search each method's grid (selected on mean validation over the seeds).
        overrides: ``--set`` values; each method takes the keys it declares.
        progress: a progress bar over every run of the job (``None``: when stderr is a terminal).
        epoch_progress: also a bar per epoch of the running run.
        on_run: called before and after each run (see :func:`mmgraph.train.run.grid_search`).
        on_job: called with the result so far after each (dataset, method) (e.g. to write partial reports).

    Seeds may change between two calls on the same folder (finished seeds are reused, new ones run);
    other settings of a (dataset, method) already there may not.
    """
    from mmgraph.train.rundir import RunLock, folder_state
    from mmgraph.train.run import grid_search
    from mmgraph.utils.io import write_json

    specs = list(specs)
    labels = [s.label for s in specs]
    slugs = [s.slug for s in specs]
    if len(set(slugs)) != len(slugs) or len(set(labels)) != len(labels):
        raise ConfigError(f"two methods share a name or a folder name: {', '.join(labels)}")
    given = (reference or labels[0]).strip()
    reference = next((label for label in labels if label.lower() == given.lower()), None)
    if reference is None:
        raise ConfigError(f"--reference {given}: not one of --methods ({', '.join(labels)})")
    seeds = list(seeds)
    out = Path(out)
    datasets = load_datasets(data)
    jobs = plan(specs, datasets, seeds, out, grid, overrides)
    meta = {"methods": labels, "data": {n: s for n, (s, _) in datasets.items()}, "seeds": seeds, "grid": grid,
            "overrides": overrides or {}, "reference": reference,
            "metric": str(jobs[0].config.get("valid_metric", "recall@20")) if jobs else "recall@20",
            "command": command or " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result = BenchmarkResult(out, specs, list(datasets), seeds, reference, meta)
    total = sum(j.n_runs for j in jobs)
    with RunLock(out), _job_bar(total, progress) as bar:
        for job in jobs:
            state = folder_state(job.folder)
            if state in ("finished", "interrupted"):
                raise ConfigError(f"{job.folder} holds a single run, not a benchmark grid; use another --out")
            dataset = datasets[job.dataset_name][1]

            resumed = set()

            def callback(info, job=job, resumed=resumed):
                if info["event"] == "start":
                    # an interrupted run, or a finished one extended to more epochs: either continues from last.pt
                    if folder_state(job.folder / info["dir"]) in ("interrupted", "finished"):
                        resumed.add(info["dir"])
                    bar.set_postfix_str(f"{job.dataset_name} {job.spec.label} seed {info['seed']}"
                                        + (f" point {info['point'] + 1}/{job.points}" if job.points > 1 else ""))
                else:
                    result.reused += bool(info["reused"])
                    result.trained += not info["reused"]
                    was_resumed = not info["reused"] and info["dir"] in resumed
                    result.resumed += was_resumed
                    r = info["result"]
                    bar.write(f"{job.dataset_name} {job.spec.label} seed {info['seed']}"
                              + (f" {info['params']}" if info["params"] else "")
                              + f": valid R@20 {r['valid'].get('recall@20', float('nan')):.4f} test R@20 "
                              f"{r['test'].get('recall@20', float('nan')):.4f} (best epoch {r['best_epoch']} of "
                              f"{r['epochs_run']}{', reused' if info['reused'] else ''}"
                              f"{', resumed' if was_resumed else ''})")
                    bar.update(1)
                if on_run is not None:
                    on_run({**info, "dataset": job.dataset_name, "method": job.spec.label})

            try:
                summary = grid_search(job.spec.method, dataset, job.config, job.folder,
                                      progress=epoch_progress if epoch_progress else False,
                                      data_spec=job.data_spec, resume=state.startswith("grid"), on_run=callback)
            except ConfigError as exc:
                if "cannot resume the grid" in str(exc):
                    raise ConfigError(f"{exc}; {out} benchmarked {job.spec.label} on {job.dataset_name} with other "
                                      "settings (only --seeds may change): use another --out") from None
                raise
            result.summaries[(job.dataset_name, job.spec.label)] = summary
            best = summary["best"]
            for run in best["runs"]:
                result.rows.append({
                    "dataset": job.dataset_name, "method": job.spec.label, "seed": run["seed"],
                    "params": best["params"], "point": best["point"],
                    "run_dir": str((job.folder / run["dir"]).relative_to(out)),
                    "valid": run["valid"], "test": run["test"], "best_epoch": run["best_epoch"],
                    "epochs_run": run["epochs_run"], "seconds_per_epoch": run["seconds_per_epoch"]})
            if on_job is not None:
                on_job(result)
        # written once every run is done: it describes the results next to it
        meta.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), trained=result.trained, resumed=result.resumed,
                    reused=result.reused)
        write_json(out / "benchmark.json", meta)
    return result


@contextlib.contextmanager
def _job_bar(total: int, progress: Optional[bool]):
    """A tqdm bar over the job's runs; the console shows one line per finished run instead of the
    per-epoch log (each run's train.log keeps it)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="benchmark", unit="run", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    quiet = _QuietEpochs()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield _Bar(bar)
    finally:
        for h in handlers:
            h.removeFilter(quiet)
        bar.close()


class _QuietEpochs(logging.Filter):
    """Drops the library's INFO records on the console (per-epoch lines) during a benchmark."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("mmgraph") and record.levelno < logging.WARNING)


class _Bar:
    """The job bar; ``write`` prints a line above it (to stdout when the bar is hidden)."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int) -> None:
        self.bar.update(n)

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def write(self, text: str) -> None:
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text)
