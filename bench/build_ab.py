"""A/B of two builds of taylorkern._core on every benchmark configuration, in one process.

The other build is a copy of its ``_core`` extension in a directory of its own, imported as
``<dir name>._core`` (two builds coexist in one process because ``Net`` is module-local):

    mkdir -p /tmp/ab/before && touch /tmp/ab/before/__init__.py
    cp <that install>/taylorkern/_isa/x86-64-v4/_core*.so /tmp/ab/before/
    python bench/build_ab.py /tmp/ab/before [--threads 1] [--rounds 8] [--config seed,small]

Compare builds of the same x86-64 level (TAYLORKERN_ISA selects the installed one's).  Each
round times a block of calls of one configuration and quantity on each build, the order
flipping every round, so that load from other processes falls on both alike; the table shows
the median seconds per call of each, the ratio installed/other of the medians, and the median
and quartiles of the per-round ratios of process CPU time (which leaves out waiting for a core).
Results of the two builds are compared too (max relative difference).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

import numpy as np

import taylorkern as tk
from taylorkern.backends import cpp
from taylorkern.benchmarks.problems import CONFIGS, QUANTITIES, Problem


def use(core):
    """Point the cpp adaptor (which binds some kernels at import) at the build ``core``."""
    tk._core = core
    importlib.reload(cpp)


def flat(x):
    if isinstance(x, (list, tuple)):
        return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in x])
    return np.ravel(np.asarray(x, np.float64))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="directory holding the other build's _core (a package: __init__.py)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--config", default=",".join(CONFIGS))
    ap.add_argument("--quantity", default=",".join(QUANTITIES))
    ap.add_argument("--budget", type=float, default=0.03, help="seconds per timed block")
    args = ap.parse_args()
    parent, name = os.path.split(os.path.abspath(args.other.rstrip("/")))
    sys.path.insert(0, parent)
    builds = {"installed": cpp._core, "other": importlib.import_module(f"{name}._core")}
    for core in builds.values():
        core.set_num_threads(args.threads)
    print(f"installed {builds['installed'].__file__}\nother     {builds['other'].__file__}\n"
          f"threads {args.threads}, {args.rounds} rounds, load {os.getloadavg()[0]:.1f}")
    print(f"{'case':28s} {'installed':>11s} {'other':>11s} {'ratio':>6s}  {'CPU ratio (quartiles)':24s} diff")
    for cname in args.config.split(","):
        p = Problem(cname)
        for q in args.quantity.split(","):
            fn = p.call(q)
            try:
                fn()
            except tk.TooLargeError as e:  # the wide configuration's full matrices
                print(f"{cname + '/' + q:28s} skipped: {str(e).split(';')[0]}")
                continue
            wall = {b: [] for b in builds}
            cpu = {b: [] for b in builds}
            results = {}
            reps = None
            for r in range(args.rounds):
                for b in (("installed", "other") if r % 2 else ("other", "installed")):
                    use(builds[b])
                    p.net._handles.clear()
                    results[b] = flat(fn())  # warm: workspaces allocated
                    if reps is None:
                        t0 = time.perf_counter()
                        fn()
                        reps = max(1, min(500, int(args.budget / max(time.perf_counter() - t0, 1e-7))))
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(reps):
                        fn()
                    wall[b].append((time.perf_counter() - t0) / reps)
                    cpu[b].append((time.process_time() - c0) / reps)
            use(builds["installed"])
            p.net._handles.clear()
            a, o = statistics.median(wall["installed"]), statistics.median(wall["other"])
            rr = sorted(x / y for x, y in zip(cpu["installed"], cpu["other"]))
            q1, q2, q3 = statistics.quantiles(rr, n=4) if len(rr) > 1 else (rr[0],) * 3
            want = results["other"]
            diff = float(np.max(np.abs(results["installed"] - want)) / max(np.max(np.abs(want)), 1e-300))
            print(f"{cname + '/' + q:28s} {a * 1e3:9.3f}ms {o * 1e3:9.3f}ms {a / o:6.2f}  "
                  f"{q2:5.2f} ({q1:.2f} .. {q3:.2f})       {diff:.1e}")


if __name__ == "__main__":
    with tk.use_backend("cpp"):
        main()
