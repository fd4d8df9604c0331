"""Vectorised BPR triple sampling (protocol.md, "Training")."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from mmgraph.data.dataset import RecDataset
from mmgraph.errors import ConfigError, DataError
from mmgraph.models.base import Batch
from mmgraph.train.reproducibility import DEFAULT_SEED


class BPRSampler:
    """One uniformly drawn negative per training interaction, rejected if the user trained on it.

    Negatives come from the items that occur in the training split. Rows are reshuffled every epoch
    and the last partial batch is kept. Everything is vectorised with numpy; membership tests use a
    sorted array of ``user * n_items + item`` keys.

    Args:
        dataset: the training interactions are ``dataset.train`` (duplicates removed).
        batch_size: rows per batch (protocol: 2048).
        seed: seeds the sampler's own generator (independent of torch's).
        rows: optional subset of training rows (e.g. one data-parallel shard).
        n_candidates: also draw a pool of this many negatives per row (same rule), as
            ``batch.extras["candidates"] [B, n_candidates]`` (e.g. BR-MRS's hard-negative candidates).
    """

    def __init__(self, dataset: RecDataset, batch_size: int = 2048, seed: int = DEFAULT_SEED,
                 rows: Optional[np.ndarray] = None, n_candidates: int = 0):
        pairs = np.unique(dataset.train, axis=0)
        self.pairs = pairs if rows is None else pairs[rows]
        self.n_items = dataset.n_items
        self.batch_size = int(batch_size)
        self.keys = np.sort(pairs[:, 0].astype(np.int64) * self.n_items + pairs[:, 1])  # all of the user's history
        self._keys_t = torch.from_numpy(self.keys)   # the same memory, for torch's multi-threaded search
        self.candidates = np.unique(pairs[:, 1])
        self.rng = np.random.default_rng(seed)
        self.n_candidates = int(n_candidates)
        if self.n_candidates < 0:
            raise ConfigError(f"n_candidates must be >= 0, got {n_candidates}")
        if len(pairs):
            full = np.flatnonzero(np.bincount(pairs[:, 0]) >= len(self.candidates))
            if len(full):
                raise DataError(f"user {full[0]} interacted with every item of the training split "
                                f"({len(self.candidates)}), so BPR cannot draw a negative for it; remove such "
                                f"users ({len(full)}) or add items")

    def __len__(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    def _is_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users.astype(np.int64, copy=False) * self.n_items + items
        # torch's searchsorted splits the queries over threads: ~1.6x numpy's on a BR-MRS pool draw (~1M queries)
        pos = torch.searchsorted(self._keys_t, torch.from_numpy(keys)).numpy()
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample_negatives(self, users: np.ndarray, max_rounds: int = 100) -> np.ndarray:
        """One negative per entry of ``users`` ``[N]`` -> ``[N]`` item ids."""
        neg = self.candidates[self.rng.integers(0, len(self.candidates), size=len(users))]
        todo = np.flatnonzero(self._is_seen(users, neg))
        for _ in range(max_rounds):
            if len(todo) == 0:
                return neg
            neg[todo] = self.candidates[self.rng.integers(0, len(self.candidates), size=len(todo))]
            todo = todo[self._is_seen(users[todo], neg[todo])]
        if len(todo):  # a user who trained on (almost) every candidate item
            raise DataError(f"could not draw a negative for user {users[todo[0]]}: it interacted with "
                            "nearly every training item")
        return neg

    def epoch(self) -> Iterator[Batch]:
        """Yield the shuffled batches of one epoch."""
        order = self.rng.permutation(len(self.pairs))
        users = self.pairs[order, 0]
        pos = self.pairs[order, 1]
        neg = self.sample_negatives(users)
        u, p, n = (torch.from_numpy(a) for a in (users, pos, neg))
        cand = None
        if self.n_candidates:
            pool = self.sample_negatives(np.repeat(users, self.n_candidates))
            cand = torch.from_numpy(pool.reshape(len(users), self.n_candidates))
        for start in range(0, len(order), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield Batch(u[sl], p[sl], n[sl], {} if cand is None else {"candidates": cand[sl]})

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
