"""taylorkern.minimize: every method decreases the loss (mse and ce, float64 and float32, l2,
masks); quadratics are solved in one step; Newton leaves a saddle point; lm agrees with
MINPACK's; NaN/Inf, callbacks, time budgets, targets and bad options stop or fail cleanly.

Small problems, few iterations, fixed seeds: the whole file runs in a few seconds."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import scipy.optimize

import taylorkern as tk
from taylorkern.optim import METHOD_OPTIONS, METHODS, Iterate, OptimizeResult, Status

SECOND_ORDER = ("taylor-step", "newton", "gauss-newton", "lm", "newton-cg", "lbfgs", "kfac")
FIRST_ORDER = ("gd", "momentum", "adam")
# Learning rates that make the baselines move on these small problems within 40 steps.
FAST = {"gd": dict(lr=0.1), "momentum": dict(lr=0.05), "adam": dict(lr=0.02)}


def problem(loss="mse", dtype=np.float64, l2=0.0, seed=0, sizes=None, N=24, activation="tanh"):
    rng = np.random.default_rng(seed)
    sizes = sizes or ([3, 6, 2] if loss in ("mse", "gaussian") else [3, 6, 3])
    net = tk.MLP(sizes, activation=activation, loss=loss, l2=l2, dtype=dtype)
    X = rng.standard_normal((N, sizes[0]))
    if loss in ("mse", "gaussian"):  # gaussian: one target per (mean, log-variance) pair
        k = net.target_width
        Y = np.tanh(X @ rng.standard_normal((sizes[0], k))) + 0.1 * rng.standard_normal((N, k))
    else:
        Y = np.argmax(X @ rng.standard_normal((sizes[0], sizes[-1])), axis=1)
    return net, net.init(seed=seed), X, Y


def check_result(res, net, theta0, X, Y, f0):
    """Invariants of every result."""
    assert isinstance(res, OptimizeResult)
    assert res.theta.dtype == net.dtype and res.theta.shape == (net.num_params,)
    assert np.isfinite(res.theta).all()
    # theta is the best iterate: its loss is the result's loss and the history's minimum
    tol = 1e-5 if net.dtype == np.float32 else 1e-12
    assert res.loss == pytest.approx(net.loss(res.theta, X, Y), rel=tol, abs=1e-30)
    h = res.history
    assert set(h) == {"loss", "grad_norm", "step_norm", "damping", "accepted", "time"}
    assert all(len(v) == res.nit + 1 for v in h.values())
    assert h["loss"][0] == pytest.approx(f0, rel=tol)
    finite = h["loss"][h["accepted"] & np.isfinite(h["loss"])]
    assert res.loss == finite.min()
    assert np.all(np.diff(h["time"]) >= 0)
    assert res.nfev >= res.nit and res.njev >= 1
    assert res.success == (res.status in (Status.GTOL, Status.FTOL, Status.XTOL, Status.TARGET))
    assert isinstance(res.message, str) and res.message


# ----------------------------------------------------------------------------- descent
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("loss, dtype, l2", [("mse", np.float64, 0.0), ("ce", np.float64, 1e-3),
                                             ("mse", np.float32, 1e-3), ("ce", np.float32, 0.0)],
                         ids=["mse-f64", "ce-f64-l2", "mse-f32-l2", "ce-f32"])
def test_every_method_decreases_the_loss(method, loss, dtype, l2):
    net, theta0, X, Y = problem(loss, dtype, l2, seed=1)
    keep = theta0.copy()
    f0 = net.loss(theta0, X, Y)
    res = tk.minimize(net, theta0, X, Y, method=method, max_iter=40, **FAST.get(method, {}))
    check_result(res, net, theta0, X, Y, f0)
    np.testing.assert_array_equal(theta0, keep)  # the caller's theta0 is not written
    # second-order methods must make real progress in 40 iterations; the baselines some
    assert res.loss < (0.5 if method in SECOND_ORDER else 0.95) * f0, (res.loss, f0)
    if method in ("newton", "taylor-step", "newton-cg", "gauss-newton", "lm", "kfac"):
        assert res.nhev >= 1
    if method in FIRST_ORDER + ("lbfgs",):
        assert res.nhev == 0


@pytest.mark.parametrize("method", [m for m in SECOND_ORDER if m not in ("taylor-step", "kfac")])
def test_second_order_methods_converge_on_an_interpolation_problem(method):
    # (taylor-step is steepest descent with a model step length, kfac a preconditioned gradient
    # method: linear convergence only)
    # P = 25 parameters, 10 targets: an exact fit exists near any start, the loss goes to ~0.
    rng = np.random.default_rng(3)
    net = tk.MLP([2, 6, 1], activation="tanh")
    X = rng.standard_normal((10, 2))
    Y = rng.standard_normal((10, 1))
    res = tk.minimize(net, net.init(seed=3), X, Y, method=method, max_iter=500)
    assert res.success, res.message
    assert res.loss < 1e-14, (res.loss, res.message)


def test_the_seed_problem_lm_beats_gd_by_orders_of_magnitude():
    rng = np.random.default_rng(0)
    X = rng.random((100, 2))
    Y = X.sum(axis=1, keepdims=True)
    net = tk.MLP([2, 8, 1], activation="relu")
    theta0 = net.init(seed=0)
    lm = tk.minimize(net, theta0, X, Y, method="lm")
    gd = tk.minimize(net, theta0, X, Y, method="gd", lr=0.01, max_iter=1000)
    assert lm.success and lm.loss < 1e-12 and lm.nit < 50
    assert gd.status == Status.MAX_ITER and gd.nit == 1000 and gd.loss > 1e-4


# ----------------------------------------------------------------------------- quadratics
@pytest.mark.parametrize("method", ["newton", "gauss-newton"])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_linear_network_with_mse_is_solved_in_one_step(method, l2):
    rng = np.random.default_rng(5)
    net = tk.MLP([4, 3], activation="identity", l2=l2)  # one linear layer: a quadratic loss
    X = rng.standard_normal((25, 4))
    Y = rng.standard_normal((25, 3))
    theta0 = net.init(seed=1)
    res = tk.minimize(net, theta0, X, Y, method=method)
    assert res.status == Status.GTOL and res.nit == 1, res
    # the exact minimiser, from the normal equations of [X 1] W = Y with ridge l2/2 * ...
    A = np.hstack([X, np.ones((25, 1))])
    N, k = Y.shape
    Wt = np.linalg.solve(2 * A.T @ A / (N * k) + l2 * np.eye(5), 2 * A.T @ Y / (N * k))
    np.testing.assert_allclose(res.theta, Wt.ravel(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- saddle
def saddle_problem():
    """theta = 0 of a 1-2-1 tanh network on odd data: the gradient is exactly zero (W2 = 0
    blocks every path, tanh(0) = 0, and the residuals, dyadic and antisymmetric, times 2/N
    with N = 8, sum to an exact 0), the Hessian indefinite (X.Y != 0 couples W1 and W2)."""
    net = tk.MLP([1, 2, 1], activation="tanh")
    X = np.array([-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0]).reshape(-1, 1) / 4
    Y = X + X ** 3
    return net, np.zeros(net.num_params), X, Y


def test_newton_escapes_a_saddle_point_where_the_gradient_is_zero():
    net, theta0, X, Y = saddle_problem()
    f0, g0 = net.loss_and_grad(theta0, X, Y)
    assert np.all(g0 == 0.0)
    assert np.linalg.eigvalsh(net.hessian(theta0, X, Y))[0] < -0.1
    # first-order methods (and Gauss-Newton) take the saddle for a minimum ...
    for method in ("gd", "gauss-newton", "lbfgs"):
        trapped = tk.minimize(net, theta0, X, Y, method=method)
        assert trapped.status == Status.GTOL and trapped.nit == 0
    # ... Newton moves along the negative curvature and converges to a real minimum
    res = tk.minimize(net, theta0, X, Y, method="newton")
    assert res.success, res.message
    assert res.loss < 0.05 * f0
    assert np.linalg.eigvalsh(net.hessian(res.theta, X, Y))[0] > -1e-8
    assert res.history["step_norm"][1] > 0  # the very first step already left the saddle


# ----------------------------------------------------------------------------- vs MINPACK
@pytest.mark.parametrize("l2", [1e-3, 1e-2])
def test_lm_matches_scipy_least_squares_lm(l2):
    # l2 > 0 makes the minimum isolated (without it this noisy fit has minima at infinity,
    # a saturating unit, which every method only crawls towards).
    rng = np.random.default_rng(11)
    net = tk.MLP([2, 4, 1], activation="tanh", l2=l2)
    X = rng.standard_normal((40, 2))
    Y = np.sin(X[:, :1]) * X[:, 1:] + 0.05 * rng.standard_normal((40, 1))
    theta0 = net.init(seed=2)
    N = X.shape[0]

    def residuals(t):  # written out here from the definition, independently of tk.scipy
        return np.concatenate([(net.predict(t, X) - Y).ravel() / np.sqrt(N), np.sqrt(l2 / 2) * t])

    def jacobian(t):
        return np.vstack([net.jacobian(t, X) / np.sqrt(N), np.sqrt(l2 / 2) * np.eye(net.num_params)])

    ref = scipy.optimize.least_squares(residuals, theta0, jac=jacobian, method="lm",
                                       ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=5000)
    res = tk.minimize(net, theta0, X, Y, method="lm", gtol=1e-12)
    assert ref.success and res.success, (ref.message, res.message)
    assert res.loss == pytest.approx(2 * ref.cost, rel=1e-10)
    # the same minimum, up to the network's symmetries (a tanh unit's sign, unit order)
    np.testing.assert_allclose(net.predict(res.theta, X), net.predict(ref.x, X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sort(np.abs(res.theta)), np.sort(np.abs(ref.x)), rtol=1e-5, atol=1e-6)
    # about as many loss evaluations as MINPACK (both counts move by an iteration or two with
    # the last bits of the products: 91-93 each here, by backend and build)
    assert res.nfev <= 1.1 * ref.nfev, (res.nfev, ref.nfev)


@pytest.mark.parametrize("options", [dict(update="classic"), dict(scaling="marquardt"),
                                     dict(damping=1.0, eta=0.2)])
def test_lm_variants_reach_the_same_minimum(options):
    net, theta0, X, Y = problem("mse", seed=4, sizes=[3, 3, 2], l2=1e-2)
    base = tk.minimize(net, theta0, X, Y, method="lm", max_iter=400)
    res = tk.minimize(net, theta0, X, Y, method="lm", max_iter=400, **options)
    assert res.success and base.success, (res.message, base.message)
    assert res.loss == pytest.approx(base.loss, rel=1e-8)


@pytest.mark.parametrize("space", ["parameters", "samples"])
@pytest.mark.parametrize("D", ["scalar", "vector"])
def test_lm_predicted_decrease_without_a_product(space, D):
    """After an exact (Cholesky) solve of (G + lam D) p = -g, LM takes the model's decrease
    -(g.p + p.G p / 2) as (lam p.D p - g.p) / 2, with no product with G: the two agree to
    rounding.  A failed factorisation (the eigenspace fallback) is not exact, and LM then
    takes the product."""
    from taylorkern.optim.second_order import _ParameterSpace, _SampleSpace
    rng = np.random.default_rng(3)
    F, n, l2, lam = 40, 25, 1e-3, 0.37
    B = rng.standard_normal((n, F))
    g = rng.standard_normal(F)
    scale = 1.0 if D == "scalar" else rng.uniform(0.2, 3.0, F)
    if space == "parameters":
        curv = _ParameterSpace(F)
        curv.set(B.T @ B + l2 * np.eye(F))
    else:
        curv = _SampleSpace(n)
        curv.set((B, l2))
    p = curv.solve(lam, scale, g)
    assert curv.exact
    direct = -(g @ p + 0.5 * p @ curv.times(p))
    assert 0.5 * (lam * p @ (scale * p) - g @ p) == pytest.approx(direct, rel=1e-11)
    if space == "parameters":  # indefinite: the factorisation fails, the fallback is not exact
        curv.set(-np.eye(F))
        curv.solve(1e-3, 1.0, g)
        assert not curv.exact


def test_lm_is_robust_to_a_singular_gauss_newton_matrix():
    # More parameters (P = 41) than residuals (N = 5): J^T J is singular everywhere.
    rng = np.random.default_rng(8)
    net = tk.MLP([3, 8, 1], activation="tanh")
    X = rng.standard_normal((5, 3))
    Y = rng.standard_normal((5, 1))
    res = tk.minimize(net, net.init(seed=0), X, Y, method="lm")
    assert res.success and res.loss < 1e-20


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("method", ["newton", "newton-cg", "taylor-step"])
def test_curvature_option(method, curvature):
    net, theta0, X, Y = problem("mse", seed=2)
    f0 = net.loss(theta0, X, Y)
    res = tk.minimize(net, theta0, X, Y, method=method, curvature=curvature, max_iter=30)
    check_result(res, net, theta0, X, Y, f0)
    assert res.loss < 0.5 * f0


def test_newton_cg_forms_no_matrix(monkeypatch):
    net, theta0, X, Y = problem("ce", seed=3)

    def refuse(*a, **k):
        raise AssertionError("newton-cg must use products only")

    for name in ("hessian", "ggn", "jacobian", "hessian_blocks", "ggn_blocks"):
        monkeypatch.setattr(net, name, refuse)
    res = tk.minimize(net, theta0, X, Y, method="newton-cg", max_iter=20)
    assert res.loss < 0.5 * net.loss(theta0, X, Y) and res.nhev > res.nit


@pytest.mark.parametrize("method", METHODS)
def test_mask_keeps_frozen_parameters_exactly(method):
    net, theta0, X, Y = problem("mse", seed=6, l2=1e-3)
    rng = np.random.default_rng(0)
    mask = rng.random(net.num_params) < 0.6
    theta0[~mask & (rng.random(net.num_params) < 0.5)] = 0.0  # some pruned to zero
    f0 = net.loss(theta0, X, Y)
    res = tk.minimize(net, theta0, X, Y, method=method, mask=mask, max_iter=30, **FAST.get(method, {}))
    check_result(res, net, theta0, X, Y, f0)
    np.testing.assert_array_equal(res.theta[~mask], theta0[~mask])
    assert res.loss < (0.7 if method in SECOND_ORDER else 0.98) * f0
    assert not np.array_equal(res.theta[mask], theta0[mask])


def test_mask_gradient_norm_is_over_trainable_parameters():
    net, theta0, X, Y = problem("mse", seed=6)
    mask = np.zeros(net.num_params, bool)
    mask[-3:] = True  # only the output biases: a linear least-squares problem in 2 of them
    res = tk.minimize(net, theta0, X, Y, method="newton", mask=mask)
    assert res.status == Status.GTOL
    g = net.loss_and_grad(res.theta, X, Y)[1]
    assert np.linalg.norm(g[mask]) <= 1e-10 < np.linalg.norm(g[~mask])


@pytest.mark.parametrize("mask, match", [
    (np.ones(3, bool), r"mask: expected a boolean array of shape \(\d+,\)"),
    ("all", "mask: expected a boolean array"),
    (None, None)])
def test_bad_mask(mask, match):
    net, theta0, X, Y = problem("mse")
    if mask is None:  # all False
        mask, match = np.zeros(net.num_params, bool), "mask: no parameter is trainable"
    with pytest.raises(ValueError, match=match):
        tk.minimize(net, theta0, X, Y, method="lm", mask=mask)


@pytest.mark.parametrize("method", FIRST_ORDER)
def test_mini_batches_are_reproducible_epochs(method):
    net, theta0, X, Y = problem("mse", seed=9)
    opts = dict(method=method, batch_size=5, max_iter=6, **FAST[method])
    a = tk.minimize(net, theta0, X, Y, seed=1, **opts)
    b = tk.minimize(net, theta0, X, Y, seed=1, **opts)
    c = tk.minimize(net, theta0, X, Y, seed=2, **opts)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert not np.array_equal(a.theta, c.theta)
    assert a.nit == 6 and a.njev == 1 + 6 * (5 + 1)  # 24 samples: 5 batches + the epoch's full gradient
    full = tk.minimize(net, theta0, X, Y, method=method, batch_size=1000, max_iter=6, **FAST[method])
    plain = tk.minimize(net, theta0, X, Y, method=method, max_iter=6, **FAST[method])
    np.testing.assert_array_equal(full.theta, plain.theta)  # batch_size >= N is full batch


def test_momentum_nesterov_and_adam_options_change_the_path():
    net, theta0, X, Y = problem("mse", seed=9)
    a = tk.minimize(net, theta0, X, Y, method="momentum", max_iter=10)
    b = tk.minimize(net, theta0, X, Y, method="momentum", nesterov=True, max_iter=10)
    c = tk.minimize(net, theta0, X, Y, method="adam", beta1=0.5, max_iter=10)
    d = tk.minimize(net, theta0, X, Y, method="adam", max_iter=10)
    assert not np.array_equal(a.theta, b.theta) and not np.array_equal(c.theta, d.theta)


def test_target_stops_with_success():
    net, theta0, X, Y = problem("mse", seed=1)
    f0 = net.loss(theta0, X, Y)
    res = tk.minimize(net, theta0, X, Y, method="lm", target=0.5 * f0)
    assert res.status == Status.TARGET and res.success and res.loss <= 0.5 * f0
    assert np.all(res.history["loss"][:-1] > 0.5 * f0)  # stopped at the first iterate below
    at_start = tk.minimize(net, theta0, X, Y, method="lm", target=2 * f0)
    assert at_start.status == Status.TARGET and at_start.nit == 0


def test_gtol_ftol_xtol_statuses():
    net, theta0, X, Y = problem("mse", seed=1)
    assert tk.minimize(net, theta0, X, Y, method="lm", gtol=1e3).status == Status.GTOL
    r = tk.minimize(net, theta0, X, Y, method="gd", ftol=0.5, max_iter=100)
    assert r.status == Status.FTOL and r.success and r.nit < 100
    r = tk.minimize(net, theta0, X, Y, method="gd", xtol=1.0, max_iter=100)
    assert r.status == Status.XTOL and r.success and r.nit == 1
    r = tk.minimize(net, theta0, X, Y, method="gd", max_iter=7)
    assert r.status == Status.MAX_ITER and not r.success and r.nit == 7


@pytest.mark.parametrize("method", ["newton", "lm", "newton-cg", "gauss-newton", "lbfgs"])
def test_float32_runs_end_at_the_precision_floor_with_success(method):
    # an interpolation problem (P = 25 > N = 10): float32 gets the loss to its rounding level
    # and then must stop on its own (not at max_iter), reporting success
    rng = np.random.default_rng(3)
    net = tk.MLP([2, 6, 1], activation="tanh", dtype=np.float32)
    X = rng.standard_normal((10, 2))
    Y = rng.standard_normal((10, 1))
    res = tk.minimize(net, net.init(seed=3), X, Y, method=method, max_iter=500)
    assert res.success, res.message
    assert res.loss < 1e-9 and res.theta.dtype == np.float32


# ----------------------------------------------------------------------------- stopping
class FlakyMLP(tk.MLP):
    """An MLP whose loss, gradient and GGN turn NaN from the ``after``-th call that computes a
    gradient on (MLP._trusted: every call of the public methods and of the optimizers)."""

    def __init__(self, *a, after, **k):
        super().__init__(*a, **k)
        self.after, self.calls = after, 0

    def _trusted(self, kind, theta, X, Y, reduction="mean", sample_weight=None):
        if kind in ("loss_and_grad", "loss_grad_ggn"):
            self.calls += 1
        result = super()._trusted(kind, theta, X, Y, reduction, sample_weight)
        if self.calls <= self.after or kind not in ("loss", "loss_and_grad", "loss_grad_ggn"):
            return result
        if kind == "loss":
            return math.nan
        return (math.nan,) + tuple(np.full_like(a, np.nan) for a in result[1:])


@pytest.mark.parametrize("method", METHODS)
def test_nan_in_the_middle_of_a_run_stops_cleanly_with_the_best_theta(method):
    _, theta0, X, Y = problem("mse", seed=1)
    net = FlakyMLP([3, 6, 2], activation="tanh", after=6)
    clean = tk.MLP([3, 6, 2], activation="tanh")
    res = tk.minimize(net, theta0, X, Y, method=method, max_iter=100, **FAST.get(method, {}))
    assert res.status == Status.NONFINITE and not res.success
    assert "not finite" in res.message
    assert np.isfinite(res.theta).all() and np.isfinite(res.loss)
    assert res.loss == pytest.approx(clean.loss(res.theta, X, Y), rel=1e-12)
    assert res.loss <= clean.loss(theta0, X, Y)
    assert res.nit < 100


def test_divergence_to_overflow_stops_with_the_best_theta():
    net, theta0, X, Y = problem("mse", np.float32, seed=1, activation="relu")
    res = tk.minimize(net, theta0, X, Y, method="gd", lr=50.0, max_iter=10_000)
    assert res.status == Status.NONFINITE and res.nit < 10_000
    assert not np.isfinite(res.history["loss"][-1])
    assert res.loss == np.nanmin(res.history["loss"]) and np.isfinite(res.theta).all()


def test_nonfinite_trial_steps_are_backed_off():
    # An lm run from a point where a full Gauss-Newton step overflows float32: the damped
    # method backs off and still converges.
    net, theta0, X, Y = problem("ce", np.float32, seed=2)
    res = tk.minimize(net, theta0 * 30.0, X, Y, method="lm", damping=1e-12, max_iter=200)
    assert np.isfinite(res.loss) and res.loss < net.loss(theta0 * 30.0, X, Y)


def test_callback_returning_true_stops_and_sees_every_iteration():
    net, theta0, X, Y = problem("mse", seed=1)
    seen = []

    def callback(info):
        assert isinstance(info, Iterate)
        seen.append(info)
        return info.nit == 3

    res = tk.minimize(net, theta0, X, Y, method="lm", callback=callback)
    assert res.status == Status.CALLBACK and not res.success and res.nit == 3
    assert [i.nit for i in seen] == [1, 2, 3]
    assert [i.loss for i in seen] == list(res.history["loss"][1:])
    last = seen[-1]
    assert last.theta.shape == (net.num_params,)
    assert net.loss(last.theta, X, Y) == pytest.approx(last.loss, rel=1e-12)
    # returning anything but True (None, 1, "yes") does not stop
    res = tk.minimize(net, theta0, X, Y, method="gd", max_iter=5, callback=lambda info: 1)
    assert res.status == Status.MAX_ITER


def test_time_budget_stops():
    net, theta0, X, Y = problem("mse", seed=1)
    t0 = time.perf_counter()
    res = tk.minimize(net, theta0, X, Y, method="gd", lr=1e-6, max_iter=10**9, max_time=0.2)
    elapsed = time.perf_counter() - t0
    assert res.status == Status.MAX_TIME and not res.success
    assert 0.2 <= res.time < 0.2 + 1.0 and elapsed < 5
    zero = tk.minimize(net, theta0, X, Y, method="lm", max_time=0)
    assert zero.status == Status.MAX_TIME and zero.nit == 0


def test_progress_display(capsys, monkeypatch):
    net, theta0, X, Y = problem("mse", seed=1)
    res = tk.minimize(net, theta0, X, Y, method="lm", progress=True, max_iter=5)
    assert res.nit >= 1
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    capsys.readouterr()
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    tk.minimize(net, theta0, X, Y, method="gd", progress=True, max_iter=3)
    assert "minimize[gd] it      1  loss" in capsys.readouterr().err


def test_blas_threads_are_restored_after_a_dense_run_even_on_error():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas")

    net, theta0, X, Y = problem("mse", seed=1)
    before = blas_threads()
    tk.minimize(net, theta0, X, Y, method="lm", max_iter=5)
    assert blas_threads() == before

    def boom(info):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        tk.minimize(net, theta0, X, Y, method="newton", callback=boom)
    assert blas_threads() == before


# ----------------------------------------------------------------------------- bad input
def test_unknown_method_is_named():
    net, theta0, X, Y = problem()
    with pytest.raises(ValueError, match=r"method: unknown 'bfgs'; expected one of \('gd'"):
        tk.minimize(net, theta0, X, Y, method="bfgs")
    with pytest.raises(ValueError, match="method: expected one of"):
        tk.minimize(net, theta0, X, Y, method=None)


def test_method_names_are_forgiving_about_case_and_underscores():
    net, theta0, X, Y = problem()
    res = tk.minimize(net, theta0, X, Y, method="Newton_CG", max_iter=3)
    assert res.method == "newton-cg"


def test_unknown_options_are_named_with_the_valid_ones():
    net, theta0, X, Y = problem()
    with pytest.raises(ValueError) as e:
        tk.minimize(net, theta0, X, Y, method="lm", lr=0.1, mommentum=0.9)
    msg = str(e.value)
    assert "unknown options 'lr', 'mommentum' for method 'lm'" in msg
    assert "damping" in msg and "max_iter" in msg


@pytest.mark.parametrize("method, options, match", [
    ("gd", dict(lr=-1.0), "lr: expected a number > 0"),
    ("gd", dict(lr=float("nan")), "lr: expected a finite number"),
    ("adam", dict(beta1=1.0), "beta1: expected a number < 1"),
    ("gd", dict(batch_size=0), "batch_size: expected an integer >= 1"),
    ("lm", dict(max_iter=-1), "max_iter: expected an integer >= 0"),
    ("lm", dict(max_iter=2.5), "max_iter: expected an integer"),
    ("lm", dict(update="fast"), r"update: expected one of \('nielsen', 'classic'\)"),
    ("lm", dict(scaling="none"), "scaling: expected one of"),
    ("newton", dict(curvature="fisher"), "curvature: expected one of"),
    ("newton", dict(radius=0.0), "radius: expected a number > 0"),
    ("newton-cg", dict(radius=10.0, max_radius=1.0), "max_radius: expected >= radius"),
    ("lbfgs", dict(c1=0.5, c2=0.4), "c2: expected c1 < c2 < 1"),
    ("lbfgs", dict(memory=0), "memory: expected an integer >= 1"),
    ("lm", dict(callback=3), "callback: expected a callable"),
    ("lm", dict(progress="yes"), "progress: expected True or False"),
    ("lm", dict(gtol=-1.0), "gtol: expected a number >= 0"),
    ("lm", dict(max_time=True), "max_time: expected a finite number"),
])
def test_bad_option_values_are_refused(method, options, match):
    net, theta0, X, Y = problem()
    with pytest.raises(ValueError, match=match):
        tk.minimize(net, theta0, X, Y, method=method, **options)


def test_bad_net_theta_and_data():
    net, theta0, X, Y = problem()
    with pytest.raises(TypeError, match="net: expected a taylorkern.MLP"):
        tk.minimize("net", theta0, X, Y)
    with pytest.raises(ValueError, match=re.escape(f"theta: expected shape ({net.num_params},)")):
        tk.minimize(net, theta0[:-1], X, Y)
    with pytest.raises(ValueError, match="theta: contains NaN or Inf"):
        tk.minimize(net, np.full_like(theta0, np.nan), X, Y)
    with pytest.raises(ValueError, match="X: expected shape"):
        tk.minimize(net, theta0, X[:, :2], Y)
    with pytest.raises(ValueError, match="Y: 'mse' expects shape"):
        tk.minimize(net, theta0, X, Y[:-1])


def test_nonfinite_initial_loss_stops_at_once():
    net, theta0, X, Y = problem("mse", np.float32, activation="relu")
    huge = np.full_like(theta0, 1e30)  # finite, but the outputs overflow float32
    res = tk.minimize(net, huge, X, Y, method="lm")
    assert res.status == Status.NONFINITE and res.nit == 0
    np.testing.assert_array_equal(res.theta, huge)


def test_result_repr_and_scipy_style_aliases():
    net, theta0, X, Y = problem()
    res = tk.minimize(net, theta0, X, Y, method="lm", max_iter=3)
    text = repr(res)
    assert "method='lm'" in text and "nit=3" in text and "theta=<" in text
    assert res.x is res.theta and res.fun == res.loss


def test_method_options_table_matches_the_methods():
    assert set(METHOD_OPTIONS) == set(METHODS) == {
        "gd", "momentum", "adam", "taylor-step", "newton", "gauss-newton", "lm", "newton-cg", "lbfgs",
        "kfac"}
    assert tk.minimize is tk.optim.minimize and tk.OptimizeResult is OptimizeResult


# ----------------------------------------------------------------------------- the demo
def test_demo_prints_the_comparison_and_writes_the_plot(tmp_path, capsys):
    from taylorkern.__main__ import main
    path = tmp_path / "demo.png"
    assert main(["demo", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("gd", "newton", "lm", "newton-cg")}
    assert set(rows) == {"gd", "newton", "lm", "newton-cg"}
    assert float(rows["lm"][1]) < 1e-12 < 1e-4 < float(rows["gd"][3])  # gd's row: "gd (lr 0.01) <mse>"
    assert rows["gd"][4] == "1000"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out and not path.exists()
    else:
        assert f"plot written to {path}" in out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["demo", "--no-plot"]) == 0
    assert "plot written" not in capsys.readouterr().out


# ------------------------------------------------------------------ lm in sample space
@pytest.mark.parametrize("loss", ["mse", "ce", "gaussian"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("l2", [0.0, 0.2])
def test_ggn_factor_squares_to_the_ggn(loss, reduction, l2):
    """B^T B + l2 I = G (l2 with reduction "mean" only, as everywhere), for every backend's
    Jacobian and outputs (gaussian: the Fisher's square root)."""
    k = 4 if loss == "gaussian" else 3
    net, theta, X, Y = problem(loss, l2=l2, sizes=[3, 7, k], N=11, seed=4)
    for name in tk.available_backends():
        with tk.use_backend(name):
            B = net.ggn_factor(theta, X, Y, reduction)
            G = net.ggn(theta, X, Y, reduction)
        assert B.shape == (11 * k, net.num_params)
        shift = l2 if reduction == "mean" else 0.0
        np.testing.assert_allclose(B.T @ B + shift * np.eye(net.num_params), G, rtol=0,
                                   atol=1e-12 * np.abs(G).max())


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("options", [dict(), dict(scaling="marquardt"), dict(update="classic")],
                         ids=["identity", "marquardt", "classic"])
@pytest.mark.parametrize("l2, masked", [(0.0, False), (0.05, False), (0.0, True)], ids=["plain", "l2", "mask"])
def test_lm_in_sample_space_takes_the_parameter_space_steps(loss, options, l2, masked):
    """A wide network on few samples (N dL = 20 or 30 < F): the sample-space solve (Woodbury,
    an (N dL)-square system) and the F x F Cholesky give the same iterates (to 1e-10; 1e-8 with Marquardt's scaling)."""
    net, theta0, X, Y = problem(loss, l2=l2, sizes=[3, 40, 2 if loss == "mse" else 3], N=10, seed=7)
    mask = None
    if masked:
        mask = np.ones(net.num_params, dtype=bool)
        mask[::3] = False
    runs = {space: tk.minimize(net, theta0, X, Y, method="lm", max_iter=6, mask=mask, space=space,
                               gtol=0.0, ftol=0.0, xtol=0.0, **options)
            for space in ("samples", "parameters")}
    a, b = runs["samples"], runs["parameters"]
    assert a.nit == b.nit == 6
    np.testing.assert_array_equal(a.history["accepted"], b.history["accepted"])
    # (an over-parameterised fit drives the loss to rounding level: relative to where it started)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-10, atol=1e-10 * b.history["loss"][0])
    # Marquardt's scaling damps by diag(G), which is near zero for some weights of this
    # over-parameterised fit: cond(G + lam D) reaches ~1e10 and the two solves' rounding (BLAS
    # blocking differs between machines) is amplified up to that; measured 3e-11 to 3e-10.
    tol = 1e-8 if options.get("scaling") == "marquardt" else 1e-10
    np.testing.assert_allclose(a.theta, b.theta, rtol=0, atol=tol * np.abs(b.theta).max())
    assert a.loss < net.loss(theta0, X, Y)


def test_lm_chooses_sample_space_for_few_samples(monkeypatch):
    calls = []
    original = tk.MLP.ggn_factor

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(tk.MLP, "ggn_factor", counting)
    net, theta0, X, Y = problem("mse", sizes=[3, 40, 2], N=10, seed=7)    # N dL = 20 < F = 242
    res = tk.minimize(net, theta0, X, Y, method="lm", max_iter=5)
    assert calls and res.loss < net.loss(theta0, X, Y)
    calls.clear()
    net, theta0, X, Y = problem("mse", sizes=[3, 4, 2], N=40, seed=7)     # N dL = 80 > F = 26
    tk.minimize(net, theta0, X, Y, method="lm", max_iter=5)
    assert not calls


def _bfgs_inverse(pairs, F):
    """The dense inverse-Hessian approximation the pairs define (oldest first), by the BFGS
    update H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T from gamma I, gamma = s.y / y.y of
    the newest pair: the matrix L-BFGS applies without forming it."""
    s, y = pairs[-1]
    H = (s @ y) / (y @ y) * np.eye(F)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        E = np.eye(F) - rho * np.outer(s, y)
        H = E @ H @ E.T + rho * np.outer(s, s)
    return H


def _numpy_and_compiled(numpy_form, core_name):
    """The numpy form of an optimizer step and its compiled twin in _core (skipped without it)."""
    try:
        from taylorkern import _core
        compiled = pytest.param(getattr(_core, core_name), id="compiled")
    except ImportError:
        compiled = pytest.param(None, id="compiled", marks=pytest.mark.skip(reason="the compiled extension is absent"))
    return [pytest.param(numpy_form, id="numpy"), compiled]


def _two_loop_kinds():
    from taylorkern.optim import quasi_newton
    return _numpy_and_compiled(quasi_newton.two_loop, "lbfgs_direction")


@pytest.mark.parametrize("F", [1, 3, 37, 101])
@pytest.mark.parametrize("kind", _two_loop_kinds())
def test_lbfgs_memory_applies_the_bfgs_inverse(kind, F):
    """_Memory's direction, with the compiled recursion and with numpy's, against the dense BFGS
    inverse of the same pairs, through pushes past the memory's size (the ring wraps and the
    oldest pair is dropped) and a clear; sizes that are not multiples of the vector width."""
    from taylorkern.optim.quasi_newton import _Memory
    rng = np.random.default_rng(3 + F)
    m = 5
    mem, pairs = _Memory(m, F), []
    mem.apply = kind
    A = rng.standard_normal((F, F))
    A = A @ A.T + F * np.eye(F)  # s.y > 0 for y = A s
    for i in range(13):
        if i == 9:
            mem.clear()
            pairs.clear()
        s = rng.standard_normal(F)
        y = A @ s + 0.1 * rng.standard_normal(F)
        mem.push(s, y, s @ y, y @ y)
        pairs = (pairs + [(s, y)])[-m:]
        g = rng.standard_normal(F)
        want = -_bfgs_inverse(pairs, F) @ g
        np.testing.assert_allclose(mem.direction(g), want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("kind", _two_loop_kinds())
def test_lbfgs_direction_without_pairs_is_scaled_descent(kind):
    rng = np.random.default_rng(0)
    S, Y, rho, alpha = np.zeros((3, 8)), np.zeros((3, 8)), np.zeros(3), np.zeros(3)
    g, out = rng.standard_normal(8), np.empty(8)
    kind(S, Y, rho, 2, 0, 0.25, g, alpha, out)
    np.testing.assert_array_equal(out, -0.25 * g)


def _subproblem_kinds():
    from taylorkern.optim import _subproblem
    return _numpy_and_compiled(_subproblem.eigenbasis_step, "trust_region_eigenbasis")


def _subproblem_cases():
    """(lam ascending, gh, radius): inside and on the boundary of positive definite models,
    indefinite ones, the hard case (gh zero along the lowest eigenvector(s), simple and
    repeated, a large and a small radius) and a saddle (gh = 0)."""
    rng = np.random.default_rng(11)
    cases = []
    for F in (1, 2, 7, 33, 120):
        lam = np.sort(rng.uniform(0.1, 10.0, F))
        gh = rng.standard_normal(F)
        newton = np.linalg.norm(gh / lam)
        cases += [(lam, gh, 2.0 * newton), (lam, gh, 0.3 * newton)]
        lam = np.sort(rng.standard_normal(F) * 5.0)
        lam[0] = min(lam[0], -0.5)
        cases += [(lam, gh, r) for r in (1e-3, 0.7, 50.0)]
        for m in (1, min(3, F)):
            hard = lam.copy()
            hard[:m] = hard[0]
            g0 = gh.copy()
            g0[:m] = 0.0
            inner = np.linalg.norm(g0[m:] / (hard[m:] - hard[0]))
            cases += [(hard, g0, 3.0 * inner + 0.1), (hard, g0, 0.5 * inner + 1e-3)]
        cases.append((lam, np.zeros(F), 0.4))
    return cases


@pytest.mark.parametrize("kind", _subproblem_kinds())
def test_trust_region_step_meets_the_optimality_conditions(kind):
    """Each form's step p in the eigenbasis against Moré and Sorensen's conditions for the global
    minimiser: |p| <= radius, and some s >= max(0, -lam_1) with (lam + s) p = -gh and
    s (radius - |p|) = 0; its predicted decrease is the model's; no random feasible point is
    lower; the two forms agree."""
    from taylorkern.optim import _subproblem
    rng = np.random.default_rng(5)
    eps = np.finfo(np.float64).eps
    for lam, gh, radius in _subproblem_cases():
        ph, pred, boundary = kind(lam, gh, radius, eps)
        scale = max(abs(lam[0]), abs(lam[-1])) * radius + np.linalg.norm(gh)
        n = np.linalg.norm(ph)
        assert n <= radius * (1 + 1e-10)
        assert not boundary or abs(n - radius) <= 1e-10 * radius
        big = np.abs(ph) > 1e-6 * n
        s = 0.0 if not big.any() else float(np.median(-gh[big] / ph[big] - lam[big]))
        if not boundary:
            assert abs(s) <= 1e-8 * (abs(lam).max() + 1)
        assert s >= max(0.0, -lam[0]) - 1e-8 * (abs(lam).max() + 1)
        np.testing.assert_allclose((lam + s) * ph, -gh, rtol=0, atol=1e-9 * scale)
        model = float(gh @ ph + 0.5 * lam @ (ph * ph))
        assert pred == pytest.approx(-model, rel=1e-12, abs=1e-300)
        U = rng.standard_normal((200, lam.size))
        U *= radius * rng.random((200, 1)) ** (1 / lam.size) / np.linalg.norm(U, axis=1, keepdims=True)
        assert (U @ gh + 0.5 * (U * U) @ lam).min() >= model - 1e-9 * scale * radius
        want = _subproblem.eigenbasis_step(lam, gh, radius, eps)
        np.testing.assert_allclose(ph, want[0], rtol=0, atol=1e-10 * max(radius, 1e-300))
        assert boundary == want[2]


def test_compiled_trust_region_step_refuses_bad_arrays():
    core = pytest.importorskip("taylorkern._core", reason="the compiled extension is absent")
    lam, gh = np.arange(1.0, 4.0), np.ones(3)
    with pytest.raises(ValueError, match="gh"):
        core.trust_region_eigenbasis(lam, np.ones(4), 1.0, 1e-16)
    with pytest.raises(TypeError, match="lam"):
        core.trust_region_eigenbasis(lam.astype(np.float32), gh, 1.0, 1e-16)
    with pytest.raises(ValueError, match="lam"):
        core.trust_region_eigenbasis(np.ones(0), np.ones(0), 1.0, 1e-16)
    with pytest.raises(ValueError, match="radius"):
        core.trust_region_eigenbasis(lam, gh, 0.0, 1e-16)
    with pytest.raises(ValueError, match="radius"):
        core.trust_region_eigenbasis(lam, gh, np.inf, 1e-16)


def test_compiled_lbfgs_direction_refuses_bad_arrays():
    core = pytest.importorskip("taylorkern._core", reason="the compiled extension is absent")
    S, Y, rho, alpha, g, out = np.zeros((3, 8)), np.zeros((3, 8)), np.ones(3), np.zeros(3), np.ones(8), np.zeros(8)
    with pytest.raises(ValueError, match="head"):
        core.lbfgs_direction(S, Y, rho, 3, 1, 1.0, g, alpha, out)
    with pytest.raises(ValueError, match="k"):
        core.lbfgs_direction(S, Y, rho, 0, 4, 1.0, g, alpha, out)
    with pytest.raises(ValueError, match="Y"):
        core.lbfgs_direction(S, np.zeros((3, 7)), rho, 0, 1, 1.0, g, alpha, out)
    with pytest.raises(TypeError, match="out"):
        core.lbfgs_direction(S, Y, rho, 0, 1, 1.0, g, alpha, np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="out"):
        core.lbfgs_direction(S, Y, rho, 0, 1, 1.0, g, alpha, g)
