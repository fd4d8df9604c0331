"""The run's graph: one PyG ``HeteroData`` built from a dataset and the relations a method asks for.

A method (and each plug-in) declares the relations it reads as :class:`Relation` objects (a name, a
builder ``kind`` and its parameters); :func:`build_graph` builds them -- each through the content-hash
cache of :mod:`mmgraph.graph.cache` -- into one ``HeteroData``::

    data = build_graph(dataset, [Relation("knn_mm", "freedom", {"k": 10, "image_weight": 0.1})])
    data["item", "knn_mm", "item"].edge_index      # [2, E], PyG source -> target
    data["user", "interacts", "item"].edge_index   # the TRAIN interactions

Models receive this object and read their graphs from it (:func:`interaction_adj`, :func:`relation_adj`,
:func:`node_features`); they never call a builder. :func:`save_graph` / :func:`load_graph` write and read
it (``mmgraph graph build`` / ``mmgraph train --graph``), and :func:`check_graph` verifies that a loaded
graph belongs to a dataset and holds what a method needs -- so a user can hand any relation, built by
hand, to any model.

Relation kinds (:data:`RELATION_KINDS`; ``k`` = neighbours per node):

* ``freedom`` (items): FREEDOM's frozen multimodal kNN graph ``sum_m w_m S_m`` (``k``, ``weights`` or
  ``image_weight``, ``norm``, ``self_loops``, ``modalities``);
* ``knn`` (items): top-k cosine neighbours of one ``modality`` (``self_loops`` default exclude,
  ``norm`` default none, ``weight``: similarity | binary);
* ``anchorrec`` (items): AnchorRec's similarity-weighted, symmetrically normalised kNN graph of one
  ``feature`` (``'mm'`` = the anchor feature, see :func:`~mmgraph.graph.item_graphs.anchor_features`);
* ``cooccurrence`` (items): top-k co-occurrence cosine over the training users (``measure: count``:
  ranked by and weighted with the number of shared users; ``min_count``: at least that many);
* ``user_cooccurrence`` (users): the same over the users' training items;
* ``brmrs_item`` (items): BR-MRS's homogeneous item graph (``alpha``, ``betas``, ``n_candidates``, ``norm``);
* ``brmrs_user`` (users): BR-MRS's homogeneous user graph (the same parameters; users' item sets and
  mean item features).
* ``damrs`` (items): DA-MRS's denoised kNN graph of one ``modality`` over the pairs above the mean
  similarity in every modality (``k``, ``modalities``; :mod:`mmgraph.graph.denoised`).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.base import ItemGraph
from mmgraph.graph.hetero import INTERACTS, REV_INTERACTS

log = logging.getLogger(__name__)

GRAPH_FORMAT = "mmgraph-heterodata"
GRAPH_VERSION = 1
EdgeType = Tuple[str, str, str]


@dataclass(frozen=True)
class Relation:
    """One relation of the run's ``HeteroData``: edge type ``(node, name, node)`` built by ``kind``.

    Args:
        name: the relation name (middle of the edge type), e.g. ``"knn_mm"``.
        kind: a builder of :data:`RELATION_KINDS`.
        params: the builder's parameters (JSON-serialisable).
        node: ``"item"`` or ``"user"`` (both ends; set by the kind when omitted).
    """

    name: str
    kind: str
    params: Dict[str, Any] = field(default_factory=dict)
    node: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in RELATION_KINDS:
            raise ConfigError(f"unknown relation kind {self.kind!r}, expected one of {sorted(RELATION_KINDS)}")
        node = RELATION_KINDS[self.kind][0]
        if self.node is None:
            object.__setattr__(self, "node", node)
        elif self.node != node:
            raise ConfigError(f"relation kind {self.kind!r} connects {node}s, not {self.node}s")

    @property
    def edge_type(self) -> EdgeType:
        return (self.node, self.name, self.node)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params), "node": self.node}


# --------------------------------------------------------------------------------------- builders
def _cache(cache) -> Any:
    return False if cache is None else cache


def _check_keywords(kind: str, params: Dict[str, Any], fn: Callable, given: Sequence[str],
                    own: Sequence[str] = ()) -> None:
    """Refuse parameters ``fn`` does not take as keywords (``given``: the arguments the builder passes itself;
    ``own``: the builder's own parameters, already taken out of ``params``)."""
    allowed = set(inspect.signature(fn).parameters) - set(given) | set(own)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"unknown parameter(s) for relation kind {kind!r}: {unknown}; expected some of "
                          f"{sorted(allowed | {'k'})}")


def _freedom(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.item_graphs import freedom_graph
    p = dict(p)
    _check_keywords("freedom", {k: v for k, v in p.items() if k != "k"}, freedom_graph,
                    ("features", "k", "cache", "use_gpu"))
    return freedom_graph(ds, int(p.pop("k", 10)), cache=cache, use_gpu=use_gpu, **p)


def _knn(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.item_graphs import build_item_graphs
    p = dict(p)
    modality = p.pop("modality", None)
    if modality is None:
        raise ConfigError("relation kind 'knn' needs a 'modality' parameter")
    return build_item_graphs(ds, "knn", k=int(p.pop("k", 10)), modalities=[modality], cache=cache,
                             use_gpu=use_gpu, **p)[f"knn_{modality}"]


def _anchorrec(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.item_graphs import _features, anchor_features, anchorrec_graph
    p = dict(p)
    feature = p.pop("feature", None)
    anchor, modalities = p.pop("anchor", None), p.pop("modalities", None)
    feats = _features(ds)
    if feature is None:
        raise ConfigError("relation kind 'anchorrec' needs a 'feature' parameter (a modality or 'mm')")
    if feature == "mm":
        x = anchor_features(feats, anchor, modalities)
    elif feature in feats:
        x = feats[feature]
    else:
        raise DataError(f"anchorrec relation: feature {feature!r} not in the dataset ({sorted(feats)})")
    _check_keywords("anchorrec", {k: v for k, v in p.items() if k != "k"}, anchorrec_graph,
                    ("features", "k", "cache", "use_gpu"), own=("feature", "anchor", "modalities"))
    return anchorrec_graph(x, int(p.pop("k", 10)), cache=cache, use_gpu=use_gpu, **p)


def _cooccurrence(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.item_graphs import build_item_graphs
    p = dict(p)
    return build_item_graphs(ds, "cooccurrence", k=int(p.pop("k", 5)), cache=cache, **p)["cooccur"]


def _user_cooccurrence(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.cache import cached
    from mmgraph.graph.cooccurrence import cooccurrence_graph
    p = dict(p)
    k, norm = int(p.pop("k", 10)), p.pop("norm", "none")
    measure, min_count = p.pop("measure", "cosine"), int(p.pop("min_count", 1))
    if p:
        raise ConfigError(f"unknown parameter(s) for relation kind 'user_cooccurrence': {sorted(p)}")
    flipped = np.ascontiguousarray(np.unique(ds.train, axis=0)[:, ::-1])
    key = {"k": k, "norm": norm, "n_users": ds.n_users, "n_items": ds.n_items}
    if (measure, min_count) != ("cosine", 1):
        key.update(measure=measure, min_count=min_count)
    return cached("user_cooccur", key, {"train": flipped},
                  lambda: cooccurrence_graph(flipped, k, n_users=ds.n_items, n_items=ds.n_users, norm=norm,
                                             measure=measure, min_count=min_count),
                  cache_dir=None if cache is True else cache)


def _damrs(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.cache import cached
    from mmgraph.graph.denoised import denoised_knn_graphs
    from mmgraph.graph.item_graphs import _cache_dir, _features, _select
    p = dict(p)
    modality, k, modalities = p.pop("modality", None), int(p.pop("k", 10)), p.pop("modalities", None)
    if p:
        raise ConfigError(f"unknown parameter(s) for relation kind 'damrs': {sorted(p)}")
    feats = _select(_features(ds), modalities)
    if modality not in feats:
        raise ConfigError(f"relation kind 'damrs' needs a 'modality' parameter, one of {sorted(feats)}")
    graphs = cached("damrs", {"k": k, "modalities": sorted(feats)}, {m: feats[m] for m in sorted(feats)},
                    lambda: denoised_knn_graphs(feats, k), _cache_dir(cache))
    return graphs[modality]


def _brmrs_item(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.item_graphs import build_item_graphs
    p = dict(p)
    return build_item_graphs(ds, "brmrs", k=int(p.pop("k", 10)), modalities=p.pop("modalities", None),
                             cache=cache, use_gpu=use_gpu, **p)["brmrs_item"]


def _brmrs_user(ds, p, cache, use_gpu) -> ItemGraph:
    from mmgraph.graph.item_graphs import _features, _select, brmrs_user_graph
    p = dict(p)
    k, modalities = int(p.pop("k", 10)), p.pop("modalities", None)
    allowed = {"alpha", "betas", "n_candidates", "norm"}
    if set(p) - allowed:
        raise ConfigError(f"unknown parameter(s) for relation kind 'brmrs_user': {sorted(set(p) - allowed)}")
    feats = _select(_features(ds), modalities)
    return brmrs_user_graph(feats, ds.train, k, n_users=ds.n_users, n_items=ds.n_items, use_gpu=use_gpu,
                            cache=cache, **p)


Builder = Callable[[Any, Dict[str, Any], Any, Optional[bool]], ItemGraph]
#: kind -> (node type, builder(dataset, params, cache, use_gpu) -> ItemGraph over that node type)
RELATION_KINDS: Dict[str, Tuple[str, Builder]] = {
    "freedom": ("item", _freedom),
    "knn": ("item", _knn),
    "anchorrec": ("item", _anchorrec),
    "cooccurrence": ("item", _cooccurrence),
    "user_cooccurrence": ("user", _user_cooccurrence),
    "brmrs_item": ("item", _brmrs_item),
    "damrs": ("item", _damrs),
    "brmrs_user": ("user", _brmrs_user),
}


def register_relation_kind(kind: str, node: str, builder: Builder) -> None:
    """Add a builder: ``builder(dataset, params, cache, use_gpu) -> ItemGraph`` over ``node`` ids."""
    if node not in ("user", "item"):
        raise ConfigError(f"node must be 'user' or 'item', got {node!r}")
    RELATION_KINDS[kind] = (node, builder)


def build_relation(dataset, relation: Relation, cache=False, use_gpu: Optional[bool] = None) -> ItemGraph:
    """Build one relation's graph (see :data:`RELATION_KINDS`)."""
    node, builder = RELATION_KINDS[relation.kind]
    graph = builder(dataset, dict(relation.params), _cache(cache), use_gpu)
    n = dataset.n_items if node == "item" else dataset.n_users
    if graph.num_nodes != n:
        raise DataError(f"relation {relation.name!r} has {graph.num_nodes} nodes, expected {n} {node}s")
    return graph


# --------------------------------------------------------------------------------------- the object
def unique_relations(relations: Iterable[Relation]) -> List[Relation]:
    """Relations by name, first occurrence kept; the same name with another definition is an error."""
    out: Dict[EdgeType, Relation] = {}
    for rel in relations:
        prev = out.get(rel.edge_type)
        if prev is not None and prev.describe() != rel.describe():
            raise ConfigError(f"relation {rel.edge_type} is requested twice with different definitions: "
                              f"{prev.describe()} vs {rel.describe()}")
        out.setdefault(rel.edge_type, rel)
    return list(out.values())


def build_graph(dataset, relations: Sequence[Relation] = (), cache=False, use_gpu: Optional[bool] = None,
                include_features: bool = True):
    """The run's ``HeteroData``: users, items (``x_<modality>``), the TRAIN interactions both ways and
    every requested relation (built through the graph cache when ``cache`` is set).

    Args:
        dataset: a :class:`~mmgraph.data.RecDataset`.
        relations: the :class:`Relation` s to add (kinds and their parameters: the module docstring,
            :data:`RELATION_KINDS`).
        cache: ``True`` (the default folder, ``$MMGRAPH_CACHE`` or ``~/.cache/mmgraph/graphs``), a folder, or
            False: reuse a relation built before on the same data and parameters.
        use_gpu: FAISS on the GPU for the kNN relations (None = when faiss-gpu and a CUDA device are present).
        include_features: store the item features as ``x_<modality>``.

    ``data.relations`` records ``{name: {"kind", "params", "node"}}`` of the built relations.
    """
    from mmgraph.graph.hetero import build_hetero_data

    relations = unique_relations(relations)
    data = build_hetero_data(dataset, include_features=include_features)
    described = {}
    for rel in relations:
        graph = build_relation(dataset, rel, cache, use_gpu)
        set_relation(data, rel.edge_type, graph)
        described[rel.name] = rel.describe()
    data.relations = described
    return data


def set_relation(data, edge_type: EdgeType, graph: ItemGraph) -> None:
    """Store an :class:`ItemGraph` (row-gathers convention) under ``edge_type`` in PyG order."""
    edge_index, edge_weight = graph.to_pyg()
    store = data[edge_type]
    store.edge_index = edge_index.contiguous()
    store.edge_weight = edge_weight.contiguous()


def attach_features(data, dataset) -> None:
    """Set ``data['item'].x_<modality>`` from the dataset's features (in place)."""
    for name, feat in dataset.features.items():
        arr = np.asarray(feat, dtype=np.float32)
        if not arr.flags.writeable:
            arr = arr.copy()
        data["item"][f"x_{name}"] = torch.from_numpy(np.ascontiguousarray(arr))


def check_graph(data, dataset, relations: Sequence[Relation] = (), source: str = "graph") -> None:
    """Raise :class:`DataError` unless ``data`` matches ``dataset`` (node counts, the same TRAIN
    interactions) and holds every relation in ``relations`` with valid edges. ``source`` names the
    graph (e.g. its file) in the messages."""
    for node, n in (("user", dataset.n_users), ("item", dataset.n_items)):
        got = data[node].num_nodes if node in data.node_types else None
        if got != n:
            raise DataError(f"{source}: {got} {node} nodes, but the dataset {dataset.name} has {n}; "
                            "build the graph from this dataset (mmgraph graph build --data ...)")
    if INTERACTS not in data.edge_types:
        raise DataError(f"{source}: no {INTERACTS} relation (the training interactions)")
    train = torch.from_numpy(np.ascontiguousarray(np.unique(dataset.train, axis=0).T))
    ei = data[INTERACTS].edge_index
    if ei.shape != train.shape or not torch.equal(ei.cpu(), train):
        counts = (f"other pairs, the same count ({ei.shape[1]})" if ei.shape == train.shape else
                  f"{ei.shape[1]} edges for {train.shape[1]} interactions")
        raise DataError(f"{source}: its {INTERACTS} edges are not the dataset's training interactions ({counts}); "
                        "it was built from another split or dataset")
    for rel in relations:
        if rel.edge_type not in data.edge_types:
            have = [et for et in data.edge_types if et not in (INTERACTS, REV_INTERACTS)]
            raise DataError(f"{source}: no relation {rel.edge_type} (needed as {rel.kind} graph); it has "
                            f"{have or 'none'}. Build it with `mmgraph graph build --method ...`")
        recorded = (getattr(data, "relations", None) or {}).get(rel.name)
        if isinstance(recorded, dict) and recorded.get("params") is not None and \
                json.loads(json.dumps(recorded["params"])) != json.loads(json.dumps(dict(rel.params))):
            raise DataError(f"{source}: relation {rel.edge_type} was built with {recorded['params']}, but this run "
                            f"asks for {dict(rel.params)}; set the run's keys to match (e.g. --set knn_k=...) or "
                            "rebuild the graph")
        store = data[rel.edge_type]
        n = dataset.n_items if rel.node == "item" else dataset.n_users
        eidx = store.edge_index
        if eidx.dim() != 2 or eidx.shape[0] != 2 or eidx.dtype != torch.long:
            raise DataError(f"{source}: relation {rel.edge_type} edge_index must be int64 [2, E], got "
                            f"{eidx.dtype} {tuple(eidx.shape)}")
        if eidx.numel() and (int(eidx.min()) < 0 or int(eidx.max()) >= n):
            raise DataError(f"{source}: relation {rel.edge_type} has node ids outside 0..{n - 1}")
        w = getattr(store, "edge_weight", None)
        if w is not None and (w.shape != (eidx.shape[1],) or not bool(torch.isfinite(w).all())):
            raise DataError(f"{source}: relation {rel.edge_type} edge_weight must be finite [E={eidx.shape[1]}]")


# --------------------------------------------------------------------------------------- files
def save_graph(data, path: Union[str, os.PathLike], include_features: bool = False) -> None:
    """Write the graph atomically (``torch.save`` of plain tensors: loads with ``weights_only=True``).

    Item features are left out unless ``include_features`` (they are read from the dataset again)."""
    from mmgraph.graph.cache import save_object

    edges = []
    for et in data.edge_types:
        store = data[et]
        edges.append([list(et), store.edge_index.cpu(), getattr(store, "edge_weight", None)])
    blob = {"format": GRAPH_FORMAT, "version": GRAPH_VERSION,
            "num_nodes": {nt: int(data[nt].num_nodes) for nt in data.node_types},
            "edges": edges, "relations": dict(getattr(data, "relations", None) or {})}
    if include_features:
        blob["features"] = {k[2:]: v for k, v in data["item"].items() if k.startswith("x_")}
    save_object(blob, path)


def load_graph(path: Union[str, os.PathLike], dataset=None):
    """Read a file written by :func:`save_graph` (or ``mmgraph graph build``) as ``HeteroData``;
    with ``dataset``, attach its item features and :func:`check_graph` it."""
    from torch_geometric.data import HeteroData

    from mmgraph.graph.cache import load_object

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such graph file")
    if not zipfile.is_zipfile(path):   # torch.save writes a zip archive; anything else is another kind of file
        raise DataError(f"{path}: not a graph file written by `mmgraph graph build` (not a torch archive)")
    try:
        blob = load_object(path)
    except Exception as exc:
        text = str(exc).strip()
        if "weights only" in text.lower() or "weights_only" in text:  # never relay torch's advice to unpickle
            raise DataError(f"{path}: refused: it holds pickled Python objects (mmgraph never unpickles "
                            "graph files)") from None
        first = text.splitlines()[0][:120] if text else type(exc).__name__
        raise DataError(f"{path}: not a graph file written by `mmgraph graph build` ({first})") from None
    if not isinstance(blob, dict) or blob.get("format") != GRAPH_FORMAT:
        raise DataError(f"{path}: not a graph file written by `mmgraph graph build` (rebuild it with this "
                        "version of mmgraph)")
    data = HeteroData()
    for nt, n in blob["num_nodes"].items():
        data[nt].num_nodes = int(n)
    for et, edge_index, edge_weight in blob["edges"]:
        store = data[tuple(et)]
        store.edge_index = edge_index
        if edge_weight is not None:
            store.edge_weight = edge_weight
    for name, x in (blob.get("features") or {}).items():
        data["item"][f"x_{name}"] = x
    data.relations = dict(blob.get("relations") or {})
    if dataset is not None:
        attach_features(data, dataset)
        check_graph(data, dataset, source=str(path))
    return data


# --------------------------------------------------------------------------------------- views
def node_counts(data) -> Tuple[int, int]:
    """``(n_users, n_items)``: the ``num_nodes`` of the ``user`` and ``item`` node types (set them on a hand-built
    ``HeteroData``: ids without an edge still count)."""
    counts = []
    for node in ("user", "item"):
        n = data[node].num_nodes if node in data.node_types else None
        if n is None:
            raise DataError(f"the graph's {node!r} nodes have no num_nodes; set data[{node!r}].num_nodes (the "
                            f"number of {node}s, ids 0..n-1) before building its adjacency")
        counts.append(int(n))
    return counts[0], counts[1]


def node_features(data, node: str = "item") -> Dict[str, Tensor]:
    """``{modality: x [N, d_m]}`` from the ``x_<modality>`` attributes of a node type."""
    return {k[2:]: v for k, v in data[node].items() if k.startswith("x_") and isinstance(v, Tensor)}


def interaction_pairs(data) -> Tensor:
    """``[E, 2]`` (user, item) training pairs of the ``interacts`` relation."""
    return data[INTERACTS].edge_index.t()


def interaction_adj(data, edge_index: Optional[Tensor] = None):
    """The symmetric-normalised user-item adjacency ``D^-1/2 A D^-1/2`` over ``U + I`` nodes (users
    first) as a :class:`~mmgraph.nn.sparse.SparseAdj`; ``edge_index`` = a subset of the ``interacts``
    edges (``[2, E']``), default all."""
    n_users, n_items = node_counts(data)
    return bipartite_adj(data[INTERACTS].edge_index if edge_index is None else edge_index, n_users, n_items)


def bipartite_adj(edge_index: Tensor, n_users: int, n_items: int):
    """:func:`interaction_adj` of explicit (user, item) edges ``[2, E]`` (unique)."""
    from mmgraph.graph.bipartite import sym_norm_weights
    from mmgraph.nn.sparse import SparseAdj

    u, i = edge_index[0], edge_index[1] + n_users
    both = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    n = n_users + n_items
    return SparseAdj(both, sym_norm_weights(both, n), (n, n), symmetric=True, n_users=n_users)


def relation_adj(data, name: str, node: str = "item", symmetric: bool = False):
    """The ``(node, name, node)`` relation as a :class:`~mmgraph.nn.sparse.SparseAdj` ``[N, N]`` with
    its stored weights (``out[target] = sum w x[source]``); ``symmetric``: the caller knows the relation is
    symmetric, so the backward reuses the matrix instead of storing its transpose."""
    from mmgraph.nn.sparse import SparseAdj

    et = (node, name, node)
    if et not in data.edge_types:
        raise DataError(f"the graph has no relation {et}; it has {data.edge_types}")
    store = data[et]
    n = int(data[node].num_nodes)
    return SparseAdj(store.edge_index.flip(0), getattr(store, "edge_weight", None), (n, n), symmetric=symmetric)


def relation_graph(data, name: str, node: str = "item") -> ItemGraph:
    """The ``(node, name, node)`` relation as an :class:`ItemGraph` (row-gathers convention)."""
    et = (node, name, node)
    if et not in data.edge_types:
        raise DataError(f"the graph has no relation {et}; it has {data.edge_types}")
    store = data[et]
    return ItemGraph.from_pyg(store.edge_index, getattr(store, "edge_weight", None), int(data[node].num_nodes))


def neighbour_lists(graph: ItemGraph, k: Optional[int] = None) -> Tensor:
    """``[N, k]`` neighbour ids per row of ``graph`` by decreasing weight (ties: lower id), ``-1`` padded;
    ``k`` defaults to the largest row."""
    n = graph.num_nodes
    counts = graph.row_counts()
    k = int(counts.max()) if k is None and graph.num_edges else int(k or 0)
    out = torch.full((n, max(k, 0)), -1, dtype=torch.long)
    if graph.num_edges == 0 or k == 0:
        return out
    # sort by (row, -weight, col): rows are sorted already; a stable sort on -weight within rows
    order = np.lexsort((graph.col.numpy(), -graph.edge_weight.numpy(), graph.row.numpy()))
    rows, cols = graph.row[order], graph.col[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(rows)) - first[rows]
    keep = rank < k
    out[rows[keep], rank[keep]] = cols[keep]
    return out
