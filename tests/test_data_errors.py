"""Bad input stops with one clear line: DataError in the API, exit code 2 + one stderr line in the CLI.

Each case builds broken files in ``tmp_path`` and returns the API call, the CLI argv and the fragments
the message must contain (the file, the line / row / id, and what was expected).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmgraph.cli.main import main
from mmgraph.data.atomic import load_atomic, save_atomic
from mmgraph.data.prepare import prepare_dataset
from mmgraph.data.raw import read_feature_file, read_interactions
from mmgraph.data.synthetic import make_synthetic
from mmgraph.errors import DataError

GOOD_ROWS = "".join(f"u{u},{i},1\n" for u in range(4) for i in range(6))


def _ratings(tmp: Path, body: str = GOOD_ROWS, header: str = "user_id,item_id,rating\n") -> Path:
    path = tmp / "ratings.csv"
    path.write_text(header + body)
    return path


def _prepare_cli(ratings: Path, tmp: Path, *extra: str) -> list:
    return ["data", "prepare", "--ratings", str(ratings), "--kcore", "0", "--out", str(tmp / "out"), *extra]


def _atomic(tmp: Path) -> Path:
    ds = make_synthetic(n_users=30, n_items=25, modalities={"image": 4}, mean_interactions=8, seed=0)
    return save_atomic(ds, tmp / "atom", name="atom")


# --------------------------------------------------------------------------- cases
def case_malformed_row(tmp):
    path = _ratings(tmp, GOOD_ROWS + "u9,3,1,extra\n")
    return (lambda: read_interactions(path), _prepare_cli(path, tmp),
            ["ratings.csv", "line 26", "4 fields, expected 3"])


def case_bad_rating_value(tmp):
    path = _ratings(tmp, GOOD_ROWS.replace("u2,3,1", "u2,3,high"))
    return (lambda: prepare_dataset(path, None, kcore=0, min_rating=1),
            _prepare_cli(path, tmp, "--min-rating", "1"),
            ["ratings.csv", "line 17", "'high'", "expected a finite number"])


def case_empty_id(tmp):
    path = _ratings(tmp, GOOD_ROWS + ",3,1\n")
    return (lambda: read_interactions(path), _prepare_cli(path, tmp), ["ratings.csv", "line 26", "empty user id"])


def case_missing_column(tmp):
    path = _ratings(tmp, GOOD_ROWS, header="user_id,book,rating\n")
    return (lambda: read_interactions(path), _prepare_cli(path, tmp),
            ["ratings.csv", "missing column 'item_id'", "'book'"])


def case_missing_text_column(tmp):
    path = _ratings(tmp)
    (tmp / "items.tsv").write_text("item_id\tname\n0\ta\n")
    return (lambda: prepare_dataset(path, None, kcore=0, items=tmp / "items.tsv", text_cols=["title"]),
            _prepare_cli(path, tmp, "--items", str(tmp / "items.tsv"), "--text-cols", "title"),
            ["items.tsv", "missing column 'title'"])


def case_feature_id_out_of_range(tmp):
    path = _ratings(tmp)
    np.save(tmp / "img.npy", np.ones((5, 3), dtype=np.float32))  # items 0..5 -> id 5 has no row
    return (lambda: prepare_dataset(path, None, kcore=0, features={"image": tmp / "img.npy"}),
            _prepare_cli(path, tmp, "--features", f"image={tmp / 'img.npy'}"),
            ["img.npy", "item id '5' is out of range", "expected 0..4"])


def case_atomic_id_out_of_range(tmp):
    folder = _atomic(tmp)
    meta = json.loads((folder / "meta.json").read_text())
    meta["n_items"] = 10
    (folder / "meta.json").write_text(json.dumps(meta))
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)],
            ["atom.inter", "line", "itemID", "out of range, expected 0..9"])


def case_feature_rows_mismatch_id_list(tmp):
    path = _ratings(tmp)
    np.save(tmp / "img.npy", np.ones((6, 3), dtype=np.float32))
    (tmp / "ids.txt").write_text("0\n1\n2\n3\n4\n")
    return (lambda: read_feature_file(tmp / "img.npy", tmp / "ids.txt"),
            _prepare_cli(path, tmp, "--features", f"image={tmp / 'img.npy'}", "--feature-ids", f"image={tmp / 'ids.txt'}"),
            ["img.npy", "6 feature rows", "ids.txt has 5 ids", "expected one row per listed item"])


def case_atomic_feature_rows_mismatch(tmp):
    folder = _atomic(tmp)
    np.save(folder / "image_feat.npy", np.ones((26, 4), dtype=np.float32))
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)],
            ["image_feat.npy", "26 rows", "expected one per item (25)"])


def case_feature_nan(tmp):
    path = _ratings(tmp)
    rows = "".join(f"{i},{i}.5,1\n" for i in range(6)).replace("3,3.5,1", "3,nan,1")
    (tmp / "f.csv").write_text("item_id,a,b\n" + rows)
    return (lambda: prepare_dataset(path, None, kcore=0, features={"t": tmp / "f.csv"}),
            _prepare_cli(path, tmp, "--features", f"t={tmp / 'f.csv'}"),
            ["f.csv", "line 5", "item id '3'", "NaN/inf"])


def case_feature_not_numeric(tmp):
    path = _ratings(tmp)
    rows = "".join(f"{i},{i}.5,1\n" for i in range(6)).replace("2,2.5,1", "2,2.5,abc")
    (tmp / "f.tsv").write_text("item_id\ta\tb\n" + rows.replace(",", "\t"))
    return (lambda: prepare_dataset(path, None, kcore=0, features={"t": tmp / "f.tsv"}),
            _prepare_cli(path, tmp, "--features", f"t={tmp / 'f.tsv'}"),
            ["f.tsv", "line 4", "'abc'", "expected a number"])


def case_atomic_feature_inf(tmp):
    folder = _atomic(tmp)
    feat = np.load(folder / "image_feat.npy")
    feat[7, 1] = np.inf
    np.save(folder / "image_feat.npy", feat)
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)],
            ["image_feat.npy", "NaN/inf", "item 7"])


def case_missing_features(tmp):
    path = _ratings(tmp)
    (tmp / "f.csv").write_text("item_id,a\n0,1\n1,1\n2,1\n4,1\n5,1\n")
    return (lambda: prepare_dataset(path, None, kcore=0, features={"t": tmp / "f.csv"}),
            _prepare_cli(path, tmp, "--features", f"t={tmp / 'f.csv'}"),
            ["f.csv", "1 of 6 items have no 't' feature row", "item id '3'", "--allow-missing-features"])


def case_duplicate_feature_id(tmp):
    path = _ratings(tmp)
    (tmp / "f.csv").write_text("item_id,a\n0,1\n1,1\n2,1\n1,2\n")
    return (lambda: read_feature_file(tmp / "f.csv"), _prepare_cli(path, tmp, "--features", f"t={tmp / 'f.csv'}"),
            ["f.csv", "item id '1' appears twice", "line 3 and line 5"])


def case_empty_split_prepare(tmp):
    path = _ratings(tmp, "".join(f"u{u},{i},1\n" for u in range(4) for i in range(3)))
    return (lambda: prepare_dataset(path, None, kcore=0, split="cold"),
            _prepare_cli(path, tmp, "--split", "cold"), ["valid split is empty", "cold split"])


def case_empty_split_atomic(tmp):
    folder = _atomic(tmp)
    inter = folder / "atom.inter"
    df = pd.read_csv(inter, sep="\t")
    df.loc[df.x_label == 1, "x_label"] = 0
    df.to_csv(inter, sep="\t", index=False)
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)], ["atom.inter", "valid split is empty"])


def case_short_users_warm(tmp):
    path = _ratings(tmp, GOOD_ROWS + "u9,1,1\nu9,2,1\n")
    return (lambda: prepare_dataset(path, None, kcore=0), _prepare_cli(path, tmp),
            ["warm split", "2 interactions", "at least 5", "--kcore"])


def case_rating_filter_removes_all(tmp):
    path = _ratings(tmp)
    return (lambda: prepare_dataset(path, None, kcore=0, rating_equals=5),
            _prepare_cli(path, tmp, "--rating-equals", "5"),
            ["ratings.csv", "no interactions left after the rating filter (rating == 5)"])


def case_missing_file(tmp):
    return (lambda: read_interactions(tmp / "nope.csv"), _prepare_cli(tmp / "nope.csv", tmp),
            ["nope.csv", "no such ratings file"])


def case_unknown_format(tmp):
    (tmp / "r.xlsx").write_text("x")
    return (lambda: read_interactions(tmp / "r.xlsx"), _prepare_cli(tmp / "r.xlsx", tmp),
            ["r.xlsx", "unknown table format '.xlsx'"])


def case_atomic_extra_field_on_every_row(tmp):
    # pandas would take the first column as an index and shift every column
    folder = _atomic(tmp)
    inter = folder / "atom.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join([lines[0]] + [line + "\textra" for line in lines[1:]]) + "\n")
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)],
            ["atom.inter", "line 2", "6 fields, but the header has 5"])


def case_atomic_not_utf8(tmp):
    folder = _atomic(tmp)
    inter = folder / "atom.inter"
    raw = inter.read_bytes().split(b"\n")
    raw[40] = raw[40] + b"\xe9"
    inter.write_bytes(b"\n".join(raw))
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)], ["atom.inter", "not a UTF-8", "line 41"])


def case_atomic_raw_ids(tmp):
    folder = _atomic(tmp)
    (folder / "meta.json").unlink()
    inter = folder / "atom.inter"
    df = pd.read_csv(inter, sep="\t")
    df.loc[6, "userID"] = 2_000_000_000
    df.to_csv(inter, sep="\t", index=False)
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)],
            ["atom.inter", "line 8", "userID 2000000000", "0-based and contiguous"])


def case_feature_npz(tmp):
    folder = _atomic(tmp)
    with open(folder / "image_feat.npy", "wb") as fh:
        np.savez(fh, a=np.ones((25, 4), dtype=np.float32))
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)], ["image_feat.npy", "a .npz archive"])


def case_feature_not_npy(tmp):
    folder = _atomic(tmp)
    (folder / "image_feat.npy").write_text("hello")
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)], ["image_feat.npy", "not a .npy file"])


def case_feature_zero_columns(tmp):
    folder = _atomic(tmp)
    np.save(folder / "image_feat.npy", np.zeros((25, 0), dtype=np.float32))
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)], ["image_feat.npy", "0 columns"])


def case_negative_kcore(tmp):
    path = _ratings(tmp)
    return (lambda: prepare_dataset(path, None, kcore=-1), _prepare_cli(path, tmp)[:-4] + ["--kcore", "-1", "--out",
            str(tmp / "out")], ["--kcore must be >= 0", "got -1"])


def case_atomic_without_header(tmp):
    folder = tmp / "hl"
    folder.mkdir()
    (folder / "hl.inter").write_text("0\t1\t0\n0\t2\t0\n1\t1\t1\n1\t2\t2\n")
    return (lambda: load_atomic(folder), ["data", "stats", str(folder)],
            ["hl.inter", "header is ['0', '1', '0']", "the file has no header line"])


def case_too_few_synthetic_items(tmp):
    return (lambda: make_synthetic(n_users=5, n_items=3), ["train", "--method", "mf", "--data",
            "synthetic:users=5,items=3"], ["items=3 is too few", "items >= 10"])


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_api(case, tmp_path):
    api, _, fragments = case(tmp_path)
    with pytest.raises(DataError) as info:
        api()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_cli(case, tmp_path, capsys):
    _, argv, fragments = case(tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mmgraph: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.inter"))


def test_unused_ids_and_held_out_training_pairs_are_reported(tmp_path, caplog):
    from mmgraph.data.stats import dataset_stats
    folder = _atomic(tmp_path)
    (folder / "meta.json").unlink()
    (folder / "image_feat.npy").unlink()
    inter = folder / "atom.inter"
    df = pd.read_csv(inter, sep="\t")
    df["itemID"] *= 3                                       # ids with gaps, no features to describe them
    train = df[df.x_label == 0].head(4).assign(x_label=2)   # four test rows repeating training pairs
    pd.concat([df, train]).to_csv(inter, sep="\t", index=False)
    with caplog.at_level("WARNING", logger="mmgraph"):
        ds = load_atomic(folder)
    assert any("itemID ids 0..72 are unused" in r.getMessage() and "no features" in r.getMessage()
               for r in caplog.records), caplog.text
    assert dataset_stats(ds)["held_out_in_train"] == {"valid": 0, "test": 4}
    assert int(ds.in_train("test").sum()) == 4


def test_all_zero_feature_rows_are_reported_when_loading(tmp_path, caplog):
    folder = _atomic(tmp_path)
    feat = np.load(folder / "image_feat.npy")
    feat[[2, 5]] = 0
    np.save(folder / "image_feat.npy", feat)
    with caplog.at_level("WARNING", logger="mmgraph"):
        load_atomic(folder)
    assert "2 of 25 items have an all-zero feature row" in caplog.text


def test_arrays_not_named_as_features_are_reported_not_silently_skipped(tmp_path, caplog):
    folder = save_atomic(make_synthetic(n_users=30, n_items=20, modalities={}, seed=0), tmp_path / "d", name="d")
    np.save(folder / "text.npy", np.ones((20, 4), dtype=np.float32))
    np.savez(folder / "image.npz", x=np.ones((20, 4)))
    with caplog.at_level("INFO", logger="mmgraph"):
        ds = load_atomic(folder)
    assert ds.modalities == []
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "not read as item features" in r.message]
    assert warned and "image.npz, text.npy" in warned[0].message and "<modality>_feat.npy" in warned[0].message


def test_feature_files_in_another_format_are_warned_about(tmp_path, caplog):
    # a modality the user meant to give (image_feat.pt) is left out: a warning even when other features load
    folder = save_atomic(make_synthetic(n_users=30, n_items=20, modalities={"text": 4}, seed=0), tmp_path / "d",
                         name="d")
    (folder / "image_feat.pt").write_bytes(b"torch")
    (folder / "audio_feat.csv").write_text("1,2\n")
    with caplog.at_level("WARNING", logger="mmgraph"):
        ds = load_atomic(folder)
    assert ds.modalities == ["text"]
    warned = [r.message for r in caplog.records if "must be .npy files" in r.message]
    assert len(warned) == 1 and "audio_feat.csv, image_feat.pt not read" in warned[0]
