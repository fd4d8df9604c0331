#!/usr/bin/env python
"""Benchmark full-ranking evaluation and top-K retrieval against naive baselines.

Sizes (random interactions and random d=64 embeddings):
  baby         19,445 users x  7,050 items, 118,551 train / 21,682 valid / 20,559 test
  electronics 192,403 users x 63,001 items, 1.7M train / 170k valid / 170k test

Methods (each in its own subprocess so that peak RSS is its own; data generation is not timed and
the peak is reset after it, so "peak extra" is what the method itself needs on top of the data):
  mmgraph     Evaluator(dataset, "test").evaluate(user_emb, item_emb)  (256 MB score budget)
  mmrec       MMRec's evaluator as released: 4096-user score blocks, train items set to -1e10,
              top-K, then a per-user Python loop ``[i in pos_list for i in topk]`` and numpy metrics
              with a per-user IDCG loop
  dense       (baby only) the full [U, I] score matrix at once, masked, top-K, vectorised hits
  exact/faiss top-50 with training items excluded (topk_exact vs topk_faiss; all Baby users, the
              first 50,000 Electronics users)

Usage: python scripts/bench_eval.py [--sizes baby electronics] [--budget-mb 256]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

SIZES = {
    "baby": dict(n_users=19_445, n_items=7_050, n_train=118_551, n_valid=21_682, n_test=20_559),
    "electronics": dict(n_users=192_403, n_items=63_001, n_train=1_700_000, n_valid=170_000, n_test=170_000),
}
KS = (5, 10, 20, 50)


def make_data(size: str, seed: int = 0, d: int = 64):
    from mmgraph.data.dataset import RecDataset
    cfg = SIZES[size]
    rng = np.random.default_rng(seed)
    n_users, n_items = cfg["n_users"], cfg["n_items"]
    need = cfg["n_train"] + cfg["n_valid"] + cfg["n_test"]
    keys = np.unique(rng.integers(0, n_users * n_items, int(need * 1.05)))
    keys = rng.permutation(keys)[:need]
    pairs = np.column_stack([keys // n_items, keys % n_items])
    a, b = cfg["n_train"], cfg["n_train"] + cfg["n_valid"]
    ds = RecDataset(n_users, n_items, pairs[:a], pairs[a:b], pairs[b:], name=size)
    g = torch.Generator().manual_seed(seed)
    return ds, torch.randn(n_users, d, generator=g), torch.randn(n_items, d, generator=g)


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ------------------------------------------------------------------ baselines
def mmrec_style(ds, user_emb, item_emb, split="test", ks=KS, eval_batch=4096):
    """MMRec (utils/topk_evaluator.py + trainer.evaluate) as released, on the same inputs."""
    # EvalDataLoader setup (MMRec does this once when building the loader; not the hot path)
    eval_pairs = ds.split(split)
    users = np.unique(eval_pairs[:, 0])
    pos_items = {}
    for u, i in eval_pairs.tolist():
        pos_items.setdefault(u, []).append(i)
    pos_items = [pos_items[u] for u in users]
    pos_len = np.array([len(p) for p in pos_items])
    tr_ptr, tr_idx = ds.user_item_csr("train")
    t0 = time.perf_counter()
    topk_list = []
    kmax = max(ks)
    with torch.no_grad():
        for start in range(0, len(users), eval_batch):
            bu = users[start:start + eval_batch]
            lens = tr_ptr[bu + 1] - tr_ptr[bu]
            rows = np.repeat(np.arange(len(bu)), lens)
            cols = np.concatenate([tr_idx[tr_ptr[u]:tr_ptr[u + 1]] for u in bu])
            scores = user_emb[torch.from_numpy(bu)] @ item_emb.T
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -1e10
            topk_list.append(torch.topk(scores, kmax, dim=-1)[1])
    topk_index = torch.cat(topk_list).numpy()
    bool_rec = np.asarray([[True if i in m else False for i in n] for m, n in zip(pos_items, topk_index)])
    # metrics as in MMRec's utils/metrics.py
    out = {}
    rank = np.arange(1, kmax + 1)
    hits_cum = np.cumsum(bool_rec, axis=1)
    recall = hits_cum / pos_len.reshape(-1, 1)
    idcg_len = np.where(pos_len > kmax, kmax, pos_len)
    idcg = np.cumsum(1.0 / np.log2(rank + 1)) * np.ones_like(bool_rec, dtype=float)
    for row, idx in enumerate(idcg_len):
        idcg[row, idx:] = idcg[row, idx - 1]
    dcg = np.cumsum(np.where(bool_rec, 1.0 / np.log2(rank + 1), 0), axis=1)
    ndcg = dcg / idcg
    prec = hits_cum / rank
    sum_prec = np.cumsum(prec * bool_rec, axis=1)
    len_rank = np.full_like(pos_len, kmax)
    actual = np.where(pos_len > len_rank, len_rank, pos_len)
    map_ = np.zeros_like(sum_prec)
    for row, lens in enumerate(actual):
        ranges = np.arange(1, kmax + 1)
        ranges[lens:] = ranges[lens - 1]
        map_[row] = sum_prec[row] / ranges
    for k in ks:
        out[f"recall@{k}"] = float(recall[:, k - 1].mean())
        out[f"ndcg@{k}"] = float(ndcg[:, k - 1].mean())
        out[f"precision@{k}"] = float(prec[:, k - 1].mean())
        out[f"map@{k}"] = float(map_[:, k - 1].mean())
        out[f"hit@{k}"] = float((hits_cum[:, k - 1] > 0).mean())
    return out, time.perf_counter() - t0


def dense(ds, user_emb, item_emb, split="test", ks=KS):
    """Everything at once: the full [U, I] score matrix (fine for Baby, 48 GB for Electronics)."""
    from mmgraph.evaluation import topk_metrics
    t0 = time.perf_counter()
    with torch.no_grad():
        scores = user_emb @ item_emb.T
        tr = torch.from_numpy(ds.train)
        scores[tr[:, 0], tr[:, 1]] = float("-inf")
        ev = torch.from_numpy(ds.split(split))
        users = torch.unique(ev[:, 0])
        top = torch.topk(scores[users], max(ks), dim=1).indices
        del scores
        gt = torch.zeros(ds.n_users, ds.n_items, dtype=torch.bool)
        gt[ev[:, 0], ev[:, 1]] = True
        hits = gt[users].gather(1, top)
        n_pos = gt[users].sum(1)
        per_user = topk_metrics(hits, n_pos, ks)
    out = {n: float(v.mean()) for n, v in per_user.items()}
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ one measurement per process
def timed(fn, repeats: int):
    """``(result, min wall seconds, all times)`` over ``repeats`` calls (min: the machine is shared)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times), times


def worker(size: str, method: str, budget_mb: float, repeats: int) -> dict:
    from mmgraph.evaluation import Evaluator, topk_exact, topk_faiss
    ds, ue, ie = make_data(size)
    base = rss_mb()
    reset_peak()
    res = {"size": size, "method": method, "threads": torch.get_num_threads()}
    if method == "mmgraph":
        t0 = time.perf_counter()
        ev = Evaluator(ds, "test", ks=KS, memory_budget_mb=budget_mb)
        res["setup_s"] = time.perf_counter() - t0
        res["metrics"], res["time_s"], res["times"] = timed(lambda: ev.evaluate(ue, ie), repeats)
        res["batch_size"] = ev.batch_size
        res["n_eval_users"] = len(ev.users)
    elif method in ("mmrec", "dense"):  # these time themselves (MMRec's one-off loader setup excluded)
        runs = [(mmrec_style if method == "mmrec" else dense)(ds, ue, ie) for _ in range(repeats)]
        res["metrics"], res["times"] = runs[0][0], [t for _, t in runs]
        res["time_s"] = min(res["times"])
    elif method in ("exact", "faiss"):
        csr = ds.user_item_csr("train")
        fn = topk_exact if method == "exact" else topk_faiss
        kw = {"memory_budget_mb": budget_mb} if method == "exact" else {}
        n = min(int(os.environ.get("BENCH_TOPK_USERS", "0")) or ds.n_users, ds.n_users)
        res["n_users"] = n
        (scores, items), res["time_s"], res["times"] = timed(lambda: fn(ue[:n], ie, 50, csr, **kw), repeats)
        if os.environ.get("BENCH_TOPK_OUT"):
            np.savez(os.environ["BENCH_TOPK_OUT"], scores=scores.numpy(), items=items.numpy())
    else:
        raise SystemExit(f"unknown method {method}")
    res["rss_data_mb"] = base
    res["peak_rss_mb"] = peak_rss_mb()
    res["peak_extra_mb"] = res["peak_rss_mb"] - base
    return res


def run_worker(size, method, budget_mb, repeats, env=None):
    cmd = [sys.executable, __file__, "--worker", f"{size}:{method}", "--budget-mb", str(budget_mb),
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{size}:{method} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["baby", "electronics"], choices=list(SIZES))
    ap.add_argument("--budget-mb", type=float, default=256)
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per method, the minimum is reported (default: 3 baby, 1 electronics)")
    ap.add_argument("--topk-users", type=int, default=None,
                    help="users in the exact-vs-FAISS top-K rows (default: all for baby, 50,000 for electronics)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        size, method = args.worker.split(":")
        print(json.dumps(worker(size, method, args.budget_mb, args.repeats or 1)))
        return

    import tempfile
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"score budget {args.budget_mb:g} MB\n")
    hdr = (f"{'size':<12}{'method':<12}{'time s':>8}{'1st run s':>10}{'ratio':>8}{'peak RSS MB':>13}"
           f"{'(extra)':>9}  note")
    print(hdr)
    print("-" * len(hdr))
    for size in args.sizes:
        reps = args.repeats or (3 if size == "baby" else 1)
        methods = ["mmgraph", "mmrec"] + (["dense"] if size == "baby" else [])
        res = {m: run_worker(size, m, args.budget_mb, reps) for m in methods}
        ref = res["mmgraph"]
        for m in methods:
            r = res[m]
            diff = max(abs(r["metrics"][n] - ref["metrics"][n]) for n in ref["metrics"])
            note = (f"{ref['n_eval_users']} users, batch {ref['batch_size']}, setup {ref['setup_s']:.2f} s, "
                    f"R@20 {ref['metrics']['recall@20']:.5f}" if m == "mmgraph" else f"max |metric diff| {diff:.1e}")
            print(f"{size:<12}{m:<12}{r['time_s']:>8.2f}{r['times'][0]:>10.2f}{r['time_s'] / ref['time_s']:>7.2f}x"
                  f"{r['peak_rss_mb']:>13.0f}{r['peak_extra_mb']:>9.0f}  {note}")
            rows.append(r)
        with tempfile.TemporaryDirectory() as tmp:
            n_topk = args.topk_users or (50_000 if size == "electronics" else 0)
            tk = {m: run_worker(size, m, args.budget_mb, reps, {"BENCH_TOPK_OUT": f"{tmp}/{m}.npz",
                                                                "BENCH_TOPK_USERS": str(n_topk)})
                  for m in ("exact", "faiss")}
            ex, fa = np.load(f"{tmp}/exact.npz"), np.load(f"{tmp}/faiss.npz")
            same = float((ex["items"] == fa["items"]).all(1).mean())
            sdiff = float(np.abs(ex["scores"] - fa["scores"]).max())
        for m in ("exact", "faiss"):
            r = tk[m]
            note = (f"top-50 of {r['n_users']} users, train excluded; ratio vs exact" if m == "exact" else
                    f"identical lists {same:.3%}, rank-wise max |score diff| {sdiff:.1e}")
            print(f"{size:<12}{'topk-' + m:<12}{r['time_s']:>8.2f}{r['times'][0]:>10.2f}"
                  f"{r['time_s'] / tk['exact']['time_s']:>7.2f}x{r['peak_rss_mb']:>13.0f}{r['peak_extra_mb']:>9.0f}  {note}")
            rows.append(r)
        sys.stdout.flush()
    print("\ntime = min over the runs (the machine is shared), 1st run = the first call in a fresh process; "
          "ratio = time / mmgraph time (top-K rows: / exact); peak RSS includes the data (interactions, "
          "embeddings); extra = peak minus the RSS after data generation")


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
