"""Each loss's curvature against mse's on the same network (issue: a new loss must cost
within 1.2x of mse's).  One thread, thread CPU time; every round times a block of calls of each
loss in turn (the order rotated every round), and the table shows the median over rounds of
each loss's time divided by mse's in the same round.

    python bench/loss_cost.py [--rounds 7] [--network '[1,20']   # from outside the source tree
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np

import taylorkern as tk

NETWORKS = {  # name: (sizes with an even last width where gaussian takes part, N)
    "[10,32,32,2] N=2000": ([10, 32, 32, 2], 2000),
    "[10,32,32,4] N=2000": ([10, 32, 32, 4], 2000),
    "[1,20,2] N=20000": ([1, 20, 2], 20000),
    "[20,64,64,2] N=1000": ([20, 64, 64, 2], 1000),
}
LOSSES = ("mse", "ce", "bce", "poisson", "huber", "soft_l1", "gaussian")
QUANTITIES = ("hvp", "ggn_diag", "hessian_diag", "ggn", "hessian")


def data(net, N, rng):
    X = rng.standard_normal((N, net.sizes[0]))
    k = net.sizes[-1]
    if net.loss_name == "ce":
        return X, rng.integers(0, k, N)
    if net.loss_name == "bce":
        return X, rng.uniform(0, 1, (N, k))
    if net.loss_name == "poisson":
        return X, rng.poisson(2.0, (N, k)).astype(float)
    return X, rng.standard_normal((N, net.target_width))


def block(fn, seconds=0.05):
    """Thread CPU time per call of fn over a block of about ``seconds``."""
    t = time.thread_time()
    fn()
    one = max(time.thread_time() - t, 1e-6)
    n = max(1, int(seconds / one))
    t = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--network", default="", help="only the networks whose name contains this")
    args = ap.parse_args()
    tk.set_num_threads(1)
    print(f"{'network':22s} {'quantity':13s} {'mse':>9s} " + " ".join(f"{ls:>8s}" for ls in LOSSES[1:]))
    for name, (sizes, N) in NETWORKS.items():
        if args.network not in name:
            continue
        calls = {}
        for loss in LOSSES:
            net = tk.MLP(sizes, activation="tanh", loss=loss)
            theta = net.init(seed=0)
            X, Y = data(net, N, np.random.default_rng(0))
            V = np.random.default_rng(1).standard_normal(net.num_params)
            inputs = (theta, X, Y)
            calls[loss] = {q: functools.partial(getattr(net, q), *inputs, *((V,) if q == "hvp" else ()))
                           for q in QUANTITIES}
        for q in QUANTITIES:
            ratios = {loss: [] for loss in LOSSES}
            mse_times = []
            for r in range(args.rounds):
                order = LOSSES[r % len(LOSSES):] + LOSSES[:r % len(LOSSES)]
                t = {loss: block(calls[loss][q]) for loss in order}
                mse_times.append(t["mse"])
                for loss in LOSSES:
                    ratios[loss].append(t[loss] / t["mse"])
            print(f"{name:22s} {q:13s} {statistics.median(mse_times) * 1e3:7.2f}ms "
                  + " ".join(f"{statistics.median(ratios[loss]):8.2f}" for loss in LOSSES[1:]), flush=True)


if __name__ == "__main__":
    main()
