"""The structure analyses (issue 12): neighbourhood overlap between spaces and the neighbours of an item,
as functions on hand-made inputs and as `mmgraph analyze` commands on runs of several methods."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmgraph.analysis.neighbours import cosine_to, top_neighbours, two_hop_proximity
from mmgraph.analysis.overlap import (intersection_counts, neighbourhood_overlap, overlap_matrix, topk_neighbours,
                                      versus_raw)
from mmgraph.cli.main import main
from mmgraph.data import make_synthetic, save_atomic
from mmgraph.errors import ConfigError


# ------------------------------------------------------------------------------------------ functions
def test_overlap_on_hand_made_neighbourhoods():
    a = np.array([[1, 2, 3], [0, 2, 3], [4, 5, -1], [1, -1, -1]])
    b = np.array([[3, 4, 1], [5, 6, 7], [5, 4, 0], [-1, -1, -1]])
    assert intersection_counts(a, b).tolist() == [2, 0, 2, 0]
    # the last item has no neighbour in b: left out; overlap = |A & B| / K
    assert neighbourhood_overlap(a, b, "overlap") == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    # Jaccard: 2 / 4, 0 / 6, 2 / 3
    assert neighbourhood_overlap(a, b, "jaccard") == pytest.approx((2 / 4 + 0 + 2 / 3) / 3)
    assert neighbourhood_overlap(a, a) == pytest.approx((1 + 1 + 2 / 3 + 1 / 3) / 4)
    with pytest.raises(ConfigError, match="metric"):
        neighbourhood_overlap(a, b, "dice")


def test_versus_raw_keeps_trained_rows_and_raw_columns():
    names = ["raw:image", "a:final", "raw:text", "b:image"]
    table = pd.DataFrame(np.arange(16.0).reshape(4, 4), index=names, columns=names)
    sub = versus_raw(table)
    assert list(sub.index) == ["a:final", "b:image"] and list(sub.columns) == ["raw:image", "raw:text"]
    assert sub.loc["b:image", "raw:text"] == table.loc["b:image", "raw:text"] == 14.0
    with pytest.raises(ConfigError):
        versus_raw(table.loc[["a:final", "b:image"], ["a:final", "b:image"]])


def test_topk_neighbours_equal_a_dense_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    ref = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(topk_neighbours(x, 5), ref)
    ids, sims = top_neighbours(x, 7, 5)
    np.testing.assert_array_equal(ids, ref[7])
    np.testing.assert_allclose(sims, sim[7, ref[7]], rtol=1e-5)
    np.testing.assert_allclose(cosine_to(x, 7)[ref[7]], sim[7, ref[7]], rtol=1e-5)


def test_overlap_matrix_is_one_for_cosine_preserving_maps_and_low_for_unrelated_spaces():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    table = overlap_matrix({"x": x, "rotated": x @ q, "scaled": 3.0 * x, "other": rng.normal(size=(120, 8))}, k=5)
    assert list(table.index) == ["x", "rotated", "scaled", "other"]
    np.testing.assert_allclose(np.diag(table.values), 1.0)
    np.testing.assert_allclose(table.values, table.values.T)
    assert table.loc["x", "rotated"] == pytest.approx(1.0) and table.loc["x", "scaled"] == pytest.approx(1.0)
    assert table.loc["x", "other"] < 0.25      # chance level is 5 / 119
    with pytest.raises(ConfigError, match="different item counts"):
        overlap_matrix({"a": x, "b": x[:10]})


def test_two_hop_proximity_counts_shared_users():
    train = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 2], [2, 0], [3, 3], [0, 1]])
    counts, norm = two_hop_proximity(train, 4, 0, np.array([1, 2, 3]))
    assert counts.tolist() == [2, 2, 0]        # users 0, 1 share items 0, 1; users 1, 2 share 0, 2
    # degrees (distinct users): item 0: 3, item 1: 2, item 2: 2, item 3: 1
    np.testing.assert_allclose(norm, [2 / np.sqrt(6), 2 / np.sqrt(6), 0.0])


# ------------------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Short runs of AnchorRec and three other multimodal methods on one tiny dataset."""
    root = tmp_path_factory.mktemp("analysis")
    ds = make_synthetic(n_users=70, n_items=50, modalities={"image": 10, "text": 6}, seed=4)
    folder = root / "toy"
    save_atomic(ds, folder, name="toy")
    out = {}
    for method in ("anchorrec", "freedom", "bm3", "cm3"):
        out[method] = root / method
        assert main(["train", "--method", method, "--data", str(folder), "--epochs", "1", "--out",
                     str(out[method]), "--no-progress", "--set", "graph_cache=false", "threads=1",
                     "log_geometry=false"]) == 0
    return root, ds, out


def test_analyze_overlap_command_on_several_methods(runs, capsys):
    root, ds, out = runs
    dest = root / "overlap"
    assert main(["analyze", "overlap", *map(str, out.values()), "--k", "5", "--out", str(dest)]) == 0
    table = pd.read_csv(dest / "overlap.csv", index_col=0)
    assert (dest / "overlap.png").stat().st_size > 0
    names = set(table.index)
    assert {"raw:image", "raw:text", "raw:mm", "anchorrec:final", "anchorrec:proj_mm", "anchorrec:mm",
            "anchorrec:image", "freedom:image", "bm3:text", "cm3:fused"} <= names
    np.testing.assert_allclose(np.diag(table.values), 1.0)
    assert ((table.values >= 0) & (table.values <= 1)).all()
    # --spaces keeps the named spaces only
    assert main(["analyze", "overlap", str(out["anchorrec"]), "--k", "5", "--spaces", "proj_mm,image",
                 "--out", str(dest / "sub")]) == 0
    sub = pd.read_csv(dest / "sub" / "overlap.csv", index_col=0)
    assert set(sub.index) == {"raw:image", "anchorrec:image", "anchorrec:proj_mm"}
    capsys.readouterr()
    # --versus-raw: the trained spaces against the raw features only, printed and written
    assert main(["analyze", "overlap", *map(str, out.values()), "--k", "5", "--versus-raw", "--out",
                 str(dest / "vs")]) == 0
    vs = pd.read_csv(dest / "vs" / "overlap_vs_raw.csv", index_col=0)
    assert list(vs.columns) == ["raw:image", "raw:text", "raw:mm"] and "anchorrec:proj_mm" in vs.index
    assert not any(r.startswith("raw:") for r in vs.index)
    np.testing.assert_allclose(vs.values, table.loc[vs.index, vs.columns].values, atol=1e-4)
    printed = capsys.readouterr().out
    assert "overlap_vs_raw.csv" in printed and "cm3:fused" in printed


def test_analyze_neighbours_command(runs, capsys):
    root, ds, out = runs
    dest = root / "nb"
    assert main(["analyze", "neighbours", str(out["anchorrec"]), str(out["freedom"]), "--item", "3",
                 "--k", "4", "--out", str(dest)]) == 0
    table = pd.read_csv(dest / "neighbours_3.csv")
    assert (dest / "neighbours_3.png").stat().st_size > 0
    assert table["run"].tolist() == ["anchorrec"] * 4 + ["freedom"] * 4
    assert {"two_hop", "two_hop_norm", "sim_image", "sim_text", "cosine"} <= set(table.columns)
    assert 3 not in table["item"].tolist()
    counts, _ = two_hop_proximity(ds.train, ds.n_items, 3, table["item"].to_numpy())
    assert table["two_hop"].tolist() == counts.tolist()
    items = table["item"].to_numpy()
    np.testing.assert_allclose(table["sim_image"], cosine_to(ds.features["image"], 3)[items], atol=1e-4)
    capsys.readouterr()
    assert main(["analyze", "neighbours", str(out["bm3"]), "--item", "999", "--out", str(dest)]) == 2
    assert "not an item id" in capsys.readouterr().err
    assert main(["analyze", "neighbours", str(out["cm3"]), "--item", "1", "--space", "proj_mm",
                 "--out", str(dest)]) == 2
    assert "no item space 'proj_mm'" in capsys.readouterr().err


def test_k_beyond_the_items_and_unknown_spaces_are_refused_and_plot_reads_grids(runs, tmp_path, capsys):
    root, ds, out = runs
    assert main(["analyze", "overlap", str(out["cm3"]), "--k", "50", "--no-raw", "--out", str(tmp_path / "o")]) == 2
    assert "give k < 50" in capsys.readouterr().err
    assert main(["analyze", "neighbours", str(out["cm3"]), "--item", "3", "--k", "50", "--out", str(tmp_path)]) == 2
    assert "give k < 50" in capsys.readouterr().err
    assert main(["analyze", "overlap", str(out["cm3"]), "--spaces", "final,bogus", "--out", str(tmp_path)]) == 2
    assert "bogus is not a space of these runs" in capsys.readouterr().err
    # plot: a grid folder stands for its selected point; same-named folders get distinguishing labels
    from mmgraph.analysis.spaces import run_labels
    assert run_labels(["/r/lightgcn/point_000/seed_1", "/r/freedom/point_000/seed_1"]) == [
        "lightgcn/point_000/seed_1", "freedom/point_000/seed_1"]
    assert run_labels([out["cm3"], out["cm3"]]) == ["cm3#1", "cm3#2"]
    grid = tmp_path / "grid"
    assert main(["train", "--method", "mf", "--data", str(root / "toy"), "--epochs", "2", "--out", str(grid),
                 "--grid", "--set", "reg_weight=[0.0,0.1]", "threads=1", "--no-progress"]) == 0
    assert main(["plot", str(grid), str(out["cm3"]), "--keys", "valid_recall@20",
                 "--output", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
