#!/usr/bin/env python
"""Benchmark the item kNN graph build: time and peak memory, FAISS vs. torch baselines.

Every (items, dim, method) case runs in its own subprocess, so its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own. The reported ``peak delta`` is that peak minus the
resident memory right after the random float32 features were generated (chunk-wise, so generation
itself does not raise the peak): it is the memory the kNN build needs on top of the features.

Methods:
  * ``faiss``  -- ``mmgraph.graph.knn_graph`` (FAISS exact inner product, query batches; CPU here).
  * ``torch``  -- ``knn_graph(..., backend='torch')``: blockwise ``X_b @ X^T`` + ``topk`` (<= 256 MB blocks).
  * ``dense``  -- the naive MMRec construction: ``S = Xn @ Xn^T`` (N x N) then ``topk`` -- only where
    the N x N matrix fits in ``--dense-max-gb``.
Ratios are relative to ``faiss`` in the same run; ``agree`` is the fraction of items whose top-k list
equals FAISS's (near-ties between the k-th and (k+1)-th neighbour can swap under float rounding).

    python scripts/bench_knn.py                        # 7,050 / 23,033 / 63,001 items x 4096 / 384 dims
    python scripts/bench_knn.py --sizes 2000 --dims 64 # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    step = max(1, (1 << 22) // d)
    for s in range(0, n, step):
        x[s:s + step] = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
    return x


def child(args) -> None:
    import resource

    import psutil
    import torch

    from mmgraph.graph import knn_graph

    x = make_features(args.n, args.d, args.seed)
    # warm up imports/allocators outside the measured region
    knn_graph(x[:64], 2, backend="faiss" if args.method == "faiss" else "torch")
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    if args.method == "faiss":
        idx = knn_graph(x, args.k, "include").indices
    elif args.method == "torch":
        idx = knn_graph(x, args.k, "include", backend="torch").indices
    elif args.method == "dense":
        t = torch.from_numpy(x)
        xn = t / t.norm(dim=1, keepdim=True)
        sim = xn @ xn.T
        _, ind = torch.topk(sim, args.k, dim=-1)
        del sim
        idx = ind.numpy()
    else:
        raise SystemExit(f"unknown method {args.method}")
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(args.out, idx)
    print(json.dumps({"time_s": elapsed, "rss0": rss0, "peak": peak, "peak_delta": peak - rss0}))


def run_case(n, d, method, k, seed, tmp):
    out = os.path.join(tmp, f"{method}_{n}_{d}.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--n", str(n), "--d", str(d),
           "--method", method, "--k", str(k), "--seed", str(seed), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}, None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res, np.load(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="7050,23033,63001")
    p.add_argument("--dims", default="4096,384")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--methods", default="faiss,torch,dense")
    p.add_argument("--dense-max-gb", type=float, default=4.0, help="skip 'dense' when N*N*4 bytes exceeds this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    # internal
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--method")
    p.add_argument("--out")
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(s) for s in args.dims.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if "faiss" in methods:
        methods = ["faiss"] + [m for m in methods if m != "faiss"]
    print(f"# kNN graph build, k={args.k}, self loops included, float32 N(0,1) features, "
          f"{os.cpu_count()} CPU cores, one subprocess per case")
    header = (f"| {'items':>6} | {'dim':>4} | {'feat MB':>7} | {'method':<6} | {'time s':>8} | {'peak delta MB':>13} "
              f"| {'time x faiss':>12} | {'mem x faiss':>11} | {'agree':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in dims:
            for n in sizes:
                ref = None
                for m in methods:
                    feat_mb = n * d * 4 / 2**20
                    if m == "dense" and n * n * 4 / 2**30 > args.dense_max_gb:
                        line = (f"| {n:>6} | {d:>4} | {feat_mb:>7.0f} | {m:<6} | {'skipped':>8} | "
                                f"{'N*N = %.1f GB' % (n * n * 4 / 2**30):>13} | {'':>12} | {'':>11} | {'':>6} |")
                        print(line, flush=True)
                        rows.append({"items": n, "dim": d, "method": m, "skipped": True})
                        continue
                    res, idx = run_case(n, d, m, args.k, args.seed, tmp)
                    if "error" in res:
                        print(f"| {n:>6} | {d:>4} | {feat_mb:>7.0f} | {m:<6} | failed: {res['error']}", flush=True)
                        rows.append({"items": n, "dim": d, "method": m, "error": res["error"]})
                        continue
                    if m == "faiss":
                        ref = (res, idx)
                    tr = mr = agree = ""
                    if ref is not None:
                        tr = f"{res['time_s'] / ref[0]['time_s']:.2f}"
                        mr = f"{res['peak_delta'] / max(ref[0]['peak_delta'], 1):.2f}"
                        agree = f"{np.mean((idx == ref[1]).all(1)):.4f}"
                    print(f"| {n:>6} | {d:>4} | {feat_mb:>7.0f} | {m:<6} | {res['time_s']:>8.2f} | "
                          f"{res['peak_delta'] / 2**20:>13.0f} | {tr:>12} | {mr:>11} | {agree:>6} |", flush=True)
                    rows.append({"items": n, "dim": d, "method": m, **res, "agree": agree})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
