"""What taylorkern.laplace adds to its linear algebra, against another revision of the module.

    python bench/laplace_overhead_ab.py [--against HEAD] [--rounds 7] [--threads 2] [--clock cpu]

The workload of bench/laplace_vs_peers.py ([10, 32, 32, 1] tanh mse, P = 1,441, N = 2,000,
1,000 new points).  The installed ``taylorkern.laplace`` ("new") and the module's source at the
git revision ``--against`` ("old", loaded from ``git show`` into the same process, on the same
installed network code) run the same steps, alternating round by round (the order flipping each
round); each row is the median over the rounds:

* fit: ``laplace.fit(..., structure="full")`` (the GGN, scaled);
* factor: the posterior's Cholesky factorisation (the first ``predict`` less its Jacobian);
* predict: ``predict`` at the new points on a fresh posterior (factor + Jacobian + solve);
* sweep: 10 ``log_marginal_likelihood`` values at new priors (one eigvalsh + 10 O(P));
* workflow: fit + sweep + predict, as bench/laplace_vs_peers.py times it.

Beside them, the primitives in the same process: ``net.ggn``, a Cholesky factorisation of a
copy of the precision, and the eigenvalues by numpy's ``eigvalsh`` and by scipy's drivers.

``--clock cpu`` times by the process's CPU time (``time.process_time``) instead of the wall
clock: with ``--threads 1`` on a machine that other jobs share, it counts this process's work
and not its waits for a core.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
import scipy.linalg
from laplace_vs_peers import PRIORS, SIGMA, problem

import taylorkern as tk
from taylorkern import laplace as new

ROOT = pathlib.Path(__file__).resolve().parent.parent
clock = time.perf_counter


def load_revision(rev):
    """taylorkern/laplace.py at ``rev`` as a module of the installed package (its relative
    imports resolve there)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:taylorkern/laplace.py"], check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("taylorkern._laplace_ab", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "taylorkern"
    sys.modules[spec.name] = mod
    exec(compile(src, f"{rev}:taylorkern/laplace.py", "exec"), mod.__dict__)  # noqa: S102 - the repository's own file
    return mod


def steps(mod, net, theta, X, Y, Xn):
    def fit():
        return mod.fit(net, theta, X, Y, structure="full", prior_precision=1.0, sigma_noise=SIGMA)

    def timed(prepare, run):
        def go():
            state = prepare()
            t = clock()
            run(state)
            return clock() - t
        return go

    def workflow(_):
        post = fit()
        [post.log_marginal_likelihood(float(d), SIGMA) for d in PRIORS]
        post.predict(Xn, noise=False)

    return {
        "fit": timed(lambda: None, lambda _: fit()),
        "factor": timed(fit, lambda post: post._current()),
        "predict": timed(fit, lambda post: post.predict(Xn, noise=False)),
        "sweep": timed(fit, lambda post: [post.log_marginal_likelihood(float(d), SIGMA) for d in PRIORS]),
        "workflow": timed(lambda: None, workflow),
    }


def primitives(net, theta, X, Y):
    G = np.asarray(net.ggn(theta, X, Y, reduction="sum"), dtype=np.float64)
    Lam = G / SIGMA ** 2 * 0.5
    Lam.flat[::G.shape[0] + 1] += 1.0

    def t(fn):
        def go():
            s = clock()
            fn()
            return clock() - s
        return go

    return {
        "net.ggn": t(lambda: net.ggn(theta, X, Y, reduction="sum")),
        "cholesky (copy)": t(lambda: scipy.linalg.cholesky(Lam, lower=True, check_finite=False)),
        "numpy eigvalsh": t(lambda: np.linalg.eigvalsh(Lam)),
        "scipy eigvalsh evd": t(lambda: scipy.linalg.eigh(Lam, eigvals_only=True, driver="evd", check_finite=False)),
        "scipy eigvalsh evr": t(lambda: scipy.linalg.eigh(Lam, eigvals_only=True, driver="evr", check_finite=False)),
        "scipy eigvalsh ev": t(lambda: scipy.linalg.eigh(Lam, eigvals_only=True, driver="ev", check_finite=False)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default="HEAD", help="git revision of taylorkern/laplace.py to compare with")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-primitives", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    tk.set_num_threads(args.threads)
    old = load_revision(args.against)
    net, theta, X, Y, Xn = problem(2000, 1000)
    print(f"P = {net.num_params}, N = 2000, 1000 new points, {args.threads} threads; "
          f"new = installed taylorkern.laplace, old = {args.against}; median of {args.rounds} rounds, "
          f"{args.clock} clock")
    runs = {"new": steps(new, net, theta, X, Y, Xn), "old": steps(old, net, theta, X, Y, Xn)}
    for r in runs.values():  # warm-up
        r["workflow"]()
    times = {(v, s): [] for v in runs for s in runs[v]}
    for i in range(args.rounds):
        order = ("new", "old") if i % 2 == 0 else ("old", "new")
        for s in runs["new"]:
            for v in order:
                times[v, s].append(runs[v][s]())
    print(f"{'step':10s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}   (per-round ratio: median, min-max)")
    for s in runs["new"]:
        o, n = times["old", s], times["new", s]
        ratios = [b / a for a, b in zip(o, n)]
        print(f"{s:10s} {1e3 * statistics.median(o):9.1f} {1e3 * statistics.median(n):9.1f} "
              f"{statistics.median(n) / statistics.median(o):8.3f}   ({statistics.median(ratios):.3f}, "
              f"{min(ratios):.3f}-{max(ratios):.3f})")
    if args.no_primitives:
        return
    prims = primitives(net, theta, X, Y)
    pt = {k: [] for k in prims}
    for _ in range(args.rounds):
        for k, fn in prims.items():
            pt[k].append(fn())
    for k, v in pt.items():
        print(f"{k:20s} {1e3 * statistics.median(v):9.1f} ms")


if __name__ == "__main__":
    main()
