"""Item embedding spaces of trained runs and of the raw features, for the structure analyses.

A *space* is an ``[n_items, d]`` table of item vectors compared by cosine. Any model gives its channels
(``final`` and whatever :meth:`~mmgraph.models.base.Recommender.channel_embeddings` exposes, e.g. FREEDOM's
``image`` / ``text``, CM3's ``fused``, AnchorRec's ``id`` / ``mm`` / per-modality refined embeddings); a
model with items-only representations adds them through an ``item_spaces()`` method (AnchorRec's
projection domain ``proj_<m>``). The raw features are spaces too (``raw:<modality>``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmgraph.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RAW = "raw"


def _numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def raw_spaces(dataset, anchor: bool = True) -> Dict[str, np.ndarray]:
    """``{raw:<m>: features [I, d_m]}`` of a dataset; with ``anchor`` and several modalities but no ``mm``
    feature, also ``raw:mm``: the concatenation of the L2-normalised features (AnchorRec's default anchor)."""
    feats = {m: np.asarray(f, dtype=np.float32) for m, f in dataset.features.items()}
    out = {f"{RAW}:{m}": f for m, f in feats.items()}
    if anchor and len(feats) > 1 and "mm" not in feats:
        from mmgraph.graph.knn import l2_normalize
        out[f"{RAW}:mm"] = np.concatenate([l2_normalize(f)[0] for f in feats.values()], axis=1)
    return out


@torch.no_grad()
def model_spaces(model) -> Dict[str, np.ndarray]:
    """``{name: items [I, d]}``: the item side of every channel of ``model`` (``final`` first) and its
    ``item_spaces()`` if it has any."""
    from mmgraph.train.run import as_in_the_run

    # a loaded run's model carries its config: its spaces are computed as the run computed them
    with as_in_the_run(getattr(model, "config", {}), getattr(model, "device", None)):
        out = {name: _numpy(items) for name, (_, items) in model.channel_embeddings().items() if items is not None}
        extra = getattr(model, "item_spaces", None)
        if callable(extra):
            out.update({name: _numpy(x) for name, x in extra().items()})
    return out


def run_labels(run_dirs: Sequence) -> List[str]:
    """Short, distinct labels for run folders: the folder names, with as many parent folders as it takes to
    tell different folders apart (``lightgcn/point_000/seed_1``); one folder named twice gets ``#k``."""
    paths = [Path(str(r)).resolve() for r in run_dirs]
    depth, deepest = 1, max((len(p.parts) for p in paths), default=1)
    while depth < deepest and len({"/".join(p.parts[-depth:]) for p in paths}) < len(set(paths)):
        depth += 1
    names = ["/".join(p.parts[-depth:]) or str(r) for p, r in zip(paths, run_dirs)]
    out, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return out


def load_runs(run_dirs: Sequence, data=None, checkpoint: str = "best.pt") -> Tuple[List, object]:
    """Load trained runs (``[(label, model)]``, dataset); all must be trained on the same dataset."""
    from mmgraph.train.rundir import dataset_hash
    from mmgraph.train.run import load_run

    if not run_dirs:
        raise ConfigError("name at least one run folder")
    runs, dataset, first_hash = [], None, None
    for label, run in zip(run_labels(run_dirs), run_dirs):
        model, ds, _ = load_run(run, data, checkpoint=checkpoint)
        h = dataset_hash(ds)
        if first_hash is None:
            dataset, first_hash = ds, h
        elif h != first_hash:
            raise DataError(f"{run} was trained on other data than {run_dirs[0]}; compare runs of one dataset")
        runs.append((label, model))
    return runs, dataset


def collect_spaces(runs: Sequence[Tuple[str, object]], dataset=None, include_raw: bool = True,
                   select: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """All spaces of the runs (``<label>:<space>``) and, with ``include_raw``, of the dataset's raw
    features (``raw:<m>``). ``select``: keep only spaces whose name (after the run label) is listed,
    e.g. ``["final", "proj_mm", "raw:image"]``."""
    out: Dict[str, np.ndarray] = {}
    if include_raw and dataset is not None:
        out.update(raw_spaces(dataset))
    for label, model in runs:
        out.update({f"{label}:{name}": x for name, x in model_spaces(model).items()})
    if select:
        wanted = set(select)
        kept = {k: v for k, v in out.items() if k in wanted or k.split(":", 1)[-1] in wanted}
        if not kept:
            raise ConfigError(f"--spaces {', '.join(select)} matches none of: {', '.join(out)}")
        unmatched = [s for s in select if not any(k == s or k.split(":", 1)[-1] == s for k in out)]
        if unmatched:
            raise ConfigError(f"--spaces: {', '.join(unmatched)} is not a space of these runs; they have: "
                              f"{', '.join(out)}")
        out = kept
    return out
