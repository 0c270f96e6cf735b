"""Error bars on a 1-D regression from the Laplace approximation (taylorkern.laplace).

    python examples/laplace_regression.py [--plot laplace_regression.png] [--structure kfac]

A [1, 16, 16, 1] tanh network is fitted by Levenberg-Marquardt to 60 noisy samples of
sin(3x) on [-1, -0.2] and [0.3, 1] (a gap in the middle); the full-GGN Laplace posterior's
prior precision and noise are then tuned by maximising the marginal likelihood, and the GLM
predictive gives a mean and a standard deviation at every x.  Prints a table; with
``--plot`` (and matplotlib installed) also draws the band mean +- 2 std.  ``--structure``
picks the posterior's structure (default "full"; "kfac" for K-FAC's Kronecker blocks).
"""

from __future__ import annotations

import argparse

import numpy as np

import taylorkern as tk
from taylorkern import laplace


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plot", metavar="PNG", help="draw the error bars into this file (needs matplotlib)")
    ap.add_argument("--structure", default="full", choices=laplace.STRUCTURES,
                    help="the posterior's structure (default: full)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, -0.2, 30), rng.uniform(0.3, 1, 30)])
    y = np.sin(3 * x) + 0.1 * rng.standard_normal(60)
    X, Y = x[:, None], y[:, None]

    net = tk.MLP([1, 16, 16, 1], activation="tanh", loss="mse", l2=1e-4)
    theta = tk.minimize(net, net.init(seed=1), X, Y, method="lm", max_iter=300).theta

    post = laplace.fit(net, theta, X, Y, structure=args.structure, prior_precision=1.0, sigma_noise=0.3)
    post.optimize_prior()
    print(f"structure {args.structure!r}, P = {net.num_params}; after optimize_prior: prior precision "
          f"{post.prior_precision:.3g}, sigma_noise {post.sigma_noise:.3g} (true 0.1), log marginal likelihood "
          f"{post.log_marginal_likelihood():.2f}, jitter {post.jitter}")

    xs = np.linspace(-1.5, 1.5, 13)
    mean, var = post.predict(xs[:, None])             # variance of y: J Sigma J^T + sigma^2
    _, var_f = post.predict(xs[:, None], noise=False)  # of the function alone
    print(f"{'x':>6} {'sin(3x)':>8} {'mean':>8} {'std f':>8} {'std y':>8}")
    for xi, m, sf, sy in zip(xs, mean[:, 0], np.sqrt(var_f[:, 0]), np.sqrt(var[:, 0])):
        print(f"{xi:6.2f} {np.sin(3 * xi):8.3f} {m:8.3f} {sf:8.3f} {sy:8.3f}")

    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot: matplotlib is not installed (pip install matplotlib)")
            return
        grid = np.linspace(-1.5, 1.5, 301)
        m, v = post.predict(grid[:, None])
        m, s = m[:, 0], np.sqrt(v[:, 0])
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.fill_between(grid, m - 2 * s, m + 2 * s, alpha=0.3,
                        label=f"mean ± 2 std (GLM Laplace, {args.structure})")
        ax.plot(grid, m, label="network")
        ax.plot(grid, np.sin(3 * grid), "k--", lw=1, label="sin(3x)")
        ax.plot(x, y, "k.", ms=4, label="data")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
