"""A PyTorch Geometric ``HeteroData`` view of a :class:`~mmgraph.data.RecDataset`.

Node types ``'user'`` and ``'item'`` (``num_nodes`` set; items carry ``x_<modality>`` float32 features).
Edge types, all in PyG's source -> target order (``edge_index[0]`` = source):

* ``('user', 'interacts', 'item')``: the TRAIN interactions only, deduplicated, sorted by (user, item);
* ``('item', 'rev_interacts', 'user')``: the same edges reversed;
* ``('item', <name>, 'item')`` for every item graph given (e.g. ``knn_image``, ``knn_mm``,
  ``cooccur``): ``edge_index`` = :meth:`ItemGraph.to_pyg` (source = neighbour, target = the item
  whose neighbour list it is, so PyG's default ``flow='source_to_target'`` aggregates
  ``h[target] += w * h[source]``) and ``edge_weight``. :func:`item_graph_from_hetero` converts back to
  the row-gathers :class:`ItemGraph` convention.

Valid/test interactions are never put in the graph (they would leak into message passing).
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np
import torch

from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.base import ItemGraph

INTERACTS = ("user", "interacts", "item")
REV_INTERACTS = ("item", "rev_interacts", "user")


def build_hetero_data(dataset, item_graphs: Optional[Mapping[str, ItemGraph]] = None,
                      include_features: bool = True):
    """Build the ``HeteroData`` described in the module docstring.

    Args:
        dataset: a RecDataset (``U`` users, ``I`` items).
        item_graphs: ``{relation name: ItemGraph}`` over the dataset's items (e.g. the output of
            :func:`mmgraph.graph.build_item_graphs`).
        include_features: attach ``x_<modality>`` ``[I, d_m]`` float32 to the item nodes.

    Returns a ``HeteroData``: ``edge_index [2, E]`` per edge type (``E`` = train interactions for
    ``interacts`` / ``rev_interacts``), ``edge_weight [E]`` on the item graphs.
    """
    from torch_geometric.data import HeteroData

    data = HeteroData()
    data["user"].num_nodes = int(dataset.n_users)
    data["item"].num_nodes = int(dataset.n_items)
    if include_features:
        for name, feat in dataset.features.items():
            arr = np.asarray(feat, dtype=np.float32)
            if not arr.flags.writeable:  # e.g. a memory-mapped .npy: torch needs its own buffer
                arr = arr.copy()
            data["item"][f"x_{name}"] = torch.from_numpy(np.ascontiguousarray(arr))
    train = np.unique(np.asarray(dataset.train, dtype=np.int64).reshape(-1, 2), axis=0)
    ei = torch.from_numpy(np.ascontiguousarray(train.T))
    data[INTERACTS].edge_index = ei
    data[REV_INTERACTS].edge_index = ei.flip(0).contiguous()
    for name, graph in (item_graphs or {}).items():
        if not isinstance(graph, ItemGraph):
            raise ConfigError(f"item graph {name!r} must be an ItemGraph, got {type(graph).__name__}")
        if graph.num_nodes != dataset.n_items:
            raise DataError(f"item graph {name!r} has {graph.num_nodes} nodes, dataset has "
                            f"{dataset.n_items} items")
        edge_index, edge_weight = graph.to_pyg()
        store = data["item", name, "item"]
        store.edge_index = edge_index.contiguous()
        store.edge_weight = edge_weight
    return data


def item_graph_from_hetero(data, relation: str) -> ItemGraph:
    """The ``('item', relation, 'item')`` edges of a HeteroData as an :class:`ItemGraph`."""
    key: Tuple[str, str, str] = ("item", relation, "item")
    if key not in data.edge_types:
        raise DataError(f"HeteroData has no edge type {key}; it has {data.edge_types}")
    store = data[key]
    return ItemGraph.from_pyg(store.edge_index, getattr(store, "edge_weight", None), data["item"].num_nodes)
