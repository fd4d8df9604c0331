"""The user-item bipartite graph over ``U + I`` nodes (users first, then items)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor


def bipartite_edge_index(pairs, n_users: int, dedup: bool = True) -> Tensor:
    """Both directions of the user-item edges as ``[2, 2E]`` over nodes ``0..U+I-1``.

    Args:
        pairs: ``[E, 2]`` (user, item) training interactions.
    """
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.long)
    if dedup:
        pairs = torch.unique(pairs, dim=0)
    u, i = pairs[:, 0], pairs[:, 1] + n_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def sym_norm_weights(edge_index: Tensor, num_nodes: int, edge_weight: Optional[Tensor] = None,
                     eps: float = 1e-7) -> Tensor:
    """``w_rc / sqrt(d_r d_c)`` with ``d`` the weighted degree (``eps`` avoids 0-division, as MMRec)."""
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), dtype=torch.float32, device=edge_index.device)
    deg = torch.zeros(num_nodes, dtype=edge_weight.dtype, device=edge_index.device)
    deg.scatter_add_(0, edge_index[0], edge_weight)
    inv_sqrt = (deg + eps).pow(-0.5)
    return inv_sqrt[edge_index[0]] * edge_weight * inv_sqrt[edge_index[1]]


def normalized_bipartite(pairs, n_users: int, n_items: int,
                         dedup: bool = True) -> Tuple[Tensor, Tensor]:
    """``A_hat = D^-1/2 A D^-1/2`` of the bipartite graph (no self loops) as (edge_index, edge_weight)."""
    edge_index = bipartite_edge_index(pairs, n_users, dedup=dedup)
    return edge_index, sym_norm_weights(edge_index, n_users + n_items)


def normalized_bipartite_adj(pairs, n_users: int, n_items: int):
    """The symmetric-normalised bipartite adjacency as a :class:`~mmgraph.nn.sparse.SparseAdj`."""
    from mmgraph.nn.sparse import SparseAdj
    edge_index, weight = normalized_bipartite(pairs, n_users, n_items)
    n = n_users + n_items
    return SparseAdj(edge_index, weight, (n, n), symmetric=True, n_users=n_users)
