"""Plug-ins: loss heads added on top of ANY backbone (``--set plugins=[cross]``).

A plug-in is an ``nn.Module`` built as ``cls(data, model, config)`` -- ``data`` the run's ``HeteroData``
with the relations the backbone and the plug-in ask for (:func:`mmgraph.train.build_run_graph`), or in one call
``mmgraph.train.build_plugins(config, dataset, model)`` -- with
``loss(batch, output) -> {name: weighted scalar}``; the :class:`~mmgraph.train.trainer.Trainer` adds the
terms to the backbone's loss, optimises the plug-in's parameters with the model's and checkpoints them.
Plug-ins never change the backbone's own loss or its scoring.

Registering a plug-in = one module in this package with ``@register_plugin("name")`` (modules are
found by importing the package); its defaults go in ``configs/plugins/<name>.yaml`` (merged by
:func:`mmgraph.train.config.load_config`).
"""
from __future__ import annotations

from typing import Dict, Type

from mmgraph.utils.registry import Registry

PLUGINS = Registry("plug-in", "plugin_name", "mmgraph.plugins", skip=["base", "experiments"])
register_plugin = PLUGINS.register


def get_plugin_class(name: str) -> Type:
    """The plug-in class registered as ``name`` (a one-line error listing the names when unknown)."""
    return PLUGINS.get(name)


def available_plugins() -> Dict[str, Type]:
    """``{name: class}`` of every registered plug-in."""
    return PLUGINS.available()


__all__ = ["register_plugin", "get_plugin_class", "available_plugins"]
