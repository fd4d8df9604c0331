"""Read and write MMRec "atomic" folders: ``<name>.inter`` (TSV) + ``<modality>_feat.npy``.

The ``.inter`` file has a header with at least ``userID``, ``itemID`` and ``x_label`` (0 train,
1 valid, 2 test); ids are 0-based and contiguous. Optional ``user_map.tsv`` / ``item_map.tsv``
(columns ``index``, ``raw_id``) give the raw ids written by ``mmgraph data prepare``.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from mmgraph.data.dataset import RecDataset, check_features
from mmgraph.errors import DataError
from mmgraph.utils.io import atomic_write

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
FEATURE_SUFFIX = "_feat.npy"


def find_inter_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.inter"))
    if not files:
        raise DataError(f"{folder}: no '<name>.inter' file found (expected an MMRec atomic folder)")
    if len(files) > 1:
        named = folder / f"{folder.name}.inter"
        if named.exists():
            return named
        raise DataError(f"{folder}: several .inter files ({', '.join(f.name for f in files)}); keep one")
    return files[0]


def _row_line(path: Path, row: int, n_fields: int) -> Tuple[int, int]:
    """``(line number, number of fields)`` of data row ``row`` (pandas skips blank lines)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        next(fh, None)  # header
        k = -1
        for line_no, line in enumerate(fh, start=2):
            if not line.strip("\r\n"):
                continue
            k += 1
            if k == row:
                return line_no, line.rstrip("\r\n").count("\t") + 1
    return row + 2, n_fields


def _long_row(path: Path, n_fields: int) -> Tuple[int, int]:
    """``(line number, number of fields)`` of the first line with more than ``n_fields`` tab-separated fields."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        next(fh, None)
        for line_no, line in enumerate(fh, start=2):
            fields = line.rstrip("\r\n").count("\t") + 1
            if fields > n_fields:
                return line_no, fields
    return 0, n_fields


def _decode_error(path: Path) -> str:
    """Where ``path`` stops being UTF-8: ``"line L (byte B of the file): <reason>"``."""
    offset = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {line_no} (byte {offset + exc.start} of the file): {exc.reason}"
            offset += len(raw)
    return "unknown position"


def _read_inter(path: Path) -> pd.DataFrame:
    try:
        # index_col=False: a row with one field more than the header is an error (pandas would otherwise
        # take the first column as an index when every row has it, and shift every column)
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning:
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
        line, fields = _long_row(path, len(header))
        raise DataError(f"{path}, line {line}: {fields} fields, but the header has {len(header)} "
                        f"({', '.join(header)}); one tab-separated value per header column") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (expected a header line with {', '.join(REQUIRED_COLUMNS)} "
                        "and one line per interaction)") from None
    except pd.errors.ParserError as exc:  # ragged rows
        raise DataError(f"{path}: malformed TSV ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file ({_decode_error(path)}); save it as UTF-8") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        hint = ("; x_label is the split (0 train, 1 valid, 2 test): `mmgraph data prepare --ratings FILE` splits "
                "raw interactions" if "x_label" in missing else "")
        with open(path, encoding="utf-8", errors="replace") as fh:   # as written: pandas renames repeated names
            header = fh.readline().rstrip("\r\n").split("\t")
        if all(_is_number(h) for h in header):
            hint = " (the first line holds numbers: the file has no header line; add one)" + hint
        raise DataError(f"{path}: missing column(s) {missing}; header is {header}, expected "
                        f"{list(REQUIRED_COLUMNS)}{hint}")
    out = {}
    for col in REQUIRED_COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            line, fields = _row_line(path, row, len(df.columns))
            if fields < len(df.columns):
                raise DataError(f"{path}, line {line}: {fields} of {len(df.columns)} fields (a short row; the "
                                f"header has {', '.join(map(str, df.columns))})")
            raise DataError(f"{path}, line {line}: column {col} has {df[col].iloc[row]!r}, "
                            "expected a non-negative integer")
        out[col] = values.to_numpy().astype(np.int64)
    frame = pd.DataFrame(out)
    for col in ("userID", "itemID"):
        neg = (frame[col] < 0).to_numpy()
        if neg.any():
            row = int(np.flatnonzero(neg)[0])
            raise DataError(f"{path}, line {_row_line(path, row, len(df.columns))[0]}: column {col} has "
                            f"{frame[col].iloc[row]}, expected a 0-based non-negative id")
    bad_label = ~frame["x_label"].isin([0, 1, 2]).to_numpy()
    if bad_label.any():
        row = int(np.flatnonzero(bad_label)[0])
        raise DataError(f"{path}, line {row + 2}: x_label {frame['x_label'].iloc[row]}, expected 0, 1 or 2")
    return frame


#: ids spanning more than this many times their distinct count (and over a million) are taken for raw ids
SPARSE_ID_FACTOR, SPARSE_ID_MIN = 10, 1_000_000


def _check_id_range(inter: Path, ids: np.ndarray, col: str, has_features: bool) -> None:
    """Ids are 0-based and contiguous: a range far wider than the ids used (raw ids) is an error, unused ids
    a warning (users without interactions are never trained or evaluated; items with no interaction and no
    feature row to describe them are ranked and exported with untrained embeddings)."""
    distinct = np.unique(ids)
    n = int(distinct[-1]) + 1
    hint = "remap raw ids to 0..n-1 (`mmgraph data prepare` does it and keeps the raw ids in id maps)"
    if n > SPARSE_ID_FACTOR * len(distinct) and n > SPARSE_ID_MIN:
        row = int(np.argmax(ids))
        raise DataError(f"{inter}, line {_row_line(inter, row, 0)[0]}: {col} {ids[row]}, but there are only "
                        f"{len(distinct)} distinct ids: ids must be 0-based and contiguous; {hint}")
    unused = n - len(distinct)
    if unused and (col == "userID" or not has_features):
        present = np.zeros(n, dtype=bool)
        present[distinct] = True
        first = int(np.flatnonzero(~present)[0])
        what = ("users have no interaction (they are neither trained nor evaluated)" if col == "userID" else
                "items have no interaction and no features (they are still ranked and exported)")
        log.warning("%s: %d of the %d %s ids 0..%d are unused (first: %d): those %s; ids are expected 0-based "
                    "and contiguous: %s", inter, unused, n, col, n - 1, first, what, hint)


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """One array saved with ``np.save``; anything else (an ``.npz`` archive, a pickle, text) is a one-line
    :class:`DataError` saying what the file is."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        kind = ("a .npz archive (np.savez); save the one array with np.save" if magic[:2] == b"PK" else
                "not a .npy file (no NumPy header); write the [n_items, dim] array with np.save")
        raise DataError(f"{path}: {kind}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "pickled" in str(exc):
            raise DataError(f"{path}: an array of Python objects, expected numbers "
                            "(np.save a float array)") from None
        raise DataError(f"{path}: cannot read .npy ({exc})") from None


def _read_map(path: Path, n: int) -> Optional[np.ndarray]:
    if not path.exists():
        return None
    # keep_default_na=False: raw ids such as "NA", "null" or "" are ids, not missing values
    df = pd.read_csv(path, sep="\t", dtype={"raw_id": str}, keep_default_na=False)
    if list(df.columns[:2]) != ["index", "raw_id"] or len(df) != n:
        raise DataError(f"{path}: expected columns index, raw_id with {n} rows, got {list(df.columns)} "
                        f"with {len(df)} rows")
    order = np.argsort(df["index"].to_numpy())
    return df["raw_id"].to_numpy()[order].astype(object)


def load_atomic(path: Union[str, os.PathLike], modalities: Optional[Sequence[str]] = None,
                name: Optional[str] = None, mmap: bool = False) -> RecDataset:
    """Load an MMRec atomic folder into a :class:`RecDataset`.

    Args:
        path: the folder (or its ``.inter`` file).
        modalities: feature names to load (``image`` loads ``image_feat.npy``); ``None`` loads all.
        name: the dataset's label in logs and run folders (default: the folder's name).
        mmap: memory-map the ``.npy`` features instead of reading them.
    """
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise DataError(f"{path}: no such dataset folder")
    inter = find_inter_file(path)
    frame = _read_inter(inter)
    if len(frame) == 0:
        raise DataError(f"{inter}: no interactions")
    meta = {}
    if (path / "meta.json").exists():
        try:
            meta = json.loads((path / "meta.json").read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path / 'meta.json'}: invalid JSON ({exc})") from None
    for col, key in (("userID", "n_users"), ("itemID", "n_items")):
        if key in meta:  # meta.json fixes the id range: a larger id means a corrupt or mixed folder
            ids = frame[col].to_numpy()
            bad = np.flatnonzero(ids >= int(meta[key]))
            if len(bad):
                raise DataError(f"{inter}, line {bad[0] + 2}: {col} {ids[bad[0]]} is out of range, expected "
                                f"0..{int(meta[key]) - 1} ({key}={meta[key]} in meta.json)")
    for col, key in (("userID", "n_users"), ("itemID", "n_items")):
        if key not in meta:
            _check_id_range(inter, frame[col].to_numpy(), col, has_features=any(path.glob("*" + FEATURE_SUFFIX)))
    n_users = max(int(frame["userID"].max()) + 1, int(meta.get("n_users", 0)))
    n_items = max(int(frame["itemID"].max()) + 1, int(meta.get("n_items", 0)))
    pairs = frame[["userID", "itemID"]].to_numpy()
    labels = frame["x_label"].to_numpy()
    splits = {s: pairs[labels == k] for k, s in enumerate(("train", "valid", "test"))}
    for split, rows in splits.items():
        if len(rows) == 0:
            raise DataError(f"{inter}: the {split} split is empty (no rows with x_label="
                            f"{('train', 'valid', 'test').index(split)})")

    available = {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(path.glob("*" + FEATURE_SUFFIX))}
    others = sorted(p.name for p in path.iterdir()
                    if p.suffix == ".npz" or (p.suffix == ".npy" and not p.name.endswith(FEATURE_SUFFIX)))
    if others:   # e.g. text.npy, or an .npz: arrays that look like features but are not read as any
        (log.info if available else log.warning)(
            "%s: %s not read as item features (feature files are <modality>%s, one [n_items, dim] .npy each)",
            path, ", ".join(others), FEATURE_SUFFIX)
    # image_feat.pt / .csv / .txt: named as a modality's features but in another format -- a modality the user
    # meant to give would be missing from the run
    misformatted = sorted(p.name for p in path.iterdir() if p.is_file() and p.stem.endswith("_feat")
                          and p.suffix not in (".npy", ".npz"))
    if misformatted:
        log.warning("%s: %s not read: item features must be .npy files saved with np.save (<modality>%s); "
                    "these modalities are left out", path, ", ".join(misformatted), FEATURE_SUFFIX)
    wanted = list(available) if modalities is None else list(modalities)
    features: Dict[str, np.ndarray] = {}
    for mod in wanted:
        if mod not in available:
            raise DataError(f"{path}: modality '{mod}' requested but {mod}{FEATURE_SUFFIX} does not exist "
                            f"(available: {sorted(available) or 'none'})")
        arr = _load_npy(available[mod], mmap)
        if arr.ndim == 2 and arr.shape[0] < n_items and "n_items" not in meta:
            ids = frame["itemID"].to_numpy()
            bad = np.flatnonzero(ids >= arr.shape[0])
            if len(bad):
                raise DataError(f"{inter}, line {bad[0] + 2}: itemID {ids[bad[0]]} is out of range for "
                                f"{available[mod].name} with {arr.shape[0]} rows, expected 0..{arr.shape[0] - 1}")
        features[mod] = check_features(mod, arr, n_items, source=str(available[mod]))
        zero = int((~features[mod].any(axis=1)).sum())
        if zero:
            log.warning("%s: %d of %d items have an all-zero feature row (no similarity to anything: no kNN "
                        "neighbours in this modality)", available[mod], zero, n_items)

    return RecDataset(n_users, n_items, splits["train"], splits["valid"], splits["test"], features,
                      user_ids=_read_map(path / "user_map.tsv", n_users),
                      item_ids=_read_map(path / "item_map.tsv", n_items),
                      name=name or path.name, source=str(inter))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def save_atomic(dataset: RecDataset, folder: Union[str, os.PathLike], name: Optional[str] = None,
                ratings: Optional[np.ndarray] = None, timestamps: Optional[np.ndarray] = None) -> Path:
    """Write ``dataset`` as an MMRec atomic folder (atomic per file). Returns the folder.

    The ``.inter`` has MMRec's columns ``userID itemID rating timestamp x_label``; ``ratings`` / ``timestamps``
    (``[n_interactions]``, in the order train, valid, test rows) fill theirs, else they hold 1 and 0."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or dataset.name or folder.name
    rows = []
    for k, split in enumerate(("train", "valid", "test")):
        pairs = dataset.split(split)
        rows.append(np.column_stack([pairs, np.full(len(pairs), k, dtype=np.int64)]))
    allrows = np.concatenate(rows)
    for label, values in (("ratings", ratings), ("timestamps", timestamps)):
        if values is not None and len(values) != len(allrows):
            raise ValueError(f"save_atomic: {label} has {len(values)} values for {len(allrows)} interactions")
    df = pd.DataFrame({"userID": allrows[:, 0], "itemID": allrows[:, 1],
                       "rating": 1.0 if ratings is None else np.asarray(ratings),
                       "timestamp": 0 if timestamps is None else np.asarray(timestamps), "x_label": allrows[:, 2]})
    with atomic_write(folder / f"{name}.inter", "w") as fh:
        df.to_csv(fh, sep="\t", index=False)
    for mod, feat in dataset.features.items():
        with atomic_write(folder / f"{mod}{FEATURE_SUFFIX}", "wb") as fh:
            np.save(fh, np.ascontiguousarray(feat, dtype=np.float32))
    for label, ids in (("user", dataset.user_ids), ("item", dataset.item_ids)):
        if ids is not None:
            with atomic_write(folder / f"{label}_map.tsv", "w") as fh:
                pd.DataFrame({"index": np.arange(len(ids)), "raw_id": ids}).to_csv(fh, sep="\t", index=False)
    with atomic_write(folder / "meta.json", "w") as fh:
        json.dump({"n_users": dataset.n_users, "n_items": dataset.n_items, "name": name}, fh, indent=1)
    return folder
