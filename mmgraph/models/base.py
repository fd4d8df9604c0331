"""The common model interface every method (and every plug-in) builds on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from mmgraph.data.dataset import RecDataset


@dataclass
class Batch:
    """A training batch of BPR triples: ``users, pos, neg`` are ``[B]`` int64 tensors."""

    users: Tensor
    pos: Tensor
    neg: Tensor

    def to(self, device) -> "Batch":
        return Batch(self.users.to(device), self.pos.to(device), self.neg.to(device))

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class LossOutput:
    """What ``Recommender.loss`` returns.

    Attributes:
        loss: the scalar to minimise.
        terms: named scalar parts for logging (detached by the trainer).
        user_emb / item_emb: the final ``[U, d]`` / ``[I, d]`` representations this step used, for
            plug-ins that add losses on top of the backbone (CROSS, BR-MRS).
        user_rows: instead of ``user_emb``, a function ``ids [n] -> [n, d]`` giving the final
            representations of those users from this step's graph, for backbones whose loss only
            builds the rows it needs (CM3).
    """

    loss: Tensor
    terms: Dict[str, Tensor] = field(default_factory=dict)
    user_emb: Optional[Tensor] = None
    item_emb: Optional[Tensor] = None
    user_rows: Optional[Callable[[Tensor], Tensor]] = None


class Recommender(nn.Module):
    """Base class. Subclasses set ``defaults`` and implement :meth:`forward` and :meth:`loss`.

    Args:
        dataset: the training data (only the train split and features are read).
        config: resolved flat config; missing keys fall back to ``defaults``.
    """

    method_name: str = "base"
    #: default hyper-parameters; configs/methods/<method>.yaml mirrors and overrides them
    defaults: Dict[str, Any] = {}
    #: whether the method needs item features
    multimodal: bool = False

    def __init__(self, dataset: RecDataset, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.config = {**self.defaults, **(config or {})}
        self.n_users = dataset.n_users
        self.n_items = dataset.n_items
        self.embedding_size = int(self.config.get("embedding_size", 64))

    # ---- to implement -------------------------------------------------------------------
    def forward(self) -> Tuple[Tensor, Tensor]:
        """Final user ``[U, d]`` and item ``[I, d]`` representations (training graph)."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> LossOutput:
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def on_epoch_start(self, epoch: int, generator: Optional[torch.Generator] = None) -> None:
        """Hook for per-epoch work (e.g. FREEDOM's edge pruning)."""

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        """Representations used for scoring: ``score(u, i) = user[u] . item[i]``.

        Computed once per evaluation. Override when scoring differs from :meth:`forward`.
        """
        was_training = self.training
        self.eval()
        try:
            return self.forward()
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return f"users={self.n_users}, items={self.n_items}, d={self.embedding_size}"


def xavier_embedding(n: int, d: int, init: str = "uniform") -> nn.Embedding:
    emb = nn.Embedding(n, d)
    (nn.init.xavier_uniform_ if init == "uniform" else nn.init.xavier_normal_)(emb.weight)
    return emb
