"""Few parameters, many samples: the Levenberg-Marquardt regime.

Kernels: the full GGN of a 1-20-1 tanh network at N = 20,000 and 200,000 with 1 and 2
threads, against the naive route (the Jacobian, then one BLAS syrk of it), and the fused
loss + gradient + GGN that an LM iteration calls.  Training: LM to MSE 1e-6 on the sinc
problem, LM to 1e-20 on the seed problem, and lbfgs per iteration on the diabetes data against
scikit-learn's (taylorkern.benchmarks.training has the problems).  Compare medians within a
group; absolute times on a shared machine are noise.

Run: pytest bench/test_lm_regime.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg.blas

import taylorkern as tk
from taylorkern.benchmarks import training


@pytest.fixture
def threads():
    n = tk.get_num_threads()
    yield
    tk.set_num_threads(n)


def _sin_data(N):
    X = np.linspace(-1.0, 1.0, N).reshape(-1, 1)
    return X, np.sinc(10 * X)


@pytest.mark.parametrize("N", [20_000, 200_000])
@pytest.mark.parametrize("route", ["ggn 1 thread", "ggn 2 threads", "loss_grad_ggn 2 threads",
                                   "jacobian + syrk 2 threads"])
def test_ggn_small_network(benchmark, threads, N, route):
    net = tk.MLP([1, 20, 1], activation="tanh")
    theta = net.init(seed=0)
    X, Y = _sin_data(N)
    tk.set_num_threads(1 if "1 thread" in route else 2)
    if route.startswith("jacobian"):
        def fn():
            J = net.jacobian(theta, X)  # (N, P): its transpose is Fortran-ordered, as syrk wants
            return scipy.linalg.blas.dsyrk(2.0 / N, J.T, trans=0, lower=1)
    elif route.startswith("loss_grad_ggn"):
        def fn():
            return net.loss_grad_ggn(theta, X, Y)
    else:
        def fn():
            return net.ggn(theta, X, Y)
    benchmark.group = f"GGN of 1-20-1 tanh, N={N}"
    benchmark(fn)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lm_sinc(benchmark, seed):
    p = training.sinc()
    benchmark.group = "LM to MSE 1e-6, sinc 1-20-1, N=20,000"
    r = benchmark.pedantic(training.taylorkern_run, args=(p, "lm", seed), rounds=1, iterations=1)
    benchmark.extra_info.update(r)
    assert r["reached"], r


def test_lm_seed(benchmark):
    p = training.seed_problem()
    benchmark.group = "LM to MSE 1e-20, seed 2-8-1"
    theta0 = p.net.init(seed=0)

    def fn():
        return tk.minimize(p.net, theta0, p.X, p.Y, method="lm", target=p.target)

    res = benchmark(fn)
    assert res.status == tk.optim.Status.TARGET


def test_lbfgs_per_iteration_against_scikit_learn(benchmark):
    pytest.importorskip("sklearn")
    p = training.diabetes()
    out = benchmark.pedantic(training.lbfgs_per_iteration, args=(p,), rounds=1, iterations=1)
    benchmark.group = "lbfgs per iteration, diabetes 10-16-1"
    benchmark.extra_info.update({k: {"us_per_iteration": v[0] * 1e6, "mse": v[1], "iterations": v[2]}
                                 for k, v in out.items()})
