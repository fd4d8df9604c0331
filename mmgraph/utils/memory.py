"""Process-level memory settings for CPU training."""
from __future__ import annotations

_MALLOC_TUNED = False


def tune_glibc_malloc(threshold_mb: int = 32, large_blocks: bool = True) -> bool:
    """Keep freed blocks in glibc's heap instead of returning them to the OS.

    Every training step allocates (and frees) many ``[U + I, C d]`` buffers; by default glibc serves
    those with fresh ``mmap`` pages, and the kernel zero-fills each page on first touch -- about 10 % of
    a CM3 step on CPU. Blocks of up to ``threshold_mb`` (glibc's ceiling for the threshold) come from the
    heap; with ``large_blocks`` larger ones do too (``mmap`` is not used for allocations at all), which is
    what keeps a trainable ``[I, 4096]`` feature table's per-step gradient and row gathers from faulting
    in 100+ MB a step (a FREEDOM step on Amazon Baby: ~51k page faults and 270-282 ms -> none and 140 ms).
    This is the in-process equivalent of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_MMAP_MAX_=0`` /
    ``MALLOC_TRIM_THRESHOLD_`` (PyTorch's CPU tuning guide suggests jemalloc/tcmalloc for the same reason).
    Process-wide, once; a no-op off glibc.
    Returns whether it was applied.
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
        m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
        ok = libc.mallopt(m_mmap_threshold, int(threshold_mb) << 20) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 1 << 30) == 1
        if large_blocks:  # glibc still falls back to mmap when the heap cannot grow
            ok = ok and libc.mallopt(m_mmap_max, 0) == 1
    except (OSError, AttributeError, ValueError):
        return False
    _MALLOC_TUNED = bool(ok)
    return _MALLOC_TUNED
