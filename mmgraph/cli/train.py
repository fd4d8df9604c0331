"""``mmgraph train`` and ``mmgraph methods``."""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Dict, List, Optional

from mmgraph.errors import ConfigError

TRAIN_EPILOG = """settings:
  --set KEY=VALUE sets any key of `mmgraph methods --show METHOD` (unknown keys and bad values are errors).
  A list on a tunable key is a grid axis (--set reg_weight=[1e-4,1e-3] --grid); keys whose values are lists
  take it as their value (--set plugins=[cross] topk=[10,20]). --grid searches your axes when you give any,
  else the method's grid: block (--method-grid adds the method's axes to yours). --set seed=[1,2,3] --grid
  repeats each point once per seed and reports every seed; a point is chosen on the mean over seeds.

run folders (--out DIR):
  DIR is locked while a process writes it; a run already there is never replaced without --overwrite.
  --resume --out DIR continues the run with the method, data, config, seed and graph recorded in DIR
  (other values for these are errors; --epochs, --device and --set threads=N may change).
"""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a method on a dataset and print its metrics",
                       description="Train METHOD on DATA (an MMRec atomic folder, or 'synthetic').",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", help="method name (see `mmgraph methods`); required unless --resume")
    p.add_argument("--data", help="dataset folder, or synthetic[:users=..,items=..,seed=..]; required unless "
                                  "--resume")
    p.add_argument("--config", help="extra YAML config file (key: value lines, optional grid: block)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override settings (see below)")
    p.add_argument("--seed", type=int, help="random seed (default from config); shortcut for --set seed=N")
    p.add_argument("--out", help="run folder (config, history, checkpoints, final metrics); without it "
                                 "nothing is written")
    p.add_argument("--graph", help="train on this graph file (written by `mmgraph graph build`, possibly with "
                                   "your own relations) instead of building the method's graph")
    p.add_argument("--resume", action="store_true", help="continue the run (or grid) in --out from the folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--grid", action="store_true",
                   help="train every grid point (your --set axes, else the method's grid), select on validation")
    p.add_argument("--method-grid", action="store_true",
                   help="with --grid: search the method's grid: block together with your --set axes")
    p.add_argument("--epochs", type=int, help="maximum epochs (shortcut for --set epochs=N)")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto (shortcut for --set device=...)")
    p.add_argument("--no-progress", action="store_true", help="hide the per-epoch progress bar")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N processes (DistributedDataParallel under torchrun: gloo on "
                        "CPU, NCCL with one GPU each); the same global batch, so full-graph training gives the "
                        "result of one process up to float rounding (README, Scaling out)")
    p.set_defaults(func=run_train)

    m = sub.add_parser("methods", help="list the methods and plug-ins; --show NAME prints its settings")
    m.add_argument("--show", metavar="NAME", help="a method or plug-in: its settings with defaults, types and "
                                                  "roles (grid axis / value / fixed)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_methods)


def _print_metrics(result: dict, ks=(10, 20, 50)) -> None:
    """The valid and test metrics at ``ks``, or at every cut-off the run computed when that is not all of
    ``ks`` (``--set topk=[5,100]``)."""
    names = ["recall", "ndcg", "precision", "map"]
    computed = sorted({int(k) for name, _, k in (key.partition("@") for key in result["valid"])
                       if name in names and k.isdigit()})
    if not set(ks) <= set(computed):
        ks = computed
    for split in ("valid", "test"):
        metrics = result[split]
        cells = [f"{n}@{k} {metrics[f'{n}@{k}']:.4f}" for n in names for k in ks if f"{n}@{k}" in metrics]
        print(f"{split:5s}: " + "  ".join(cells))
    print(f"best epoch {result['best_epoch']} of {result['epochs_run']}, "
          f"{result['seconds_per_epoch']:.2f} s/epoch (train + validation)")


def _overrides(args: argparse.Namespace) -> Dict[str, Any]:
    from mmgraph.train.config import parse_overrides

    overrides = parse_overrides(args.set)
    from mmgraph.train.run import SHORTCUT_FLAGS

    for key in SHORTCUT_FLAGS:
        value = getattr(args, key)
        if value is not None:
            if key in overrides and overrides[key] != value:
                raise ConfigError(f"--{key} {value} and --set {key}={overrides[key]} disagree; give one")
            overrides[key] = value
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from mmgraph.train import distributed

    if args.nproc != 1:
        return distributed.launch(args.nproc, getattr(args, "argv", None) or sys.argv[1:])
    import contextlib
    import os

    ctx = distributed.init_from_env(args.device or "auto")
    try:
        if ctx.is_main:
            try:
                return _run_train(args, writer=True)
            except KeyboardInterrupt:
                if not _resume_hint(args.out):
                    raise
                return 130
        args.no_progress = True  # every rank trains; rank 0 alone reports
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return _run_train(args, writer=False)
    finally:
        distributed.shutdown(ctx)


def _resume_hint(out) -> bool:
    """After Ctrl-C: say so with the command that continues the run, when its folder holds one to continue."""
    from mmgraph.train.rundir import folder_state
    try:
        state = folder_state(out) if out else "missing"
    except Exception:     # never hide the interruption behind an error of the hint
        return False
    if state not in ("interrupted", "grid"):
        return False
    print(f"mmgraph: interrupted; continue the run with: mmgraph train --resume --out {out}", file=sys.stderr)
    return True


NO_RUN_FOLDER = "no run folder written (add --out DIR to keep the config, checkpoints and metrics)"


def _run_train(args: argparse.Namespace, writer: bool = True) -> int:
    """``writer``: this process writes ``--out`` (rank 0 under torchrun)."""
    from mmgraph.train.config import load_config
    from mmgraph.train.rundir import preflight
    from mmgraph.train.run import grid_search, load_dataset, resume_run, train

    progress = False if args.no_progress else None
    overrides = _overrides(args)
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR (the folder of the run to continue)")
        for flag in ("overwrite", "grid", "method_grid"):
            if getattr(args, flag):
                raise ConfigError(f"--resume continues the run in {args.out} as it was started; drop "
                                  f"--{flag.replace('_', '-')}")
        kind, result = resume_run(args.out, args.method, args.data, args.config, overrides, args.graph, progress)
        if kind == "grid":
            _print_grid(result, args.out)
        else:
            _print_metrics(result)
            print(f"run folder: {args.out}")
        return 0
    for flag in ("method", "data"):
        if not getattr(args, flag):
            raise ConfigError(f"--{flag} is required (unless --resume continues a run from its --out folder)")
    if "+" in args.method:
        base, *plugins = args.method.split("+")
        raise ConfigError(f"--method {args.method}: give one method and its plug-ins with --set: --method {base} "
                          f"--set plugins=[{','.join(plugins)}] (METHOD+PLUGIN is mmgraph benchmark's shorthand)")
    if args.method_grid and not args.grid:
        raise ConfigError("--method-grid only applies with --grid")
    if args.out and writer:
        preflight(args.out, args.overwrite)   # a busy or occupied folder fails before the data is loaded
    dataset = load_dataset(args.data)
    config = load_config(args.method, dataset.name, args.config, overrides,
                         method_grid=True if args.method_grid else None)
    if args.grid:
        if not config["grid"]:
            raise ConfigError(f"--grid: method {args.method!r} has no grid: block and --set gave no list on a "
                              "tunable key (e.g. --set reg_weight=[1e-4,1e-3])")
        summary = grid_search(args.method, dataset, config, args.out, progress=progress, data_spec=args.data,
                              graph=args.graph, overwrite=args.overwrite)
        _print_grid(summary, args.out)
        if not args.out:
            print(NO_RUN_FOLDER)
        return 0
    user_axes = [k for k, v in overrides.items() if isinstance(v, list) and k in config["grid"]]
    if user_axes or _config_file_grid(args):
        axes = ", ".join(f"{k}={config['grid'][k]}" for k in user_axes) or f"the grid: block of {args.config}"
        what = "asks for one run per seed" if user_axes == ["seed"] else "is a grid axis" if len(user_axes) == 1 \
            else "define a grid" if user_axes else "defines a grid"
        raise ConfigError(f"{axes} {what}; add --grid to run it, or give one value")
    result, _ = train(args.method, dataset, {**config, "grid": {}}, args.out, progress=progress,
                      data_spec=args.data, graph=args.graph, overwrite=args.overwrite)
    _print_metrics(result)
    print(f"run folder: {args.out}" if args.out else NO_RUN_FOLDER)
    return 0


def _config_file_grid(args) -> bool:
    if not args.config:
        return False
    from mmgraph.train.config import _read_yaml
    return bool(_read_yaml(args.config).get("grid"))


def _print_grid(summary: Dict[str, Any], out: Optional[str]) -> None:
    metric = summary["metric"]
    seeds = summary.get("seeds")
    for row in summary["points"]:
        cells = f"valid {metric} {row['valid'][metric]:.4f}"
        if row.get("valid_std"):
            cells += f" ± {row['valid_std'][metric]:.4f}"
        cells += f"  test {metric} {row['test'][metric]:.4f}"
        if row.get("test_std"):
            cells += f" ± {row['test_std'][metric]:.4f}"
        where = f"  ({out}/{row['dir']})" if out else ""
        print(f"point {row['point']:3d} {row['params']}: {cells}{where}")
    best = summary["best"]
    runs = best.get("runs") or []
    if len(summary["points"]) > 1:
        over = f" (mean over seeds {', '.join(map(str, seeds))})" if seeds else ""
        print(f"selected on validation{over}: point {best['point']} {best['params']}"
              + (f" -> {out}/{best['dir']}" if out else ""))
    if seeds:
        print(f"each seed of point {best['point']} (repetitions, not a choice):")
        for r in runs:
            print(f"  seed {r['seed']}: valid {metric} {r['valid'][metric]:.4f}  test {metric} "
                  f"{r['test'][metric]:.4f}  best epoch {r['best_epoch']} of {r['epochs_run']}")
        print(f"  mean over {len(runs)} seeds: valid {metric} {best['valid'][metric]:.4f} ± "
              f"{best['valid_std'][metric]:.4f}  test {metric} {best['test'][metric]:.4f} ± "
              f"{best['test_std'][metric]:.4f}")
        return
    _print_metrics({**best, **{k: runs[0][k] for k in ("best_epoch", "epochs_run", "seconds_per_epoch")}}
                   if runs else best)


# ---------------------------------------------------------------------------------------------- methods
_RST = [
    (re.compile(r":(?:class|func|meth|mod|attr|data|math|ref|obj|exc):`~?([^`<]*?)(?:\s*<[^>]*>)?`"),
     lambda m: m.group(1).split(".")[-1] if "." in m.group(1) and " " not in m.group(1) else m.group(1)),
    (re.compile(r"``([^`]*)``"), lambda m: m.group(1)),
    (re.compile(r"`([^`]*)`_?"), lambda m: m.group(1)),
    (re.compile(r"\*\*([^*]+)\*\*"), lambda m: m.group(1)),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), lambda m: m.group(1)),
]


def plain_text(text: str) -> str:
    """RST inline markup removed (``code``, :class:`~a.B`, *emphasis*), whitespace collapsed."""
    for pattern, repl in _RST:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


def first_sentence(doc: Optional[str]) -> str:
    """The first sentence of a docstring's first paragraph, whole, in plain text."""
    if not doc:
        return ""
    import inspect

    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    text = plain_text(paragraph)
    # a sentence ends at '.', '!' or '?' before a capital letter, never inside "e.g." / "et al." / "i.e."
    m = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bal)(?<!\bvs)[.!?](?=\s+[A-Z(])", text)
    return text[:m.end()] if m else text


def _describe(cls, registered=()) -> str:
    """The first sentence of the module docstring (one method per module), or of the class docstring when
    the module registers several classes (CROSS and FETTLE)."""
    shared = sum(1 for other in registered if other.__module__ == cls.__module__) > 1
    name = getattr(cls, "method_name", None) or getattr(cls, "plugin_name", None)
    module = sys.modules.get(cls.__module__)
    if not shared or cls.__module__.rsplit(".", 1)[-1] == name:
        text = first_sentence(getattr(module, "__doc__", None))
        if text:
            return text
    return first_sentence(cls.__doc__)


def run_methods(args: argparse.Namespace) -> int:
    from mmgraph.models.registry import available_methods
    from mmgraph.plugins import available_plugins
    from mmgraph.train.config import load_config

    if args.show:
        return _show(args.show, args.json)
    methods, plugins = available_methods(), available_plugins()
    rows = {}
    for name, cls in methods.items():
        cfg = load_config(name)
        keys = {k: cfg[k] for k in _own_keys(name)}
        rows[name] = {"class": f"{cls.__module__}.{cls.__name__}", "multimodal": cls.multimodal,
                      "description": _describe(cls, methods.values()), "config": keys, "grid": cfg["grid"]}
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    width = max(len(n) for n in list(methods) + list(plugins)) + 2
    print("methods (--method NAME):")
    for name, row in rows.items():
        print(f"  {name:{width}s}{'multimodal' if row['multimodal'] else 'ID-only':11s} {row['description']}")
    if plugins:
        print("plug-ins (--set plugins=[NAME]):")
        for name, cls in plugins.items():
            print(f"  {name:{width}s}{'':11s} {_describe(cls, plugins.values())}")
    print("settings of one: mmgraph methods --show NAME")
    return 0


def _own_keys(method: str) -> List[str]:
    from mmgraph.train.schema import build_schema

    return [k for k, s in build_schema(method).settings.items() if s.source == f"method:{method}"]


def _show(name: str, as_json: bool) -> int:
    from mmgraph.models.registry import available_methods
    from mmgraph.plugins import available_plugins
    from mmgraph.train.schema import build_schema, declared_methods, suggest

    methods, plugins = available_methods(), available_plugins()
    key = name.lower()
    if key in methods:
        schema, title = build_schema(key), f"{key}: {_describe(methods[key], methods.values())}"
        sections = [("run settings (configs/defaults.yaml)", "defaults"),
                    (f"{key} settings (configs/methods/{key}.yaml)", f"method:{key}")]
    elif key in plugins:
        base = "mf" if "mf" in methods else next(iter(methods))
        schema, title = build_schema(base, [key]), f"plug-in {key}: {_describe(plugins[key], plugins.values())}"
        sections = [(f"{key} settings (configs/plugins/{key}.yaml; with --set plugins=[{key}])", f"plugin:{key}")]
    else:
        close = suggest(key, list(methods) + list(plugins))
        raise ConfigError(f"--show: no method or plug-in {name!r}; methods: {', '.join(methods)}; plug-ins: "
                          f"{', '.join(plugins)}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    if as_json:
        out = {s.name: {"default": s.default, "type": s.spec, "role": s.role, "source": s.source,
                        "comment": s.comment} for s in schema.settings.values()
               if any(s.source == src for _, src in sections)}
        json.dump({"name": key, "settings": out, "grid": schema.grid if key in methods else {}}, sys.stdout,
                  indent=1, default=str)
        print()
        return 0
    print(title)
    print("role: axis = a list makes a grid axis (--set k=[a,b] --grid); value = a list is the value; "
          "fixed = one value; repeat = a list repeats the run")
    for heading, source in sections:
        rows = [s for s in schema.settings.values() if s.source == source]
        if not rows:
            continue
        print(f"\n{heading}:")
        w = max(len(s.name) for s in rows)
        for s in rows:
            default = json.dumps(s.default) if not isinstance(s.default, str) else s.default
            line = f"  {s.name:{w}s}  {default:14s} {s.spec:32s} {s.role:6s}"
            print(line + (f"  {plain_text(s.comment)}" if s.comment else ""))
    if key in methods:
        if schema.grid:
            print(f"\ngrid (--grid without --set axes): {schema.grid}")
        if plugins:
            print(f"\nplug-ins add their settings: mmgraph methods --show {next(iter(plugins))}")
    if key in methods and key not in declared_methods(schema.config_dir):
        print(f"\n(no configs/methods/{key}.yaml: the method has no settings of its own)")
    return 0
