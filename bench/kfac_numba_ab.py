"""The numba backend's K-FAC factors: its kernels (_numba/kfac.py) against the numpy route it
used before (the reference backend's kfac_factors), and both against the floor of bench/kfac_ab.py
(one dsyrk of the augmented inputs), in one process, alternating round by round (the order
rotating every round).

    python bench/kfac_numba_ab.py --threads 1 [--kind exact|mc] [--eigen]

BLAS (numpy's and scipy's) held to --threads by threadpoolctl, numba's threads by
tk.set_num_threads.  ``--eigen`` times EKFAC's eigenvalues (kfac_eigen_scales) instead of the
factors, with random orthogonal bases.  Defaults: [784, 128, 10], ce, N = 512, float64.
"""

from __future__ import annotations

import statistics
import time

import kfac_ab  # bench/, beside this script: the shared options and problem
import numpy as np
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

import taylorkern as tk
from taylorkern.backends import numba as nb
from taylorkern.backends import reference


def main():
    ap = kfac_ab.arguments(__doc__.splitlines()[0], rounds=20, calls=3)
    ap.add_argument("--eigen", action="store_true", help="EKFAC's eigenvalues instead of the factors")
    args = ap.parse_args()
    sizes, net, theta, X, Y, rng = kfac_ab.problem(args)
    k = sizes[-1]
    noise = None
    if args.kind == "mc":
        noise = rng.random((args.n, 1)) if args.loss == "ce" else rng.standard_normal((args.n, 1, k))
    bases = None
    if args.eigen:
        bases = [(np.linalg.qr(rng.standard_normal((a + 1, a + 1)))[0], np.linalg.qr(rng.standard_normal((b, b)))[0])
                 for a, b in zip(sizes[:-1], sizes[1:])]
    Xa = np.asfortranarray(np.hstack([X, np.ones((args.n, 1))]))
    tk.set_num_threads(args.threads)
    calls = {
        "numba": lambda: nb.kfac_factors(net, theta, X, Y, "mean", noise, bases),
        "numpy": lambda: reference.kfac_factors(net, theta, X, Y, "mean", noise, bases),
        "dsyrk": lambda: scipy.linalg.blas.dsyrk(1.0 / args.n, Xa, trans=1, lower=1),
    }
    with threadpool_limits(limits=args.threads, user_api="blas"):
        a, b = calls["numba"](), calls["numpy"]()
        flat = (lambda r: r) if args.eigen else (lambda r: [m for ab in r for m in ab])
        err = max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in zip(flat(a), flat(b)))
        assert err < 1e-12, f"numba and numpy differ: {err:.3g}"
        for _ in range(2):
            for fn in calls.values():
                fn()
        t = {name: [] for name in calls}
        names = list(calls)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    calls[name]()
                t[name].append((time.perf_counter() - t0) / args.calls)
    med = {name: statistics.median(v) for name, v in t.items()}
    ratio = [x / y for x, y in zip(t["numpy"], t["numba"])]
    print(f"threads {args.threads}, net {sizes} {args.loss}, N {args.n}, kind {args.kind}, "
          f"{'EKFAC eigenvalues' if args.eigen else 'factors'}, float64; max rel. difference {err:.2g}")
    for name in calls:
        print(f"{name:6s} median {med[name] * 1e3:8.3f} ms   / dsyrk {med[name] / med['dsyrk']:.2f}")
    print(f"numpy / numba per round: median {statistics.median(ratio):.2f} "
          f"(quartiles {statistics.quantiles(ratio, n=4)[0]:.2f} .. {statistics.quantiles(ratio, n=4)[2]:.2f})")


if __name__ == "__main__":
    main()
