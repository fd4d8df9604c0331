"""Subnormal ("denormal") floats on CPU: flushed to zero while a run trains.

A float32 below ~1.2e-38 is subnormal; x86 CPUs compute with such operands many times slower than with
normal ones. Some models make them in every step: LGMRec's Gumbel-softmax of its users' hyperedge logits
(sums over each user's items, in the thousands after a few epochs, at temperature 0.2) gives probabilities in
the subnormal range, and their products fill its hypergraph tables with thousands of subnormal entries. Its
epochs on TikTok went from 2.5 s to 4.2-4.8 s over the first epochs, and stay at 1.75-2 s with them flushed
(bit-identical histories at two seeds over 60 epochs). Flushing (FTZ: results that would be subnormal are 0;
DAZ: subnormal inputs read as 0) changes values only below 1.2e-38.

The flag lives in each thread's floating-point control register, so setting it on the calling thread
(``torch.set_flush_denormal``) does not reach the OpenMP threads torch's kernels already run on. GNU OpenMP
(the ``libgomp`` of PyTorch's Linux wheels) keeps its workers' own registers; :func:`set_flush_denormal`
therefore also runs one OpenMP parallel region that sets the flag on every thread of the team (of torch's
``libgomp``: faiss-cpu's wheel, for one, brings another copy with threads of its own). (Intel's
and LLVM's OpenMP runtimes copy the calling thread's setting into their workers at each parallel region;
threads created later inherit it from the thread that creates them.)
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from typing import Callable, Iterator, List, Optional

import torch

log = logging.getLogger(__name__)

_GOMP_PARALLEL: Optional[List[Callable]] = None   # the GOMP_parallel functions to call, once looked up
_CALLBACK_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def flush_denormal_enabled() -> bool:
    """Whether the calling thread flushes subnormal floats to zero (checked by computing with one)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)      # subnormal in float32
    return bool((tiny * 1.0).item() == 0.0)


def _gomp_parallels() -> List[Callable]:
    """``GOMP_parallel`` of the GNU OpenMP runtime torch runs on: the ``libgomp`` in torch's own folder (wheels
    such as faiss-cpu's bring their own copy, with their own threads), else every system ``libgomp.so*``."""
    global _GOMP_PARALLEL
    if _GOMP_PARALLEL is None:
        paths = _loaded_libraries("libgomp")
        torch_dir = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
        own = [p for p in paths if os.path.realpath(p).startswith(torch_dir)]
        chosen = own or [p for p in paths if os.path.basename(p).startswith("libgomp.so")]
        _GOMP_PARALLEL = []
        for path in chosen:
            try:
                fn = ctypes.CDLL(path).GOMP_parallel
            except (OSError, AttributeError):
                continue
            fn.argtypes = [_CALLBACK_TYPE, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            fn.restype = None
            _GOMP_PARALLEL.append(fn)
    return _GOMP_PARALLEL


def _loaded_libraries(stem: str) -> List[str]:
    """The distinct paths of the shared libraries ``stem*.so*`` mapped into this process (Linux; else none)."""
    found: List[str] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                name = os.path.basename(path)
                if name.startswith(stem) and ".so" in name and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def set_flush_denormal(on: bool) -> bool:
    """Flush subnormal floats to zero (``on``) or not, on the calling thread and on every thread of its
    OpenMP team. Returns whether the CPU supports it (False: nothing changed)."""
    if not torch.set_flush_denormal(bool(on)):
        return False
    if torch.get_num_threads() > 1:
        # a C callback that each team thread (the caller included) runs once, taking the GIL
        callback = _CALLBACK_TYPE(lambda _: torch.set_flush_denormal(bool(on)))
        for parallel in _gomp_parallels():
            parallel(callback, None, 0, 0)
    return True


def flush_for(config, device) -> bool:
    """Whether a run with ``config`` on ``device`` flushes: its ``flush_denormals`` (default true), on CPU only."""
    return bool(config.get("flush_denormals", True)) and torch.device(device).type == "cpu"


@contextlib.contextmanager
def flushing_denormals(on: bool = True) -> Iterator[None]:
    """Flush subnormal floats to zero inside the block (when ``on``), then restore the caller's setting."""
    if not on:
        yield
        return
    before = flush_denormal_enabled()
    if not set_flush_denormal(True):     # also when the caller's thread flushes: its OpenMP team may not
        log.debug("this CPU cannot flush subnormal floats to zero")
    try:
        yield
    finally:
        if not before:
            set_flush_denormal(False)
