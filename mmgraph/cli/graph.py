"""``mmgraph graph``: build the run graph (a PyG ``HeteroData``) from an MMRec atomic folder and
inspect saved graph files.

    mmgraph graph build --data ../shared/data/tiktok --method freedom --out g.pt   # what training uses
    mmgraph graph build --data ../shared/data/tiktok --kind freedom --k 10 --image-weight 0.1 --out g.pt
    mmgraph graph info g.pt
    mmgraph train --method freedom --data ../shared/data/tiktok --graph g.pt

A file holds the user/item node counts, the training interactions (both directions) and the item-item /
user-user relations, as written by :func:`mmgraph.graph.save_graph`; ``mmgraph train --graph`` trains on it
(the relations can be edited or replaced by your own, under the names the method reads).
"""
from __future__ import annotations

import argparse
import time
from typing import Dict

import numpy as np

from mmgraph.errors import ConfigError, DataError
from mmgraph.utils.io import check_output_file

KINDS = ("knn", "freedom", "anchorrec", "cooccurrence", "brmrs")


def _kv_floats(text: str, what: str) -> Dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"{what}: expected name=value pairs separated by commas, got {part!r}")
        name, value = part.split("=", 1)
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"{what}: {value!r} is not a number (in {part!r})") from None
    return out


class _DefaultsHelp(argparse.HelpFormatter):
    """Shows an option's default when it says something: not for None / False, nor when the help gives it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default == [] \
                or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def register(subparsers) -> None:
    p = subparsers.add_parser("graph", help="build and inspect run graphs (HeteroData: interactions + relations)")
    sub = p.add_subparsers(dest="graph_command", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="build a run graph (HeteroData) from a dataset folder",
                       formatter_class=_DefaultsHelp)
    b.add_argument("--data", required=True, help="MMRec atomic dataset folder, or synthetic[:users=N,items=M,...] "
                                                 "as in train")
    what = b.add_mutually_exclusive_group(required=True)
    what.add_argument("--method", help="build exactly the graph `mmgraph train --method METHOD` uses "
                                       "(with --set / --config applied)")
    what.add_argument("--kind", choices=KINDS, help="build the relation(s) of one graph kind")
    b.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="--method: config overrides (e.g. knn_k=5 plugins=[cross])")
    b.add_argument("--config", help="--method: extra YAML config file")
    b.add_argument("--k", type=int, default=None, help="neighbours per item (default 10; 5 for cooccurrence)")
    b.add_argument("--modalities", default=None, help="comma-separated feature names (default: all)")
    b.add_argument("--norm", default=None, choices=("none", "rw", "uniform", "sym"),
                   help="edge normalisation (default: the method's own)")
    b.add_argument("--self-loops", default=None, choices=("include", "exclude"),
                   help="knn/freedom/anchorrec self-loop policy (default: the method's own)")
    b.add_argument("--weights", default=None, help="freedom modality weights, e.g. image=0.1,text=0.9")
    b.add_argument("--image-weight", type=float, default=None,
                   help="freedom: image weight, the rest split over the other modalities (published: 0.1)")
    b.add_argument("--anchor", default=None, help="anchorrec: feature used as the multimodal anchor")
    b.add_argument("--symmetrize", action="store_true", help="anchorrec: symmetrise the kNN graph")
    b.add_argument("--alpha", type=float, default=None, help="brmrs: co-occurrence vs content weight")
    b.add_argument("--n-candidates", type=int, default=None, help="brmrs: candidates per source")
    b.add_argument("--random-features", default=None,
                   help="attach Gaussian features name=dim,... (for folders without features, e.g. baby)")
    b.add_argument("--seed", type=int, default=0, help="seed of --random-features")
    b.add_argument("--backend", default="faiss", choices=("faiss", "torch"),
                   help="exact kNN search: FAISS, or blockwise torch products (the same neighbours)")
    b.add_argument("--cpu", action="store_true", help="never use a GPU for FAISS")
    b.add_argument("--cache-dir", default=None, help="graph cache folder (default $MMGRAPH_CACHE or "
                                                     "~/.cache/mmgraph/graphs)")
    b.add_argument("--no-cache", action="store_true", help="do not read or write the graph cache")
    b.add_argument("--out", default=None, help="write the graphs to this .pt file")
    b.set_defaults(func=cmd_build)

    i = sub.add_parser("info", help="summarise a graph file written by 'graph build'")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)


def _summary(name: str, g, node: str = "item") -> str:
    counts = g.row_counts().numpy()
    sums = g.row_sums().numpy()
    return (f"{name}: {node}s={g.num_nodes} edges={g.num_edges} "
            f"neighbours/{node} min={counts.min() if len(counts) else 0}"
            f" mean={counts.mean() if len(counts) else 0:.2f} max={counts.max() if len(counts) else 0}"
            f" row-sum mean={sums.mean() if len(sums) else 0:.4f}")


def cmd_build(args) -> int:
    from mmgraph.data.atomic import load_atomic
    from mmgraph.graph.hetero import build_hetero_data
    from mmgraph.graph.item_graphs import build_item_graphs, default_k
    from mmgraph.graph.relations import save_graph
    from mmgraph.train.run import SYNTHETIC_PREFIX, load_dataset

    for flag in ("k", "n_candidates"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.out:
        check_output_file(args.out, "--out")
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    rand = _kv_floats(args.random_features, "--random-features") if args.random_features else {}
    needs_features = args.kind != "cooccurrence"
    load_mods = [m for m in (modalities or []) if m not in rand] if modalities is not None else None
    t0 = time.perf_counter()
    if str(args.data).split(":", 1)[0] == SYNTHETIC_PREFIX:
        ds = load_dataset(args.data, modalities=load_mods)
    else:
        ds = load_atomic(args.data, modalities=load_mods, mmap=True)
    if rand:
        rng = np.random.default_rng(args.seed)
        feats = dict(ds.features)
        for name, dim in rand.items():
            if int(dim) < 1:
                raise ConfigError(f"--random-features: dimension of {name!r} must be >= 1")
            feats[name] = rng.standard_normal((ds.n_items, int(dim)), dtype=np.float32)
        ds = ds.with_features(feats)
    print(f"loaded {ds} in {time.perf_counter() - t0:.1f}s")
    cache = False if args.no_cache else (args.cache_dir or True)
    if args.method:
        return _build_for_method(args, ds, cache)
    if args.set or args.config:
        raise ConfigError("--set / --config only apply with --method")
    if needs_features and not ds.features:
        raise DataError(f"{args.data}: no <modality>_feat.npy features; graph kind {args.kind!r} needs "
                        "item features (use --random-features for a synthetic stand-in)")

    params = {}
    if args.norm is not None:
        if args.kind == "anchorrec":
            raise ConfigError("anchorrec always uses the symmetric normalisation; drop --norm")
        params["norm"] = args.norm
    if args.self_loops is not None:
        if args.kind in ("cooccurrence", "brmrs"):
            raise ConfigError(f"--self-loops does not apply to {args.kind} (the diagonal is excluded)")
        params["self_loops"] = args.self_loops
    for flag, key, kinds in ((args.weights, "weights", ("freedom",)),
                             (args.image_weight, "image_weight", ("freedom",)),
                             (args.anchor, "anchor", ("anchorrec",)),
                             (args.symmetrize or None, "symmetrize", ("anchorrec",)),
                             (args.alpha, "alpha", ("brmrs",)),
                             (args.n_candidates, "n_candidates", ("brmrs",))):
        if flag is None:
            continue
        if args.kind not in kinds:
            raise ConfigError(f"--{key.replace('_', '-')} only applies to --kind {'/'.join(kinds)}")
        params[key] = _kv_floats(flag, "--weights") if key == "weights" else flag
    t0 = time.perf_counter()
    graphs = build_item_graphs(ds, args.kind, k=args.k, modalities=modalities if args.kind != "cooccurrence"
                               else None, cache=cache, use_gpu=False if args.cpu else None,
                               backend=args.backend, **params)
    elapsed = time.perf_counter() - t0
    for name, g in graphs.items():
        print(_summary(name, g))
    print(f"built {args.kind} graph(s) in {elapsed:.2f}s")
    if args.out:
        data = build_hetero_data(ds, graphs, include_features=False)
        described = {"k": args.k or default_k(args.kind), **params}
        data.relations = {name: {"kind": args.kind, "params": described, "node": "item"} for name in graphs}
        save_graph(data, args.out)
        print(f"wrote {args.out}")
    return 0


def _build_for_method(args, ds, cache) -> int:
    from mmgraph.graph.relations import build_graph, relation_graph, save_graph
    from mmgraph.train.config import load_config, parse_overrides
    from mmgraph.train.run import run_relations

    for flag in ("k", "norm", "self_loops", "weights", "image_weight", "anchor", "alpha", "n_candidates"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} only applies with --kind; with --method set the "
                              "method's keys (e.g. --set knn_k=5)")
    overrides = parse_overrides(args.set)
    config = load_config(args.method, ds.name, args.config, overrides)
    axes = [k for k, v in overrides.items() if isinstance(v, list) and k in config["grid"]]
    if axes:
        raise ConfigError(f"--set {axes[0]}=[...]: graph build builds one graph; give one value")
    relations = run_relations(args.method, config, ds.modalities)
    t0 = time.perf_counter()
    data = build_graph(ds, relations, cache=config.get("graph_cache", True) and cache,
                       use_gpu=False if args.cpu else None, include_features=False)
    for rel in relations:
        print(_summary(f"{rel.node}-{rel.name}-{rel.node} ({rel.kind})", relation_graph(data, rel.name, rel.node),
                       rel.node))
    print(f"built the {args.method} graph ({len(relations)} relation(s) besides the interactions) in "
          f"{time.perf_counter() - t0:.2f}s")
    if args.out:
        save_graph(data, args.out)
        print(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
    from mmgraph.graph.hetero import INTERACTS, REV_INTERACTS
    from mmgraph.graph.relations import load_graph, relation_graph

    data = load_graph(args.file)
    print(f"users={data['user'].num_nodes} items={data['item'].num_nodes} "
          f"interactions={data[INTERACTS].edge_index.shape[1]}")
    described = getattr(data, "relations", None) or {}
    for et in data.edge_types:
        if et in (INTERACTS, REV_INTERACTS):
            continue
        spec = described.get(et[1], {})
        label = f"{et[0]}-{et[1]}-{et[2]}" + (f" ({spec.get('kind')} {spec.get('params')})" if spec else "")
        print(_summary(label, relation_graph(data, et[1], et[0]), et[0]))
    return 0


def load_graph_file(path) -> Dict[str, object]:
    """The ``{relation: ItemGraph}`` item-item relations of a file written by ``mmgraph graph build``."""
    from mmgraph.graph.relations import load_graph, relation_graph

    data = load_graph(path)
    return {et[1]: relation_graph(data, et[1], et[0]) for et in data.edge_types if et[0] == et[2]}
