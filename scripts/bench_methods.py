#!/usr/bin/env python
"""Training-step and epoch times of every method (and plug-in combination), with a per-component
breakdown, printed as one table -- run it with nothing else busy on the machine::

    python scripts/bench_methods.py --data ../shared/data/tiktok --methods lightgcn,freedom,cm3,lightgcn+cross \\
        --set lightgcn:n_layers=2 lightgcn:reg_weight=1e-4 freedom:dropout=0.8 freedom:reg_weight=1e-4 \\
        cm3:n_ui_layers=3 cm3:gamma=0.9

Per entry (``METHOD`` or ``METHOD+PLUGIN``): the median over ``--steps`` training steps of the forward
(``model.loss`` + plug-in losses), the backward and the optimiser step; one validation; the per-epoch
work (the model's epoch hook + sampling one epoch); and the resulting epoch estimate
``steps_per_epoch x step + epoch work + validation``. Entries with a plug-in also print the ratio of
their step to the backbone's step (measured in the same run). ``--profile`` adds each entry's costliest
operators with their argument shapes, timed in place over the same steps run once more
(:class:`mmgraph.utils.op_timer.OpTimer`; torch.profiler's CPU activity doubles an MMGCN step here and
inflates its element-wise operators about tenfold); with ``--interleave``, a plug-in entry prints instead what
its steps spend beyond its backbone's, operator by operator.

``--floor`` adds the dense matrix products of one step (``GFLOP``) and the time they take run alone, back to
back on random operands of the same shapes (``products``, ms; :mod:`mmgraph.utils.products`), and the step's
sparse x dense products (the graph propagations) run alone on their own adjacencies (``sparse``, ms): a lower
bound on the step that no tuning of the rest removes. For a plug-in entry, ``floor x`` is the smallest ratio to
the backbone's step its products leave: (backbone step + the entry's extra product time) / backbone step.
``epoch floor`` is the same bound for an epoch (seconds): steps per epoch x the step's products + one
validation's products (dense and sparse, run alone) -- the figure to hold a peer's epoch time against.

``--interleave`` times each ``METHOD+PLUGIN`` entry step by step in alternation with its backbone (use it
on a shared machine: the load then weighs on both alike and the ratio is stable between runs).

An entry may end in ``@PRECISION`` (``mmgcn@medium``, ``freedom+brmrs@medium``): it runs at that
``matmul_precision`` (:mod:`mmgraph.nn.linear`), and its ratio column compares it with the same entry at the
default precision (with ``--interleave``, timed in alternation with it)::

    python scripts/bench_methods.py --data ../shared/data/tiktok --methods mmgcn@medium,vbpr@medium --interleave

``--set`` takes ``key=value`` for every entry or ``method:key=value`` for one method; a plug-in's settings
(``brmrs_theta=0.2``) reach only the entries that carry the plug-in, not the backbone timed beside them.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmgraph  # noqa: E402,F401  (before torch: OpenMP wait policy)
import torch  # noqa: E402

from mmgraph.errors import ConfigError  # noqa: E402
from mmgraph.train.config import load_config, parse_overrides  # noqa: E402
from mmgraph.train.schema import build_schema, plugin_keys  # noqa: E402
from mmgraph.train.run import build_model, build_plugins, build_run_graph, load_dataset  # noqa: E402
from mmgraph.train.trainer import Trainer  # noqa: E402
from mmgraph.nn.linear import PRECISIONS, matmul_precision  # noqa: E402
from mmgraph.utils.denormals import flush_denormal_enabled, flush_for, set_flush_denormal  # noqa: E402


def _split_sets(items: List[str]) -> Dict[str, Dict[str, object]]:
    scoped: Dict[str, List[str]] = {"*": []}
    for item in items:
        head, _, rest = item.partition("=")
        if ":" in head:
            method, key = head.split(":", 1)
            scoped.setdefault(method, []).append(f"{key}={rest}")
        else:
            scoped["*"].append(item)
    return {k: parse_overrides(v) for k, v in scoped.items()}


def _sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously: a timer must not stop before it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _entry_overrides(method: str, plugins: List[str], overrides: Dict[str, object]) -> Dict[str, object]:
    """``overrides`` less the settings of plug-ins the entry does not carry: ``--set brmrs_theta=0.2`` sets
    ``freedom+brmrs`` and leaves the ``freedom`` timed beside it as it is (a key the entry itself knows stays)."""
    own = build_schema(method, plugins)
    foreign = {k for name, keys in plugin_keys().items() if name not in plugins for k in keys}
    return {k: v for k, v in overrides.items() if k in own or k not in foreign}


def _setup(entry: str, dataset, sets, keep: int) -> Dict[str, object]:
    """Build one entry's model, plug-ins and trainer; sample one epoch. Returns ``step(batch) -> (forward,
    backward, optimiser) seconds``, the epoch's first ``keep`` batches and its number of batches, the trainer
    and the per-epoch work (seconds). Only ``keep`` batches are held: a whole epoch of sampled subgraphs
    (``graph_batching: sampled``) is gigabytes at Electronics scale, and holding it slowed the sampling
    being timed (LightGCN on the 1x preset: 29.9 s an epoch, 17.3 s when not held)."""
    entry, _, precision = entry.partition("@")
    method, *plugins = entry.split("+")
    overrides = {**sets.get("*", {}), **sets.get(method, {}), "log_geometry": False}
    overrides = _entry_overrides(method, plugins, overrides)
    if precision:
        overrides["matmul_precision"] = precision
    if plugins:
        overrides["plugins"] = plugins
    cfg = load_config(method, dataset.name, overrides=overrides)
    cfg = {k: v for k, v in cfg.items() if k != "grid"}
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(int(cfg.get("seed", 999)))
    data = build_run_graph(method, dataset, cfg)
    model = build_model(method, data, cfg)
    trainer = Trainer(model, dataset, cfg, None, build_plugins(cfg, data, model), progress=False)
    model.train()
    # as Trainer.fit trains (this script times the steps outside fit)
    set_flush_denormal(flush_for(cfg, trainer.device))

    def clock() -> float:
        _sync(trainer.device)
        return time.perf_counter()

    t0 = clock()
    model.on_epoch_start(0)
    batches, n_batches = [], 0
    for batch in trainer.sampler.epoch():
        if len(batches) < keep:
            batches.append(batch)
        n_batches += 1
    epoch_work = clock() - t0

    precision = str(cfg.get("matmul_precision", "highest"))

    def at_precision(fn):   # as Trainer.fit runs its steps and validations
        def run(*args):
            with matmul_precision(precision, trainer.device):
                return fn(*args)
        return run

    @at_precision
    def step(batch):
        batch = batch.to(trainer.device)
        trainer.optimizer.zero_grad(set_to_none=True)
        t1 = clock()
        out = model.loss(batch)
        loss = out.loss
        for plugin in trainer.plugins:
            for value in plugin.loss(batch, out).values():
                loss = loss + value
        t2 = clock()
        loss.backward()
        t3 = clock()
        trainer.optimizer.step()
        t4 = clock()
        return t2 - t1, t3 - t2, t4 - t3

    for b in batches[:2]:  # warm-up (allocator, lazy init)
        step(b)
    return {"step": step, "batches": batches, "n_batches": n_batches, "trainer": trainer, "epoch_work": epoch_work,
            "validate": at_precision(trainer.validate)}


def _summary(times: List[tuple], setup: Dict[str, object]) -> Dict[str, float]:
    fwd, bwd, opt = zip(*times)
    med = {k: statistics.median(v) for k, v in (("forward", fwd), ("backward", bwd), ("optimizer", opt))}
    step_s = sum(med.values())
    valid = _timed(setup["validate"])
    n = setup["n_batches"]
    return {**med, "step": step_s, "steps_per_epoch": n, "epoch_work": setup["epoch_work"], "valid": valid,
            "epoch": n * step_s + setup["epoch_work"] + valid}


def _kept(steps: int) -> int:
    """Batches an entry holds: the two warm-up steps' and the timed steps' (:func:`_timed_batches`)."""
    return 2 + max(1, steps)


def _timed_batches(batches, steps: int):
    return [batches[k % len(batches)] for k in range(2, 2 + max(1, steps))]  # short epochs: batches are reused


def _floor(setup: Dict[str, object]) -> Dict[str, float]:
    """The products of one more step and of one validation: ``{"gflop": ..., "products": dense seconds run
    alone, "sparse": sparse seconds run alone, "valid_products": the validation's, dense + sparse}``."""
    from mmgraph.utils.products import ProductCounter

    trainer = setup["trainer"]
    step, valid = ProductCounter(), ProductCounter()
    with step:   # a timed batch: the epoch's last one may be a short remainder (kept when steps >= the epoch's)
        setup["step"](_timed_batches(setup["batches"], 1)[0])
    with valid:
        setup["validate"]()
    return {"gflop": step.gflop(), "products": step.time_alone(device=trainer.device),
            "sparse": step.time_sparse_alone(),
            "valid_products": valid.time_alone(device=trainer.device) + valid.time_sparse_alone()}


def bench_entry(entry: str, dataset, sets, steps: int, profile: bool, floor: bool = False) -> Dict[str, float]:
    setup = _setup(entry, dataset, sets, _kept(steps))
    batches = _timed_batches(setup["batches"], steps)
    times = [setup["step"](b) for b in batches]
    if profile:
        timer = _op_times(setup, batches)
        print(f"\n{entry}: costliest operators, per step (in place, mean of {len(batches)} steps)")
        print(timer.table(rows=12, per=len(batches)))
    return {**_summary(times, setup), **(_floor(setup) if floor else {})}


def _op_times(setup: Dict[str, object], batches):
    """The operators of ``batches``' steps run once more under :class:`~mmgraph.utils.op_timer.OpTimer` (after
    the timed steps, so that the timer's overhead never reaches the table's figures)."""
    from mmgraph.utils.op_timer import OpTimer

    with OpTimer() as timer:
        for b in batches:
            setup["step"](b)
    return timer


def base_entry(entry: str) -> Optional[str]:
    """The entry ``entry``'s ratio compares with: the same entry at the default precision for ``...@PRECISION``,
    the backbone for ``METHOD+PLUGIN``, else None."""
    if "@" in entry:
        return entry.partition("@")[0]
    return entry.split("+")[0] if "+" in entry else None


def bench_pair(backbone: str, entry: str, dataset, sets, steps: int, floor: bool = False,
               profile: bool = False) -> Dict[str, Dict[str, float]]:
    """``backbone`` and ``entry`` (``backbone+plugin``, or an entry and ``entry@precision``) timed step by step
    in alternation, so that the load of a shared machine weighs on both alike; the ratio of the medians is then
    comparable between runs. With ``profile``, prints what the entry's steps spend beyond the backbone's,
    operator by operator."""
    a, b = _setup(backbone, dataset, sets, _kept(steps)), _setup(entry, dataset, sets, _kept(steps))
    ta, tb = [], []
    batches_a, batches_b = _timed_batches(a["batches"], steps), _timed_batches(b["batches"], steps)
    for ba, bb in zip(batches_a, batches_b):
        ta.append(a["step"](ba))
        tb.append(b["step"](bb))
    if profile:
        base, plus = _op_times(a, batches_a), _op_times(b, batches_b)
        print(f"\n{entry}: what its steps spend beyond {backbone}'s, per step (operators timed in place, mean of "
              f"{len(batches_b)} steps each)")
        print(plus.added_table(base, rows=15, per=len(batches_b), per_base=len(batches_a)))
    return {backbone: {**_summary(ta, a), **(_floor(a) if floor else {})},
            entry: {**_summary(tb, b), **(_floor(b) if floor else {})}}


def keeping_denormal_mode(fn):
    """``fn`` with the caller's flush-denormal mode back after it: each entry's setup sets its own (see
    :func:`_setup`)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        flushing = flush_denormal_enabled()
        try:
            return fn(*args, **kwargs)
        finally:
            set_flush_denormal(flushing)
    return run


def main(argv=None) -> int:
    return keeping_denormal_mode(_main)(argv)


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("::")[0].split()))
    p.add_argument("--data", required=True, help="dataset folder or synthetic[:...]")
    p.add_argument("--methods", default="mf,lightgcn,directau,vbpr,freedom,bm3,cm3",
                   help="comma-separated METHOD or METHOD+PLUGIN entries, each with an optional @PRECISION "
                        "(matmul_precision)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="[METHOD:]KEY=VALUE")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per entry")
    p.add_argument("--profile", action="store_true", help="print the top operators of each entry")
    p.add_argument("--floor", action="store_true",
                   help="add each step's dense products (GFLOP) and their time run alone: the step's lower bound")
    p.add_argument("--interleave", action="store_true",
                   help="time each METHOD+PLUGIN (or ENTRY@PRECISION) entry's steps alternately with its backbone's "
                        "(the entry at the default precision): a ratio robust to a shared machine's changing load; "
                        "the base row shows its last pair's timings")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    dataset = load_dataset(args.data)
    sets = _split_sets(args.set)
    entries = [e.strip() for e in args.methods.split(",") if e.strip()]
    bad = [e for e in entries if "@" in e and e.partition("@")[2] not in PRECISIONS]
    if bad:
        raise ConfigError(f"--methods {bad[0]}: the precision after @ must be one of {', '.join(PRECISIONS)}")
    unknown = sorted(set(sets) - {"*"} - {e.partition("@")[0].split("+")[0] for e in entries})
    if unknown:
        raise ConfigError(f"--set {unknown[0]}:...: {unknown[0]} is not among --methods ({args.methods})")
    rows: Dict[str, Dict[str, float]] = {}
    bases: Dict[str, Dict[str, float]] = {}   # the backbone timings each plug-in entry is compared with
    for e in entries:
        base = base_entry(e)
        if args.interleave and base is not None:
            pair = bench_pair(base, e, dataset, sets, args.steps, args.floor, args.profile)
            rows[base], rows[e], bases[e] = pair[base], pair[e], pair[base]
        elif not (args.interleave and e in rows):
            rows[e] = bench_entry(e, dataset, sets, args.steps, args.profile, args.floor)
    print(f"\n{dataset.name}: {torch.get_num_threads()} threads, median of {args.steps} steps (ms) and "
          "seconds per epoch")
    header = (f"{'entry':22s} {'forward':>8s} {'backward':>8s} {'optim':>7s} {'step':>7s} {'x base':>10s} "
              f"{'steps':>5s} {'epoch work':>10s} {'valid':>6s} {'epoch s':>8s}"
              + (f" {'GFLOP':>6s} {'products':>8s} {'sparse':>6s} {'floor x':>7s} {'epoch floor':>11s}"
                 if args.floor else ""))
    print(header)
    print("-" * len(header))
    for entry, r in rows.items():
        base = bases.get(entry, rows.get(base_entry(entry) or ""))
        ratio = f"x{r['step'] / base['step']:.2f}" if base is not None and base_entry(entry) else ""
        print(f"{entry:22s} {1e3 * r['forward']:8.1f} {1e3 * r['backward']:8.1f} {1e3 * r['optimizer']:7.1f} "
              f"{1e3 * r['step']:7.1f} {ratio:>10s} {r['steps_per_epoch']:5d} {r['epoch_work']:10.3f} "
              f"{r['valid']:6.3f} {r['epoch']:8.2f}" + (_floor_columns(r, base, entry) if args.floor else ""))
    return 0


def _floor_columns(r: Dict[str, float], base: Dict[str, float], entry: str) -> str:
    ratio = ""
    if base is not None and base_entry(entry) and "@" not in entry:   # (the floor times float32 products)
        extra = r["products"] + r["sparse"] - base["products"] - base["sparse"]
        ratio = f"x{(base['step'] + max(0.0, extra)) / base['step']:.2f}"
    epoch = r["steps_per_epoch"] * (r["products"] + r["sparse"]) + r["valid_products"]
    return f" {r['gflop']:6.2f} {1e3 * r['products']:8.1f} {1e3 * r['sparse']:6.1f} {ratio:>7s} {epoch:11.2f}"


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
