"""Per-operator wall time of a piece of code, measured in place by a dispatch mode.

``torch.profiler``'s CPU activity slows a whole MMGCN training step 1.5-2x on a 2-core CPU and inflates its
large element-wise operators about tenfold (an ``addcmul`` over ``[16018, 256]``: 14-24 ms a call profiled,
~2 ms in place), so its operator table misleads exactly where memory-bound work matters. :class:`OpTimer`
times each ATen call -- forward and backward alike -- with ``time.perf_counter`` around the call alone: the
mode's own Python overhead falls outside the timed span. On CUDA each timed call is synchronised before and
after (slower, but the figures are the kernels').
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: ``(operator, shapes of its first three tensor arguments)``; a list of tensors shows as ``("n tensors",)``
OpKey = Tuple[str, Tuple[Tuple, ...]]


def _shapes(args) -> Tuple[Tuple, ...]:
    out: List[Tuple] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(tuple(a.shape))
        elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            out.append((f"{len(a)} tensors",))
        if len(out) == 3:
            break
    return tuple(out)


def _label(key: OpKey) -> str:
    """``name([d0, d1], [d2])``."""
    name, shapes = key
    return f"{name}(" + ", ".join("[" + ", ".join(str(s) for s in shape) + "]" for shape in shapes) + ")"


def _on_cuda(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)


class OpTimer(TorchDispatchMode):
    """Seconds and calls per operator and argument shapes, for the code run under it::

        with OpTimer() as timer:
            model.loss(batch).loss.backward()
        print(timer.table(rows=12))
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Dict[OpKey, float] = defaultdict(float)
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        cuda = _on_cuda(args)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if cuda:
            torch.cuda.synchronize()
        key = (str(func.overloadpacket.__name__), _shapes(args))
        self.seconds[key] += time.perf_counter() - t0
        self.calls[key] += 1
        return out

    def total(self) -> float:
        """Seconds spent inside operators."""
        return sum(self.seconds.values())

    def top(self, rows: int = 12) -> List[Tuple[OpKey, float, int]]:
        """The ``rows`` costliest ``(key, seconds, calls)``, costliest first."""
        ranked = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:rows]
        return [(key, seconds, self.calls[key]) for key, seconds in ranked]

    def table(self, rows: int = 12, per: int = 1) -> str:
        """The costliest operators as text, times and calls divided by ``per`` (e.g. the number of steps)."""
        total = self.total()
        lines = [f"{'ms':>8s} {'share':>6s} {'calls':>6s}  operator and argument shapes"]
        for key, seconds, calls in self.top(rows):
            share = seconds / total if total else 0.0
            lines.append(f"{1e3 * seconds / per:8.2f} {share:6.1%} {calls / per:6.1f}  {_label(key)}")
        lines.append(f"{1e3 * total / per:8.2f} {1:6.1%} {sum(self.calls.values()) / per:6.1f}  all operators")
        return "\n".join(lines)

    def added_table(self, base: "OpTimer", rows: int = 12, per: int = 1, per_base: int = 1) -> str:
        """What this run spends beyond ``base`` (e.g. a plug-in's step against its backbone's), operator by
        operator: the ``rows`` largest differences, times divided by ``per`` / ``per_base`` steps."""
        mine = {k: v / per for k, v in self.seconds.items()}
        theirs = {k: v / per_base for k, v in base.seconds.items()}
        diff = {k: mine.get(k, 0.0) - theirs.get(k, 0.0) for k in set(mine) | set(theirs)}
        lines = [f"{'+ms':>8s} {'base ms':>8s} {'ms':>8s} {'calls':>6s}  operator and argument shapes"]
        for key in sorted(diff, key=lambda k: -diff[k])[:rows]:
            lines.append(f"{1e3 * diff[key]:8.2f} {1e3 * theirs.get(key, 0.0):8.2f} {1e3 * mine.get(key, 0.0):8.2f} "
                         f"{self.calls[key] / per:6.1f}  {_label(key)}")
        total = sum(mine.values()) - sum(theirs.values())
        lines.append(f"{1e3 * total:8.2f} {1e3 * sum(theirs.values()):8.2f} {1e3 * sum(mine.values()):8.2f} "
                     f"{'':6s}  all operators")
        return "\n".join(lines)
