"""Thread counts of taylorkern's kernels (docs/threading.md).

One rule: a compiled kernel runs on ``min(n, omp_get_max_threads())`` threads, where ``n`` is
what :func:`set_num_threads` set (process-wide, every calling thread; no limit until it is
called) and ``omp_get_max_threads()`` is the OpenMP limit of the thread that makes the call:
``OMP_NUM_THREADS`` (else the cores), lowered in that thread by
``threadpoolctl.threadpool_limits`` or ``omp_set_num_threads``.  The numba backend follows the
same count, capped at ``NUMBA_NUM_THREADS``.  Nothing here changes BLAS's thread counts or
the OpenMP settings other libraries see.
"""

from __future__ import annotations

import os

_requested = None  # what set_num_threads asked for, reported when there is no compiled module


def _core():
    try:
        from . import _core
    except ImportError:
        return None
    return _core


def get_num_threads():
    """Threads a kernel called from this thread would use."""
    core = _core()
    if core is not None:
        return core.get_num_threads()
    return _requested or os.cpu_count() or 1


def set_num_threads(n):
    """Run taylorkern's kernels on at most ``n`` threads, from every thread of the process.

    Other libraries' threads (BLAS, OpenMP code elsewhere) are left alone.  ``OMP_NUM_THREADS``
    and threadpoolctl's limits in the calling thread still bound the count from above."""
    global _requested
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    core = _core()
    if core is not None:
        core.set_num_threads(n)
    _requested = n
