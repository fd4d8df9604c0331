"""Mini-batch graph training (``graph_batching: sampled``): BPR batches with their sampled subgraph.

:class:`SubgraphBatches` is the training sampler of a model trained on sampled subgraphs. It is PyG's
:class:`~torch_geometric.loader.LinkLoader` over the training interactions with the vectorised
:class:`~mmgraph.graph.sampling.BipartiteNeighborSampler`: each batch of ``(user, positive)`` edges gets
one negative per row (the protocol's rejection rule) and the ``L``-hop neighbourhood of its users and
items, so a step costs O(batch x fanout^L) instead of O(graph).

Each yielded :class:`~mmgraph.models.base.Batch` carries global ``users / pos / neg`` and
``extras["subgraph"]``: the sampled ``HeteroData`` with ``n_id`` and ``deg`` (degree in the sampled-from
graph) per node type, ``edge_index`` (local), ``e_id`` and ``edge_norm`` (``1 / sqrt(d_u d_i)``) per edge
type, and the local seed indices ``user.src_index``, ``item.dst_pos_index``, ``item.dst_neg_index``
(see :func:`subgraph_adjacency`).

In a data-parallel run each rank loads its own shard of the interactions (``rank::world``, padded to
equal length so all ranks take the same number of steps) with ``ceil(batch_size / world)`` rows per
step, so the global batch stays ``batch_size``.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmgraph.data.dataset import RecDataset
from mmgraph.errors import ConfigError
from mmgraph.graph.hetero import INTERACTS, REV_INTERACTS
from mmgraph.graph.sampling import BipartiteNeighborSampler
from mmgraph.models.base import Batch
from mmgraph.nn.sparse import SparseAdj
from mmgraph.train.sampler import BPRSampler

GRAPH_BATCHING = ("full", "sampled")


def layer_fanouts(num_neighbors: Sequence[int], n_layers: int) -> List[int]:
    """One fanout per propagation layer: a one-value list applies to every layer."""
    fanouts = [int(f) for f in (num_neighbors if isinstance(num_neighbors, (list, tuple)) else [num_neighbors])]
    if n_layers < 1:
        raise ConfigError(f"graph_batching=sampled samples a neighbourhood per propagation layer, but the model has "
                          f"{n_layers}; use graph_batching=full")
    if len(fanouts) == 1:
        fanouts = fanouts * n_layers
    if len(fanouts) != n_layers:
        raise ConfigError(f"num_neighbors={list(num_neighbors)} gives {len(fanouts)} fanouts for {n_layers} "
                          "propagation layers: give one per layer, or one for all")
    if any(f < 1 for f in fanouts):
        raise ConfigError(f"num_neighbors must be >= 1, got {list(num_neighbors)}")
    return fanouts


def _loader_graph(data, sampler: BipartiteNeighborSampler):
    """The interactions both ways with ``edge_norm`` and node ``deg`` (what the subgraphs carry)."""
    from torch_geometric.data import HeteroData

    g = HeteroData()
    g["user"].num_nodes, g["item"].num_nodes = sampler.n_users, sampler.n_items
    ei = sampler.edge_index
    g[INTERACTS].edge_index = ei
    g[REV_INTERACTS].edge_index = ei.flip(0)
    update_norms(g, sampler)
    return g


def update_norms(g, sampler: BipartiteNeighborSampler) -> None:
    """``deg`` and ``edge_norm = 1 / sqrt(d_u d_i)`` of the graph the sampler samples from (edges
    outside it get 0)."""
    du, di = sampler.deg_user.float(), sampler.deg_item.float()
    ei = sampler.edge_index
    norm = (du[ei[0]] * di[ei[1]]).clamp(min=1).rsqrt()
    present = torch.zeros(ei.shape[1], dtype=torch.bool)
    present[sampler.user_eid] = True
    norm = torch.where(present, norm, torch.zeros_like(norm))
    g["user"].deg, g["item"].deg = du, di
    g[INTERACTS].edge_norm = norm
    g[REV_INTERACTS].edge_norm = norm


class SubgraphBatches:
    """The training sampler of ``graph_batching: sampled`` (see the module docstring).

    Args:
        data: the run's ``HeteroData``. dataset: the training interactions (the BPR rule's history).
        batch_size: global rows per step. seed: seeds the shuffle, the negatives and the neighbour choice.
        num_neighbors: fanout per hop.
    """

    shards_itself = True
    #: also build each subgraph's CSR pair (``extras["adjacency"]``, :func:`subgraph_csr`) while sampling, so that
    #: a prefetching trainer takes it off the step's critical path (set by the trainer when it prefetches on a
    #: CPU; a GPU builds the pair in the step faster than the CPU thread would)
    prepare_adjacency = False

    def __init__(self, data, dataset: RecDataset, batch_size: int, seed: int, num_neighbors: Sequence[int],
                 kernel: str = "auto"):
        from torch_geometric.loader import LinkLoader
        from torch_geometric.sampler import NegativeSampling

        from mmgraph.train.distributed import current

        ctx = current()
        self.bpr = BPRSampler(dataset, batch_size, seed=seed + 7919 * ctx.rank)
        pairs = torch.from_numpy(self.bpr.pairs)
        rows = torch.arange(len(pairs))
        if ctx.enabled:
            per_rank = math.ceil(len(rows) / ctx.world)
            rows = rows[ctx.rank::ctx.world]
            if len(rows) < per_rank:  # equal shards: every rank takes the same number of steps
                rows = torch.cat([rows, rows[:per_rank - len(rows)]])
        self.generator = torch.Generator().manual_seed(int(seed) + 104729 * ctx.rank)
        self.sampler = BipartiteNeighborSampler(data, num_neighbors, negatives=self.bpr.sample_negatives,
                                                generator=self.generator, kernel=kernel)
        self.graph = _loader_graph(data, self.sampler)
        local_batch = max(1, math.ceil(int(batch_size) / ctx.world))
        self.loader = LinkLoader(self.graph, link_sampler=self.sampler,
                                 edge_label_index=(INTERACTS, pairs[rows].t().contiguous()),
                                 neg_sampling=NegativeSampling("triplet"), batch_size=local_batch, shuffle=True,
                                 generator=self.generator, filter_per_worker=False)

    def set_edges(self, keep: Optional[Tensor]) -> None:
        """Sample from a subset of the training edges from now on (e.g. FREEDOM's pruned graph)."""
        self.sampler.set_edges(keep)
        update_norms(self.graph, self.sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self) -> Iterator[Batch]:
        for sub in self.loader:
            u_ids, i_ids = sub["user"].n_id, sub["item"].n_id
            users = u_ids[sub["user"].src_index]
            pos, neg = i_ids[sub["item"].dst_pos_index], i_ids[sub["item"].dst_neg_index]
            extras = {"subgraph": sub}
            if self.prepare_adjacency:
                extras["adjacency"] = subgraph_csr(sub)
            yield Batch(users, pos, neg, extras)

    def state_dict(self) -> dict:
        return {"rng": self.bpr.rng.bit_generator.state, "torch": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.bpr.rng.bit_generator.state = state["rng"]
        if "torch" in state:
            self.generator.set_state(state["torch"])


def subgraph_adjacency(sub, n_users: Optional[int] = None) -> Tuple[Tensor, Tensor, int]:
    """The sampled subgraph as one homogeneous graph (its users first, then its items).

    Returns ``(edge_index [2, E] source -> target, edge_weight [E], n_users_local)`` with
    ``w = edge_norm * deg(target) / sampled(target)``: the full graph's ``1 / sqrt(d_u d_i)`` scaled by
    the inverse sampled fraction of the target's neighbours, so ``sum_j w x_j`` is an unbiased estimate
    of the full-graph aggregation ``sum_j x_j / sqrt(d_t d_j)``, and exactly it for a target whose
    neighbours were all sampled (degree <= fanout).
    """
    nu = int(sub["user"].n_id.numel()) if n_users is None else int(n_users)
    ui, iu = sub[INTERACTS], sub[REV_INTERACTS]
    src = torch.cat([ui.edge_index[0], iu.edge_index[0] + nu])
    dst = torch.cat([ui.edge_index[1] + nu, iu.edge_index[1]])
    norm = torch.cat([ui.edge_norm, iu.edge_norm])
    n = nu + int(sub["item"].n_id.numel())
    deg = torch.cat([sub["user"].deg, sub["item"].deg]).to(norm.dtype)
    sampled = torch.bincount(dst, minlength=n).to(norm.dtype)
    weight = norm * deg[dst] / sampled[dst].clamp(min=1)
    return torch.stack([src, dst]), weight, nu


def subgraph_csr(sub, dtype: torch.dtype = torch.float32) -> SparseAdj:
    """The sampled subgraph's propagation matrix as a CSR pair: ``A [N_s, N_s]`` (its users first, then its
    items) with ``A[target, source]`` = :func:`subgraph_adjacency`'s weight, built by
    :meth:`~mmgraph.nn.sparse.SparseAdj.from_edges`."""
    edge_index, weight, _ = subgraph_adjacency(sub)
    n = int(sub["user"].n_id.numel()) + int(sub["item"].n_id.numel())
    return SparseAdj.from_edges(edge_index.flip(0), weight.to(dtype), (n, n))
