"""Command line: ``python -m taylorkern demo|info``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import taylorkern as tk
from taylorkern import _dispatch


def demo(args):
    """The seed's 2-8-1 ReLU network on y = x1 + x2: every curvature quantity, timed."""
    rng = np.random.default_rng(args.seed)
    X = rng.random((100, 2))
    Y = X.sum(axis=1, keepdims=True)
    net = tk.MLP([2, 8, 1], activation="relu", loss="mse")
    theta = net.init(seed=args.seed)
    print(f"taylorkern {tk.__version__} · backend {tk.backend()} · {net}")
    print(f"data: 100 points in [0,1)^2, y = x1 + x2;  P = {net.num_params} parameters\n")

    def timed(fn, *a):
        fn(*a)
        reps, t0 = 0, time.perf_counter()
        while reps < 5 or time.perf_counter() - t0 < 0.05:
            out = fn(*a)
            reps += 1
        return out, (time.perf_counter() - t0) / reps

    (L, g), t_lg = timed(net.loss_and_grad, theta, X, Y)
    H, t_h = timed(net.hessian, theta, X, Y)
    G, t_g = timed(net.ggn, theta, X, Y)
    Hd, t_hd = timed(net.hessian_diag, theta, X, Y)
    Hv, t_hv = timed(net.hvp, theta, X, Y, g)
    eh, eg = np.linalg.eigvalsh(H), np.linalg.eigvalsh(G)
    rows = [
        ("loss", f"{L:.6g}", t_lg), ("|grad|", f"{np.linalg.norm(g):.6g}", t_lg),
        ("Hessian eigenvalues", f"[{eh[0]:.4g}, {eh[-1]:.4g}], {np.sum(eh < -1e-12)} negative", t_h),
        ("GGN eigenvalues", f"[{eg[0]:.3g}, {eg[-1]:.4g}] (PSD)", t_g),
        ("trace H = sum diag(H)", f"{np.trace(H):.6g} = {Hd.sum():.6g}", t_hd),
        ("g^T H g", f"{g @ Hv:.6g}", t_hv),
    ]
    print(f"{'quantity':24s} {'value':44s} {'time':>10s}")
    for name, val, t in rows:
        print(f"{name:24s} {val:44s} {t * 1e6:8.1f} us")

    # The quadratic model's step along -g, checked against the true loss.
    alpha = (g @ g) / (g @ Hv) if g @ Hv > 0 else 1e-2
    delta = -alpha * g
    pred = g @ delta + 0.5 * delta @ (H @ delta)
    true = net.loss(theta + delta, X, Y) - L
    print(f"\nTaylor step along -g (alpha = g'g / g'Hg = {alpha:.4g}): "
          f"predicted change {pred:.6g}, true change {true:.6g}")


def info(args):
    print(f"taylorkern {tk.__version__}  (python {platform.python_version()}, numpy {np.__version__})")
    print(f"backends available: {', '.join(tk.available_backends())}")
    print(f"active backend:     {tk.backend()}  ({_dispatch.why()})")
    for name, why in _dispatch._why_not.items():
        print(f"  {name} unavailable: {why}")
    print(f"kernel threads:     {tk.get_num_threads()}  (cores: {os.cpu_count()})")
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"BLAS:               {pool.get('internal_api')} {pool.get('version')} "
                  f"{pool.get('architecture')} threads={pool.get('num_threads')}  {pool.get('filepath')}")
    except Exception as exc:  # pragma: no cover - informational only
        print(f"BLAS:               unknown ({exc})")
    print("dtypes:             float64, float32")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m taylorkern", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="curvature of the seed's 2-8-1 network on y = x1 + x2")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=demo)
    sub.add_parser("info", help="version, backends, threads, BLAS").set_defaults(fn=info)
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
