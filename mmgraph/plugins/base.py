"""What every plug-in shares: config resolution, access to the backbone's representations."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from mmgraph.graph.relations import Relation
from mmgraph.models.base import Batch, LossOutput, Recommender


class Plugin(nn.Module):
    """Base class of loss plug-ins.

    Subclasses set ``defaults`` (flat ``{key: value}``; ``configs/plugins/<name>.yaml`` mirrors them and
    ``--set key=value`` overrides them) and implement :meth:`loss`.

    Args:
        data: the run's graph (``HeteroData``: item features, train interactions and the relations
            :meth:`relations` asked for).
        model: the backbone; it is only read (its parameters are optimised by the trainer anyway).
        config: the resolved run config.
    """

    plugin_name: str = "base"
    defaults: Dict[str, Any] = {}

    def __init__(self, data, model: Recommender, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        config = dict(config or {})
        self.check_settings(config)
        self.config = {**self.defaults, **{k: config[k] for k in self.defaults if k in config}}
        from mmgraph.train.reproducibility import DEFAULT_SEED
        self.seed = int(config.get("seed", DEFAULT_SEED))
        # not a submodule: the backbone's parameters are registered (and saved) by the trainer already
        self.__dict__["backbone"] = model

    @classmethod
    def check_settings(cls, config: Dict[str, Any]) -> None:
        """Refuse settings the plug-in cannot run with (a one-line :class:`~mmgraph.errors.ConfigError`); needs no
        data, so a run checks it before building its graph."""

    @classmethod
    def check_modalities(cls, config: Dict[str, Any], modalities: Sequence[str]) -> None:
        """Refuse settings that do not fit the data's item modalities ``modalities`` (a one-line
        :class:`~mmgraph.errors.ConfigError`); a run checks it with the dataset's modality names before building
        its graph."""

    @classmethod
    def relations(cls, config: Dict[str, Any], modalities: Sequence[str]) -> List[Relation]:
        """Graph relations this plug-in reads (built into the run's graph with the backbone's)."""
        return []

    def sampler_options(self) -> Dict[str, Any]:
        """Keyword arguments this plug-in needs from the sampler (e.g. ``{"n_candidates": 16}``)."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for per-epoch work, called after the backbone's."""

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
        """The backbone's final representations of ``users`` (``distinct``: no repeats, a cheaper
        backward); from this step's output, else from ``forward()``."""
        final = output.channel()
        if final.users is None and final.user_fn is None:
            return self.backbone.forward()[0][users]
        return final.user_rows(users, distinct)

    def item_rows(self, output: LossOutput, items: Tensor, distinct: bool = False) -> Tensor:
        """The backbone's item representations (the "ID modality") of ``items``."""
        final = output.channel()
        if final.items is None and final.item_fn is None:
            return self.backbone.forward()[1][items]
        return final.item_rows(items, distinct)
