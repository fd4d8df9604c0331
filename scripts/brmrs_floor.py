#!/usr/bin/env python
"""The BR-MRS plug-in's step cut down, stage by stage, to the kernels CHNS + Syn-BPR cannot do without, each
stage timed in place against its backbone (steps alternating, as ``bench_methods.py --interleave``): how much
of what the plug-in adds is its necessary work, and how much its loss arithmetic -- run it with nothing else
busy on the machine::

    python scripts/brmrs_floor.py --data ../shared/data/tiktok --backbones freedom,vbpr

Each stage is a plug-in with the real one's sampler (its candidate pools), its channels and its code paths
(:class:`~mmgraph.models.brmrs.BRMRSObjective`'s row cache, pool scoring, selection and row scores), and none
of its losses; the stages with gradients backpropagate a small multiple of the scores' sum, which runs the
backward kernels a loss would (only the per-score weights differ):

* ``pools``: each modality's batch users (carried into the feature space where the plug-in does so), the
  candidate pools scored, the hard negatives selected (``brmrs_negatives``); no gradient;
* ``hard``: + each modality's hard negative scored with gradient -- the least CHNS does, as if the scores of
  ``i+`` and ``i-`` came free from the backbone;
* ``kernels``: + the scores of ``i+`` and ``i-`` of each modality with gradient, and the fused margins
  ``s_f(u, i+) - s_f(u, i-)`` (the backbone's own scores where it gives them) -- every kernel of CHNS and
  Syn-BPR;
* ``brmrs``: the plug-in itself.

The table gives each stage's step and its ratio to the backbone's step timed beside it; ``--set`` as in
``bench_methods.py`` (``key=value`` for all, ``method:key=value`` for one backbone).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmgraph  # noqa: E402,F401  (before torch: OpenMP wait policy)
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import bench_methods  # noqa: E402
from mmgraph.errors import ConfigError  # noqa: E402
from mmgraph.models.base import Batch, LossOutput  # noqa: E402
from mmgraph.models.brmrs import _RowCache, hard_positions, item_rows  # noqa: E402
from mmgraph.nn.affine import user_side_map  # noqa: E402
from mmgraph.nn.sparse import gather_rows  # noqa: E402
from mmgraph.plugins import PLUGINS  # noqa: E402
from mmgraph.plugins.brmrs import BRMRS  # noqa: E402
from mmgraph.train.run import load_dataset  # noqa: E402

STAGES = ("pools", "hard", "kernels")


class FloorStage(BRMRS):
    """The BR-MRS plug-in reduced to the kernels of :attr:`stage` (see the module docstring)."""

    stage = "kernels"

    def __init__(self, data, model, config=None):
        super().__init__(data, model, config)
        if not self.objective.needs_pool:
            raise ConfigError(f"the {self.stage} stage: the stages score candidate pools; brmrs_negatives="
                              f"{self.objective.strategy} with brmrs_chns={self.objective.use_chns} draws none")

    def _channels(self, batch: Batch, output: LossOutput):
        """Per modality ``(users [B, d], rows, [pos, neg, candidates] indices into rows, u W or None)``, its affine
        map ``(x, W, b)`` or None, and the row cache, as :meth:`BRMRSObjective.terms` forms them."""
        o = self.objective
        groups = [batch.pos, batch.neg, batch.extras["candidates"]]
        dense = o.n_items is not None and sum(g.numel() for g in groups) >= 2 * o.n_items
        rows_of = _RowCache(batch.users, groups, dense)
        channels, affine = [], []
        for name in o.modalities:
            c = output.channel(name)
            rows, idx = rows_of.items(c)
            u = rows_of.users(c)
            uw = user_side_map(u, rows_of.affine(c)[1]) if rows_of.in_features(c) else None
            channels.append((u, rows, idx, uw))
            affine.append(rows_of.affine(c))
        return channels, affine, rows_of

    def loss(self, batch: Batch, output: LossOutput) -> Dict[str, Tensor]:
        o = self.objective
        channels, affine, rows_of = self._channels(batch, output)
        with torch.no_grad():
            scores = torch.stack([o._pool_scores(u if uw is None else uw, rows, idx[-1])
                                  for u, rows, idx, uw in channels])                       # [M, B, n]
            at = hard_positions(scores, o.strategy, o.modalities)                         # [M, B]
        if self.stage == "pools":
            return {"floor": scores.new_zeros(())}
        total: Optional[Tensor] = None
        for k, ch in enumerate(channels):
            parts = [ch[2][0], ch[2][1]] if self.stage == "kernels" else []
            parts.append(ch[2][-1].gather(1, at[k].unsqueeze(1)).squeeze(1))
            s = o._row_scores(ch, affine[k], parts).sum()
            total = s if total is None else total + s
        if self.stage == "kernels":   # Syn-BPR's fused margins: the backbone's own scores where it gives them
            if output.scores is not None:
                total = total + (output.scores[0] - output.scores[1]).sum()
            else:
                fused = output.channel()
                f_rows, (f_pos, f_neg) = item_rows(fused, [batch.pos, batch.neg])
                total = total + (rows_of.users(fused) * (gather_rows(f_rows, f_pos) - gather_rows(f_rows, f_neg))).sum()
        return {"floor": 1e-6 * total}


STAGE_CLASSES = {stage: type(f"FloorStage_{stage}", (FloorStage,), {"stage": stage}) for stage in STAGES}


@contextlib.contextmanager
def brmrs_as(stage: str):
    """Within the block, ``plugins=[brmrs]`` builds the stage's plug-in: the same settings (``--set brmrs_*``),
    sampler and checks as the plug-in's own."""
    if stage == "brmrs":
        yield
        return
    PLUGINS.available()    # the built-in plug-ins registered first, so that the patch is not undone by it
    with mock.patch.dict(PLUGINS._classes, {"brmrs": STAGE_CLASSES[stage]}):
        yield


def measure(backbone: str, dataset, sets, steps: int) -> List[Tuple[str, float, float]]:
    """``[(stage, backbone step s, stage step s)]`` for the stages and the plug-in, each pair alternating."""
    out = []
    for stage in (*STAGES, "brmrs"):
        with brmrs_as(stage):
            pair = bench_methods.bench_pair(backbone, f"{backbone}+brmrs", dataset, sets, steps)
        out.append((stage, pair[backbone]["step"], pair[f"{backbone}+brmrs"]["step"]))
    return out


def main(argv=None) -> int:
    return bench_methods.keeping_denormal_mode(_main)(argv)


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("::")[0].split()))
    p.add_argument("--data", required=True, help="dataset folder or synthetic[:...]")
    p.add_argument("--backbones", default="freedom,vbpr", help="comma-separated backbones with modality channels")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="[METHOD:]KEY=VALUE")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per pair")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones or any("+" in b or "@" in b for b in backbones):
        raise ConfigError(f"--backbones: expected comma-separated method names (vbpr,freedom), got {args.backbones!r}")
    sets = bench_methods._split_sets(args.set)
    unknown = sorted(set(sets) - {"*"} - set(backbones))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}:...: {unknown[0]} is not among --backbones ({args.backbones})")
    dataset = load_dataset(args.data)
    rows = {b: measure(b, dataset, sets, args.steps) for b in backbones}
    print(f"\n{dataset.name}: {torch.get_num_threads()} threads, median of {args.steps} steps (ms), each stage "
          "timed in alternation with its backbone")
    header = f"{'backbone':10s} {'stage':8s} {'backbone':>9s} {'with it':>8s} {'added':>7s} {'x backbone':>10s}"
    print(header)
    print("-" * len(header))
    for backbone, stages in rows.items():
        for stage, base, step in stages:
            print(f"{backbone:10s} {stage:8s} {1e3 * base:9.1f} {1e3 * step:8.1f} {1e3 * (step - base):7.1f} "
                  f"{'x%.2f' % (step / base):>10s}")
        budget = statistics.median(base for _, base, _ in stages) * 0.5
        print(f"{backbone:10s} {'(x1.50 allows +%.1f ms)' % (1e3 * budget)}")
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
