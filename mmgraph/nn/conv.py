"""LightGCN-style propagation as a PyG ``MessagePassing`` layer that carries several channels."""
from __future__ import annotations

import atexit
import os
import sys
import tempfile
from typing import List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import spmm

from mmgraph.nn.sparse import SparseAdj, split_nodes

#: an adjacency: a fixed :class:`SparseAdj` (fused CSR path), a PyG ``edge_index [2, E]`` (source ->
#: target, gather/scatter path) or a ``torch.sparse`` ``adj_t [N_target, N_source]``
Adjacency = Union[SparseAdj, Tensor]

_GENERATED: Set[str] = set()   # generated-module files this process removes at exit


def remove_generated_source_at_exit(cls: type) -> None:
    """Delete the file of the ``propagate`` module PyG generated for the ``MessagePassing`` class ``cls`` when the
    process exits. PyG writes it to the temporary folder and never deletes it
    (``torch_geometric.template.module_from_template``): one ~10 KB file per process, thousands after a grid or a
    benchmark. It stays while the process runs (tracebacks and ``inspect`` read it)."""
    module = sys.modules.get(f"{cls.__module__}_{cls.__name__}_propagate")
    path = getattr(module, "__file__", None)
    if not path or path in _GENERATED:
        return
    if os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir()):
        _GENERATED.add(path)
        atexit.register(_remove_quietly, path)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def degree_normalized(edge_index: Tensor, edge_weight: Tensor, n_source: int,
                      n_target: Optional[int] = None) -> Tensor:
    r"""``w_e / sqrt(deg(s_e) deg(t_e))`` for the edges ``edge_index [2, E]`` (source -> target), weighted degrees.

    On one node set (``n_target`` None) both degrees are the weighted in-degree, and a node without in-edges
    contributes 0 -- PyG's ``gcn_norm`` without self loops, so :class:`LightGCNConv` equals ``LGConv`` on directed
    graphs too. On a bipartite graph (``n_target`` given: sources and targets numbered separately) ``deg(s)`` is
    the source's weighted out-degree and ``deg(t)`` the target's in-degree. Returns ``[E]``."""
    src, dst = edge_index[0], edge_index[1]
    if n_target is None:
        deg_t = edge_weight.new_zeros(n_source).index_add_(0, dst, edge_weight)
        deg_s = deg_t
    else:
        deg_t = edge_weight.new_zeros(n_target).index_add_(0, dst, edge_weight)
        deg_s = edge_weight.new_zeros(n_source).index_add_(0, src, edge_weight)
    inv_t = _inv_sqrt(deg_t)
    inv_s = inv_t if n_target is None else _inv_sqrt(deg_s)
    return inv_s[src] * edge_weight * inv_t[dst]


def _inv_sqrt(deg: Tensor) -> Tensor:
    """``deg^-1/2``, 0 where ``deg`` is 0 (no inf anywhere, so no NaN gradient either)."""
    present = deg > 0
    return torch.where(present, deg, torch.ones_like(deg)).pow(-0.5) * present


class LightGCNConv(MessagePassing):
    r"""The light graph convolution of LightGCN (He et al., SIGIR 2020), without weights, activation
    or self loop:

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)} e_{j,i} \, \mathbf{x}_j

    where :math:`e_{j,i}` is the (already normalised) edge weight, or
    :math:`e_{j,i} / \sqrt{\deg(i)\deg(j)}` with ``normalize=True`` (weighted degrees,
    :func:`degree_normalized`: PyG's ``LGConv`` on one node set; out-degree of the source and in-degree of the
    target on a bipartite ``edge_index``). ``normalize`` defaults to False, unlike ``LGConv``: the models pass
    graphs normalised once when they are built.

    Follows PyG's :class:`~torch_geometric.nn.conv.LGConv` conventions: ``edge_index[0]`` is the source,
    ``edge_index[1]`` the target; ``forward`` makes exactly one call to :meth:`propagate`, which runs

    * :meth:`message_and_aggregate` when the adjacency is sparse: a :class:`SparseAdj` (the fixed,
      normalised graphs of the models: a CSR product whose backward reuses ``A`` for symmetric graphs)
      or a ``torch.sparse`` ``adj_t``;
    * :meth:`message` + scatter-add for an ``edge_index`` with ``edge_weight`` -- the path for
      learned edge weights (``edge_weight.requires_grad``).

    ``x`` may carry several channels: ``[N, F]`` or ``[N, C, F]`` (the operator is linear, so channels
    are flattened into one product). Both paths give the same values and gradients.

    Args:
        normalize: symmetrically normalise ``edge_weight`` by the weighted degrees (edge_index path).

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}_s|, *)`, an adjacency (see above),
          edge weights :math:`(|\mathcal{E}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, *)`
    """

    def __init__(self, normalize: bool = False, **kwargs):
        kwargs.setdefault("aggr", "add")
        kwargs.setdefault("node_dim", 0)
        super().__init__(**kwargs)
        remove_generated_source_at_exit(type(self))
        self.normalize = normalize

    def reset_parameters(self) -> None:  # parameter-free, kept for the PyG layer interface
        super().reset_parameters()

    def forward(self, x: Tensor, edge_index: Adjacency, edge_weight: Optional[Tensor] = None,
                num_nodes: Optional[int] = None) -> Tensor:
        r"""Propagate ``x`` once.

        Args:
            x: source node features ``[N_s, F]`` or ``[N_s, C, F]``.
            edge_index: a :class:`SparseAdj` ``[N_t, N_s]``, a ``torch.sparse`` ``adj_t [N_t, N_s]``, or a PyG
                ``edge_index [2, E]`` (row 0 the source, row 1 the target).
            edge_weight: ``[E]`` weights of an ``edge_index`` (ones when None); ignored for sparse adjacencies,
                whose values are the weights.
            num_nodes: an ``edge_index``'s number of target nodes ``N_t`` when the graph is bipartite (sources and
                targets numbered separately, e.g. users -> items); None for a graph on one node set (``N_t = N_s``).

        Returns:
            ``[N_t, F]`` or ``[N_t, C, F]``.
        """
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        sparse: Optional[SparseAdj] = None
        size = None
        if isinstance(edge_index, SparseAdj):
            sparse, edge_index = edge_index, edge_index.csr
            n_out = sparse.shape[0]
        elif edge_index.layout != torch.strided:  # a torch.sparse adj_t [N_target, N_source]
            n_out = edge_index.shape[0]
        else:
            n_out = num_nodes if num_nodes is not None else shape[0]
            if edge_weight is None:
                edge_weight = torch.ones(edge_index.size(1), dtype=flat.dtype, device=flat.device)
            if self.normalize:
                edge_weight = degree_normalized(edge_index, edge_weight, shape[0], num_nodes)
            size = (shape[0], n_out)
        # propagate_type: (x: Tensor, edge_weight: Optional[Tensor], sparse: Optional[SparseAdj], power: Optional[Tuple[int, bool]], items: Optional[Tensor])
        out = self.propagate(edge_index, x=flat, edge_weight=edge_weight, sparse=sparse, power=None,
                             items=None, size=size)
        return out.view((n_out,) + tuple(shape[1:]))

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return x_j * edge_weight.view(-1, 1)

    def power_sum(self, x: Tensor, adj: SparseAdj, hops: int, mean: bool = False) -> Tensor:
        r"""LightGCN's readout over ``hops`` layers in ONE :meth:`propagate` on a :class:`SparseAdj`:
        :math:`\sum_{k=0}^{K} A^k x` (divided by :math:`K + 1` with ``mean``), the same values and
        gradients as ``hops`` calls of :meth:`forward` summed, with an in-place forward and a backward by
        Horner's rule (:meth:`SparseAdj.power_sum`). Shapes as :meth:`forward` (square ``adj``)."""
        flat = x.reshape(x.shape[0], -1)
        out = self.propagate(adj.csr, x=flat, edge_weight=None, sparse=adj, power=(int(hops), bool(mean)), items=None)
        return out.view(x.shape)

    def bipartite_power_sum(self, users: Tensor, items: Tensor, adj: SparseAdj, hops: int,
                            mean: bool = False) -> Tuple[Tensor, Tensor]:
        """:meth:`power_sum` of ``[users; items]`` on a bipartite :class:`SparseAdj` (users first, built with
        ``n_users``), in ONE :meth:`propagate` over its user-item block, returned as ``(users [U, ...], items
        [I, ...])`` (:meth:`SparseAdj.bipartite_power_sum`: the same values and gradients, with no joint table)."""
        flat_u, flat_i = users.reshape(users.shape[0], -1), items.reshape(items.shape[0], -1)
        out_u, out_i = self.propagate(adj.block_ui, x=flat_u, edge_weight=None, sparse=adj,
                                      power=(int(hops), bool(mean)), items=flat_i)
        return out_u.view(users.shape), out_i.view(items.shape)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor, sparse: Optional[SparseAdj],
                              power: Optional[Tuple[int, bool]] = None,
                              items: Optional[Tensor] = None) -> "Tensor | Tuple[Tensor, Tensor]":
        if sparse is not None:
            if items is not None:          # bipartite: x holds the users, items the items
                return sparse.bipartite_power_sum(x, items, *power)
            return sparse.matmul(x) if power is None else sparse.power_sum(x, *power)
        return spmm(adj_t, x, reduce=self.aggr)


class LightGCNEncoder(nn.Module):
    """``L`` :class:`LightGCNConv` layers with a readout over layers ``0..L``.

    Args:
        n_layers: number of propagation layers ``L``.
        readout: ``"mean"`` (LightGCN) or ``"sum"`` (CM3) or ``"last"``.

    ``forward(x [N, ...], adj)`` returns the readout ``[N, ...]``; :meth:`bipartite` takes and returns the user and
    item tables of a bipartite graph separately. The adjacency's weights are used as they are: pass a normalised
    graph (:func:`~mmgraph.graph.bipartite.normalized_bipartite_adj`, ``interaction_adj``), or normalise an
    ``edge_index`` with :func:`degree_normalized` first.
    """

    def __init__(self, n_layers: int, readout: str = "mean"):
        super().__init__()
        if readout not in ("mean", "sum", "last"):
            raise ValueError(f"readout must be mean, sum or last, got {readout!r}")
        if int(n_layers) < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.n_layers = int(n_layers)
        self.readout = readout
        self.conv = LightGCNConv()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def layers(self, x: Tensor, adj: Adjacency, edge_weight: Optional[Tensor] = None) -> List[Tensor]:
        out = [x]
        for _ in range(self.n_layers):
            x = self.conv(x, adj, edge_weight)
            out.append(x)
        return out

    def forward(self, x: Tensor, adj: Adjacency, edge_weight: Optional[Tensor] = None) -> Tensor:
        if self.n_layers == 0:
            return x
        if self.readout == "last":
            return self.layers(x, adj, edge_weight)[-1]
        if isinstance(adj, SparseAdj) and edge_weight is None:
            return self.conv.power_sum(x, adj, self.n_layers, self.readout == "mean")
        total = x
        for _ in range(self.n_layers):
            x = self.conv(x, adj, edge_weight)
            total = total + x
        return total / (self.n_layers + 1) if self.readout == "mean" else total

    def bipartite(self, users: Tensor, items: Tensor, adj: Adjacency) -> Tuple[Tensor, Tensor]:
        """:meth:`forward` of ``[users; items]`` split back into ``(users [U, F], items [I, F])``. On a bipartite
        :class:`SparseAdj` (``interaction_adj``) with a mean or sum readout the two tables are propagated
        separately (:meth:`SparseAdj.bipartite_power_sum`: the same values, and no ``[U + I, F]`` table
        concatenated forward or split backward -- ~0.6 ms of FREEDOM's step on TikTok, 2-3 ms of CM3's)."""
        if isinstance(adj, SparseAdj) and adj.bipartite and self.n_layers > 0 and self.readout != "last":
            if adj.n_users != users.shape[0]:
                raise ValueError(f"bipartite propagation: the graph has {adj.n_users} users, the table "
                                 f"{users.shape[0]}")
            return self.conv.bipartite_power_sum(users, items, adj, self.n_layers, self.readout == "mean")
        return split_nodes(self(torch.cat([users, items], 0), adj), users.shape[0])
