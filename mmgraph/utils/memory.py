"""Process-level memory settings for CPU training."""
from __future__ import annotations

_MALLOC_TUNED = False


def tune_glibc_malloc(threshold_mb: int = 32) -> bool:
    """Keep freed blocks of up to ``threshold_mb`` in glibc's heap instead of returning them to the OS.

    Every training step allocates (and frees) many ``[U + I, C d]`` buffers; by default glibc serves
    those with fresh ``mmap`` pages, and the kernel zero-fills each page on first touch -- about 10 % of
    a CM3 step on CPU. This is the in-process equivalent of ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` (PyTorch's CPU tuning guide suggests jemalloc/tcmalloc for the same
    reason). Process-wide, once; a no-op off glibc. Returns whether it was applied.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes
        import ctypes.util
        import platform
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(threshold_mb) << 20) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError, ValueError):
        return False
    _MALLOC_TUNED = bool(ok)
    return _MALLOC_TUNED
