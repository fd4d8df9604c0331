"""Item modality feature tables and their projections."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from mmgraph.nn.linear import linear
from mmgraph.nn.sparse import gather_rows


def _as_tensor(feat) -> Tensor:
    return torch.as_tensor(np.asarray(feat) if not torch.is_tensor(feat) else feat, dtype=torch.float32)


class FeatureTables(nn.Module):
    """Per-modality item feature tables ``X_m [I, d_m]``.

    Args:
        features: ``{modality: float32 array or tensor [I, d_m]}`` (e.g. the run graph's ``x_<m>``).
        trainable: fine-tune the tables (FREEDOM, BM3: parameters, saved in checkpoints) or keep them
            frozen (VBPR, CM3, CROSS: non-persistent buffers that share the input's memory, follow
            ``module.to(device)`` and are never written to checkpoints).
    """

    def __init__(self, features: Mapping[str, "np.ndarray | Tensor"], trainable: bool = False):
        super().__init__()
        self.modalities: List[str] = list(features)
        self.trainable = bool(trainable)
        self.tables = nn.ParameterDict()
        for name, feat in features.items():
            tensor = _as_tensor(feat)
            if trainable:
                self.tables[name] = nn.Parameter(tensor.clone())
            else:
                self.register_buffer(f"x_{name}", tensor, persistent=False)

    @property
    def dims(self) -> Dict[str, int]:
        return {m: int(self.table(m).shape[1]) for m in self.modalities}

    def table(self, name: str) -> Tensor:
        """The whole ``[I, d_m]`` table of modality ``name``."""
        return self.tables[name] if self.trainable else getattr(self, f"x_{name}")

    def raw(self, name: str, items: Optional[Tensor] = None) -> Tensor:
        """Rows ``items`` (default all) of modality ``name``: ``[len(items), d_m]``."""
        table = self.table(name)
        return table if items is None else gather_rows(table, items)

    def concat(self, items: Optional[Tensor] = None) -> Tensor:
        """``[n, sum_m d_m]``: the modalities side by side, in :attr:`modalities` order."""
        return torch.cat([self.raw(m, items) for m in self.modalities], -1)


#: ModalityEncoder's projection initialisations
INITS = ("default", "xavier_normal_weight", "xavier_normal")


class ModalityEncoder(FeatureTables):
    """Feature tables with a ``Linear(d_m -> out_dim)`` each.

    Args:
        features: ``{modality: float32 array or tensor [I, d_m]}``.
        out_dim: projection width.
        trainable: fine-tune the raw feature tables (FREEDOM, BM3) or keep them frozen (VBPR, CM3).
        init: ``"default"`` (PyTorch's Linear init: MMRec's FREEDOM), ``"xavier_normal_weight"`` (Xavier-normal
            weights, PyTorch's default biases: MMRec's BM3) or ``"xavier_normal"`` (Xavier-normal weights, zero
            biases: MMRec's ``xavier_normal_initialization``).

    ``forward(items=None)`` returns ``{modality: [len(items) or I, out_dim]}``. Projecting only the
    rows a batch uses is exactly equivalent to projecting the whole table and indexing (the other rows
    get zero gradient either way) and far cheaper for wide features.
    """

    def __init__(self, features: Mapping[str, "np.ndarray | Tensor"], out_dim: int, trainable: bool = False,
                 init: str = "default", bias: bool = True):
        super().__init__(features, trainable)
        self.init = init
        self.proj = nn.ModuleDict({name: nn.Linear(self.table(name).shape[1], out_dim, bias=bias)
                                   for name in self.modalities})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(INITS)}, got {self.init!r}")
        for lin in self.proj.values():
            if self.init == "default":
                lin.reset_parameters()
            elif self.init == "xavier_normal_weight":
                lin.reset_parameters()
                nn.init.xavier_normal_(lin.weight)
            else:
                nn.init.xavier_normal_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def project(self, name: str, items: Optional[Tensor] = None) -> Tensor:
        """Modality ``name``'s projected rows ``items`` (``[n]``, repeats allowed; default all): ``[n, out_dim]``.

        Each distinct item is projected once and the rows are gathered from those: a batch's positives repeat
        popular items, and with wide features the product, its weight gradient and the feature table's gradient
        scale with the rows projected (BM3 on Baby-sized 4096 + 384 features: steps x0.89; TikTok x0.99). The same
        values; the gradients equal to the order in which repeated rows are summed."""
        lin = self.proj[name]
        if items is not None and items.dim() == 1:
            uniq, inv = torch.unique(items, return_inverse=True)
            return gather_rows(linear(self.raw(name, uniq), lin.weight, lin.bias), inv)
        return linear(self.raw(name, items), lin.weight, lin.bias)

    def affine(self, name: str) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(x [I, d_m], weight [out_dim, d_m], bias [out_dim] or None)``: :meth:`project` as its parts."""
        lin = self.proj[name]
        return self.table(name), lin.weight, lin.bias

    def forward(self, items: Optional[Tensor] = None) -> Dict[str, Tensor]:
        return {name: self.project(name, items) for name in self.modalities}
