"""A name -> class registry whose built-in entries are found by importing the modules of a package."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, List, Optional, Type

from mmgraph.errors import ConfigError


class Registry:
    """``register(name)`` decorates a class; ``get(name)`` finds it (case-insensitive).

    Args:
        kind: what is registered, for error messages (``"method"``, ``"plug-in"``).
        attr: class attribute set to the registered key (``method_name``, ``plugin_name``).
        package: every module of this package is imported on first lookup, so adding a method or a
            plug-in is one new module (with ``@register("name")``) and nothing else.
        skip: modules of the package that hold no entries (e.g. ``base``).
    """

    def __init__(self, kind: str, attr: str, package: str, skip: Optional[List[str]] = None):
        self.kind, self.attr = kind, attr
        self.package = package
        self.skip = set(skip or [])
        self._classes: Dict[str, type] = {}
        self._loaded = False

    def register(self, name: str):
        """Class decorator: ``@register("name")`` files the class under ``name`` (case-insensitive) and sets its
        ``attr`` to the key; the same name on another class is an error."""
        def deco(cls):
            key = name.lower()
            if key in self._classes and self._classes[key] is not cls:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            setattr(cls, self.attr, key)
            self._classes[key] = cls
            return cls
        return deco

    def builtin_modules(self) -> List[str]:
        pkg = importlib.import_module(self.package)
        return sorted(f"{self.package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                      if not m.name.startswith("_") and m.name not in self.skip)

    def _load_builtins(self) -> None:
        # a failing import is a bug in that module: let it raise instead of hiding the entry
        if self._loaded:
            return
        for module in self.builtin_modules():
            importlib.import_module(module)
        self._loaded = True

    def get(self, name: str) -> Type:
        self._load_builtins()
        key = str(name).lower()
        if key not in self._classes:
            import difflib

            close = difflib.get_close_matches(key, sorted(self._classes), n=3, cutoff=0.6)
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._classes))}"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
        return self._classes[key]

    def available(self) -> Dict[str, Type]:
        self._load_builtins()
        return dict(sorted(self._classes.items()))
