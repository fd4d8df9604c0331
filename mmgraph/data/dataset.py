"""The in-memory recommendation dataset every other component consumes."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from mmgraph.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def _as_pairs(name: str, arr) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"{name} interactions must have shape [N, 2] (user, item), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} interactions must be integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass
class RecDataset:
    """Implicit-feedback interactions split into train/valid/test plus item modality features.

    Args:
        n_users: number of users U (ids ``0..U-1``).
        n_items: number of items I (ids ``0..I-1``).
        train, valid, test: int64 arrays of shape ``[N, 2]`` holding (user, item) rows.
        features: ``{modality: float32 array [I, d_m]}``; row ``i`` belongs to item ``i``.
        user_ids, item_ids: optional raw-id arrays of length U / I (index -> raw id).
        name: a label used in logs and run directories.
        source: the file the interactions were read from (named in errors and run records); None when built in
            memory.
    """

    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: Dict[str, np.ndarray] = field(default_factory=dict)
    user_ids: Optional[np.ndarray] = None
    item_ids: Optional[np.ndarray] = None
    name: str = "dataset"
    source: Optional[str] = None

    def __post_init__(self) -> None:
        self.n_users = int(self.n_users)
        self.n_items = int(self.n_items)
        for split in SPLITS:
            setattr(self, split, _as_pairs(split, getattr(self, split)))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`DataError` on ids out of range or invalid feature matrices."""
        where = f" in {self.source}" if self.source else ""
        for split in SPLITS:
            pairs = getattr(self, split)
            if len(pairs) == 0:
                continue
            for col, (label, bound) in enumerate((("user", self.n_users), ("item", self.n_items))):
                ids = pairs[:, col]
                bad = np.flatnonzero((ids < 0) | (ids >= bound))
                if len(bad):
                    raise DataError(
                        f"{split} split{where}: {label} id {ids[bad[0]]} at row {bad[0]} is out of "
                        f"range, expected 0..{bound - 1}")
        for name, feat in list(self.features.items()):
            self.features[name] = check_features(name, feat, self.n_items, source=self.source)
        if self.user_ids is not None and len(self.user_ids) != self.n_users:
            raise DataError(f"user id map has {len(self.user_ids)} entries, expected n_users={self.n_users}")
        if self.item_ids is not None and len(self.item_ids) != self.n_items:
            raise DataError(f"item id map has {len(self.item_ids)} entries, expected n_items={self.n_items}")

    # ------------------------------------------------------------------ views
    @property
    def modalities(self) -> list:
        """The item modality names, in the order of ``features`` (e.g. ``["image", "audio"]``)."""
        return list(self.features)

    def split(self, name: str) -> np.ndarray:
        """The ``[N, 2]`` (user, item) rows of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}, expected one of {SPLITS}")
        return getattr(self, name)

    @property
    def n_interactions(self) -> int:
        return sum(len(getattr(self, s)) for s in SPLITS)

    def user_item_csr(self, split: str = "train"):
        """Binary user x item matrix of a split as ``(indptr [U+1], indices [nnz])``, sorted, no duplicates."""
        pairs = np.unique(self.split(split), axis=0)
        counts = np.bincount(pairs[:, 0], minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, pairs[:, 1].copy()

    def in_train(self, split: str) -> np.ndarray:
        """``[len(split)]`` bool: which rows of ``split`` repeat a TRAINING (user, item) pair. Evaluation masks
        training items, so such a held-out row can never be a hit (the protocol's splits have none)."""
        n = np.int64(max(self.n_items, 1))
        pairs, train = self.split(split), self.train
        return np.isin(pairs[:, 0] * n + pairs[:, 1], train[:, 0] * n + train[:, 1])

    def item_popularity(self, split: str = "train") -> np.ndarray:
        """Interactions per item in ``split``: int64 ``[I]``."""
        return np.bincount(self.split(split)[:, 1], minlength=self.n_items)

    def user_degree(self, split: str = "train") -> np.ndarray:
        """Interactions per user in ``split``: int64 ``[U]``."""
        return np.bincount(self.split(split)[:, 0], minlength=self.n_users)

    def raw_user_id(self, idx):
        """The raw user id(s) of index / index array ``idx`` (the index itself when the data has no raw ids)."""
        return self.user_ids[idx] if self.user_ids is not None else idx

    def raw_item_id(self, idx):
        """The raw item id(s) of index / index array ``idx`` (the index itself when the data has no raw ids)."""
        return self.item_ids[idx] if self.item_ids is not None else idx

    def with_features(self, features: Dict[str, np.ndarray]) -> "RecDataset":
        """A shallow copy with a different feature dict (used by modality ablations and transforms)."""
        return RecDataset(self.n_users, self.n_items, self.train, self.valid, self.test, dict(features),
                          self.user_ids, self.item_ids, self.name, self.source)

    def __repr__(self) -> str:
        mods = ", ".join(f"{k}:{v.shape[1]}" for k, v in self.features.items()) or "none"
        return (f"RecDataset({self.name}: users={self.n_users}, items={self.n_items}, "
                f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)}, "
                f"modalities=[{mods}])")


def check_features(name: str, feat, n_items: int, source: Optional[str] = None) -> np.ndarray:
    """Validate one modality matrix: 2-d, ``n_items`` rows, finite; returns it as float32."""
    where = source or f"feature '{name}'"
    feat = np.asarray(feat)
    if feat.ndim != 2:
        raise DataError(f"{where}: feature '{name}' must be 2-d [n_items, dim], got shape {feat.shape}")
    if feat.shape[0] != n_items:
        raise DataError(f"{where}: feature '{name}' has {feat.shape[0]} rows, expected one per item "
                        f"({n_items})")
    if feat.shape[1] == 0:
        raise DataError(f"{where}: feature '{name}' has 0 columns (shape {feat.shape}), expected >= 1 value per item")
    if not np.issubdtype(feat.dtype, np.number) or np.issubdtype(feat.dtype, np.complexfloating):
        raise DataError(f"{where}: feature '{name}' must be real numbers, got dtype {feat.dtype}")
    if not np.issubdtype(feat.dtype, np.floating):
        log.warning("%s: feature '%s' has integer dtype %s; converted to float32", where, name, feat.dtype)
    feat = np.ascontiguousarray(feat, dtype=np.float32)
    finite = np.isfinite(feat)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DataError(f"{where}: feature '{name}' has NaN/inf values (first at item {row}); "
                        "clean or impute the features first")
    return feat
