"""Seeding and environment capture for reproducible runs."""
from __future__ import annotations

import platform
import random
import sys
from typing import Dict, Optional

import numpy as np
import torch

from mmgraph.nn import linear

#: the seed of a run that sets none (configs/defaults.yaml says the same)
DEFAULT_SEED = 999


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def library_versions() -> Dict[str, str]:
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("mmgraph", "torch", "torch-geometric", "numpy", "faiss-cpu", "faiss-gpu-cu12", "pandas",
                "torch-scatter", "torch-sparse"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    versions["cuda"] = torch.version.cuda or "none"
    # whether large CPU products go through oneDNN (mmgraph.nn.linear): it changes the float rounding
    versions["onednn_linear"] = "on" if linear.ENABLED else "off"
    # whether matmul_precision=medium computes the CPU's large products in bfloat16 here
    versions["cpu_bf16_products"] = "native" if linear.bf16_native() else "no"
    return versions


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    # plain lists/ints/tensors only, so checkpoints load with torch.load(weights_only=True)
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuplify(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": int(np_state["state"]["pos"])}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(obj):
    if isinstance(obj, list):
        return tuple(_tuplify(x) for x in obj)
    return obj


def parse_device(name: str) -> Optional[torch.device]:
    """The device ``name`` selects, without asking whether it is present: ``None`` for ``auto``; a name other
    than ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` is a :class:`~mmgraph.errors.ConfigError` (checked with the
    config, before any data is read)."""
    from mmgraph.errors import ConfigError

    name = str(name).strip()
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: mmgraph runs on cpu or cuda (or auto)")
    return device


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a device this torch cannot
    use is a :class:`~mmgraph.errors.ConfigError` (not a CUDA assertion deep in the first tensor move)."""
    from mmgraph.errors import ConfigError

    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise ConfigError(f"device {name!r}: {why} (torch {torch.__version__}); use --device cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
