"""OpenBLAS's idle threads against the kernels': the optimizers with OPENBLAS_THREAD_TIMEOUT set and unset.

After every call it runs on several threads, OpenBLAS (numpy's copy and scipy's) keeps its worker
threads spinning for about 2^28 CPU cycles (0.1 s) before they sleep, unless OPENBLAS_THREAD_TIMEOUT
= n, read once when the library loads, shortens that to 2^n cycles.  A taylorkern kernel started
within that time shares the cores with the spinning workers.  An optimizer alternates the two all
the time (its linear algebra in numpy/scipy, its curvature in the kernels).

The variable must be set before numpy loads, so every setting runs in a child process of its own.
Each child runs every workload ``--repeats`` times and reports its fastest run; the table shows
the median over ``--rounds`` children per setting, the settings alternating.

    python bench/blas_spin.py [--timeouts unset,4,16,20,24] [--rounds 3] [--threads 2]

Workloads: tk.minimize with kfac on [784, 128, 10] ce, and with lm on [10, 32, 32, 1] and
[20, 64, 64, 1] mse (N = 2,000, 10 iterations, l2 = 1e-4), and numpy alone (200 products of
300 x 300 matrices back to back, the case a short timeout could slow: its workers sleep between
calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import taylorkern as tk

threads, repeats = int(sys.argv[1]), int(sys.argv[2])
tk.set_num_threads(threads)
rng = np.random.default_rng(0)
out = {}

def best(fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

for name, method, sizes, loss in (("kfac [784,128,10] ce", "kfac", [784, 128, 10], "ce"),
                                  ("lm [10,32,32,1] mse", "lm", [10, 32, 32, 1], "mse"),
                                  ("lm [20,64,64,1] mse", "lm", [20, 64, 64, 1], "mse")):
    net = tk.MLP(sizes, activation="tanh", loss=loss, l2=1e-4)
    theta = net.init(seed=0)
    X = rng.standard_normal((2000, sizes[0]))
    Y = rng.integers(0, sizes[-1], 2000) if loss == "ce" else rng.standard_normal((2000, sizes[-1]))
    out[name] = best(lambda: tk.minimize(net, theta, X, Y, method=method, max_iter=10))

A = rng.standard_normal((300, 300))
def products():
    B = A
    for _ in range(200):
        B = A @ B
        B /= np.abs(B).max()
out["numpy 200 x (300 @ 300)"] = best(products)
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeouts", default="unset,4,16,20,24")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = args.timeouts.split(",")
    results = {s: [] for s in settings}
    for r in range(args.rounds):
        for s in (settings if r % 2 == 0 else settings[::-1]):
            env = dict(os.environ)
            env.pop("OPENBLAS_THREAD_TIMEOUT", None)
            env.pop("GOTO_THREAD_TIMEOUT", None)
            if s != "unset":
                env["OPENBLAS_THREAD_TIMEOUT"] = s
            run = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), str(args.repeats)], env=env,
                                 capture_output=True, text=True, check=True)
            results[s].append(json.loads(run.stdout.strip().splitlines()[-1]))
    names = list(results[settings[0]][0])
    print(f"threads {args.threads}; median over {args.rounds} child processes of each one's best of "
          f"{args.repeats} runs; seconds, and the ratio to 'unset'")
    print(f"{'workload':28s}" + "".join(f"{'timeout ' + s:>22s}" for s in settings))
    for n in names:
        base = statistics.median(x[n] for x in results["unset"]) if "unset" in results else None
        cells = []
        for s in settings:
            m = statistics.median(x[n] for x in results[s])
            cells.append(f"{m:9.3f} s" + (f" ({m / base:4.2f})" if base else "") + "    ")
        print(f"{n:28s}" + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
