"""Raw data preparation: rating filter, dedup, k-core, id maps, feature alignment, texts, splits."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from mmgraph.data.atomic import load_atomic
from mmgraph.data.prepare import (dedup_mask, encode_ids, kcore_filter, kcore_mask, prepare_dataset,
                                  rating_mask, sorted_ids)
from mmgraph.data.raw import read_feature_file, read_interactions
from mmgraph.errors import DataError


# --------------------------------------------------------------------------- filters
def test_rating_mask():
    r = np.array([0, 1, 2, 3, 4, 5, 1.0])
    assert rating_mask(r, min_rating=4).tolist() == [0, 0, 0, 0, 1, 1, 0]
    assert rating_mask(r, rating_equals=1).tolist() == [0, 1, 0, 0, 0, 0, 1]
    assert rating_mask(r, min_rating=1, rating_equals=5).tolist() == [0, 0, 0, 0, 0, 1, 0]
    assert rating_mask(r).all()


def test_dedup_keeps_first_or_earliest():
    pairs = np.array([[0, 1], [0, 2], [0, 1], [1, 1], [0, 2], [1, 1]])
    assert dedup_mask(pairs).tolist() == [1, 1, 0, 1, 0, 0]
    ts = np.array([5, 9, 1, 3, 2, 7])
    assert dedup_mask(pairs, ts).tolist() == [0, 0, 1, 1, 1, 0]
    assert dedup_mask(np.zeros((0, 2), dtype=np.int64)).shape == (0,)


def _brute_force_kcore(pairs, k):
    """Largest node set (users + items) whose induced edges give every node >= k edges."""
    users, items = sorted(set(pairs[:, 0])), sorted(set(pairs[:, 1]))
    best = set()
    for ru in range(len(users) + 1):
        for us in itertools.combinations(users, ru):
            for ri in range(len(items) + 1):
                for its in itertools.combinations(items, ri):
                    sub = pairs[np.isin(pairs[:, 0], us) & np.isin(pairs[:, 1], its)]
                    ok = all((sub[:, 0] == u).sum() >= k for u in us) and all((sub[:, 1] == i).sum() >= k for i in its)
                    if ok and len(sub) > len(best):
                        best = set(map(tuple, sub.tolist()))
    return best


def test_kcore_hand_example_cascade_and_maximal():
    # users 0-2 x items 0-2 is a complete 3x3 block (a 3-core); user 3 links items 0, 3 and 4
    # (items 3, 4 have one rating each -> dropped -> user 3 falls to 1 -> dropped);
    # user 4 has 2 ratings -> dropped.
    block = [(u, i) for u in range(3) for i in range(3)]
    pairs = np.array(block + [(3, 0), (3, 3), (3, 4), (4, 1), (4, 2)])
    kept = kcore_filter(pairs, 3)
    assert set(map(tuple, kept.tolist())) == set(block)
    assert set(map(tuple, kept.tolist())) == _brute_force_kcore(pairs, 3)
    assert kcore_mask(pairs, 1).all() and kcore_mask(pairs, 0).all()
    assert len(kcore_filter(pairs, 4)) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcore_property_and_maximal_random(seed):
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.column_stack([rng.integers(0, 5, 14), rng.integers(0, 4, 14)]), axis=0)
    kept = kcore_filter(pairs, 2)
    if len(kept):
        assert np.bincount(kept[:, 0])[np.unique(kept[:, 0])].min() >= 2
        assert np.bincount(kept[:, 1])[np.unique(kept[:, 1])].min() >= 2
    assert set(map(tuple, kept.tolist())) == _brute_force_kcore(pairs, 2)


def test_kcore_large_every_remaining_has_k():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.column_stack([rng.zipf(1.5, 20000) % 3000, rng.zipf(1.3, 20000) % 2000]), axis=0)
    kept = kcore_filter(pairs, 5)
    assert 0 < len(kept) < len(pairs)
    for col in (0, 1):
        deg = np.bincount(kept[:, col])
        assert deg[deg > 0].min() >= 5
    # maximal: adding back any dropped row's endpoints cannot form a larger core than the peeling
    assert len(kcore_filter(kept, 5)) == len(kept)


def test_sorted_ids_numeric_and_text():
    assert sorted_ids(np.array(["10", "2", "1", "2"], dtype=object)).tolist() == ["1", "2", "10"]
    assert sorted_ids(np.array(["b", "a10", "a2"], dtype=object)).tolist() == ["a10", "a2", "b"]
    codes, ids = encode_ids(np.array(["x", "NA", "x", "007"], dtype=object))
    assert ids[codes].tolist() == ["x", "NA", "x", "007"]


# --------------------------------------------------------------------------- reading
def test_read_interactions_keeps_raw_ids_and_skips_blank_lines(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("u\ti\tr\tt\n007\tNA\t4\t2020-01-01\n\n7\tnull\t3.5\t2020-01-02\n")
    raw = read_interactions(path, "u", "i", "r", "t")
    assert raw.users.tolist() == ["007", "7"] and raw.items.tolist() == ["NA", "null"]
    assert raw.ratings.tolist() == [4.0, 3.5]
    assert raw.timestamps[1] - raw.timestamps[0] == 86400


def test_read_interactions_parquet(tmp_path):
    df = pd.DataFrame({"user": [1, 2, 2], "item": [10.0, 11.0, 10.0], "rating": [5, 3, 4]})
    df.to_parquet(tmp_path / "r.parquet")
    raw = read_interactions(tmp_path / "r.parquet", "user", "item", "rating")
    assert raw.users.tolist() == ["1", "2", "2"] and raw.items.tolist() == ["10", "11", "10"]


# --------------------------------------------------------------------------- pipeline
def _prepare(raw_files, tmp_path, **kw):
    kw.setdefault("kcore", 0)
    kw.setdefault("show_progress", False)
    return prepare_dataset(raw_files["ratings"], tmp_path / "out", **kw)


def test_prepare_filter_dedup_and_report(raw_files, tmp_path):
    report = {}
    ds = _prepare(raw_files, tmp_path, rating_equals=1, report=report)
    df = raw_files["frame"]
    pos = df[df.rating == 1].drop_duplicates(["user_id", "item_id"])
    assert report["rows_read"] == len(df)
    assert report["rating_filter_dropped"] == int((df.rating != 1).sum())
    assert report["duplicates_dropped"] == int((df.rating == 1).sum()) - len(pos)
    assert ds.n_interactions == len(pos)
    assert ds.n_users == pos.user_id.nunique() and ds.n_items == pos.item_id.nunique()
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["n_interactions"] == len(pos)
    # min_rating: >= 1 keeps the same rows here, >= 2 keeps none
    assert _prepare(raw_files, tmp_path, min_rating=1).n_interactions == len(pos)
    with pytest.raises(DataError, match="no interactions left after the rating filter"):
        _prepare(raw_files, tmp_path, min_rating=2)


def test_prepare_kcore_applied(raw_files, tmp_path):
    report = {}
    ds = _prepare(raw_files, tmp_path, rating_equals=1, kcore=4, split="loo", report=report)
    all_pairs = np.concatenate([ds.train, ds.valid, ds.test])
    assert np.bincount(all_pairs[:, 0]).min() >= 4
    assert np.bincount(all_pairs[:, 1]).min() >= 4
    assert report["kcore_items_dropped"] > 0 and report["kcore_rows_dropped"] > 0
    assert ds.n_interactions + report["kcore_rows_dropped"] + report["duplicates_dropped"] + \
        report["rating_filter_dropped"] == report["rows_read"]


def test_id_maps_round_trip(tmp_path):
    users = ["007", "NA", "a b", "7", "x,y"]
    rows = [(u, it, 1) for u in users for it in ["null", "0", "i-1", "00", "itm", "Z"]]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(tmp_path / "r.csv", index=False)
    ds = prepare_dataset(tmp_path / "r.csv", tmp_path / "out", kcore=0)
    back = load_atomic(tmp_path / "out")
    assert back.user_ids.tolist() == ds.user_ids.tolist() and sorted(back.user_ids) == sorted(users)
    assert back.item_ids.tolist() == ds.item_ids.tolist()
    recovered = set()
    for split in ("train", "valid", "test"):
        p = back.split(split)
        recovered |= set(zip(back.user_ids[p[:, 0]], back.item_ids[p[:, 1]]))
    assert recovered == {(u, i) for u, i, _ in rows}
    maps = pd.read_csv(tmp_path / "out" / "user_map.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(maps.columns) == ["index", "raw_id"]


def _features_for(items, dim=4):
    """Feature row of raw item id s: [int(s), int(s) * 2, ...] so alignment is checkable."""
    return np.array([[int(s) * (j + 1) for j in range(dim)] for s in items], dtype=np.float32)


def test_feature_table_shuffled_is_aligned(raw_files, tmp_path):
    items = sorted(set(raw_files["frame"].item_id), key=int)
    feats = _features_for(items)
    table = pd.DataFrame(feats, columns=[f"f{j}" for j in range(4)])
    table.insert(0, "item_id", items)
    table = pd.concat([table, pd.DataFrame({"item_id": ["999"], "f0": [1], "f1": [1], "f2": [1], "f3": [1]})])
    table = table.sample(frac=1.0, random_state=3)
    table.to_csv(tmp_path / "img.csv", index=False)
    table.to_parquet(tmp_path / "img.parquet")
    ds = _prepare(raw_files, tmp_path, features={"image": tmp_path / "img.csv", "image2": tmp_path / "img.parquet"})
    for mod in ("image", "image2"):
        np.testing.assert_array_equal(ds.features[mod], _features_for(ds.item_ids))
    back = load_atomic(tmp_path / "out")
    np.testing.assert_array_equal(back.features["image"], _features_for(back.item_ids))


def test_feature_npy_with_id_list_and_by_integer_id(raw_files, tmp_path):
    items = sorted(set(raw_files["frame"].item_id), key=int)[::-1]
    np.save(tmp_path / "a.npy", _features_for(items))
    (tmp_path / "a_ids.txt").write_text("\n".join(items) + "\n")
    by_int = np.zeros((200, 4), dtype=np.float32)
    by_int[[int(s) for s in items]] = _features_for(items)
    np.save(tmp_path / "b.npy", by_int)
    ds = _prepare(raw_files, tmp_path, features={"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"},
                  feature_ids={"a": tmp_path / "a_ids.txt"})
    np.testing.assert_array_equal(ds.features["a"], _features_for(ds.item_ids))
    np.testing.assert_array_equal(ds.features["b"], _features_for(ds.item_ids))


def test_missing_features_error_or_zero_fill(raw_files, tmp_path):
    items = sorted(set(raw_files["frame"].item_id), key=int)
    table = pd.DataFrame(_features_for(items[1:]), columns=list("abcd"))
    table.insert(0, "item_id", items[1:])
    table.to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(DataError, match=rf"1 of {len(items)} items have no 'img' feature row \(first: item id '{items[0]}'\)"):
        _prepare(raw_files, tmp_path, features={"img": tmp_path / "f.csv"})
    ds = _prepare(raw_files, tmp_path, features={"img": tmp_path / "f.csv"}, allow_missing_features=True)
    row = ds.item_ids.tolist().index(items[0])
    assert not ds.features["img"][row].any()
    assert ds.features["img"][row + 1].any()


def test_text_features_aligned_with_fake_model(raw_files, tmp_path, fake_text_model):
    report = {}
    ds = _prepare(raw_files, tmp_path, items=raw_files["items"], text_cols=["title"], text_model=fake_text_model,
                  report=report)
    lengths = ds.features["text"][:, 0]
    titles = pd.read_csv(raw_files["items"], sep="\t", dtype=str, keep_default_na=False).set_index("item_id")["title"]
    assert lengths.tolist() == [len(titles[i]) for i in ds.item_ids]
    assert report["items_with_empty_text"] == 1 and report["items_not_in_items_file"] == 0


def test_text_items_missing_from_item_table(raw_files, tmp_path, fake_text_model):
    titles = pd.read_csv(raw_files["items"], sep="\t", dtype=str).iloc[3:]
    titles.to_csv(tmp_path / "few.tsv", sep="\t", index=False)
    report = {}
    ds = _prepare(raw_files, tmp_path, items=tmp_path / "few.tsv", text_cols=["title"],
                  text_model=fake_text_model, report=report)
    assert report["items_not_in_items_file"] == 3
    assert (ds.features["text"][:, 0] == 0).sum() == 3


def test_multiple_text_columns_joined(tmp_path, fake_text_model):
    rows = [(f"u{u}", str(i), 1) for u in range(3) for i in range(6)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(tmp_path / "r.csv", index=False)
    pd.DataFrame({"item_id": [str(i) for i in range(6)], "title": ["ab"] * 6, "brand": ["xyz"] * 6}).to_parquet(
        tmp_path / "items.parquet")
    ds = prepare_dataset(tmp_path / "r.csv", None, kcore=0, items=tmp_path / "items.parquet",
                         text_cols=["title", "brand"], text_model=fake_text_model, show_progress=False)
    assert (ds.features["text"][:, 0] == len("ab xyz")).all()


def test_prepare_cold_and_loo_splits(raw_files, tmp_path):
    cold = _prepare(raw_files, tmp_path, rating_equals=1, split="cold", seed=1)
    train_items = set(cold.train[:, 1].tolist())
    assert not train_items & set(cold.valid[:, 1].tolist())
    assert not train_items & set(cold.test[:, 1].tolist())
    loo = prepare_dataset(raw_files["ratings"], tmp_path / "loo", kcore=0, rating_equals=1, split="loo",
                          timestamp_col="ts")
    assert len(loo.test) == loo.n_users == len(loo.valid)
    df = raw_files["frame"]
    df = df[df.rating == 1].drop_duplicates(["user_id", "item_id"])
    last = df.sort_values("ts").groupby("user_id").tail(1)
    got = {(loo.user_ids[u], loo.item_ids[i]) for u, i in loo.test}
    assert got == set(zip(last.user_id, last.item_id))
    # the .inter keeps each interaction's rating and timestamp (the earliest row of a duplicated pair)
    inter = pd.read_csv(tmp_path / "loo" / "loo.inter", sep="\t")
    written = {(str(loo.user_ids[u]), str(loo.item_ids[i])): (r, t)
               for u, i, r, t in inter[["userID", "itemID", "rating", "timestamp"]].itertuples(index=False)}
    first = raw_files["frame"][raw_files["frame"].rating == 1].sort_values("ts", kind="stable")
    first = first.drop_duplicates(["user_id", "item_id"])
    expected = {(str(u), str(i)): (float(r), float(t)) for u, i, r, t in first[["user_id", "item_id", "rating", "ts"]]
                .itertuples(index=False)}
    assert written == {k: expected[k] for k in written} and len(written) == loo.n_interactions


def test_read_feature_file_list_column_parquet(tmp_path):
    df = pd.DataFrame({"item_id": ["a", "b"], "vec": [np.arange(3.0), np.ones(3)]})
    df.to_parquet(tmp_path / "f.parquet")
    table = read_feature_file(tmp_path / "f.parquet")
    assert table.values.shape == (2, 3) and table.ids.tolist() == ["a", "b"]


def test_cli_prepare_with_features_and_rerun_guard(raw_files, tmp_path, capsys):
    from mmgraph.cli.main import main

    items = sorted(set(raw_files["frame"].item_id), key=int)
    np.save(tmp_path / "a.npy", _features_for(items[1:]))
    (tmp_path / "a_ids.txt").write_text("\n".join(items[1:]))
    table = pd.DataFrame(_features_for(items), columns=list("wxyz"))
    table.insert(0, "book", items)
    table.iloc[::-1].to_parquet(tmp_path / "b.parquet")
    out = tmp_path / "ds"
    argv = ["data", "prepare", "--ratings", str(raw_files["ratings"]), "--rating-equals", "1", "--kcore", "0",
            "--features", f"a={tmp_path / 'a.npy'}", "--features", f"b={tmp_path / 'b.parquet'}",
            "--feature-ids", f"a={tmp_path / 'a_ids.txt'}", "--feature-key", "book", "--allow-missing-features",
            "--seed", "7", "--out", str(out), "--name", "mine"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    ds = load_atomic(out)
    assert ds.name == "ds" and (out / "mine.inter").is_file()
    np.testing.assert_array_equal(ds.features["b"], _features_for(ds.item_ids))
    assert not ds.features["a"][ds.item_ids.tolist().index(items[0])].any()
    assert main(argv) == 0  # same command again overwrites in place
    # a run without modality 'b' into the same folder would leave a stale b_feat.npy behind: refused
    assert main(argv[:8] + ["--out", str(out), "--name", "mine"]) == 2
    assert "b_feat.npy" in capsys.readouterr().err


def test_prepare_warns_where_the_result_is_probably_not_what_was_meant(tmp_path, caplog):
    """Three silent pitfalls get a warning: a .npy whose rows follow 1-based ids read as 0-based rows, ratings
    read without a filter, and leave-one-out without timestamps."""
    rows = [(u, str(i), 1) for u in range(12) for i in range(1, 20) if (u + i) % 3] + [(0, "20", 0)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(tmp_path / "r.csv", index=False)
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((20, 3)).astype(np.float32))
    with caplog.at_level("WARNING", logger="mmgraph"):
        prepare_dataset(tmp_path / "r.csv", tmp_path / "a", kcore=0, rating_equals=1, show_progress=False,
                        features={"image": tmp_path / "img.npy"})
    assert "read as raw item ids 0..19, but the ratings' item ids run 1..20" in caplog.text
    assert "--feature-ids image=FILE" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmgraph"):
        prepare_dataset(tmp_path / "r.csv", tmp_path / "b", kcore=0, rating_col="rating", split="loo",
                        show_progress=False)
    assert "ratings from 0 to 1 are read but not filtered" in caplog.text
    assert "--split loo without --timestamp-col" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmgraph"):                 # 0-based rows: nothing to say
        np.save(tmp_path / "img21.npy", np.zeros((21, 3), dtype=np.float32) + 1)
        prepare_dataset(tmp_path / "r.csv", tmp_path / "c", kcore=0, rating_equals=1, show_progress=False,
                        features={"image": tmp_path / "img21.npy"})
    assert "read as raw item ids" not in caplog.text and "not filtered" not in caplog.text
