"""Readers for raw ("bring your own") data: interaction tables and per-item feature files.

Tables are read by extension: ``.csv`` (comma), ``.tsv``/``.tab``/``.txt``/``.inter`` (tab),
``.parquet``/``.pq`` (a trailing ``.gz``/``.bz2``/``.xz``/``.zip``/``.zst`` is allowed for text
tables). Raw ids are kept as exact strings (``"007"`` and ``"7"`` are different ids, ``"NA"`` is an
id, not a missing value), so ids in the ratings file and in the feature files match textually.

Every problem raises :class:`~mmgraph.errors.DataError` with one line naming the file, the line (or
row, or id) and what was expected. Line numbers count the header as line 1.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from mmgraph.errors import DataError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t", ".inter": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}


def _q(value) -> str:
    """Quote a cell or id for a message: ``'abc'`` (plain ``str``, whatever numpy/pandas type it has)."""
    return repr(str(value))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def table_format(path: PathLike) -> str:
    """``"parquet"`` or the field separator of a text table, from the file name."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in PARQUET_SUFFIXES:
        return "parquet"
    if ext in TEXT_SEPARATORS:
        return TEXT_SEPARATORS[ext]
    raise DataError(f"{path}: unknown table format {ext or '(no extension)'!r}, expected .csv, .tsv, "
                    ".txt or .parquet")


def _kind(path: PathLike, sep: Optional[str] = None) -> str:
    """``"parquet"`` or ``"text"``: how rows of ``path`` are named in messages."""
    return "parquet" if sep is None and table_format(path) == "parquet" else "text"


def _line_of(row: int, fmt: str) -> str:
    """Human position of data row ``row`` (0-based): ``line N`` for a text table (header = line 1) or an
    id list (``fmt="list"``, no header), ``row N`` for Parquet and ``.npy``."""
    if fmt in ("parquet", "npy"):
        return f"row {row}"
    return f"line {row + 1}" if fmt == "list" else f"line {row + 2}"


def read_table(path: PathLike, columns: Optional[Sequence[str]] = None, sep: Optional[str] = None,
               what: str = "table") -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table. Text tables come back with every cell as a string (``""`` for an
    empty cell, so ids like ``"NA"`` survive); Parquet keeps its column types.

    Blank lines of text tables are dropped (and logged); the returned frame carries the 0-based data
    row of each kept line as its index, so ``_line_of(index)`` names the file line (a quoted field
    spanning several lines shifts the numbers that follow it).

    Args:
        columns: columns that must exist (a missing one is an error naming the header).
        sep: field separator overriding the one implied by the extension.
        what: a word for messages (``"ratings"``, ``"features"``...).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what} file")
    fmt = sep or table_format(path)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types
            raise DataError(f"{path}: cannot read Parquet ({_one_line(exc)})") from None
        df.columns = [str(c) for c in df.columns]
    else:
        try:
            df = pd.read_csv(path, sep=fmt, dtype=str, keep_default_na=False, skip_blank_lines=False)
        except pd.errors.ParserError as exc:
            msg = _one_line(exc)
            m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
            if m:
                raise DataError(f"{path}, line {m.group(2)}: malformed row with {m.group(3)} fields, "
                                f"expected {m.group(1)} (separator {fmt!r})") from None
            raise DataError(f"{path}: malformed {what} file ({msg})") from None
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: empty {what} file, expected a header line") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({_one_line(exc)})") from None
        blank = (df == "").all(axis=1).to_numpy() if len(df.columns) else np.zeros(len(df), bool)
        if blank.any():
            log.info("%s: skipped %d blank line(s)", path.name, int(blank.sum()))
            df = df[~blank]
    missing = [c for c in (columns or ()) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} in the {what} header "
                        f"{list(df.columns)}; name the right column with the matching option")
    return df


def _id_strings(df: pd.DataFrame, col: str, path: Path, fmt: str, what: str) -> np.ndarray:
    """Column ``col`` as an object array of stripped strings; empty / null ids are an error."""
    values = df[col]
    null = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values.dtype) and not null.any():
        # parquet float ids that are whole numbers -> "12" rather than "12.0"
        as_float = values.to_numpy(dtype=np.float64)
        if np.all(as_float == np.round(as_float)):
            values = pd.Series(as_float.astype(np.int64), index=values.index)
    strings = values.astype(str).str.strip().to_numpy(dtype=object)
    bad = null | (strings == "")
    if bad.any():
        row = int(df.index[np.flatnonzero(bad)[0]])
        raise DataError(f"{path}, {_line_of(row, fmt)}: empty {what} in column {col!r}, expected an id")
    return strings


def _numbers(df: pd.DataFrame, col: str, path: Path, fmt: str, allow_dates: bool = False) -> np.ndarray:
    """Column ``col`` as float64; a cell that is not a number is an error naming its line."""
    values = df[col]
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        out = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(out)
    else:
        out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(out)
        if bad.any() and allow_dates:
            with warnings.catch_warnings():   # pandas' "could not infer format" notice: a bad cell is our error
                warnings.simplefilter("ignore", UserWarning)
                dates = pd.to_datetime(values, errors="coerce", utc=True)
            if not dates.isna().any():
                seconds = (dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
                return seconds.to_numpy(dtype=np.float64)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        row = int(df.index[pos])
        kind = "a number or a date" if allow_dates else "a finite number"
        raise DataError(f"{path}, {_line_of(row, fmt)}: column {col!r} has {_q(values.iloc[pos])}, "
                        f"expected {kind}")
    return out


@dataclass
class RawInteractions:
    """Interactions as read from a raw file, one entry per kept row.

    Attributes:
        users, items: object arrays ``[N]`` of raw id strings.
        ratings: float64 ``[N]`` or ``None`` when no rating column was read.
        timestamps: float64 ``[N]`` (seconds for date strings) or ``None``.
        source: the file they came from.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: Optional[np.ndarray] = None
    timestamps: Optional[np.ndarray] = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, mask: np.ndarray) -> "RawInteractions":
        """The rows where ``mask`` (bool ``[N]`` or index array) selects."""
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return RawInteractions(self.users[mask], self.items[mask], pick(self.ratings),
                               pick(self.timestamps), self.source)


def read_interactions(path: PathLike, user_col: str = "user_id", item_col: str = "item_id",
                      rating_col: Optional[str] = None, timestamp_col: Optional[str] = None,
                      sep: Optional[str] = None) -> RawInteractions:
    """Read a raw interaction file (CSV/TSV/Parquet) with the given column names.

    Args:
        user_col, item_col: raw id columns (kept as strings).
        rating_col: optional numeric rating column (needed only for rating filters).
        timestamp_col: optional numeric or date column (used by the leave-one-out split).
    Returns:
        :class:`RawInteractions` with ``N`` rows (blank lines skipped and logged).
    """
    path = Path(path)
    cols = [c for c in (user_col, item_col, rating_col, timestamp_col) if c]
    df = read_table(path, columns=cols, sep=sep, what="ratings")
    fmt = _kind(path, sep)
    if len(df) == 0:
        raise DataError(f"{path}: no interaction rows, expected at least one line after the header")
    users = _id_strings(df, user_col, path, fmt, "user id")
    items = _id_strings(df, item_col, path, fmt, "item id")
    ratings = _numbers(df, rating_col, path, fmt) if rating_col else None
    stamps = _numbers(df, timestamp_col, path, fmt, allow_dates=True) if timestamp_col else None
    log.info("%s: read %d interactions (%d users, %d items)", path.name, len(users),
             len(pd.unique(users)), len(pd.unique(items)))
    return RawInteractions(users, items, ratings, stamps, str(path))


# --------------------------------------------------------------------------- item files
def read_item_ids(path: PathLike, key: str = "item_id") -> np.ndarray:
    """Raw item ids of an id-list file: ``.txt``/``.ids``/no extension = one id per line (no header);
    a CSV/TSV/Parquet table = its ``key`` column. Returns an object array of strings ``[R]``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ("", ".txt", ".ids", ".list"):
        if not path.is_file():
            raise DataError(f"{path}: no such item id list file")
        lines = path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        ids = np.array([s.strip() for s in lines], dtype=object)
        empty = np.flatnonzero(ids == "")
        if len(empty):
            raise DataError(f"{path}, line {empty[0] + 1}: empty item id, expected one id per line")
        _check_unique(ids, np.arange(len(ids)), path, "list")
        return ids
    df = read_table(path, columns=[key], what="item id")
    fmt = _kind(path)
    ids = _id_strings(df, key, path, fmt, "item id")
    _check_unique(ids, df.index.to_numpy(), path, fmt)
    return ids


def read_item_texts(path: PathLike, key: str, text_cols: Sequence[str],
                    sep: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read an item metadata table and join ``text_cols`` with ``' '`` per item.

    Returns:
        ``(ids [R], texts [R])`` object arrays; a duplicated id is an error naming both lines.
    """
    path = Path(path)
    if not text_cols:
        raise DataError(f"{path}: no text columns given, expected e.g. --text-cols title")
    df = read_table(path, columns=[key, *text_cols], sep=sep, what="items")
    fmt = _kind(path, sep)
    ids = _id_strings(df, key, path, fmt, "item id")
    _check_unique(ids, df.index.to_numpy(), path, fmt)
    parts = [df[c].fillna("").astype(str).str.strip() for c in text_cols]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.str.cat(part, sep=" ")
    return ids, joined.str.strip().to_numpy(dtype=object)


def _check_unique(ids: np.ndarray, rows: np.ndarray, path: Path, fmt: str) -> None:
    uniq, first, counts = np.unique(ids.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[np.flatnonzero(counts > 1)[0]]
        where = np.flatnonzero(ids.astype(str) == dup)[:2]
        raise DataError(f"{path}: item id {_q(dup)} appears twice ({_line_of(int(rows[where[0]]), fmt)} and "
                        f"{_line_of(int(rows[where[1]]), fmt)}), expected one row per item")


@dataclass
class FeatureTable:
    """Per-item features keyed by raw id, before alignment.

    Attributes:
        ids: object array ``[R]`` of raw ids, or ``None`` when row ``r`` belongs to the item whose raw
            id is the integer ``r`` (a bare ``.npy`` without id list).
        values: float32 ``[R, d]``.
        source: the file, for messages.
        fmt: ``"npy"``, ``"text"`` or ``"parquet"`` (how rows are named in messages).
        rows: 0-based data row in the file of each entry of ``values`` (tables skip blank lines).
    """

    ids: Optional[np.ndarray]
    values: np.ndarray
    source: str
    fmt: str = "npy"
    rows: Optional[np.ndarray] = None

    def where(self, r: int) -> str:
        """``"FILE, line N"`` (or ``row N``) for entry ``r`` of ``values``."""
        row = int(self.rows[r]) if self.rows is not None else r
        return f"{self.source}, {_line_of(row, self.fmt)}"


def _numeric_matrix(df: pd.DataFrame, cols: List[str], path: Path, fmt: str) -> np.ndarray:
    """Columns ``cols`` as float32 ``[R, len(cols)]`` (or a single list/array column stacked)."""
    if len(cols) == 1 and df[cols[0]].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).all():
        try:
            return np.stack([np.asarray(v, dtype=np.float32) for v in df[cols[0]]])
        except ValueError as exc:
            raise DataError(f"{path}: column {cols[0]!r} holds vectors of different lengths "
                            f"({_one_line(exc)}), expected one fixed-size vector per item") from None
    block = df[cols].to_numpy()
    try:
        return block.astype(np.float64).astype(np.float32)
    except (ValueError, TypeError):
        for col in cols:
            _numbers_allow_nan(df[col], path, fmt, col)
        raise DataError(f"{path}: feature columns are not numeric") from None


def _numbers_allow_nan(values: pd.Series, path: Path, fmt: str, col: str) -> None:
    """Raise on the first cell of ``values`` that does not parse as a float (NaN/inf parse)."""
    for pos, cell in enumerate(values.to_numpy()):
        try:
            float(cell)
        except (ValueError, TypeError):
            row = int(values.index[pos])
            raise DataError(f"{path}, {_line_of(row, fmt)}: feature column {col!r} has {_q(cell)}, "
                            "expected a number") from None


def read_feature_file(path: PathLike, ids_path: Optional[PathLike] = None, key: str = "item_id",
                      sep: Optional[str] = None) -> FeatureTable:
    """Read per-item features keyed by raw item id.

    * ``.npy`` (``[R, d]``) with ``ids_path``: row ``r`` belongs to the ``r``-th id of the list
      (see :func:`read_item_ids`); the counts must match.
    * ``.npy`` without ``ids_path``: row ``r`` belongs to the item whose raw id is the integer ``r``.
    * a table (CSV/TSV/Parquet): column ``key`` holds the raw id, every other column is one feature
      dimension (or a single Parquet column holds one vector per row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such feature file")
    if path.suffix.lower() == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: cannot read .npy ({_one_line(exc)})") from None
        if values.ndim != 2:
            raise DataError(f"{path}: features must be a 2-d array [items, dim], got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.number):
            raise DataError(f"{path}: features must be numeric, got dtype {values.dtype}")
        ids = None
        if ids_path is not None:
            ids = read_item_ids(ids_path, key)
            if len(ids) != len(values):
                raise DataError(f"{path}: {len(values)} feature rows but the id list {ids_path} has "
                                f"{len(ids)} ids, expected one row per listed item")
        return FeatureTable(ids, values.astype(np.float32, copy=False), str(path), "npy")
    if ids_path is not None:
        raise DataError(f"{path}: an id list is only used with .npy features; a table names its ids in "
                        f"column {key!r}")
    fmt = _kind(path, sep)
    df = read_table(path, columns=[key], sep=sep, what="features")
    cols = [c for c in df.columns if c != key]
    if not cols:
        raise DataError(f"{path}: no feature columns besides the id column {key!r}")
    if len(df) == 0:
        raise DataError(f"{path}: no feature rows")
    ids = _id_strings(df, key, path, fmt, "item id")
    _check_unique(ids, df.index.to_numpy(), path, fmt)
    values = _numeric_matrix(df, cols, path, fmt)
    return FeatureTable(ids, values, str(path), fmt, rows=df.index.to_numpy())


def align_features(table: FeatureTable, item_ids: np.ndarray, name: str,
                   allow_missing: bool = False) -> np.ndarray:
    """Reorder ``table`` so that row ``i`` belongs to ``item_ids[i]`` (the new item index).

    Args:
        item_ids: object array ``[I]`` of raw item ids (index -> raw id).
        allow_missing: fill items without a feature row with zeros (logged) instead of failing.
    Returns:
        float32 ``[I, d]``. Feature rows of unknown items are ignored (logged); NaN/inf in a used row
        is an error naming the file line and the raw id.
    """
    item_ids = np.asarray(item_ids, dtype=object).astype(str)
    n_rows = len(table.values)
    if table.ids is None:
        as_int = pd.to_numeric(pd.Series(item_ids), errors="coerce").to_numpy()
        not_int = ~np.isfinite(as_int) | (as_int != np.round(as_int))
        if not_int.any():
            raise DataError(f"{table.source}: item id {_q(item_ids[np.flatnonzero(not_int)[0]])} is not an "
                            "integer row number; give an id list for this .npy (--feature-ids "
                            f"{name}=FILE)")
        index = as_int.astype(np.int64)
        out_of_range = (index < 0) | (index >= n_rows)
        if out_of_range.any():
            bad = item_ids[np.flatnonzero(out_of_range)[0]]
            raise DataError(f"{table.source}: item id {_q(bad)} is out of range for {n_rows} feature rows "
                            f"(rows are indexed by integer item id, expected 0..{n_rows - 1}); "
                            f"{int(out_of_range.sum())} item(s) affected")
        unused = n_rows - len(np.unique(index))
    else:
        index = pd.Index(table.ids.astype(str)).get_indexer(item_ids)
        missing = index < 0
        if missing.any():
            first = item_ids[np.flatnonzero(missing)[0]]
            msg = (f"{table.source}: {int(missing.sum())} of {len(item_ids)} items have no '{name}' "
                   f"feature row (first: item id {_q(first)})")
            if not allow_missing:
                raise DataError(msg + "; expected a row for every item, or allow zero rows with "
                                      "--allow-missing-features")
            log.warning("%s; filled with zeros", msg)
        unused = n_rows - int((~missing).sum())
    if unused:
        log.info("%s: %d feature row(s) belong to no kept item and were ignored", table.source, unused)

    used = index >= 0
    out = np.zeros((len(item_ids), table.values.shape[1]), dtype=np.float32)
    out[used] = table.values[index[used]]
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        pos = table.where(int(index[i]))
        raise DataError(f"{pos} (item id {_q(item_ids[i])}): NaN/inf in '{name}' features, expected "
                        f"finite numbers ({int((~finite).sum())} item(s) affected)")
    return out


def parse_named_paths(specs: Optional[Sequence[str]], option: str) -> Dict[str, str]:
    """``["image=a.npy", "text=b.parquet"]`` -> ``{"image": "a.npy", "text": "b.parquet"}``."""
    out: Dict[str, str] = {}
    for spec in specs or ():
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not name or not value:
            raise DataError(f"{option} {spec!r}: expected NAME=FILE")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise DataError(f"{option} {spec!r}: modality name {name!r} must use letters, digits, _ or -")
        if name in out:
            raise DataError(f"{option}: modality {name!r} given twice")
        out[name] = value
    return out
