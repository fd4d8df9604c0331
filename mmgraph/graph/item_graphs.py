"""The frozen item-item graphs of the methods: FREEDOM, AnchorRec, BR-MRS, plus a one-call dispatcher.

All graphs follow the :mod:`mmgraph.graph.base` convention (``h_new[row] = sum_col w[row, col] h[col]``)
and are built without an ``I x I`` dense matrix. Every builder takes ``cache``: ``False`` (default,
no caching), ``True`` (the default folder, ``$MMGRAPH_CACHE`` or ``~/.cache/mmgraph/graphs``) or a
folder; the key covers the input arrays and every parameter that changes the result.

FREEDOM (baselines.md step 1, MMRec ``models/freedom.py``): per modality the top-k cosine neighbours
over ALL items (the item itself included, normally first), binary weights, normalised; then
``S = sum_m w_m S_m`` (duplicate edges summed). MMRec normalises with
``compute_normalized_laplacian``: ``A[r, c] / sqrt(d_r d_c)`` where ``d`` are the ROW sums of the
binary kNN matrix (``d = k`` for every item), i.e. every edge gets exactly ``1/k`` -- the same as the
spec's uniform ``1/k`` (``norm='uniform'``, default). ``norm='sym'`` reproduces MMRec's formula and
differs from ``'uniform'`` only for items with fewer than ``k`` neighbours (all-zero feature rows).

AnchorRec (anchorrec.md, released code: MMRec ``build_knn_normalized_graph(sim, k, sparse, 'sym')``):
top-k by cosine over all items (self included), edge weight = similarity, then
``w_ij / sqrt(d_i d_j)`` with ``d`` the weighted ROW sums of that directed kNN graph. The graph is
NOT symmetrised by default (as released); ``symmetrize=True`` first takes the union with its
transpose (``max`` of the two weights), making the normalised matrix symmetric.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
from mmgraph.errors import ConfigError, DataError
from mmgraph.graph.base import NORMS, ItemGraph, combine_graphs, normalize_graph
from mmgraph.graph.cache import CacheDir, cached
from mmgraph.graph.cooccurrence import cooccurrence_graph, cooccurrence_topk, item_overlap
from mmgraph.graph.knn import knn_graph, l2_normalize, resolve_self_loops

log = logging.getLogger(__name__)

FREEDOM_IMAGE_WEIGHT = 0.1  # MMRec FREEDOM ``mm_image_weight`` (the published setting)
KINDS = ("knn", "freedom", "anchorrec", "cooccurrence", "brmrs")
Cache = Union[bool, str, os.PathLike]


def _cache_dir(cache) -> CacheDir:
    if cache is False or cache is None:
        return False
    return None if cache is True else cache


def _features(obj) -> Dict[str, np.ndarray]:
    if hasattr(obj, "features") and hasattr(obj, "n_items"):
        obj = obj.features
    if not isinstance(obj, Mapping):
        raise ConfigError("features must be a {modality: [n_items, dim] array} mapping or a RecDataset")
    if not obj:
        raise DataError("no item features: this graph needs at least one modality")
    n = {np.shape(v)[0] for v in obj.values()}
    if len(n) != 1:
        raise DataError(f"feature matrices disagree on the number of items: {sorted(n)}")
    return dict(obj)


def _select(feats: Dict[str, np.ndarray], modalities: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    if modalities is None:
        return feats
    missing = [m for m in modalities if m not in feats]
    if missing:
        raise DataError(f"modalit{'y' if len(missing) == 1 else 'ies'} {missing} not in the features "
                        f"({sorted(feats)})")
    return {m: feats[m] for m in modalities}


# --------------------------------------------------------------------------- FREEDOM
def freedom_weights(modalities: Sequence[str], weights: Optional[Mapping[str, float]] = None,
                    image_weight: Optional[float] = None) -> Dict[str, float]:
    """Resolve FREEDOM's modality weights (summing to 1).

    ``weights`` (explicit, every modality needs one; normalised to sum 1 with a warning if they do
    not) takes precedence; else ``image_weight`` gives ``image`` that weight and splits the rest
    equally over the other modalities (MMRec: ``w * S_image + (1 - w) * S_text``); else equal weights.
    """
    mods = list(modalities)
    if not mods:
        raise DataError("no modalities to combine")
    if weights is not None:
        unknown = [m for m in weights if m not in mods]
        missing = [m for m in mods if m not in weights]
        if unknown:
            raise ConfigError(f"weights given for unknown modalities {unknown} (have {mods})")
        if missing:
            raise ConfigError(f"no weight for modalities {missing}")
        w = {m: float(weights[m]) for m in mods}
    elif image_weight is not None:
        iw = float(image_weight)
        if not 0.0 <= iw <= 1.0:
            raise ConfigError(f"image_weight must be in [0, 1], got {iw}")
        if "image" not in mods:
            raise ConfigError(f"image_weight given but there is no 'image' modality (have {mods})")
        rest = [m for m in mods if m != "image"]
        w = {m: (iw if m == "image" else (1.0 - iw) / len(rest)) for m in mods}
        if not rest:
            w = {"image": 1.0}
    else:
        w = {m: 1.0 / len(mods) for m in mods}
    if any(v < 0 or not np.isfinite(v) for v in w.values()):
        raise ConfigError(f"modality weights must be finite and >= 0, got {w}")
    total = sum(w.values())
    if total <= 0:
        raise ConfigError(f"modality weights sum to {total}")
    if abs(total - 1.0) > 1e-6:
        log.warning("FREEDOM modality weights %s sum to %g; normalising them to sum 1", w, total)
        w = {m: v / total for m, v in w.items()}
    return w


def freedom_modality_graph(features, k: int = 10, norm: str = "uniform", self_loops="include",
                           use_gpu: Optional[bool] = None, batch_size: int = 4096,
                           backend: str = "faiss") -> ItemGraph:
    """One modality's FREEDOM graph: binary top-k (self included) normalised by ``norm``."""
    if norm not in NORMS:
        raise ConfigError(f"unknown normalisation {norm!r}, expected one of {NORMS}")
    res = knn_graph(features, k, self_loops, use_gpu=use_gpu, batch_size=batch_size, backend=backend)
    return normalize_graph(res.to_item_graph("binary"), norm)


def freedom_graph(features, k: int = 10, weights: Optional[Mapping[str, float]] = None,
                  image_weight: Optional[float] = None, norm: str = "uniform", self_loops="include",
                  modalities: Optional[Sequence[str]] = None, use_gpu: Optional[bool] = None,
                  batch_size: int = 4096, backend: str = "faiss", cache: Cache = False) -> ItemGraph:
    """FREEDOM's frozen multimodal item graph ``S = sum_m w_m S_m`` (see the module docstring).

    Args:
        features: ``{modality: [I, d_m]}`` or a RecDataset.
        k: neighbours per item and modality (10).
        weights / image_weight: see :func:`freedom_weights`; the published FREEDOM setting is
            ``image_weight=0.1`` (``{'image': 0.1, 'text': 0.9}``); the default is equal weights.
        norm: ``'uniform'`` (spec, ``1/k`` per edge, row-stochastic) or ``'sym'`` (MMRec's formula),
            or ``'rw'`` / ``'none'``.
        self_loops: ``'include'`` (FREEDOM) or ``'exclude'``.
    """
    feats = _select(_features(features), modalities)
    w = freedom_weights(list(feats), weights, image_weight)
    feats = {m: f for m, f in feats.items() if w[m] > 0}
    params = {"k": int(k), "weights": w, "norm": norm, "self_loops": resolve_self_loops(self_loops),
              "backend": backend}

    def build():
        graphs = {m: freedom_modality_graph(f, k, norm, self_loops, use_gpu, batch_size, backend)
                  for m, f in feats.items()}
        return combine_graphs(graphs, {m: w[m] for m in graphs})

    return cached("freedom", params, feats, build, _cache_dir(cache))


# --------------------------------------------------------------------------- AnchorRec
def anchor_features(features, anchor: Optional[str] = None,
                    modalities: Optional[Sequence[str]] = None) -> np.ndarray:
    """The anchor (multimodal) feature: ``features[anchor]`` when named or when an ``'mm'`` feature
    exists, else the concatenation of the per-modality L2-normalised features (logged)."""
    feats = _features(features)
    if anchor is None and "mm" in feats:
        anchor = "mm"
    if anchor is not None:
        if anchor not in feats:
            raise DataError(f"anchor feature {anchor!r} not in the features ({sorted(feats)})")
        return np.asarray(feats[anchor], dtype=np.float32)
    mods = list(modalities) if modalities is not None else list(feats)
    mods = [m for m in mods if m != "mm"]
    log.info("no multimodal anchor feature: using the concatenation of the L2-normalised %s features",
             "+".join(mods))
    return np.concatenate([l2_normalize(feats[m])[0] for m in mods], axis=1)


def anchorrec_graph(features, k: int = 10, self_loops="include", symmetrize: bool = False,
                    norm: str = "sym", use_gpu: Optional[bool] = None, batch_size: int = 4096,
                    backend: str = "faiss", cache: Cache = False) -> ItemGraph:
    """AnchorRec's graph for one feature matrix: top-k cosine (self included), weight = similarity,
    optionally symmetrised, then ``w_ij / sqrt(d_i d_j)`` (``norm='sym'``; ``d`` = weighted row sums)."""
    x = np.asarray(features)
    params = {"k": int(k), "self_loops": resolve_self_loops(self_loops), "symmetrize": bool(symmetrize),
              "norm": norm, "backend": backend}

    def build():
        res = knn_graph(x, k, self_loops, use_gpu=use_gpu, batch_size=batch_size, backend=backend)
        g = res.to_item_graph("similarity")
        if symmetrize:
            g = g.symmetrize("max")
        return normalize_graph(g, norm)

    return cached("anchorrec", params, {"features": x}, build, _cache_dir(cache))


def anchorrec_graphs(features, k: int = 10, anchor: Optional[str] = None,
                     modalities: Optional[Sequence[str]] = None, symmetrize: bool = False,
                     self_loops="include", use_gpu: Optional[bool] = None, batch_size: int = 4096,
                     backend: str = "faiss", cache: Cache = False) -> Dict[str, ItemGraph]:
    """AnchorRec's graphs ``S_m`` for every content modality and ``S_mm`` for the anchor feature.

    Returns ``{modality: graph, ..., 'mm': anchor graph}``.
    """
    feats = _features(features)
    content = [m for m in (modalities if modalities is not None else feats) if m != "mm" and m != anchor]
    _select(feats, content)
    out = {m: anchorrec_graph(feats[m], k, self_loops, symmetrize, "sym", use_gpu, batch_size, backend, cache)
           for m in content}
    out["mm"] = anchorrec_graph(anchor_features(feats, anchor, content), k, self_loops, symmetrize, "sym",
                                use_gpu, batch_size, backend, cache)
    return out


# --------------------------------------------------------------------------- BR-MRS
def _pair_cosines(xn: np.ndarray, rows: np.ndarray, cols: np.ndarray, budget: int = 1 << 24) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, budget // max(1, xn.shape[1]))
    for s in range(0, len(rows), step):
        a, b = xn[rows[s:s + step]], xn[cols[s:s + step]]
        out[s:s + step] = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return out


def _training_pairs(caller: str, features, interactions, n_users: Optional[int], n_items: Optional[int]):
    """``(features {modality: [I, d_m]}, unique training pairs [N, 2], n_users, n_items)`` from ``features``
    (a dict or a RecDataset) and ``interactions`` (``[N, 2]`` pairs, a RecDataset, or ``None`` when
    ``features`` is a RecDataset); counts given explicitly win over the dataset's."""
    if interactions is None:
        if not (hasattr(features, "train") and hasattr(features, "n_items")):
            raise ConfigError(f"{caller} needs interactions (or a RecDataset as features)")
        interactions = features
    feats = _features(features)
    if hasattr(interactions, "train"):
        n_users = interactions.n_users if n_users is None else n_users
        n_items = interactions.n_items if n_items is None else n_items
        interactions = interactions.train
    pairs = np.unique(np.asarray(interactions, dtype=np.int64).reshape(-1, 2), axis=0)
    return feats, pairs, n_users, n_items


def brmrs_item_graph(features, interactions, k: int = 10, alpha: float = 0.5,
                     betas: Optional[Mapping[str, float]] = None, n_candidates: Optional[int] = None,
                     n_users: Optional[int] = None, n_items: Optional[int] = None, norm: str = "none",
                     use_gpu: Optional[bool] = None, batch_size: int = 4096, backend: str = "faiss",
                     cache: Cache = False) -> ItemGraph:
    """BR-MRS's homogeneous item graph (brmrs.md 2.1).

    ``e_ij = alpha * jaccard(U_i, U_j) + (1 - alpha) * sum_m beta_m cos(x_i^m, x_j^m)``, kept for the
    top-``k`` ``j != i`` per item. Exact scores are computed for a candidate set -- the union of each
    modality's ``n_candidates`` cosine neighbours and the ``n_candidates`` co-occurrence neighbours
    (default ``2k``) -- so no ``I x I`` matrix is built; a true top-k neighbour outside every candidate
    list is missed (it would need a high score from a single source it does not rank highly on).
    Ties: lower item id first. Edge weights are the scores, normalised by ``norm`` (default none).

    Args:
        features: ``{modality: [I, d]}`` or a RecDataset (then ``interactions`` may be ``None``: its
            train split is used).
        interactions: ``[N, 2]`` training (user, item) pairs.
    """
    feats, pairs, n_users, n_items = _training_pairs("brmrs_item_graph", features, interactions, n_users, n_items)
    n = next(iter(feats.values())).shape[0]
    n_items = n if n_items is None else int(n_items)
    if n_items != n:
        raise DataError(f"features have {n} rows but n_items={n_items}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    mods = list(feats)
    if betas is None:
        betas = {m: 1.0 / len(mods) for m in mods}
    else:
        missing = [m for m in mods if m not in betas]
        if missing:
            raise ConfigError(f"no beta for modalities {missing}")
        betas = {m: float(betas[m]) for m in mods}
    c = int(n_candidates) if n_candidates else 2 * int(k)
    params = {"k": int(k), "alpha": float(alpha), "betas": betas, "n_candidates": c, "norm": norm,
              "n_users": n_users, "n_items": n_items, "backend": backend}

    def build():
        cand_rows, cand_cols = [], []
        for m, f in feats.items():
            res = knn_graph(f, c, "exclude", use_gpu=use_gpu, batch_size=batch_size, backend=backend)
            cand_rows.append(np.repeat(np.arange(n), c)[res.indices.reshape(-1) >= 0])
            cand_cols.append(res.indices.reshape(-1)[res.indices.reshape(-1) >= 0])
        co = cooccurrence_topk(pairs, c, n_users=n_users, n_items=n_items)
        cand_rows.append(np.repeat(np.arange(n), c)[co.indices.reshape(-1) >= 0])
        cand_cols.append(co.indices.reshape(-1)[co.indices.reshape(-1) >= 0])
        key = np.unique(np.concatenate(cand_rows) * n + np.concatenate(cand_cols))
        rows, cols = key // n, key % n
        score = alpha * item_overlap(np.stack([rows, cols], 1), pairs, n_users=n_users, n_items=n_items)
        for m, f in feats.items():
            if betas[m] == 0:
                continue
            xn = l2_normalize(f)[0]
            score += (1.0 - alpha) * betas[m] * _pair_cosines(xn, rows, cols)
            del xn
        order = np.lexsort((cols, -score, rows))
        rows, cols, score = rows[order], cols[order], score[order]
        first = np.searchsorted(rows, np.arange(n))
        rank = np.arange(len(rows)) - first[rows]
        keep = rank < int(k)
        g = ItemGraph.from_edges(rows[keep], cols[keep], score[keep].astype(np.float32), num_nodes=n)
        return normalize_graph(g, norm)

    arrays = {f"feat_{m}": f for m, f in feats.items()}
    arrays["train"] = pairs
    return cached("brmrs_item", params, arrays, build, _cache_dir(cache))


def user_mean_features(features, interactions, n_users: int, chunk: int = 1 << 20) -> Dict[str, np.ndarray]:
    """``{modality: [U, d_m] float32}``: each user's mean of the raw features of its TRAINING items
    (duplicates counted once); users without training items get zero rows.

    Args:
        features: ``{modality: [I, d_m]}``.
        interactions: ``[N, 2]`` training (user, item) pairs.
    """
    pairs = np.unique(np.asarray(interactions, dtype=np.int64).reshape(-1, 2), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=n_users).astype(np.float64)
    out = {}
    for m, f in _features(features).items():
        f = np.asarray(f)
        sums = np.zeros((n_users, f.shape[1]), dtype=np.float64)
        for s in range(0, len(pairs), chunk):   # bounded [chunk, d_m] gathers
            blk = pairs[s:s + chunk]
            np.add.at(sums, blk[:, 0], np.asarray(f[blk[:, 1]], dtype=np.float64))
        out[m] = (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)
    return out


def brmrs_user_graph(features, interactions, k: int = 10, alpha: float = 0.5,
                     betas: Optional[Mapping[str, float]] = None, n_candidates: Optional[int] = None,
                     n_users: Optional[int] = None, n_items: Optional[int] = None, norm: str = "none",
                     use_gpu: Optional[bool] = None, batch_size: int = 4096, backend: str = "faiss",
                     cache: Cache = False) -> ItemGraph:
    """BR-MRS's homogeneous USER graph (brmrs.md 2.1), built "symmetrically" to :func:`brmrs_item_graph`:

    ``e_uv = alpha * jaccard(I_u, I_v) + (1 - alpha) * sum_m beta_m cos(xbar_u^m, xbar_v^m)``, with
    ``I_u`` the user's training items and ``xbar_u^m`` the mean of their modality-``m`` features
    (:func:`user_mean_features`); top-``k`` ``v != u`` per user from the same candidate union (cosine kNN
    per modality + co-occurrence neighbours, ``n_candidates`` each, default ``2k``), no ``U x U`` matrix.
    Returns an :class:`ItemGraph` over the ``U`` users.
    """
    feats, pairs, n_users, n_items = _training_pairs("brmrs_user_graph", features, interactions, n_users, n_items)
    n_items = next(iter(feats.values())).shape[0] if n_items is None else int(n_items)
    n_users = (int(pairs[:, 0].max()) + 1 if len(pairs) else 0) if n_users is None else int(n_users)
    c = int(n_candidates) if n_candidates else 2 * int(k)
    params = {"k": int(k), "alpha": float(alpha), "betas": None if betas is None else dict(betas),
              "n_candidates": c, "norm": norm, "n_users": n_users, "n_items": n_items, "backend": backend}
    arrays = {f"feat_{m}": f for m, f in feats.items()}
    arrays["train"] = pairs

    def build():
        user_feats = user_mean_features(feats, pairs, n_users)
        flipped = np.ascontiguousarray(pairs[:, ::-1])   # (item, user): users play the items' role
        return brmrs_item_graph(user_feats, flipped, k, alpha, betas, c, n_users=n_items, n_items=n_users,
                                norm=norm, use_gpu=use_gpu, batch_size=batch_size, backend=backend)

    return cached("brmrs_user", params, arrays, build, _cache_dir(cache))


# --------------------------------------------------------------------------- dispatcher
def default_k(kind: str) -> int:
    """Neighbours per item when a graph kind's ``k`` is not given: 5 for co-occurrence, 10 otherwise."""
    return 5 if kind == "cooccurrence" else 10


def build_item_graphs(dataset, kind: str, k: Optional[int] = None, modalities: Optional[Sequence[str]] = None,
                      cache: Cache = False, use_gpu: Optional[bool] = None, **params) -> Dict[str, ItemGraph]:
    """Build the item-item graph(s) of one ``kind`` for a RecDataset, named by HeteroData relation.

    ``kind``:
      * ``'knn'``: per modality, top-k cosine with similarity weights (``self_loops`` default
        ``'exclude'``, ``norm`` default ``'none'``) -> ``{'knn_<m>': g}``.
      * ``'freedom'``: :func:`freedom_graph` -> ``{'knn_mm': S}`` (params: ``weights``,
        ``image_weight``, ``norm``, ``self_loops``).
      * ``'anchorrec'``: :func:`anchorrec_graphs` -> ``{'anchorrec_<m>': S_m, 'anchorrec_mm': S_mm}``
        (params: ``anchor``, ``symmetrize``).
      * ``'cooccurrence'``: :func:`cooccurrence_graph` on the TRAIN split -> ``{'cooccur': g}``
        (``k`` default 5; ``norm`` default ``'none'``; ``measure`` cosine | count, ``min_count``).
      * ``'brmrs'``: :func:`brmrs_item_graph` -> ``{'brmrs_item': g}`` (params: ``alpha``, ``betas``,
        ``n_candidates``, ``norm``).
    ``k`` defaults to 10 (5 for co-occurrence).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown graph kind {kind!r}, expected one of {KINDS}")
    backend = params.pop("backend", "faiss")
    batch_size = params.pop("batch_size", 4096)
    common = dict(use_gpu=use_gpu, batch_size=batch_size, backend=backend)

    def take(*names):
        out = {n: params.pop(n) for n in names if n in params}
        if params:
            raise ConfigError(f"unknown parameter(s) for graph kind {kind!r}: {sorted(params)}")
        return out

    if kind == "cooccurrence":
        p = take("norm", "block_size", "measure", "min_count")
        k = int(k or default_k(kind))
        key = {"k": k, "norm": p.get("norm", "none"), "n_users": dataset.n_users,
               "n_items": dataset.n_items}
        if (p.get("measure", "cosine"), int(p.get("min_count", 1))) != ("cosine", 1):
            key.update(measure=p.get("measure", "cosine"), min_count=int(p.get("min_count", 1)))
        g = cached("cooccur", key, {"train": np.unique(dataset.train, axis=0)},
                   lambda: cooccurrence_graph(dataset, k, **p), _cache_dir(cache))
        return {"cooccur": g}
    k = int(k or default_k(kind))
    if kind == "knn":
        p = take("self_loops", "norm", "weight")
        feats = _select(_features(dataset), modalities)
        out = {}
        for m, f in feats.items():
            sl = resolve_self_loops(p.get("self_loops", "exclude"))
            prm = {"k": k, "self_loops": sl, "norm": p.get("norm", "none"),
                   "weight": p.get("weight", "similarity"), "backend": backend}

            def build(f=f, prm=prm):
                res = knn_graph(f, k, sl, **common)
                return normalize_graph(res.to_item_graph(prm["weight"]), prm["norm"])

            out[f"knn_{m}"] = cached("knn", prm, {"features": f}, build, _cache_dir(cache))
        return out
    if kind == "freedom":
        p = take("weights", "image_weight", "norm", "self_loops")
        return {"knn_mm": freedom_graph(dataset, k, modalities=modalities, cache=cache, **p, **common)}
    if kind == "anchorrec":
        p = take("anchor", "symmetrize", "self_loops")
        gs = anchorrec_graphs(dataset, k, modalities=modalities, cache=cache, **p, **common)
        return {f"anchorrec_{m}": g for m, g in gs.items()}
    p = take("alpha", "betas", "n_candidates", "norm")
    feats = _select(_features(dataset), modalities)
    return {"brmrs_item": brmrs_item_graph(feats, dataset, k, n_users=dataset.n_users,
                                           n_items=dataset.n_items, cache=cache, **p, **common)}
