"""``dataset_stats`` / ``mmgraph data stats`` on hand-made data and on the shared TikTok folder."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from mmgraph.cli.main import main
from mmgraph.data.atomic import save_atomic
from mmgraph.data.dataset import RecDataset
from mmgraph.data.stats import dataset_stats, format_stats


def _tiny() -> RecDataset:
    # 4 users, 5 items; user 3 and items 3, 4 have no training interaction
    train = np.array([[0, 0], [0, 1], [1, 1], [2, 2], [2, 0]])
    valid = np.array([[0, 3], [3, 1]])
    test = np.array([[1, 4], [3, 0], [0, 1]])
    return RecDataset(4, 5, train, valid, test, {"image": np.zeros((5, 7)), "text": np.ones((5, 3))}, name="tiny")


def test_dataset_stats_counts():
    s = dataset_stats(_tiny())
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (4, 5, 10)
    assert s["splits"] == {"train": 5, "valid": 2, "test": 3}
    assert s["modalities"] == {"image": 7, "text": 3}
    assert s["items_without_train"] == 2 and s["users_without_train"] == 1
    assert s["density"] == pytest.approx(10 / 20)
    assert s["users_per_split"] == {"train": 3, "valid": 2, "test": 3}
    assert s["duplicate_pairs"] == 1  # (0, 1) in train and test
    assert s["train_interactions_per_user"] == {"mean": round(5 / 3, 3), "min": 1, "max": 2}
    assert s["zero_feature_rows"] == {"image": 5, "text": 0}
    text = format_stats(s)
    assert re.search(r"items with no train interaction +2\n", text) and "image 7-d, text 3-d" in text
    assert re.search(r"items with an all-zero feature row +image 5$", text) and "text 0" not in text
    json.dumps(s)


def test_stats_cli_json_is_one_object(tmp_path, capsys):
    save_atomic(_tiny(), tmp_path / "tiny")
    assert main(["data", "stats", str(tmp_path / "tiny"), "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    s = json.loads(out)
    assert s["n_items"] == 5 and s["splits"]["test"] == 3 and s["modalities"] == {"image": 7, "text": 3}
    assert main(["data", "stats", str(tmp_path / "tiny" / "tiny.inter")]) == 0
    assert "users" in capsys.readouterr().out


def test_stats_cli_subprocess_error_is_one_line(tmp_path):
    """Outside pytest's log capture: exit 2, the error is the last stderr line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "mmgraph.cli.main", "data", "stats", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"mmgraph: error: {tmp_path / 'none'}: no such dataset folder"]


@pytest.mark.shared
def test_tiktok_stats_json(shared_data, capsys):
    folder = shared_data / "tiktok"
    if not folder.is_dir():
        pytest.skip("tiktok folder absent")
    assert main(["data", "stats", str(folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (9308, 6710, 68722)
    assert s["splits"] == {"train": 59541, "valid": 3051, "test": 6130}
    assert s["modalities"] == {"audio": 128, "image": 128}
    assert s["items_without_train"] == 465 and s["users_without_train"] == 10
    assert main(["data", "stats", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "9,308" in text and "6,710" in text and "68,722" in text


def test_stats_of_the_synthetic_dataset_spec(capsys):
    from mmgraph.cli.main import main
    assert main(["data", "stats", "synthetic:users=50,items=40,seed=1"]) == 0
    out = capsys.readouterr().out
    assert "users                            50" in out and "(over items with any)" in out
