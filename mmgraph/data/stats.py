"""Summary statistics of a :class:`~mmgraph.data.dataset.RecDataset` (``mmgraph data stats``)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from mmgraph.data.dataset import SPLITS, RecDataset


def dataset_stats(ds: RecDataset) -> Dict[str, Any]:
    """Counts of a dataset as a JSON-ready dict.

    Keys: ``name``, ``source``, ``n_users``, ``n_items``, ``n_interactions``, ``splits``
    (``{train, valid, test}`` row counts), ``density`` (interactions / (users * items)),
    ``modalities`` (``{name: dim}``), ``items_without_train`` / ``users_without_train`` (ids with no
    training interaction: cold-start items / users), ``users_per_split`` / ``items_per_split``
    (distinct ids with at least one row in each split), ``train_interactions_per_user`` /
    ``train_interactions_per_item`` (mean, min, max over users / items with any training row), and
    ``duplicate_pairs`` (rows repeating a (user, item) pair across all splits), ``held_out_in_train``
    (``{valid, test}``: rows that repeat a training pair; they can never be hits), ``zero_feature_rows``
    (``{modality: items whose feature row is all zeros}``: such items have no content signal).
    """
    user_train = ds.user_degree("train")
    item_train = ds.item_popularity("train")
    all_pairs = np.concatenate([ds.split(s) for s in SPLITS])
    n_distinct = len(np.unique(all_pairs[:, 0] * np.int64(max(ds.n_items, 1)) + all_pairs[:, 1]))
    cells = ds.n_users * ds.n_items
    return {
        "name": ds.name,
        "source": ds.source,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "n_interactions": ds.n_interactions,
        "splits": {s: int(len(ds.split(s))) for s in SPLITS},
        "density": float(ds.n_interactions / cells) if cells else 0.0,
        "modalities": {m: int(f.shape[1]) for m, f in ds.features.items()},
        "items_without_train": int((item_train == 0).sum()),
        "users_without_train": int((user_train == 0).sum()),
        "users_per_split": {s: int(len(np.unique(ds.split(s)[:, 0]))) for s in SPLITS},
        "items_per_split": {s: int(len(np.unique(ds.split(s)[:, 1]))) for s in SPLITS},
        "train_interactions_per_user": _summary(user_train[user_train > 0]),
        "train_interactions_per_item": _summary(item_train[item_train > 0]),
        "duplicate_pairs": int(len(all_pairs) - n_distinct),
        "held_out_in_train": {s: int(ds.in_train(s).sum()) for s in ("valid", "test")},
        "zero_feature_rows": {m: int((~np.asarray(f).any(axis=1)).sum()) for m, f in ds.features.items()},
    }


def _summary(counts: np.ndarray) -> Dict[str, float]:
    if len(counts) == 0:
        return {"mean": 0.0, "min": 0, "max": 0}
    return {"mean": round(float(counts.mean()), 3), "min": int(counts.min()), "max": int(counts.max())}


def format_stats(stats: Dict[str, Any]) -> str:
    """The dict of :func:`dataset_stats` as an aligned, human-readable block of lines."""
    sp = stats["splits"]
    mods = ", ".join(f"{m} {d}-d" for m, d in stats["modalities"].items()) or "none"
    per_user, per_item = stats["train_interactions_per_user"], stats["train_interactions_per_item"]
    rows = [
        ("dataset", f"{stats['name']} ({stats['source']})" if stats.get("source") else stats["name"]),
        ("users", f"{stats['n_users']:,}"),
        ("items", f"{stats['n_items']:,}"),
        ("interactions", f"{stats['n_interactions']:,} (train {sp['train']:,} / valid {sp['valid']:,} / "
                         f"test {sp['test']:,})"),
        ("density", f"{stats['density']:.6f}"),
        ("modalities", mods),
        ("train per user", f"mean {per_user['mean']:.2f}, min {per_user['min']}, max {per_user['max']} (over "
                           f"users with any)"),
        ("train per item", f"mean {per_item['mean']:.2f}, min {per_item['min']}, max {per_item['max']} (over "
                           f"items with any)"),
        ("items with no train interaction", f"{stats['items_without_train']:,}"),
        ("users with no train interaction", f"{stats['users_without_train']:,}"),
        ("duplicate (user, item) rows", f"{stats['duplicate_pairs']:,}"),
    ]
    held = stats.get("held_out_in_train") or {}
    if any(held.values()):
        rows.append(("valid / test rows also in train", f"{held['valid']:,} / {held['test']:,} (never hits: "
                                                         "training items are masked)"))
    zero = {m: n for m, n in (stats.get("zero_feature_rows") or {}).items() if n}
    if zero:
        rows.append(("items with an all-zero feature row", ", ".join(f"{m} {n:,}" for m, n in zero.items())))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
