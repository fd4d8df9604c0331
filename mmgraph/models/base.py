"""The common model interface every method (and every plug-in) builds on.

A model is built from the run's graph (a PyG ``HeteroData``, see :mod:`mmgraph.graph.relations`) and a
flat config: ``Model(data, config)``. It declares the relations it reads with :meth:`Recommender.relations`
(the run builds them), scores by a dot product of user and item representations, and may expose named
*channels* (e.g. ``id``, ``image``, ``text``, ``fused``): representation spaces in which
``user . item`` is a score, used by plug-ins (losses on per-modality scores) and by
``mmgraph evaluate --channel``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmgraph.graph.relations import Relation, interaction_adj, node_counts, node_features
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.sparse import SparseAdj, gather_rows, unique_rows

FINAL = "final"


@dataclass
class Batch:
    """A training batch of BPR triples: ``users, pos, neg`` are ``[B]`` int64 tensors.

    ``extras`` holds what a model's or plug-in's sampler adds, e.g. ``candidates [B, n]``: a pool of
    negatives per row (BR-MRS's hard-negative candidates).
    """

    users: Tensor
    pos: Tensor
    neg: Tensor
    extras: Dict[str, Tensor] = field(default_factory=dict)

    def to(self, device) -> "Batch":
        return Batch(self.users.to(device), self.pos.to(device), self.neg.to(device),
                     {k: v.to(device) for k, v in self.extras.items()})

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def rows(self, users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The batch's rows of a user table ``[U, ...]`` and an item table ``[I, ...]``: ``(users[self.users],
        items[self.pos], items[self.neg])``, each ``[B, ...]``, gathered with :func:`~mmgraph.nn.sparse.gather_rows`."""
        return gather_rows(users, self.users), gather_rows(items, self.pos), gather_rows(items, self.neg)


RowFn = Callable[[Tensor], Tensor]


@dataclass
class Channel:
    """One representation space: ``score(u, i) = user(u) . item(i)``.

    Each side is a full table (``users [U, d]`` / ``items [I, d]``) or a function ``ids [n] -> [n, d]``
    for models that build only the rows a batch needs. A function channel may also offer ``item_table``:
    ``() -> [I, d]``, every item's row (the same values as ``item_fn``), for a caller that needs most items
    (BR-MRS's candidate pools): one product on the feature table instead of a gather and a product on the
    distinct ids. A channel whose item rows are an affine map of item features may give that map as
    ``item_affine``: ``() -> (x [I, d_x], weight [d, d_x], bias [d] or None)`` with every item's row
    ``x @ weight.T + bias``; a caller scoring a few items per user can then take the gradient on the user
    side (:func:`mmgraph.nn.affine.affine_row_scores`) instead of through the whole table. ``scores``: ``(pos [B],
    neg [B])``, the batch triples' scores in this channel when the backbone's own loss computed them (FREEDOM's
    feature BPR), so that a plug-in scoring the same pairs (BR-MRS) reuses them instead of recomputing.
    """

    users: Optional[Tensor] = None
    items: Optional[Tensor] = None
    user_fn: Optional[RowFn] = None
    item_fn: Optional[RowFn] = None
    item_table: Optional[Callable[[], Tensor]] = None
    item_affine: Optional[Callable[[], Tuple[Tensor, Tensor, Optional[Tensor]]]] = None
    scores: Optional[Tuple[Tensor, Tensor]] = None

    def user_rows(self, ids: Tensor, distinct: bool = False) -> Tensor:
        """``[len(ids), d]``; ``distinct``: ``ids`` has no repeats (a cheaper backward)."""
        return _rows(self.users, self.user_fn, ids, distinct, "user")

    def item_rows(self, ids: Tensor, distinct: bool = False) -> Tensor:
        return _rows(self.items, self.item_fn, ids, distinct, "item")

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of ``users [B]`` with ``items [B]`` (-> ``[B]``) or ``items [B, n]`` (-> ``[B, n]``)."""
        u = self.user_rows(users)
        if items.dim() == 1:
            return (u * self.item_rows(items)).sum(-1)
        it = self.item_rows(items.reshape(-1)).view(items.shape[0], items.shape[1], -1)
        return torch.einsum("bd,bnd->bn", u, it)


def _rows(table: Optional[Tensor], fn: Optional[RowFn], ids: Tensor, distinct: bool, what: str) -> Tensor:
    if table is not None:
        return unique_rows(table, ids) if distinct else gather_rows(table, ids)
    if fn is None:
        raise ValueError(f"channel has no {what} representations")
    return fn(ids)


@dataclass
class LossOutput:
    """What ``Recommender.loss`` returns.

    Attributes:
        loss: the scalar to minimise.
        terms: named scalar parts for logging (detached by the trainer).
        user_emb / item_emb: the final ``[U, d]`` / ``[I, d]`` representations this step used, for
            plug-ins that add losses on top of the backbone (CROSS, BR-MRS).
        user_rows / item_rows: instead of ``user_emb`` / ``item_emb``, functions ``ids [n] -> [n, d]``
            giving the final representations of those rows from this step's graph, for backbones whose
            loss only builds the rows it needs (CM3 users, VBPR items).
        channels: named per-channel representations of this step (e.g. ``image``, ``text``, ``fused``);
            the final scoring space is :meth:`channel` ``("final")``.
        scores: ``(pos [B], neg [B])``: the batch triples' scores in the final space, when the loss computed
            them (a BPR backbone), for plug-ins that need the same scores (BR-MRS's synergy term).
    """

    loss: Tensor
    terms: Dict[str, Tensor] = field(default_factory=dict)
    user_emb: Optional[Tensor] = None
    item_emb: Optional[Tensor] = None
    user_rows: Optional[RowFn] = None
    item_rows: Optional[RowFn] = None
    channels: Dict[str, Channel] = field(default_factory=dict)
    scores: Optional[Tuple[Tensor, Tensor]] = None

    def channel(self, name: str = FINAL) -> Channel:
        """The channel ``name``; ``"final"`` is the scoring space (``user_emb`` / ``item_emb``)."""
        if name == FINAL and FINAL not in self.channels:
            return Channel(self.user_emb, self.item_emb, self.user_rows, self.item_rows)
        if name not in self.channels:
            raise KeyError(f"no channel {name!r}; this model's loss exposes {[FINAL, *self.channels]}")
        return self.channels[name]


class Recommender(nn.Module):
    """Base class. Subclasses set ``defaults`` and implement :meth:`forward` and :meth:`loss`.

    Args:
        data: the run's graph (``HeteroData``: node counts, train interactions, item features
            ``x_<modality>`` and the relations :meth:`relations` asked for).
        config: resolved flat config; missing keys fall back to ``defaults``.
    """

    method_name: str = "base"
    #: default hyper-parameters; configs/methods/<method>.yaml mirrors and overrides them
    defaults: Dict[str, Any] = {}
    #: whether the method needs item features
    multimodal: bool = False
    #: whether the method trains on sampled subgraphs with ``graph_batching: sampled``
    supports_sampled_graph: bool = False

    def __init__(self, data, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.config = {**self.defaults, **(config or {})}
        self.n_users, self.n_items = node_counts(data)
        self.embedding_size = int(self.config.get("embedding_size", 64))
        self.check_settings(self.config)

    @classmethod
    def check_settings(cls, config: Dict[str, Any]) -> None:
        """Refuse settings the method cannot run with (a one-line :class:`ConfigError`); needs no data, so a
        run checks it before building its graph."""
        if config.get("graph_batching", "full") == "sampled" and not cls.supports_sampled_graph:
            from mmgraph.errors import ConfigError
            from mmgraph.models.registry import available_methods
            able = [n for n, c in available_methods().items() if getattr(c, "supports_sampled_graph", False)]
            raise ConfigError(f"{cls.method_name} trains on the full graph only: graph_batching=sampled is "
                              f"supported by {', '.join(able)}")

    @classmethod
    def check_modalities(cls, config: Dict[str, Any], modalities: Sequence[str]) -> None:
        """Refuse settings that do not fit the data's item modalities ``modalities`` (a one-line
        :class:`ConfigError`); a run checks it with the dataset's modality names before building its graph."""

    # ---- to implement -------------------------------------------------------------------
    @classmethod
    def relations(cls, config: Dict[str, Any], modalities: Sequence[str]) -> List[Relation]:
        """The graph relations this method reads, beyond the user-item interactions (default none)."""
        return []

    def forward(self) -> Tuple[Tensor, Tensor]:
        """Final user ``[U, d]`` and item ``[I, d]`` representations (training graph)."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> LossOutput:
        """One training step's objective on ``batch`` (``users, pos, neg [B]``, sampler extras).

        Returns a :class:`LossOutput`: the scalar ``loss`` (every term weighted and summed, regularisers
        included), its named ``terms`` for the logs, and this step's final representations (``user_emb`` /
        ``item_emb`` or row functions) and ``channels`` for the plug-ins that add their terms on top."""
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def on_epoch_start(self, epoch: int, generator: Optional[torch.Generator] = None) -> None:
        """Hook for per-epoch work (e.g. FREEDOM's edge pruning)."""

    def make_sampler(self, dataset, batch_size: int, seed: int, **options):
        """The training sampler (default: :class:`~mmgraph.train.sampler.BPRSampler`; ``options`` are
        its keyword arguments, e.g. ``n_candidates`` asked for by a plug-in)."""
        from mmgraph.train.sampler import BPRSampler
        return BPRSampler(dataset, batch_size, seed=seed, **options)

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        """Representations used for scoring: ``score(u, i) = user[u] . item[i]``.

        Computed once per evaluation. Override when scoring differs from :meth:`forward`.
        """
        was_training = self.training
        self.eval()
        try:
            return self.forward()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def channel_embeddings(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        """``{channel: (users [U, d_c], items [I, d_c])}`` in evaluation mode; ``"final"`` is the scoring
        space. Models with per-modality representations override :meth:`_channels`."""
        was_training = self.training
        self.eval()
        try:
            out = {FINAL: self.embeddings()}
            out.update(self._channels())
            return out
        finally:
            self.train(was_training)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        return {}

    def extra_repr(self) -> str:
        return f"users={self.n_users}, items={self.n_items}, d={self.embedding_size}"


def xavier_embedding(n: int, d: int, init: str = "uniform") -> nn.Embedding:
    emb = nn.Embedding(n, d)
    (nn.init.xavier_uniform_ if init == "uniform" else nn.init.xavier_normal_)(emb.weight)
    return emb


def item_features(data) -> Dict[str, Tensor]:
    """``{modality: [I, d_m]}`` item features of the run's graph."""
    return node_features(data, "item")


class GraphRecommender(Recommender):
    """A recommender with ID embeddings propagated over the training user-item graph.

    Holds the normalised adjacency (a :class:`SparseAdj` submodule, not saved: rebuilt from the graph)
    and a :class:`LightGCNEncoder` (``n_layers`` from the config, the class's ``readout``); :meth:`propagate`
    returns (users ``[U, d]``, items ``[I, d]``).
    """

    #: how the layers' outputs are combined (:class:`LightGCNEncoder`); a subclass fixes its own
    readout: str = "mean"

    def __init__(self, data, config=None):
        super().__init__(data, config)
        self.adj = interaction_adj(data)
        self.user_emb = xavier_embedding(self.n_users, self.embedding_size)
        self.item_emb = xavier_embedding(self.n_items, self.embedding_size)
        self.encoder = LightGCNEncoder(int(self.config.get("n_layers", 2)), self.readout)
        self._graph = data  # the run's HeteroData, for the sampled-subgraph loader
        self._subgraph_batches = None

    def propagate(self, adj: Optional[SparseAdj] = None) -> Tuple[Tensor, Tensor]:
        return self.encoder.bipartite(self.user_emb.weight, self.item_emb.weight, self.adj if adj is None else adj)

    # ---- mini-batch graph training (graph_batching: sampled) ------------------------------------
    @property
    def sampled_graph(self) -> bool:
        return self.config.get("graph_batching", "full") == "sampled"

    def make_sampler(self, dataset, batch_size: int, seed: int, **options):
        """With ``graph_batching: sampled``, PyG's ``LinkLoader`` over the training edges with
        :class:`~mmgraph.graph.sampling.BipartiteNeighborSampler` (``num_neighbors`` per layer)."""
        if not self.sampled_graph:
            return super().make_sampler(dataset, batch_size, seed, **options)
        from mmgraph.train.link_batches import SubgraphBatches, layer_fanouts

        fanouts = layer_fanouts(self.config.get("num_neighbors", [10]), self.encoder.n_layers)
        self._subgraph_batches = SubgraphBatches(self._graph, dataset, batch_size, seed, fanouts)
        return self._subgraph_batches

    def propagate_subgraph(self, sub, adj: Optional[SparseAdj] = None) -> Tuple[Tensor, Tensor]:
        """The encoder on a sampled subgraph (``batch.extras["subgraph"]``): its users ``[U_s, d]`` and items
        ``[I_s, d]`` (rows in ``sub[...].n_id`` order); exact for the batch's nodes when every node within
        ``L - 1`` hops kept all its neighbours (see :func:`~mmgraph.train.link_batches.subgraph_adjacency`).
        ``adj``: the subgraph's CSR pair when the sampler built it (``batch.extras["adjacency"]``), else it
        is built here."""
        from mmgraph.train.link_batches import subgraph_csr

        nu = int(sub["user"].n_id.numel())
        # gather_rows: an index_add_ backward, where the embedding lookup's took 9 ms more a step (1x preset)
        x = torch.cat([gather_rows(self.user_emb.weight, sub["user"].n_id),
                       gather_rows(self.item_emb.weight, sub["item"].n_id)], 0)
        # a CSR pair built for this step: its products (and their backward) beat the edge list's
        # gather / scatter ~2.5x (LightGCN on the 0.1x Electronics preset: 43 -> 18 ms a step's propagation)
        if adj is None or adj.csr.dtype != x.dtype:
            adj = subgraph_csr(sub, x.dtype)
        h = self.encoder(x, adj)
        return h[:nu], h[nu:]


def subgraph_rows(n_id: Tensor, table: Tensor) -> RowFn:
    """``global ids -> rows of table`` for a subgraph's node table (``n_id`` sorted, ids inside it)."""
    return lambda ids: table[torch.searchsorted(n_id, ids.to(n_id.device))]
