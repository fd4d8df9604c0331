"""FAISS helpers shared by the graph builders and evaluation retrieval.

FAISS runs on GPU when faiss-gpu is installed and a CUDA device is visible, otherwise on CPU.
Both paths use exact (flat) inner-product indexes, so results are the same either way. Without FAISS
installed, the exact searches (kNN graphs, LATTICE's learned graph) run as blockwise torch products with
the same results, and what has no torch form (approximate indexes, ``retrieval: faiss``) says so.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)
# FAISS logs at INFO how it probes its AVX512 / AVX2 builds (with ModuleNotFoundError lines): noise in every
# run and script that builds a kNN graph; a caller that configured this logger keeps its setting
if logging.getLogger("faiss.loader").level == logging.NOTSET:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


@functools.lru_cache(maxsize=1)
def faiss_available() -> bool:
    """Whether ``import faiss`` works (faiss-cpu or faiss-gpu installed)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def require_faiss(what: str) -> None:
    """Raise a one-line :class:`~mmgraph.errors.ConfigError` naming ``what`` when FAISS is not installed."""
    if not faiss_available():
        from mmgraph.errors import ConfigError
        raise ConfigError(f"{what} needs FAISS, which is not installed here: `pip install faiss-cpu` (or the "
                          f"'gpu' extra), or use the exact torch path")


@functools.lru_cache(maxsize=1)
def warn_torch_fallback() -> None:
    """Log once that an exact FAISS search runs as torch products because FAISS is missing."""
    log.warning("FAISS is not installed: exact top-k searches run as blockwise torch products (same results)")


@functools.lru_cache(maxsize=1)
def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 without FAISS, faiss-gpu or CUDA, or with MMGRAPH_FAISS_CPU=1)."""
    if os.environ.get("MMGRAPH_FAISS_CPU") == "1" or not faiss_available():
        return 0
    import faiss
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # a CPU build may raise instead of returning 0
        return 0


def use_faiss_gpu(use_gpu: Optional[bool] = None) -> bool:
    """Resolve a ``use_gpu`` request: ``None`` = auto-detect, ``True`` falls back to CPU with a warning."""
    available = faiss_gpu_count() > 0
    if use_gpu and not available:
        log.warning("FAISS GPU requested but not available (faiss-gpu missing or no CUDA device); using CPU")
    return available if use_gpu is None else bool(use_gpu and available)


def flat_ip_index(dim: int, use_gpu: Optional[bool] = None):
    """An exact inner-product index on GPU 0 when available, else on CPU."""
    import faiss
    index = faiss.IndexFlatIP(dim)
    if use_faiss_gpu(use_gpu):
        res = _gpu_resources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
    return index


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    import faiss
    return faiss.StandardGpuResources()


def build_ip_index(base: np.ndarray, use_gpu: Optional[bool] = None):
    """An exact inner-product index holding the rows of ``base [N, d]`` (GPU when available)."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    index = flat_ip_index(base.shape[1], use_gpu)
    index.add(base)
    return index


def search_index(index, queries: np.ndarray, k: int, batch_size: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``queries [Q, d]`` in ``index`` in query batches: ``(scores [Q, k], ids [Q, k])``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(int(k), int(index.ntotal))
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        s, i = index.search(queries[start:start + batch_size], k)
        scores[start:start + batch_size] = s
        ids[start:start + batch_size] = i
    return scores, ids


def search_ip(base: np.ndarray, queries: np.ndarray, k: int, use_gpu: Optional[bool] = None,
              batch_size: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product of ``queries [Q, d]`` against ``base [N, d]``.

    Queries run in batches so the score block stays bounded. Returns ``(scores [Q, k], ids [Q, k])``,
    sorted by decreasing score. Without FAISS: :func:`mmgraph.graph.knn.search_ip_torch` (the same result).
    """
    if not faiss_available():
        from mmgraph.graph.knn import search_ip_torch
        warn_torch_fallback()
        base = np.ascontiguousarray(base, dtype=np.float32)
        return search_ip_torch(base, np.ascontiguousarray(queries, dtype=np.float32), min(int(k), len(base)),
                               batch_size)
    return search_index(build_ip_index(base, use_gpu), queries, k, batch_size)
