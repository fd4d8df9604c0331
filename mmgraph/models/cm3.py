"""CM3 (Zhou, Wang & Shen): calibrated multimodal recommendation.

Follows the paper (eq. 1-13) and the implementation notes ``specs/cm3.md``:

* per modality ``z^m = W2 LeakyReLU(W1 x^m + b1)`` on the frozen features (``d_m -> 256 -> 64``);
* spherical Bezier fusion ``h`` of the unit-normalised modality vectors (nested slerp, eq. 2-3) with
  ``lam ~ Beta(alpha, alpha)`` per item on every training forward and at evaluation ``lam = eval_lambda``
  (the default variant: ``last``, the last training draw, as released; ``paper``: 0.5); the fused vectors are
  the unit ``z^m`` themselves (``fusion_input: projection``, eq. 2 on the outputs of eq. 1) or separate
  ``Linear(d_m -> d)`` projections (``fusion_input: linear``, released);
* item input ``[norm(z^0), ..., norm(z^{M-1}), norm(h)]`` (``|M|+1`` channels of width ``d``), a free
  user embedding of the same shape (each channel L2-normalised at the input, as released);
* LightGCN on the training user-item graph, SUM over layers ``0..n_ui_layers``;
* per-user softmax weights over the channels (``W3 [U, |M|+1, 1]``);
* one hop on the frozen FREEDOM kNN item graph with residual ``x_hat = S x + x``;
* ``L = align + gamma (uniform_users + cal_uniform_items) / 2``, all on L2-normalised vectors, no BPR
  (the halving is how the released code, and so the paper's reported runs, weigh ``gamma``).

Ablations / released behaviour are config switches (see ``configs/methods/cm3.yaml`` and
:data:`VARIANTS`). Pairwise terms are computed on the batch's DISTINCT users / items through
:func:`mmgraph.losses.calibrated_uniformity`; ``user_pairs`` / ``item_pairs: rows`` weights every
distinct row by its multiplicity in the batch, which gives exactly the loss over every pair of the
2048 batch rows (the released code), ``distinct`` counts each distinct user / item once.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgraph.errors import ConfigError
from mmgraph.graph.item_graphs import FREEDOM_IMAGE_WEIGHT, freedom_weights
from mmgraph.graph.relations import Relation, interaction_adj, relation_adj
from mmgraph.losses import alignment, calibrated_uniformity
from mmgraph.models.base import Batch, Channel, LossOutput, Recommender, item_features
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.features import FeatureTables
from mmgraph.nn.fusion import FUSION_MODES, SphericalBezierFusion
from mmgraph.nn.linear import linear
from mmgraph.nn.normalize import row_normalize
from mmgraph.nn.sparse import gather_rows, unique_rows

log = logging.getLogger(__name__)

ITEM_GRAPH = "knn_mm"

#: switch presets. A switch left ``null`` in the config takes its variant's value; a switch given
#: explicitly wins over the variant (so ``variant=released item_pairs=distinct`` is one deviation).
#: ``released`` = the released CM3 code's loss and scoring; ``paper`` = the paper's text where the
#: code differs (spec defaults, the library's default before the held-out check of issue 18); ``default``
#: (below) = the released code with a detached calibration similarity.
VARIANTS: Dict[str, Dict[str, object]] = {
    "released": {"fusion_input": "linear", "uniform_items": "neg", "user_pairs": "rows", "item_pairs": "rows",
                 "detach_sim": False, "eval_lambda": "last", "score_norm": False, "user_input_norm": True},
    "paper": {"fusion_input": "projection", "uniform_items": "batch", "user_pairs": "rows",
              "item_pairs": "distinct", "detach_sim": True, "eval_lambda": 0.5, "score_norm": False,
              "user_input_norm": True},
}
#: the default: the released code, except that with two or more modalities ``s`` is a fixed calibration
#: weight (``detach_sim: auto``). Issue 18's evidence, validation R@20 paired by seed, released ->
#: detach_sim=true: TikTok (image + audio) seeds 1/2/3/999 +.0053/+.0059/+.0036/+.0016; synthetic (image +
#: text) seeds 1-3 +.0131 on average; the held-out text + audio set of issue 18 +.0056 (on the paper
#: switches); DBbook (text only) seeds 1-3 -.0143/-.0133/-.0106. With two or more modalities ``s`` is the
#: cosine of a slerp whose ``lam`` is redrawn every step, and its gradient follows that draw; with one
#: modality ``s`` is deterministic and learning it helps. Every other switch loses or ties on TikTok.
VARIANTS["default"] = {**VARIANTS["released"], "detach_sim": "auto"}
SWITCHES = tuple(VARIANTS["released"])

_CHOICES = {"fusion": FUSION_MODES, "fusion_input": ("linear", "projection"),
            "uniformity": ("calibrated", "standard"), "uniform_items": ("batch", "neg"),
            "user_pairs": ("rows", "distinct"), "item_pairs": ("distinct", "rows")}


def cm3_modality_weights(config, modalities: List[str]) -> Dict[str, float]:
    """Item-graph weights: explicit ``modality_weights``; else ``mm_image_weight`` (0.1) for ``image``
    when there are exactly two modalities one of which is ``image`` (the image/text case; the released
    code applies it to whatever fills the second slot, e.g. TikTok's audio); else equal weights."""
    explicit = config.get("modality_weights")
    image_weight = None
    if not explicit and len(modalities) == 2 and "image" in modalities:
        image_weight = float(config.get("mm_image_weight", FREEDOM_IMAGE_WEIGHT))
    return freedom_weights(list(modalities), explicit, image_weight)


class _ChannelWeights(torch.autograd.Function):
    """``w * x`` for per-user channel weights ``w [U, C, 1]`` and ``x [U, C, d]`` (eq. 7), with the
    weight gradient as one dot product per channel (no ``[U, C, d]`` temporary)."""

    @staticmethod
    def forward(ctx, w: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w, x)
        return x * w

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w, x = ctx.saved_tensors
        gw = torch.linalg.vecdot(grad, x).unsqueeze(-1) if ctx.needs_input_grad[0] else None
        gx = grad * w if ctx.needs_input_grad[1] else None
        return gw, gx


class ModalityMLP(nn.Module):
    """Eq. 1: ``W2 LeakyReLU(W1 x + b1)`` (``W2`` without bias), ``d_in -> hidden -> out``."""

    def __init__(self, d_in: int, hidden: int, out: int, slope: float = 0.01):
        super().__init__()
        self.lin1 = nn.Linear(d_in, hidden)
        self.lin2 = nn.Linear(hidden, out, bias=False)
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        # in place on lin1's fresh output (autograd recovers the mask from the result for slope >= 0)
        h = F.leaky_relu(linear(x, self.lin1.weight, self.lin1.bias), self.slope, inplace=self.slope >= 0)
        return linear(h, self.lin2.weight)


@register("cm3")
class CM3(Recommender):
    """Spherical Bezier fusion, LightGCN (sum), user channel weights, kNN item hop; align + calibrated uniformity.

    No BPR: ``L = align + gamma (uniform_users + cal_uniform_items) / 2`` (see the module docstring)."""

    multimodal = True
    defaults = {
        "embedding_size": 64, "hidden_size": 256, "n_ui_layers": 3, "n_mm_layers": 1, "knn_k": 10,
        "mm_image_weight": FREEDOM_IMAGE_WEIGHT, "modality_weights": None,
        "gamma": 0.9, "uniformity_t": 2.0, "alpha": 0.5, "min_sim": 0.0, "max_sim": 1.0,
        "variant": "default",
        "fusion": "slerp", "drop_modality": None, "uniformity": "calibrated",
        **{key: None for key in SWITCHES},
        "leaky_slope": 0.01,
    }

    @classmethod
    def resolve_config(cls, config) -> Dict[str, object]:
        """The config with defaults and the ``variant`` preset applied to the switches left ``null``
        (an explicitly set switch wins over the variant)."""
        config = {**cls.defaults, **(config or {})}
        if config.get("halve_uniform") is not None:
            raise ConfigError("cm3 halve_uniform is gone: gamma always weighs (uniform_users + cal_uniform_items) "
                              "/ 2, as in the paper's experiments (the released code); double gamma for the "
                              "unhalved weight")
        variant = str(config.get("variant") or "default")
        if variant not in VARIANTS:
            raise ConfigError(f"cm3 variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        explicit = {k: config[k] for k in SWITCHES if config.get(k) is not None and config[k] != VARIANTS[variant][k]}
        if explicit:
            log.info("cm3 variant=%s with %s", variant, ", ".join(f"{k}={v}" for k, v in explicit.items()))
        for key, value in VARIANTS[variant].items():
            if config.get(key) is None:
                config[key] = value
        return config

    @classmethod
    def relations(cls, config, modalities) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        kept = list(cls._select_features({m: None for m in modalities}, cfg.get("drop_modality")))
        weights = cm3_modality_weights(cfg, kept)
        return [Relation(ITEM_GRAPH, "freedom", {"k": int(cfg["knn_k"]), "weights": weights,
                                                 "modalities": list(weights)})]

    def __init__(self, data, config=None):
        config = self.resolve_config(config)
        super().__init__(data, config)
        cfg = self.config
        for key, choices in _CHOICES.items():
            if cfg[key] not in choices:
                raise ConfigError(f"cm3 {key} must be one of {list(choices)}, got {cfg[key]!r}")
        if cfg["item_pairs"] == "rows" and cfg["uniform_items"] == "batch":
            log.warning("cm3 item_pairs=rows with uniform_items=batch: the batch's positives repeat with popularity "
                        "and each row counts, so popular items weigh most in the item uniformity (issue 18: valid "
                        "Recall@20 -0.004 on TikTok, -0.014 on DBbook; a collapse on denser data at twice today's "
                        "gamma); item_pairs=distinct is the paper, uniform_items=neg the released code")
        self.eval_lambda = self._parse_eval_lambda(cfg["eval_lambda"])
        feats = self._select_features(item_features(data), cfg.get("drop_modality"))
        self.modalities = list(feats)
        if isinstance(cfg["detach_sim"], str):  # auto: detached when s depends on the per-step lam draw
            if cfg["detach_sim"].strip().lower() != "auto":
                raise ConfigError(f"cm3 detach_sim must be true, false or auto, got {cfg['detach_sim']!r}")
            cfg["detach_sim"] = len(self.modalities) >= 2
        d, d1 = self.embedding_size, int(cfg["hidden_size"])
        self.fusion = cfg["fusion"]
        self.n_channels = len(self.modalities) + (self.fusion != "none")

        self.feats = FeatureTables(feats)  # frozen: not parameters, not in checkpoints
        slope = float(cfg["leaky_slope"])
        self.mlp = nn.ModuleDict({m: ModalityMLP(f.shape[1], d1, d, slope) for m, f in feats.items()})
        # fused-feature inputs p^m: separate Linear(d_m -> d) (released code), also the similarity source
        self.fusion_proj = nn.ModuleDict()
        if cfg["fusion_input"] == "linear":
            for m, f in feats.items():
                lin = nn.Linear(f.shape[1], d)
                nn.init.xavier_normal_(lin.weight)
                self.fusion_proj[m] = lin
        # the fusion inputs arrive on the unit sphere already (see item_inputs)
        self.fuser = SphericalBezierFusion(float(cfg["alpha"]),
                                           "linear" if self.fusion == "linear" else "slerp",
                                           eval_lam=0.5 if self.eval_lambda == "last" else self.eval_lambda,
                                           normalize_inputs=False)
        n_lam = max(len(self.modalities) - 1, 0)
        # the latest training draw (persistent so that ``eval_lambda: last`` survives best.pt reloads)
        self.register_buffer("last_lam", torch.full((self.n_items, n_lam), 0.5))

        c = self.n_channels
        self.user_emb = nn.Parameter(torch.empty(self.n_users, c, d))
        for k in range(c):  # Xavier per channel block [U, d], as the released per-channel tables
            nn.init.xavier_normal_(self.user_emb.data[:, k])
        self.user_pref = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, c, 1)))

        self.adj = interaction_adj(data)
        self.n_ui_layers = int(cfg["n_ui_layers"])
        self.encoder = LightGCNEncoder(self.n_ui_layers, "sum")
        self.item_graph = relation_adj(data, ITEM_GRAPH)
        log.debug("CM3 modalities %s, item graph %s", self.modalities, self.item_graph)

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _parse_eval_lambda(value):
        if isinstance(value, str) and value.strip().lower() == "last":
            return "last"
        try:
            lam = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"cm3 eval_lambda must be a number in [0, 1] or 'last', got {value!r}") from None
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"cm3 eval_lambda must be in [0, 1], got {lam}")
        return lam

    @staticmethod
    def _select_features(features, drop) -> Dict[str, object]:
        if not features:
            raise ConfigError("cm3 needs item features")
        drop = [] if drop in (None, "", []) else ([drop] if isinstance(drop, str) else list(drop))
        unknown = [m for m in drop if m not in features]
        if unknown:
            raise ConfigError(f"drop_modality {unknown} not in the features ({sorted(features)})")
        kept = {m: f for m, f in features.items() if m not in drop}
        if not kept:
            raise ConfigError("drop_modality removes every modality; CM3 needs at least one")
        return kept

    # ------------------------------------------------------------------ model
    def features(self, name: str) -> Tensor:
        return self.feats.table(name)

    def _lam(self) -> Tensor:
        n_lam = self.last_lam.shape[1]
        if self.training:
            lam = self.fuser.sample_lam(self.n_items, n_lam + 1, self.user_emb.device)
            self.last_lam.copy_(lam)
            return lam
        if self.eval_lambda == "last":
            return self.last_lam
        return torch.full_like(self.last_lam, float(self.eval_lambda))

    def item_inputs(self) -> Tuple[Tensor, Tensor]:
        """Eq. 1-4: the item input ``[norm(z^0), ..., norm(z^{M-1}), norm(h)]`` ``[I, C d]`` and the
        per-item vectors the calibration similarity ``s`` is computed from: the fused features ``h``
        (without fusion: the concatenated unit ``z^m``, whose cosine is the mean of the per-modality cosines,
        whatever ``fusion_input``). Draws ``lam`` in training mode."""
        z = {m: self.mlp[m](self.features(m)) for m in self.modalities}
        channels = [row_normalize(z[m]) for m in self.modalities]
        # unit fusion inputs: the z^m channels themselves (projection, paper eq. 2 on the eq. 1 outputs)
        # or the released code's separate Linear projections (linear)
        src = ([row_normalize(linear(self.features(m), self.fusion_proj[m].weight, self.fusion_proj[m].bias))
                for m in self.modalities]
               if len(self.fusion_proj) else list(channels))
        if self.fusion == "none":
            # w/o F: the unit z^m, trained through their channels (the released Linear projections would only
            # be trained through the fusion, and are left at their random initialisation without it)
            sim_src = torch.cat(channels, 1)
        else:
            sim_src = self.fuser(src, self._lam())
            if self.fusion == "slerp":
                # slerp of unit vectors is already unit (Proposition 1; tested), and the Jacobian of a
                # unit-valued map has no radial part, so normalising again would change nothing -- except for
                # (near-)antipodal inputs, where the clamped angle leaves the sphere: those rows only
                off = (torch.linalg.vector_norm(sim_src.detach(), dim=1) - 1).abs() > 1e-3
                if bool(off.any()):
                    sim_src = torch.where(off.unsqueeze(1), row_normalize(sim_src), sim_src)
            channels.append(sim_src if self.fusion == "slerp" else row_normalize(sim_src))
        return torch.cat(channels, 1), sim_src

    def encode(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Users ``[U, C d]``, items ``x_hat [I, C d]`` (eq. 4-8) and the similarity source of
        :meth:`item_inputs`."""
        u_rep, items, sim_src = self.propagated()
        return self.weight_users(u_rep), self.item_hop(items), sim_src

    def propagated(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Eq. 4-6: the LightGCN sums for users ``[U, C d]`` (before the channel weights) and items
        ``[I, C d]`` (before the item-graph hop), and the similarity source of :meth:`item_inputs`."""
        items_in, sim_src = self.item_inputs()
        users_in = row_normalize(self.user_emb) if self.config["user_input_norm"] else self.user_emb
        u_rep, items = self.propagate(users_in.reshape(self.n_users, -1), items_in)
        return u_rep, items, sim_src

    def weight_users(self, u_rep: Tensor, ids: Optional[Tensor] = None, distinct: bool = False) -> Tensor:
        """Eq. 7: per-user softmax weights over the channel blocks of ``u_rep`` (all users, or the rows
        ``ids``; ``distinct`` says ``ids`` has no repeats, which makes the backward cheaper)."""
        pref = self.user_pref if ids is None else gather_rows(self.user_pref, ids)
        rows = u_rep if ids is None else (unique_rows(u_rep, ids) if distinct else gather_rows(u_rep, ids))
        n = rows.shape[0]
        weights = torch.softmax(pref, dim=1)  # [n, C, 1]
        return _ChannelWeights.apply(weights, rows.view(n, self.n_channels, -1)).reshape(n, -1)

    def item_hop(self, items: Tensor) -> Tensor:
        """Eq. 8: ``x_hat = S^(n_mm_layers) x + x`` on the frozen kNN item graph."""
        hop = items
        for _ in range(int(self.config["n_mm_layers"])):
            hop = self.item_graph.matmul(hop)
        return items + hop

    def propagate(self, users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
        """LightGCN with SUM readout over layers ``0..n_ui_layers`` on the symmetric-normalised
        user-item graph (eq. 4-6): ``[U, C d]``, ``[I, C d]``."""
        return self.encoder.bipartite(users, items, self.adj)

    def forward(self) -> Tuple[Tensor, Tensor]:
        users, items, _ = self.encode()
        return users, items

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        """Scoring representations, computed once per evaluation: raw ``e_u . x_hat_i`` (eq. 13 and the
        released code; default) or L2-normalised (``score_norm: true``, the geometry the loss optimises).

        Raw is the default because ranking by cosine discards the item norms, which the SUM readout makes
        grow with an item's training degree: on TikTok cosine scoring peaks at epoch 0 (test R@20 0.062)
        while raw scoring reaches 0.100 with every other switch unchanged."""
        users, items = super().embeddings()
        if self.config["score_norm"]:
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        return users, items

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch) -> LossOutput:
        cfg = self.config
        u_rep, items_prop, sim_src = self.propagated()
        items_all = self.item_hop(items_prop)
        t = float(cfg["uniformity_t"])
        # the channel weights and the L2 normalisation are row-wise: apply them only to the distinct
        # users / items the batch uses, once each
        uid, uinv, ucount = torch.unique(batch.users, return_inverse=True, return_counts=True)
        w_u = self.weight_users(u_rep, uid, distinct=True)
        u = row_normalize(w_u)
        n_pos = batch.pos.shape[0]
        if cfg["uniform_items"] == "batch":
            iid, iinv, icount = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True,
                                             return_counts=True)
            i = row_normalize(unique_rows(items_all, iid))
            i_pos = gather_rows(i, iinv[:n_pos])
        else:
            iid, icount = torch.unique(batch.neg, return_counts=True)
            i = row_normalize(unique_rows(items_all, iid))
            i_pos = row_normalize(gather_rows(items_all, batch.pos))
        align = alignment(gather_rows(u, uinv), i_pos)
        uni_u = calibrated_uniformity(u, None, t, ucount if cfg["user_pairs"] == "rows" else None)
        feats = None
        if cfg["uniformity"] == "calibrated":  # s_ab = clamp(cos(h_a, h_b), min_sim, max_sim)
            feats = sim_src.detach()[iid] if cfg["detach_sim"] else unique_rows(sim_src, iid)
        uni_i = calibrated_uniformity(i, None, t, icount if cfg["item_pairs"] == "rows" else None,
                                      features=feats, min_sim=float(cfg["min_sim"]), max_sim=float(cfg["max_sim"]))

        # gamma as in the paper's experiments: the released code halves the bracket
        total = align + float(cfg["gamma"]) * (uni_u + uni_i) / 2
        d = self.embedding_size
        memo: Dict[str, object] = {}

        def user_rows(ids: Tensor) -> Tensor:
            """Eq. 7 rows of ``ids``; the batch's users reuse this step's distinct rows, and the channels
            of one call share one computation."""
            if memo.get("ids") is not ids or memo["grad"] != torch.is_grad_enabled():
                memo["ids"], memo["grad"] = ids, torch.is_grad_enabled()
                memo["rows"] = gather_rows(w_u, uinv) if ids is batch.users else self.weight_users(u_rep, ids)
            return memo["rows"]
        channels = {name: Channel(items=items_all[:, k * d:(k + 1) * d],
                                  user_fn=lambda ids, k=k: user_rows(ids)[:, k * d:(k + 1) * d])
                    for k, name in enumerate(self.channel_names)}
        return LossOutput(total, {"align": align, "uniform_user": uni_u, "uniform_item": uni_i},
                          item_emb=items_all, user_rows=user_rows, channels=channels)

    @property
    def channel_names(self) -> List[str]:
        """The ``|M| (+1)`` channel blocks of the representations: the modalities, then ``fused``."""
        return list(self.modalities) + (["fused"] if self.fusion != "none" else [])

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        users, items, _ = self.encode()
        d = self.embedding_size
        return {name: (users[:, k * d:(k + 1) * d], items[:, k * d:(k + 1) * d])
                for k, name in enumerate(self.channel_names)}
