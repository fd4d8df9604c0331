"""On-disk cache of built graphs, keyed by the input arrays' bytes and every parameter.

The key is a BLAKE2b digest of: the cache format version, the mmgraph version, the builder name, the
canonical JSON of the parameters, and for every input array its name, dtype, shape and raw bytes. Any
change of features, interactions or parameters therefore gives a new key: an entry is never stale.
Entries are ``<builder>-<key>.pt`` files written atomically with ``torch.save`` and read back with
``torch.load(weights_only=True)`` and checked against a digest of their content stored with them; a corrupt,
unreadable or altered entry is rebuilt and overwritten.

Default folder: ``$MMGRAPH_CACHE`` if set, else ``~/.cache/mmgraph/graphs``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
import torch

from mmgraph.graph.base import ItemGraph, KNNResult
from mmgraph.utils.io import atomic_torch_save

log = logging.getLogger(__name__)

#: bump when the meaning of a stored graph changes (builders' semantics, serialisation layout)
CACHE_FORMAT_VERSION = 1
CACHE_ENV = "MMGRAPH_CACHE"

T = TypeVar("T")
CacheDir = Union[None, bool, str, os.PathLike]


def default_cache_dir() -> Path:
    """Where built graphs are cached: ``$MMGRAPH_CACHE`` when set, else ``~/.cache/mmgraph/graphs``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mmgraph" / "graphs"


def resolve_cache_dir(cache_dir: CacheDir) -> Optional[Path]:
    """``None``/``True`` -> default folder; ``False`` -> caching off (``None``); a path -> that path."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def _hash_array(h, name: str, arr) -> None:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    h.update(f"|array:{name}|{arr.dtype.str}|{arr.shape}|".encode())
    if arr.size == 0:
        return
    flat = arr.reshape(-1) if arr.flags.c_contiguous else None
    if flat is not None:
        step = max(1, (1 << 26) // arr.itemsize)  # 64 MB slices of a view: no copy
        for s in range(0, flat.size, step):
            h.update(memoryview(np.ascontiguousarray(flat[s:s + step])).cast("B"))
    else:  # non-contiguous: hash row blocks of a C-ordered copy
        rows = max(1, (1 << 26) // max(1, arr[0].nbytes if arr.ndim > 1 else arr.itemsize))
        for s in range(0, arr.shape[0], rows):
            h.update(np.ascontiguousarray(arr[s:s + rows]).tobytes())


def _canonical(params: Mapping[str, Any]) -> str:
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cache parameter of type {type(o).__name__} is not JSON-serialisable: {o!r}")
    return json.dumps(params, sort_keys=True, default=default, separators=(",", ":"))


def cache_key(builder: str, params: Mapping[str, Any],
              arrays: Union[Mapping[str, Any], Sequence[Any]]) -> str:
    """Hex digest identifying one build (see the module docstring)."""
    from mmgraph import __version__
    h = hashlib.blake2b(digest_size=20)
    h.update(f"mmgraph-graph-cache|v{CACHE_FORMAT_VERSION}|{__version__}|{builder}|".encode())
    h.update(_canonical(params).encode())
    items = sorted(arrays.items()) if isinstance(arrays, Mapping) else list(enumerate(arrays))
    for name, arr in items:
        _hash_array(h, str(name), arr)
    return h.hexdigest()


# --------------------------------------------------------------------------- (de)serialisation
def _pack(obj):
    if isinstance(obj, ItemGraph):
        return {"__kind__": "ItemGraph", **obj.state()}
    if isinstance(obj, KNNResult):
        return {"__kind__": "KNNResult", "indices": torch.from_numpy(np.ascontiguousarray(obj.indices)),
                "similarities": torch.from_numpy(np.ascontiguousarray(obj.similarities))}
    if isinstance(obj, np.ndarray):
        return {"__kind__": "ndarray", "data": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {"__kind__": "dict", "items": [[k, _pack(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__kind__": type(obj).__name__, "items": [_pack(v) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot cache an object of type {type(obj).__name__}")


def _unpack(obj):
    if isinstance(obj, dict):
        kind = obj.get("__kind__")
        if kind == "ItemGraph":
            return ItemGraph.from_state(obj)
        if kind == "KNNResult":
            return KNNResult(obj["indices"].numpy(), obj["similarities"].numpy())
        if kind == "ndarray":
            return obj["data"].numpy()
        if kind == "dict":
            return {k: _unpack(v) for k, v in obj["items"]}
        if kind == "list":
            return [_unpack(v) for v in obj["items"]]
        if kind == "tuple":
            return tuple(_unpack(v) for v in obj["items"])
        raise ValueError(f"unknown cached object kind {kind!r}")
    return obj


def _content_digest(packed) -> str:
    """BLAKE2b of a packed object's structure, scalars and tensor bytes: a stored entry is checked against it
    when read back (a file changed in place, even to one of the same size, is not taken for the graph)."""
    h = hashlib.blake2b(digest_size=16)

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"|tensor|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                         else t.numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"|dict|")
            for k in sorted(o, key=str):
                h.update(f"|key:{k}|".encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"|seq:{len(o)}|".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"|{type(o).__name__}:{o!r}|".encode())

    walk(packed)
    return h.hexdigest()


def save_object(obj, path: Union[str, os.PathLike]) -> None:
    """Atomically ``torch.save`` a graph / kNN result / nested dict of them, with a digest of its content."""
    packed = _pack(obj)
    atomic_torch_save({"format": CACHE_FORMAT_VERSION, "object": packed, "digest": _content_digest(packed)},
                      path)


def load_object(path: Union[str, os.PathLike]):
    """Inverse of :func:`save_object` (``weights_only=True``: no code is unpickled); a content digest that
    does not match is a ``ValueError`` (entries written before digests were stored are not checked)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT_VERSION:
        raise ValueError(f"{path}: not a graph file of format {CACHE_FORMAT_VERSION}")
    if "digest" in blob and blob["digest"] != _content_digest(blob["object"]):
        raise ValueError(f"{path}: content does not match its digest (changed since it was written)")
    return _unpack(blob["object"])


def cache_path(builder: str, key: str, cache_dir: CacheDir = None) -> Optional[Path]:
    folder = resolve_cache_dir(cache_dir)
    if folder is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", builder)
    return folder / f"{safe}-{key}.pt"


def cached(builder: str, params: Mapping[str, Any], arrays: Union[Mapping[str, Any], Sequence[Any]],
           build_fn: Callable[[], T], cache_dir: CacheDir = None) -> T:
    """Return ``build_fn()``, loading it from / storing it in the cache.

    Args:
        builder: a name for the kind of object (part of the key and of the file name).
        params: EVERY parameter that affects the result (JSON-serialisable).
        arrays: the input arrays (name -> array, or a sequence), hashed by content.
        build_fn: computes the object when there is no valid entry.
        cache_dir: folder; ``None``/``True`` = default folder, ``False`` = no caching.
    """
    folder = resolve_cache_dir(cache_dir)
    if folder is None:
        return build_fn()
    path = cache_path(builder, cache_key(builder, params, arrays), folder)
    if path.exists():
        try:
            obj = load_object(path)
            log.info("graph cache hit: %s", path)
            return obj
        except Exception as exc:  # corrupt/partial/old entry: rebuild
            log.warning("graph cache entry %s unreadable (%s); rebuilding", path, exc)
    obj = build_fn()
    try:
        save_object(obj, path)
        log.info("graph cache stored: %s", path)
    except OSError as exc:  # read-only or full disk: still return the result
        log.warning("could not write graph cache entry %s: %s", path, exc)
    return obj
