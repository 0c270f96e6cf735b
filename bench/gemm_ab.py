"""A/B of the blocked AVX-512 GEMM (csrc/gemm_avx512.cpp) against the BLAS it replaces, end to end.

Every benchmark configuration (taylorkern/benchmarks/problems.py) x quantity x dtype runs with
the blocked kernel on and off (the test-only switch ``_core._set_gemm_avx512``) in this one
process, alternating: each round times one block of calls with the kernel on and one with it
off, in an order that flips every round, so that load from other processes falls on both
alike.  Reported per case: the median seconds per call of each state, their ratio off/on
(above 1: the blocked kernel is faster), the median and quartiles of the per-round ratios
(the noise), and the same per-round ratios of CPU time (the process's, all threads), which
leaves out the time the process waited for a core and so stays usable on a loaded machine.

Run it once per thread count, without the environment's OpenBLAS kernel override, so that
the BLAS side is OpenBLAS's own kernel for this CPU (the header line shows which one loaded):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/gemm_ab.py --threads 1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/gemm_ab.py --threads 2

``--states`` lists the switch settings to alternate (default ``1,0``: on, off; 0, off, is the
baseline every ratio is taken against), for a build whose switch takes more than two.

Without ``_set_gemm_avx512`` in the installed module (a build without the blocked kernel) the
script times the one state there is, for the record (``--single``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
QUANTITIES = ("loss_and_grad", "hvp", "ggn_vp", "hvp_V32", "jacobian", "ggn", "hessian", "ggn_blocks",
              "ggn_diag", "hessian_diag")
CONFIGS = ("seed", "small", "medium", "classif", "wide")
MAX_RESULT_BYTES = 5e8  # larger dense results are skipped (a machine shared by several jobs)


def _pin(threads):
    """Thread counts and CPU affinity, before numpy loads (taylorkern/benchmarks/pinning.py)."""
    path = os.path.join(_HERE, os.pardir, "taylorkern", "benchmarks", "pinning.py")
    spec = importlib.util.spec_from_file_location("_pinning", path)
    pinning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pinning)
    os.environ.update(pinning.thread_env(threads))
    pinning.limit_affinity(threads)


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", default=",".join(CONFIGS))
    p.add_argument("--quantity", default=",".join(QUANTITIES))
    p.add_argument("--dtype", default="float64,float32")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per case (both states)")
    p.add_argument("--min-rounds", type=int, default=6)
    p.add_argument("--max-rounds", type=int, default=60)
    p.add_argument("--block", type=float, default=0.02, help="least seconds of one timed block")
    p.add_argument("--states", default="1,0", help="modes of _set_gemm_avx512 to alternate (0: off, the baseline)")
    p.add_argument("--single", action="store_true", help="time the installed build as it is, no A/B")
    return p.parse_args(argv)


def _block(fn, n):
    """(wall, cpu) seconds per call over n calls; cpu is the process's CPU time, all threads."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def _summary(ratios):
    """'median (q25-q75)' of per-round ratios."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return f"{statistics.median(ratios):.3f} ({q[0]:.2f}-{q[2]:.2f})"


def main(argv=None):
    args = _args(argv)
    _pin(args.threads)
    import numpy as np
    from threadpoolctl import threadpool_info

    import taylorkern as tk
    from taylorkern import _core
    from taylorkern.benchmarks.harness import relerr, result_bytes
    from taylorkern.benchmarks.problems import Problem

    tk.set_backend("cpp")
    tk.set_num_threads(args.threads)
    switch = getattr(_core, "_set_gemm_avx512", None)
    single = args.single or switch is None
    blas = [(p.get("internal_api"), p.get("version"), p.get("architecture")) for p in threadpool_info()
            if p.get("user_api") == "blas"]
    print(f"# threads={args.threads} OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')} blas={blas} "
          f"mode={'single' if single else 'A/B'} load={os.getloadavg()[0]:.2f}", flush=True)
    states = [0] if single else [int(x) for x in args.states.split(",")]
    others = [x for x in states if x != 0]

    def state(mode):
        if not single:
            switch(bool(mode))

    if single:
        print("| config | dtype | quantity | median |\n|---|---|---|---|", flush=True)
    else:
        head = "".join(f" mode {x} | off/mode {x} | paired off/mode {x} (q25-q75) | CPU time: paired off/mode {x} |"
                       for x in others)
        print(f"| config | dtype | quantity | off |{head}\n|---|---|---|---|" + "---|" * (4 * len(others)),
              flush=True)

    for config in args.config.split(","):
        for dtype in args.dtype.split(","):
            problem = Problem(config, np.dtype(dtype))
            for quantity in args.quantity.split(","):
                if result_bytes(problem, quantity) > MAX_RESULT_BYTES:
                    print(f"| {config} | {dtype} | {quantity} | skipped: result "
                          f"{result_bytes(problem, quantity) / 1e9:.1f} GB |", flush=True)
                    continue
                fn = problem.call(quantity)
                # warm-up (workspaces, first-touch); every state must agree with the BLAS-only one
                results = {}
                for x in states:
                    state(x)
                    results[x] = _flat(fn())
                tol = 1e-10 if dtype == "float64" else 1e-4
                for x in others:
                    err = max(relerr(a, b) for a, b in zip(results[x], results[0]))
                    if not err <= tol:
                        raise AssertionError(f"{config} {dtype} {quantity}: mode {x} and off differ by {err:.3g}")
                t0 = time.perf_counter()
                fn()
                one = time.perf_counter() - t0
                n = max(1, int(args.block / max(one, 1e-9)))
                rounds = int(min(args.max_rounds, max(args.min_rounds, args.budget / (n * one * len(states)))))
                times = {x: [] for x in states}
                for r in range(rounds):
                    for x in (states if r % 2 == 0 else states[::-1]):
                        state(x)
                        times[x].append(_block(fn, n))
                state(states[0])
                off = times[0]
                m_off = statistics.median(w for w, _ in off)
                row = f"| {config} | {dtype} | {quantity} | {_fmt(m_off)} |"
                for x in others:
                    m = statistics.median(w for w, _ in times[x])
                    wall = [b[0] / a[0] for a, b in zip(times[x], off)]
                    cpu = [b[1] / a[1] for a, b in zip(times[x], off) if a[1] > 0 and b[1] > 0] or [float("nan")]
                    row += f" {_fmt(m)} | {m_off / m:.3f} | {_summary(wall)} | {_summary(cpu)} |"
                print(row, flush=True)
    print(f"# done, load={os.getloadavg()[0]:.2f}", flush=True)
    return 0


def _flat(result):
    """A result's arrays (loss_and_grad: the loss and the gradient; blocks: each block)."""
    if isinstance(result, (tuple, list)):
        out = []
        for r in result:
            out.extend(_flat(r))
        return out
    import numpy as np

    return [np.atleast_1d(np.asarray(result, np.float64))]


def _fmt(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


if __name__ == "__main__":
    sys.exit(main())
