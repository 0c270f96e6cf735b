"""How far is K-FAC from the exact Gauss-Newton matrix on a digits classifier?

    python examples/kfac_digits.py [--hidden 32] [--iter 50]

(with taylorkern installed, ``pip install .``, or ``PYTHONPATH=.`` from the repository root)

A 64-32-10 tanh network (softmax cross-entropy, l2 = 1e-4) on 1000 of scikit-learn's 8x8
digits (a synthetic 3-class problem stands in without scikit-learn).  At the initial point and
after training with ``method="kfac"`` it prints ``taylorkern.kfac.quality``: per layer the
relative Frobenius error of K-FAC's and EKFAC's blocks against the exact GGN blocks, and the
cosine between the damped K-FAC step and the damped exact Gauss-Newton step.  Then it trains the
same start with kfac, lm, lbfgs and adam for the same number of iterations and prints the losses
and times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import taylorkern as tk
from taylorkern import kfac


def load(seed=0):
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn not installed: using a synthetic 3-class problem")
        X = rng.standard_normal((1000, 20))
        y = np.argmax(np.tanh(X @ rng.standard_normal((20, 3))), axis=1)
        return X, y
    d = load_digits()
    idx = rng.permutation(len(d.data))[:1000]
    return d.data[idx] / 16.0, d.target[idx]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--iter", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    X, y = load(args.seed)
    net = tk.MLP([X.shape[1], args.hidden, int(y.max()) + 1], activation="tanh", loss="ce", l2=1e-4)
    theta0 = net.init(seed=args.seed)
    print(f"network {list(net.sizes)}, P = {net.num_params}, N = {len(X)}\n")
    print("at the initial point:")
    print(kfac.quality(net, theta0, X, y), "\n")
    results = {}
    for method, opts in (("kfac", {}), ("lm", {}), ("lbfgs", {}), ("adam", dict(lr=1e-2))):
        t0 = time.perf_counter()
        res = tk.minimize(net, theta0, X, y, method=method, max_iter=args.iter, **opts)
        results[method] = (res, time.perf_counter() - t0)
    print(f"after {args.iter} iterations of kfac:")
    print(kfac.quality(net, results["kfac"][0].theta, X, y), "\n")
    print(f"{'method':>8} {'loss':>12} {'iterations':>10} {'seconds':>8}")
    for method, (res, sec) in results.items():
        print(f"{method:>8} {res.loss:12.4e} {res.nit:10d} {sec:8.2f}")


if __name__ == "__main__":
    main()
