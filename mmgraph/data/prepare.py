"""Turn raw interactions (+ item features / texts) into an MMRec atomic dataset.

Pipeline of :func:`prepare_dataset` (every step logs how many rows it dropped):

1. read the ratings file (:func:`mmgraph.data.raw.read_interactions`);
2. rating filter: keep ``rating >= min_rating`` and/or ``rating == rating_equals``;
3. drop duplicate (user, item) rows, keeping the first (the earliest when timestamps are given);
4. iterative k-core: drop users and items with fewer than ``k`` interactions until stable;
5. re-index raw ids to ``0..U-1`` / ``0..I-1`` (sorted by raw id, numerically when all are integers);
6. split (warm per-user 8:1:1, cold-start items, or leave-one-out; see :mod:`mmgraph.data.splits`);
7. align feature files by raw item id and embed item texts into ``text_feat.npy``;
8. write ``<name>.inter``, ``<modality>_feat.npy``, ``user_map.tsv``/``item_map.tsv``, ``meta.json`` and
   ``prepare_report.json`` (the counts of every step) with :func:`mmgraph.data.atomic.save_atomic`.

All filters are vectorised (``np.bincount`` / sorting); there is no Python loop over rows.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mmgraph.data.atomic import FEATURE_SUFFIX, save_atomic
from mmgraph.data.dataset import SPLITS, RecDataset
from mmgraph.data.raw import (PathLike, RawInteractions, align_features, read_feature_file,
                              read_interactions, read_item_texts)
from mmgraph.data.splits import cold_start_split, leave_one_out_split, warm_split
from mmgraph.errors import DataError
from mmgraph.utils.io import write_json

log = logging.getLogger(__name__)

SPLIT_METHODS = ("warm", "cold", "loo")
REPORT_FILE = "prepare_report.json"


# --------------------------------------------------------------------------- filters
def rating_mask(ratings: np.ndarray, min_rating: Optional[float] = None,
                rating_equals: Optional[float] = None) -> np.ndarray:
    """Bool ``[N]``: rows with ``rating >= min_rating`` and ``rating == rating_equals`` (each if given)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    keep = np.ones(len(ratings), dtype=bool)
    if min_rating is not None:
        keep &= ratings >= float(min_rating)
    if rating_equals is not None:
        keep &= np.isclose(ratings, float(rating_equals), rtol=0.0, atol=1e-9)
    return keep


def dedup_mask(pairs: np.ndarray, timestamps: Optional[np.ndarray] = None) -> np.ndarray:
    """Bool ``[N]`` keeping one row per distinct (user, item): the first in file order, or the one
    with the earliest timestamp when ``timestamps [N]`` is given."""
    pairs = _int_pairs(pairs)
    n = len(pairs)
    if n == 0:
        return np.zeros(0, dtype=bool)
    row = np.arange(n)
    keys = (row,) if timestamps is None else (row, np.asarray(timestamps, dtype=np.float64))
    order = np.lexsort((*keys, pairs[:, 1], pairs[:, 0]))
    sorted_pairs = pairs[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (sorted_pairs[1:] != sorted_pairs[:-1]).any(axis=1)
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    return keep


def kcore_mask(pairs: np.ndarray, k: int) -> np.ndarray:
    """Bool ``[N]`` of the rows in the k-core of the user-item graph.

    Users and items with fewer than ``k`` rows are dropped, repeatedly, until every remaining user and
    item has at least ``k``; the result is the maximal such subset (unique, whatever the drop order).
    ``pairs`` are non-negative integer ids ``[N, 2]`` without duplicate rows (see :func:`dedup_mask`).
    ``k <= 1`` keeps everything.
    """
    pairs = _int_pairs(pairs)
    keep = np.ones(len(pairs), dtype=bool)
    if k <= 1 or len(pairs) == 0:
        return keep
    users, items = pairs[:, 0], pairs[:, 1]
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    rounds = 0
    while True:
        rounds += 1
        user_deg = np.bincount(users[keep], minlength=n_users)
        item_deg = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_deg[users] >= k) & (item_deg[items] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    log.debug("%d-core stable after %d round(s)", k, rounds)
    return keep


def kcore_filter(pairs: np.ndarray, k: int) -> np.ndarray:
    """The rows of ``pairs [N, 2]`` in the k-core (``pairs[kcore_mask(pairs, k)]``)."""
    pairs = _int_pairs(pairs)
    return pairs[kcore_mask(pairs, k)]


def _int_pairs(pairs) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise DataError(f"interactions must be an integer array [N, 2], got {pairs.dtype} {pairs.shape}")
    if (pairs < 0).any():
        raise DataError("interactions must use non-negative integer ids")
    return pairs.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- ids
def sorted_ids(raw_ids: np.ndarray) -> np.ndarray:
    """Distinct raw ids (strings) in index order: numerically when all look like integers, else
    lexicographically. Returns an object array ``[M]``."""
    uniq = pd.unique(np.asarray(raw_ids, dtype=object))
    strings = np.asarray(uniq, dtype=str)
    if len(strings) and all(re.fullmatch(r"[+-]?\d{1,18}", s) for s in strings):
        order = np.lexsort((strings, strings.astype(np.int64)))
    else:
        order = np.argsort(strings, kind="stable")
    return np.asarray(uniq, dtype=object)[order]


def encode_ids(raw_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(codes int64 [N], ids object [M])`` with ``ids[codes] == raw_ids`` and ``ids`` from
    :func:`sorted_ids`."""
    ids = sorted_ids(raw_ids)
    codes = pd.Index(ids).get_indexer(np.asarray(raw_ids, dtype=object))
    return codes.astype(np.int64), ids


# --------------------------------------------------------------------------- splits
def split_interactions(pairs: np.ndarray, method: str = "warm", seed: int = 42,
                       n_items: Optional[int] = None, timestamps: Optional[np.ndarray] = None,
                       cold_fraction: float = 0.2) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``pairs [N, 2]`` with ``method`` ``warm`` | ``cold`` | ``loo`` -> (train, valid, test);
    an empty split is an error."""
    if method == "warm":
        parts = warm_split(pairs, seed=seed)
    elif method == "cold":
        parts = cold_start_split(pairs, n_items=n_items, seed=seed, cold_fraction=cold_fraction)
    elif method == "loo":
        parts = leave_one_out_split(pairs, seed=seed, timestamps=timestamps)
    else:
        raise DataError(f"unknown split {method!r}, expected one of {', '.join(SPLIT_METHODS)}")
    for name, part in zip(SPLITS, parts):
        if len(part) == 0:
            n_users = len(np.unique(pairs[:, 0])) if len(pairs) else 0
            n_it = len(np.unique(pairs[:, 1])) if len(pairs) else 0
            raise DataError(f"the {name} split is empty after the {method} split of {len(pairs)} "
                            f"interactions ({n_users} users, {n_it} items); expected at least one "
                            "interaction per split (use more data or another --split)")
    return parts


# --------------------------------------------------------------------------- pipeline
def _check_out_folder(out: Path, name: str, modalities: Sequence[str]) -> None:
    """Refuse an ``out`` that holds another dataset or feature files this run would not overwrite
    (they would be loaded with the new interactions). Nothing is ever deleted."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if not out.is_dir():
        return
    others = [p.name for p in out.glob("*.inter") if p.name != f"{name}.inter"]
    others += [p.name for p in out.glob("*" + FEATURE_SUFFIX) if p.name[: -len(FEATURE_SUFFIX)] not in modalities]
    if others:
        raise DataError(f"{out}: already holds {', '.join(sorted(others))} from another dataset or run; "
                        "choose an empty --out folder or remove them")


def _item_texts(items_path: PathLike, key: str, text_cols: Sequence[str], item_ids: np.ndarray,
                report: Dict[str, Any]) -> list:
    ids, texts = read_item_texts(items_path, key, text_cols)
    index = pd.Index(ids.astype(str)).get_indexer(np.asarray(item_ids, dtype=str))
    aligned = np.where(index >= 0, texts[np.maximum(index, 0)], "")
    not_listed = int((index < 0).sum())
    empty = int(((index >= 0) & (aligned == "")).sum())
    report["items_not_in_items_file"] = not_listed
    report["items_with_empty_text"] = empty
    if not_listed:
        first = item_ids[np.flatnonzero(index < 0)[0]]
        log.warning("%s: %d of %d items are not listed (first: item id %r); embedding an empty text "
                    "for them", Path(items_path).name, not_listed, len(item_ids), first)
    if empty:
        log.warning("%s: %d item(s) have empty %s; embedding an empty text for them",
                    Path(items_path).name, empty, "+".join(text_cols))
    return list(aligned)


def prepare_dataset(ratings: PathLike, out: Optional[PathLike] = None, *, user_col: str = "user_id",
                    item_col: str = "item_id", rating_col: Optional[str] = None,
                    timestamp_col: Optional[str] = None, min_rating: Optional[float] = None,
                    rating_equals: Optional[float] = None, items: Optional[PathLike] = None,
                    item_key: str = "item_id", text_cols: Optional[Sequence[str]] = None,
                    text_name: str = "text", features: Optional[Mapping[str, PathLike]] = None,
                    feature_ids: Optional[Mapping[str, PathLike]] = None,
                    feature_key: Optional[str] = None, allow_missing_features: bool = False,
                    kcore: int = 5, split: str = "warm", seed: int = 42, cold_fraction: float = 0.2,
                    name: Optional[str] = None, text_model: Any = None, text_batch_size: int = 64,
                    show_progress: bool = True, report: Optional[Dict[str, Any]] = None) -> RecDataset:
    """Prepare a raw interaction file into a :class:`RecDataset` (and an atomic folder at ``out``).

    Args:
        ratings: CSV/TSV/Parquet interactions with columns ``user_col``, ``item_col`` (raw ids) and
            optionally ``rating_col`` / ``timestamp_col``.
        min_rating, rating_equals: keep rows with ``rating >= min_rating`` / ``rating == rating_equals``
            (``rating_col`` defaults to ``"rating"`` when a filter is given).
        items, item_key, text_cols: item metadata table; the ``text_cols`` (joined with ``' '``) are
            embedded with all-MiniLM-L6-v2 into the ``text_name`` modality ``[I, 384]``.
        features: ``{modality: file}`` per-item features keyed by raw item id (see
            :func:`mmgraph.data.raw.read_feature_file`); ``feature_ids`` gives id lists for ``.npy``
            files; ``feature_key`` is the id column of feature tables (default ``item_key``).
        allow_missing_features: fill items without a feature row with zeros instead of failing.
        kcore: minimum interactions per user and per item (``<= 1`` disables).
        split: ``warm`` (protocol 8:1:1 per user), ``cold`` (``cold_fraction`` of items held out) or
            ``loo`` (leave-one-out, by timestamp when given).
        out: folder to write (MMRec atomic + id maps + ``prepare_report.json``); ``None`` writes nothing.
        name: dataset name (``<name>.inter``); default the ``out`` folder name or the ratings file stem.
        text_model: ``None`` (bundled MiniLM), a model folder, or an object with ``encode``.
        report: a dict to fill with the counts of every step (also written to ``prepare_report.json``).
    Returns:
        the :class:`RecDataset` with ``user_ids``/``item_ids`` holding the raw ids (strings).
    """
    started = time.perf_counter()
    ratings = Path(ratings)
    report = {} if report is None else report
    out_path = Path(out) if out is not None else None
    name = name or (out_path.name if out_path is not None else ratings.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise DataError(f"dataset name {name!r} must use letters, digits, '.', '_' or '-'")
    if split not in SPLIT_METHODS:
        raise DataError(f"unknown split {split!r}, expected one of {', '.join(SPLIT_METHODS)}")
    if int(kcore) < 0:
        raise DataError(f"--kcore must be >= 0 (0 or 1 disables the filter), got {kcore}")
    if split == "cold" and not 0 < float(cold_fraction) < 1:
        raise DataError(f"--cold-fraction must be in (0, 1), got {cold_fraction}")
    if text_cols and items is None:
        raise DataError("text columns need the item table: give --items FILE")
    if items is not None and not text_cols:
        raise DataError(f"{items}: an item table is only used for texts; give --text-cols")
    features = dict(features or {})
    feature_ids = dict(feature_ids or {})
    unknown = sorted(set(feature_ids) - set(features))
    if unknown:
        raise DataError(f"--feature-ids {unknown[0]}=...: no --features {unknown[0]}=FILE to go with it")
    if text_cols and text_name in features:
        raise DataError(f"modality {text_name!r} given both as --features and as embedded texts")
    if text_cols and (text_model is None or isinstance(text_model, (str, os.PathLike))):
        from mmgraph.data.text import bundled_model_path, _require_sentence_transformers

        _require_sentence_transformers()  # fail before the work when the text extra is missing
        if text_model is None:
            bundled_model_path()
    if out_path is not None:
        _check_out_folder(out_path, name, [*features, *([text_name] if text_cols else [])])
    if (min_rating is not None or rating_equals is not None) and rating_col is None:
        rating_col = "rating"

    report.update({"ratings": str(ratings), "name": name, "split": split, "seed": seed, "kcore": kcore})
    raw = read_interactions(ratings, user_col, item_col, rating_col, timestamp_col)
    report["rows_read"] = len(raw)

    all_item_ids = np.unique(raw.items)      # before any filter: the id range the feature rows may follow
    raw = _apply_rating_filter(raw, min_rating, rating_equals, report)
    if split == "loo" and raw.timestamps is None:
        log.warning("--split loo without --timestamp-col: each user's held-out interactions are drawn at random "
                    "(seeded), not its last ones; give the timestamp column for a leave-last-out split")
    user_codes, _ = encode_ids(raw.users)
    item_codes, _ = encode_ids(raw.items)
    pairs = np.column_stack([user_codes, item_codes])

    keep = dedup_mask(pairs, raw.timestamps)
    report["duplicates_dropped"] = int(len(pairs) - keep.sum())
    log.info("dedup (user, item): kept %d, dropped %d duplicate row(s)", keep.sum(), len(pairs) - keep.sum())
    raw, pairs = raw.subset(keep), pairs[keep]

    keep = kcore_mask(pairs, kcore)
    dropped_users = len(np.unique(pairs[:, 0])) - len(np.unique(pairs[keep, 0]))
    dropped_items = len(np.unique(pairs[:, 1])) - len(np.unique(pairs[keep, 1]))
    report.update({"kcore_rows_dropped": int(len(pairs) - keep.sum()), "kcore_users_dropped": dropped_users,
                   "kcore_items_dropped": dropped_items})
    if kcore > 1:
        log.info("%d-core: kept %d interactions, dropped %d row(s), %d user(s), %d item(s)", kcore,
                 keep.sum(), len(pairs) - keep.sum(), dropped_users, dropped_items)
    if not keep.any():
        raise DataError(f"{ratings}: no interactions left after {kcore}-core filtering of {len(pairs)} "
                        "rows; expected some users and items with at least k interactions (lower --kcore)")
    raw = raw.subset(keep)

    user_codes, user_ids = encode_ids(raw.users)
    item_codes, item_ids = encode_ids(raw.items)
    pairs = np.column_stack([user_codes, item_codes])
    n_users, n_items = len(user_ids), len(item_ids)
    train, valid, test = split_interactions(pairs, split, seed, n_items, raw.timestamps, cold_fraction)

    feats: Dict[str, np.ndarray] = {}
    key = feature_key or item_key
    for mod, path in features.items():
        table = read_feature_file(path, feature_ids.get(mod), key=key)
        if table.ids is None:
            _warn_one_based_rows(table, all_item_ids, mod)
        feats[mod] = align_features(table, item_ids, mod, allow_missing=allow_missing_features)
        log.info("feature %r: %s -> [%d, %d]", mod, Path(path).name, *feats[mod].shape)
    if text_cols:
        from mmgraph.data.text import embed_texts

        texts = _item_texts(items, item_key, text_cols, item_ids, report)
        t0 = time.perf_counter()
        feats[text_name] = embed_texts(texts, batch_size=text_batch_size, model=text_model,
                                       show_progress=show_progress)
        report["text_seconds"] = round(time.perf_counter() - t0, 2)
        log.info("embedded %d item texts -> %r [%d, %d] in %.1f s", len(texts), text_name,
                 *feats[text_name].shape, report["text_seconds"])

    dataset = RecDataset(n_users, n_items, train, valid, test, feats, user_ids=user_ids,
                         item_ids=item_ids, name=name, source=str(ratings))
    report.update({"n_users": n_users, "n_items": n_items, "n_interactions": dataset.n_interactions,
                   "splits": {s: len(dataset.split(s)) for s in SPLITS},
                   "modalities": {m: int(f.shape[1]) for m, f in feats.items()}})
    if out_path is not None:
        save_atomic(dataset, out_path, name=name, **_pair_values(pairs, raw, [train, valid, test], n_items))
        dataset.source = str(out_path / f"{name}.inter")
    report["seconds"] = round(time.perf_counter() - started, 2)
    if out_path is not None:
        write_json(out_path / REPORT_FILE, report)
    log.info("prepared %s: %d users, %d items, %d interactions (train %d / valid %d / test %d) in %.1f s",
             name, n_users, n_items, dataset.n_interactions, len(train), len(valid), len(test),
             report["seconds"])
    return dataset


def _pair_values(pairs: np.ndarray, raw: RawInteractions, splits: Sequence[np.ndarray],
                 n_items: int) -> Dict[str, np.ndarray]:
    """The ratings and timestamps read (those given) of the split rows, in their order: ``pairs [N, 2]`` are the
    distinct (user, item) rows aligned with ``raw``'s."""
    given = {k: v for k, v in (("ratings", raw.ratings), ("timestamps", raw.timestamps)) if v is not None}
    if not given:
        return {}
    keys = pairs[:, 0].astype(np.int64) * n_items + pairs[:, 1]
    order = np.argsort(keys)
    rows = np.concatenate(splits)
    at = order[np.searchsorted(keys[order], rows[:, 0].astype(np.int64) * n_items + rows[:, 1])]
    return {k: np.asarray(v)[at] for k, v in given.items()}


def _warn_one_based_rows(table, raw_item_ids: np.ndarray, name: str) -> None:
    """A ``.npy`` without an id list has row ``r`` = raw item id ``r``; ids running exactly ``1..R`` for ``R``
    rows say row 0 is most likely item 1, which that rule would shift by one row without an error."""
    ids = pd.to_numeric(pd.Series(raw_item_ids.astype(str)), errors="coerce").to_numpy()
    if len(ids) == 0 or not np.isfinite(ids).all():
        return
    n_rows = len(table.values)
    if ids.min() == 1 and ids.max() == n_rows:
        log.warning("%s: its %d rows are read as raw item ids 0..%d, but the ratings' item ids run 1..%d: if row 0 "
                    "is item 1, give the ids in order with --feature-ids %s=FILE", table.source, n_rows, n_rows - 1,
                    n_rows, name)


def _apply_rating_filter(raw: RawInteractions, min_rating: Optional[float], rating_equals: Optional[float],
                         report: Dict[str, Any]) -> RawInteractions:
    if min_rating is None and rating_equals is None:
        report["rating_filter_dropped"] = 0
        if raw.ratings is not None and len(raw.ratings) and raw.ratings.min() < raw.ratings.max():
            log.warning("%s: ratings from %g to %g are read but not filtered: every row counts as a positive "
                        "interaction; keep the positive ones with --min-rating or --rating-equals", raw.source,
                        float(raw.ratings.min()), float(raw.ratings.max()))
        return raw
    keep = rating_mask(raw.ratings, min_rating, rating_equals)
    rule = " and ".join(r for r in (f"rating >= {min_rating:g}" if min_rating is not None else "",
                                     f"rating == {rating_equals:g}" if rating_equals is not None else "") if r)
    report["rating_filter"] = rule
    report["rating_filter_dropped"] = int(len(keep) - keep.sum())
    log.info("rating filter (%s): kept %d, dropped %d row(s)", rule, keep.sum(), len(keep) - keep.sum())
    if not keep.any():
        lo, hi = float(raw.ratings.min()), float(raw.ratings.max())
        raise DataError(f"{raw.source}: no interactions left after the rating filter ({rule}); the ratings "
                        f"range from {lo:g} to {hi:g}")
    return raw.subset(keep)
