"""BR-MRS as a plug-in (paper section 3.3): CHNS + synergy-aware BPR added to any backbone's loss.

The backbone must expose per-modality channels (:meth:`~mmgraph.models.base.Recommender.channel_embeddings`
and ``LossOutput.channels`` named after the item modalities -- VBPR, FREEDOM, BM3, CM3, and any new model
that names its channels so); they are found by name, so a new backbone attaches with no change here. Its
scoring space (the ``final`` channel) plays the fused representation ``f`` of eq. 3-4. A backbone with no
modality channel (LightGCN, MF, DirectAU) is refused with a one-line error.

``L = L_backbone + lambda_h L_chns + lambda_s L_syn`` (:class:`~mmgraph.models.brmrs.BRMRSObjective`, the
same code as the ``brmrs`` method); the candidate pools come from the sampler (``n_candidates``). The
backbone's own loss and scoring are unchanged; the plug-in has no parameters.
"""
from __future__ import annotations

from typing import Any, Dict, List

from torch import Tensor

from mmgraph.errors import ConfigError
from mmgraph.models.base import FINAL, Batch, LossOutput, item_features
from mmgraph.models.brmrs import OBJECTIVE_DEFAULTS, BRMRSObjective
from mmgraph.plugins import register_plugin
from mmgraph.plugins.base import Plugin


def modality_channels(model, modalities) -> List[str]:
    """The backbone's channels named after an item modality, in the backbone's order."""
    return [name for name in model.channel_embeddings() if name != FINAL and name in set(modalities)]


@register_plugin("brmrs")
class BRMRS(Plugin):
    """CHNS + Syn-BPR on the backbone's modality channels, its final scores as the fused ones."""

    defaults: Dict[str, Any] = dict(OBJECTIVE_DEFAULTS)

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
        self.objective = BRMRSObjective(self.config, modal)

    def sampler_options(self) -> Dict[str, Any]:
        return self.objective.sampler_options()

    def loss(self, batch: Batch, output: LossOutput) -> Dict[str, Tensor]:
        try:
            modal = {m: output.channel(m) for m in self.objective.modalities}
        except KeyError as exc:
            raise ConfigError(f"plugins=[brmrs]: the backbone's training step does not expose its channel "
                              f"{exc}") from None
        return self.objective.terms(batch, modal, output.channel())

    def extra_repr(self) -> str:
        o = self.objective
        return (f"modalities={o.modalities}, negatives={o.strategy}, lambda_h={o.lambda_h:g}, "
                f"lambda_s={o.lambda_s:g}, theta={o.theta:g}")
