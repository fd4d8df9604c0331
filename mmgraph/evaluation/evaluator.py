"""Full-ranking evaluation (protocol.md, "Full-ranking evaluation"), batched in bounded memory.

For each evaluated user (>= 1 item in the split) every item is scored, the user's TRAINING items are
set to -inf (only ``mask_split``; valid items are not masked when testing), the top-K is taken and
each top-K id is checked against the user's split set. Per-user metrics come from
:func:`mmgraph.evaluation.metrics.topk_metrics` and are averaged over the evaluated users.

Memory: one ``[B, I]`` score block at a time, ``B = memory_budget_mb / (I * 4 bytes)`` (or
``batch_size``). Membership uses sorted ``user * I + item`` keys and ``searchsorted``, so no other
``[B, I]`` block is allocated. Top-K is :func:`~mmgraph.evaluation.retrieval.topk_rows` (``torch.topk``,
with an exact two-stage shortcut on wide CPU blocks); among exactly tied scores the order is
unspecified (random float embeddings practically have no ties).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mmgraph.data.dataset import SPLITS, RecDataset
from mmgraph.errors import ConfigError, DataError
from mmgraph.evaluation.metrics import DEFAULT_KS, check_ks, metric_names, topk_metrics
from mmgraph.evaluation.retrieval import (batch_size_for, block_scores, mask_rows_, member, onednn_scores,
                                          single_thread, topk_rows)

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
Shard = Tuple[Dict[str, float], int]
RETRIEVALS = ("exact", "faiss", "auto")


def resolve_retrieval(retrieval: str = "auto") -> str:
    """``auto`` -> ``faiss`` when FAISS can use a GPU, else ``exact``; others unchanged (``faiss`` without
    FAISS installed: a one-line error)."""
    from mmgraph.utils.faiss_utils import faiss_gpu_count, require_faiss
    if retrieval == "faiss":
        require_faiss("retrieval 'faiss'")
    if retrieval != "auto":
        return retrieval
    return "faiss" if faiss_gpu_count() > 0 else "exact"


def unseen_items(dataset: RecDataset, split: str = "train") -> np.ndarray:
    """Ids of items with no interaction in ``split`` (the cold items of a cold-start split)."""
    return np.flatnonzero(dataset.item_popularity(split) == 0)


def combine_shards(shards: Iterable[Shard]) -> Dict[str, float]:
    """Means from ``(sums, count)`` pairs returned by :meth:`Evaluator.evaluate_shard` on disjoint users."""
    shards = list(shards)
    total = sum(c for _, c in shards)
    names = list(shards[0][0]) if shards else []
    return {n: (sum(s[n] for s, _ in shards) / total if total else 0.0) for n in names}


class Evaluator:
    """Full-ranking evaluator for one dataset split; build once, call every epoch.

    Args:
        dataset: the :class:`RecDataset`.
        split: the evaluated split, ``"valid"`` or ``"test"``.
        ks: cut-offs (default 5, 10, 20, 50).
        batch_size: users per score block; default from ``memory_budget_mb``.
        memory_budget_mb: bound on the one ``[B, n_candidates]`` float32 score block (the block is
            reused by every batch; float64 embeddings double it).
        device: where scoring, masking and top-K run (precomputed tensors live there).
        mask_split: split(s) whose items are set to -inf (``"train"`` per protocol; a list for
            several, None for none).
        candidate_items: rank only these items (ids or a bool mask ``[I]``), e.g. the cold items for
            cold-start evaluation; ground truth outside the candidates is dropped and users left with
            none are not evaluated. Default: all items.
        retrieval: how the top-K of dot-product scores is found: ``"exact"`` (torch score blocks),
            ``"faiss"`` (an exact FAISS inner-product index, GPU when faiss-gpu and a GPU are present)
            or ``"auto"`` (FAISS when it can use a GPU, else exact). All give the same metrics;
            ``score_fn`` evaluation is always exact.

    Attributes:
        users: int64 ``[n_eval]`` evaluated user ids (ascending, on CPU).
        n_pos: int64 ``[U]`` size of each user's split set (within the candidates).
        names: metric keys in order (``recall@5`` ... ``hit@50``).
    """

    def __init__(self, dataset: RecDataset, split: str = "valid", ks: Sequence[int] = DEFAULT_KS,
                 batch_size: Optional[int] = None, memory_budget_mb: float = 256, device="cpu",
                 mask_split: Union[str, Sequence[str], None] = "train", candidate_items=None,
                 retrieval: str = "exact"):
        if retrieval not in RETRIEVALS:
            raise ConfigError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")
        self.retrieval = resolve_retrieval(retrieval)
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}, expected one of {SPLITS}")
        masks = [] if mask_split is None else [mask_split] if isinstance(mask_split, str) else list(mask_split)
        for m in masks:
            if m not in SPLITS:
                raise ConfigError(f"unknown mask_split {m!r}, expected one of {SPLITS}")
        if split in masks:
            raise ConfigError(f"mask_split {masks} contains the evaluated split {split!r}")
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.split, self.mask_split = dataset, split, masks
        self.ks = check_ks(ks)
        self.names = metric_names(self.ks)
        self.device = torch.device(device)
        self.n_users, self.n_items = dataset.n_users, dataset.n_items

        # candidate columns: col -> item id, and item id -> col (-1 outside)
        if candidate_items is None:
            self.candidates = None
            self.n_cols = self.n_items
            col_of = None
        else:
            cand = np.asarray(candidate_items.cpu() if torch.is_tensor(candidate_items) else candidate_items)
            if cand.dtype == bool:
                if cand.shape != (self.n_items,):
                    raise DataError(f"candidate_items bool mask must have shape [{self.n_items}], got {cand.shape}")
                cand = np.flatnonzero(cand)
            cand = np.unique(cand.astype(np.int64))
            if len(cand) == 0 or cand[0] < 0 or cand[-1] >= self.n_items:
                raise DataError(f"candidate_items must be non-empty item ids in 0..{self.n_items - 1}")
            self.candidates = torch.from_numpy(cand)
            self.n_cols = len(cand)
            col_of = np.full(self.n_items, -1, dtype=np.int64)
            col_of[cand] = np.arange(len(cand))
        self.batch_size = int(batch_size) if batch_size else batch_size_for(self.n_cols, memory_budget_mb)

        dev = self.device
        gt_keys = self._keys([split], col_of)
        self.n_pos = torch.from_numpy(np.bincount(gt_keys // self.n_cols, minlength=self.n_users))
        self.users = torch.from_numpy(np.flatnonzero(self.n_pos.numpy() > 0))
        self._is_eval = self.n_pos > 0
        self._gt_keys = torch.from_numpy(gt_keys).to(dev)  # sorted: membership by searchsorted
        self._n_pos_dev = self.n_pos.to(dev)
        self._mask = None
        if masks:  # CSR (indptr, columns) of the masked items
            m_keys = self._keys(masks, col_of)
            indptr = np.zeros(self.n_users + 1, dtype=np.int64)
            np.cumsum(np.bincount(m_keys // self.n_cols, minlength=self.n_users), out=indptr[1:])
            self._mask = (torch.from_numpy(indptr).to(dev), torch.from_numpy(m_keys % self.n_cols).to(dev))
        self._cand_dev = self.candidates.to(dev) if self.candidates is not None else None

    def _keys(self, splits: List[str], col_of: Optional[np.ndarray]) -> np.ndarray:
        """Sorted unique keys ``user * n_cols + column`` of the union of the splits' pairs."""
        pairs = np.concatenate([self.dataset.split(s) for s in splits])
        users, cols = pairs[:, 0], pairs[:, 1]
        if col_of is not None:
            cols = col_of[cols]
            users, cols = users[cols >= 0], cols[cols >= 0]
        return np.unique(users * self.n_cols + cols)

    def __repr__(self) -> str:
        return (f"Evaluator({self.dataset.name}/{self.split}: users={len(self.users)}, "
                f"candidates={self.n_cols}, ks={self.ks}, batch_size={self.batch_size}, device={self.device})")

    # ------------------------------------------------------------------ user selection
    def select_users(self, users=None) -> torch.Tensor:
        """The evaluated users among ``users`` (ids, any order kept; default all evaluated users)."""
        if users is None:
            return self.users
        users = torch.as_tensor(np.asarray(users) if not torch.is_tensor(users) else users,
                                dtype=torch.int64).cpu().reshape(-1)
        if len(users) and (int(users.min()) < 0 or int(users.max()) >= self.n_users):
            raise DataError(f"user ids must be in 0..{self.n_users - 1}")
        return users[self._is_eval[users]]

    def shard(self, rank: int, world_size: int) -> torch.Tensor:
        """Evaluated users of worker ``rank`` out of ``world_size`` (strided, so loads are balanced)."""
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..{world_size - 1}, got {rank}")
        return self.users[rank::world_size]

    # ------------------------------------------------------------------ core loop
    def _score_fn(self, user_emb=None, item_emb=None, score_fn: Optional[ScoreFn] = None,
                  max_rows: int = 1, n_rows: Optional[int] = None) -> ScoreFn:
        """A function from a batch of user ids (on ``device``, at most ``max_rows``) to the
        ``[B, n_cols]`` score block; ``n_rows``: the users to score in all (default ``max_rows``)."""
        if score_fn is not None:
            cand = self._cand_dev

            def scores(u: torch.Tensor) -> torch.Tensor:
                s = score_fn(u)
                if s.dim() != 2 or s.shape != (len(u), self.n_items):
                    raise DataError(f"score_fn must return [B, n_items] = [{len(u)}, {self.n_items}], "
                                    f"got {tuple(s.shape)}")
                is_view = s._is_view()  # (detach() drops the flag)
                s = s.detach().to(self.device)
                if cand is not None:
                    return s.index_select(1, cand)
                # masking writes in place: never into storage the caller keeps (a slice of a cache)
                return s.clone() if is_view else s
            return scores
        if user_emb is None or item_emb is None:
            raise ConfigError("pass user_emb and item_emb, or score_fn")
        n_rows = max_rows if n_rows is None else n_rows
        user_emb, item_emb = torch.as_tensor(user_emb), torch.as_tensor(item_emb)
        if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1] \
                or user_emb.shape[0] != self.n_users or item_emb.shape[0] != self.n_items:
            raise DataError(f"expected user_emb [{self.n_users}, d] and item_emb [{self.n_items}, d], got "
                            f"{tuple(user_emb.shape)} and {tuple(item_emb.shape)}")
        items = item_emb.detach().to(self.device)
        if self._cand_dev is not None:
            items = items.index_select(0, self._cand_dev)
        users_src = user_emb.detach()
        dtype = torch.promote_types(users_src.dtype, items.dtype)
        items = items.to(dtype).contiguous()
        # without oneDNN, one score buffer reused by every batch (see block_scores)
        buf = None if onednn_scores(dtype, self.device, n_rows <= max_rows) else \
            torch.empty(max(1, max_rows), self.n_cols, dtype=dtype, device=self.device)

        def scores(u: torch.Tensor) -> torch.Tensor:
            return block_scores(users_src[u.to(users_src.device)].to(self.device, dtype), items, buf)
        return scores

    @torch.no_grad()
    def iter_topk(self, user_emb=None, item_emb=None, users=None, score_fn: Optional[ScoreFn] = None,
                  k: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(users [B], top-k columns [B, k], hits [B, k] bool)`` per batch, on ``device``.

        Columns are item ids, or indices into :attr:`candidates` when candidates are set; ``-1`` (never a
        hit) in the slots past a user's unmasked items, when fewer than ``k`` are left (a score of -inf,
        a masked item or one the model cannot rank, is never retrieved, as in the FAISS path).
        """
        users = self.select_users(users)
        k = min(k or self.ks[-1], self.n_cols)
        if self.retrieval == "faiss" and score_fn is None:
            yield from self._iter_topk_faiss(user_emb, item_emb, users, k)
            return
        fn = self._score_fn(user_emb, item_emb, score_fn, max_rows=min(self.batch_size, len(users)),
                            n_rows=len(users))
        for start in range(0, len(users), self.batch_size):
            u = users[start:start + self.batch_size].to(self.device)
            scores = fn(u)
            if not scores.is_floating_point():
                scores = scores.float()
            if self._mask is not None:
                with single_thread(self.device):
                    mask_rows_(scores, self._mask[0], self._mask[1], u)
            values, top = topk_rows(scores, k)
            del scores
            with single_thread(self.device):
                hits = member(self._gt_keys, u, top, self.n_cols)
                ranked = values > float("-inf")
                if not bool(ranked.all()):
                    hits &= ranked
                    top = top.masked_fill(~ranked, -1)
            yield u, top, hits

    def _iter_topk_faiss(self, user_emb, item_emb, users: torch.Tensor, k: int):
        from mmgraph.evaluation.retrieval import gather_csr_rows, topk_faiss

        self._score_fn(user_emb, item_emb, None, max_rows=0)  # shape checks
        items = torch.as_tensor(item_emb).detach()
        if self.candidates is not None:
            items = items.index_select(0, self.candidates.to(items.device))
        exclude = None
        if self._mask is not None:  # the evaluated users' masked columns as CSR rows in their order
            indptr, cols = self._mask
            u = users.to(indptr.device)
            counts = indptr[u + 1] - indptr[u]
            _, sel = gather_csr_rows(indptr, cols, u)
            exclude = (torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).cpu(), sel.cpu())
        user_rows = torch.as_tensor(user_emb).detach()[users.to(torch.as_tensor(user_emb).device)]
        _, top = topk_faiss(user_rows, items, k, exclude_csr=exclude)
        for start in range(0, len(users), self.batch_size):
            u = users[start:start + self.batch_size].to(self.device)
            t = top[start:start + self.batch_size].to(self.device)
            with single_thread(self.device):
                hits = member(self._gt_keys, u, t.clamp(min=0), self.n_cols) & (t >= 0)
            yield u, t, hits

    def _per_user(self, user_emb=None, item_emb=None, users=None, score_fn=None) -> Dict[str, torch.Tensor]:
        parts: Dict[str, list] = {n: [] for n in self.names}
        parts["users"] = []
        for u, _, hits in self.iter_topk(user_emb, item_emb, users, score_fn):
            with single_thread(self.device):
                for name, v in topk_metrics(hits, self._n_pos_dev[u], self.ks).items():
                    parts[name].append(v.cpu())
            parts["users"].append(u.cpu())
        empty = {"users": torch.zeros(0, dtype=torch.int64)}
        return {n: (torch.cat(v) if v else empty.get(n, torch.zeros(0, dtype=torch.float64)))
                for n, v in parts.items()}

    @staticmethod
    def _means(per_user: Dict[str, torch.Tensor], names: List[str]) -> Dict[str, float]:
        n = len(per_user["users"])
        return {name: (float(per_user[name].sum()) / n if n else 0.0) for name in names}

    # ------------------------------------------------------------------ public API
    def evaluate(self, user_emb, item_emb, users=None, per_user: bool = False):
        """Metrics for scores ``user_emb @ item_emb.T``.

        Args:
            user_emb: ``[U, d]`` (all users; row u = user u). item_emb: ``[I, d]``.
            users: optional subset of user ids (non-evaluated ones are skipped).
            per_user: return per-user values instead of means.

        Returns:
            ``{"recall@20": float, ...}`` means over the evaluated users; with ``per_user=True``
            ``{"users": int64 [n], "recall@20": float64 [n], ...}`` (CPU tensors, aligned).
        """
        pu = self._per_user(user_emb, item_emb, users)
        return pu if per_user else self._means(pu, self.names)

    def evaluate_scores(self, score_fn: ScoreFn, users=None, per_user: bool = False):
        """As :meth:`evaluate` for models that do not score by a dot product.

        ``score_fn(user_idx: LongTensor [B]) -> Tensor [B, n_items]`` (all items, even with
        ``candidate_items``). The block is masked in place unless it is a view, which is copied first.
        """
        pu = self._per_user(users=users, score_fn=score_fn)
        return pu if per_user else self._means(pu, self.names)

    def evaluate_shard(self, user_emb=None, item_emb=None, users=None,
                       score_fn: Optional[ScoreFn] = None) -> Shard:
        """``(sums of per-user values, number of evaluated users)`` over ``users`` (e.g.
        ``evaluator.shard(rank, world)``); :func:`combine_shards` turns disjoint shards into the means
        of a full evaluation (or all-reduce the sums and counts yourself)."""
        pu = self._per_user(user_emb, item_emb, users, score_fn)
        return {n: float(pu[n].sum()) for n in self.names}, len(pu["users"])

    combine_shards = staticmethod(combine_shards)
