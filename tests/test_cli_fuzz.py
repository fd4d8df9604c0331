"""Property-based: whatever the .inter rows or --set values, the CLI exits 0 or 2 with one line on stderr,
never a traceback (issue 11). Kept small enough for CI (well under a minute)."""
from __future__ import annotations

import contextlib
import io
import os
import string
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmgraph.cli.main import main  # noqa: E402
from mmgraph.train.config import load_config  # noqa: E402

# CI runs a fixed set of examples; MMGRAPH_FUZZ_EXAMPLES=500 searches longer (with fresh random draws)
_EXAMPLES = int(os.environ.get("MMGRAPH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=_EXAMPLES, deadline=None, derandomize="MMGRAPH_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"


def run_cli(argv) -> tuple:
    """``(exit code, stderr)`` of ``mmgraph argv`` in this process; any exception fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def assert_clean(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("mmgraph: error: ")]
        assert len(errors) == 1, err


# ------------------------------------------------------------------------------------------ .inter rows
field = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["", "x", "1.5", "nan", "-0", "1e3", " 2", "NA"]))
row = st.lists(field, min_size=0, max_size=7).map("\t".join)
good_row = st.tuples(st.integers(0, 9), st.integers(0, 11), st.sampled_from([0, 0, 0, 1, 2])).map(
    lambda t: f"{t[0]}\t{t[1]}\t1\t0\t{t[2]}")


@FUZZ
@given(rows=st.lists(st.one_of(good_row, good_row, row), min_size=0, max_size=40),
       header=st.sampled_from([HEADER, HEADER, "userID\titemID\tx_label\n", "user\titem\n", ""]))
def test_fuzzed_inter_rows_never_trace(tmp_path_factory, rows, header):
    folder = tmp_path_factory.mktemp("inter")
    (folder / "f.inter").write_text(header + "\n".join(rows) + ("\n" if rows else ""))
    assert_clean(*run_cli(["data", "stats", folder]))
    assert_clean(*run_cli(["train", "--method", "mf", "--data", folder, "--epochs", "1", "--no-progress",
                           "--set", "threads=1", "log_geometry=false", "batch_size=64"]))


# ------------------------------------------------------------------------------------------ --set values
KEYS = sorted(k for k in load_config("lightgcn") if k not in ("grid", "method"))
# sizes that change the cost of a run stay small so that an accepted value trains in a blink
COSTLY = {"embedding_size", "batch_size", "n_layers", "eval_memory_mb", "threads", "epochs", "eval_step"}
scalar = st.one_of(st.integers(-2, 3), st.floats(-2, 2), st.sampled_from([float("nan"), float("inf"), -float("inf")]), st.booleans(),
                   st.none(), st.text(string.ascii_letters + "@_-.", max_size=8),
                   st.sampled_from(["cpu", "auto", "exact", "recall@5", "ndcg@10", "hit@0", "image", "cross"]))
value_text = st.one_of(
    scalar.map(lambda v: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)),
    st.lists(scalar.filter(lambda v: not isinstance(v, str) or v.isalnum()), max_size=3).map(
        lambda vs: "[" + ",".join("null" if v is None else str(v) for v in vs) + "]"),
    st.sampled_from(["{a: 1}", "[", "]", "{", "[[1],[2]]", "abc,def", "=", "1e-3", "-1e9"]))
key = st.one_of(st.sampled_from(KEYS), st.sampled_from(["lr", "nosuch", "method", "grid", "", "cross_alpha"]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from mmgraph.data import make_synthetic, save_atomic

    ds = make_synthetic(n_users=30, n_items=25, modalities={"image": 4}, mean_interactions=8, seed=0)
    return save_atomic(ds, tmp_path_factory.mktemp("fuzz") / "tiny", name="tiny")


@FUZZ
@given(pairs=st.lists(st.tuples(key, value_text), min_size=1, max_size=3), grid=st.booleans())
def test_fuzzed_set_values_never_trace(tiny, pairs, grid):
    items = []
    for k, v in pairs:
        if k in COSTLY and v.lstrip("-").isdigit() and abs(int(v)) > 3:
            v = "3"
        items.append(f"{k}={v}")
    argv = ["train", "--method", "lightgcn", "--data", tiny, "--epochs", "1", "--no-progress",
            "--set", "threads=1", "log_geometry=false", *items]
    if grid and any("=[" in item for item in items):   # (a bare --grid would run the method's whole grid)
        argv.append("--grid")
    assert_clean(*run_cli(argv))
