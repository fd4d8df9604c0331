"""Every ``mmgraph ...`` command and every Python example of README.md runs, on tiny synthetic data.

The commands are taken from the README's ```bash blocks (continuation lines joined, comments dropped,
``a && b`` split) and from its prose where a ```mmgraph ...``` quote is a complete command, and run in
order in one temporary folder, so a command may use what an earlier one wrote (``train --out runs/lgcn``
before ``evaluate runs/lgcn``). Data paths are replaced by tiny datasets and
training is capped at a few epochs. ``python scripts/...`` lines are left to the scripts' own tests.

To extend: a new data path in the README goes into :data:`SUBSTITUTIONS` (or :func:`datasets`), a
sub-command that needs its own caps into :data:`EXTRA`; a method command needs nothing.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd
import pytest

from mmgraph.cli.main import main
from mmgraph.data import make_synthetic, save_atomic

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_EPOCHS = 2
#: README path -> fixture name (see :func:`datasets`)
SUBSTITUTIONS = {
    "../shared/data/tiktok": "multimodal",
    "../shared/data/baby": "id_only",
    "../shared/data/dbbook-raw/ratings.csv": "raw_ratings",
    "../shared/data/dbbook-raw/items.tsv": "raw_items",
}
#: extra arguments per sub-command (appended after the README's own)
EXTRA: Dict[Tuple[str, ...], List[str]] = {
    ("train",): ["--no-progress", "--set", "threads=1"],
    ("data", "prepare"): ["--no-progress"],
    ("benchmark",): ["--no-progress", "--epochs", str(MAX_EPOCHS), "--set", "threads=1"],
}


def readme_blocks(text: str) -> List[Tuple[str, str]]:
    """``[(language, body)]`` of the fenced code blocks, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def _block_commands(body: str) -> List[str]:
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        part: List[str] = []
        for word in words + ["&&"]:
            if word in ("&&", ";", "||"):
                if part and part[0] == "mmgraph":
                    commands.append(shlex.join(part))
                part = []
            else:
                part.append(word)
    return commands


def is_complete_command(span: str) -> bool:
    """An inline ```mmgraph ...``` of the prose that is a command to run: no placeholders (``DIR``,
    ``RUN [RUN ...]``) and arguments the parser accepts (``mmgraph evaluate --channel`` names an option)."""
    from mmgraph.cli.main import build_parser

    words = shlex.split(span)
    if words[:1] != ["mmgraph"] or any(re.fullmatch(r"[A-Z][A-Z_]+", w) or "..." in w for w in words):
        return False
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(words[1:])
    except SystemExit:
        return False
    return True


def readme_commands(text: str) -> List[str]:
    """Every ``mmgraph ...`` command of the README in document order: those of its bash blocks and the
    complete ones quoted inline in the prose (``mmgraph train --resume --out runs/lgcn_ddp --nproc 2``)."""
    commands = []
    blocks = list(re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M))
    for prose, block in zip([text[a.end() if a else 0:b.start() if b else len(text)]
                             for a, b in zip([None] + blocks, blocks + [None])], blocks + [None]):
        for span in re.findall(r"`(mmgraph [^`]+)`", prose):
            if is_complete_command(span):
                commands.append(shlex.join(shlex.split(span)))
        if block is not None and block.group(1) in ("bash", "sh", "console", ""):
            commands += _block_commands(block.group(2))
    return commands


def _cap_epochs(argv: List[str]) -> List[str]:
    out = list(argv)
    if "--epochs" in out:
        k = out.index("--epochs") + 1
        out[k] = str(min(int(out[k]), MAX_EPOCHS))
    else:
        out += ["--epochs", str(MAX_EPOCHS)]
    return out


def prepare_argv(command: str, paths: Dict[str, str]) -> List[str]:
    argv = shlex.split(command)[1:]
    argv = [paths.get(a, a) for a in argv]
    argv = ["synthetic:users=120,items=100,seed=1" if a == "synthetic" and prev == "--data" else a
            for prev, a in zip([""] + argv, argv)]
    for prefix, extra in EXTRA.items():
        if tuple(argv[:len(prefix)]) == prefix:
            argv = argv + extra
    if argv[:1] == ["train"]:
        argv = _cap_epochs(argv)
    return argv


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("readme_data")
    mm = make_synthetic(n_users=120, n_items=110, modalities={"image": 16, "audio": 8}, seed=2)
    ids = make_synthetic(n_users=100, n_items=105, modalities={}, seed=3)
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", str(1000 + i), int(rng.random() < 0.9)) for u in range(60)
            for i in rng.choice(40, size=14, replace=False)]
    ratings = root / "ratings.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(ratings, index=False)
    items = root / "items.tsv"
    pd.DataFrame({"item_id": [str(1000 + i) for i in range(40)],
                  "title": [f"book {i}" for i in range(40)]}).to_csv(items, sep="\t", index=False)
    return {"multimodal": str(save_atomic(mm, root / "tiktok", name="tiktok")),
            "id_only": str(save_atomic(ids, root / "baby", name="baby")),
            "raw_ratings": str(ratings), "raw_items": str(items)}


@pytest.fixture()
def fake_text(monkeypatch, fake_text_model):
    """``data prepare --text-cols`` embeds with a stand-in model (no weights needed)."""
    import mmgraph.data.text as text

    monkeypatch.setattr(text, "_require_sentence_transformers", lambda: None)
    monkeypatch.setattr(text, "bundled_model_path", lambda: "fake")
    monkeypatch.setattr(text, "load_text_model", lambda *a, **k: fake_text_model)


def test_readme_lists_commands():
    commands = readme_commands(README.read_text())
    assert len(commands) >= 20 and all(c.startswith("mmgraph ") for c in commands)
    assert "mmgraph train --method freedom --data ../shared/data/tiktok --set 'plugins=[cross]'" in commands
    # complete commands quoted in the prose run too; placeholders and option names do not
    assert "mmgraph train --resume --out runs/lgcn_ddp --nproc 2" in commands
    assert not any(c.startswith(("mmgraph evaluate --channel", "mmgraph train --resume --out DIR")) for c in commands)
    assert not is_complete_command("mmgraph analyze subsets RUN [RUN ...]")


def test_every_readme_command_and_example_runs(datasets, fake_text, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMGRAPH_CACHE", str(tmp_path / "cache"))
    paths = {readme: datasets[name] for readme, name in SUBSTITUTIONS.items()}
    text = README.read_text()
    failures = []
    for command in readme_commands(text):
        argv = prepare_argv(command, paths)
        code = main(argv)
        captured = capsys.readouterr()
        if code != 0:
            failures.append(f"{command}\n    -> exit {code}: {captured.err.strip()[-300:]}")
        elif argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
            assert "no run folder written" in captured.out, command   # the quick start writes nothing: say so
    assert not failures, "README commands that fail:\n" + "\n".join(failures)

    namespace: Dict[str, object] = {}
    for lang, body in readme_blocks(text):
        if lang != "python":
            continue
        for readme_path, name in SUBSTITUTIONS.items():
            body = body.replace(readme_path, datasets[name])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(body, "README.md", "exec"), namespace)
        if "train(" in body:   # the training example says what it did and stops after a bounded number of epochs
            assert out.getvalue().strip(), "the README's training example prints nothing"
            assert namespace["trainer"].max_epochs <= 100
            assert namespace["result"]["epochs_run"] <= 100


def test_the_readme_plugin_command_runs_one_training(datasets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    command = "mmgraph train --method freedom --data ../shared/data/tiktok --set plugins=[cross]"
    assert command in README.read_text()
    argv = prepare_argv(command, {k: datasets[v] for k, v in SUBSTITUTIONS.items()}) + ["--out", "one"]
    assert main(argv) == 0
    assert (tmp_path / "one" / "final_metrics.json").exists() and not list((tmp_path / "one").glob("point_*"))
    assert "point " not in capsys.readouterr().out


def test_readme_states_what_a_new_user_needs():
    """The quick start's facts hold: the default run length is the configs' one, every config path the
    README names exists (an optional one is called optional), and a train command without --out says that
    it wrote nothing (checked in :func:`test_every_readme_command_and_example_runs`)."""
    from mmgraph.train.config import load_config

    text = " ".join(README.read_text().split())
    defaults = load_config("lightgcn")
    assert f"up to {defaults['epochs']} epochs" in text and f"patience: {defaults['patience']}" in text
    root = README.parent
    for path in sorted(set(re.findall(r"configs/[\w/.<>-]+", text))):
        folder = root / path.split("<")[0]
        if "<" in path:
            assert folder.is_dir() or f"{path}` (optional" in text, f"README names {path}, absent and not optional"
        else:
            assert (root / path.rstrip(".")).exists(), f"README names {path}, which does not exist"
