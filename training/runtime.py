"""Process-wide settings that every long-running command applies when it starts."""
from __future__ import annotations

import ctypes


def keep_freed_memory() -> bool:
    """Ask glibc to keep large freed buffers in the process instead of returning them to the kernel
    and faulting them in again at the next network call (the same as MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_). Measured on a 2-core CPU: batch-16 sampling at 128² 2.1x
    faster for ~1 GB more resident memory (benchmarks/bench_sampling.py), so sampling applies it; a GAN
    training iteration gains nothing measurable (0.94-1.00x, benchmarks/bench_training.py), so training
    does not. Outputs are unchanged. Returns False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's mallopt parameter numbers
    return all(mallopt(param, value) == 1 for param, value in
               ((m_mmap_threshold, 1 << 30), (m_trim_threshold, 2**31 - 1), (m_top_pad, 1 << 30)))
