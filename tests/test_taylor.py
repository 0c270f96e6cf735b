"""taylorkern.taylor: Taylor-model predictions, their error order, the model's step, and L2
regularisation read as the quadratic term (checked against retraining)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import taylorkern as tk
from taylorkern import taylor as ty

SMOOTH = ("tanh", "sigmoid", "softplus", "gelu", "sin")


def _random_problem(activation, loss, seed, sizes=(4, 6, 5, 3), N=20):
    net = tk.MLP(list(sizes), activation=activation, loss=loss)
    rng = np.random.default_rng([seed, len(activation), len(loss)])
    theta = net.init(seed=seed) + 0.2 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((N, sizes[0]))
    Y = rng.integers(0, sizes[-1], N) if loss == "ce" else rng.standard_normal((N, sizes[-1]))
    return net, theta, X, Y


def _linear_problem(seed=0, d=4, k=2, N=30):
    """A single linear layer with mse: the loss is exactly quadratic in theta."""
    net = tk.MLP([d, k], loss="mse")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    Y = X @ rng.standard_normal((d, k)) + 0.5 * rng.standard_normal((N, k))
    Xa = np.c_[X, np.ones(N)]
    Wb = np.linalg.lstsq(Xa, Y, rcond=None)[0]  # (d+1, k) = [W; b]: theta's layout
    return net, Wb.ravel().copy(), X, Y, Xa


def test_predict_change_matches_its_definition():
    net, theta, X, Y = _random_problem("tanh", "ce", 0)
    delta = 0.01 * np.random.default_rng(1).standard_normal(net.num_params)
    c = ty.predict_change(net, theta, X, Y, delta)
    L0, g = net.loss_and_grad(theta, X, Y)
    H = net.hessian(theta, X, Y)
    assert c.loss == L0
    assert c.actual == pytest.approx(net.loss(theta + delta, X, Y) - L0, rel=1e-12)
    assert c.first_order == pytest.approx(g @ delta, rel=1e-12)
    assert c.second_order == pytest.approx(g @ delta + 0.5 * delta @ H @ delta, rel=1e-12)
    assert c.error_second < c.error_first  # the curvature term helps for a small step
    c1 = ty.predict_change(net, theta, X, Y, delta, order=1)
    assert c1.second_order is None and c1.first_order == c.first_order
    G = net.ggn(theta, X, Y)
    cg = ty.predict_change(net, theta, X, Y, delta, curvature="ggn")
    assert cg.curvature_term == pytest.approx(delta @ G @ delta, rel=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("activation", SMOOTH)
def test_taylor_error_scales_as_third_power(activation, loss):
    for seed in (0, 1):
        net, theta, X, Y = _random_problem(activation, loss, seed)
        f = ty.fidelity_curve(net, theta, X, Y, seed=seed)
        assert f.fitted_second.sum() >= 4 and f.fitted_first.sum() >= 4
        assert f.slope_second == pytest.approx(3.0, abs=0.15)
        assert f.slope_first == pytest.approx(2.0, abs=0.1)
        # halving the step divides the second-order error by ~8 (at the small scales)
        i = np.flatnonzero(f.fitted_second)[:3]
        ratio = np.diff(np.log(f.error_second[i])) / np.diff(np.log(f.scales[i]))
        np.testing.assert_allclose(ratio, 3.0, atol=0.25)
        # and the model beats the first-order prediction at every fitted scale
        assert np.all(f.error_second[f.fitted_second] < f.error_first[f.fitted_second])


def test_taylor_model_is_exact_on_a_quadratic_loss():
    net, theta, X, Y, _ = _linear_problem()
    theta = theta + 0.3  # away from the minimum: g != 0
    f = ty.fidelity_curve(net, theta, X, Y, scales=np.logspace(-3, 1, 9))
    assert np.all(f.error_second <= f.floor)  # the model is the function, up to rounding
    assert math.isnan(f.slope_second)
    assert f.slope_first == pytest.approx(2.0, abs=0.05)


def test_ggn_model_error_is_second_order():
    # G drops the residual term of H, so the Gauss-Newton model's error is O(s^2).
    net, theta, X, Y = _random_problem("tanh", "mse", 0)
    f = ty.fidelity_curve(net, theta, X, Y, curvature="ggn")
    assert f.slope_second == pytest.approx(2.0, abs=0.15)


def test_quadratic_step():
    net, theta, X, Y, _ = _linear_problem()
    theta = theta + 0.3
    s = ty.quadratic_step(net, theta, X, Y)
    L0, g = net.loss_and_grad(theta, X, Y)
    H = net.hessian(theta, X, Y)
    assert s.alpha == pytest.approx((g @ g) / (g @ H @ g), rel=1e-12)
    assert s.actual == pytest.approx(s.predicted, rel=1e-10)  # exact on a quadratic
    # and on a nonlinear network the model predicts the change to second order
    net, theta, X, Y = _random_problem("tanh", "ce", 2)
    s = ty.quadratic_step(net, theta, X, Y)
    assert s.predicted < 0 and s.actual < 0 and s.actual == pytest.approx(s.predicted, rel=0.2)


def test_regularization_matches_retraining_on_a_linear_network():
    net, theta, X, Y, Xa = _linear_problem()
    N, k = Y.shape
    lam = 0.3
    r = ty.regularization(net, theta, X, Y, lam)
    assert r.grad_norm < 1e-12 and r.model_valid
    # (H + lam I)^{-1} H theta*, in H's eigenbasis: each coordinate scaled by h / (h + lam)
    H = net.hessian(theta, X, Y)
    np.testing.assert_allclose(r.theta_predicted, np.linalg.solve(H + lam * np.eye(len(theta)), H @ theta),
                               rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(r.shrink, r.eigenvalues / (r.eigenvalues + lam), rtol=1e-14)
    # ridge regression in closed form: (2/(Nk) Xa^T Xa + lam I) Wb = 2/(Nk) Xa^T Y, per output
    A = 2.0 / (N * k) * Xa.T @ Xa
    ridge = np.linalg.solve(A + lam * np.eye(A.shape[0]), 2.0 / (N * k) * Xa.T @ Y).ravel()
    np.testing.assert_allclose(r.theta_predicted, ridge, rtol=1e-10, atol=1e-13)
    # retraining the network with l2 = lam lands on the same point, with the same loss
    assert r.retrain_result.success
    np.testing.assert_allclose(r.theta_retrained, r.theta_predicted, rtol=1e-9, atol=1e-12)
    assert r.error < 1e-9 and r.displacement_error < 1e-8
    assert r.loss_retrained == pytest.approx(r.loss_predicted, rel=1e-12)
    assert r.loss_at_predicted == pytest.approx(r.loss_predicted, rel=1e-12)
    np.testing.assert_allclose(r.shrink_actual, r.shrink, rtol=1e-7)
    # another optimizer agrees too
    r2 = ty.regularization(net, theta, X, Y, lam, retrain="lm", retrain_options={"max_iter": 100})
    np.testing.assert_allclose(r2.theta_retrained, r.theta_predicted, rtol=1e-6, atol=1e-9)


def test_regularization_on_a_trained_nonlinear_network():
    rng = np.random.default_rng(0)
    net = tk.MLP([3, 6, 2], activation="tanh", loss="mse", l2=0.1)
    X = rng.standard_normal((200, 3))
    Y = np.tanh(X @ rng.standard_normal((3, 2)))
    res = tk.minimize(net, net.init(seed=0), X, Y, method="newton", max_iter=200, ftol=0.0)
    assert res.grad_norm < 1e-9
    errs = []
    for lam in (1e-4, 1e-3, 1e-2):
        r = ty.regularization(net, res.theta, X, Y, lam)
        assert r.model_valid and np.all((r.shrink > 0) & (r.shrink < 1))
        assert r.retrain_result.grad_norm < 1e-9
        assert r.loss_retrained <= r.loss_at_predicted + 1e-15  # the retrained point is optimal
        errs.append(r.displacement_error)
    # The model predicts the move theta_lam - theta* (of size O(lam)) up to O(lam^2): its
    # relative error shrinks linearly with lambda.
    assert errs[0] < 0.01
    ratios = np.array(errs[1:]) / np.array(errs[:-1])
    assert np.all((ratios > 5) & (ratios < 20)), ratios


def test_regularized_net_and_bad_input():
    net, theta, X, Y, _ = _linear_problem()
    assert ty.regularized_net(net, 0.5).l2 == 0.5
    with pytest.raises(ValueError, match="lam"):
        ty.regularization(net, theta, X, Y, 0.0)
    with pytest.raises(ValueError, match="delta"):
        ty.predict_change(net, theta, X, Y, np.zeros(3))
    with pytest.raises(ValueError, match="order"):
        ty.predict_change(net, theta, X, Y, np.zeros_like(theta), order=3)
    with pytest.raises(ValueError, match="scales"):
        ty.fidelity_curve(net, theta, X, Y, scales=[1.0, 0.1])
