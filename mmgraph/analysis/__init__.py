"""Analyses of trained runs (the papers' figures as library functions), one module per analysis.

A module here may expose ``register_cli(subparsers)`` to add a ``mmgraph analyze <name>`` command; the
command modules are discovered, so a new analysis is one new module.
"""
