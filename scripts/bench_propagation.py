"""Benchmark LightGCN propagation (forward + backward) on real or Baby-sized graphs.

Compares, in the same run, mmgraph's CSR path with a custom backward (``SparseAdj``) against
MMRec's approach (``torch.sparse.mm`` on a COO tensor with autograd) and PyG-style gather/scatter
message passing, and prints times and ratios.

    python scripts/bench_propagation.py [--data ../shared/data/tiktok] [--layers 2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmgraph.graph.bipartite import normalized_bipartite
from mmgraph.nn.conv import LightGCNConv
from mmgraph.nn.sparse import SparseAdj


def synthetic_pairs(n_users, n_items, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.unique(np.column_stack([rng.integers(0, n_users, n), rng.zipf(1.3, n) % n_items]), axis=0)


def timeit(fn, repeats):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset folder or synthetic[:...] (default: a Baby-sized random graph)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    for flag in ("layers", "dim", "repeats"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.data:
        from mmgraph.train.run import load_dataset
        ds = load_dataset(args.data)
        pairs, n_users, n_items, name = ds.train, ds.n_users, ds.n_items, ds.name
    else:
        n_users, n_items, name = 19445, 7050, "baby-sized random"
        pairs = synthetic_pairs(n_users, n_items, 118551)
    edge_index, weight = normalized_bipartite(pairs, n_users, n_items)
    n = n_users + n_items
    adj = SparseAdj(edge_index, weight, (n, n), symmetric=True)
    coo = torch.sparse_coo_tensor(edge_index, weight, (n, n)).coalesce()
    conv = LightGCNConv()
    x = torch.randn(n, args.dim, requires_grad=True)

    def run(step):
        def f():
            h, out = x, x
            for _ in range(args.layers):
                h = step(h)
                out = out + h
            out.sum().backward()
        return f

    paths = {
        "mmgraph CSR + custom backward": run(lambda h: conv(h, adj)),
        "torch.sparse.mm COO autograd (MMRec)": run(lambda h: torch.sparse.mm(coo, h)),
        "gather/scatter MessagePassing": run(lambda h: conv(h, edge_index, weight)),
    }
    try:
        from torch_sparse import SparseTensor  # optional
        st = SparseTensor(row=edge_index[0], col=edge_index[1], value=weight, sparse_sizes=(n, n))
        paths["torch_sparse SparseTensor"] = run(lambda h: st @ h)
    except ImportError:
        pass
    print(f"{name}: {n} nodes, {edge_index.size(1)} directed edges, d={args.dim}, {args.layers} layers, "
          f"{torch.get_num_threads()} threads")
    base = None
    for label, fn in paths.items():
        t = timeit(fn, args.repeats)
        base = base or t
        print(f"  {label:40s} {1000 * t:8.2f} ms/step   x{t / base:5.2f} of mmgraph")


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
