"""Export top-K recommendations with raw ids (seen training items excluded) to CSV, Parquet or JSONL."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from mmgraph.data.dataset import RecDataset
from mmgraph.errors import DataError
from mmgraph.evaluation.retrieval import gather_csr_rows, topk_exact, topk_faiss
from mmgraph.utils.io import atomic_write

log = logging.getLogger(__name__)
FORMATS = ("csv", "parquet", "jsonl")


def resolve_users(dataset: RecDataset, raw_users: Optional[Sequence], source: str = "users list",
                  line_numbers: Optional[Sequence[int]] = None) -> np.ndarray:
    """Map raw user ids to indices (in order; a repeated id is kept once); unknown ids raise
    :class:`DataError` naming ``source``, the line (``line_numbers[k]`` of entry ``k``, default ``k + 1``)
    and the first such id."""
    if raw_users is None:
        return np.arange(dataset.n_users)
    if dataset.user_ids is None:
        index = {str(u): u for u in range(dataset.n_users)}
    else:
        index = {str(raw): k for k, raw in enumerate(dataset.user_ids)}
    out = []
    for k, raw in enumerate(raw_users):
        key = str(raw).strip()
        line = line_numbers[k] if line_numbers is not None else k + 1
        if key not in index:
            raise DataError(f"{source}, line {line}: unknown user id {key!r} (not in the dataset)")
        out.append(index[key])
    users = np.asarray(out, dtype=np.int64)
    _, first = np.unique(users, return_index=True)
    if len(first) < len(users):
        log.warning("%s: %d repeated user id(s) kept once", source, len(users) - len(first))
        users = users[np.sort(first)]
    return users


def user_indices(users, n_users: int) -> np.ndarray:
    """``users`` as an int64 array of user indices, refusing anything else: raw ids given where indices are
    expected (strings) would otherwise be cast to other users' indices without a word."""
    arr = np.asarray(users)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        what = "strings" if arr.dtype.kind in "USO" else f"{arr.dtype} values"
        raise DataError(f"users: expected user indices 0..{n_users - 1} (integers), got {what} such as "
                        f"{arr.reshape(-1)[0].item()!r}; map raw user ids with resolve_users(dataset, raw_ids)")
    arr = arr.astype(np.int64).reshape(-1)
    bad = arr[(arr < 0) | (arr >= n_users)]
    if bad.size:
        raise DataError(f"users: index {int(bad[0])} is out of range; the dataset has {n_users} users "
                        f"(indices 0..{n_users - 1})")
    return arr


def recommend(user_emb: torch.Tensor, item_emb: torch.Tensor, dataset: RecDataset, k: int = 100,
              users: Optional[np.ndarray] = None, exclude_seen: bool = True,
              backend: str = "exact") -> pd.DataFrame:
    """Top-``k`` per user as a long table ``user_id, item_id, score, rank`` (raw ids, rank from 1).

    Args:
        user_emb: ``[U, d]`` user representations; item_emb: ``[I, d]`` (scores are inner products).
        dataset: the run's dataset: its training items are excluded and its raw ids written.
        users: user INDICES ``0..U-1`` to rank (default all, in order); map raw ids with :func:`resolve_users`.
        exclude_seen: leave each user's training items out of its list.
        backend: ``exact`` (batched products) or ``faiss`` (:func:`~mmgraph.evaluation.retrieval.topk_faiss`).
    """
    if backend not in ("exact", "faiss"):
        raise DataError(f"recommend: backend must be 'exact' or 'faiss', got {backend!r}")
    users = np.arange(dataset.n_users) if users is None else user_indices(users, dataset.n_users)
    sel = torch.as_tensor(users, dtype=torch.long, device=user_emb.device)
    exclude = None
    if exclude_seen:  # the selected users' training items, as CSR rows in selection order
        indptr, indices = dataset.user_item_csr("train")
        counts = indptr[users + 1] - indptr[users]
        rows, cols = gather_csr_rows(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(users))
        exclude = (np.concatenate([[0], np.cumsum(counts)]), cols.numpy())
    fn = topk_faiss if backend == "faiss" else topk_exact
    scores, items = fn(user_emb[sel], item_emb, k, exclude_csr=exclude)
    scores, items = scores.cpu().numpy(), items.cpu().numpy()
    valid = items >= 0
    rows = np.repeat(users, k).reshape(len(users), k)
    ranks = np.tile(np.arange(1, k + 1), (len(users), 1))
    return pd.DataFrame({
        "user_id": dataset.raw_user_id(rows[valid]),
        "item_id": dataset.raw_item_id(items[valid]),
        "score": scores[valid].astype(np.float32),
        "rank": ranks[valid].astype(np.int32),
    })


def recommend_sharded(user_emb: torch.Tensor, item_emb: torch.Tensor, dataset: RecDataset, k: int = 100,
                      users: Optional[np.ndarray] = None, exclude_seen: bool = True, backend: str = "exact",
                      ctx=None) -> Optional[pd.DataFrame]:
    """:func:`recommend` with the users split over the ranks of a data-parallel run
    (:mod:`mmgraph.train.distributed`): each rank ranks one contiguous block of ``users`` and rank 0
    gathers the blocks in order, so the table is the one process's table. Returns ``None`` on the
    other ranks."""
    from mmgraph.train.distributed import current, gather_rows

    ctx = ctx or current()
    users = np.arange(dataset.n_users) if users is None else user_indices(users, dataset.n_users)
    if not ctx.enabled:
        return recommend(user_emb, item_emb, dataset, k, users, exclude_seen, backend)
    mine = np.array_split(users, ctx.world)[ctx.rank]
    part = recommend(user_emb, item_emb, dataset, k, mine, exclude_seen, backend)
    parts = gather_rows(part, ctx)
    return pd.concat(parts, ignore_index=True) if parts is not None else None


def write_table(df: pd.DataFrame, path: Union[str, os.PathLike], fmt: Optional[str] = None) -> Path:
    """Write ``df`` atomically as csv / parquet / jsonl (format from ``fmt`` or the file suffix)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown export format {fmt!r}, expected one of {FORMATS}")
    if fmt == "csv":
        with atomic_write(path, "w") as fh:
            df.to_csv(fh, index=False)
    elif fmt == "jsonl":
        with atomic_write(path, "w") as fh:
            df.to_json(fh, orient="records", lines=True)
    else:
        with atomic_write(path, "wb") as fh:
            df.to_parquet(fh, index=False)
    return path
