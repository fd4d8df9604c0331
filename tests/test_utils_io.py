"""Atomic writes of figures: a failed draw leaves the previous file in place and no temporary file."""
from __future__ import annotations

import pytest

from mmgraph.utils.io import save_figure

plt = pytest.importorskip("matplotlib.pyplot")


def test_save_figure_writes_png_and_closes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "curve.png"
    target.write_bytes(b"old")
    fig, _ = plt.subplots()

    def broken(*args, **kwargs):
        raise RuntimeError("renderer failed")
    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
    assert not plt.fignum_exists(fig.number)


def test_an_unsupported_figure_format_is_a_one_line_error_naming_the_choices(tmp_path):
    from mmgraph.errors import ConfigError
    fig, _ = plt.subplots()
    with pytest.raises(ConfigError, match=r"cannot write \.txt figures; use one of .*\.png.*curve\.png"):
        save_figure(fig, tmp_path / "curve.txt")
    assert not plt.fignum_exists(fig.number) and list(tmp_path.iterdir()) == []


def test_atomic_write_writes_through_a_symlink_and_keeps_it(tmp_path):
    from mmgraph.utils.io import atomic_write
    target = tmp_path / "real" / "top.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "top.csv"
    link.symlink_to(target)
    with atomic_write(link) as fh:
        fh.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["top.csv"]      # no temporary file left


def test_atomic_write_streams_into_a_fifo_instead_of_replacing_it(tmp_path):
    import os
    import threading

    from mmgraph.utils.io import atomic_write
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    with atomic_write(fifo) as fh:
        fh.write("a,b\n")
    reader.join(10)
    assert got == ["a,b\n"] and not fifo.is_file() and fifo.exists()


def test_atomic_write_error_names_the_users_file_not_the_temporary_one(tmp_path, monkeypatch):
    import errno
    import tempfile

    from mmgraph.utils.io import atomic_write

    def refuse(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}abc{suffix}")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError) as info:
        with atomic_write(tmp_path / "x.csv") as fh:
            fh.write("x")
    assert str(info.value) == f"[Errno 13] Permission denied: '{tmp_path / 'x.csv'}'"


def test_atomic_write_to_dev_stdout_streams_into_the_pipe():
    import subprocess
    import sys
    code = "from mmgraph.utils.io import atomic_write\nwith atomic_write('/dev/stdout') as fh:\n    fh.write('a,b\\n')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "a,b\n", done.stderr[-500:]
