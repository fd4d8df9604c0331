"""BR-MRS as a plug-in (paper section 3.3): CHNS + synergy-aware BPR added to any backbone's loss.

The backbone must expose per-modality channels (:meth:`~mmgraph.models.base.Recommender.channel_embeddings`
and ``LossOutput.channels`` named after the item modalities -- VBPR, FREEDOM, BM3, CM3, and any new model
that names its channels so); they are found by name, so a new backbone attaches with no change here. Its
scoring space (the ``final`` channel) plays the fused representation ``f`` of eq. 3-4. A backbone with no
modality channel (LightGCN, MF, DirectAU) is refused with a one-line error.

``L = L_backbone + lambda_h L_chns + lambda_s L_syn`` (:class:`~mmgraph.models.brmrs.BRMRSObjective`, the
same code as the ``brmrs`` method); the candidate pools come from the sampler (``n_candidates``). The
backbone's own loss and scoring are unchanged; the plug-in has no parameters. The weights default to null:
1 when the modality channels have user representations of their own (VBPR, CM3), 1e-2 when they score
with the backbone's final users (FREEDOM, BM3) -- see :data:`AUTO_WEIGHTS`.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor

from mmgraph.errors import ConfigError
from mmgraph.models.base import FINAL, Batch, LossOutput, item_features
from mmgraph.models.brmrs import OBJECTIVE_DEFAULTS, BRMRSObjective, check_negatives
from mmgraph.plugins import register_plugin
from mmgraph.plugins.base import Plugin

log = logging.getLogger(__name__)

#: ``brmrs_lambda_h`` / ``brmrs_lambda_s`` when null, by whether the modality channels have user
#: representations of their own (VBPR's user halves, CM3's blocks) or score with the backbone's final users
#: (FREEDOM, BM3). Measured on planted-signal synthetic data (3000 x 2000, seed 999): VBPR +10 % test R@20
#: with 1 and 1; FREEDOM collapses with 1 (R@20 0.165 -> 0.030: its final users are pulled into the feature
#: spaces) and gains +1.6 % with 1e-2
AUTO_WEIGHTS = {True: 1.0, False: 1e-2}


def modality_channels(model, modalities) -> List[str]:
    """The backbone's channels named after an item modality, in the backbone's order."""
    return [name for name in model.channel_embeddings() if name != FINAL and name in set(modalities)]


@torch.no_grad()
def own_user_side(model, channels: List[str]) -> bool:
    """Whether every modality channel scores with user representations other than the final ones."""
    emb = model.channel_embeddings()
    final = emb[FINAL][0]
    return all(emb[c][0].shape != final.shape or not torch.equal(emb[c][0], final) for c in channels)


@register_plugin("brmrs")
class BRMRS(Plugin):
    """CHNS + Syn-BPR on the backbone's modality channels, its final scores as the fused ones."""

    defaults: Dict[str, Any] = {**OBJECTIVE_DEFAULTS, "brmrs_lambda_h": None, "brmrs_lambda_s": None}

    def __init__(self, data, model, config=None):
        super().__init__(data, model, config)
        name = getattr(model, "method_name", type(model).__name__)
        if name == "brmrs":
            raise ConfigError("plugins=[brmrs] on the brmrs method: it trains with CHNS + Syn-BPR already; "
                              "drop the plug-in")
        modal = modality_channels(model, item_features(data))
        if not modal:
            raise ConfigError(f"plugins=[brmrs] needs a backbone with per-modality channels (vbpr, freedom, bm3, "
                              f"cm3, ...); {name} exposes none")
        auto = AUTO_WEIGHTS[own_user_side(model, modal)]
        cfg = {k: (auto if v is None and k in ("brmrs_lambda_h", "brmrs_lambda_s") else v)
               for k, v in self.config.items()}
        self.objective = BRMRSObjective(cfg, modal, getattr(model, "n_items", None))
        log.info("brmrs plug-in on %s: modality channels %s, lambda_h %g, lambda_s %g, negatives %s", name, modal,
                 self.objective.lambda_h, self.objective.lambda_s, self.objective.strategy)

    @classmethod
    def check_modalities(cls, config: Dict[str, Any], modalities: Sequence[str]) -> None:
        # the backbone's modality channels are some of the data's modalities: what fails on all fails on them
        check_negatives(str(config.get("brmrs_negatives", cls.defaults["brmrs_negatives"])), modalities)

    def sampler_options(self) -> Dict[str, Any]:
        return self.objective.sampler_options()

    def loss(self, batch: Batch, output: LossOutput) -> Dict[str, Tensor]:
        try:
            modal = {m: output.channel(m) for m in self.objective.modalities}
        except KeyError as exc:
            raise ConfigError(f"plugins=[brmrs]: the backbone's training step does not expose its channel "
                              f"{exc}") from None
        return self.objective.terms(batch, modal, output.channel(), output.scores)

    def extra_repr(self) -> str:
        o = self.objective
        return (f"modalities={o.modalities}, negatives={o.strategy}, lambda_h={o.lambda_h:g}, "
                f"lambda_s={o.lambda_s:g}, theta={o.theta:g}")
