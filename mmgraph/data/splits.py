"""Split rules of the shared protocol (warm per-user 8:1:1, cold-start items, leave-one-out).

Each function takes interactions ``pairs [N, 2]`` (user, item) and returns ``(train, valid, test)``
pair arrays. All are vectorised: no Python loop over users.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mmgraph.errors import DataError

Split = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _group_by_user(pairs: np.ndarray, rng: np.random.Generator, order_key: Optional[np.ndarray] = None):
    """Sort rows by user with a random (or given) order inside each user; return sorted rows,
    the rank of each row inside its user, and each row's user count."""
    key = rng.random(len(pairs)) if order_key is None else order_key
    order = np.lexsort((key, pairs[:, 0]))
    rows = pairs[order]
    users = rows[:, 0]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(rows)) - starts[users]
    return rows, rank, counts[users]


def warm_counts(n: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) sizes for users with ``n`` interactions (protocol.md rule)."""
    n = np.asarray(n, dtype=np.int64)
    m = np.where(n < 10, 2, n // 5)
    valid = np.where(n < 10, 1, m // 2)
    test = m - valid
    return n - m, valid, test


def warm_split(pairs: np.ndarray, seed: int = 42, min_interactions: int = 5) -> Split:
    """Random per-user split: n<10 -> n-2/1/1; else m=floor(0.2n), valid=floor(m/2), test=m-valid.

    ``pairs``: ``[N, 2]`` int ``(user, item)`` rows (deduplicated); returns the :class:`Split` of three
    ``[n_s, 2]`` arrays (train, valid, test) that partition them.

    Users with fewer than ``min_interactions`` (default 5, so that every user keeps >= 3 train) are
    rejected with a :class:`DataError`; run k-core filtering first.
    """
    pairs = np.asarray(pairs, dtype=np.int64)
    counts = np.bincount(pairs[:, 0])
    short = np.flatnonzero((counts > 0) & (counts < min_interactions))
    if len(short):
        raise DataError(f"warm split: user {short[0]} has {counts[short[0]]} interactions, expected at "
                        f"least {min_interactions} ({len(short)} such users); apply --kcore first")
    rows, rank, n = _group_by_user(pairs, np.random.default_rng(seed))
    n_train, n_valid, _ = warm_counts(n)
    train = rows[rank < n_train]
    valid = rows[(rank >= n_train) & (rank < n_train + n_valid)]
    test = rows[rank >= n_train + n_valid]
    return train, valid, test


def leave_one_out_split(pairs: np.ndarray, seed: int = 42, timestamps: Optional[np.ndarray] = None) -> Split:
    """Per user: the last interaction (by timestamp when given, else random) is test, the one before
    valid, the rest train. Users need at least 3 interactions."""
    pairs = np.asarray(pairs, dtype=np.int64)
    counts = np.bincount(pairs[:, 0])
    short = np.flatnonzero((counts > 0) & (counts < 3))
    if len(short):
        raise DataError(f"leave-one-out split: user {short[0]} has {counts[short[0]]} interactions, "
                        "expected at least 3")
    rng = np.random.default_rng(seed)
    key = None
    if timestamps is not None:
        # order by timestamp, ties broken at random: the rank of each row in that order is the key
        # (adding a small jitter instead would reorder timestamps closer than the jitter)
        stamps = np.asarray(timestamps, dtype=np.float64)
        if stamps.shape != (len(pairs),):
            raise DataError(f"leave-one-out split: {stamps.shape[0] if stamps.ndim else 0} timestamps for "
                            f"{len(pairs)} interactions, expected one per interaction")
        order = np.lexsort((rng.random(len(pairs)), stamps))
        key = np.empty(len(pairs), dtype=np.int64)
        key[order] = np.arange(len(pairs))
    rows, rank, n = _group_by_user(pairs, rng, key)
    return rows[rank < n - 2], rows[rank == n - 2], rows[rank == n - 1]


def cold_start_split(pairs: np.ndarray, n_items: Optional[int] = None, seed: int = 42,
                     cold_fraction: float = 0.2) -> Split:
    """Pick ``cold_fraction`` of the items; half become valid items, half test items; each
    interaction goes to its item's split (CM3 paper, section 4.3)."""
    pairs = np.asarray(pairs, dtype=np.int64)
    if not 0.0 < cold_fraction < 1.0:
        raise DataError(f"cold_fraction must be in (0, 1), got {cold_fraction}")
    items = np.unique(pairs[:, 1])
    rng = np.random.default_rng(seed)
    picked = rng.permutation(items)[: int(round(cold_fraction * len(items)))]
    half = len(picked) // 2
    label = np.zeros(int(pairs[:, 1].max()) + 1 if n_items is None else n_items, dtype=np.int8)
    label[picked[:half]] = 1
    label[picked[half:]] = 2
    lab = label[pairs[:, 1]]
    return pairs[lab == 0], pairs[lab == 1], pairs[lab == 2]
