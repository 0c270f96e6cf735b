"""Shared definitions of the numba kernels (csrc/common.hpp).

``kernel`` and ``parallel_kernel`` are the decorators of every compiled function:
cache=True (compiled once per machine; the cache keyed on all the kernel sources,
cache_by_directory), nogil=True (the GIL is released while a kernel
runs), and error_model="numpy" (a float division never raises, as in C++; without it numba
guards every division with a ZeroDivisionError check, which also stops LLVM from
vectorizing the loops).
"""

from __future__ import annotations

import hashlib
import os
from functools import partial

from numba import njit, types
from numba.core.extending import intrinsic
from numba.core.imputils import impl_ret_borrowed
from numba.np.ufunc.parallel import _iget_num_threads


def cache_by_directory(directory) -> bool:
    """Key numba's on-disk cache of every function defined in ``directory`` on the hash of all
    the .py files there, not only the function's own file (numba's rule).  A cached function
    holds the compiled code of everything it calls, so under numba's rule an edit to one
    module, or an upgrade that changes it, leaves callers in other modules running the old
    code.  Returns False where that cannot be arranged: numba's cache internals not as
    expected, or NUMBA_CACHE_LOCATOR_CLASSES replacing the locators (the caller then compiles
    without a cache)."""
    from numba.core import caching, config
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # its name now / before
    base = getattr(caching, "_CacheLocator", None)
    if impl is None or base is None or getattr(config, "CACHE_LOCATOR_CLASSES", None):
        return False  # pragma: no cover - a numba without these internals, or locators overridden
    numba_locators = list(impl._locator_classes)
    directory = os.path.abspath(directory)
    digest = hashlib.sha256()
    for name in sorted(f for f in os.listdir(directory) if f.endswith(".py")):
        with open(os.path.join(directory, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    stamp = digest.hexdigest()

    class DirectoryLocator(base):
        """numba's own choice of cache location, with the directory's hash in the stamp."""

        def __init__(self, inner):
            self._inner = inner

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return self._inner.get_source_stamp(), stamp

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != directory:
                return None
            for locator in numba_locators:
                inner = locator.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            return None

    impl._locator_classes.insert(0, DirectoryLocator)
    return True


CACHE = cache_by_directory(os.path.dirname(__file__))
kernel = partial(njit, cache=CACHE, nogil=True, error_model="numpy")
parallel_kernel = partial(njit, cache=CACHE, nogil=True, error_model="numpy", parallel=True)

# A parallel loop over rows runs as CHUNKS blocks of consecutive rows, each one call of a
# helper that loops over its rows (a call per row costs reference-count updates on every
# array argument and view).
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
