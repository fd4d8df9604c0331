#!/usr/bin/env python
"""CM3 training speed against a straightforward implementation of the same loss, in the same run.

The reference step is how the released code computes the released-variant loss: LightGCN as
``torch.sparse.mm`` on the full ``(U+I)^2`` adjacency, every term on the 2,048 batch ROWS (users with
repeats, the sampled negatives for the item term), ``torch.pdist`` / ``torch.cdist`` pair matrices and
autograd's backward. The library's step (``variant: released``, the same loss value, checked here) and
the paper variant are timed on the same batches, and whole epochs (train + validation) are timed
with the library's trainer. Ratios are printed, so the result does not depend on how fast the machine
happens to be today::

    python scripts/bench_cm3.py --data ../shared/data/tiktok --steps 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mmgraph.errors import ConfigError  # noqa: E402
from mmgraph.graph.bipartite import normalized_bipartite_adj  # noqa: E402
from mmgraph.train.config import load_config, parse_overrides  # noqa: E402
from mmgraph.train.run import build_model, load_dataset  # noqa: E402
from mmgraph.train.trainer import Trainer  # noqa: E402

SETTINGS = ["n_ui_layers=3", "gamma=0.9", "max_sim=1.0", "alpha=0.5"]


def reference_loss(model, batch, adj: torch.Tensor) -> torch.Tensor:
    """The released-variant loss, computed the straightforward way (see the module docstring)."""
    cfg = model.config
    t, gamma = float(cfg["uniformity_t"]), float(cfg["gamma"])
    items_in, sim_src = model.item_inputs()
    users_in = F.normalize(model.user_emb, dim=-1).reshape(model.n_users, -1)
    x = torch.cat([users_in, items_in])
    layers = [x]
    for _ in range(model.n_ui_layers):
        layers.append(torch.sparse.mm(adj, layers[-1]))
    x = torch.stack(layers).sum(0)
    users, items = x[: model.n_users], x[model.n_users:]
    users = (torch.softmax(model.user_pref, dim=1) * users.view(model.n_users, model.n_channels, -1)).reshape(
        model.n_users, -1)
    items = items + torch.sparse.mm(model.item_graph.csr.to_sparse_coo(), items)
    u = F.normalize(users[batch.users], dim=-1)
    i_pos = F.normalize(items[batch.pos], dim=-1)
    i_neg = F.normalize(items[batch.neg], dim=-1)
    align = (u - i_pos).norm(dim=1).pow(2).mean()
    uni_u = torch.pdist(u, p=2).pow(2).mul(-t).exp().mean().log()
    h = F.normalize(sim_src[batch.neg], dim=-1)
    s = (h @ h.t()).clamp(float(cfg["min_sim"]), float(cfg["max_sim"]))
    d2 = torch.cdist(i_neg, i_neg).pow(2)
    a, b = torch.triu_indices(len(i_neg), len(i_neg), 1)
    uni_i = (-t * (d2[a, b] - 2 + 2 * s[a, b])).exp().mean().log()
    return align + gamma * (uni_u + uni_i) / 2


def time_steps(fn, batches, optimizer, seed: int = 0) -> list:
    out = []
    for k, batch in enumerate(batches):
        torch.manual_seed(seed + k)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        fn(batch).backward()
        optimizer.step()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--epochs", type=int, default=3, help="timed library epochs per variant")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    models, trainers = {}, {}
    for variant in ("released", "paper"):
        cfg = load_config("cm3", dataset.name, overrides=parse_overrides(SETTINGS + [f"variant={variant}"]))
        cfg.pop("grid", None)
        cfg["log_geometry"] = False
        models[variant] = build_model("cm3", dataset, cfg)
        trainers[variant] = Trainer(models[variant], dataset, cfg, None, [], False)
    ref_model = models["released"]
    adj = normalized_bipartite_adj(dataset.train, dataset.n_users, dataset.n_items).csr.to_sparse_coo().coalesce()
    batches = list(trainers["released"].sampler.epoch())
    n_steps = len(batches)
    timed = [b for b in batches if len(b) == max(len(x) for x in batches)][: args.steps + 1]
    if len(timed) < 2:   # the first step is a warm-up, not timed
        raise ConfigError(f"{dataset.name} has {len(timed)} full batch(es) per epoch; timing needs at least 2: "
                          "use a larger dataset or a smaller batch_size")
    if len(timed) - 1 < args.steps:
        print(f"note: {dataset.name} has {len(timed)} full batches per epoch: timing {len(timed) - 1} steps, "
              f"not {args.steps}")

    ref_model.train()
    torch.manual_seed(0)
    ours = float(ref_model.loss(timed[0]).loss.detach())
    torch.manual_seed(0)
    ref = float(reference_loss(ref_model, timed[0], adj).detach())
    print(f"released-variant loss on one batch: library {ours:.6f}, reference {ref:.6f}")

    per_step = {}
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3)
    per_step["reference (released code's way)"] = time_steps(lambda b: reference_loss(ref_model, b, adj),
                                                             timed, ref_opt)[1:]
    for variant in ("released", "paper"):
        tr = trainers[variant]
        models[variant].train()
        per_step[f"mmgraph variant={variant}"] = time_steps(lambda b, m=models[variant]: m.loss(b).loss,
                                                            timed, tr.optimizer)[1:]
    base = statistics.median(per_step["reference (released code's way)"])
    print(f"\nper training step (median of {len(timed) - 1}, batch {len(timed[0])} rows, {n_steps} steps/epoch):")
    for name, ts in per_step.items():
        med = statistics.median(ts)
        print(f"  {name:34s} {1e3 * med:8.1f} ms   x{base / med:5.2f} vs reference"
              f"   (~{med * n_steps:5.2f} s of training per epoch)")

    print(f"\nlibrary epochs (train + validation, median of {args.epochs}):")
    for variant in ("released", "paper"):
        tr = trainers[variant]
        secs = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            tr.train_epoch()
            tr.validate()
            secs.append(time.perf_counter() - t0)
        med = statistics.median(secs)
        ref_epoch = base * n_steps
        print(f"  variant={variant:9s} {med:5.2f} s/epoch   x{ref_epoch / med:5.2f} vs the reference's training "
              f"steps alone ({ref_epoch:5.2f} s)")
    return 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
