"""``mmgraph analyze``: analyses of trained runs, each writing a table (CSV) and a figure (PNG).

Every module of :mod:`mmgraph.analysis` with a ``register_cli(subparsers)`` adds one sub-command.
"""
from __future__ import annotations

import importlib
import pkgutil


def register(sub) -> None:
    import mmgraph.analysis as analysis

    modules = [importlib.import_module(f"mmgraph.analysis.{m.name}")
               for m in pkgutil.iter_modules(analysis.__path__) if not m.name.startswith("_")]
    modules = [m for m in modules if hasattr(m, "register_cli")]
    if not modules:
        return
    p = sub.add_parser("analyze", help="analyses of trained runs (tables + figures)")
    actions = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    actions.required = True
    for module in modules:
        module.register_cli(actions)
