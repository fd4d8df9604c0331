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
