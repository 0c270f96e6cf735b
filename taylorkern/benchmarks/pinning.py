"""Pin every library's thread count for a benchmark -- standard library only.

The numeric libraries size their thread pools once, when they load: OpenBLAS, OpenMP
(taylorkern's kernels, PyTorch), MKL and numba from environment variables, and JAX 0.10's
CPU client from the process's CPU affinity (it ignores OMP_NUM_THREADS and XLA_FLAGS'
``--xla_cpu_multi_thread_eigen=false``, which older releases honoured: measured here by
counting its busy threads).  So the pins have to be in place before the first of them is
imported, and this module must not import numpy.  ``bench/conftest.py`` loads it by path;
``python -m taylorkern bench`` re-executes itself with :func:`thread_env` and
:func:`limit_affinity` applied to the child.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")
_XLA_SERIAL = "--xla_cpu_multi_thread_eigen=false"


def thread_env(n, environ=None):
    """A copy of ``environ`` (default os.environ) with every thread-count variable set to n."""
    n = int(n)
    if n < 1:
        raise ValueError(f"threads: expected a positive integer, got {n}")
    env = dict(os.environ if environ is None else environ)
    env.update({var: str(n) for var in THREAD_VARS})
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_multi_thread_eigen")]
    if n == 1:
        flags.append(_XLA_SERIAL)  # honoured by older jaxlib; jax 0.10 follows the affinity instead
    env["XLA_FLAGS"] = " ".join(flags)
    env["TAYLORKERN_BENCH_THREADS"] = str(n)
    _omp_defaults(env)  # libgomp is shared with PyTorch's: one wait policy for everyone
    return env


def _omp_defaults(env):
    """taylorkern's OpenMP wait default (taylorkern/_omp.py), loaded by path: importing the
    package would load numpy before the pins."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "_omp.py")
    spec = importlib.util.spec_from_file_location("_taylorkern_omp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.apply_defaults(env)


def limit_affinity(n):
    """Restrict the calling process (and what it starts) to its first n allowed CPUs.

    No-op where n covers them all or the platform has no affinity call.  Returns the CPU count
    the process may use afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        return os.cpu_count() or 1
    cpus = sorted(os.sched_getaffinity(0))
    if int(n) < len(cpus):
        os.sched_setaffinity(0, cpus[:int(n)])
    return len(os.sched_getaffinity(0))


def pin_torch(n):
    """torch.set_num_threads / set_num_interop_threads, if torch is installed (imports it)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    import torch

    torch.set_num_threads(int(n))
    try:
        torch.set_num_interop_threads(int(n))
    except RuntimeError:  # already set, or inter-op work already ran in this process
        pass

