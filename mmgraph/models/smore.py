"""SMORE (Ong & Khong, WSDM 2025): spectrum-based modality representation fusion.

Follows MMRec's ``models/smore.py`` (the reference), per modality ``m`` with trainable feature tables:

* spectrum: ``F_m = rfft(Linear_m(X_m))`` along the embedding axis (orthonormal); uni-modal denoising
  ``C_m = irfft(F_m * w_m)`` and cross-modal fusion ``C_f = irfft(prod_m F_m * w_f)`` with learned complex
  filters ``w [d/2 + 1]``;
* purifier: ``P_m = E_item * sigmoid(G_m(C_m))``, ``P_f = E_item * sigmoid(G_f(C_f))``;
* user-item view: LightGCN (mean over layers ``0..n_ui_layers``) of the ID embeddings on ``A_hat``;
* item-item views: ``n_layers`` hops of ``P_m`` on the frozen similarity kNN graph ``simknn_<m>`` (``k`` =
  ``image_knn_k`` for ``image``, ``text_knn_k`` for the other modality: MMRec's second feature file), and of
  ``P_f`` on their max-pooled union (edge weight = the largest of the modalities' weights); users
  ``= R_hat P`` (``R_hat`` the user-item block of ``A_hat``) -- views ``V_m``, ``V_f``;
* preference: ``A_m = softmax_features(q_m(V_f)) * V_m`` (``q = Linear, tanh, Linear``), each of
  ``A_m, V_f`` times ``dropout(sigmoid(W content))``; side = their mean; final = content + side;
* loss BPR + ``reg_weight`` * squared-L2 of the batch rows / 2 / batch_size + ``cl_loss`` *
  [InfoNCE(side, content) over the positive items + over the users] at ``temperature``.

Channels: one per modality (``V_m``) and ``fusion`` (``V_f``).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmgraph.graph.hetero import INTERACTS
from mmgraph.graph.relations import Relation, relation_graph
from mmgraph.models.base import item_features
from mmgraph.models.lattice import simknn_relations
from mmgraph.models.lgmrec import user_item_matrix
from mmgraph.models.mgcn import SideContentRecommender, gate
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder
from mmgraph.nn.dropout import Dropout
from mmgraph.nn.features import ModalityEncoder
from mmgraph.nn.sparse import SparseAdj

FUSION = "fusion"


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward makes the gradient contiguous. ``torch.fft.rfft``'s backward returns the
    real part of a complex tensor (strides ``(2 d, 2)``); the ``Linear`` before it then copies that gradient
    into a transposed buffer for its weight product (1.2 ms a modality on TikTok's ``[6710, 64]``), where a
    row-major copy here costs ~0.1 ms and the product reads it as it is."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def modality_k(config, m: str) -> int:
    """SMORE's per-modality ``k``: ``image_knn_k`` for ``image``, ``text_knn_k`` for any other modality."""
    return int(config["image_knn_k"] if m == "image" else config["text_knn_k"])


def max_pool_graphs(graphs: Sequence[Tuple[Tensor, Tensor, Tensor]], n: int) -> SparseAdj:
    """The union of graphs ``(rows, cols, weight)`` over ``n`` nodes, each edge weighted by the largest of
    the weights it has in the graphs that hold it (MMRec SMORE's ``max_pool_fusion``)."""
    rows = torch.cat([g[0] for g in graphs])
    cols = torch.cat([g[1] for g in graphs])
    w = torch.cat([g[2] for g in graphs]).float()
    keys, inv = torch.unique(rows * n + cols, return_inverse=True)
    pooled = torch.full((keys.numel(),), float("-inf")).scatter_reduce(0, inv, w, "amax")
    return SparseAdj(torch.stack([keys // n, keys % n]), pooled, (n, n))


def query(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))


@register("smore")
class SMORE(SideContentRecommender):
    """Spectrum fusion, modality-specific and fusion item-item views, modality-aware preference (module
    docstring)."""

    multimodal = True
    defaults = {"embedding_size": 64, "n_ui_layers": 3, "n_layers": 1, "reg_weight": 1e-5, "cl_loss": 0.01,
                "temperature": 0.2, "image_knn_k": 10, "text_knn_k": 10, "dropout_rate": 0.0}

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        return simknn_relations(modalities, lambda m: modality_k(cfg, m))

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        d = self.embedding_size
        self.encoder = LightGCNEncoder(int(cfg["n_ui_layers"]), "mean")
        self.batch_size = int(cfg.get("batch_size", 2048))
        self.R = user_item_matrix(data[INTERACTS].edge_index, self.n_users, self.n_items, "sym")
        self.modal = ModalityEncoder(item_features(data), d, trainable=True)
        mods = self.modal.modalities
        graphs = {m: relation_graph(data, f"simknn_{m}") for m in mods}
        self.item_graphs = nn.ModuleDict({m: SparseAdj(torch.stack([g.row, g.col]), g.edge_weight.float(),
                                                       (self.n_items, self.n_items)) for m, g in graphs.items()})
        self.item_graphs[FUSION] = max_pool_graphs([(g.row, g.col, g.edge_weight) for g in graphs.values()],
                                                   self.n_items)
        views = [*mods, FUSION]
        self.filters = nn.ParameterDict({v: nn.Parameter(torch.randn(d // 2 + 1, 2)) for v in views})
        self.gate_item = nn.ModuleDict({v: gate(d) for v in views})
        self.gate_prefer = nn.ModuleDict({v: gate(d) for v in views})
        self.query = nn.ModuleDict({m: query(d) for m in mods})
        self.dropout = Dropout(float(cfg["dropout_rate"]))
        self.conv = LightGCNConv()

    def spectrum(self) -> Dict[str, Tensor]:
        """``{m: C_m [I, d], 'fusion': C_f [I, d]}``."""
        feats = {m: self.modal.project(m) for m in self.modal.modalities}
        spec = {m: torch.fft.rfft(_ContiguousGrad.apply(x), dim=1, norm="ortho") for m, x in feats.items()}
        d = self.embedding_size
        out = {m: torch.fft.irfft(s * torch.view_as_complex(self.filters[m]), n=d, dim=1, norm="ortho")
               for m, s in spec.items()}
        prod = None
        for s in spec.values():
            prod = s if prod is None else prod * s
        out[FUSION] = torch.fft.irfft(prod * torch.view_as_complex(self.filters[FUSION]), n=d, dim=1, norm="ortho")
        return out

    def views(self) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(content [U + I, d], {m: V_m, 'fusion': V_f})`` over ``U + I`` nodes."""
        content = torch.cat(self.propagate())
        out = {}
        for v, conv in self.spectrum().items():
            h = self.item_emb.weight * self.gate_item[v](conv)
            for _ in range(int(self.config["n_layers"])):
                h = self.conv(h, self.item_graphs[v])
            out[v] = torch.cat([self.R.matmul(h), h])
        return content, out

    def side(self, content: Tensor, views: Dict[str, Tensor]) -> Tensor:
        """The modality-aware preference (side embeddings) of rows ``content [n, d]`` and the same rows of
        every view; each node's row depends on that node's rows only."""
        fused = views[FUSION]
        terms = [self.dropout(self.gate_prefer[m](content)) * torch.softmax(self.query[m](fused), dim=-1) * views[m]
                 for m in self.modal.modalities]
        terms.append(self.dropout(self.gate_prefer[FUSION](content)) * fused)
        return torch.stack(terms).mean(0)

    @property
    def cl_temperature(self) -> float:
        return float(self.config["temperature"])
