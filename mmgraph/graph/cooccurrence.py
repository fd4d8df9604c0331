"""Item co-occurrence graphs from training interactions (CROSS CNA, BR-MRS) and user-set overlap.

With ``R`` the binary ``[U, I]`` training matrix (duplicates removed), the co-occurrence cosine is
``C_ij = (R^T R)_ij / sqrt(deg_i deg_j)`` where ``deg_i`` = number of training users of item ``i``
(``= (R^T R)_ii``). It is computed per block of item rows: for a block the ``(item, user, co-item)``
paths are expanded sparsely and counted into a dense ``[block, I]`` array, so memory is bounded by
``block_size x I`` counts plus the block's paths -- never an ``I x I`` matrix (unless ``block_size``
covers all items).

Items with no training interaction (cold items), or whose users interacted with nothing else, have
no co-occurring item: they get fewer than ``K`` (possibly zero) neighbours. Only items with
``C_ij > 0`` are ever neighbours; the diagonal is excluded.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.base import ItemGraph, KNNResult, normalize_graph


def _unique_pairs(pairs, n_users: Optional[int], n_items: Optional[int]) -> Tuple[np.ndarray, int, int]:
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        pairs = np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise DataError(f"interactions must have shape [N, 2] (user, item), got {pairs.shape}")
    pairs = np.unique(pairs.astype(np.int64), axis=0)
    nu = int(pairs[:, 0].max()) + 1 if n_users is None and len(pairs) else int(n_users or 0)
    ni = int(pairs[:, 1].max()) + 1 if n_items is None and len(pairs) else int(n_items or 0)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= nu or pairs[:, 1].max() >= ni):
        raise DataError("interaction ids out of range for the given n_users / n_items")
    return pairs, nu, ni


def _csr(keys: np.ndarray, values: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((values, keys))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr, values[order]


def _expand(ptr: np.ndarray, idx: np.ndarray, owners: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each ``owner`` o, all ``idx[ptr[o]:ptr[o+1]]``: returns (position of owner, value)."""
    lens = ptr[owners + 1] - ptr[owners]
    total = int(lens.sum())
    pos = np.repeat(np.arange(len(owners)), lens)
    starts = np.repeat(ptr[owners] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return pos, idx[starts + np.arange(total)]


def _dataset_pairs(data):
    """Accept a RecDataset (train split) or an ``[N, 2]`` array."""
    if hasattr(data, "train") and hasattr(data, "n_items"):
        return data.train, data.n_users, data.n_items
    return data, None, None


def cooccurrence_topk(interactions, k: int = 5, n_users: Optional[int] = None, n_items: Optional[int] = None,
                      block_size: Optional[int] = None, max_block_elems: int = 1 << 22,
                      max_paths: int = 1 << 24, measure: str = "cosine", min_count: int = 1) -> KNNResult:
    """Top-``k`` co-occurrence-cosine neighbours per item (diagonal excluded).

    Args:
        interactions: a :class:`~mmgraph.data.RecDataset` (its TRAIN split is used) or ``[N, 2]``
            (user, item) training pairs.
        k: neighbours per item (CROSS CNA: K in {3, 5, 10}, default 5).
        block_size: item rows per block; default ``max_block_elems // n_items``. Blocks are also cut
            so that one block expands at most ``max_paths`` (item, user, co-item) paths (a single
            item with more paths forms its own block).
        measure: ``'cosine'`` or ``'count'``: rank by (and return) the number of shared users
            ``(R^T R)_ij`` itself (DualGNN's / DRAGON's user graph, DA-MRS's item graph).
        min_count: only pairs sharing at least this many users are neighbours.

    Returns:
        :class:`KNNResult`: ``indices [I, k]`` (``-1`` padded) and cosine (or count) ``similarities``
        (``-inf`` padded), each row by decreasing similarity, ties by increasing item id.
    """
    if measure not in ("cosine", "count"):
        raise ConfigError(f"measure must be 'cosine' or 'count', got {measure!r}")
    pairs, du, di = _dataset_pairs(interactions)
    n_users = du if n_users is None else n_users
    n_items = di if n_items is None else n_items
    pairs, nu, ni = _unique_pairs(pairs, n_users, n_items)
    k = int(k)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    out_idx = np.full((ni, k), -1, dtype=np.int64)
    out_sim = np.full((ni, k), -np.inf, dtype=np.float32)
    if ni == 0 or len(pairs) == 0:
        return KNNResult(out_idx, out_sim)
    users, items = pairs[:, 0], pairs[:, 1]
    iu_ptr, iu_idx = _csr(items, users, ni)     # item -> its users
    ui_ptr, ui_idx = _csr(users, items, nu)     # user -> its items
    deg = np.diff(iu_ptr).astype(np.float64)
    bs = int(block_size) if block_size else max(1, int(max_block_elems) // ni)
    # paths per item = sum of its users' degrees; cut blocks so a block expands <= max_paths paths
    user_deg = np.diff(ui_ptr)
    paths = np.zeros(ni + 1, dtype=np.int64)
    np.cumsum(np.bincount(items, weights=user_deg[users], minlength=ni).astype(np.int64), out=paths[1:])
    s = 0
    while s < ni:
        e = min(ni, s + bs, int(np.searchsorted(paths, paths[s] + int(max_paths), side="right")) - 1)
        e = max(e, s + 1)
        b = e - s
        # paths item -> user -> co-item, counted into a dense [b, I] block
        own, us = _expand(iu_ptr, iu_idx, np.arange(s, e))
        pos, co = _expand(ui_ptr, ui_idx, us)
        counts = np.bincount(own[pos] * ni + co, minlength=b * ni).reshape(b, ni)
        counts[np.arange(b), np.arange(s, e)] = 0
        # rank by count^2 / deg_j: within a row it orders like the cosine, and IEEE division is
        # correctly rounded, so mathematically equal cosines tie exactly (integer co-counts tie a lot)
        if min_count > 1:
            counts[counts < int(min_count)] = 0
        if measure == "count":
            key = counts.astype(np.float64)
        else:
            key = np.divide(np.square(counts, dtype=np.float64), deg[None, :],
                            out=np.zeros((b, ni), dtype=np.float64), where=deg[None, :] > 0)
        kk = min(k, ni)
        thr = -np.partition(-key, kk - 1, axis=1)[:, kk - 1]
        cand = (key >= thr[:, None]) & (key > 0)
        del key
        r, c = np.nonzero(cand)
        cnt = counts[r, c].astype(np.float64)
        del counts, cand
        v = cnt if measure == "count" else cnt * cnt / deg[c]
        order = np.lexsort((c, -v, r))
        r, c, cnt = r[order], c[order], cnt[order]
        first = np.searchsorted(r, np.arange(b))
        rank = np.arange(len(r)) - first[r]
        keep = rank < k
        out_idx[s + r[keep], rank[keep]] = c[keep]
        rk, ck = r[keep], c[keep]
        out_sim[s + rk, rank[keep]] = (cnt[keep] if measure == "count"
                                       else cnt[keep] / np.sqrt(deg[s + rk] * deg[ck]))
        s = e
    return KNNResult(out_idx, out_sim)


def cooccurrence_graph(interactions, k: int = 5, n_users: Optional[int] = None, n_items: Optional[int] = None,
                       norm: str = "none", block_size: Optional[int] = None, measure: str = "cosine",
                       min_count: int = 1) -> ItemGraph:
    """:func:`cooccurrence_topk` as an :class:`ItemGraph` with cosine (or count, see ``measure``) edge
    weights, normalised by ``norm`` (``'uniform'`` makes ``propagate`` the mean over the neighbours, as
    CNA's target)."""
    res = cooccurrence_topk(interactions, k, n_users, n_items, block_size=block_size, measure=measure,
                            min_count=min_count)
    return normalize_graph(res.to_item_graph("similarity", num_nodes=res.indices.shape[0]), norm)


def item_overlap(item_pairs, interactions, n_users: Optional[int] = None, n_items: Optional[int] = None,
                 measure: str = "jaccard", chunk: int = 1 << 20) -> np.ndarray:
    """Overlap of the training-user sets of item pairs (BR-MRS ``overlap(N_i^u, N_j^u)``).

    Args:
        item_pairs: ``[P, 2]`` item ids.
        interactions: a RecDataset (train split) or ``[N, 2]`` (user, item) pairs.
        measure: ``'jaccard'`` (``|A & B| / |A | B|``, 0 when both sets are empty), ``'count'``
            (``|A & B|``) or ``'cosine'`` (``|A & B| / sqrt(|A| |B|)``).

    Returns ``[P]`` float64. Cost is ``sum over pairs of min(|A|, |B|)`` binary searches.
    """
    if measure not in ("jaccard", "count", "cosine"):
        raise ConfigError(f"measure must be jaccard, count or cosine, got {measure!r}")
    pairs, du, di = _dataset_pairs(interactions)
    n_users = du if n_users is None else n_users
    n_items = di if n_items is None else n_items
    inter, nu, ni = _unique_pairs(pairs, n_users, n_items)
    q = np.asarray(item_pairs, dtype=np.int64).reshape(-1, 2)
    if len(q) and (q.min() < 0 or q.max() >= ni):
        raise DataError(f"item ids in item_pairs outside 0..{ni - 1}")
    iu_ptr, iu_idx = _csr(inter[:, 1], inter[:, 0], ni)
    deg = np.diff(iu_ptr)
    # sorted keys item * U + user for membership tests
    keys = np.sort(inter[:, 1] * max(nu, 1) + inter[:, 0])
    inter_count = np.zeros(len(q), dtype=np.int64)
    # expand the smaller side of each pair and look its users up in the other item's set
    small = np.where(deg[q[:, 0]] <= deg[q[:, 1]], q[:, 0], q[:, 1])
    other = np.where(deg[q[:, 0]] <= deg[q[:, 1]], q[:, 1], q[:, 0])
    lens = deg[small]
    bounds = np.concatenate([[0], np.cumsum(lens)])
    start = 0
    while start < len(q):  # chunks of pairs with a bounded number of expanded users
        stop = int(np.searchsorted(bounds, bounds[start] + chunk, side="right")) - 1
        stop = max(stop, start + 1)
        sel = np.arange(start, min(stop, len(q)))
        pos, us = _expand(iu_ptr, iu_idx, small[sel])
        look = other[sel][pos] * max(nu, 1) + us
        at = np.searchsorted(keys, look)
        hit = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == look)
        inter_count[sel] = np.bincount(pos[hit], minlength=len(sel))
        start = sel[-1] + 1
    a, b = deg[q[:, 0]].astype(np.float64), deg[q[:, 1]].astype(np.float64)
    if measure == "count":
        return inter_count.astype(np.float64)
    if measure == "cosine":
        den = np.sqrt(a * b)
    else:
        den = a + b - inter_count
    return np.where(den > 0, inter_count / np.where(den > 0, den, 1.0), 0.0)
