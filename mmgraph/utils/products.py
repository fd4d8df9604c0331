"""The dense matrix products a piece of code runs, and how long they take on their own.

A training step's dense products (``mm``, ``addmm``, ``bmm``, ``mv``, ... with their shapes) are a lower bound
on its time that no tuning of the rest (element-wise work, gathers, Python) can remove: timed back to back on
random operands of the same shapes, they give the step's floor on this machine unless the arithmetic itself
changes. ``scripts/bench_methods.py --floor`` prints it per method next to the measured step.

Sparse products (an operand not strided: CSR / COO adjacencies) are counted apart: their cost depends on the
sparsity, not the shapes, so :meth:`ProductCounter.time_sparse_alone` times them on the recorded sparse factor
itself (the counter keeps a reference to it) with a random dense factor of the recorded shape.
"""
from __future__ import annotations

import time
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmgraph.nn.linear import KERNEL as _ONEDNN

aten = torch.ops.aten

#: operator -> kind of product
_PRODUCTS = {
    aten.mm.default: "mm", aten.mm.out: "mm", aten.addmm.default: "mm", aten.addmm.out: "mm",
    aten.addmm_.default: "mm", aten.bmm.default: "bmm", aten.bmm.out: "bmm", aten.baddbmm.default: "bmm",
    aten.baddbmm_.default: "bmm", aten.mv.default: "mv", aten.mv.out: "mv", aten.addmv.default: "mv",
    aten.addmv_.default: "mv", aten.addmv.out: "mv", aten.dot.default: "dot",
    aten._sparse_addmm.default: "mm",
}
#: oneDNN's ``x @ W.T`` (:mod:`mmgraph.nn.linear`): factors ``(x [m, k], W [n, k])``
_LINEAR = {getattr(_ONEDNN, name) for name in ("default", "binary") if _ONEDNN is not None and hasattr(_ONEDNN, name)}

#: ``(kind, shape)``: ``mm (m, k, n)``, ``bmm (b, m, k, n)``, ``mv (m, k)``, ``dot (k,)``
Product = Tuple[str, Tuple[int, ...]]


def _factors(args) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two factors: the last two positional tensors ((a, b), or (self, a, b) for the add* forms; an
    ``out=`` tensor comes as a keyword)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return tensors[-2], tensors[-1]


def flops(product: Product) -> int:
    """Floating-point operations of one product (a multiply-add counts two)."""
    kind, shape = product
    total = 2
    for s in shape:
        total *= int(s)
    return total


class ProductCounter(TorchDispatchMode):
    """A dispatch mode recording the dense products run under it (forward and backward alike)::

        with ProductCounter() as counter:
            loss = model.loss(batch).loss
            loss.backward()
        counter.gflop(), counter.time_alone()
    """

    def __init__(self) -> None:
        super().__init__()
        self.dense: List[Product] = []   # the dense products, in call order
        self.sparse = 0                  # products with a sparse operand
        #: the sparse-times-dense ones among them: (sparse factor, dense factor's shape), in call order
        self.sparse_products: List[Tuple[torch.Tensor, Tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _LINEAR:
            x, w = args[0], args[2 if func is getattr(_ONEDNN, "binary", None) else 1]
            self.dense.append(("mm", (x.shape[0], x.shape[1], w.shape[0])))
            return func(*args, **(kwargs or {}))
        kind = _PRODUCTS.get(func)
        if kind is not None:
            a, b = _factors(args)
            if a.layout != torch.strided or b.layout != torch.strided:
                self.sparse += 1
                if a.layout != torch.strided and b.layout == torch.strided and b.dim() == 2:
                    self.sparse_products.append((a, tuple(b.shape)))
            elif kind == "mm":
                self.dense.append((kind, (a.shape[0], a.shape[1], b.shape[1])))
            elif kind == "bmm":
                self.dense.append((kind, (a.shape[0], a.shape[1], a.shape[2], b.shape[2])))
            elif kind == "mv":
                self.dense.append((kind, (a.shape[0], a.shape[1])))
            else:
                self.dense.append((kind, (a.shape[0],)))
        return func(*args, **(kwargs or {}))

    def gflop(self) -> float:
        return sum(flops(p) for p in self.dense) / 1e9

    def time_alone(self, dtype: torch.dtype = torch.float32, device="cpu", min_seconds: float = 0.02) -> float:
        """Seconds the recorded dense products take run alone, back to back (each distinct shape timed once,
        on random operands, then weighted by its count)."""
        counts: Dict[Product, int] = {}
        for p in self.dense:
            counts[p] = counts.get(p, 0) + 1
        return sum(n * time_product(p, dtype, device, min_seconds) for p, n in counts.items())

    def time_sparse_alone(self, min_seconds: float = 0.02) -> float:
        """Seconds the recorded sparse x dense products take run alone: each distinct (sparse factor, shape)
        timed once on its own sparse factor and a random dense one, weighted by its count. A product with the
        sparse factor second is counted in :attr:`sparse` but not timed."""
        counts: Dict[Tuple[int, Tuple[int, ...]], List] = {}
        for adj, shape in self.sparse_products:
            entry = counts.setdefault((id(adj), shape), [adj, 0])
            entry[1] += 1
        return sum(n * time_sparse_product(adj, shape, min_seconds) for (_, shape), (adj, n) in counts.items())


def _operands(product: Product, dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    kind, shape = product
    make = {"mm": lambda m, k, n: ((m, k), (k, n)), "bmm": lambda b, m, k, n: ((b, m, k), (b, k, n)),
            "mv": lambda m, k: ((m, k), (k,)), "dot": lambda k: ((k,), (k,))}[kind]
    sa, sb = make(*shape)
    return torch.randn(sa, dtype=dtype, device=device), torch.randn(sb, dtype=dtype, device=device)


def time_product(product: Product, dtype: torch.dtype = torch.float32, device="cpu",
                 min_seconds: float = 0.02) -> float:
    """Median seconds of one product of that kind and shape, repeated for at least ``min_seconds``; a float32
    CPU ``mm`` takes the faster of PyTorch's kernel and oneDNN's (:mod:`mmgraph.nn.linear`)."""
    kind = product[0]
    op = {"mm": torch.mm, "bmm": torch.bmm, "mv": torch.mv, "dot": torch.dot}[kind]
    a, b = _operands(product, dtype, device)
    seconds = _median_seconds(lambda: op(a, b), torch.device(device), min_seconds)
    if kind == "mm" and _ONEDNN is not None and a.device.type == "cpu" and dtype == torch.float32:
        w = b.t().contiguous()
        try:
            seconds = min(seconds, _median_seconds(lambda: _ONEDNN(a, w, None, "none", [], ""), a.device,
                                                   min_seconds))
        except (RuntimeError, NotImplementedError):   # a build whose private kernel changed: PyTorch's alone
            pass
    return seconds


def time_sparse_product(adj: torch.Tensor, shape: Tuple[int, ...], min_seconds: float = 0.02) -> float:
    """Median seconds of ``adj @ x`` for the sparse ``adj [m, k]`` and a random dense ``x`` of ``shape`` (``[k,
    n]``), written into a fresh buffer with ``addmm_(beta=0)`` as :func:`mmgraph.nn.sparse.csr_mm` does (the
    fastest form on CPU)."""
    x = torch.randn(shape, dtype=adj.dtype, device=adj.device)
    return _median_seconds(lambda: x.new_empty(adj.shape[0], shape[1]).addmm_(adj, x, beta=0), adj.device,
                           min_seconds)


def _median_seconds(fn, dev: torch.device, min_seconds: float) -> float:
    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        fn()                          # warm-up
        sync()
        times: List[float] = []
        spent = 0.0
        while spent < min_seconds or len(times) < 3:
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
            spent += times[-1]
    times.sort()
    return times[len(times) // 2]
