"""Synthetic data at the size of the largest public set, for scale tests and benchmarks.

``make_electronics(scale)`` has the shape of Amazon Electronics (MMRec's 5-core version): 192,403 users,
63,001 items, 1,689,188 interactions, 4096-d image and 384-d text features, each count times ``scale``
(feature dims unchanged). ``--data synthetic:preset=electronics,scale=0.25`` on the command line.

Generation is vectorised and linear in the interactions (the small-data generator of
:mod:`mmgraph.data.synthetic` scores every item for every user, which is quadratic): every user draws a
pool of candidate items by popularity, scores them by ``user . item / temperature`` with Gumbel noise and
keeps the best ``n_u`` distinct ones (a sample without replacement from the softmax over the pool), with
``n_u >= 5`` (5-core) and mean ``interactions / users``. Features are noisy random projections of the item
factors (as the small generator), generated in float32 blocks.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from mmgraph.data.dataset import RecDataset
from mmgraph.data.splits import warm_split
from mmgraph.errors import ConfigError

#: Amazon Electronics as in MMRec (5-core): users, items, interactions, feature dims
ELECTRONICS = {"n_users": 192_403, "n_items": 63_001, "n_interactions": 1_689_188,
               "modalities": {"image": 4096, "text": 384}}
PRESETS = {"electronics": ELECTRONICS}


def make_scaled(n_users: int, n_items: int, n_interactions: int, modalities: Optional[Dict[str, int]] = None,
                n_factors: int = 16, min_interactions: int = 5, temperature: float = 0.2,
                popularity_skew: float = 1.0, noise: float = 0.5, pool: int = 64, seed: int = 0,
                name: str = "synthetic-scaled", block: int = 16384) -> RecDataset:
    """A warm-split :class:`RecDataset` of about ``n_interactions`` interactions in O(interactions) time.

    Args:
        pool: candidate items drawn per user (by popularity) before the top-``n_u`` choice; users get at
            most ``pool // 2`` interactions.
        block: users (and feature rows) generated per block, bounding temporary memory.
    """
    modalities = {"image": 64, "text": 32} if modalities is None else dict(modalities)
    if n_users < 1 or n_items < 2 * min_interactions:
        raise ConfigError(f"scaled synthetic data needs >= 1 user and >= {2 * min_interactions} items, got "
                          f"{n_users} users and {n_items} items")
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, n_factors)).astype(np.float32)
    items = rng.standard_normal((n_items, n_factors)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    pop = np.exp(popularity_skew * rng.standard_normal(n_items))
    cdf = np.cumsum(pop / pop.sum())
    pool = max(int(pool), 2 * min_interactions)
    mean_extra = max(n_interactions / n_users - min_interactions, 1e-9)
    n_per_user = min_interactions + rng.geometric(1.0 / (1.0 + mean_extra), size=n_users) - 1
    n_per_user = np.minimum(n_per_user, min(pool // 2, n_items // 2))
    parts = []
    for s in range(0, n_users, block):
        u = users[s:s + block]
        cand = np.minimum(np.searchsorted(cdf, rng.random((len(u), pool))), n_items - 1)
        cand.sort(axis=1)
        dup = np.zeros_like(cand, dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        # also keep popular items: the popularity is in the pool draw, the factors in the score
        score = np.einsum("bf,bpf->bp", u, items[cand]) / temperature + rng.gumbel(size=cand.shape)
        score[dup] = -np.inf
        order = np.argsort(-score, axis=1)
        take = np.arange(pool)[None, :] < n_per_user[s:s + block, None]
        chosen = np.take_along_axis(cand, order, axis=1)
        valid = take & np.isfinite(np.take_along_axis(score, order, axis=1))
        rows = np.repeat(np.arange(s, s + len(u)), pool).reshape(len(u), pool)
        parts.append(np.stack([rows[valid], chosen[valid]], axis=1))
    pairs = np.concatenate(parts).astype(np.int64)
    # a user whose pool had too many repeats may fall under the 5-core: top it up with random new items
    counts = np.bincount(pairs[:, 0], minlength=n_users)
    short = np.flatnonzero(counts < min_interactions)
    if len(short):
        extra = []
        for u in short:
            have = set(pairs[pairs[:, 0] == u, 1].tolist())
            free = [i for i in rng.permutation(n_items)[:4 * min_interactions].tolist() if i not in have]
            extra.extend((u, i) for i in free[:min_interactions - counts[u]])
        pairs = np.concatenate([pairs, np.asarray(extra, dtype=np.int64).reshape(-1, 2)])
    features = {}
    for mod, dim in modalities.items():
        proj = (rng.standard_normal((n_factors, dim)) / np.sqrt(n_factors)).astype(np.float32)
        feat = np.empty((n_items, dim), dtype=np.float32)
        for s in range(0, n_items, block):
            signal = items[s:s + block] @ proj
            # noise relative to the signal's scale (entries of unit-norm factors @ proj have std 1/sqrt(f))
            feat[s:s + block] = signal + (noise / np.sqrt(n_factors)) * rng.standard_normal(signal.shape,
                                                                                           dtype=np.float32)
        features[mod] = feat
    train, valid, test = warm_split(pairs, seed=seed)
    return RecDataset(n_users, n_items, train, valid, test, features, name=name)


def make_electronics(scale: float = 1.0, seed: int = 0, modalities: Optional[Dict[str, int]] = None,
                     **kwargs) -> RecDataset:
    """Electronics-sized synthetic data: users, items and interactions of :data:`ELECTRONICS` times
    ``scale``, with its 4096-d image and 384-d text features (``modalities`` overrides them)."""
    if not scale > 0:
        raise ConfigError(f"scale must be > 0, got {scale}")
    spec = ELECTRONICS
    n_users = max(1, int(round(spec["n_users"] * scale)))
    n_items = max(20, int(round(spec["n_items"] * scale)))
    n_inter = max(5 * n_users, int(round(spec["n_interactions"] * scale)))
    tag = f"{scale:g}".replace(".", "p")
    return make_scaled(n_users, n_items, n_inter, modalities or dict(spec["modalities"]), seed=seed,
                       name=f"synthetic-electronics-x{tag}", **kwargs)
