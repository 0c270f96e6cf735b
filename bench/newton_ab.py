"""A/B of Newton's trust-region subproblem on the seed problem ([2,8,1] relu, N = 100), in one
process: as numpy calls (_subproblem.eigenbasis_step) or compiled (_core.trust_region_eigenbasis).
Each round runs both once, in an order that flips every round; reported per variant: the median
and quartiles over rounds of CPU time and of wall time per Newton iteration, and, for scale, the
kernels' and the eigendecomposition's own times.

    python bench/newton_ab.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import taylorkern as tk
from taylorkern.benchmarks.training import seed_problem
from taylorkern.optim import _subproblem


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    p = seed_problem()
    theta = p.net.init(seed=0)
    compiled = _subproblem._eigenbasis_step
    variants = {"numpy subproblem": _subproblem.eigenbasis_step, "compiled subproblem": compiled}
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in list(variants)[::1 if r % 2 else -1]:
            _subproblem._eigenbasis_step = variants[name]
            c0, w0 = time.process_time(), time.perf_counter()
            res = tk.minimize(p.net, theta, p.X, p.Y, method="newton", max_iter=500)
            cpu[name].append((time.process_time() - c0) / res.nit * 1e6)
            wall[name].append((time.perf_counter() - w0) / res.nit * 1e6)
    _subproblem._eigenbasis_step = compiled
    print(f"seed problem, newton: {res.nit} iterations to loss {res.loss:.3g}; microseconds per iteration")
    for name in variants:
        c, w = np.percentile(cpu[name], [25, 50, 75]), np.percentile(wall[name], [25, 50, 75])
        print(f"  {name:20s} CPU {c[1]:6.1f} ({c[0]:.1f}-{c[2]:.1f})   wall {w[1]:6.1f} ({w[0]:.1f}-{w[2]:.1f})")

    H = p.net.hessian(res.theta, p.X, p.Y)
    for name, call in (("hessian", lambda: p.net.hessian(res.theta, p.X, p.Y)),
                       ("loss_and_grad", lambda: p.net.loss_and_grad(res.theta, p.X, p.Y)),
                       ("numpy eigh (33 x 33)", lambda: np.linalg.eigh(H))):
        t0 = time.perf_counter()
        for _ in range(2000):
            call()
        print(f"  {name:20s} {(time.perf_counter() - t0) / 2000 * 1e6:6.1f} per call (wall)")


if __name__ == "__main__":
    main()
