"""Laplace workflow timing: taylorkern.laplace against laplace-torch's full-GGN Laplace.

    python bench/laplace_vs_peers.py [--repeats 3] [--threads 2] [--N 2000] [--new 1000]

The workload (issue 25's target): a [10, 32, 32, 1] tanh regression network (P = 1,441),
float64, N = 2,000 training points:

    fit at theta* + 10 log marginal likelihood evaluations (10 prior precisions, each with a noise
    value) + the GLM predictive mean and variance at 1,000 new points.

Rows: taylorkern (laplace.fit, log_marginal_likelihood, predict), its floor (one full GGN, one
Cholesky factorisation of the P x P precision, the Jacobian of the new points and one triangular
solve with it), and laplace-torch (``Laplace(..., "regression", subset_of_weights="all",
hessian_structure="full")``, its default curvature backend) when torch and laplace-torch are
installed.  Each row is the median of ``--repeats`` runs in this one process; the two libraries'
marginal likelihoods and predictive variances are compared, so that the timings are at equal
numbers.  theta* is 20 Levenberg-Marquardt iterations from an initialisation (not timed).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy.linalg

import taylorkern as tk
from taylorkern import laplace

SIZES = [10, 32, 32, 1]


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def problem(N, n_new, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, SIZES[0]))
    y = np.sin(X[:, :3].sum(1)) + 0.1 * rng.standard_normal(N)
    Xn = rng.standard_normal((n_new, SIZES[0]))
    net = tk.MLP(SIZES, activation="tanh", loss="mse")
    theta = tk.minimize(net, net.init(seed=seed), X, y[:, None], method="lm", max_iter=20).theta
    return net, theta, X, y[:, None], Xn


PRIORS = np.logspace(-1, 1, 10)
SIGMA = 0.1


def run_taylorkern(net, theta, X, Y, Xn):
    post = laplace.fit(net, theta, X, Y, structure="full", prior_precision=1.0, sigma_noise=SIGMA)
    lml = [post.log_marginal_likelihood(float(d), SIGMA) for d in PRIORS]
    mean, var = post.predict(Xn, noise=False)
    return lml, mean[:, 0], var[:, 0]


def run_floor(net, theta, X, Y, Xn):
    G = net.ggn(theta, X, Y, reduction="sum")
    G.flat[::G.shape[0] + 1] += 1.0
    L = scipy.linalg.cholesky(G, lower=True, check_finite=False, overwrite_a=True)
    J = net.jacobian(theta, Xn)
    Z = scipy.linalg.solve_triangular(L, J.T, lower=True, check_finite=False)
    return float(np.einsum("ij,ij->", Z, Z))


def torch_setup(net, theta, threads):
    import torch
    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float64)  # curvlinops makes work vectors in the default dtype
    layers = []
    params = net.unflatten(theta)
    for l, (W, b) in enumerate(params):
        lin = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(np.array(b)))
        layers.append(lin)
        if l < len(params) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def run_laplace_torch(model, X, Y, Xn):
    import torch
    from laplace import Laplace
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)),
                                         batch_size=len(X))
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full",
                 sigma_noise=SIGMA, prior_precision=1.0)
    la.fit(loader)
    lml = [float(la.log_marginal_likelihood(torch.tensor(float(d)), torch.tensor(SIGMA))) for d in PRIORS]
    la.prior_precision = 1.0  # the predictive at the fitted prior, as taylorkern's
    f_mu, f_var = la(torch.from_numpy(Xn), pred_type="glm")
    return lml, f_mu.detach().numpy()[:, 0], f_var.detach().numpy()[:, 0, 0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--N", type=int, default=2000)
    ap.add_argument("--new", type=int, default=1000)
    args = ap.parse_args()
    tk.set_num_threads(args.threads)
    net, theta, X, Y, Xn = problem(args.N, args.new)
    print(f"[10,32,32,1] tanh mse float64, P = {net.num_params}, N = {args.N}, {args.new} new points, "
          f"{args.threads} threads, backend {tk.backend()}, {platform.processor() or platform.machine()}")
    run_taylorkern(net, theta, X, Y, Xn)  # warm-up (first calls build the compiled network description)
    t_tk, (lml_tk, mu_tk, var_tk) = median_time(lambda: run_taylorkern(net, theta, X, Y, Xn), args.repeats)
    t_floor, _ = median_time(lambda: run_floor(net, theta, X, Y, Xn), args.repeats)
    print(f"{'taylorkern.laplace':24s} {t_tk:8.3f} s")
    print(f"{'floor (GGN+chol+J+trsm)':24s} {t_floor:8.3f} s   taylorkern / floor = {t_tk / t_floor:.2f}")
    try:
        import laplace as _lt  # noqa: F401  (laplace-torch's package name)
        import torch  # noqa: F401
    except ImportError as exc:
        print(f"laplace-torch: not installed ({exc})")
        return
    model = torch_setup(net, theta, args.threads)
    t_lt, (lml_lt, mu_lt, var_lt) = median_time(lambda: run_laplace_torch(model, X, Y, Xn), args.repeats)
    err_lml = max(abs(a - b) / abs(b) for a, b in zip(lml_tk, lml_lt))
    err_var = float(np.max(np.abs(var_tk - var_lt)) / np.max(np.abs(var_lt)))
    err_mu = float(np.max(np.abs(mu_tk - mu_lt)) / np.max(np.abs(mu_lt)))
    print(f"{'laplace-torch (full GGN)':24s} {t_lt:8.3f} s   laplace-torch / taylorkern = {t_lt / t_tk:.1f}")
    print(f"agreement: lml {err_lml:.1e}, predictive mean {err_mu:.1e}, variance {err_var:.1e} (max relative)")


if __name__ == "__main__":
    main()
