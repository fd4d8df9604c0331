"""Run folders: one writer at a time, no silent overwrite, and files that provably belong together.

* :class:`RunLock` -- ``DIR/.lock`` held with ``flock`` while a process writes ``DIR``; a second writer fails
  at once naming the holder's pid (:func:`preflight` checks before the data is loaded). The kernel drops the
  lock when its process dies, so a lock left by a dead process is simply taken over.
* :func:`folder_state` / :func:`clear_run_files` -- what a folder holds (a finished or interrupted run, a
  grid) and the removal of exactly the files a run writes (``--overwrite``).
* :func:`dataset_hash`, :func:`config_hash`, :func:`file_hash` -- content hashes stored in ``meta.json``
  and in the checkpoints, so that resuming, evaluating or exporting with other data, another config or a
  checkpoint of another run is an error instead of a number of no real model.
* :func:`load_checkpoint` -- ``torch.load(weights_only=True)`` with one-line errors: a truncated file is
  unreadable, a file with pickled Python objects is refused (never unpickled).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np
import yaml

from mmgraph.errors import ConfigError, DataError
from mmgraph.utils.io import load_yaml

log = logging.getLogger("mmgraph.train")

LOCK_NAME = ".lock"
#: every file a single run writes (``--overwrite`` removes these and nothing else)
RUN_FILES = ("config.yaml", "meta.json", "history.csv", "history.json", "best.pt", "last.pt",
             "final_metrics.json", "train.log")
GRID_FILES = ("grid_summary.json", "config.yaml", "meta.json", "grid.log")
POINT_DIR = re.compile(r"^point_\d{3,}$")
#: checkpoint entries that identify the run (uint8 tensors holding the hex digests' bytes)
FINGERPRINT_KEYS = ("run.config_hash", "run.data_hash")


# ------------------------------------------------------------------------------------------ lock
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_holder(path: Path) -> Dict[str, Any]:
    for _ in range(20):  # the holder writes its pid right after locking: wait a moment for it
        try:
            text = path.read_text()
        except OSError:
            text = ""
        if text.strip():
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return {}
        time.sleep(0.01)
    return {}


class RunLock:
    """Exclusive write access to a run folder for this process (a context manager).

    Raises :class:`ConfigError` ``"DIR is being written by another mmgraph process (pid N ...)"`` when
    another live process holds it. Once held, the temporary files of run-file writes a killed process left
    are removed (only the holder writes those files); a folder the lock created is removed again on
    release when nothing was written into it (a run refused before it started leaves no empty folder)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self._created = False

    def acquire(self) -> "RunLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} exists and is not a folder; choose another --out")
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run folder {self.folder} ({exc.strerror or exc})") from None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusive-create pid file
            return self._acquire_pidfile()._clear_stale_temps()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(_read_holder(self.path)) from None
            try:  # the file may have been unlinked by its previous holder between open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder_fd(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            log.warning("%s: taking over the lock left by pid %s, which is no longer running", self.folder,
                        previous.get("pid"))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)   # reading the previous holder moved the offset: write from the start
        os.write(fd, json.dumps(self._holder()).encode())
        os.fsync(fd)
        self._fd = fd
        return self._clear_stale_temps()

    def _clear_stale_temps(self) -> "RunLock":
        remove_stale_temps(self.folder)
        return self

    def _holder(self) -> Dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(sys.argv)[:300]}

    def _busy(self, holder: Dict[str, Any]) -> ConfigError:
        pid = holder.get("pid", "unknown")
        since = f", since {holder['started']}" if holder.get("started") else ""
        return ConfigError(f"{self.folder} is being written by another mmgraph process (pid {pid}{since}); "
                           "wait for it to finish or stop it, or choose another --out")

    def _acquire_pidfile(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if _pid_alive(int(holder.get("pid", 0) or 0)):
                    raise self._busy(holder) from None
                log.warning("%s: taking over the lock left by pid %s, which is no longer running", self.folder,
                            holder.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, json.dumps(self._holder()).encode())
            self._fd = fd
            return self
        raise self._busy(_read_holder(self.path))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one can hold the unlinked inode
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created:
            with contextlib.suppress(OSError):   # not empty (the run wrote files), or gone: keep it
                self.folder.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def fail_if_busy(folder) -> None:
    """Raise :class:`RunLock`'s "being written by another mmgraph process (pid N)" error when a live process
    holds ``folder``'s lock; otherwise do nothing (reads only, creates nothing). A writer calls this before
    its slow work (loading the data) to fail at once; :class:`RunLock` still decides, later."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return
    holder = _read_holder(path)
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return   # no holder yet, or the lock of a process that died: RunLock takes it over
    try:
        import fcntl
    except ImportError:   # pid-file locks (Windows): a live pid holds it
        raise RunLock(folder)._busy(holder) from None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:   # the pid may have been reused by another program: the flock says whether the lock is held
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise RunLock(folder)._busy(holder) from None
    finally:
        os.close(fd)


def _read_holder_fd(fd: int) -> Dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data.decode() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


# ------------------------------------------------------------------------------------------ folder state
def read_meta(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def dataset_file(folder) -> Optional[str]:
    """The name of the interaction file when ``folder`` is a dataset folder (a ``*.inter`` file and no run
    ``config.yaml``), else None."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / "config.yaml").exists():
        return None
    inter = sorted(p.name for p in folder.glob("*.inter"))
    return inter[0] if inter else None


def read_run_config(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / "config.yaml"
    try:
        config = load_yaml(path.read_text())
    except FileNotFoundError:
        data = dataset_file(folder)
        what = f"but a dataset folder: it holds {data}" if data else "(config.yaml is missing)"
        raise ConfigError(f"{folder}: not a run folder {what}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a mapping of key: value")
    return config


def folder_state(folder) -> str:
    """``missing`` | ``empty`` (no run files) | ``finished`` | ``interrupted`` (a run that did not write
    ``final_metrics.json``) | ``grid`` / ``grid-finished`` (a grid search folder)."""
    folder = Path(folder)
    if not folder.exists():
        return "missing"
    if not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    points = [p for p in folder.iterdir() if p.is_dir() and POINT_DIR.match(p.name)]
    if (folder / "grid_summary.json").exists():
        return "grid-finished"
    if points or read_meta(folder).get("kind") == "grid":
        return "grid"
    if (folder / "final_metrics.json").exists():
        return "finished"
    if any((folder / name).exists() for name in RUN_FILES):
        return "interrupted"
    return "empty"


def describe_run(folder) -> str:
    meta = read_meta(folder)
    parts = [str(meta[k]) for k in ("method",) if meta.get(k)]
    if meta.get("data"):
        parts.append(f"on {Path(str(meta['data'])).name}")
    return " ".join(parts)


def check_fresh_folder(folder, overwrite: bool, grid: bool = False) -> None:
    """Refuse to start a run in a folder that holds one (finished or not) unless ``overwrite``; with
    ``overwrite``, remove exactly the files a run (or a grid) writes."""
    folder = Path(folder)
    data = dataset_file(folder)
    if data:   # its meta.json is the dataset's: never taken for a run's, never removed by --overwrite
        raise ConfigError(f"{folder} is a dataset folder (it holds {data}); --out names the folder for the run's "
                          "own files: choose another")
    state = folder_state(folder)
    if state in ("missing", "empty"):
        return
    if overwrite:
        clear_run_files(folder)
        return
    what = describe_run(folder)
    what = f" ({what})" if what else ""
    # the CLI's flags, with their Python form (train / grid_search keyword arguments)
    overwrite_hint, resume_hint = "--overwrite (overwrite=True in Python)", "--resume (resume=True in Python)"
    if state == "finished":
        raise ConfigError(f"{folder} holds a finished run{what}; pass {overwrite_hint} to replace it, or choose "
                          "another --out")
    if state == "grid-finished":
        raise ConfigError(f"{folder} holds a finished grid search{what}; pass {overwrite_hint} to replace it, "
                          "or choose another --out")
    if state == "grid":
        raise ConfigError(f"{folder} holds an interrupted grid search{what}; continue it with {resume_hint}, or "
                          f"pass {overwrite_hint} to start over")
    raise ConfigError(f"{folder} holds an interrupted run{what}; continue it with {resume_hint}, or pass "
                      f"{overwrite_hint} to start over")


def preflight(folder, overwrite: bool = False) -> None:
    """What a new run (or grid) in ``folder`` is checked for under its lock -- another writer, a run already
    there without ``overwrite`` -- checked before any slow work, so that these errors come at once. Reads
    only; the writer repeats the checks under :class:`RunLock`."""
    folder = Path(folder)
    if not folder.exists():
        return
    fail_if_busy(folder)
    if not overwrite or dataset_file(folder):
        check_fresh_folder(folder, overwrite=False)


def remove_stale_temps(folder) -> None:
    """Remove the temporary files that writes of run files left when their process was killed
    (``.history.json.<random>.tmp``, see :func:`mmgraph.utils.io.atomic_write`)."""
    for name in set(RUN_FILES) | set(GRID_FILES):
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def clear_run_files(folder) -> None:
    """Remove the files a run or a grid writes, and the temporary files of writes a killed run left
    unfinished (``.history.json.<random>.tmp``, see :func:`mmgraph.utils.io.atomic_write`)."""
    folder = Path(folder)
    for name in set(RUN_FILES) | set(GRID_FILES):
        (folder / name).unlink(missing_ok=True)
    remove_stale_temps(folder)
    for sub in folder.iterdir():
        if sub.is_dir() and POINT_DIR.match(sub.name):
            shutil.rmtree(sub)
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != LOCK_NAME)
    if others:   # exports, analyses: the user's, so kept -- but they describe the model being replaced
        log.warning("%s: the previous run's files are replaced; %d other file(s) stay and describe the previous "
                    "model: %s%s", folder, len(others), ", ".join(others[:5]), ", ..." if len(others) > 5 else "")


def discard_unstarted_grid(folder) -> None:
    """A new grid whose first run was refused: remove the ``config.yaml`` / ``meta.json`` it wrote and its
    empty point folders, so the folder can take the corrected command. Anything a run wrote keeps it all."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME]
    if any(p.parent != folder or p.name not in ("config.yaml", "meta.json") for p in files):
        return
    for path in files:
        path.unlink(missing_ok=True)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()


# ------------------------------------------------------------------------------------------ hashes
def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def _update_array(h, name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(f"|{name}|{arr.dtype.str}|{arr.shape}|".encode())
    flat = arr.reshape(-1)
    step = max(1, (1 << 24) // max(arr.itemsize, 1))
    for s in range(0, flat.size, step):
        h.update(memoryview(flat[s:s + step]).cast("B"))


def dataset_hash(dataset) -> str:
    """Content hash of a :class:`RecDataset` as loaded: sizes, the three splits and the item features."""
    h = _digest()
    h.update(f"users={dataset.n_users}|items={dataset.n_items}".encode())
    for split in ("train", "valid", "test"):
        _update_array(h, split, np.asarray(getattr(dataset, split), dtype=np.int64))
    for name in sorted(dataset.features):
        _update_array(h, f"feat:{name}", np.asarray(dataset.features[name], dtype=np.float32))
    return h.hexdigest()


def config_hash(method: str, config: Dict[str, Any], ignore: Iterable[str] = ()) -> str:
    """Hash of what a run trains: the method and its config, without ``ignore`` (runtime keys such as the
    epoch budget or the device, which may change on ``--resume``)."""
    skip = set(ignore) | {"grid", "method"}
    canon = {k: v for k, v in config.items() if k not in skip}
    # through YAML, as config.yaml stores it, so the hash of a re-read config.yaml is the same
    canon = yaml.safe_load(yaml.safe_dump(canon, sort_keys=True))
    h = _digest()
    h.update(str(method).lower().encode())
    h.update(json.dumps(canon, sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_hash(path) -> str:
    h = _digest()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_tensors(fingerprint: Dict[str, str]) -> Dict[str, Any]:
    """``{"run.config_hash": uint8 tensor, ...}`` to store in a state dict (loads with weights_only)."""
    import torch

    return {f"run.{k}": torch.tensor(list(bytes.fromhex(v)), dtype=torch.uint8) for k, v in fingerprint.items()}


def read_fingerprint(state: Dict[str, Any]) -> Dict[str, str]:
    out = {}
    for key in FINGERPRINT_KEYS:
        if key in state:
            out[key[4:]] = bytes(state[key].tolist()).hex()
    return out


# ------------------------------------------------------------------------------------------ checkpoints
def load_checkpoint(path, map_location=None, resume: bool = False) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``. ``best.pt`` must be a plain state dict
    (``{name: tensor}``); ``resume=True`` expects ``last.pt``'s resume state. One-line errors otherwise."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    try:
        with warnings.catch_warnings():   # torch's notes on a foreign pickle protocol: the error below says it
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise DataError(f"{path}: refused: it holds pickled Python objects, not a plain state dict of "
                            "tensors (mmgraph never unpickles checkpoints)") from None
        raise DataError(f"{path}: unreadable checkpoint (truncated or corrupt)") from None
    except Exception as exc:  # zip / EOF / storage errors from a truncated or foreign file
        raise DataError(f"{path}: unreadable checkpoint (truncated or corrupt{_load_error_detail(exc)})") from None
    if resume:
        need = ("state", "optimizer", "scheduler", "sampler", "rng", "epoch", "best_score", "best_epoch",
                "bad_epochs", "history")
        if not isinstance(obj, dict) or any(k not in obj for k in need) or not _is_state_dict(obj["state"]):
            raise DataError(f"{path}: refused: not an mmgraph resume checkpoint")
        return obj
    if not _is_state_dict(obj):
        raise DataError(f"{path}: refused: not a plain state dict of tensors")
    return obj


def _load_error_detail(exc: Exception) -> str:
    """``": <the first sentence of torch's message>"`` (its C++ location and advice dropped), or the
    exception's type when the message says nothing readable."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
    text = re.split(r"(?<=\w)\.\s", text, maxsplit=1)[0][:160]
    if "weights_only" in text or "unpickl" in text.lower():
        return ""
    return f": {text}" if re.search(r"[A-Za-z]{3}", text) else f": {type(exc).__name__}"


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
