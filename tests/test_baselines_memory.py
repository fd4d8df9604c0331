"""Nothing builds a dense items x items or users x users matrix: every baseline of issue 14 builds its
model and takes one training step at 20k items / 30k users under an address-space cap of 1 GiB above
what the process holds once the data is built (a dense float32 20k x 20k matrix alone is 1.6 GB,
30k x 30k 3.6 GB). Each method runs in a fresh subprocess so the cap cannot hurt the test process."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_baselines import ALL_BASELINES

ROOT = Path(__file__).resolve().parents[1]
CAP_MB = 1024
N_USERS, N_ITEMS = 30_000, 20_000

SCRIPT = textwrap.dedent("""
    import resource, sys, time
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from mmgraph.data.dataset import RecDataset
    from mmgraph.models.base import Batch
    from mmgraph.train import build_model, load_config

    method, n_users, n_items, cap_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    per_user = 8
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.integers(0, n_items, size=users.size)
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    held = rng.choice(len(pairs), size=2 * n_users // 10, replace=False)
    mask = np.ones(len(pairs), bool); mask[held] = False
    train, rest = pairs[mask], pairs[held]
    feats = {"image": rng.normal(size=(n_items, 32)).astype(np.float32),
             "text": rng.normal(size=(n_items, 16)).astype(np.float32)}
    ds = RecDataset(n_users, n_items, train, rest[: len(rest) // 2], rest[len(rest) // 2:], feats, name="mem")
    cfg = {k: v for k, v in load_config(method, overrides={"graph_cache": False, "batch_size": 1024,
                                                          "device": "cpu"}).items() if k != "grid"}
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + cap_mb * 2 ** 20, resource.RLIM_INFINITY))
    t0 = time.perf_counter()
    if method == "dense-control":   # what the cap exists to catch
        torch.zeros(n_items, n_items)
        print("ok dense-control"); sys.exit(0)
    model = build_model(method, ds, cfg, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model.on_epoch_start(0)
    idx = rng.integers(0, len(train), 1024)
    batch = Batch(torch.from_numpy(train[idx, 0]), torch.from_numpy(train[idx, 1]),
                  torch.from_numpy(rng.integers(0, n_items, 1024)))
    out = model.loss(batch)
    out.loss.backward()
    opt.step()
    with torch.no_grad():
        u, i = model.embeddings()
    assert torch.isfinite(out.loss) and u.shape[0] == n_users and i.shape[0] == n_items
    print(f"ok {method} {time.perf_counter() - t0:.1f}s")
""")


def _run(method: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SCRIPT, method, str(N_USERS), str(N_ITEMS), str(CAP_MB)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("method", ALL_BASELINES)
def test_no_dense_square_matrix_at_20k_items_30k_users(method):
    res = _run(method)
    assert res.returncode == 0 and f"ok {method}" in res.stdout, res.stderr[-2000:]


def test_the_cap_catches_a_dense_item_item_matrix():
    res = _run("dense-control")
    assert res.returncode != 0 and "ok" not in res.stdout
