"""BR-MRS: cross-modal hard negative sampling (CHNS) + synergy-aware BPR (paper 004, specs/brmrs.md).

Representation (section 2.1, spec): per modality ``m`` a channel with item input ``Linear_m(x^m)`` (frozen
features, L2-normalised per item unless ``brmrs_feature_norm: none``) and a free user embedding; LightGCN
(``n_layers``, mean over layers) on the user-item graph, all channels in one sparse product; plus one hop on
the homogeneous item graph ``G_ii`` (items) and user graph ``G_uu`` (users) of the LightGCN OUTPUT, added
residually (``q^m = q^m + G_ii q^m``, users likewise; ``brmrs_hop: input`` hops the layer-0 inputs instead,
FREEDOM-style: the spec leaves the hop's input open, and hopping the inputs cost 0.02 test Recall@20 on TikTok and
on the synthetic data (5 seeds), see brmrs.yaml).
Fused ``q^f = phi(q^1..q^M)``, ``p^f`` likewise (``fusion``: mean | sum | concat = one Linear(M d -> d)
shared by users and items). Scores ``s_m(u, i) = <p_u^m, q_i^m>``; ranking uses ``s_f``.

Objective (eq. 2-5; every term a mean over the batch rows, the paper writes sums):

* ``L_h`` (``brmrs_chns``, weight ``brmrs_lambda_h``): ``sum_m BPR(s_m(u, i+), s_m(u, n_m))`` where the
  negative ``n_m`` of modality ``m`` comes from the row's candidate pool (``batch.extras["candidates"]``,
  drawn by the sampler) by ``brmrs_negatives``: ``cross`` (CHNS, eq. 2: the argmax over the pool of the
  OTHER modalities' summed scores -- for two modalities exactly the paper's cross assignment
  ``i_t^- -> v``, ``i_v^- -> t``), ``self`` (each modality's own hardest), ``fused`` (the hardest under
  ``s_f``), a modality name (the hardest under that modality, for every branch) or ``uniform`` (the
  batch's uniform negative, no pool). The selection runs without gradient; the losses backpropagate;
* ``L_syn`` (``brmrs_syn``, weight ``brmrs_lambda_s``, eq. 3-4): ``-log sigmoid(D_f - max_m D_m - theta)``
  with ``D_c = s_c(u, i+) - s_c(u, i-)`` for the uniform negative ``i-`` (gradients reach every margin,
  the max included, as the equation is written);
* ``L_bpr`` (``brmrs_fused_bpr``, weight 1): plain BPR on ``s_f`` (the paper's Algorithm 1 omits it, the
  spec keeps it on by default);
* ``reg_weight * l2`` of the batch's layer-0 rows (user embeddings, projected item inputs).

The objective is a separate object (:class:`BRMRSObjective`) over named :class:`Channel` s, so the same
code adds CHNS + Syn-BPR to any backbone that exposes per-modality channels (``plugins: [brmrs]``,
:mod:`mmgraph.plugins.brmrs`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.relations import Relation, interaction_adj, relation_adj
from mmgraph.losses import bpr_loss, l2_reg
from mmgraph.models.base import Batch, Channel, LossOutput, Recommender, item_features
from mmgraph.models.registry import register
from mmgraph.nn.affine import affine_feature_scores, affine_row_scores, affine_table, in_feature_space, user_side_map
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.features import ModalityEncoder
from mmgraph.nn.sparse import SparseAdj, gather_rows

ITEM_GRAPH = "brmrs_item"
USER_GRAPH = "brmrs_user"
FUSED = "fused"
FIXED_STRATEGIES = ("cross", "self", "fused", "uniform")
FUSIONS = ("mean", "sum", "concat")

#: the objective's keys, shared by the method (configs/methods/brmrs.yaml) and the plug-in
OBJECTIVE_DEFAULTS: Dict[str, Any] = {
    "brmrs_lambda_h": 1.0,        # weight of L_chns
    "brmrs_lambda_s": 1.0,        # weight of L_syn
    "brmrs_theta": 0.1,           # synergy margin theta
    "brmrs_n_candidates": 16,     # candidate pool per positive
    "brmrs_chns": True,           # the unimodal hard-negative term (Table 3)
    "brmrs_syn": True,            # the synergy-aware BPR (Table 3)
    "brmrs_negatives": "cross",   # cross | self | fused | uniform | <modality>
}


# ---------------------------------------------------------------------------------------------- pieces
def check_negatives(strategy: str, modalities: Sequence[str]) -> None:
    """Refuse a ``brmrs_negatives`` value that cannot run on the modality channels ``modalities``."""
    if strategy not in FIXED_STRATEGIES and strategy not in modalities:
        raise ConfigError(f"brmrs_negatives: expected one of {', '.join(FIXED_STRATEGIES)} or a modality "
                          f"({', '.join(modalities)}), got {strategy!r}")
    if strategy == "cross" and len(modalities) < 2:
        raise ConfigError(f"brmrs_negatives: cross (CHNS) needs at least two modality channels, got "
                          f"{list(modalities)}; use self, fused or uniform")


def hardest(scores: Tensor) -> Tensor:
    """Index of the highest score per row: ``scores [B, n]`` -> ``[B]`` (ties: lowest index)."""
    return scores.argmax(dim=1)


def selection_keys(scores: Tensor, strategy: str, modalities: Sequence[str],
                   fused: Optional[Tensor] = None) -> Tensor:
    """The score each modality's negative is the argmax of: ``[M, B, n]``.

    Args:
        scores: ``[M, B, n]`` per-modality scores of the candidate pool.
        strategy: ``cross``: modality ``m`` gets ``sum_{m' != m} scores[m']`` (CHNS; for two modalities
            each branch gets the other's hardest); ``self``: ``scores[m]``; ``fused``: ``fused [B, n]`` for
            every branch; a modality name: that modality's scores for every branch.
    """
    m = scores.shape[0]
    if strategy == "cross":
        if m < 2:
            raise ConfigError("brmrs_negatives: cross needs at least two modality channels")
        return torch.stack([torch.cat([scores[:k], scores[k + 1:]]).sum(0) for k in range(m)])
    if strategy == "self":
        return scores
    if strategy == "fused":
        if fused is None:
            raise ValueError("the fused strategy needs the fused candidate scores")
        return fused.unsqueeze(0).expand(m, -1, -1)
    if strategy in modalities:
        return scores[list(modalities).index(strategy)].unsqueeze(0).expand(m, -1, -1)
    raise ConfigError(f"brmrs_negatives: expected one of {', '.join(FIXED_STRATEGIES)} or a modality "
                      f"({', '.join(modalities)}), got {strategy!r}")


def hard_positions(scores: Tensor, strategy: str, modalities: Sequence[str],
                   fused: Optional[Tensor] = None) -> Tensor:
    """Pool position ``[M, B]`` of each modality's hard negative (argmax of :func:`selection_keys`; no gradient)."""
    with torch.no_grad():
        keys = selection_keys(scores.detach(), strategy, modalities, None if fused is None else fused.detach())
        return hardest(keys.reshape(-1, keys.shape[-1])).view(keys.shape[0], -1)


def chns_negatives(scores: Tensor, candidates: Tensor, strategy: str, modalities: Sequence[str],
                   fused: Optional[Tensor] = None) -> Tensor:
    """Item ids ``[M, B]`` of each modality's hard negative from ``candidates [B, n]`` (no gradient)."""
    idx = hard_positions(scores, strategy, modalities, fused)
    return candidates.gather(1, idx.t()).t()


def sampled_pool_scores(u: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    """``[B, n]`` scores ``<u_b, rows[index[b, j]]>`` without gradient, as one sampled product
    (``torch.sparse.sampled_addmm`` on the pattern of ``index``, repeats and any order allowed): each score a dot
    product read straight from ``rows [I, d]``. On the CPU, 4-7 % shorter BR-MRS plug-in steps on TikTok than
    :func:`gathered_pool_scores` (level on Baby)."""
    b, k = index.shape
    crow = torch.arange(0, b * k + 1, k, device=rows.device)
    pattern = torch.sparse_csr_tensor(crow, index.reshape(-1), rows.new_zeros(b * k), (b, rows.shape[0]),
                                      check_invariants=False)
    with torch.no_grad():
        return torch.sparse.sampled_addmm(pattern, u.detach(), rows.detach().t(), beta=0.0).values().view(b, k)


def gathered_pool_scores(u: Tensor, rows: Tensor, index: Tensor, buf: Optional[Tensor] = None) -> Tensor:
    """:func:`sampled_pool_scores` by gathering the ``[B n, d]`` rows first, into ``buf`` (at least ``B n d``
    elements) when given: a buffer kept across steps, since a fresh one (8 MB on TikTok) is first-touched page by
    page every step, which made this gather ~10x slower than the copy itself."""
    n, d = index.numel(), rows.shape[1]
    with torch.no_grad():
        out = None if buf is None else buf[: n * d].view(n, d)
        g = torch.index_select(rows.detach(), 0, index.reshape(-1), out=out)
        return torch.einsum("bd,bnd->bn", u.detach().contiguous(), g.view(*index.shape, d))


def synergy_loss(delta_fused: Tensor, delta_modal: Tensor, theta: float) -> Tensor:
    """Eq. 4: ``mean -log sigmoid(D_f - max_m D_m - theta)``; ``delta_fused [B]``, ``delta_modal [M, B]``."""
    return bpr_loss(delta_fused - float(theta), delta_modal.max(dim=0).values)


def user_rows(channel: Channel, users: Tensor) -> Tensor:
    """The channel's user rows ``[B, d]`` (a table is gathered with :func:`~mmgraph.nn.sparse.gather_rows`)."""
    return gather_rows(channel.users, users) if channel.users is not None else channel.user_rows(users)


def item_rows(channel: Channel, groups: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """``(rows [R, d], index tensors)`` with ``rows[index_g]`` = the channel's item rows of ``groups[g]`` (any
    shapes). A table channel returns its table and the ids themselves; a function channel computes each
    distinct id of all groups once (one call, so shared ids cost nothing and the backward runs once)."""
    if channel.items is not None:
        return channel.items, list(groups)
    flat = torch.cat([g.reshape(-1) for g in groups])
    uniq, inv = torch.unique(flat, return_inverse=True)
    rows = channel.item_rows(uniq, distinct=True)
    sizes = [g.numel() for g in groups]
    return rows, [i.view(g.shape) for i, g in zip(torch.split(inv, sizes), groups)]


class BRMRSObjective:
    """CHNS + Syn-BPR over named channels: ``terms(batch, modal, fused)`` -> ``{name: weighted scalar}``.

    Args:
        config: the ``brmrs_*`` keys (:data:`OBJECTIVE_DEFAULTS`).
        modalities: the per-modality channel names, in order.
    """

    def __init__(self, config: Mapping[str, Any], modalities: Sequence[str], n_items: Optional[int] = None):
        self.n_items = n_items
        cfg = {**OBJECTIVE_DEFAULTS, **{k: config[k] for k in OBJECTIVE_DEFAULTS if k in config}}
        self.modalities = list(modalities)
        self.lambda_h, self.lambda_s = float(cfg["brmrs_lambda_h"]), float(cfg["brmrs_lambda_s"])
        self.theta = float(cfg["brmrs_theta"])
        self.n_candidates = int(cfg["brmrs_n_candidates"])
        self.use_chns = bool(cfg["brmrs_chns"]) and self.lambda_h > 0
        self.use_syn = bool(cfg["brmrs_syn"]) and self.lambda_s > 0
        self.strategy = str(cfg["brmrs_negatives"])
        if not self.modalities:
            raise ConfigError("BR-MRS needs at least one per-modality channel")
        check_negatives(self.strategy, self.modalities)
        if self.needs_pool and self.n_candidates < 1:
            raise ConfigError(f"brmrs_n_candidates must be >= 1 for brmrs_negatives: {self.strategy}")
        self._scratch: Optional[Tensor] = None     # the pool gather's buffer (see _pool_scores)

    def _pool_scores(self, u: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        """``[B, n]`` scores ``<u_b, rows[index[b, j]]>`` (no gradient): :func:`sampled_pool_scores` on the CPU
        (float32 / float64), :func:`gathered_pool_scores` elsewhere (its buffer kept across steps)."""
        if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
            return sampled_pool_scores(u, rows, index)
        n = index.numel() * rows.shape[1]
        buf = self._scratch
        if buf is None or buf.numel() < n or buf.dtype != rows.dtype or buf.device != rows.device:
            buf = self._scratch = rows.new_empty(n)
        return gathered_pool_scores(u, rows, index, buf)

    @staticmethod
    def _row_scores(channel: Tuple[Tensor, Tensor, List[Tensor], Optional[Tensor]],
                    affine: Optional[Tuple[Tensor, Tensor, Optional[Tensor]]], parts: List[Tensor]) -> Tensor:
        """``[len(parts), B]`` scores of the batch's users with the items ``parts`` (each ``[B]`` indices into the
        channel's rows), with gradient."""
        u, rows, _, uw = channel
        if uw is not None:
            return affine_feature_scores(u, *affine, torch.stack(parts), uw=uw)
        if affine is not None:
            return affine_row_scores(u, *affine, torch.stack(parts), table=rows)
        return (u.unsqueeze(0) * gather_rows(rows, torch.cat(parts)).view(len(parts), u.shape[0], -1)).sum(-1)

    @property
    def needs_pool(self) -> bool:
        """Whether the sampler must draw candidate pools (the hard-negative term with a pool strategy)."""
        return self.use_chns and self.strategy != "uniform"

    def sampler_options(self) -> Dict[str, Any]:
        return {"n_candidates": self.n_candidates} if self.needs_pool else {}

    def terms(self, batch: Batch, modal: Mapping[str, Channel], fused: Channel,
              fused_scores: Optional[Tuple[Tensor, Tensor]] = None) -> Dict[str, Tensor]:
        """The weighted terms ``chns`` and ``syn`` (those switched on) for one batch.

        ``fused_scores``: ``(s_f(u, i+), s_f(u, i-))`` of the batch rows when the caller has them already
        (a backbone's own BPR scores), so the synergy term reuses them instead of recomputing.

        Every distinct representation source is used once per call: channels that share a user table or
        function (VBPR's feature half, FREEDOM's final users, BM3's predictor, CM3's eq. 7 rows) share one
        computation; function channels give their full item table (``Channel.item_table``) when the pools
        draw about every item, else their rows of the distinct ids of ``pos, neg, candidates`` (found once
        for all channels). The hard negatives are selected first (no gradient), then each channel gathers
        the rows of ``i+``, ``i-`` and its hard negative in one ``index_select``. A channel that gives its
        item map as ``Channel.item_affine`` (VBPR, FREEDOM, BM3) never has its table differentiated: with
        narrow features (``d_x <= 2 d``, :func:`~mmgraph.nn.affine.in_feature_space`) the users are carried
        into the feature space (``u W``, ``[B, d_x]``) and pools and rows are scored against the features
        themselves (:func:`~mmgraph.nn.affine.affine_feature_scores`: no ``[I, d]`` table at all, half the
        multiply-adds on TikTok's 128-d features); with wide ones the full table is computed without gradient
        for the pool scoring and the row scores' gradient is taken on the batch's users
        (:func:`~mmgraph.nn.affine.affine_row_scores`). Both give the same values and gradients.
        """
        if not (self.use_chns or self.use_syn):
            return {}
        users, pos, neg = batch.users, batch.pos, batch.neg
        cand = None
        if self.needs_pool:
            cand = batch.extras.get("candidates")
            if cand is None:
                raise ConfigError("BR-MRS: the batch has no candidate pools (batch.extras['candidates']); the "
                                  "sampler must be built with n_candidates")
        use_neg = self.use_syn or cand is None        # the uniform negative: Syn-BPR, or the uniform strategy
        groups = [pos] + ([neg] if use_neg else []) + ([cand] if cand is not None else [])
        # the pools draw (almost) every item: a channel's full item table beats its rows of the distinct ids
        dense = self.n_items is not None and sum(g.numel() for g in groups) >= 2 * self.n_items
        rows_of = _RowCache(users, groups, dense)
        pool = self.use_chns and cand is not None
        channels: List[Optional[Tuple[Tensor, Tensor, List[Tensor], Optional[Tensor]]]] = []
        for name in self.modalities:
            c = modal[name]
            if c.scores is not None and not pool:    # the backbone scored the pairs this channel needs
                channels.append(None)
                continue
            rows, idx = rows_of.items(c)
            u = rows_of.users(c)
            # a feature-space channel's rows are its features x: the pool is scored with u W (its bias adds a
            # constant per user row, which moves no argmax over the row's pool)
            uw = user_side_map(u, rows_of.affine(c)[1]) if rows_of.in_features(c) else None
            channels.append((u, rows, idx, uw))                             # u [B, d], rows, index, u W or None
        affine = [rows_of.affine(modal[name]) for name in self.modalities]            # (x, W, b) or None
        at = None
        if pool:
            with torch.no_grad():   # the selection: scores of the pool, no gradient
                scores = torch.stack([self._pool_scores(u if uw is None else uw, rows, idx[-1])
                                      for u, rows, idx, uw in channels])                       # [M, B, n]
                f_scores = None
                if self.strategy == "fused":
                    f_rows, (f_ix,) = item_rows(fused, [cand])
                    f_scores = self._pool_scores(rows_of.users(fused), f_rows, f_ix)
                at = hard_positions(scores, self.strategy, self.modalities, f_scores)       # [M, B]
        # per modality ONE gather (and one backward scatter) of the rows of i+, i- and the hard negative; the
        # scores of i+ and i- come from the backbone where its loss computed them (Channel.scores)
        s_pos, s_neg, s_hard = [], [], []
        for k, ch in enumerate(channels):
            shared = modal[self.modalities[k]].scores
            parts = [] if shared is not None else [ch[2][0]] + ([ch[2][1]] if use_neg else [])
            if at is not None:
                parts.append(ch[2][-1].gather(1, at[k].unsqueeze(1)).squeeze(1))
            s = self._row_scores(ch, affine[k], parts) if parts else None
            s_pos.append(shared[0] if shared is not None else s[0])
            if use_neg:
                s_neg.append(shared[1] if shared is not None else s[1])
            if at is not None:
                s_hard.append(s[-1])
        out: Dict[str, Tensor] = {}
        if self.use_chns:
            negatives = s_neg if at is None else s_hard
            out["chns"] = self.lambda_h * sum(bpr_loss(p, n) for p, n in zip(s_pos, negatives))
        if self.use_syn:
            if fused_scores is None:
                f_rows, (f_pos, f_neg) = item_rows(fused, [pos, neg])
                s = (rows_of.users(fused).unsqueeze(0) *
                     gather_rows(f_rows, torch.cat([f_pos, f_neg])).view(2, len(users), -1)).sum(-1)
                fused_scores = (s[0], s[1])
            delta_f = fused_scores[0] - fused_scores[1]
            delta_modal = torch.stack(s_pos) - torch.stack(s_neg)
            out["syn"] = self.lambda_s * synergy_loss(delta_f, delta_modal, self.theta)
        return out


class _RowCache:
    """The user rows ``[B, d]`` and item rows of one :meth:`BRMRSObjective.terms` call, each distinct source
    (a table tensor or a row function, by identity) computed once; the function channels' item rows are
    computed on the distinct ids of ``groups``, found once for all of them."""

    def __init__(self, users: Tensor, groups: Sequence[Tensor], dense: bool = False):
        self.ids, self.groups, self.dense = users, list(groups), dense
        self._users: Dict[int, Tensor] = {}
        self._items: Dict[int, Tuple[Tensor, List[Tensor]]] = {}
        self._affine: Dict[int, Tuple[Tensor, Tensor, Optional[Tensor]]] = {}
        self._distinct: Optional[Tuple[Tensor, List[Tensor]]] = None
        self._features: set = set()     # the affine maps scored in their feature space (keys of _affine)
        self._skip: set = set()         # the affine maps whose rows come from the channel's item_fn instead
        self._keep: List[Any] = []      # the keys' objects stay alive for the call (ids are not reused)

    def users(self, channel: Channel) -> Tensor:
        src = channel.users if channel.users is not None else channel.user_fn
        key = id(src)
        if key not in self._users:
            self._keep.append(src)
            self._users[key] = user_rows(channel, self.ids)
        return self._users[key]

    def affine(self, channel: Channel) -> Optional[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        """The channel's ``(x, weight, bias)`` when :meth:`items` gave its affine table or its features."""
        return self._affine.get(id(channel.item_affine)) if channel.item_affine is not None else None

    def in_features(self, channel: Channel) -> bool:
        """Whether :meth:`items` gave the channel's features ``x`` instead of its table (see
        :func:`~mmgraph.nn.affine.in_feature_space`)."""
        return channel.item_affine is not None and id(channel.item_affine) in self._features

    def items(self, channel: Channel) -> Tuple[Tensor, List[Tensor]]:
        if channel.items is not None:
            return channel.items, self.groups
        if channel.item_affine is not None:
            key = id(channel.item_affine)
            if key not in self._items and key not in self._skip:
                self._keep.append(channel.item_affine)
                x, weight, bias = channel.item_affine()
                if in_feature_space(x, weight):      # no table at all: the features are the rows
                    self._features.add(key)
                    self._items[key] = x, self.groups
                elif self.dense:
                    self._items[key] = affine_table(x, weight, bias), self.groups
                else:                                # few items: the function's rows of the distinct ids
                    self._skip.add(key)
                if key in self._items:
                    self._affine[key] = x, weight, bias
            if key in self._items:
                return self._items[key]
        if self.dense and channel.item_table is not None:
            key = id(channel.item_table)
            if key not in self._items:
                self._keep.append(channel.item_table)
                self._items[key] = channel.item_table(), self.groups
            return self._items[key]
        key = id(channel.item_fn)
        if key not in self._items:
            self._keep.append(channel.item_fn)
            if self._distinct is None:
                flat = torch.cat([g.reshape(-1) for g in self.groups])
                uniq, inv = torch.unique(flat, return_inverse=True)
                sizes = [g.numel() for g in self.groups]
                self._distinct = uniq, [i.view(g.shape) for i, g in zip(torch.split(inv, sizes), self.groups)]
            uniq, index = self._distinct
            self._items[key] = channel.item_rows(uniq, distinct=True), index
        return self._items[key]


# ---------------------------------------------------------------------------------------------- model
@register("brmrs")
class BRMRS(Recommender):
    """Per-modality LightGCN channels with homogeneous item / user hops, fused scoring, CHNS + Syn-BPR
    (see the module docstring). Channels: one per modality and ``fused`` (= the scoring space)."""

    multimodal = True
    defaults = {"embedding_size": 64, "n_layers": 2, "brmrs_k": 10, "brmrs_alpha": 0.5,
                "brmrs_graph_norm": "sym", "brmrs_feature_norm": "l2", "brmrs_hop": "output", "brmrs_item_graph": True,
                "brmrs_user_graph": True,
                "fusion": "mean", "reg_weight": 1e-4, "brmrs_fused_bpr": True, **OBJECTIVE_DEFAULTS}

    @classmethod
    def check_modalities(cls, config, modalities: Sequence[str]) -> None:
        cfg = {**cls.defaults, **config}
        check_negatives(str(cfg["brmrs_negatives"]), modalities)
        if (len(modalities) < 2 and cfg["brmrs_syn"] and float(cfg["brmrs_lambda_s"]) > 0
                and cfg["fusion"] in ("mean", "sum")):
            # the fused score is then the modality's own (mean) or the same ranking (sum): D_f - max D_m is constant
            raise ConfigError(f"brmrs_syn: with one modality ({', '.join(modalities)}) and fusion: {cfg['fusion']} "
                              "the fused margin equals the modality's, so Syn-BPR is a constant with no gradient; "
                              "set brmrs_syn=false, fusion=concat, or give the data two modalities")

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        params = {"k": int(cfg["brmrs_k"]), "alpha": float(cfg["brmrs_alpha"]), "norm": str(cfg["brmrs_graph_norm"])}
        out = []
        if cfg["brmrs_item_graph"]:
            out.append(Relation(ITEM_GRAPH, "brmrs_item", dict(params)))
        if cfg["brmrs_user_graph"]:
            out.append(Relation(USER_GRAPH, "brmrs_user", dict(params)))
        return out

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        feats = item_features(data)
        if len(feats) < 1:
            raise DataError("brmrs needs item modality features, but the graph has none")
        self.modalities: List[str] = list(feats)
        if FUSED in self.modalities:
            raise ConfigError(f"a feature modality may not be called {FUSED!r}")
        if cfg["fusion"] not in FUSIONS:
            raise ConfigError(f"fusion: expected one of {', '.join(FUSIONS)}, got {cfg['fusion']!r}")
        m, d = len(self.modalities), self.embedding_size
        if cfg["brmrs_feature_norm"] == "l2":   # raw features can be large and off-centre (TikTok image: norm ~33)
            feats = {k: F.normalize(v.float(), dim=1) for k, v in feats.items()}
        self.items_in = ModalityEncoder(feats, d, trainable=False, init="xavier_normal")
        self.user_emb = nn.Parameter(torch.empty(self.n_users, m, d))
        for k in range(m):   # Xavier per channel table [U, d]
            nn.init.xavier_uniform_(self.user_emb.data[:, k])
        self.adj = interaction_adj(data)
        self.encoder = LightGCNEncoder(int(cfg["n_layers"]), "mean")
        self.item_graph: Optional[SparseAdj] = relation_adj(data, ITEM_GRAPH) if cfg["brmrs_item_graph"] else None
        self.user_graph: Optional[SparseAdj] = (relation_adj(data, USER_GRAPH, node="user")
                                                if cfg["brmrs_user_graph"] else None)
        self.fuse_linear = nn.Linear(m * d, d) if cfg["fusion"] == "concat" else None
        self.objective = BRMRSObjective(cfg, self.modalities, self.n_items)
        self.fused_bpr = bool(cfg["brmrs_fused_bpr"])
        self.reg_weight = float(cfg["reg_weight"])
        o = self.objective
        if not (o.use_chns or o.use_syn or self.fused_bpr):   # the L2 penalty alone trains nothing useful
            raise ConfigError("brmrs: every ranking loss is switched off (brmrs_chns, brmrs_syn, brmrs_fused_bpr); "
                              "switch one on")

    # ------------------------------------------------------------------ representations
    def inputs(self) -> Tuple[Tensor, Tensor]:
        """Layer-0 channel inputs: users ``[U, M, d]`` (free embeddings), items ``[I, M, d]`` (Linear_m(x^m))."""
        items = torch.stack([self.items_in.project(m) for m in self.modalities], 1)
        return self.user_emb, items

    def encode(self) -> Tuple[Tensor, Tensor]:
        """Per-modality representations: users ``p [U, M, d]``, items ``q [I, M, d]``."""
        x_u, x_i = self.inputs()
        p, q = self.encoder.bipartite(x_u, x_i, self.adj)
        src_u, src_i = (p, q) if self.config["brmrs_hop"] == "output" else (x_u, x_i)
        if self.item_graph is not None:
            q = q + self.item_graph.matmul(src_i.reshape(self.n_items, -1)).view_as(q)
        if self.user_graph is not None:
            p = p + self.user_graph.matmul(src_u.reshape(self.n_users, -1)).view_as(p)
        return p, q

    def fuse(self, x: Tensor) -> Tensor:
        """``phi``: ``[N, M, d]`` -> ``[N, d]``."""
        fusion = self.config["fusion"]
        if fusion == "mean":
            return x.mean(1)
        if fusion == "sum":
            return x.sum(1)
        return self.fuse_linear(x.reshape(x.shape[0], -1))

    def forward(self) -> Tuple[Tensor, Tensor]:
        p, q = self.encode()
        return self.fuse(p), self.fuse(q)

    def make_sampler(self, dataset, batch_size: int, seed: int, **options):
        own = self.objective.sampler_options()
        if "n_candidates" in own:
            options["n_candidates"] = max(int(options.get("n_candidates", 0)), own["n_candidates"])
        return super().make_sampler(dataset, batch_size, seed, **options)

    # ------------------------------------------------------------------ training
    def loss(self, batch: Batch) -> LossOutput:
        p, q = self.encode()
        pf, qf = self.fuse(p), self.fuse(q)
        modal = {m: Channel(users=p[:, k], items=q[:, k]) for k, m in enumerate(self.modalities)}
        fused = Channel(users=pf, items=qf)
        terms = self.objective.terms(batch, modal, fused)
        if self.fused_bpr:
            eu, qp, qn = batch.rows(pf, qf)
            terms["bpr"] = bpr_loss((eu * qp).sum(-1), (eu * qn).sum(-1))
        if self.reg_weight > 0:
            items = torch.cat([batch.pos, batch.neg])
            x_i = torch.stack([self.items_in.project(m, items) for m in self.modalities], 1)
            terms["reg"] = self.reg_weight * l2_reg(gather_rows(self.user_emb, batch.users), x_i,
                                                    batch_size=len(batch))
        total = sum(terms.values())
        return LossOutput(total, terms, pf, qf, channels={**modal, FUSED: fused})

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        p, q = self.encode()
        out = {m: (p[:, k], q[:, k]) for k, m in enumerate(self.modalities)}
        out[FUSED] = (self.fuse(p), self.fuse(q))
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, modalities={self.modalities}, fusion={self.config['fusion']}, "
                f"negatives={self.objective.strategy}")
