"""Command line: ``taylorkern demo|info|init-report|bench`` (or ``python -m taylorkern ...``)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import taylorkern as tk
from taylorkern import _dispatch, _native

DEMO_METHODS = (  # (label, method, options)
    ("gd (lr 0.01)", "gd", dict(lr=0.01, max_iter=1000)),
    ("newton", "newton", {}),
    ("lm", "lm", {}),
    ("newton-cg", "newton-cg", {}),
)


def demo(args):
    """The seed's 2-8-1 ReLU network fitting y = x1 + x2 on 100 random points: gradient
    descent (lr 0.01, 1000 epochs) against Newton, Levenberg-Marquardt and Newton-CG."""
    rng = np.random.default_rng(args.seed)
    X = rng.random((100, 2))
    Y = X.sum(axis=1, keepdims=True)
    net = tk.MLP([2, 8, 1], activation="relu", loss="mse")
    theta0 = net.init(seed=args.seed)
    print(f"taylorkern {tk.__version__} · backend {tk.backend()} · {net}")
    print(f"data: 100 points in [0,1)^2, y = x1 + x2;  P = {net.num_params} parameters;  "
          f"initial MSE {net.loss(theta0, X, Y):.4g}\n")
    # First calls of each kernel (and of LAPACK) are not what the table should time.
    for fn in (net.loss_and_grad, net.hessian, net.ggn):
        fn(theta0, X, Y)
    net.hvp(theta0, X, Y, theta0)
    np.linalg.eigh(np.eye(net.num_params))

    results = []
    print(f"{'method':14s} {'final MSE':>11s} {'iterations':>10s} {'f / g / curv evals':>19s} "
          f"{'time':>10s}  stopped because")
    for label, method, options in DEMO_METHODS:
        t0 = time.perf_counter()
        res = tk.minimize(net, theta0, X, Y, method=method, **options)
        elapsed = time.perf_counter() - t0
        results.append((label, res))
        evals = f"{res.nfev} / {res.njev} / {res.nhev}"
        print(f"{label:14s} {res.loss:11.3e} {res.nit:10d} {evals:>19s} {elapsed * 1e3:8.1f} ms  "
              f"{res.message}")

    gd, lm = results[0][1], results[2][1]
    print(f"\nLevenberg-Marquardt: MSE {lm.loss:.2e} in {lm.nit} iterations; gradient descent after "
          f"1000 epochs: {gd.loss:.2e} ({np.log10(gd.loss / max(lm.loss, 1e-300)):.0f} orders of "
          "magnitude higher).")

    if args.no_plot:
        return
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("(matplotlib is not installed, so no plot: pip install 'taylorkern[plot]')")
        return
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    for label, res in results:
        loss = np.maximum(res.history["loss"], 1e-32)  # an exact zero has no logarithm
        ax.loglog(np.arange(1, loss.size + 1), loss, label=label, marker="." if loss.size < 60 else None)
    ax.set_xlabel("iteration + 1")
    ax.set_ylabel("training MSE")
    ax.set_title("2-8-1 ReLU network, y = x1 + x2, 100 points")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()

    g = np.linspace(0.0, 1.0, 41)
    G1, G2 = np.meshgrid(g, g)
    grid = np.column_stack([G1.ravel(), G2.ravel()])
    F = net.predict(lm.theta, grid).reshape(G1.shape)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(G1, G2, F, cmap="viridis", alpha=0.8, linewidth=0)
    ax3.scatter(X[:, 0], X[:, 1], Y[:, 0], color="k", s=6)
    err = np.abs(F - (G1 + G2)).max()
    ax3.set_title(f"prediction after lm (max |f - (x1 + x2)| on [0,1]^2: {err:.1e})")
    ax3.set_xlabel("x1")
    ax3.set_ylabel("x2")
    ax3.set_zlabel("f(x)")
    path = os.path.abspath(args.plot)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def _openblas_timeout():
    """What OpenBLAS's worker threads do between calls, as far as the environment tells."""
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT") or os.environ.get("GOTO_THREAD_TIMEOUT")
    if value:
        return f"OPENBLAS_THREAD_TIMEOUT={value} in the environment (read when OpenBLAS loaded)"
    return ("workers spin about 0.1 s after each threaded call (OPENBLAS_THREAD_TIMEOUT unset), slowing kernel "
            "calls that follow; OPENBLAS_THREAD_TIMEOUT=20, set before Python starts, avoids it "
            "(docs/threading.md)")


def info(args):
    print(f"taylorkern {tk.__version__}  (python {platform.python_version()}, numpy {np.__version__})")
    print(f"backends available: {', '.join(tk.available_backends())}")
    print(f"active backend:     {tk.backend()}  ({_dispatch.why()})")
    for name, why in _dispatch._why_not.items():
        print(f"  {name} unavailable: {why}")
    for line in _native.describe():
        print(line)
    print(f"kernel threads:     {tk.get_num_threads()}  (cores: {os.cpu_count()})")
    print(f"OpenMP spin count:  {tk._omp.status}")
    try:
        from threadpoolctl import threadpool_info
        pools = threadpool_info()
        for pool in pools:
            print(f"BLAS:               {pool.get('internal_api')} {pool.get('version')} "
                  f"{pool.get('architecture')} threads={pool.get('num_threads')}  {pool.get('filepath')}")
        if any(p.get("internal_api") == "openblas" and (p.get("num_threads") or 1) > 1 for p in pools):
            print(f"OpenBLAS idle wait: {_openblas_timeout()}")
    except Exception as exc:  # pragma: no cover - informational only
        print(f"BLAS:               unknown ({exc})")
    print("dtypes:             float64, float32")


def init_report(sub):
    """Register ``init-report``: compare init schemes by curvature (taylorkern.init_report)."""
    from taylorkern.init_report import add_parser
    add_parser(sub)


def bench(sub):
    """Register ``bench``: the quick benchmark table (taylorkern.benchmarks.cli)."""
    from taylorkern.benchmarks.cli import add_parser
    add_parser(sub)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="taylorkern", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="train the seed's 2-8-1 ReLU network on y = x1 + x2: "
                                    "gradient descent against newton, lm, newton-cg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="taylorkern-demo.png",
                   help="where to write the PNG (needs matplotlib); default ./taylorkern-demo.png")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.set_defaults(fn=demo)
    sub.add_parser("info", help="version, backends, how the compiled modules were built, threads, "
                                "BLAS").set_defaults(fn=info)
    init_report(sub)
    bench(sub)
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
