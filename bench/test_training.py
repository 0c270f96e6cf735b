"""Training quality: iterations and wall time to reach a target loss on classic fitting
problems (Hagan & Menhaj's kind of test for Levenberg-Marquardt).

Problems
  sine    one period of a sine, y = sin(pi x) on 41 points of [-1, 1], a 1-5-1 tanh network,
          target MSE 0.002;
  parity  3-bit parity, inputs in {-1, 1}^3, targets +-1, a 3-10-10-1 tanh network, target
          MSE 0.002.
Contenders
  taylorkern: lm, newton, newton-cg, lbfgs, kfac, adam (lr 0.01, full batch), each stopped by
  ``target=``; scikit-learn's MLPRegressor(solver="lbfgs") and scipy's least_squares
  (MINPACK lm, taylorkern's exact Jacobian) when installed — neither can stop at a target,
  so their iterations (lbfgs iterations; least_squares function evaluations) to the target
  are found by bisection on max_iter / max_nfev, and the timed run is the one that stops
  there.

Each benchmark first checks, untimed, that the run reaches the target (the timed run is
the same deterministic run), and records in extra_info the iterations, evaluations and the
success rate over 10 initialisations; a table of those is printed at the end of the module.
All from the same initial weights (taylorkern's init, seed 0) except scikit-learn's, which
draws its own (random_state=0).

Run: pytest bench/test_training.py --benchmark-only
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import taylorkern as tk

TARGET = 0.002
SEEDS = range(10)  # initialisations for the success rate


def sine():
    X = np.linspace(-1.0, 1.0, 41).reshape(-1, 1)
    return tk.MLP([1, 5, 1], activation="tanh"), X, np.sin(np.pi * X)


def parity():
    X = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64)
    Y = np.prod(X, axis=1, keepdims=True)  # +1 for an even number of -1s
    return tk.MLP([3, 10, 10, 1], activation="tanh"), X, Y


PROBLEMS = {"sine 1-5-1": sine, "parity 3-10-10-1": parity}

# method: (minimize options, max_iter)
TK_METHODS = {
    "lm": ({}, 1000),
    "newton": ({}, 1000),
    "newton-cg": ({}, 1000),
    "lbfgs": ({}, 5000),
    "kfac": ({}, 5000),
    "adam": ({"lr": 0.01}, 20000),
}

ROWS = []  # the summary table


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not ROWS:
        return
    lines = ["", f"training to MSE {TARGET}: iterations, evaluations, median time of 5 runs, and how many "
                 f"of {len(SEEDS)} initialisations reach the target",
             f"{'problem':18s} {'method':27s} {'iterations':>10s} {'f evals':>8s} {'curv evals':>10s} "
             f"{'final MSE':>10s} {'median':>10s} {'success':>8s}"]
    for r in ROWS:
        lines.append(f"{r['problem']:18s} {r['method']:27s} {r['iterations']:>10} {r['nfev']:>8} {r['nhev']:>10} "
                     f"{r['loss']:10.3e} {r['median_ms']:>7.2f} ms {r['success_rate']:>8s}")
    with capture.global_and_fixture_disabled() if capture else _nothing():
        for line in lines:
            reporter.write_line(line)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def record(benchmark, problem, method, iterations, nfev, nhev, loss, successes, tries):
    row = dict(problem=problem, method=method, iterations=iterations, nfev=nfev, nhev=nhev, loss=loss,
               success_rate=f"{successes}/{tries}", median_ms=math.nan)
    ROWS.append(row)
    benchmark.extra_info.update(row)
    return row


def median_ms(benchmark):
    try:
        return benchmark.stats.stats.median * 1e3
    except AttributeError:  # benchmarks disabled (--benchmark-disable): nothing was timed
        return math.nan


@pytest.mark.parametrize("method", list(TK_METHODS))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_taylorkern(benchmark, problem, method):
    net, X, Y = PROBLEMS[problem]()
    options, max_iter = TK_METHODS[method]

    def train(seed=0):
        return tk.minimize(net, net.init(seed=seed), X, Y, method=method, target=TARGET,
                           max_iter=max_iter, **options)

    res = train()
    assert res.status == tk.optim.Status.TARGET, res.message
    successes = sum(train(s).status == tk.optim.Status.TARGET for s in SEEDS)
    row = record(benchmark, problem, method, res.nit, res.nfev, res.nhev, res.loss, successes, len(SEEDS))
    benchmark.group = f"train {problem} to MSE {TARGET}"
    timed = benchmark.pedantic(train, rounds=5, warmup_rounds=1)
    row["median_ms"] = median_ms(benchmark)
    assert timed.nit == res.nit  # the timed runs are the checked run


def _bisect(reaches, hi):
    """Smallest n in [1, hi] with reaches(n), assuming monotone; None if not even hi."""
    if not reaches(hi):
        return None
    lo = 0  # reaches(lo) is False (0 steps never reach the target here)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_sklearn_lbfgs(benchmark, problem):
    sk = pytest.importorskip("sklearn.neural_network")
    from sklearn.exceptions import ConvergenceWarning
    net, X, Y = PROBLEMS[problem]()
    hidden = net.sizes[1:-1]
    y = Y.ravel()

    def fit(max_iter, random_state=0):
        est = sk.MLPRegressor(hidden_layer_sizes=hidden, activation="tanh", solver="lbfgs", alpha=0.0,
                              tol=0.0, max_iter=max_iter, max_fun=10 * max_iter + 100,
                              random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        return est

    def mse(est):
        return float(np.mean((est.predict(X) - y) ** 2))

    n = _bisect(lambda m: mse(fit(m)) <= TARGET, 5000)
    assert n is not None, "scikit-learn's lbfgs did not reach the target in 5000 iterations"
    est = fit(n)
    # lbfgs decreases the loss monotonically: reaching it within 5000 = reaching it at 5000
    successes = sum(mse(fit(5000, s)) <= TARGET for s in SEEDS)
    row = record(benchmark, problem, "sklearn MLPRegressor lbfgs", est.n_iter_, "-", 0, mse(est), successes,
                 len(SEEDS))
    benchmark.group = f"train {problem} to MSE {TARGET}"
    benchmark.pedantic(fit, args=(n,), rounds=5, warmup_rounds=1)
    row["median_ms"] = median_ms(benchmark)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_scipy_least_squares_lm(benchmark, problem):
    import scipy.optimize

    import taylorkern.scipy as tks
    net, X, Y = PROBLEMS[problem]()

    def fit(max_nfev, seed=0):
        res = tks.Residuals(net, X, Y)
        # MINPACK's lm needs at least as many residuals as parameters: parity has 8 for 161
        method = "lm" if res.num_residuals >= net.num_params else "trf"
        out = scipy.optimize.least_squares(res.fun, net.init(seed=seed), jac=res.jac, method=method,
                                           max_nfev=max_nfev, ftol=None if method == "trf" else 1e-15,
                                           xtol=1e-15, gtol=1e-15)
        out.method_used = method
        return out

    n = _bisect(lambda m: 2 * fit(m).cost <= TARGET, 2000)
    assert n is not None, "least_squares did not reach the target in 2000 evaluations"
    out = fit(n)
    successes = sum(2 * fit(2000, s).cost <= TARGET for s in SEEDS)  # monotone, as above
    row = record(benchmark, problem, f"scipy least_squares {out.method_used}", out.nfev, out.nfev, out.njev,
                 2 * out.cost, successes, len(SEEDS))
    benchmark.group = f"train {problem} to MSE {TARGET}"
    benchmark.pedantic(fit, args=(n,), rounds=5, warmup_rounds=1)
    row["median_ms"] = median_ms(benchmark)
    assert math.isfinite(out.cost)
