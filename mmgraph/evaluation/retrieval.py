"""Top-K retrieval with training items excluded: exact (torch, batched) and FAISS-backed.

Both functions return the same top-K lists (scores sorted decreasing) for the same embeddings; on
random float data there are no ties. With exact ties the order among tied items may differ between
the two paths (and between devices), as may which of several tied items makes the cut at rank K.
Users with fewer than ``k`` rankable items get ``-1`` ids and ``-inf`` scores in the missing slots.

The helpers here (batch sizing, CSR row gathering, in-place ``-inf`` masking, sorted-key membership)
are shared with :class:`mmgraph.evaluation.Evaluator`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from mmgraph.errors import DataError
from mmgraph.nn import linear as linear_kernels

CSR = Tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------- shared helpers
def batch_size_for(n_cols: int, memory_budget_mb: float = 256, bytes_per_score: int = 4) -> int:
    """Users per batch so that one ``[B, n_cols]`` score block fits ``memory_budget_mb``."""
    return max(1, int(memory_budget_mb * 2**20) // max(1, n_cols * bytes_per_score))


def as_csr(csr, device=None) -> CSR:
    """``(indptr, indices)`` (numpy or torch) as int64 torch tensors on ``device``."""
    indptr, indices = csr
    return (torch.as_tensor(np.asarray(indptr) if not torch.is_tensor(indptr) else indptr,
                            dtype=torch.int64, device=device),
            torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices,
                            dtype=torch.int64, device=device))


@contextlib.contextmanager
def single_thread(device) -> Iterator[None]:
    """Run the enclosed small CPU ops (index bookkeeping, masking, metrics) on one intra-op thread.

    Ops on ~10^4-10^5 elements are split across threads by PyTorch, and on a busy machine each such
    parallel region waits for a descheduled thread: measured 25-45 ms instead of 0.1-1 ms per op with
    2 threads and other processes running. Only the matmul and the top-K keep all threads. (The
    setting is process-wide while the block runs.)
    """
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gather_csr_rows(indptr: torch.Tensor, indices: torch.Tensor,
                    rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Entries of the given CSR rows as ``(position of the row in rows, column)``, no Python loop."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    total = int(counts.sum())
    if total == 0:
        empty = rows.new_zeros(0)
        return empty, empty
    row_pos = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts,
                                      output_size=total)
    # offset of each entry inside its row: global position minus the row's first global position
    first = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=rows.device) - first[row_pos]
    return row_pos, indices[starts[row_pos] + within]


def mask_rows_(scores: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
    """Set ``scores[b, j] = -inf`` for every column ``j`` in CSR row ``rows[b]`` (in place)."""
    r, c = gather_csr_rows(indptr, indices, rows)
    if len(r):
        scores.index_put_((r, c), torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
    return scores


def member(keys: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``[B, K]`` bool: is ``(rows[b], cols[b, j])`` an entry of the sorted key set ``keys``."""
    q = rows.unsqueeze(1) * n_cols + cols
    if len(keys) == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(keys, q).clamp_(max=len(keys) - 1)
    return keys[pos] == q


def topk_rows(scores: torch.Tensor, k: int, block: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, k, dim=1)`` (sorted), faster on wide CPU blocks.

    Two exact stages when a row is much wider than ``k``: the row is cut into blocks of ``block``
    columns and the ``k`` blocks with the largest maxima are kept (every top-k item lies in one: a
    block holding an item of score s has max >= s, and fewer than k items score above the k-th best,
    so fewer than k blocks can have a larger max), then top-k over those ``k * block`` candidates (and the
    ragged tail), whose positions map back to columns through the kept blocks' ids. The block maxima are a
    fast streaming pass; ``torch.topk`` on CPU copies every (value, index) of the row. Same values as
    ``torch.topk``; only the order among exactly tied scores may differ. Any leading dimensions are rows.
    """
    n = scores.shape[-1]
    if scores.dim() != 2:
        values, cols = topk_rows(scores.reshape(-1, n), k, block)
        lead = scores.shape[:-1]
        return values.view(*lead, values.shape[-1]), cols.view(*lead, cols.shape[-1])
    if scores.device.type != "cpu" or n < 400 * k or k < 1:  # GPU top-k is fast; narrow rows: no gain
        return torch.topk(scores, min(k, n), dim=1)
    b = scores.shape[0]
    nb = n // block
    body = scores[:, :nb * block].view(b, nb, block)
    top_blocks = torch.topk(body.amax(2), k, dim=1, sorted=False).indices               # [B, k]
    cand = body.gather(1, top_blocks.unsqueeze(2).expand(-1, -1, block)).reshape(b, k * block)
    width = k * block
    if nb * block < n:  # the ragged tail is always a candidate
        cand = torch.cat([cand, scores[:, nb * block:]], 1)
    values, pos = torch.topk(cand, k, dim=1)
    kept = top_blocks.gather(1, torch.div(pos, block, rounding_mode="floor").clamp_(max=k - 1))
    cols = torch.where(pos < width, kept * block + pos % block, pos - width + nb * block)
    return values, cols


def _check_emb(user_emb, item_emb) -> Tuple[torch.Tensor, torch.Tensor]:
    user_emb = torch.as_tensor(user_emb)
    item_emb = torch.as_tensor(item_emb)
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise DataError(f"user_emb [U, d] and item_emb [I, d] must share d, got {tuple(user_emb.shape)} "
                        f"and {tuple(item_emb.shape)}")
    return user_emb, item_emb


def _pad_invalid(scores: torch.Tensor, items: torch.Tensor):
    bad = torch.isneginf(scores)
    if bool(bad.any()):
        items = items.masked_fill(bad, -1)
    return scores, items


# ---------------------------------------------------------------------------- public API
def onednn_scores(dtype: torch.dtype, device, one_block: bool) -> bool:
    """Whether :func:`block_scores` computes ``dtype`` score blocks on ``device`` through oneDNN: float32 on the CPU
    (where :mod:`mmgraph.nn.linear` has the kernel), in ONE block. Every oneDNN block is a fresh tensor, first
    touched page by page when above glibc's mmap threshold (32 MB), where ``torch.mm`` reuses one buffer: on
    Electronics-sized evaluations (106 blocks of 268 MB) oneDNN's blocks made the evaluation 1.3x slower."""
    return (one_block and torch.device(device).type == "cpu" and dtype == torch.float32
            and linear_kernels.ENABLED)


def block_scores(users: torch.Tensor, items: torch.Tensor, buf: Optional[torch.Tensor]) -> torch.Tensor:
    """The ``[B, I]`` score block ``users [B, d] @ items [I, d]^T``.

    Without ``buf`` (:func:`onednn_scores`), :func:`mmgraph.nn.linear.linear_float32` computes it into a fresh
    tensor: oneDNN for a large float32 CPU product (at any ``matmul_precision``), ~1.9x faster than MKL's on the
    AMD EPYC we measure on (TikTok- and Baby-sized evaluations: a validation 20-25 % shorter). Otherwise
    ``torch.mm`` into ``buf`` (``[>= B, I]``, kept across blocks: a fresh block above glibc's mmap threshold may
    be first-touched page by page)."""
    if buf is None:
        return linear_kernels.linear_float32(users, items)
    return torch.mm(users, items.T, out=buf[:users.shape[0]])


@torch.no_grad()
def topk_exact(user_emb, item_emb, k: int, exclude_csr=None, memory_budget_mb: float = 256,
               batch_size: Optional[int] = None, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` items by inner product for every row of ``user_emb``, excluding CSR items.

    Args:
        user_emb: ``[U, d]``; row ``u`` is user ``u`` (the row index into ``exclude_csr``).
        item_emb: ``[I, d]``.
        exclude_csr: ``(indptr [U+1], indices)`` items to exclude per user (e.g.
            ``dataset.user_item_csr("train")``), or None.
        memory_budget_mb / batch_size: bound on the ``[B, I]`` score block.
        device: where to compute (default: ``user_emb``'s device).

    Returns:
        ``(scores [U, k] float, items [U, k] int64)`` on CPU, sorted by decreasing score.
    """
    user_emb, item_emb = _check_emb(user_emb, item_emb)
    device = torch.device(device) if device is not None else user_emb.device
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    k = min(int(k), n_items)
    item_emb = item_emb.detach().to(device)
    user_emb = user_emb.detach()
    csr = as_csr(exclude_csr, device) if exclude_csr is not None else None
    bs = batch_size or batch_size_for(n_items, memory_budget_mb, user_emb.element_size())
    dtype = torch.promote_types(user_emb.dtype, item_emb.dtype)
    items = item_emb.to(dtype).contiguous()
    out_s = torch.empty(n_users, k, dtype=dtype)
    out_i = torch.empty(n_users, k, dtype=torch.int64)
    buf = None if onednn_scores(dtype, device, n_users <= bs) else \
        torch.empty(min(bs, n_users), n_items, dtype=dtype, device=device)
    for start in range(0, n_users, bs):
        rows = torch.arange(start, min(start + bs, n_users), device=device)
        scores = block_scores(user_emb[start:start + bs].to(device, dtype), items, buf)
        if csr is not None:
            with single_thread(device):
                mask_rows_(scores, csr[0], csr[1], rows)
        s, i = topk_rows(scores, k)
        out_s[start:start + bs], out_i[start:start + bs] = s.cpu(), i.cpu()
    return _pad_invalid(out_s, out_i)


def topk_faiss(user_emb, item_emb, k: int, exclude_csr=None,
               use_gpu: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` by inner product with an exact FAISS flat index, excluding CSR items.

    FAISS cannot mask per query, so each user over-fetches ``k + (number of its excluded items)``
    (rounded up to a power of two; users are bucketed by that size so one long history does not make
    every query fetch more), drops the excluded ids and keeps the first ``k``: the same top-K as
    :func:`topk_exact`. Same arguments and return value as :func:`topk_exact` (float32 scores).
    """
    user_emb, item_emb = _check_emb(user_emb, item_emb)
    from mmgraph.utils.faiss_utils import build_ip_index, require_faiss, search_index
    require_faiss("FAISS retrieval (retrieval / backend 'faiss')")

    users = user_emb.detach().cpu().numpy().astype(np.float32, copy=False)
    items = item_emb.detach().cpu().numpy().astype(np.float32, copy=False)
    n_users, n_items = len(users), len(items)
    k = min(int(k), n_items)
    out_s = np.full((n_users, k), -np.inf, dtype=np.float32)
    out_i = np.full((n_users, k), -1, dtype=np.int64)
    if n_users == 0 or k == 0:
        return torch.from_numpy(out_s), torch.from_numpy(out_i)
    index = build_ip_index(items, use_gpu)  # once; every bucket searches it
    if exclude_csr is None:
        out_s[:], out_i[:] = search_index(index, users, k)
        return torch.from_numpy(out_s), torch.from_numpy(out_i)

    indptr, indices = (np.asarray(x.cpu() if torch.is_tensor(x) else x, dtype=np.int64) for x in exclude_csr)
    n_excl = np.diff(indptr)[:n_users]
    keys = np.repeat(np.arange(n_users, dtype=np.int64), n_excl) * n_items + indices[:indptr[n_users]]
    # bucket: over-fetch k + next power of two >= the user's exclusions (0 -> 0)
    extra = np.where(n_excl > 0, 2 ** np.ceil(np.log2(np.maximum(n_excl, 1))).astype(np.int64), 0)
    for e in np.unique(extra):
        rows = np.flatnonzero(extra == e)
        fetch = min(k + int(e), n_items)
        s, i = search_index(index, users[rows], fetch)
        q = rows[:, None] * n_items + i
        pos = np.searchsorted(keys, q).clip(max=max(len(keys) - 1, 0))
        drop = (i < 0) | (keys[pos] == q) if len(keys) else (i < 0)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept ids first, rank order preserved
        s = np.take_along_axis(s, order, 1)
        i = np.take_along_axis(i, order, 1)
        dropped = np.take_along_axis(drop, order, 1)
        s[dropped], i[dropped] = -np.inf, -1
        out_s[rows], out_i[rows] = s, i
    return torch.from_numpy(out_s), torch.from_numpy(out_i)
