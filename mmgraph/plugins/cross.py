"""CROSS (and its predecessor FETTLE): feedback-oriented multimodal alignment as a backbone plug-in.

Follows ``specs/cross.md`` (the paper's eq. 1-12). Per training step, over the batch's DISTINCT positive
items ``i`` (and distinct users for the user-item codebook), with all embeddings L2-normalised:

* modalities ``M = [id] + content modalities``: ``i^id`` = the backbone's final item representation,
  ``i^m`` = ``Linear_m(frozen raw feature)`` into the backbone's width (CROSS owns these projections);
* **ILDA** (eq. 1-4): strengths ``s_i^m`` = mean cosine of ``i^m`` with the item's batch users (no grad);
  compensation ``g_i^m = Var_i(s^m) (exp(1 - s_i^m) - 1)``; ``i in D_{a->b}`` iff ``s_i^b + g_i^b > s_i^a``
  (``dynamic``; ``oneway`` = FETTLE: ``s_i^b > s_i^a``; ``bidirectional``: every item, every direction);
  residual maps ``f_{a->b}(x) = norm(x + W_{a->b} x)``; InfoNCE of ``(f_{a->b}(i^a), sg(i^b))`` against
  ``sg(j^b)`` of every batch item, learnable temperature ``lambda_f``;
* **DT** (eq. 6): ``-[mean over the item's batch users of cos(sg(u), f_{a->b}(i^a)) - s_i^a]``;
* **CNA** (eq. 7-9): target = mean of the normalised modality-``m`` embeddings of the item's top-K
  co-occurrence neighbours; eq. 9 loss ``-sim(i^m, target)/lambda_n + log sum_j exp(sim(i^m, j^m)/lambda_n)``
  over the batch's items (``cna_negatives: targets`` = the released code's in-batch InfoNCE instead);
* **CLA** (eq. 10-12): two unit-norm prototype codebooks, SwAV Sinkhorn targets, swapped prediction with
  learnable temperature ``lambda_c``.

``L = alpha (L_ILDA + L_DT) + beta L_CLA + gamma L_CNA`` (``gamma`` defaults to ``alpha``).

Normalisation of ILDA / DT: ``sum over directions d and items i in D_d`` divided by ``|M|(|M|-1) * n_items``
(n_items = the batch's distinct items), i.e. the mean over directions of a mean over the batch's items in
which items outside ``D_d`` contribute 0. That is eq. 6's normalisation of DT; for ILDA it is one reading of
eq. 4's ``avg_{m->n}`` (over all ``|M|(|M|-1)`` directions, inactive ones 0). Eq. 4 can also be read as the
mean over each item's ACTIVE directions: the two agree for ``bidirectional``, and here an item weighs by its
number of active directions, so at the same ``alpha`` the one-way strategy (FETTLE: one direction of each
pair) gives ILDA about half the weight ``bidirectional`` does, and ``dynamic`` between the two.

The temperatures ``lambda_f`` and ``lambda_c`` are learnable (the spec) unless ``cross_learn_temperatures:
false`` (the paper searches them as fixed hyper-parameters): learnable, they fall fast (TikTok-sized runs:
``lambda_f`` 0.1 -> ~0.007 in ~300 steps, ``lambda_c`` 0.3 -> ~0.08), so their settings are starting values.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.errors import ConfigError
from mmgraph.graph.relations import Relation, neighbour_lists, node_counts, relation_graph
from mmgraph.losses import soft_cross_entropy, weighted_logsumexp
from mmgraph.models.base import Batch, LossOutput, item_features
from mmgraph.nn.features import FeatureTables
from mmgraph.nn.sparse import csr_mm, gather_rows, unique_rows
from mmgraph.plugins import register_plugin
from mmgraph.plugins.base import Plugin

log = logging.getLogger(__name__)

STRATEGIES = ("dynamic", "oneway", "bidirectional")
ID = "id"
COOCCUR = "cooccur"  # the run graph's item co-occurrence relation (CNA neighbours)
# loss weights when cross_alpha / cross_beta are null. Multimodal backbones: the paper's best FREEDOM
# setting (grid {1e-4, 1e-3, 1e-2}). ID-only backbones: the paper searches {1, 10, 100}, but with these
# mean-reduced terms alpha = beta = 1 already stalls LightGCN's BPR on TikTok (valid R@20 0.070 vs 0.103)
# and 1e-1 peaks at 0.084; 1e-2 was the best value measured there
AUTO_WEIGHTS = {False: {"alpha": 1e-2, "beta": 1e-2}, True: {"alpha": 1e-3, "beta": 1e-4}}


# ---------------------------------------------------------------------------------------------- pieces
def batch_items(pos: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(distinct items [n], inverse [B] into them, counts [n])`` of a batch's positive items."""
    items, inv = torch.unique(pos, return_inverse=True)
    counts = torch.bincount(inv, minlength=items.numel())
    return items, inv, counts


def mean_batch_users(user_rows: Tensor, inv: Tensor, counts: Tensor) -> Tensor:
    """``[n, d]``: row ``i`` = the mean of ``user_rows[b]`` over the batch rows ``b`` with ``inv[b] == i``.

    Args:
        user_rows: ``[B, d]`` users of the batch rows; inv: ``[B]`` row -> distinct item; counts: ``[n]``
            rows per distinct item.
    """
    out = user_rows.new_zeros(counts.shape[0], user_rows.shape[1]).index_add_(0, inv, user_rows)
    return out.div_(counts.to(out.dtype).clamp(min=1).unsqueeze(1))


def item_strengths(user_rows: Tensor, item_embs: Tensor, inv: Tensor, counts: Tensor) -> Tensor:
    """Eq. 1: ``s[m, i]`` = mean over the batch rows ``b`` with ``inv[b] == i`` of ``user_rows[b] . item_embs[m, i]``.

    Args:
        user_rows: ``[B, d]`` (normalised) users of the batch rows.
        item_embs: ``[M, n, d]`` (normalised) modality embeddings of the distinct items.
        inv: ``[B]`` row -> distinct item; counts: ``[n]`` rows per distinct item.
    Returns ``[M, n]``.
    """
    return strengths_from_mean_users(item_embs, mean_batch_users(user_rows, inv, counts))


def strengths_from_mean_users(item_embs: Tensor, mean_users: Tensor) -> Tensor:
    """Eq. 1 through the mean batch user of each item (a mean of dot products is the dot product with the
    mean): ``item_embs [M, n, d]``, ``mean_users [n, d]`` (:func:`mean_batch_users`) -> ``[M, n]``."""
    return (item_embs * mean_users.unsqueeze(0)).sum(-1)


def compensation(strengths: Tensor) -> Tensor:
    """Eq. 2: ``g[m, i] = Var_i(s[m]) * (exp(1 - s[m, i]) - 1)``, population variance over the items."""
    var = strengths.var(dim=1, unbiased=False, keepdim=True) if strengths.shape[1] > 0 else strengths[:, :1]
    return var * (torch.exp(1 - strengths) - 1)


def direction_sets(strengths: Tensor, strategy: str = "dynamic") -> Tensor:
    """``D [M, M, n]`` bool, ``D[a, b, i]`` = item ``i`` is aligned in direction ``a -> b`` (diagonal False).

    ``dynamic`` (CROSS): ``s_b + g_b > s_a``; ``oneway`` (FETTLE): ``s_b > s_a``; ``bidirectional``: all.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"alignment strategy must be one of {STRATEGIES}, got {strategy!r}")
    m, n = strengths.shape
    if strategy == "bidirectional":
        d = torch.ones(m, m, n, dtype=torch.bool, device=strengths.device)
    else:
        target = strengths + compensation(strengths) if strategy == "dynamic" else strengths
        d = target.unsqueeze(0) > strengths.unsqueeze(1)      # d[a, b] = target[b] > s[a]
    eye = torch.eye(m, dtype=torch.bool, device=strengths.device).unsqueeze(-1)
    return d & ~eye


@torch.no_grad()
def sinkhorn(scores: Tensor, eps: float = 0.05, n_iters: int = 3, inplace: bool = False,
             scale: float | Tensor = 1.0) -> Tensor:
    """SwAV's Sinkhorn-Knopp: codes ``q [n, P]`` from scores ``[n, P]`` (times ``scale > 0``).

    SwAV: ``Q = exp(scores / eps)^T [P, n]``, ``Q /= sum(Q)``, then ``n_iters`` rounds of (each prototype
    row gets mass 1/P; each sample column gets mass 1/n), and ``q = n Q^T``: every row (sample) of ``q``
    sums to exactly 1 and every prototype column to ``n / P`` (up to the convergence of ``n_iters`` rounds).

    Computed as ``q = n diag(b) K diag(a)`` with ``K = exp((scores - max) / eps)`` and the scaling vectors
    updated in turn (``a = 1 / (P K^T b)``, ``b = 1 / (n K a)``): the same result as rescaling the matrix
    in place, with two matrix-vector products per round instead of six passes over ``[n, P]``.
    ``inplace``: ``scores`` (float32, not needed afterwards) becomes the result, no ``[n, P]`` copy.
    ``scale``: the scores used are ``scale * scores`` (CROSS passes logits divided by a temperature and
    the temperature), applied in the pass that forms ``K``.
    """
    s = scores.detach()
    if s.dtype != torch.float32:
        s, inplace = s.float(), True
    c = float(scale) / eps
    if not c > 0:
        raise ValueError(f"sinkhorn needs scale / eps > 0, got scale {float(scale)}, eps {eps}")
    n, p = s.shape
    shift = s.max() * c                                      # the shift cancels in the normalisation
    k = (s.mul_(c).sub_(shift) if inplace else torch.add(-shift, s, alpha=c)).exp_()
    if int(n_iters) == 0:   # SwAV with no round: Q / sum(Q), scaled by n
        return k.mul_(n / k.sum()).to(scores.dtype)
    b = torch.ones(n, dtype=k.dtype, device=k.device)
    for _ in range(int(n_iters)):
        a = 1.0 / (p * (k.t() @ b))
        b = 1.0 / (n * (k @ a))
    return k.mul_((n * b).unsqueeze(1)).mul_(a.unsqueeze(0)).to(scores.dtype)


def swapped_prediction(q: Tensor, z: Tensor, temperature: Tensor) -> Tensor:
    """``l(q, z) = - mean_rows sum_k q_k log softmax(z / temperature)_k``."""
    return soft_cross_entropy(z / temperature, q, 1.0 / max(q.shape[0], 1))


def _others_sum(q: List[Tensor], b: int) -> Tensor:
    """``sum_{a != b} q[a]`` (a new tensor unless only one term remains)."""
    rest = [x for a, x in enumerate(q) if a != b]
    out = rest[0] if len(rest) == 1 else torch.add(rest[0], rest[1])
    for x in rest[2:]:
        out.add_(x)
    return out


def neighbour_targets(emb: Tensor, nb_pos: Tensor, valid: Tensor) -> Tensor:
    """Eq. 8: mean of the (normalised) neighbour rows ``emb[nb_pos]`` over the valid slots, normalised.

    ``emb [N, d]``, ``nb_pos [n, K]`` rows of ``emb`` (anything where ``valid`` is False), ``valid [n, K]``.
    Rows without any neighbour give zero vectors.
    """
    neigh = gather_rows(emb, nb_pos) * valid.unsqueeze(-1).to(emb.dtype)        # [n, K, d]
    mean = neigh.sum(1) / valid.sum(1, keepdim=True).clamp(min=1).to(emb.dtype)
    return F.normalize(mean, dim=-1)


class _Temperature(nn.Module):
    """A learnable scalar temperature clamped (in place, before each use) into ``[low, high]``."""

    def __init__(self, init: float, low: float, high: float, learnable: bool = True):
        super().__init__()
        self.low, self.high = float(low), float(high)
        self.value = nn.Parameter(torch.tensor(float(init)), requires_grad=learnable)

    def forward(self) -> Tensor:
        with torch.no_grad():
            self.value.clamp_(self.low, self.high)
        return self.value


# ---------------------------------------------------------------------------------------------- plug-in
@register_plugin("cross")
class CROSS(Plugin):
    """CROSS: ILDA + DT + CNA + CLA added to any backbone's loss (see the module docstring)."""

    defaults: Dict[str, Any] = {
        "cross_alpha": None,          # weight of ILDA + DT; null = 1e-2 (ID-only backbone) / 1e-3 (multimodal)
        "cross_beta": None,           # weight of CLA; null = 1e-2 (ID-only) / 1e-4 (multimodal)
        "cross_gamma": None,          # weight of CNA; null = alpha
        "cross_ilda": True,
        "cross_dt": True,
        "cross_cna": True,
        "cross_cla": True,
        "cross_strategy": "dynamic",  # dynamic | oneway | bidirectional
        "cross_lambda_f": 0.1,        # ILDA temperature (learnable, clamped to [1e-3, 0.5])
        "cross_lambda_n": 0.2,        # CNA temperature
        "cross_lambda_c": 0.3,        # CLA temperature (learnable, clamped to [0.01, 1])
        "cross_k": 5,                 # CNA co-occurrence neighbours
        "cross_learn_temperatures": True,  # false: lambda_f and lambda_c stay at their settings (the paper)
        "cross_prototypes": 1024,     # prototypes of C^ITV (and of C^UI unless cross_prototypes_ui)
        "cross_prototypes_ui": None,  # prototypes of C^UI; null = cross_prototypes (paper: 10240 / 20480)
        "cross_sinkhorn_eps": 0.05,
        "cross_sinkhorn_iters": 3,
        "cross_cna_negatives": "items",  # items (eq. 9: sim(i^m, j^m)) | targets (in-batch InfoNCE)
    }
    #: settings a mode fixes regardless of the config (FETTLE)
    fixed: Dict[str, Any] = {}

    @classmethod
    def resolve(cls, config) -> Dict[str, Any]:
        return {**cls.defaults, **{k: config[k] for k in cls.defaults if k in config}, **cls.fixed}

    @classmethod
    def uses_neighbours(cls, cfg: Dict[str, Any]) -> bool:
        """CNA runs (its weight gamma = cross_gamma, else alpha, which is never 0 unless set so)."""
        gamma = cfg["cross_gamma"] if cfg["cross_gamma"] is not None else cfg["cross_alpha"]
        return bool(cfg["cross_cna"]) and (gamma is None or float(gamma) > 0)

    @classmethod
    def relations(cls, config, modalities) -> List[Relation]:
        cfg = cls.resolve(config)
        if not cls.uses_neighbours(cfg):
            return []
        return [Relation(COOCCUR, "cooccurrence", {"k": int(cfg["cross_k"])})]

    def __init__(self, data, model, config=None):
        super().__init__(data, model, config)
        cfg = {**self.config, **self.fixed}
        self.config = cfg
        features = item_features(data)
        n_items = node_counts(data)[1]
        if not features:
            raise ConfigError(f"{self.plugin_name} needs item modality features, but the dataset has none")
        multimodal = bool(getattr(model, "multimodal", False))
        auto = AUTO_WEIGHTS[multimodal]
        self.alpha = float(auto["alpha"] if cfg["cross_alpha"] is None else cfg["cross_alpha"])
        self.beta = float(auto["beta"] if cfg["cross_beta"] is None else cfg["cross_beta"])
        self.gamma = float(self.alpha if cfg["cross_gamma"] is None else cfg["cross_gamma"])
        self.use_ilda, self.use_dt = bool(cfg["cross_ilda"]), bool(cfg["cross_dt"])
        self.use_cna, self.use_cla = bool(cfg["cross_cna"]), bool(cfg["cross_cla"])
        self.strategy = str(cfg["cross_strategy"]).lower().replace("-", "").replace("_", "")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"cross_strategy must be one of {STRATEGIES}, got {cfg['cross_strategy']!r}")
        self.cna_negatives = str(cfg["cross_cna_negatives"])
        if self.cna_negatives not in ("items", "targets"):
            raise ConfigError(f"cross_cna_negatives must be 'items' or 'targets', got {self.cna_negatives!r}")
        self.eps, self.iters = float(cfg["cross_sinkhorn_eps"]), int(cfg["cross_sinkhorn_iters"])
        self.lambda_n = float(cfg["cross_lambda_n"])
        self.modalities: List[str] = [ID] + [m for m in features]
        if ID in features:
            raise ConfigError(f"a feature modality may not be called {ID!r}")
        n_mod = len(self.modalities)

        with self.own_rng():
            d = self.backbone_width()
            self.width = d
            self.feats = FeatureTables(features)  # frozen, not saved in checkpoints
            self.proj = nn.ModuleDict({m: nn.Linear(dim, d) for m, dim in self.feats.dims.items()})
            self.maps = nn.ModuleDict({f"{a}_to_{b}": nn.Linear(d, d, bias=False)
                                       for a in self.modalities for b in self.modalities if a != b})
            learn = bool(cfg["cross_learn_temperatures"])
            self.lambda_f = _Temperature(cfg["cross_lambda_f"], 1e-3, 0.5, learnable=learn)
            p = int(cfg["cross_prototypes"])
            p_ui = p if cfg["cross_prototypes_ui"] is None else int(cfg["cross_prototypes_ui"])
            for key, value in (("cross_prototypes", p), ("cross_prototypes_ui", p_ui)):
                if value < 1:
                    raise ConfigError(f"{key} must be >= 1, got {value}")
            self.codebook_itv = nn.Parameter(F.normalize(torch.randn(p, d), dim=-1))
            self.codebook_ui = nn.Parameter(F.normalize(torch.randn(p_ui, d), dim=-1))
            self.lambda_c = _Temperature(cfg["cross_lambda_c"], 1e-2, 1.0, learnable=learn)
        k = int(cfg["cross_k"])
        if k < 1:
            raise ConfigError(f"cross_k must be >= 1, got {k}")
        nb = neighbour_lists(relation_graph(data, COOCCUR), k) if self.use_cna and self.gamma > 0 else \
            torch.full((n_items, 1), -1, dtype=torch.long)
        self.register_buffer("neighbors", nb, persistent=False)
        self.n_dirs = n_mod * (n_mod - 1)
        log.info("%s: modalities %s, width %d, alpha %g beta %g gamma %g, strategy %s, components %s",
                 self.plugin_name, self.modalities, d, self.alpha, self.beta, self.gamma, self.strategy,
                 [c for c, on in (("ilda", self.use_ilda), ("dt", self.use_dt), ("cna", self.use_cna),
                                  ("cla", self.use_cla)) if on])

    # ------------------------------------------------------------------ embeddings
    def modality_embeddings(self, output: LossOutput, ids: Tensor) -> List[Tensor]:
        """``M`` tensors ``[len(ids), d]``: L2-normalised embeddings of the DISTINCT ``ids`` per modality (``id``
        first)."""
        rows = [self.item_rows(output, ids, distinct=True)]
        for m in self.modalities[1:]:
            rows.append(self.proj[m](self.feats.raw(m, ids)))
        return [F.normalize(r, dim=-1) for r in rows]

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch, output: LossOutput) -> Dict[str, Tensor]:
        run_ilda = self.alpha > 0 and (self.use_ilda or self.use_dt)
        run_cna = self.gamma > 0 and self.use_cna
        run_cla = self.beta > 0 and self.use_cla
        if not (run_ilda or run_cna or run_cla):
            return {}
        items, inv, counts = batch_items(batch.pos)
        if run_cna:   # embed the batch's items and their neighbours in one pass
            nb = self.neighbors[items]                                       # [n, K]
            valid = nb >= 0
            ids = torch.unique(torch.cat([items, nb[valid]]))
            where = torch.searchsorted(ids, items)
            all_emb = self.modality_embeddings(output, ids)                  # M x [N, d]
            emb = [unique_rows(e, where) for e in all_emb]                   # M x [n, d]
        else:
            emb = self.modality_embeddings(output, items)
        user_rows = F.normalize(self.user_rows(output, batch.users), dim=-1)  # [B, d]
        terms: Dict[str, Tensor] = {}
        if run_ilda:
            ilda, dt = self.ilda_dt(emb, user_rows, inv, counts)
            if self.use_ilda:
                terms["ilda"] = self.alpha * ilda
            if self.use_dt:
                terms["dt"] = self.alpha * dt
        if run_cna:
            nb_pos = torch.searchsorted(ids, nb.clamp(min=0))
            terms["cna"] = self.gamma * self.cna(emb, all_emb, nb_pos, valid)
        if run_cla:
            terms["cla"] = self.beta * self.cla(emb, batch.users, inv, output)
        return terms

    def ilda_dt(self, emb: List[Tensor], user_rows: Tensor, inv: Tensor,
                counts: Tensor) -> Tuple[Tensor, Tensor]:
        """``(L_ILDA, L_DT)`` over the batch's distinct items (see the module docstring)."""
        n = emb[0].shape[0]
        u_sg = user_rows.detach()
        with torch.no_grad():
            targets = [e.detach() for e in emb]
            # eq. 1's and DT's means over an item's batch rows of cos(sg(u), x) are x . (mean of those users)
            mean_users = mean_batch_users(u_sg, inv, counts)                      # [n, d]
            strengths = strengths_from_mean_users(torch.stack(targets), mean_users)  # [M, n]
            dirs = direction_sets(strengths, self.strategy)                        # [M, M, n]
        inv_tau = 1.0 / self.lambda_f()
        ilda = emb[0].new_zeros(())
        dt = emb[0].new_zeros(())
        for b, dst in enumerate(self.modalities):
            # the directions into b share the teacher sg(j^b): their rows form one InfoNCE block
            students, picked = [], []
            for a, src in enumerate(self.modalities):
                if a == b:
                    continue
                mask = dirs[a, b]
                idx = mask.nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                x = unique_rows(emb[a], idx)
                mapped = F.normalize(x + self.maps[f"{src}_to_{dst}"](x), dim=-1)  # f_{a->b}(i^a), [k, d]
                if self.use_ilda:
                    students.append(mapped)
                    picked.append(idx)
                if self.use_dt:
                    post = (mapped * mean_users.index_select(0, idx)).sum(-1)       # post-alignment strength
                    dt = dt - (post - strengths[a, idx]).sum()
            if students:
                # sum over the rows of -log softmax_j(f(i^a) . sg(j^b) / lambda_f) at j = i
                logits = torch.cat(students) * inv_tau
                own = targets[b].index_select(0, torch.cat(picked))
                ilda = ilda + weighted_logsumexp(logits, targets[b]) - (logits * own).sum()
        denom = self.n_dirs * n
        return ilda / denom, dt / denom

    def cna(self, emb: List[Tensor], all_emb: List[Tensor], nb_pos: Tensor, valid: Tensor) -> Tensor:
        """Eq. 9 averaged over modalities, over the batch's items that have >= 1 neighbour."""
        has = valid.any(1)
        if not bool(has.any()):
            return emb[0].new_zeros(())
        rows = has.nonzero().squeeze(1)
        total = emb[0].new_zeros(())
        for x, x_all in zip(emb, all_emb):                                   # [n, d], [N, d]
            target = neighbour_targets(x_all, nb_pos[rows], valid[rows])    # [h, d]
            xs = unique_rows(x, rows) * (1.0 / self.lambda_n)
            if self.cna_negatives == "items":
                # mean over the rows of logsumexp_j(x_i . x_j / lambda_n) - x_i . target_i / lambda_n
                total = total + (weighted_logsumexp(xs, x) - (xs * target).sum()) / len(rows)
            else:
                logits = xs @ target.t()
                total = total + F.cross_entropy(logits, torch.arange(len(xs), device=xs.device))
        return total / len(emb)

    def cla(self, emb: List[Tensor], users: Tensor, inv: Tensor, output: LossOutput) -> Tensor:
        """``1/2 [l(q_u, z_i) + l(q_i, z_u)] + mean over ordered modality pairs of l(q^a, z^b)``.

        The user-item part runs over the batch rows (interacted pairs); codes and Sinkhorn targets are
        computed once per distinct user / item and the per-row sums are aggregated with a sparse
        ``[items, users]`` count matrix instead of gathering ``[B, P]`` rows. The temperature scales the
        (small) codebook rather than the ``[n, P]`` codes; each ``l`` is one :func:`soft_cross_entropy`
        (the gradient formed in its forward pass), the ``l(q^a, z^b)`` of one ``b`` summed into one target.
        """
        with torch.no_grad():
            self.codebook_itv.copy_(F.normalize(self.codebook_itv, dim=-1))
            self.codebook_ui.copy_(F.normalize(self.codebook_ui, dim=-1))
        tau = self.lambda_c()
        t = tau.detach()
        m = len(emb)
        scaled = self.codebook_itv / tau                                      # [P, d]
        zs = [e @ scaled.t() for e in emb]                                    # z^m / lambda_c, [n, P]
        q = [sinkhorn(z, self.eps, self.iters, scale=t) for z in zs]          # Sinkhorn(sg(z^m))
        # sum over ordered pairs a != b of l(q^a, z^b) = sum_b l(sum_{a != b} q^a, z^b)
        pair_scale = 1.0 / (zs[0].shape[0] * max(m * (m - 1), 1))
        itv = sum(soft_cross_entropy(zs[b], _others_sum(q, b), pair_scale) for b in range(m))

        uniq_users, uinv = torch.unique(users, return_inverse=True)
        scaled_ui = self.codebook_ui / tau
        zu = F.normalize(self.user_rows(output, uniq_users, distinct=True), dim=-1) @ scaled_ui.t()  # z_u / lambda_c
        zi = emb[0] @ scaled_ui.t()                                                     # z_i / lambda_c
        qu = sinkhorn(zu, self.eps, self.iters, scale=t)
        qi = sinkhorn(zi, self.eps, self.iters, scale=t)
        rows = users.numel()
        with torch.no_grad():
            pairs = torch.sparse_coo_tensor(torch.stack([inv, uinv]), torch.ones_like(inv, dtype=qu.dtype),
                                            (zi.shape[0], zu.shape[0]), check_invariants=False).coalesce()
            q_for_items = csr_mm(pairs.to_sparse_csr(), qu)                    # sum of q_u over each item's rows
            q_for_users = csr_mm(pairs.t().coalesce().to_sparse_csr(), qi)     # sum of q_i over each user's rows
        # l(q_u, z_i) and l(q_i, z_u) over the rows
        l_ui = soft_cross_entropy(zi, q_for_items, 1.0 / rows)
        l_iu = soft_cross_entropy(zu, q_for_users, 1.0 / rows)
        return 0.5 * (l_ui + l_iu) + itv

    def extra_repr(self) -> str:
        return (f"modalities={self.modalities}, d={self.width}, alpha={self.alpha:g}, beta={self.beta:g}, "
                f"gamma={self.gamma:g}, strategy={self.strategy}")


@register_plugin("fettle")
class FETTLE(CROSS):
    """FETTLE (SIGIR'24), CROSS's predecessor: one-way item-level alignment (no compensation), DT and
    cluster-level alignment; no neighbour-level alignment (CNA was introduced by CROSS). Reads the same
    ``cross_*`` keys; ``cross_strategy`` and ``cross_cna`` are fixed."""

    fixed = {"cross_strategy": "oneway", "cross_cna": False}
    #: CNA's keys: FETTLE has no CNA, so a value other than the default would change nothing
    unused = ("cross_gamma", "cross_lambda_n", "cross_k", "cross_cna_negatives")

    @classmethod
    def check_settings(cls, config: Dict[str, Any]) -> None:
        changed = [k for k in cls.unused if k in config and config[k] != cls.defaults[k]]
        if changed:
            raise ConfigError(f"plugins=[fettle] has no neighbour alignment (CNA came with CROSS): "
                              f"{changed[0]}={config[changed[0]]} would change nothing; drop it, or use "
                              "plugins=[cross]")
