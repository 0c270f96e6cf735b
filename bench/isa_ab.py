"""A/B of the x86-64 level builds of taylorkern._core (TAYLORKERN_ISA=baseline, x86-64-v3,
x86-64-v4: taylorkern/_native.py) on the same calls, and of other installs of the package (an
older version, whose Python side matches its own _core): NAME=DIR:LEVEL, DIR holding its
taylorkern/.  Each build runs in a process of its own with its own package, the builds
alternating, the order rotated every round; each process measures every call on one thread
(thread CPU time, the minimum of 5 repeats), and the table shows the minimum over rounds.
Builds of one version can also run in one process: bench/build_ab.py.

    python bench/isa_ab.py [--rounds 2] [--levels x86-64-v4] [NAME=DIR:LEVEL ...]

Every benchmark configuration and quantity (taylorkern.benchmarks.problems) is timed.

Run it from outside the source tree (it imports the installed package).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure():
    """In the child: {case: seconds per call} on the build TAYLORKERN_ISA selected, for every
    benchmark configuration and quantity (taylorkern.benchmarks.problems)."""
    import taylorkern as tk
    from taylorkern import _native
    from taylorkern.benchmarks.problems import CONFIGS, QUANTITIES, Problem

    tk.set_num_threads(1)
    out = {"level": _native.loaded}
    with tk.use_backend("cpp"):
        for pname in CONFIGS:
            p = Problem(pname)
            for call in QUANTITIES:
                f = p.call(call)
                t0 = time.thread_time()
                try:
                    f()
                except MemoryError:  # a full matrix of the wide configuration (TooLargeError)
                    continue
                reps = max(1, min(2000, int(0.05 / max(time.thread_time() - t0, 1e-7))))
                best = float("inf")
                for _ in range(5):
                    t0 = time.thread_time()
                    for _ in range(reps):
                        f()
                    best = min(best, (time.thread_time() - t0) / reps)
                out[f"{pname}/{call}"] = best
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--levels", default="baseline,x86-64-v3,x86-64-v4",
                    help="the installed package's builds to run (comma-separated)")
    ap.add_argument("extra", nargs="*", help="NAME=DIR:LEVEL, another install's build")
    args = ap.parse_args()
    if args.child:
        return measure()
    runs = [(level, None, level) for level in args.levels.split(",") if level]
    for item in args.extra:
        name, rest = item.split("=", 1)
        path, level = rest.rsplit(":", 1)
        runs.append((name, path, level))
    best = {}
    for r in range(args.rounds):
        for name, path, level in runs[r % len(runs):] + runs[:r % len(runs)]:
            env = dict(os.environ, TAYLORKERN_ISA=level)
            if path:
                env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [env.get("PYTHONPATH")] if p])
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                print(f"{name}: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            got = json.loads(done.stdout)
            if got.pop("level") != level:  # a level this CPU lacks falls back, with a warning
                continue
            for case, t in got.items():
                best.setdefault(name, {})[case] = min(t, best.get(name, {}).get(case, float("inf")))
    names = list(best)
    w = max(12, *map(len, names)) + 2
    print(f"{'case':26}" + "".join(f"{n:>{w}}" for n in names) + "   (us per call, one thread)")
    for case in best[names[0]]:
        print(f"{case:26}" + "".join(f"{best[n].get(case, float('nan')) * 1e6:{w}.1f}" for n in names))


if __name__ == "__main__":
    sys.exit(main())
