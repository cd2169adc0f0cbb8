"""glibc allocator settings for long jobs that reallocate the same large buffers every step."""
from __future__ import annotations

import ctypes


def tune_malloc(mmap_threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (process-wide).

    A training step allocates and frees the same large buffers every time; above glibc's mmap
    threshold (at most 32 MB by default) each one is a fresh mmap whose pages are faulted in and
    zeroed by the kernel again at every step (the cost is measured in README.performance.md).
    This sets ``M_MMAP_THRESHOLD`` to ``mmap_threshold`` and ``M_TRIM_THRESHOLD`` to its maximum;
    memory freed by the process is then kept for reuse, not returned to the system (the peak
    resident set is unchanged). Meant for the entry points of long-running jobs (``ride train``,
    ``ride evaluate``, ``ride bench --tune-malloc``); returns False where glibc is not found.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(min(mmap_threshold, 2**31 - 1)))
        return bool(ok and libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False
