"""Matplotlib for the analyses, headless, with a one-line error when it is missing."""
from __future__ import annotations

from mmgraph.errors import ConfigError


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the analyses' figures need matplotlib: pip install 'mmgraph[plot]'") from None
    return plt
