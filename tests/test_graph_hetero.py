"""HeteroData contents and the ``mmgraph graph`` command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgraph.cli.main import main
from mmgraph.data import RecDataset, make_synthetic, save_atomic
from mmgraph.errors import DataError
from mmgraph.graph import ItemGraph, build_hetero_data, build_item_graphs, item_graph_from_hetero


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(60, 45, modalities={"image": 12, "text": 5}, seed=2)


def test_hetero_nodes_features_and_train_edges(ds):
    dup = RecDataset(ds.n_users, ds.n_items, np.concatenate([ds.train, ds.train[:9]]), ds.valid, ds.test,
                     ds.features)
    data = build_hetero_data(dup)
    assert data["user"].num_nodes == ds.n_users and data["item"].num_nodes == ds.n_items
    for m, f in ds.features.items():
        x = data["item"][f"x_{m}"]
        assert x.dtype == torch.float32
        np.testing.assert_array_equal(x.numpy(), f)
    ei = data["user", "interacts", "item"].edge_index
    assert ei.dtype == torch.long and ei.shape[0] == 2
    got = {tuple(p) for p in ei.T.tolist()}
    assert got == {tuple(p) for p in ds.train.tolist()}
    assert ei.shape[1] == len(got)  # deduplicated
    held_out = {tuple(p) for p in np.concatenate([ds.valid, ds.test]).tolist()} - got
    assert held_out and not (held_out & got)
    rev = data["item", "rev_interacts", "user"].edge_index
    assert torch.equal(rev, ei.flip(0))
    assert set(data.edge_types) == {("user", "interacts", "item"), ("item", "rev_interacts", "user")}
    assert "x_image" not in build_hetero_data(ds, include_features=False)["item"]


def test_hetero_item_graphs_use_pyg_order(ds):
    graphs = {**build_item_graphs(ds, "knn", k=3), **build_item_graphs(ds, "freedom", k=3),
              **build_item_graphs(ds, "cooccurrence", k=3)}
    data = build_hetero_data(ds, graphs)
    for name, g in graphs.items():
        store = data["item", name, "item"]
        assert torch.equal(store.edge_index[1], g.row) and torch.equal(store.edge_index[0], g.col)
        assert item_graph_from_hetero(data, name).equal(g)
    # PyG source->target message passing over the stored edges equals the row-gathers product
    from torch_geometric.utils import scatter
    store = data["item", "knn_mm", "item"]
    x = torch.randn(ds.n_items, 4)
    msg = x[store.edge_index[0]] * store.edge_weight[:, None]
    out = scatter(msg, store.edge_index[1], dim=0, dim_size=ds.n_items, reduce="sum")
    torch.testing.assert_close(out, graphs["knn_mm"].to_dense() @ x)
    with pytest.raises(DataError):
        item_graph_from_hetero(data, "nope")
    with pytest.raises(DataError):
        build_hetero_data(ds, {"bad": ItemGraph.empty(ds.n_items + 1)})


def test_cli_build_and_info(tmp_path, monkeypatch, capsys, ds):
    monkeypatch.setenv("MMGRAPH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "toy"
    save_atomic(ds, folder, name="toy")
    out = tmp_path / "g.pt"
    rc = main(["graph", "build", "--data", str(folder), "--kind", "freedom", "--k", "4",
               "--weights", "image=0.1,text=0.9", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "knn_mm" in text and "edges=" in text and "built freedom" in text
    from mmgraph.cli.graph import load_graph_file
    g = load_graph_file(out)["knn_mm"]
    assert g.equal(build_item_graphs(ds, "freedom", k=4, weights={"image": 0.1, "text": 0.9})["knn_mm"])
    assert list((tmp_path / "cache").glob("freedom-*.pt"))
    assert main(["graph", "info", str(out)]) == 0
    assert "knn_mm" in capsys.readouterr().out
    assert main(["graph", "build", "--data", str(folder), "--kind", "cooccurrence", "--no-cache"]) == 0
    assert main(["graph", "build", "--data", str(folder), "--kind", "knn", "--k", "3",
                 "--modalities", "rand", "--random-features", "rand=7", "--no-cache"]) == 0
    capsys.readouterr()
    # a default k is recorded as the k used; a user-user relation is described per user; synthetic data as in train
    out = tmp_path / "d.pt"
    assert main(["graph", "build", "--data", "synthetic:users=120,items=90", "--method", "dragon", "--no-cache",
                 "--out", str(out)]) == 0
    assert main(["graph", "build", "--data", str(folder), "--kind", "knn", "--no-cache", "--out",
                 str(tmp_path / "k.pt")]) == 0
    capsys.readouterr()
    assert main(["graph", "info", str(out)]) == main(["graph", "info", str(tmp_path / "k.pt")]) == 0
    text = capsys.readouterr().out
    assert "users=120 items=90" in text and "neighbours/user" in text and "neighbours/item" in text
    assert "'k': 10" in text and "None" not in text


@pytest.mark.parametrize("argv", [
    ["--kind", "freedom", "--modalities", "audio"],
    ["--kind", "knn", "--alpha", "0.5"],
    ["--kind", "freedom", "--weights", "image=x"],
    ["--kind", "freedom", "--weights", "image=0.5"],
    ["--kind", "cooccurrence", "--self-loops", "include"],
])
def test_cli_errors_are_one_line(tmp_path, capsys, ds, argv):
    folder = tmp_path / "toy"
    save_atomic(ds, folder, name="toy")
    rc = main(["graph", "build", "--data", str(folder), "--no-cache"] + argv)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmgraph: error:")


def test_cli_info_on_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"junk")
    assert main(["graph", "info", str(bad)]) == 2
    assert main(["graph", "info", str(tmp_path / "missing.pt")]) == 2


def test_interaction_adj_on_a_hand_built_graph_without_node_counts_says_what_to_set():
    from torch_geometric.data import HeteroData

    from mmgraph.graph import interaction_adj
    data = HeteroData()
    data["user", "interacts", "item"].edge_index = torch.tensor([[0, 1], [0, 1]])
    with pytest.raises(DataError, match=r"data\['user'\].num_nodes"):
        interaction_adj(data)
    data["user"].num_nodes, data["item"].num_nodes = 2, 3
    assert interaction_adj(data).shape == (5, 5)
