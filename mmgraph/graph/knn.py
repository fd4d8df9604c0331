"""Exact cosine top-k neighbours of item feature rows (FAISS flat inner product, or blockwise torch).

Memory: besides the ``[N, d]`` L2-normalised copy of the features and the ``[N, k]`` outputs, only one
bounded block of scores is alive at a time (FAISS computes ``[batch, 1024]`` tiles of its query batch;
the torch backend a ``[batch_size, N]`` block). No ``N x N`` matrix is ever materialised.

Determinism: each returned row is ordered by decreasing similarity and, among equal similarities, by
increasing item id -- the order of a stable ``argsort(-sim)`` of a dense reference. FAISS on GPU and on
CPU compute the same exact scores (up to float rounding), so both give the same neighbours on data
without near-ties.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import numpy as np
import torch

from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.base import ItemGraph, KNNResult, normalize_graph
from mmgraph.utils import faiss_utils

log = logging.getLogger(__name__)

SelfLoops = Union[bool, str]
#: exact: ``faiss`` (flat, in query blocks) and ``torch``; approximate: ``faiss_ivf`` (inverted lists,
#: ``nlist ~ 4 sqrt(N)`` cells, ``nprobe`` visited) and ``faiss_hnsw`` (graph index, ``M = 32``)
BACKENDS = ("faiss", "torch", "faiss_ivf", "faiss_hnsw")
APPROXIMATE = ("faiss_ivf", "faiss_hnsw")


def resolve_self_loops(self_loops: SelfLoops) -> str:
    """``True``/``'include'`` -> ``'include'``; ``False``/``'exclude'`` -> ``'exclude'``."""
    if self_loops is True or self_loops == "include":
        return "include"
    if self_loops is False or self_loops == "exclude":
        return "exclude"
    raise ConfigError(f"self_loops must be 'include', 'exclude' or a bool, got {self_loops!r}")


def l2_normalize(features, eps: float = 0.0) -> tuple:
    """Row-wise L2 normalisation into a new float32 array.

    Returns ``(normalised [N, d] float32, nonzero [N] bool)``; all-zero rows stay zero (and are
    flagged ``False``) instead of becoming NaN.
    """
    if isinstance(features, torch.Tensor):   # a CUDA tensor, or one that requires grad, has no direct numpy view
        features = features.detach().cpu()
    x = np.asarray(features)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-d [n_items, dim] array, got shape {x.shape}")
    out = np.empty(x.shape, dtype=np.float32)
    norms = np.empty(x.shape[0], dtype=np.float64)
    step = max(1, (1 << 24) // max(1, x.shape[1]))  # ~64 MB of float32 per chunk
    for s in range(0, x.shape[0], step):
        blk = np.asarray(x[s:s + step], dtype=np.float32)
        nrm = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float64))
        if not np.all(np.isfinite(nrm)):
            bad = s + int(np.flatnonzero(~np.isfinite(nrm))[0])
            raise DataError(f"features have NaN/inf values (first at item {bad})")
        norms[s:s + step] = nrm
        scale = np.where(nrm > eps, 1.0 / np.where(nrm > eps, nrm, 1.0), 0.0).astype(np.float32)
        np.multiply(blk, scale[:, None], out=out[s:s + step])
    return out, norms > eps


def _order_rows(ids: np.ndarray, sims: np.ndarray) -> tuple:
    """Sort each row by (-similarity, id), padding (-1) last."""
    pad = ids < 0
    key_sim = np.where(pad, np.inf, -sims.astype(np.float64))
    key_id = np.where(pad, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, key_sim), axis=-1)
    ids = np.take_along_axis(ids, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    return ids, sims


def _search_faiss(base: np.ndarray, queries: np.ndarray, kk: int, use_gpu, batch_size: int):
    """Brute-force exact inner-product search straight on the arrays (``faiss.knn`` / ``knn_gpu``):
    no index is built, so the base vectors are not copied into FAISS."""
    import faiss

    gpu = faiss_utils.use_faiss_gpu(use_gpu)
    metric = faiss.METRIC_INNER_PRODUCT
    n_q = queries.shape[0]
    sims = np.empty((n_q, kk), dtype=np.float32)
    ids = np.empty((n_q, kk), dtype=np.int64)
    for s in range(0, n_q, batch_size):
        q = np.ascontiguousarray(queries[s:s + batch_size])
        if gpu and hasattr(faiss, "knn_gpu"):
            d, i = faiss.knn_gpu(faiss_utils._gpu_resources(), q, base, kk, metric=metric)
        elif gpu:  # very old faiss-gpu without knn_gpu: a flat GPU index
            return faiss_utils.search_ip(base, queries, kk, use_gpu=True, batch_size=batch_size)
        else:
            d, i = faiss.knn(q, base, kk, metric=metric)
        sims[s:s + batch_size] = d
        ids[s:s + batch_size] = i
    return sims, ids


def _search_faiss_approx(base: np.ndarray, kk: int, backend: str, batch_size: int,
                         nprobe: Optional[int] = None, ef_search: Optional[int] = None, seed: int = 1234):
    """Approximate inner-product top-``kk`` of every row of ``base`` against ``base`` (CPU FAISS).

    ``faiss_ivf``: ``IndexIVFFlat`` with ``nlist = min(4 sqrt(N), N / 40)`` cells (k-means on at most
    ``40 nlist`` rows, 10 iterations), ``nprobe`` cells searched (default ``max(8, nlist // 16)``). ``faiss_hnsw``:
    ``IndexHNSWFlat`` (``M = 32``, ``efConstruction = 80``, ``efSearch`` default ``max(64, 2 kk)``).
    Memory: the index holds one copy of ``base`` (plus ``N * 2M`` links for HNSW) and the outputs
    ``[N, kk]``; no ``N x N`` block. Missing results are ``-1``."""
    import faiss

    n, d = base.shape
    if backend == "faiss_ivf":
        nlist = int(max(1, min(n // 40, round(4 * np.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = seed
        n_train = min(n, 40 * nlist)
        rng = np.random.default_rng(seed)
        train = base if n_train == n else base[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(np.ascontiguousarray(train))
        index.add(base)
        index.nprobe = min(nlist, int(nprobe or max(8, nlist // 16)))
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(base)
        index.hnsw.efSearch = int(ef_search or max(64, 2 * kk))
    sims = np.empty((n, kk), dtype=np.float32)
    ids = np.empty((n, kk), dtype=np.int64)
    for s in range(0, n, batch_size):
        d_, i_ = index.search(np.ascontiguousarray(base[s:s + batch_size]), kk)
        sims[s:s + batch_size], ids[s:s + batch_size] = d_, i_
    return sims, ids


def knn_recall(approx: KNNResult, exact: KNNResult) -> float:
    """Recall@k of approximate neighbour lists against exact ones: the mean fraction of each row's
    exact neighbours (ignoring ``-1`` padding) that the approximate row also lists."""
    a, e = np.asarray(approx.indices), np.asarray(exact.indices)
    hit = (a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)
    found = hit.any(axis=1).sum(axis=1)
    total = (e >= 0).sum(axis=1)
    keep = total > 0
    return float(np.mean(found[keep] / total[keep])) if keep.any() else 1.0


def search_ip_torch(base: np.ndarray, queries: np.ndarray, kk: int, batch_size: int = 4096,
                    device: Optional[str] = None):
    """Exact top-``kk`` inner products of ``queries [Q, d]`` against ``base [N, d]`` (float32 arrays) by
    blockwise ``q @ base^T`` + ``topk`` on ``device`` (default CUDA when available), score blocks <= 256 MB:
    ``(scores [Q, kk] float32, ids [Q, kk] int64)``, sorted by decreasing score."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    b = torch.from_numpy(base).to(dev)
    batch_size = max(1, min(batch_size, (1 << 26) // max(1, base.shape[0])))  # <= 256 MB score block
    n_q = queries.shape[0]
    sims = np.empty((n_q, kk), dtype=np.float32)
    ids = np.empty((n_q, kk), dtype=np.int64)
    for s in range(0, n_q, batch_size):
        q = torch.from_numpy(np.ascontiguousarray(queries[s:s + batch_size])).to(dev)
        v, i = torch.topk(q @ b.T, kk, dim=1)
        sims[s:s + batch_size] = v.cpu().numpy()
        ids[s:s + batch_size] = i.cpu().numpy()
    return sims, ids


def knn_graph(features, k: int = 10, self_loops: SelfLoops = "include", use_gpu: Optional[bool] = None,
              batch_size: int = 4096, backend: str = "faiss", device: Optional[str] = None) -> KNNResult:
    """Exact top-``k`` cosine neighbours of every row of ``features [N, d]``.

    Args:
        k: neighbours per item.
        self_loops: ``'include'`` (FREEDOM/MMRec: top-k over ALL items, the item itself included --
            it normally ranks first with similarity 1) or ``'exclude'`` (top-k among the other items).
            ``True``/``False`` are accepted as aliases.
        use_gpu: FAISS on GPU (``None`` = when faiss-gpu and a CUDA device are available).
        batch_size: queries per search call (bounds the temporary score block).
        backend: ``'faiss'`` (default) or ``'torch'`` (blockwise ``X_b @ X^T`` + ``topk``, on ``device``,
            default CUDA when available) -- the same results (``'faiss'`` runs as ``'torch'``, with a
            warning, where FAISS is not installed); or an approximate FAISS index for large
            catalogues, ``'faiss_ivf'`` or ``'faiss_hnsw'`` (CPU; see :func:`_search_faiss_approx`, and
            :func:`knn_recall` to measure it against exact).

    Items whose feature row is all zeros have no defined cosine: they are never anybody's neighbour,
    and their own list is just themselves (``'include'``) or empty (``'exclude'``). Rows with fewer
    than ``k`` neighbours are padded with index ``-1`` / similarity ``-inf``.

    Returns:
        :class:`KNNResult` ``(indices [N, k] int64, similarities [N, k] float32)``.
    """
    policy = resolve_self_loops(self_loops)
    k = int(k)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kNN backend {backend!r}, expected one of {BACKENDS}")
    if backend in APPROXIMATE:
        faiss_utils.require_faiss(f"the approximate kNN backend {backend!r}")
    batch_size = max(1, int(batch_size))
    xn, nonzero = l2_normalize(features)
    n = xn.shape[0]
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    n_zero = int(n - nonzero.sum())
    if n_zero:
        log.warning("%d of %d items have all-zero features: they get no kNN neighbours", n_zero, n)
        zero_ids = np.flatnonzero(~nonzero)
        if policy == "include":
            indices[zero_ids, 0] = zero_ids
            sims[zero_ids, 0] = 1.0
    valid = np.flatnonzero(nonzero)
    if len(valid) == 0:
        return KNNResult(indices, sims)
    base = xn if n_zero == 0 else np.ascontiguousarray(xn[valid])
    del xn  # with zero rows the subset copy is the only one we keep
    extra = 1 if policy == "exclude" else 0
    kk = min(k + extra, len(valid))
    if backend == "faiss" and faiss_utils.faiss_available():
        s, i = _search_faiss(base, base, kk, use_gpu, batch_size)
    elif backend in APPROXIMATE:
        s, i = _search_faiss_approx(base, kk, backend, batch_size)
    else:
        if backend == "faiss":
            faiss_utils.warn_torch_fallback()
        s, i = search_ip_torch(base, base, kk, batch_size, device)
    del base
    bad = i < 0
    i = np.where(bad, -1, valid[np.clip(i, 0, None)] if n_zero else i)
    s = np.where(bad, -np.inf, s).astype(np.float32)
    if policy == "exclude":
        own = i == valid[:, None]
        # drop the item itself; if it was not returned (ties with duplicates), drop the last slot
        drop = own.copy()
        drop[~own.any(axis=1), -1] = True
        i = np.where(drop, -1, i)
        s = np.where(drop, -np.inf, s)
    i, s = _order_rows(i, s)
    m = min(k, i.shape[1])
    indices[valid, :m] = i[:, :m]
    sims[valid, :m] = s[:, :m]
    return KNNResult(indices, sims)


def knn_item_graph(features, k: int = 10, self_loops: SelfLoops = "include", weight: str = "similarity",
                   norm: str = "none", use_gpu: Optional[bool] = None, batch_size: int = 4096,
                   backend: str = "faiss") -> ItemGraph:
    """:func:`knn_graph` as an :class:`ItemGraph` (``weight``: ``'similarity'`` or ``'binary'``), then
    normalised with :func:`~mmgraph.graph.base.normalize_graph` (``norm``).

    ``features``: ``[N, d]``; the graph has ``N`` nodes and at most ``N k`` weighted edges (row ``i``
    lists item ``i``'s neighbours)."""
    res = knn_graph(features, k, self_loops, use_gpu=use_gpu, batch_size=batch_size, backend=backend)
    return normalize_graph(res.to_item_graph(weight), norm)
