"""Shared definitions of the numba kernels (csrc/common.hpp).

``kernel`` and ``parallel_kernel`` are the decorators of every compiled function:
cache=True (compiled once per machine), nogil=True (the GIL is released while a kernel
runs), and error_model="numpy" (a float division never raises, as in C++; without it numba
guards every division with a ZeroDivisionError check, which also stops LLVM from
vectorizing the loops).
"""

from __future__ import annotations

from functools import partial

from numba import njit, types
from numba.np.ufunc.parallel import _iget_num_threads
from numba.core.extending import intrinsic
from numba.core.imputils import impl_ret_borrowed

kernel = partial(njit, cache=True, nogil=True, error_model="numpy")
parallel_kernel = partial(njit, cache=True, nogil=True, error_model="numpy", parallel=True)

# A parallel loop over rows runs as CHUNKS blocks of consecutive rows, each one call of a
# helper that loops over its rows (a call per row costs reference-count updates on every
# array argument and view: 16% of a loss_and_grad when done per row).
CHUNKS = 64

# Run a loop over rows in parallel only when it is worth waking the threads (kParallelMin).
# A prange index is typed uint64: row helpers are called with np.int64(n) so that the serial
# and the parallel loop share one compiled helper.
PAR_MIN = 1 << 16  # as csrc/common.hpp (raised there: under load, small parallel regions cost more than they gain)


@intrinsic
def ro(typingctx, arr):
    """The same array typed read-only (no copy), so that a helper reading either the caller's
    (read-only) inputs or the kernels' own (writable) buffers has one specialisation."""
    if not isinstance(arr, types.Array):
        return None
    sig = arr.copy(readonly=True)(arr)

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[0])

    return sig, codegen


@njit(inline="always")
def threaded(work):
    """Whether a loop over ``work`` values should run in parallel: above PAR_MIN, and only
    with more than one thread (a parallel region on one thread still hands the work to a
    pool thread and sleeps until it is done: two context switches for nothing).  The count
    comes from numba's own intrinsic, a symbol resolved at load time: numba.get_num_threads()
    is a ctypes pointer, which would make every caller uncacheable."""
    return work > PAR_MIN and _iget_num_threads() > 1
