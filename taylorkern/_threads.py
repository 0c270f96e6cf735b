"""Thread counts of the compiled kernels (OpenMP) and of the BLAS they call.

Both default to the machine's cores.  The kernels never call BLAS from inside an
OpenMP parallel region, so the two pools take turns instead of oversubscribing.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

_limits = None
_requested = None  # what set_num_threads asked for, reported when there is no compiled module


def _core():
    try:
        from . import _core
    except ImportError:
        return None
    return _core


def get_num_threads():
    """Threads used by the compiled kernels."""
    core = _core()
    if core is not None:
        return core.get_num_threads()
    return _requested or os.cpu_count() or 1


def set_num_threads(n):
    """Use ``n`` threads in the compiled kernels and in BLAS, for the whole process."""
    global _limits, _requested
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    core = _core()
    if core is not None:
        core.set_num_threads(n)
    _limits = threadpool_limits(limits=n, user_api="blas")
    _requested = n
