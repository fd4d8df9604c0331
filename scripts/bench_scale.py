"""Scale benchmark (issue 17): LightGCN and FREEDOM on Electronics-sized synthetic data, full-graph and sampled.

For every scale factor (default 0.25, 0.5, 1 x Electronics: 192,403 users, 63,001 items, 1,689,188
interactions, 4096-d image + 384-d text) and every method and graph mode, one fresh process builds the
run graph, trains ``--epochs`` epochs and runs one full-ranking validation, and reports seconds per
epoch, evaluation seconds, graph-build seconds and its peak RSS. The growth exponent ``b`` of
``epoch seconds ~ interactions^b`` is fitted per method and mode (least squares on logs).

Results are appended to ``--out`` (JSON lines) as each run finishes, so an interrupted benchmark keeps what
it measured; the summary table is printed at the end (or with ``--report`` from an existing file).

    python scripts/bench_scale.py --scales 0.05 0.1 --epochs 1 --threads 1 --out bench_scale.jsonl
    python scripts/bench_scale.py --report bench_scale.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dataset_dir(cache: Path, scale: float, seed: int) -> Path:
    return cache / f"electronics_x{scale:g}_seed{seed}"


def materialise(scale: float, seed: int, cache: Path) -> dict:
    """Generate the dataset once per scale and keep it as .npy files (children memory-map them)."""
    import numpy as np

    folder = dataset_dir(cache, scale, seed)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    from mmgraph.data.synthetic_scale import make_electronics

    t0 = time.perf_counter()
    ds = make_electronics(scale, seed=seed)
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        np.save(folder / f"{split}.npy", getattr(ds, split))
    for mod, feat in ds.features.items():
        np.save(folder / f"feat_{mod}.npy", feat)
    meta = {"scale": scale, "n_users": ds.n_users, "n_items": ds.n_items, "name": ds.name,
            "interactions": int(len(ds.train) + len(ds.valid) + len(ds.test)), "train": int(len(ds.train)),
            "generate_seconds": seconds, "modalities": list(ds.features)}
    meta_path.write_text(json.dumps(meta))
    return meta


def child(args) -> None:
    """One measurement in this process (printed as one JSON line)."""
    import resource

    import numpy as np
    import torch

    from mmgraph.data.dataset import RecDataset
    from mmgraph.train.config import load_config
    from mmgraph.train.reproducibility import resolve_device, seed_everything
    from mmgraph.train.run import build_model, build_run_graph
    from mmgraph.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    folder = Path(args.child)
    meta = json.loads((folder / "meta.json").read_text())
    feats = {m: np.load(folder / f"feat_{m}.npy", mmap_mode="r") for m in meta["modalities"]}
    if args.method == "lightgcn":
        feats = {}
    ds = RecDataset(meta["n_users"], meta["n_items"], *(np.load(folder / f"{s}.npy") for s in ("train", "valid", "test")),
                    feats, name=meta["name"])
    overrides = {"graph_batching": args.mode, "epochs": args.epochs, "threads": args.threads,
                 "log_geometry": False, "graph_cache": False, "eval_memory_mb": args.eval_memory_mb}
    if args.mode == "sampled":
        overrides["num_neighbors"] = args.num_neighbors
        overrides["prefetch_batches"] = int(args.prefetch) if args.prefetch != "auto" else "auto"
    if args.method == "freedom":
        overrides["knn_backend"] = args.knn_backend
    cfg = load_config(args.method, overrides=overrides)
    seed_everything(0)
    t0 = time.perf_counter()
    graph = build_run_graph(args.method, ds, cfg)
    graph_seconds = time.perf_counter() - t0
    model = build_model(args.method, graph, cfg, resolve_device("auto"))  # a GPU when there is one
    trainer = Trainer(model, ds, cfg, progress=False)
    epochs = []
    for epoch in range(args.epochs):
        trainer.epoch = epoch
        t0 = time.perf_counter()
        trainer.train_epoch()
        epochs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    metrics = trainer.validate()
    eval_seconds = time.perf_counter() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({"scale": meta["scale"], "method": args.method, "mode": args.mode,
                      "interactions": meta["interactions"], "train": meta["train"], "users": meta["n_users"],
                      "items": meta["n_items"], "epoch_seconds": epochs, "seconds_per_epoch": float(np.mean(epochs)),
                      "eval_seconds": eval_seconds, "graph_seconds": graph_seconds, "peak_rss_gib": rss_gib,
                      "valid_recall@20": metrics["recall@20"], "threads": args.threads,
                      "device": str(model.device), "num_neighbors": args.num_neighbors if args.mode == "sampled" else None,
                      "knn_backend": args.knn_backend if args.method == "freedom" else None,
                      "prefetch_batches": trainer.prefetch_depth}))


def fit_exponent(xs, ys) -> float:
    import numpy as np
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _mode(r) -> str:
    """The graph mode, with the batches prefetched when there were any (records before the setting have none)."""
    return r["mode"] + (f"+prefetch{r['prefetch_batches']}" if r.get("prefetch_batches") else "")


def report(rows) -> str:
    lines = ["| method | mode | threads | scale | train interactions | s/epoch | eval s | graph s | peak RSS GiB | valid R@20 |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def group(r):
        return r["method"], _mode(r), r.get("threads")

    for r in sorted(rows, key=lambda r: (*group(r), r["scale"])):
        lines.append(f"| {r['method']} | {_mode(r)} | {r.get('threads')} | {r['scale']:g} | {r['train']:,} | "
                     f"{r['seconds_per_epoch']:.1f} | {r['eval_seconds']:.1f} | {r['graph_seconds']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['valid_recall@20']:.4f} |")
    lines.append("")
    lines.append("growth exponent b of s/epoch ~ interactions^b:")
    for key in sorted({group(r) for r in rows}, key=str):
        pts = sorted((r["train"], r["seconds_per_epoch"]) for r in rows if group(r) == key)
        scales = len({t for t, _ in pts})
        b = f"{fit_exponent(*zip(*pts)):.2f}" if scales > 1 else "n/a"
        lines.append(f"  {key[0]:9s} {key[1]:8s} {key[2]} threads: b = {b} over {scales} scales")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--methods", nargs="+", default=["lightgcn", "freedom"])
    p.add_argument("--modes", nargs="+", default=["full", "sampled"], choices=["full", "sampled"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-neighbors", type=int, nargs="+", default=[10, 10])
    p.add_argument("--prefetch", default="auto", help="sampled runs' prefetch_batches (auto, 0, 2, ...)")
    p.add_argument("--knn-backend", default="faiss_hnsw", help="FREEDOM's item kNN (faiss = exact)")
    p.add_argument("--eval-memory-mb", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=os.environ.get("MMGRAPH_BENCH_CACHE", "/tmp/mmgraph_bench_scale"))
    p.add_argument("--out", default="bench_scale.jsonl", help="JSON lines, appended as runs finish")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is abandoned")
    p.add_argument("--report", help="print the table of an existing results file and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    if args.report:
        if not Path(args.report).is_file():
            p.error(f"--report {args.report}: no such file (the JSON lines a run of this script wrote with --out)")
        try:
            rows = [json.loads(line) for line in Path(args.report).read_text().splitlines() if line.strip()]
        except ValueError as exc:
            p.error(f"--report {args.report}: not JSON lines ({exc})")
        print(report(rows))
        return 0
    cache, out = Path(args.cache), Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    rows = []
    for scale in args.scales:
        meta = materialise(scale, args.seed, cache)
        print(f"scale {scale:g}: {meta['n_users']:,} users, {meta['n_items']:,} items, {meta['interactions']:,} "
              f"interactions (generated in {meta['generate_seconds']:.1f}s)", flush=True)
        for method in args.methods:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", str(dataset_dir(cache, scale, args.seed)), "--method", method,
                       "--mode", mode, "--epochs", str(args.epochs), "--threads", str(args.threads),
                       "--num-neighbors", *map(str, args.num_neighbors), "--knn-backend", args.knn_backend,
                       "--eval-memory-mb", str(args.eval_memory_mb), "--prefetch", str(args.prefetch)]
                t0 = time.perf_counter()
                try:
                    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"  {method} {mode}: abandoned after {args.timeout:.0f}s", flush=True)
                    continue
                if proc.returncode != 0:
                    print(f"  {method} {mode}: failed ({proc.returncode}): {proc.stderr.strip()[-400:]}", flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["wall_seconds"] = time.perf_counter() - t0
                rows.append(row)
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"  {method:9s} {mode:8s} {row['seconds_per_epoch']:8.1f} s/epoch  eval {row['eval_seconds']:6.1f}s  "
                      f"graph {row['graph_seconds']:6.1f}s  peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
    print(report(rows))
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
