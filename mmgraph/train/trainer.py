"""The training loop: sampling, optimisation step, per-epoch validation, early stopping, checkpoints.

Pieces are separate so data-parallel training can reuse them: :class:`~mmgraph.train.sampler.BPRSampler`
(takes a row shard), :meth:`Trainer.train_step` (one batch), :meth:`Trainer.train_epoch` and
:meth:`Trainer.validate` (evaluation accepts a user shard through the evaluator).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.data.dataset import RecDataset
from mmgraph.errors import ConfigError, TrainingError
from mmgraph.evaluation import Evaluator
from mmgraph.losses import alignment, uniformity
from mmgraph.models.base import Batch, Recommender
from mmgraph.nn.linear import matmul_precision
from mmgraph.train.distributed import (SINGLE, DistContext, LossModule, ShardedBatches, evaluate_sharded,
                                       wrap_ddp)
from mmgraph.train.prefetch import prefetch, resolve_prefetch
from mmgraph.train.reproducibility import DEFAULT_SEED, rng_state, seed_everything, set_rng_state
from mmgraph.train.rundir import fingerprint_tensors, load_checkpoint
from mmgraph.utils.denormals import flush_for, flushing_denormals
from mmgraph.utils.io import atomic_torch_save, atomic_write, write_json
from mmgraph.utils.memory import tune_glibc_malloc

log = logging.getLogger("mmgraph.train")


def _float_terms(terms: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


def make_adam(params, lr: float, weight_decay: float = 0.0, fused: bool = False) -> torch.optim.Adam:
    """Adam; ``fused``: one fused kernel per step instead of a loop of element-wise ops (the same
    update). Falls back to the plain kernel where this torch or device has no fused Adam (CPU needs
    torch >= 2.4)."""
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError) as exc:
            log.info("fused Adam not available here (%s); using the plain kernel", exc)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class Trainer:
    """Train ``model`` on ``dataset`` under the shared protocol.

    Args:
        model: a :class:`Recommender`.
        dataset: the data (train for sampling, valid for early stopping, test once at the end).
        config: resolved config (see ``configs/defaults.yaml``).
        out_dir: run directory; ``None`` keeps everything in memory.
        plugins: modules whose ``loss(batch, output) -> dict`` terms are added to the model's loss.
        progress: show a progress bar per epoch (auto-disabled when stderr is not a terminal).
        fingerprint: ``{"config_hash": hex, "data_hash": hex}`` of the run (see :mod:`mmgraph.train.rundir`),
            stored in ``best.pt`` / ``last.pt`` and checked on resume.
        dist_ctx: this process's place in a data-parallel run (:mod:`mmgraph.train.distributed`): batches
            and evaluation users are split over the ranks, gradients all-reduced by DDP, and only rank 0
            writes the run folder. Default: one process.
    """

    def __init__(self, model: Recommender, dataset: RecDataset, config: Dict[str, Any],
                 out_dir: Optional[Path] = None, plugins: Sequence[nn.Module] = (),
                 progress: Optional[bool] = None, fingerprint: Optional[Dict[str, str]] = None,
                 dist_ctx: DistContext = SINGLE):
        self.model = model
        self.dist = dist_ctx
        self.dataset = dataset
        self.config = config
        self.out_dir = Path(out_dir) if out_dir else None
        self.plugins = nn.ModuleList(plugins)
        self.progress = progress
        self.fingerprint = dict(fingerprint or {})
        self.device = model.device
        if config.get("malloc_tuning", True) and self.device.type == "cpu":
            tune_glibc_malloc()
        self.plugins.to(self.device)
        params = [p for p in list(model.parameters()) + list(self.plugins.parameters()) if p.requires_grad]
        self.optimizer = make_adam(params, float(config.get("learning_rate", 1e-3)),
                                   float(config.get("weight_decay", 0.0)), bool(config.get("fused_optimizer")))
        decay, step = float(config.get("lr_decay", 1.0)), float(config.get("lr_decay_step", 50))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: decay ** (e / step))
        if getattr(model, "sampled_graph", False) and len(self.plugins):
            raise ConfigError("plug-ins read the whole graph's representations: train with graph_batching=full "
                              "when plugins are set")
        options: Dict[str, Any] = {}
        for plugin in self.plugins:
            for key, value in getattr(plugin, "sampler_options", lambda: {})().items():
                options[key] = max(options.get(key, value), value) if isinstance(value, int) else value
        self.sampler = model.make_sampler(dataset, int(config.get("batch_size", 2048)),
                                          int(config.get("seed", DEFAULT_SEED)), **options)
        if self.dist.enabled and not getattr(self.sampler, "shards_itself", False):
            self.sampler = ShardedBatches(self.sampler, self.dist)
        self.prefetch_depth = resolve_prefetch(config.get("prefetch_batches", "auto"), self.device,
                                               bool(getattr(model, "sampled_graph", False)))
        if self.prefetch_depth:
            log.info("training batches prepared %d ahead by a background thread (prefetch_batches)",
                     self.prefetch_depth)
            # on a CPU the sampled subgraph's CSR pair is built there too; a GPU builds it in the step in far
            # less time than the CPU thread would add to each batch it has to keep up with
            if hasattr(self.sampler, "prepare_adjacency") and self.device.type == "cpu":
                self.sampler.prepare_adjacency = True
        self.loss_module = wrap_ddp(LossModule(model, self.plugins), self.dist, self.device)
        ks = [int(k) for k in config.get("topk", [5, 10, 20, 50])]
        self.valid_metric = str(config.get("valid_metric", "recall@20")).lower()
        metric_k = int(self.valid_metric.split("@")[1]) if "@" in self.valid_metric else 20
        self.ks = sorted(set(ks) | {metric_k})
        memory = int(config.get("eval_memory_mb", 256))
        self.retrieval = str(config.get("retrieval", "exact"))
        self.valid_eval = Evaluator(dataset, "valid", ks=self.ks, memory_budget_mb=memory, device=self.device,
                                    retrieval=self.retrieval)
        self._test_eval: Optional[Evaluator] = None
        self.patience = int(config.get("patience", 20))
        self.max_epochs = int(config.get("epochs", 1000))
        self.eval_step = max(1, int(config.get("eval_step", 1)))
        self.history: List[Dict[str, Any]] = []
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self._best_state: Optional[Dict[str, torch.Tensor]] = None
        self._geometry_sample = self._make_geometry_sample() if config.get("log_geometry", True) else None

    # ------------------------------------------------------------------ pieces
    def train_step(self, batch: Batch, scale: float = 1.0) -> Dict[str, float]:
        """One optimisation step on ``batch``; returns the loss terms as floats. ``scale`` multiplies the
        loss that is backpropagated (a data-parallel rank's share of the global batch)."""
        batch = batch.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms, _ = self.loss_module(batch)
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise TrainingError(f"loss became {float(loss.detach())} at epoch {self.epoch} ({detail}); lower "
                                "learning_rate or the loss weights, or check the features for extreme values")
        (loss * scale if scale != 1.0 else loss).backward()
        self.optimizer.step()
        terms = _float_terms(terms)
        terms["loss"] = float(loss.detach())
        return terms

    def train_epoch(self) -> Dict[str, float]:
        """One pass over the (re-shuffled) training triples; returns mean loss terms."""
        from tqdm.auto import tqdm

        self.model.train()
        self.model.on_epoch_start(self.epoch)
        for plugin in self.plugins:
            plugin.on_epoch_start(self.epoch)
        sums: Dict[str, float] = {}
        n = 0
        # closed on the way out: a failing step stops the prefetching thread at once, not when the frame dies
        with contextlib.closing(prefetch(self.sampler.epoch(), self.prefetch_depth)) as batches:
            bar = tqdm(batches, total=len(self.sampler), desc=f"epoch {self.epoch}",
                       leave=False, disable=None if self.progress is None else not self.progress)
            for item in bar:
                batch, scale = item if isinstance(item, tuple) else (item, 1.0)
                terms = self.train_step(batch, scale)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                if n % 10 == 0:
                    bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        self.scheduler.step()
        return {k: v / max(n, 1) for k, v in sums.items()}

    def validate(self, user_emb=None, item_emb=None) -> Dict[str, float]:
        """Metrics on the validation split (``{"recall@20": ..., ...}``), ranking every item not in the user's
        training set; ``user_emb [U, d]`` / ``item_emb [I, d]`` default to the model's current embeddings."""
        if user_emb is None:
            user_emb, item_emb = self.model.embeddings()
        return evaluate_sharded(self.valid_eval, user_emb, item_emb, self.dist)

    def test(self) -> Dict[str, float]:
        """Metrics on the test split with the model's current embeddings (after :meth:`fit`: the best
        validation epoch's weights), the same protocol as :meth:`validate`."""
        if self._test_eval is None:
            self._test_eval = Evaluator(self.dataset, "test", ks=self.ks,
                                        memory_budget_mb=int(self.config.get("eval_memory_mb", 256)),
                                        device=self.device, retrieval=self.retrieval)
        user_emb, item_emb = self.model.embeddings()
        return evaluate_sharded(self._test_eval, user_emb, item_emb, self.dist)

    # ------------------------------------------------------------------ geometry (CM3 Fig. 1/6)
    def _make_geometry_sample(self, n: int = 2048) -> Dict[str, torch.Tensor]:
        rng = np.random.default_rng(12345)
        train = self.dataset.train
        rows = rng.choice(len(train), size=min(n, len(train)), replace=False)
        users = np.unique(train[:, 0])
        items = np.unique(train[:, 1])
        return {"pairs": torch.from_numpy(train[rows]),
                "users": torch.from_numpy(rng.choice(users, size=min(n, len(users)), replace=False)),
                "items": torch.from_numpy(rng.choice(items, size=min(n, len(items)), replace=False))}

    @torch.no_grad()
    def geometry(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> Dict[str, float]:
        """Alignment of training pairs and uniformity of users / items on the unit sphere."""
        s = self._geometry_sample
        pairs = s["pairs"].to(user_emb.device)
        u = F.normalize(user_emb.float(), dim=-1)
        i = F.normalize(item_emb.float(), dim=-1)
        return {"align": float(alignment(u[pairs[:, 0]], i[pairs[:, 1]])),
                "uniform_user": float(uniformity(u[s["users"].to(u.device)])),
                "uniform_item": float(uniformity(i[s["items"].to(i.device)]))}

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train with early stopping, then evaluate the best checkpoint on test once (on CPU with subnormal
        floats flushed to zero unless ``flush_denormals`` is false: see :mod:`mmgraph.utils.denormals`; large
        products at the config's ``matmul_precision``: see :mod:`mmgraph.nn.linear`)."""
        with flushing_denormals(flush_for(self.config, self.device)), \
                matmul_precision(self.config.get("matmul_precision", "highest"), self.device):
            return self._fit(resume)

    def _fit(self, resume: bool) -> Dict[str, Any]:
        if resume:
            self._load_last()
        start_epoch = self.epoch
        train_seconds = sum(r.get("epoch_seconds", 0.0) for r in self.history)
        if self.stopped():  # a resumed run that had already stopped early trains no further epoch
            if start_epoch < self.max_epochs:
                log.info("the run stopped early at epoch %d (%d validations without a gain in %s, patience %d), so "
                         "no epoch is added: --epochs extends only a run that reached its epoch limit",
                         start_epoch - 1, self.bad_epochs, self.valid_metric, self.patience)
            start_epoch = self.max_epochs
        for epoch in range(start_epoch, self.max_epochs):
            self.epoch = epoch
            t0 = time.perf_counter()
            terms = self.train_epoch()
            t_train = time.perf_counter() - t0
            record: Dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in terms.items()}}
            improved = False
            if (epoch + 1) % self.eval_step == 0:
                t1 = time.perf_counter()
                user_emb, item_emb = self.model.embeddings()
                metrics = self.validate(user_emb, item_emb)
                t_valid = time.perf_counter() - t1
                record.update({f"valid_{k}": v for k, v in metrics.items()})
                if self._geometry_sample is not None:
                    record.update(self.geometry(user_emb, item_emb))
                score = metrics[self.valid_metric]
                if score > self.best_score:  # strict improvement
                    self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                    improved = True
                    self._best_state = {k: v.detach().clone() for k, v in self._state_dict().items()}
                else:
                    self.bad_epochs += 1
            else:
                t_valid, score = 0.0, float("nan")
            record.update({"train_seconds": t_train, "valid_seconds": t_valid,
                           "epoch_seconds": t_train + t_valid, "lr": self.optimizer.param_groups[0]["lr"]})
            self.history.append(record)
            train_seconds += t_train + t_valid
            log.info("epoch %3d | loss %.4f | valid %s %.4f%s | %.2fs (train %.2fs, valid %.2fs)", epoch,
                     terms.get("loss", float("nan")), self.valid_metric, score, " *" if improved else "",
                     t_train + t_valid, t_train, t_valid)
            self.epoch = epoch + 1
            self._checkpoint(improved)
            if self.stopped():
                log.info("early stop at epoch %d: no improvement of %s for %d epochs (best epoch %d, %.4f)",
                         epoch, self.valid_metric, self.bad_epochs, self.best_epoch, self.best_score)
                break
        return self._finish(train_seconds)

    def stopped(self) -> bool:
        """Early stopping as MMRec: stop once more than ``patience`` validations in a row brought no
        strict improvement (i.e. after ``patience + 1`` of them)."""
        return self.bad_epochs > self.patience

    def _finish(self, train_seconds: float) -> Dict[str, Any]:
        if self._best_state is not None:
            self._load_state_dict(self._best_state)
        # each split's embeddings from the run's seed: a model that draws noise at evaluation (LGMRec's
        # Gumbel hyperedges, as MMRec) then scores here exactly as `mmgraph evaluate` / `export` do later
        seed = int(self.config.get("seed", DEFAULT_SEED))
        seed_everything(seed)
        valid = self.validate()
        seed_everything(seed)
        test = self.test()
        result = {"valid": valid, "test": test, "best_epoch": self.best_epoch, "epochs_run": self.epoch,
                  "seconds_per_epoch": float(np.mean([r["epoch_seconds"] for r in self.history]))
                  if self.history else 0.0,
                  "train_seconds": train_seconds}
        if self.out_dir and self.dist.is_main:
            write_json(self.out_dir / "final_metrics.json", result)
        log.info("best epoch %d | valid %s %.4f | test %s %.4f | test ndcg@20 %.4f", self.best_epoch,
                 self.valid_metric, valid[self.valid_metric], self.valid_metric, test[self.valid_metric],
                 test.get("ndcg@20", float("nan")))
        return result

    # ------------------------------------------------------------------ state
    def _state_dict(self) -> Dict[str, torch.Tensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state.update({f"plugins.{k}": v for k, v in self.plugins.state_dict().items()})
        return state

    def _load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        plugin_state = {k[8:]: v for k, v in state.items() if k.startswith("plugins.")}
        if plugin_state:
            self.plugins.load_state_dict(plugin_state)

    def _checkpoint(self, improved: bool) -> None:
        if not self.out_dir or not self.dist.is_main:
            return
        if improved:
            atomic_torch_save({**self._best_state, **fingerprint_tensors(self.fingerprint)}, self.out_dir / "best.pt")
        atomic_torch_save({"state": self._state_dict(), "fingerprint": self.fingerprint,
                           "optimizer": self.optimizer.state_dict(),
                           "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                           "rng": rng_state(), "epoch": self.epoch, "best_score": self.best_score,
                           "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                           "history": json.dumps(self.history)},
                          self.out_dir / "last.pt")
        self._write_history()

    def _write_history(self) -> None:
        write_json(self.out_dir / "history.json", self.history)
        keys: List[str] = []
        for rec in self.history:
            keys.extend(k for k in rec if k not in keys)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_write(self.out_dir / "history.csv", "w") as fh:
            fh.write(buf.getvalue())

    def _load_last(self) -> None:
        path = self.out_dir / "last.pt" if self.out_dir else None
        if path is None or not path.exists():
            raise ConfigError(f"cannot resume: {path} does not exist (was the run started with --out?)")
        ckpt = load_checkpoint(path, map_location=self.device, resume=True)
        saved = ckpt.get("fingerprint") or {}
        for key, value in self.fingerprint.items():
            if saved.get(key) not in (None, value):
                raise ConfigError(f"{path} was written by another run (its {key.replace('_', ' ')} differs from "
                                  "this run's); resume the run that wrote it, or start over with --overwrite")
        self._load_state_dict(ckpt["state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        self.epoch, self.best_score = int(ckpt["epoch"]), float(ckpt["best_score"])
        self.best_epoch, self.bad_epochs = int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
        self.history = json.loads(ckpt["history"])
        best = self.out_dir / "best.pt"
        if best.exists():
            state = load_checkpoint(best, map_location=self.device)
            self._best_state = {k: v for k, v in state.items() if not k.startswith("run.")}
        log.info("resumed from %s at epoch %d (best epoch %d, %s %.4f)", path, self.epoch, self.best_epoch,
                 self.valid_metric, self.best_score)
