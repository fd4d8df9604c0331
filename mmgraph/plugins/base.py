"""What every plug-in shares: config resolution, access to the backbone's representations."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from mmgraph.data.dataset import RecDataset
from mmgraph.models.base import Batch, LossOutput, Recommender
from mmgraph.nn.sparse import unique_rows


class Plugin(nn.Module):
    """Base class of loss plug-ins.

    Subclasses set ``defaults`` (flat ``{key: value}``; ``configs/plugins/<name>.yaml`` mirrors them and
    ``--set key=value`` overrides them) and implement :meth:`loss`.

    Args:
        dataset: the training data (the plug-in reads the train split and item features only).
        model: the backbone; it is only read (its parameters are optimised by the trainer anyway).
        config: the resolved run config.
    """

    plugin_name: str = "base"
    defaults: Dict[str, Any] = {}

    def __init__(self, dataset: RecDataset, model: Recommender, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        config = dict(config or {})
        self.config = {**self.defaults, **{k: config[k] for k in self.defaults if k in config}}
        self.seed = int(config.get("seed", 0))
        # not a submodule: the backbone's parameters are registered (and saved) by the trainer already
        self.__dict__["backbone"] = model

    def loss(self, batch: Batch, output: LossOutput) -> Dict[str, Tensor]:
        """Weighted loss terms ``{name: scalar}`` to add to ``output.loss``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def own_rng(self, offset: int = 7919):
        """Initialise parameters from a private seed without advancing torch's global RNG, so a run with
        the plug-in draws exactly the same backbone randomness (edge pruning, dropout) as one without."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + offset)
            yield

    # ------------------------------------------------------------------ backbone access
    @torch.no_grad()
    def backbone_width(self) -> int:
        """Width of the backbone's item representations (64 for most, 2 x 64 for VBPR)."""
        users, items = self.backbone.embeddings()
        if users.shape[1] != items.shape[1]:
            from mmgraph.errors import ConfigError
            raise ConfigError(f"{self.plugin_name}: backbone user / item widths differ "
                              f"({users.shape[1]} vs {items.shape[1]})")
        return int(items.shape[1])

    def user_rows(self, output: LossOutput, users: Tensor, distinct: bool = False) -> Tensor:
        """The backbone's final representations of ``users``: ``output.user_emb``, else
        ``output.user_rows(users)``, else ``forward()``. ``distinct``: ``users`` has no repeats
        (a cheaper backward)."""
        if output.user_emb is not None:
            return unique_rows(output.user_emb, users) if distinct else output.user_emb[users]
        if output.user_rows is not None:
            return output.user_rows(users)
        return self.backbone.forward()[0][users]

    def item_rows(self, output: LossOutput, items: Tensor, distinct: bool = False) -> Tensor:
        """The backbone's item representations (the "ID modality") of ``items``.

        ``output.item_emb`` when the backbone returned it; else the model's ``item_representation(items)``
        (VBPR computes item rows from wide features only for the rows it needs); else ``forward()``.
        ``distinct``: ``items`` has no repeats (a cheaper backward).
        """
        if output.item_emb is not None:
            return unique_rows(output.item_emb, items) if distinct else output.item_emb[items]
        rep = getattr(self.backbone, "item_representation", None)
        if callable(rep):
            return rep(items)
        return self.backbone.forward()[1][items]
