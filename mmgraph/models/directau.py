"""DirectAU (Wang et al. 2022): alignment + uniformity on an MF or LightGCN encoder, no negatives."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmgraph.losses import alignment, uniformity
from mmgraph.models.base import Batch, GraphRecommender, LossOutput, subgraph_rows
from mmgraph.models.registry import register
from mmgraph.nn.sparse import gather_rows


@register("directau")
class DirectAU(GraphRecommender):
    """``L = align + gamma (uniform(users) + uniform(items)) / 2`` over the batch's distinct users /
    distinct positive items; ``encoder: mf`` uses 0 layers. With ``encoder: lightgcn`` it also trains on
    sampled subgraphs (``graph_batching: sampled``): the loss only reads the batch's rows."""

    supports_sampled_graph = True
    defaults = {"embedding_size": 64, "encoder": "mf", "n_layers": 2, "gamma": 1.0, "uniformity_t": 2.0}

    def __init__(self, data, config=None):
        config = {**self.defaults, **(config or {})}
        if config["encoder"] == "mf":
            config["n_layers"] = 0
        elif config["encoder"] != "lightgcn":
            from mmgraph.errors import ConfigError
            raise ConfigError(f"directau encoder must be 'mf' or 'lightgcn', got {config['encoder']!r}")
        super().__init__(data, config)

    @classmethod
    def check_settings(cls, config) -> None:
        super().check_settings(config)
        if config.get("graph_batching", "full") == "sampled" and config.get("encoder", "mf") == "mf":
            from mmgraph.errors import ConfigError
            raise ConfigError("directau: graph_batching=sampled samples the neighbourhoods of a graph encoder; "
                              "set encoder=lightgcn, or keep graph_batching=full for the MF encoder")

    def forward(self) -> Tuple[Tensor, Tensor]:
        return self.propagate()

    def loss(self, batch: Batch) -> LossOutput:
        sub = batch.extras.get("subgraph")
        if sub is None:
            u, i = self.forward()
            users, pos = batch.users, batch.pos
        else:  # graph_batching: sampled -- rows of the sampled subgraph's tables, by their local ids
            u, i = self.propagate_subgraph(sub, batch.extras.get("adjacency"))
            users, pos = sub["user"].src_index, sub["item"].dst_pos_index
        eu = F.normalize(gather_rows(u, users), dim=-1)
        ei = F.normalize(gather_rows(i, pos), dim=-1)
        align = alignment(eu, ei)
        t = float(self.config["uniformity_t"])
        uni_u = uniformity(F.normalize(u[torch.unique(users)], dim=-1), t)
        uni_i = uniformity(F.normalize(i[torch.unique(pos)], dim=-1), t)
        uniform = (uni_u + uni_i) / 2
        terms = {"align": align, "uniform": uniform}
        total = align + self.config["gamma"] * uniform
        if sub is None:
            return LossOutput(total, terms, u, i)
        return LossOutput(total, terms, user_rows=subgraph_rows(sub["user"].n_id, u),
                          item_rows=subgraph_rows(sub["item"].n_id, i))
