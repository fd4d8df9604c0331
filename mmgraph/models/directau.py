"""DirectAU (Wang et al. 2022): alignment + uniformity on an MF or LightGCN encoder, no negatives."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmgraph.losses import alignment, uniformity
from mmgraph.models.base import Batch, GraphRecommender, LossOutput
from mmgraph.models.registry import register
from mmgraph.nn.sparse import gather_rows


@register("directau")
class DirectAU(GraphRecommender):
    """``L = align + gamma (uniform(users) + uniform(items)) / 2`` over the batch's distinct users /
    distinct positive items; ``encoder: mf`` uses 0 layers."""

    defaults = {"embedding_size": 64, "encoder": "mf", "n_layers": 2, "gamma": 1.0, "uniformity_t": 2.0}

    def __init__(self, data, config=None):
        config = {**self.defaults, **(config or {})}
        if config["encoder"] == "mf":
            config["n_layers"] = 0
        elif config["encoder"] != "lightgcn":
            from mmgraph.errors import ConfigError
            raise ConfigError(f"directau encoder must be 'mf' or 'lightgcn', got {config['encoder']!r}")
        super().__init__(data, config)

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self.propagate()

    def loss(self, batch: Batch) -> LossOutput:
        u, i = self.forward()
        eu = F.normalize(gather_rows(u, batch.users), dim=-1)
        ei = F.normalize(gather_rows(i, batch.pos), dim=-1)
        align = alignment(eu, ei)
        t = float(self.config["uniformity_t"])
        uni_u = uniformity(F.normalize(u[torch.unique(batch.users)], dim=-1), t)
        uni_i = uniformity(F.normalize(i[torch.unique(batch.pos)], dim=-1), t)
        uniform = (uni_u + uni_i) / 2
        return LossOutput(align + self.config["gamma"] * uniform,
                          {"align": align, "uniform": uniform}, u, i)
