"""A synthetic multimodal dataset with planted structure, for demos and tests.

Users and items get latent factors; each user draws interactions from a softmax over
``user . item / temperature + popularity``; each modality is a noisy random projection of the
item factors, so item features carry real collaborative signal (a model that uses them can beat
one that does not, especially for items with few training interactions).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from mmgraph.data.dataset import RecDataset
from mmgraph.data.splits import cold_start_split, warm_split
from mmgraph.errors import DataError


def make_synthetic(n_users: int = 1000, n_items: int = 800, n_factors: int = 8,
                   modalities: Optional[Dict[str, int]] = None, mean_interactions: float = 16.0,
                   min_interactions: int = 6, temperature: float = 0.15, popularity_skew: float = 0.8,
                   noise: float = 0.5, split: str = "warm", seed: int = 0,
                   name: str = "synthetic") -> RecDataset:
    """Generate a :class:`RecDataset`.

    Args:
        modalities: ``{name: dim}``; default ``{"image": 64, "text": 32}``.
        mean_interactions: mean interactions per user (geometric tail, at least ``min_interactions``).
        temperature: lower -> interactions follow the latent factors more tightly.
        popularity_skew: scale of the log-normal item popularity bias (0 = none).
        noise: feature noise std relative to the projected signal.
        split: ``warm`` (protocol 8:1:1 per user) or ``cold`` (20 % of items held out).
    """
    modalities = {"image": 64, "text": 32} if modalities is None else dict(modalities)
    if split == "warm" and n_items // 2 < 5:   # a user gets at most items / 2; the warm split needs 5 each
        raise DataError(f"synthetic data: items={n_items} is too few for the warm split (a user has at most "
                        "items / 2 interactions, the split needs 5): use items >= 10")
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_users, n_factors)) / np.sqrt(n_factors)
    items = rng.normal(size=(n_items, n_factors)) / np.sqrt(n_factors)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    popularity = popularity_skew * rng.standard_normal(n_items)

    n_per_user = min_interactions + rng.geometric(1.0 / max(mean_interactions - min_interactions, 1.0),
                                                  size=n_users) - 1
    n_per_user = np.minimum(n_per_user, n_items // 2)
    pairs = []
    batch = 256  # bounded users x items block
    for start in range(0, n_users, batch):
        logits = users[start:start + batch] @ items.T / temperature + popularity
        # Gumbel top-k = sampling without replacement from softmax(logits)
        keys = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-keys, axis=1)
        for row, u in enumerate(range(start, min(start + batch, n_users))):
            chosen = order[row, : n_per_user[u]]
            pairs.append(np.column_stack([np.full(len(chosen), u), chosen]))
    pairs = np.concatenate(pairs).astype(np.int64)

    features = {}
    for mod, dim in modalities.items():
        proj = rng.normal(size=(n_factors, dim))
        signal = items @ proj
        feat = signal + noise * signal.std() * rng.normal(size=signal.shape)
        features[mod] = feat.astype(np.float32)

    if split == "warm":
        train, valid, test = warm_split(pairs, seed=seed)
    elif split == "cold":
        train, valid, test = cold_start_split(pairs, n_items=n_items, seed=seed)
    else:
        raise ValueError(f"unknown split {split!r}, expected 'warm' or 'cold'")
    return RecDataset(n_users, n_items, train, valid, test, features, name=name)
