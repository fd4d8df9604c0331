"""Data-parallel training on ``torch.distributed`` (launched by ``torchrun``), and the launcher.

``mmgraph train ... --nproc N`` re-runs the same command under ``python -m torch.distributed.run
--standalone --nproc_per_node N -m mmgraph ...``; ``torchrun -m mmgraph train ...`` works directly.
Each process reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment torchrun sets and
joins one process group: NCCL when the run's device is CUDA (one GPU per local rank), else gloo.

What is split across ranks (``world`` processes):

* training: every rank draws the same global BPR batches from the same seed, and takes the rows
  ``rank::world`` of each (:class:`ShardedBatches`); :class:`~torch.nn.parallel.DistributedDataParallel`
  averages the gradients. Each local loss is scaled by ``world * n_local / n_global``, so a loss that is
  a mean over batch rows gets exactly the gradient of one process on the whole batch;
* evaluation: users are split with :meth:`Evaluator.shard`; per-rank metric sums and counts are
  all-reduced (:func:`evaluate_sharded`), so every rank sees the same metrics (early stopping agrees);
* export: users are split the same way and the top-K rows gathered on rank 0 (:func:`gather_rows`).

Only rank 0 writes the run folder (config, checkpoints, history, final metrics).
"""
from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

from mmgraph.errors import ConfigError

log = logging.getLogger("mmgraph.train")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world`` (``world == 1``: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> DistContext:
    """The context of the process group already initialised, else :data:`SINGLE`."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                           dist.get_backend())
    return SINGLE


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for a single process).

    ``device``: the run's device setting; ``auto``/``cuda`` on a machine with GPUs gives each local rank
    its own GPU and the NCCL backend; otherwise gloo on CPU.
    """
    if env_world_size() <= 1:
        return SINGLE
    if dist.is_initialized():
        return current()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: run with one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device) != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              "use --nproc <= the number of GPUs, or --device cpu")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend)
    ctx = current()
    if not ctx.is_main:  # one log for the run: the other ranks only report problems
        logging.getLogger("mmgraph").setLevel(logging.WARNING)
    log.info("data-parallel training: %d processes, backend %s", ctx.world, backend)
    return ctx


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """``cuda`` -> ``cuda:<local rank>`` in a multi-process run."""
    if ctx.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


# --------------------------------------------------------------------------------------------- training
class ShardedBatches:
    """This rank's part of the global batches of ``sampler`` (a BPR sampler: ``epoch()``, ``len``,
    ``state_dict``).

    Every rank runs the same global sampler (same seed, so the same rows and negatives) and keeps the
    rows ``rank::world`` of each batch; ``epoch()`` yields ``(local batch, scale)`` with
    ``scale = world * n_local / n_global``. A global batch smaller than ``world`` leaves some ranks
    empty: they get the batch's first row with ``scale = 0`` (a step of zero gradient keeps every rank
    in the same number of all-reduces).
    """

    def __init__(self, sampler, ctx: DistContext):
        self.sampler, self.ctx = sampler, ctx

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self) -> Iterator:
        world, rank = self.ctx.world, self.ctx.rank
        for batch in self.sampler.epoch():
            n = len(batch)
            index = torch.arange(rank, n, world)
            scale = world * len(index) / n
            if len(index) == 0:
                index = torch.zeros(1, dtype=torch.long)
            yield _select(batch, index), scale

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def _select(batch, index: torch.Tensor):
    from mmgraph.models.base import Batch

    return Batch(batch.users[index], batch.pos[index], batch.neg[index],
                 {k: v[index] for k, v in batch.extras.items()})


class LossModule(torch.nn.Module):
    """The model's (and plug-ins') training loss as ``forward(batch)``, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` sees the step (its gradient hooks are armed in
    ``forward``). Returns ``(loss, terms, LossOutput)``."""

    def __init__(self, model: torch.nn.Module, plugins: torch.nn.ModuleList):
        super().__init__()
        self.model, self.plugins = model, plugins

    def forward(self, batch):
        out = self.model.loss(batch)
        loss, terms = out.loss, dict(out.terms)
        for plugin in self.plugins:
            for name, value in plugin.loss(batch, out).items():
                loss = loss + value
                terms[f"{type(plugin).__name__.lower()}_{name}"] = value
        return loss, terms, out


def wrap_ddp(module: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` for a multi-process run (else ``module``).

    Sparse buffers (the fixed adjacencies, rebuilt identically on every rank from the graph) are not
    broadcast; parameters a step does not use (e.g. a plug-in's table on some batches) are allowed.
    """
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    skip = [name for name, buf in module.named_buffers() if buf is not None and buf.layout != torch.strided]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, skip)
    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    # no buffer broadcast before each forward (buffers are synced once, at construction); torch >= 2.13 names
    # the switch forward_sync_buffers and warns on the older broadcast_buffers
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True, **no_sync)


# ------------------------------------------------------------------------------------------- evaluation
def evaluate_sharded(evaluator, user_emb, item_emb, ctx: DistContext) -> Dict[str, float]:
    """Full-ranking metrics with the users split over the ranks (means over all evaluated users, the
    same on every rank). One process: :meth:`Evaluator.evaluate`."""
    if not ctx.enabled:
        return evaluator.evaluate(user_emb, item_emb)
    sums, count = evaluator.evaluate_shard(user_emb, item_emb, users=evaluator.shard(ctx.rank, ctx.world))
    names = list(evaluator.names)
    device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else torch.device("cpu")
    packed = torch.tensor([sums[n] for n in names] + [float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    total = float(packed[-1])
    return {n: (float(packed[k]) / total if total else 0.0) for k, n in enumerate(names)}


def gather_rows(part: Any, ctx: DistContext) -> Optional[List[Any]]:
    """Every rank's ``part`` as a list (rank order) on rank 0; ``None`` on the others."""
    if not ctx.enabled:
        return [part]
    out: Optional[List[Any]] = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(part, out, dst=0)
    return out


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- launcher
def strip_nproc(argv: Sequence[str]) -> List[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m mmgraph <argv>`` in ``nproc`` processes under torchrun (standalone rendezvous on
    this machine); returns its exit status.

    torchrun's per-run log folder (its workers' error files; no logs unless redirected) goes to a temporary
    folder removed when the launch ends: left to itself, torchrun makes a ``torchelastic_*`` folder in the
    temporary directory per launch and never removes it. A log folder the user chose (``PET_LOG_DIR``,
    torchrun's variable for ``--log-dir``) is used as it is."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if env_world_size() > 1:
        raise ConfigError("--nproc inside a torchrun launch: give the process count to torchrun only")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="mmgraph-torchrun-") as logs:
        own_logs = [] if env.get("PET_LOG_DIR") else [f"--log-dir={logs}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *own_logs, "-m", "mmgraph", *strip_nproc(argv)]
        log.info("launching %d processes: %s", nproc, " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1,
                                preexec_fn=_terminate_with_parent if sys.platform.startswith("linux") else None)
        relay_stderr(proc.stderr, sys.stderr)
        code = proc.wait()
    return 2 if code != 0 and code != 130 else code


def _terminate_with_parent() -> None:
    """In the torchrun child (Linux): SIGTERM when this launcher dies, however it dies (SIGKILL included);
    torchrun then stops its workers, which would otherwise train on, orphaned, holding the run's lock."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


#: the launcher's own failure report starts with one of these (the workers already said what failed)
_LAUNCHER_REPORT = ("Traceback (most recent call last)", "torch.distributed.elastic", "ChildFailedError",
                    "[W", "[E", "W1", "E1")


def relay_stderr(src, dst) -> None:
    """Copy the workers' stderr to ``dst`` as it comes, each ``mmgraph: error:`` line once (every rank
    reports the same error) and without torchrun's multi-line failure report."""
    seen = set()
    muted = False
    for line in src:
        if seen and line.startswith("[rank"):   # the other ranks' reports of the collective the error broke
            continue
        if line.startswith("mmgraph: error:"):
            if line not in seen:
                seen.add(line)
                dst.write(line)
                dst.flush()
            continue
        if line.lstrip().startswith(_LAUNCHER_REPORT) and "mmgraph" not in line.split(":", 1)[0]:
            muted = muted or line.startswith(("Traceback", "torch.distributed.elastic"))
            continue
        if not muted:
            dst.write(line)
            dst.flush()

