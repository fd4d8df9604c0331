#!/usr/bin/env python
"""MMRec vs mmgraph, side by side on one dataset: every MMRec baseline through ``../shared/peers/sbs.sh``
(MMRec, then ``mmgraph train``, back to back, same settings, seed 999) and one comparison table::

    python scripts/baselines_sbs.py --out runs/baselines_sbs --doc docs/baselines.md
    python scripts/baselines_sbs.py --methods lightgcn --epochs 2 --out /tmp/bsbs_smoke   # a quick smoke
    python scripts/baselines_sbs.py --methods dragon,dualgnn --set dragon:learning_rate=1e-4
    python scripts/baselines_sbs.py --report --out runs/baselines_sbs --doc docs/baselines.md  # re-render only

Settings: per method, every axis of ``configs/methods/<method>.yaml``'s ``grid:`` block (and every axis
MMRec's ``configs/model/<Model>.yaml`` lists under ``hyper_parameters``) at mmgraph's default value for it --
MMRec's key names, MMRec's defaults, except where the yaml's comments say MMRec's first grid value diverges
(DRAGON / DualGNN ``learning_rate``). The same explicit ``key=value`` list goes to both sides (sbs.sh forwards
it to both), so neither side runs an axis at a value of its own. ``--set METHOD:KEY=VALUE`` changes one
(``--set KEY=VALUE``: for every method that has the key).

Runs go to early stopping on both sides (``--epochs 1000``, the default); ``--epochs N`` caps both at N.
Each method's result is appended to ``OUT/results.jsonl`` as it finishes; a finished method (same data,
epochs and settings) is skipped when the command runs again (``--rerun`` runs it again), a failing one
records its error and the next method runs. ``OUT/baselines.md`` (and ``--doc FILE``) holds the table;
``OUT/logs/<method>.log`` each run's output. Timings are comparable only within a row (back to back).

``--doc FILE`` keeps the records its table is rendered from beside it, in ``FILE`` with the suffix ``.jsonl``
(``docs/baselines.jsonl``, committed with the doc): every run's record is added to it, and the doc's table is
rendered from all of them, so a row survives the loss of the ``--out`` folder (scratch runs on another machine).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmgraph.utils.io import atomic_write  # noqa: E402

#: mmgraph method -> MMRec model name (MMRec's models/<lower>.py, configs/model/<Model>.yaml), in table order
METHODS: Dict[str, str] = {
    "lattice": "LATTICE", "lgmrec": "LGMRec", "damrs": "DAMRS", "smore": "SMORE", "mgcn": "MGCN",
    "dragon": "DRAGON", "slmrec": "SLMRec", "grcn": "GRCN", "dualgnn": "DualGNN", "mmgcn": "MMGCN",
    "lightgcn": "LightGCN", "freedom": "FREEDOM", "vbpr": "VBPR", "bm3": "BM3",
}
FULL_EPOCHS = 1000   # sbs.sh: at 1000 both sides run their own budget with early stopping
SEED = 999           # fixed by sbs.sh
RESULTS = "results.jsonl"
TABLE = "baselines.md"
#: per-method findings (a gap's cause, a peer bug, a curve shape): ``method: text``, printed under the table
NOTES = ROOT / "docs" / "baselines_notes.yaml"

_SBS_RE = re.compile(
    r"peer (?P<ps>[0-9.]+) s/epoch \((?P<pe>\d+) epochs, test R@20 (?P<pr>[0-9.a-z]+)\) \| "
    r"mmgraph (?P<ms>[0-9.]+) s/epoch \((?P<me>\d+) epochs, test R@20 (?P<mr>[0-9.a-z]+)\) \| "
    r"speed-up x(?P<x>[0-9.]+)")
_PEER_RE = re.compile(r"s_per_epoch=(?P<s>[0-9.]+) epochs=(?P<e>\d+) test_recall@20=(?P<r>[0-9.a-z]+) "
                      r"test_ndcg@20=(?P<n>[0-9.a-z]+)")

# mmgraph for sbs.sh ($MMGRAPH): this checkout's mmgraph, and afterwards the --out run folder's metrics copied
# to $BSBS_CAPTURE (sbs.sh keeps only the test R@20 of them)
_MMGRAPH_WRAPPER = """#!/usr/bin/env bash
# Written by scripts/baselines_sbs.py: `mmgraph` for sbs.sh that keeps the run's metrics in $BSBS_CAPTURE.
set -uo pipefail
out="" prev=""
for a in "$@"; do [[ $prev == --out ]] && out=$a; prev=$a; done
extra=(); [[ ${1:-} == train ]] && extra=(--no-progress) && [[ -n ${OMP_NUM_THREADS:-} ]] \\
  && [[ " $* " != *" threads="* ]] && extra+=(--set "threads=$OMP_NUM_THREADS")
%(python)s -m mmgraph "$@" "${extra[@]}"
rc=$?
if [[ -n $out && -n ${BSBS_CAPTURE:-} ]]; then
  mkdir -p "$BSBS_CAPTURE"
  for f in final_metrics.json history.json config.yaml; do [[ -f $out/$f ]] && cp "$out/$f" "$BSBS_CAPTURE/"; done
fi
exit $rc
"""

# $PEER_PYTHON for run_peer.sh: the peers' python; run_peer's two inline scripts (`python - FILE`) have their
# output kept too: the settings MMRec runs at and its last line (s/epoch, epochs, test R@20 and NDCG@20)
_PEER_WRAPPER = """#!/usr/bin/env bash
# Written by scripts/baselines_sbs.py: the peers' python for run_peer.sh, keeping its report lines.
py=%(python)s
if [[ ${1:-} == - && -n ${BSBS_CAPTURE:-} ]]; then
  mkdir -p "$BSBS_CAPTURE"
  case ${2:-} in
    */run.log) echo "$2" > "$BSBS_CAPTURE/peer_log_path"; "$py" "$@" | tee "$BSBS_CAPTURE/peer_line"
               exit "${PIPESTATUS[0]}" ;;
    *.yaml) "$py" "$@" | tee "$BSBS_CAPTURE/peer_settings"; exit "${PIPESTATUS[0]}" ;;
  esac
fi
exec "$py" "$@"
"""


# --------------------------------------------------------------------------------------------- settings
def shared_dir() -> Path:
    """``<repo>/../shared``; from a git worktree elsewhere, the one beside the main checkout."""
    here = ROOT.parent / "shared"
    if here.is_dir():
        return here
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute",
                                 "--git-common-dir"], capture_output=True, text=True, check=True).stdout.strip()
        main = Path(common).parent.parent / "shared"
        if main.is_dir():
            return main
    except (OSError, subprocess.CalledProcessError):
        pass
    return here


def format_value(value: Any) -> str:
    """A value as both sides read it (mmgraph's ``--set`` and MMRec's YAML: ``1e-05`` is a float to both)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def mmrec_axes(model: str, peers: Optional[Path]) -> List[str]:
    """MMRec's ``hyper_parameters`` for ``model`` (its grid axes); [] when the peer is not there."""
    if peers is None:
        return []
    path = peers / "mmrec" / "src" / "configs" / "model" / f"{model}.yaml"
    if not path.is_file():
        return []
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return [str(a) for a in data.get("hyper_parameters") or []]


def split_sets(items: Iterable[str]) -> Dict[str, List[Tuple[str, str]]]:
    """``--set`` items -> ``{method or '*': [(key, value)]}``."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        if not eq or not head.strip():
            raise SystemExit(f"error: --set expects [METHOD:]KEY=VALUE, got {item!r}")
        method, _, key = head.rpartition(":")
        out.setdefault(method.strip().lower() or "*", []).append((key.strip(), value.strip()))
    return out


def resolve_settings(method: str, sets: Dict[str, List[Tuple[str, str]]],
                     peers: Optional[Path] = None) -> List[Tuple[str, str]]:
    """The explicit ``key=value`` list both sides run ``method`` at: mmgraph's grid axes (then MMRec's extra
    ones that mmgraph knows) at mmgraph's default values, with the ``--set`` overrides."""
    from mmgraph.train.config import load_config

    cfg = load_config(method)
    keys = list(cfg["grid"])
    keys += [k for k in mmrec_axes(METHODS.get(method, ""), peers) if k in cfg and k not in keys]
    settings = {k: format_value(cfg[k]) for k in keys}
    for key, value in sets.get("*", []):
        if key in cfg:
            settings[key] = value
    for key, value in sets.get(method, []):
        settings[key] = value
    return list(settings.items())


def settings_text(settings: Sequence[Tuple[str, str]]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings)


# ---------------------------------------------------------------------------------------------- parsing
def _num(text: Optional[str]) -> Optional[float]:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if value != value else value


def parse_sbs_line(text: str) -> Optional[Dict[str, Any]]:
    """sbs.sh's summary (the last one in ``text``): ``peer S s/epoch (E epochs, test R@20 R) | mmgraph ... |
    speed-up xX`` -> ``{"peer": {...}, "mmgraph": {...}, "speedup": X}``."""
    found = list(_SBS_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    return {"peer": {"s_per_epoch": float(m["ps"]), "epochs": int(m["pe"]), "recall@20": _num(m["pr"])},
            "mmgraph": {"s_per_epoch": float(m["ms"]), "epochs": int(m["me"]), "recall@20": _num(m["mr"])},
            "speedup": float(m["x"])}


def parse_peer_line(text: str) -> Optional[Dict[str, Any]]:
    """run_peer.sh's last line: ``s_per_epoch=S epochs=E test_recall@20=R test_ndcg@20=N``."""
    found = list(_PEER_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    return {"s_per_epoch": float(m["s"]), "epochs": int(m["e"]), "recall@20": _num(m["r"]),
            "ndcg@20": _num(m["n"])}


def mmgraph_result(capture: Path) -> Optional[Dict[str, Any]]:
    """The mmgraph run's test R@20 / NDCG@20, epochs and median s/epoch (first excluded, as sbs.sh) from the
    files the wrapper copied."""
    fm, hist = capture / "final_metrics.json", capture / "history.json"
    if not fm.is_file():
        return None
    test = json.loads(fm.read_text()).get("test", {})
    out: Dict[str, Any] = {"recall@20": test.get("recall@20"), "ndcg@20": test.get("ndcg@20")}
    if hist.is_file():
        h = json.loads(hist.read_text())
        per = [r["epoch_seconds"] for r in h][1:] or [r["epoch_seconds"] for r in h]
        out.update(epochs=len(h), s_per_epoch=statistics.median(per) if per else None)
    return out


def error_tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


# ---------------------------------------------------------------------------------------------- running
def machine_note() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "2 (sbs.sh's default)")
    return f"{cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, CPU"


def run_command(cmd: List[str], env: Dict[str, str], log: Path) -> Tuple[int, str]:
    """Run ``cmd`` with its output (stdout + stderr) in ``log``; returns the exit status and the output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    return rc, log.read_text(errors="replace")


def write_wrappers(out: Path, peer_python: Path) -> Dict[str, Path]:
    paths = {"mmgraph": out / "mmgraph.sh", "peer": out / "peer_python.sh"}
    for key, text in (("mmgraph", _MMGRAPH_WRAPPER % {"python": shlex.quote(sys.executable)}),
                      ("peer", _PEER_WRAPPER % {"python": shlex.quote(str(peer_python))})):
        with atomic_write(paths[key]) as fh:
            fh.write(text)
        paths[key].chmod(0o755)
    return paths


def run_method(method: str, settings: Sequence[Tuple[str, str]], data: Path, epochs: int, out: Path,
               peers: Path, driver: str, runner: Callable[[List[str], Dict[str, str], Path], Tuple[int, str]]
               = run_command, peer_python: Optional[Path] = None) -> Dict[str, Any]:
    """One ``sbs.sh mmrec MODEL METHOD DATA EPOCHS key=value ...`` run -> its results.jsonl record."""
    model = METHODS[method]
    kv = [f"{k}={v}" for k, v in settings]
    cmd = ["bash", str(peers / "sbs.sh"), "mmrec", model, method, str(data), str(epochs), *kv]
    capture = out / "capture" / method
    shutil.rmtree(capture, ignore_errors=True)
    capture.mkdir(parents=True)
    peer_python = peer_python or Path(os.environ.get("PEER_PYTHON", "/tmp/peers-venv/bin/python"))
    wrappers = write_wrappers(out, peer_python)
    env = dict(os.environ, MMGRAPH=str(wrappers["mmgraph"]), BSBS_CAPTURE=str(capture),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    if peer_python.exists():   # else run_peer.sh creates the peers' venv itself (MMRec's NDCG@20 then missing)
        env["PEER_PYTHON"] = str(wrappers["peer"])
    record: Dict[str, Any] = {
        "method": method, "model": model, "data": str(data), "epochs_max": epochs,
        "settings": settings_text(settings), "command": shlex.join(cmd), "driver": driver,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_note(),
        "log": str(out / "logs" / f"{method}.log")}
    rc, text = runner(cmd, env, out / "logs" / f"{method}.log")
    sbs = parse_sbs_line(text)
    peer_file, settings_file = capture / "peer_line", capture / "peer_settings"
    peer = parse_peer_line(peer_file.read_text()) if peer_file.is_file() else None
    if settings_file.is_file():
        record["peer_settings"] = settings_file.read_text().strip().removeprefix("peer settings:").strip()
    if rc != 0 or sbs is None:
        tail = error_tail(text)
        log_path = capture / "peer_log_path"
        if peer is None and log_path.is_file():   # MMRec failed: its own log says why
            peer_log = Path(log_path.read_text().strip())
            if peer_log.is_file():
                tail = error_tail(peer_log.read_text(errors="replace")) + "\n" + tail
        return {**record, "status": "error", "returncode": rc, "error": tail or f"exit status {rc}"}
    ours = mmgraph_result(capture) or {}
    record["peer"] = {**sbs["peer"], **({"ndcg@20": peer["ndcg@20"]} if peer else {"ndcg@20": None})}
    if peer:
        record["peer"]["recall@20"] = peer["recall@20"]
    record["mmgraph"] = {**sbs["mmgraph"], "ndcg@20": ours.get("ndcg@20")}
    if ours.get("recall@20") is not None:
        record["mmgraph"]["recall@20"] = ours["recall@20"]
    record["speedup"] = sbs["speedup"]
    record["status"] = "ok"
    return record


# ------------------------------------------------------------------------------------------ results file
def load_results(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:   # a line cut short by a kill: the method runs again
                continue
    return rows


def append_result(path: Path, record: Dict[str, Any]) -> None:
    """Append one record: the file is rewritten atomically, so a kill never leaves half a line."""
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    with atomic_write(path) as fh:
        fh.write(old + json.dumps(record) + "\n")


def merge_records(*groups: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The records of ``groups`` in order, each distinct record once (a record copied into the doc's file and
    still in an ``--out`` folder counts once)."""
    seen, merged = set(), []
    for group in groups:
        for r in group:
            key = json.dumps(r, sort_keys=True)
            if key not in seen:
                seen.add(key)
                merged.append(r)
    return merged


def doc_records(doc: Path) -> Path:
    """Where ``--doc FILE`` keeps the records of its table: ``FILE`` with the suffix ``.jsonl``."""
    return Path(doc).with_suffix(".jsonl")


def is_finished(records: Iterable[Dict[str, Any]], method: str, data: Path, epochs: int, settings: str) -> bool:
    return any(r.get("status") == "ok" and r.get("method") == method and r.get("data") == str(data)
               and r.get("epochs_max") == epochs and r.get("settings") == settings for r in records)


def capped(r: Dict[str, Any]) -> bool:
    """Whether a record's runs were capped below early stopping (a speed measurement, not a converged one)."""
    return r.get("epochs_max") not in (None, FULL_EPOCHS)


def latest(records: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per method: its last finished record run to early stopping, else its last finished capped one, else
    its last failed one."""
    def rank(r: Dict[str, Any]) -> int:
        return 0 if r.get("status") != "ok" else 1 if capped(r) else 2

    best: Dict[str, Dict[str, Any]] = {}
    for r in records:
        m = r.get("method")
        if m is None:
            continue
        if m not in best or rank(r) >= rank(best[m]):
            best[m] = r
    return best


# ------------------------------------------------------------------------------------------------ table
def _f(value: Optional[float], digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_row(r: Dict[str, Any]) -> str:
    settings = f"`{r['settings']}`" if r.get("settings") else "(defaults)"
    if r.get("status") != "ok":
        first = (r.get("error") or "failed").strip().splitlines()[-1][:120]
        return f"| {r['method']} | {settings} | failed: {_cell(first)} | | | | | |"
    p, m = r["peer"], r["mmgraph"]
    name = f"{r['method']} (capped)" if capped(r) else r["method"]
    pr, mr = p.get("recall@20"), m.get("recall@20")
    if pr is None or mr is None:
        delta = "–"
    else:
        rel = f" ({100 * (mr - pr) / pr:+.1f}%)" if pr else ""
        delta = f"{mr - pr:+.4f}{rel}"
    return (f"| {name} | {settings} | {_f(pr)} / {_f(p.get('ndcg@20'))} | {_f(mr)} / {_f(m.get('ndcg@20'))} "
            f"| {delta} | {_f(p.get('s_per_epoch'), 3)} ({p.get('epochs')} ep) "
            f"| {_f(m.get('s_per_epoch'), 3)} ({m.get('epochs')} ep) | x{r['speedup']:.2f} |")


def render_table(records: Iterable[Dict[str, Any]]) -> str:
    rows = latest(records)
    order = [m for m in METHODS if m in rows] + sorted(m for m in rows if m not in METHODS)
    head = ("| method | settings | MMRec R@20 / N@20 | mmgraph R@20 / N@20 | ΔR@20 | MMRec s/epoch "
            "| mmgraph s/epoch | speed-up |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [table_row(rows[m]) for m in order]) + "\n"


def load_notes(path: Optional[Path]) -> Dict[str, str]:
    """``{method: finding}`` from a YAML mapping (a missing file: none)."""
    if path is None or not Path(path).is_file():
        return {}
    import yaml
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SystemExit(f"{path}: expected a mapping method -> text")
    return {str(k).lower(): " ".join(v.split()) for k, v in data.items()}


def render_notes(records: Sequence[Dict[str, Any]], notes: Dict[str, str]) -> List[str]:
    """The findings of the methods in the table, in table order, as a section."""
    rows = latest(records)
    order = [m for m in METHODS if m in rows] + sorted(m for m in rows if m not in METHODS)
    found = [m for m in order if m in notes]
    if not found:
        return []
    return ["## Findings per method", ""] + [f"- **{m}**: {notes[m]}" for m in found] + [""]


def render_doc(records: Sequence[Dict[str, Any]], notes: Optional[Dict[str, str]] = None) -> str:
    """The table with its header paragraph (the command(s), seed, stopping, machine and dates) and the
    findings of ``notes`` (:data:`NOTES`) for the methods in it."""
    shown = list(latest(records).values())
    drivers = list(dict.fromkeys(r.get("driver", "") for r in shown if r.get("driver")))
    machines = list(dict.fromkeys(r.get("machine", "") for r in shown if r.get("machine")))
    dates = sorted(r["date"] for r in shown if r.get("date"))
    data = list(dict.fromkeys(Path(r["data"]).name for r in shown if r.get("data")))
    caps = sorted({r["epochs_max"] for r in shown if capped(r)})
    full = "both sides train to early stopping (up to 1000 epochs; MMRec's rule: 20 validations without gain)"
    cap_text = f"capped at {', '.join(map(str, caps))} epochs (a speed measurement, not a converged comparison)"
    if not caps:
        stop = full
    elif all(capped(r) for r in shown if r.get("epochs_max") is not None):
        stop = f"both sides {cap_text}"
    else:
        stop = f"{full}, except the rows marked (capped): both sides {cap_text}"
    when = "" if not dates else f"; run {dates[0]}" if dates[0] == dates[-1] else f"; runs {dates[0]} to {dates[-1]}"
    cmd = " ; ".join(f"`{d}`" for d in drivers) or "`python scripts/baselines_sbs.py`"
    lines = [
        "# MMRec baselines side by side",
        "",
        f"Produced by {cmd}: for each method `../shared/peers/sbs.sh mmrec MODEL METHOD DATA EPOCHS key=value ...` "
        f"runs MMRec and then `mmgraph train` back to back on {', '.join(data) or 'the data'}, with the same explicit "
        f"settings (the \"settings\" column, MMRec's key names, passed to both sides), seed {SEED}; {stop}. "
        "Metrics are the test Recall@20 / NDCG@20 at each side's best validation epoch; ΔR@20 is mmgraph minus "
        "MMRec. s/epoch is the median over epochs (training + validation, first epoch excluded), with the "
        "number of epochs run; speed-up = MMRec s/epoch / mmgraph s/epoch.",
        "",
        f"Machine: {' ; '.join(machines) or 'unrecorded'}{when}. The machine may be shared and its load "
        "drifts: timings are comparable only within a row (the two runs of a row are back to back), not "
        "between rows. Per-run commands and raw numbers: `results.jsonl` in the output folder, and every row's "
        "record in the `.jsonl` file beside this one.",
        "",
        render_table(records),
        *render_notes(records, notes or {}),
    ]
    return "\n".join(lines)


def write_reports(out: Path, doc: Optional[Path], notes: Optional[Path] = NOTES) -> str:
    """Render ``OUT/baselines.md`` (and ``doc``): from ``OUT/results.jsonl``, plus, with ``doc``, the records kept
    beside it (:func:`doc_records`), which then gain ``OUT``'s."""
    records = load_results(out / RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if doc:
        kept = load_results(doc_records(doc))
        records = merge_records(kept, records)
        if len(records) > len(kept) or not doc_records(doc).is_file():
            with atomic_write(doc_records(doc)) as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in records))
    text = render_doc(records, load_notes(notes))
    for path in [out / TABLE] + ([doc] if doc else []):
        with atomic_write(path) as fh:
            fh.write(text)
    return text


# ------------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None,
         runner: Callable[[List[str], Dict[str, str], Path], Tuple[int, str]] = run_command) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="atomic data folder (default: ../shared/data/tiktok)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated mmgraph methods "
                   "(default: all MMRec baselines: %(default)s)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="change a setting (MMRec's key names) for one method, or for every method with that key")
    p.add_argument("--epochs", type=int, default=FULL_EPOCHS,
                   help="maximum epochs of both sides (default %(default)s: early stopping decides)")
    p.add_argument("--out", default="runs/baselines_sbs", help="results.jsonl, baselines.md, logs/ "
                   "(default: %(default)s)")
    p.add_argument("--doc", type=Path, help="also write the table to this file (e.g. docs/baselines.md)")
    p.add_argument("--peers", type=Path, help="the peers folder with sbs.sh (default: ../shared/peers)")
    p.add_argument("--rerun", action="store_true", help="run finished methods again")
    p.add_argument("--report", action="store_true", help="only re-render the table from OUT/results.jsonl "
                   "(and, with --doc FILE, the records kept in FILE.jsonl)")
    p.add_argument("--notes", type=Path, default=NOTES, help="YAML method -> finding, printed under the table "
                   "(default: docs/baselines_notes.yaml)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        if not (out / RESULTS).is_file() and not (args.doc and doc_records(args.doc).is_file()):
            p.error(f"--report: no {out / RESULTS}" + (f" and no {doc_records(args.doc)}" if args.doc else ""))
        print(write_reports(out, args.doc, args.notes))
        return 0
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: {', '.join(unknown)} not among {', '.join(METHODS)}")
    shared = shared_dir()
    peers = (args.peers or shared / "peers").resolve()
    data = Path(args.data).resolve() if args.data else (shared / "data" / "tiktok").resolve()
    if not (peers / "sbs.sh").is_file():
        p.error(f"no sbs.sh in {peers} (--peers DIR)")
    if not data.is_dir():
        p.error(f"no data folder {data} (--data DIR)")
    sets = split_sets(args.set)
    bad = sorted(k for k in sets if k != "*" and k not in methods)
    if bad:
        p.error(f"--set: {', '.join(bad)} is not in --methods")
    driver = "python scripts/baselines_sbs.py" + (" " + shlex.join(argv) if argv else "")
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    failed = 0
    for method in methods:
        settings = resolve_settings(method, sets, peers)
        text = settings_text(settings)
        if not args.rerun and is_finished(load_results(results), method, data, args.epochs, text):
            print(f"{method}: finished already ({results}; --rerun runs it again)")
            continue
        print(f"{method}: sbs.sh mmrec {METHODS[method]} {method} {data.name} {args.epochs} {text}", flush=True)
        record = run_method(method, settings, data, args.epochs, out, peers, driver, runner)
        append_result(results, record)
        if record["status"] == "ok":
            print("  " + table_row(record), flush=True)
        else:
            failed += 1
            print(f"  failed (exit {record.get('returncode')}):\n    "
                  + record["error"].replace("\n", "\n    "), flush=True)
        write_reports(out, args.doc, args.notes)
    write_reports(out, args.doc, args.notes)
    print("\n" + render_table(load_results(results)))
    print(f"table: {out / TABLE}" + (f" and {args.doc}" if args.doc else "") + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    from mmgraph.errors import run_script

    run_script(main)
