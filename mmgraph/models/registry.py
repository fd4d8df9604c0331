"""Method registry: ``@register("lightgcn")`` makes ``--method lightgcn`` find the class.

Every module of :mod:`mmgraph.models` is imported on first lookup, so a new method is one new file
(a :class:`~mmgraph.models.base.Recommender` subclass with ``@register("name")``) plus
``configs/methods/<name>.yaml``.
"""
from __future__ import annotations

from typing import Dict, Type

from mmgraph.utils.registry import Registry

METHODS = Registry("method", "method_name", "mmgraph.models", skip=["base", "registry", "pop"])
register = METHODS.register


def get_model_class(name: str) -> Type:
    """The :class:`~mmgraph.models.base.Recommender` subclass registered as ``name`` (e.g. ``"lightgcn"``);
    an unknown name is a one-line error listing the methods."""
    return METHODS.get(name)


def available_methods() -> Dict[str, Type]:
    """``{method name: model class}`` of every registered method."""
    return METHODS.available()
