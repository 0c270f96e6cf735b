"""Training to a target loss: taylorkern's optimizers against what a user would pick instead.

Problems (seeded; float64):
  sinc      y = sinc(10 x) (numpy's normalised sinc) on 20,000 evenly spaced points of [-1, 1],
            a 1-20-1 tanh network, to MSE 1e-6: curve fitting, the Levenberg-Marquardt regime.
  sysid     one-step prediction of a nonlinear ARX system, y_t from (y_{t-1}, y_{t-2}, u_{t-1},
            u_{t-2}), 200,000 samples, a 4-32-32-1 tanh network, to MSE 1e-4 (the outputs'
            variance is about 0.3).
  seed      the seed's 2-8-1 ReLU network on y = x1 + x2 (100 points), to MSE 1e-20.
  diabetes  scikit-learn's diabetes data (442 x 10, standardised), a 10-16-1 tanh network:
            lbfgs iterations, timed per iteration against scikit-learn's own lbfgs.
Contenders:
  taylorkern lm, gauss-newton and lbfgs (``tk.minimize(..., target=)``);
  torch-levenberg-marquardt (float64, its default Levenberg-Marquardt step), when installed;
  scikit-learn's MLPRegressor(solver="lbfgs"), which cannot stop at a target: run for a fixed
  number of iterations, its loss reported;
  scipy's least_squares (trf) with taylorkern's residuals and Jacobian (taylorkern.scipy),
  stopped when its residuals reach the target.
Each run has a time limit; a contender that does not reach the target within it says so.
Used by ``python -m taylorkern bench --training`` and bench/test_lm_regime.py.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

import taylorkern as tk

TIME_LIMIT = 60.0  # seconds per run
SCIPY_MAX_JACOBIAN = 50_000_000  # entries of J (400 MB in float64)


class Problem:
    def __init__(self, name, net, X, Y, target):
        self.name, self.net, self.X, self.Y, self.target = name, net, X, Y, target

    def mse(self, theta):
        return float(np.mean((self.net.predict(theta, self.X) - self.Y) ** 2))


def sinc():
    X = np.linspace(-1.0, 1.0, 20_000).reshape(-1, 1)
    return Problem("sinc 1-20-1, N=20,000", tk.MLP([1, 20, 1], activation="tanh"), X, np.sinc(10 * X), 1e-6)


def sysid(n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    u = np.repeat(rng.uniform(-1.0, 1.0, n // 5 + 3), 5)[: n + 2]  # piecewise-constant input
    y = np.zeros(n + 2)
    for t in range(2, n + 2):
        y[t] = 0.5 * y[t - 1] - 0.2 * y[t - 2] + np.tanh(u[t - 1] + 0.5 * y[t - 1]) + 0.3 * u[t - 2] ** 2
    X = np.stack([y[1:-1], y[:-2], u[1:-1], u[:-2]], axis=1)
    return Problem("sysid 4-32-32-1, N=200,000", tk.MLP([4, 32, 32, 1], activation="tanh"), X,
                   y[2:].reshape(-1, 1), 1e-4)


def seed_problem():
    rng = np.random.default_rng(0)
    X = rng.random((100, 2))
    return Problem("seed 2-8-1 relu, N=100", tk.MLP([2, 8, 1], activation="relu"), X, X.sum(axis=1, keepdims=True),
                   1e-20)


def diabetes():
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = ((y - y.mean()) / y.std()).reshape(-1, 1)
    return Problem("diabetes 10-16-1, N=442", tk.MLP([10, 16, 1], activation="tanh"), X, y, None)


PROBLEMS = {"sinc": sinc, "sysid": sysid, "seed": seed_problem}


def _result(contender, reached, seconds, iterations, mse, note=""):
    return dict(contender=contender, reached=bool(reached), seconds=seconds, iterations=iterations, mse=mse,
                note=note)


def taylorkern_run(p, method, seed=0, time_limit=TIME_LIMIT):
    theta0 = p.net.init(seed=seed)
    t0 = time.perf_counter()
    res = tk.minimize(p.net, theta0, p.X, p.Y, method=method, target=p.target, max_iter=100_000,
                      max_time=time_limit)
    seconds = time.perf_counter() - t0
    return _result(f"taylorkern {method}", res.status == tk.optim.Status.TARGET, seconds, res.nit,
                   p.mse(res.theta))


def torch_lm_run(p, seed=0, time_limit=TIME_LIMIT):
    """torch-levenberg-marquardt from taylorkern's initial weights; None when not installed."""
    try:
        import torch
        import torch_levenberg_marquardt as tlm
    except ImportError:
        return None
    net, theta0 = p.net, p.net.init(seed=seed)
    layers = []
    for i, (W, b) in enumerate(net.unflatten(theta0)):
        lin = torch.nn.Linear(W.shape[0], W.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i + 1 < net.num_layers:
            layers.append(torch.nn.Tanh() if net.activations[i] == "tanh" else torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    module = tlm.training.LevenbergMarquardtModule(model=model, loss_fn=tlm.loss.MSELoss(), learning_rate=1.0)
    X, Y = torch.from_numpy(p.X), torch.from_numpy(p.Y)
    t0 = time.perf_counter()
    it, mse = 0, math.inf
    while time.perf_counter() - t0 < time_limit:
        _, loss, stop, _ = module.training_step(X, Y)
        it += 1
        with torch.no_grad():
            mse = float(torch.mean((model(X) - Y) ** 2))
        if mse <= p.target or stop:
            break
    seconds = time.perf_counter() - t0
    return _result("torch-levenberg-marquardt", mse <= p.target, seconds, it, mse,
                   "" if mse <= p.target else f"not reached in {time_limit:g} s")


def sklearn_lbfgs_run(p, max_iter=2000, seed=0):
    """scikit-learn's lbfgs MLPRegressor for max_iter iterations (it cannot stop at a target)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor
    except ImportError:
        return None
    act = p.net.activations[0]
    est = MLPRegressor(hidden_layer_sizes=p.net.sizes[1:-1], activation="relu" if act == "relu" else "tanh",
                       solver="lbfgs", alpha=0.0, tol=0.0, max_iter=max_iter, max_fun=10 * max_iter + 100,
                       random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(p.X, p.Y.ravel())
    seconds = time.perf_counter() - t0
    mse = float(np.mean((est.predict(p.X) - p.Y.ravel()) ** 2))
    reached = p.target is not None and mse <= p.target
    return _result("scikit-learn MLPRegressor lbfgs", reached, seconds, est.n_iter_, mse,
                   "" if reached else f"{est.n_iter_} iterations, no target")


class _Reached(Exception):
    pass


def scipy_least_squares_run(p, seed=0, time_limit=TIME_LIMIT):
    import scipy.optimize

    import taylorkern.scipy as tks
    res = tks.Residuals(p.net, p.X, p.Y)  # scaled so that r.r is the MSE (no l2 here)
    if res.num_residuals * p.net.num_params > SCIPY_MAX_JACOBIAN:
        # trf factorises the dense J every iteration and checks no clock meanwhile: sysid's
        # 200,000 x 1,249 J ran for minutes without finishing a step
        return _result("scipy least_squares trf (taylorkern J)", False, 0.0, 0, math.nan,
                       f"not run: J would be {res.num_residuals:,} x {p.net.num_params:,}")
    best = [math.inf, 0]

    def fun(theta):
        r = res.fun(theta)
        mse = float(r @ r)
        best[0], best[1] = min(best[0], mse), best[1] + 1
        if mse <= p.target:
            raise _Reached
        if time.perf_counter() - t0 > time_limit:
            raise TimeoutError
        return r

    t0 = time.perf_counter()
    try:
        scipy.optimize.least_squares(fun, p.net.init(seed=seed), jac=res.jac, method="trf", max_nfev=100_000,
                                     ftol=1e-15, xtol=1e-15, gtol=1e-15)
    except (_Reached, TimeoutError):
        pass
    seconds = time.perf_counter() - t0
    reached = best[0] <= p.target
    return _result("scipy least_squares trf (taylorkern J)", reached, seconds, best[1], best[0],
                   "" if reached else f"not reached in {time_limit:g} s")


def lbfgs_per_iteration(p, iterations=200):
    """Seconds per lbfgs iteration: taylorkern's and scikit-learn's, from the same number of
    iterations, and the loss each reached (MSE)."""
    out = {}
    tk.minimize(p.net, p.net.init(seed=0), p.X, p.Y, method="lbfgs", max_iter=5)  # warm-up
    t0 = time.perf_counter()
    res = tk.minimize(p.net, p.net.init(seed=0), p.X, p.Y, method="lbfgs", max_iter=iterations, gtol=0.0,
                      ftol=0.0)
    out["taylorkern"] = ((time.perf_counter() - t0) / max(res.nit, 1), p.mse(res.theta), res.nit)
    sk = sklearn_lbfgs_run(p, max_iter=iterations)
    if sk is not None:
        out["scikit-learn"] = (sk["seconds"] / max(sk["iterations"], 1), sk["mse"], sk["iterations"])
    return out


def table(problems=("sinc", "seed", "sysid"), time_limit=TIME_LIMIT, peers=True, log=print):
    """Every contender (taylorkern's alone without ``peers``) on every problem; returns the rows
    and logs one line per run."""
    rows = []
    for name in problems:
        p = PROBLEMS[name]()
        runs = [lambda m=m: taylorkern_run(p, m, time_limit=time_limit) for m in ("lm", "gauss-newton", "lbfgs")]
        if peers:
            runs += [lambda: torch_lm_run(p, time_limit=time_limit), lambda: sklearn_lbfgs_run(p),
                     lambda: scipy_least_squares_run(p, time_limit=time_limit)]
        for run in runs:
            r = run()
            if r is None:
                continue
            r["problem"] = p.name
            rows.append(r)
            log(f"{p.name:28s} {r['contender']:40s} {'yes' if r['reached'] else 'no ':4s} {r['seconds']:9.3f} s "
                f"{r['iterations']:>7} it  MSE {r['mse']:.3g} {r['note']}")
    return rows
