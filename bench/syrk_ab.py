"""A/B of the kernels' symmetric rank update (blas.hpp: syrk_lower) on its three paths, in one process.

K-FAC's factors and the Gram route's GGN add R^T R to a lower triangle, R the rows of a chunk of
samples.  This script times one such update, C = R^T R for R of K x D, through the test-only
binding ``_core._syrk_lower`` on:

* ``avx512``: the blocked AVX-512 kernel (gemm_avx512.cpp), what runs where the CPU has AVX-512;
* ``blas``: scipy's OpenBLAS ``dsyrk``/``ssyrk`` through the kernels' pointer, what runs elsewhere;
* ``panels``: column panels of ordinary products, each starting at the diagonal (what the
  kernels ran before the two above; with the AVX-512 GEMM under them where the CPU has it).

Each round times a block of calls of every path, the order reversed every other round, so that
load from other processes falls on all alike; reported are the medians and the median of the
per-round ratios to ``blas``.  Single-threaded (the kernels call it once per thread), BLAS held
to one thread:

    env -u OPENBLAS_CORETYPE python bench/syrk_ab.py [--rounds 7] [--dtype float64,float32]

The default shapes: K-FAC's A_1 and B_1 on [784, 128, 10] ce at N = 512 (785 x 512, 129 x 5120)
and the Gram route's rows of networks with 1,441 and 3,000 parameters.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from taylorkern import _core as core

PATHS = {"avx512": 1, "blas": 3, "panels": 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="785x512,129x5120,1441x512,1441x2048,3000x256", help="D x K, comma-separated")
    ap.add_argument("--dtype", default="float64,float32")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=float, default=0.05, help="least seconds of one timed block")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'dtype':8s} {'D x K':>11s} " + " ".join(f"{p:>10s}" for p in PATHS) + "   avx512/blas  panels/blas")
    with threadpool_limits(1, user_api="blas"):
        for dt in args.dtype.split(","):
            for shape in args.shapes.split(","):
                D, K = (int(v) for v in shape.split("x"))
                R = rng.standard_normal((K, D)).astype(dt)
                C = np.zeros((D, D), dt)
                calls = {p: (lambda w=w: core._syrk_lower(w, D, K, R, 0, D, 0.0, C, 0, D)) for p, w in PATHS.items()}
                calls = {p: f for p, f in calls.items() if f()}  # drop the paths this machine lacks
                t0 = time.perf_counter()
                calls["blas"]()
                reps = max(1, int(args.block / max(time.perf_counter() - t0, 1e-7)))
                times = {p: [] for p in calls}
                for r in range(args.rounds):
                    for p in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                        t0 = time.perf_counter()
                        for _ in range(reps):
                            calls[p]()
                        times[p].append((time.perf_counter() - t0) / reps)
                med = {p: statistics.median(v) for p, v in times.items()}
                ratio = {p: statistics.median(a / b for a, b in zip(times[p], times["blas"])) for p in times}
                cells = " ".join(f"{med[p] * 1e3:8.2f}ms" if p in med else f"{'-':>10s}" for p in PATHS)
                print(f"{dt:8s} {shape:>11s} {cells}   {ratio.get('avx512', float('nan')):11.2f}  "
                      f"{ratio['panels']:11.2f}", flush=True)


if __name__ == "__main__":
    main()
