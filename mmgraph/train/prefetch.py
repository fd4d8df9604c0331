"""Training batches prepared ahead of the step by a background thread (``prefetch_batches``).

With ``graph_batching: sampled`` every batch carries a sampled subgraph: neighbour sampling, the loader's
collation and, on a CPU, the subgraph's CSR pair run per batch (9 + 5 ms of a 2048-row LightGCN batch on
the 0.1x Electronics preset). :func:`prefetch` moves that work off the step's critical path: one thread
iterates the sampler's epoch and keeps up to ``depth`` batches ready while the current step trains (on a
CPU the trainer has :class:`~mmgraph.train.link_batches.SubgraphBatches` build the CSR pair there too). It
is the same iterator consumed by the same single producer, so the draws, their order and the sampler's
state after the epoch are exactly those of the plain loop (a run's results and ``--resume`` do not depend
on the setting). A thread rather than loader worker processes: workers would each draw from a copy of the
sampler's generator, and their batches would depend on the number of workers.

The thread pays off where a core would otherwise idle during the step: training on a GPU, or on a CPU
with fewer torch threads than cores. With torch already using every core the two compete: on 2 cores
LightGCN still gains a little, FREEDOM loses (TikTok, ``[10,10]``: 0.94 s an epoch without, 1.2 s with),
hence ``auto`` (:func:`resolve_prefetch`) and the README's figures.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterable, Iterator, Optional, TypeVar, Union

import torch

from mmgraph.errors import ConfigError

T = TypeVar("T")

#: batches kept ready by ``prefetch_batches: auto`` where it prefetches
AUTO_DEPTH = 2
_ITEM, _END, _ERROR = range(3)


def prefetch(batches: Iterable[T], depth: int) -> Iterator[T]:
    """Yield the items of ``batches`` in order while a background thread prepares up to ``depth`` ahead.

    ``depth <= 0`` iterates ``batches`` in the caller's thread. An exception raised while producing an
    item is re-raised to the consumer at that item's place (the same exception object). Closing the
    returned iterator early (``break``, an error in the consumer) stops the producer, which then closes
    ``batches``; the thread has always finished when the iterator is exhausted or closed, so the
    sampler's state can be read (a checkpoint) right after.
    """
    if depth <= 0:
        yield from batches
        return
    ready: "queue.Queue[tuple]" = queue.Queue(maxsize=int(depth))
    stop = threading.Event()

    def put(message: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(batches)
        try:
            for item in source:
                if not put((_ITEM, item)):
                    break
            else:
                put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="mmgraph-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def free_cores(threads: Optional[int] = None, local_processes: Optional[int] = None) -> int:
    """Cores this process may use that its torch threads (and those of the other local processes of a
    data-parallel run, ``local_processes`` in all) leave idle."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    threads = torch.get_num_threads() if threads is None else int(threads)
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return cores - threads * max(1, local_processes)


def resolve_prefetch(setting: Union[int, str, None], device: torch.device, sampled: bool) -> int:
    """The number of batches to prefetch for ``prefetch_batches: setting``.

    An integer is used as given (any sampler). ``auto``: :data:`AUTO_DEPTH` for sampled graph training
    (``sampled``: the per-batch sampling is worth hiding) on a GPU, or on a CPU where the torch threads
    leave a core free (:func:`free_cores`); otherwise 0. A full-graph sampler draws a whole epoch at once,
    so there is nothing to overlap.
    """
    if setting is None or setting == "auto":
        if not sampled:
            return 0
        return AUTO_DEPTH if device.type == "cuda" or free_cores() > 0 else 0
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ConfigError(f"prefetch_batches: expected an integer >= 0 or auto, got {setting!r}")
    return setting
