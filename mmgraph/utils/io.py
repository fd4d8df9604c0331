"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = "w", encoding: str = "utf-8") -> Iterator:
    """Yield a file handle; the target appears only if the block finishes without error.

    A symbolic link is written through (its target is replaced atomically, the link stays); a FIFO, a device or
    a socket (``/dev/stdout``, a named pipe) is written directly, as a stream has nothing to replace."""
    path = Path(path)
    text = {} if "b" in mode else {"encoding": encoding, "newline": ""}
    # checked on the path as given: /dev/stdout is a link to a pipe whose resolved name is not a path
    if path.exists() and not path.is_file() and not path.is_dir():
        try:
            with open(path, mode, **text) as fh:
                yield fh
        except OSError as exc:      # e.g. a full device: name the file the user gave
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:     # name the user's file, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_file(path: Union[str, os.PathLike], option: str = "--output") -> Path:
    """Fail early, in one line, when ``path`` cannot become a file: it is a folder, or a part of its parent
    path is a file. Returns ``Path(path)``."""
    from mmgraph.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name in it (e.g. {path / 'top.csv'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Union[str, os.PathLike], obj: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def _json_default(obj):
    import numpy as np
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def atomic_torch_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    import torch
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 110) -> Path:
    """Lay out a matplotlib ``fig``, write it atomically to ``path`` (format from the suffix, PNG when there
    is none) and close it; returns the path."""
    import matplotlib.pyplot as plt
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        plt.close(fig)
        from mmgraph.errors import ConfigError
        raise ConfigError(f"{path}: matplotlib cannot write .{fmt} figures; use one of "
                          f"{', '.join('.' + k for k in sorted(supported))} (e.g. {path.with_suffix('.png')})")
    try:
        fig.tight_layout()
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _yaml_loader():
    """``yaml.SafeLoader`` with YAML 1.2's core schema for plain scalars, the types a reader of a config means:
    ``1e-3`` is a float (YAML 1.1, PyYAML's default, leaves it text), ``010`` is ten (not octal 8), ``12:30`` and
    ``2026-12-06`` are text (not 750 and a date), only true / false are booleans (``yes``, ``no``, ``on``, ``off``
    are text, which a boolean setting then refuses by name rather than taking ``no`` as false)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    replaced = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    exponent = r"(?:[eE][-+]?[0-9]+)"
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:int",
                                 re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
                                 list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        rf"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*{exponent}?|\.[0-9][0-9_]*{exponent}?|[0-9][0-9_]*{exponent})"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))

    def construct_int(loader, node):
        text = loader.construct_scalar(node).replace("_", "")
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return Loader


_LOADER = None


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 core scalars: ``1e-3`` a float, ``010`` ten, only true / false booleans
    (see :func:`_yaml_loader`)."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader()
    return yaml.load(text, Loader=_LOADER)
