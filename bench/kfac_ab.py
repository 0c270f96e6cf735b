"""K-FAC's factors against their floor: one symmetric rank-N update of the augmented inputs.

For a network whose first layer is wide, K-FAC's factors (MLP.kfac_factors) cost little more
than A_1 = X~^T X~ / N, X~ the N x (d0 + 1) inputs with a column of ones: one symmetric rank-N
update (BLAS syrk). This script times both in one process, alternating them round by round
(the order flipping every round) so that load from other processes falls on both alike, and
reports the medians and the median of the per-round ratios.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/kfac_ab.py --threads 1

The syrk is scipy's dsyrk (scipy's OpenBLAS, the BLAS the kernels use where they call one),
held to the same thread count as the kernels by threadpoolctl.  Defaults: [784, 128, 10], ce,
N = 512, float64 (--sizes, --loss, --n, --rounds, --kind to change them).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

import taylorkern as tk


def arguments(description, rounds, calls):
    """The options both K-FAC A/B scripts take (the network, loss, N, threads, rounds, kind)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--sizes", default="784,128,10")
    ap.add_argument("--loss", default="ce")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--calls", type=int, default=calls, help="calls per timed block")
    ap.add_argument("--kind", default="exact", choices=("exact", "mc"))
    return ap


def problem(args):
    """(sizes, net, theta, X, Y, rng) for the options, seeded."""
    sizes = [int(s) for s in args.sizes.split(",")]
    net = tk.MLP(sizes, activation="tanh", loss=args.loss)
    rng = np.random.default_rng(0)
    theta = net.init(seed=0)
    X = rng.standard_normal((args.n, sizes[0]))
    Y = rng.integers(0, sizes[-1], args.n) if args.loss == "ce" else rng.standard_normal((args.n, sizes[-1]))
    return sizes, net, theta, X, Y, rng


def main():
    args = arguments(__doc__.splitlines()[0], rounds=30, calls=5).parse_args()
    sizes, net, theta, X, Y, rng = problem(args)
    Xa = np.asfortranarray(np.hstack([X, np.ones((args.n, 1))]))  # (N, d0 + 1), column-major for dsyrk
    tk.set_num_threads(args.threads)

    def factors():
        return net.kfac_factors(theta, X, Y, kind=args.kind, seed=0)

    def syrk():
        # C = (1/N) Xa^T Xa, lower triangle: trans=1 with a (N, D) Fortran array
        return scipy.linalg.blas.dsyrk(1.0 / args.n, Xa, trans=1, lower=1)

    with threadpool_limits(limits=args.threads, user_api="blas"):
        # the check: A_1 is the syrk's result
        A1 = factors()[0][0]
        C = syrk()
        assert np.allclose(np.tril(A1), np.tril(C), rtol=1e-12, atol=1e-14), "A_1 differs from the syrk"
        for _ in range(3):  # warm-up
            factors(), syrk()
        t = {"factors": [], "syrk": []}
        ratios = []
        for r in range(args.rounds):
            order = ("factors", "syrk") if r % 2 == 0 else ("syrk", "factors")
            block = {}
            for name in order:
                fn = factors if name == "factors" else syrk
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                block[name] = (time.perf_counter() - t0) / args.calls
                t[name].append(block[name])
            ratios.append(block["factors"] / block["syrk"])
    mf, ms = statistics.median(t["factors"]), statistics.median(t["syrk"])
    q = statistics.quantiles(ratios, n=4)
    print(f"backend {tk.backend()}, threads {args.threads}, net {sizes} {args.loss}, N {args.n}, "
          f"kind {args.kind}, float64")
    print(f"kfac_factors  median {mf * 1e3:8.3f} ms")
    print(f"dsyrk {args.n}x{sizes[0] + 1}  median {ms * 1e3:8.3f} ms")
    print(f"ratio factors/syrk: of medians {mf / ms:.3f}; per round median {statistics.median(ratios):.3f} "
          f"(quartiles {q[0]:.3f} .. {q[2]:.3f})")


if __name__ == "__main__":
    main()
