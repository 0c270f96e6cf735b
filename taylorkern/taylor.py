"""Checks and uses of the quadratic Taylor model of an MLP's loss,

    L(theta + delta) ~ L(theta) + g^T delta + 1/2 delta^T B delta,

with g the gradient and B the exact Hessian H (or the GGN G) at theta.

Index letters: P parameters, S step scales, N samples.

- :func:`predict_change`: the first- and second-order predictions of
  ``L(theta + delta) - L(theta)`` against the true change;
- :func:`fidelity_curve`: those predictions along one direction over a range of step
  scales s, with the fitted log-log slopes of their errors: for a smooth loss the
  first-order error shrinks as s^2 and the second-order error as s^3 (the next Taylor
  term).  ReLU networks are piecewise linear in theta, so their errors jump where a step
  crosses a kink instead of following a power law;
- :func:`quadratic_step`: the step length the model gives along a direction,
  ``alpha = -g.d / d.B d``, with the predicted and the true decrease;
- :func:`regularization`: L2 regularisation read through the quadratic term.  Adding
  ``1/2 lambda |theta|^2`` to the model around a trained theta* moves the optimum to
  ``theta* - (B + lambda I)^{-1} (g + lambda theta*)``, which is ``(B + lambda I)^{-1} B theta*``
  when g = 0: in B's eigenbasis each coordinate of theta* is scaled by ``h_i / (h_i + lambda)``
  (directions of high curvature keep their value, flat ones are shrunk to zero).  The
  prediction is compared with retraining a copy of the network with ``l2 += lambda``.

All functions use only the network's public calls and return dataclasses of numpy arrays.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._validate import check_curvature, check_memory, check_net, integer, real
from .model import MLP

# Step scales of the default fidelity curve (|delta| for a unit direction).
DEFAULT_SCALES = np.logspace(-4, 0, 17)


def _curv_vp(net, curvature):
    return net.hvp if curvature == "hessian" else net.ggn_vp


def _check_vector(net, v, name):
    arr = np.asarray(v)
    if arr.shape != (net.num_params,):
        raise ValueError(f"{name}: expected shape ({net.num_params},), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return arr


# ----------------------------------------------------------------------------- predictions
@dataclasses.dataclass
class Change:
    """Predicted and true change of the loss for one step delta.

    Attributes
    ----------
    loss : float, L(theta)
    actual : float, L(theta + delta) - L(theta)
    first_order : float, g^T delta
    second_order : float or None, g^T delta + 1/2 delta^T B delta (None for order=1)
    error_first, error_second : float, |prediction - actual| (error_second None for order=1)
    curvature_term : float or None, delta^T B delta
    step_norm : float, |delta|_2
    """

    loss: float
    actual: float
    first_order: float
    second_order: float | None
    error_first: float
    error_second: float | None
    curvature_term: float | None
    step_norm: float


def predict_change(net, theta, X, Y, delta, order=2, curvature="hessian") -> Change:
    """First- (and second-) order Taylor predictions of L(theta + delta) - L(theta).

    Parameters
    ----------
    net, theta (P,), X (N, d0), Y : the network, its parameters and data
    delta : (P,) the step
    order : 1 (gradient term only) or 2 (plus 1/2 delta^T B delta, one product)
    curvature : "hessian" (the exact second-order model) or "ggn" (Gauss-Newton model)
    """
    check_net(net)
    curvature = check_curvature(curvature)
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order: expected 1 or 2, got {order!r}")
    delta = _check_vector(net, delta, "delta")
    L0, g = net.loss_and_grad(theta, X, Y)
    theta64 = np.asarray(theta, dtype=np.float64)
    L1 = net.loss((theta64 + delta).astype(net.dtype), X, Y)
    actual = L1 - L0
    first = float(np.dot(g.astype(np.float64), delta))
    second = curv = err2 = None
    if order == 2:
        Bd = np.asarray(_curv_vp(net, curvature)(theta, X, Y, delta.astype(net.dtype)), dtype=np.float64)
        curv = float(delta @ Bd)
        second = first + 0.5 * curv
        err2 = abs(second - actual)
    return Change(loss=float(L0), actual=float(actual), first_order=first, second_order=second,
                  error_first=abs(first - actual), error_second=err2, curvature_term=curv,
                  step_norm=float(np.linalg.norm(delta)))


@dataclasses.dataclass
class Fidelity:
    """The Taylor model's predictions along ``theta + s * direction`` over scales s.

    Attributes
    ----------
    scales : (S,) step scales s (|delta| = s * |direction|)
    actual : (S,) L(theta + s d) - L(theta)
    first_order, second_order : (S,) s g.d and s g.d + s^2/2 d.B d
    error_first, error_second : (S,) their absolute errors
    slope_first, slope_second : float, least-squares slopes of log(error) vs log(s) over the
        ``fit_points`` smallest scales whose error is above the rounding floor (expected 2
        and 3 for a smooth loss; NaN when fewer than 2 points qualify)
    cubic_coefficient : float, error_second / s^3 at the smallest fitted scale, an estimate
        of |D^3 L[d, d, d]| / 6
    floor : float, the rounding level of ``actual`` (errors below it are noise)
    fitted_first, fitted_second : (S,) bool, the points each slope was fitted on
    direction : (P,) float64, the direction d
    """

    scales: np.ndarray
    actual: np.ndarray
    first_order: np.ndarray
    second_order: np.ndarray
    error_first: np.ndarray
    error_second: np.ndarray
    slope_first: float
    slope_second: float
    cubic_coefficient: float
    floor: float
    fitted_first: np.ndarray
    fitted_second: np.ndarray
    direction: np.ndarray

    def plot(self, ax=None):
        """Log-log plot of both errors against s (needs matplotlib); returns the axes."""
        import matplotlib.pyplot as plt  # lazily: optional dependency
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4))
        ax.loglog(self.scales, self.error_first, "o-", label=f"1st order (slope {self.slope_first:.2f})")
        ax.loglog(self.scales, self.error_second, "s-", label=f"2nd order (slope {self.slope_second:.2f})")
        ax.axhline(self.floor, color="gray", lw=0.8, ls=":", label="rounding floor")
        ax.set_xlabel("step scale s")
        ax.set_ylabel("|predicted - true| loss change")
        ax.legend()
        return ax


def _fit_slope(s, err, floor, fit_points):
    ok = np.isfinite(err) & (err > floor) & (s > 0)
    idx = np.flatnonzero(ok)[:fit_points]
    mask = np.zeros(len(s), bool)
    mask[idx] = True
    if len(idx) < 2:
        return math.nan, mask
    slope = np.polyfit(np.log(s[idx]), np.log(err[idx]), 1)[0]
    return float(slope), mask


def fidelity_curve(net, theta, X, Y, direction=None, scales=None, curvature="hessian", seed=0,
                   fit_points=6) -> Fidelity:
    """How the Taylor model's error shrinks with the step: see :class:`Fidelity`.

    Parameters
    ----------
    direction : (P,) or None (a random Gaussian direction of unit norm, ``seed``)
    scales : (S,) positive step scales, ascending (default ``DEFAULT_SCALES``, 1e-4 .. 1)
    curvature : "hessian" (error ~ s^3) or "ggn" (error ~ s^2 unless B's other part vanishes)
    fit_points : how many of the smallest scales above the rounding floor the slopes use

    Costs one gradient, one product and S loss evaluations.  In float32 the rounding floor
    (~1e-6 |L|) leaves only the larger scales, where the s^4 term still bends the curve: use
    a float64 copy of the network for a clean power law.
    """
    check_net(net)
    curvature = check_curvature(curvature)
    fit_points = integer("fit_points", fit_points, 2)
    if direction is None:
        d = np.random.default_rng(seed).standard_normal(net.num_params)
        d /= np.linalg.norm(d)
    else:
        d = _check_vector(net, direction, "direction")
    s = DEFAULT_SCALES if scales is None else np.asarray(scales, dtype=np.float64)
    if s.ndim != 1 or s.size < 2 or not np.isfinite(s).all() or (s <= 0).any() or (np.diff(s) <= 0).any():
        raise ValueError("scales: expected a 1-D ascending array of >= 2 positive finite numbers")
    L0, g = net.loss_and_grad(theta, X, Y)
    theta64 = np.asarray(theta, dtype=np.float64)
    gd = float(np.dot(g.astype(np.float64), d))
    dBd = float(d @ np.asarray(_curv_vp(net, curvature)(theta, X, Y, d.astype(net.dtype)), dtype=np.float64))
    actual = np.array([net.loss((theta64 + si * d).astype(net.dtype), X, Y) - L0 for si in s])
    first = s * gd
    second = first + 0.5 * s * s * dBd
    e1, e2 = np.abs(first - actual), np.abs(second - actual)
    # actual = L(theta + s d) - L(theta) is a difference of two rounded losses (and theta + s d
    # itself is rounded to the dtype): its error is a few ulps of |L| plus |g| times the
    # rounding of theta.  Ten times that is the level below which an error is noise.
    eps = float(np.finfo(net.dtype).eps)
    floor = 10.0 * eps * (abs(L0) + float(np.linalg.norm(g)) * float(np.linalg.norm(theta64)) + 1e-300)
    slope1, m1 = _fit_slope(s, e1, floor, fit_points)
    slope2, m2 = _fit_slope(s, e2, floor, fit_points)
    i2 = np.flatnonzero(m2)
    cubic = float(e2[i2[0]] / s[i2[0]] ** 3) if i2.size else math.nan
    return Fidelity(scales=s, actual=actual, first_order=first, second_order=second,
                    error_first=e1, error_second=e2, slope_first=slope1, slope_second=slope2,
                    cubic_coefficient=cubic, floor=floor, fitted_first=m1, fitted_second=m2,
                    direction=d)


@dataclasses.dataclass
class Step:
    """The quadratic model's step along a direction d.

    Attributes
    ----------
    alpha : float, -g.d / d.B d (NaN when d.B d <= 0: the model has no minimum along d)
    predicted : float, the model's change at alpha, -(g.d)^2 / (2 d.B d)
    actual : float, L(theta + alpha d) - L(theta)
    slope : float, g.d;  curvature : float, d.B d
    """

    alpha: float
    predicted: float
    actual: float
    slope: float
    curvature: float


def quadratic_step(net, theta, X, Y, direction=None, curvature="hessian") -> Step:
    """Step length from the quadratic model along ``direction`` (default -g)."""
    check_net(net)
    curvature = check_curvature(curvature)
    L0, g = net.loss_and_grad(theta, X, Y)
    d = -g.astype(np.float64) if direction is None else _check_vector(net, direction, "direction")
    gd = float(np.dot(g.astype(np.float64), d))
    dBd = float(d @ np.asarray(_curv_vp(net, curvature)(theta, X, Y, d.astype(net.dtype)), dtype=np.float64))
    if not dBd > 0:
        return Step(math.nan, math.nan, math.nan, gd, dBd)
    alpha = -gd / dBd
    theta64 = np.asarray(theta, dtype=np.float64)
    actual = net.loss((theta64 + alpha * d).astype(net.dtype), X, Y) - L0
    return Step(alpha=alpha, predicted=-gd * gd / (2 * dBd), actual=float(actual), slope=gd, curvature=dBd)


# ----------------------------------------------------------------------------- regularization
@dataclasses.dataclass
class Regularization:
    """The quadratic model's regularised optimum against actual retraining.

    Attributes
    ----------
    lam : float, the added L2 strength lambda (the retrained network has ``l2 = net.l2 + lam``)
    eigenvalues : (P,) h_i, eigenvalues of B at theta* (ascending)
    eigenvectors : (P, P) their orthonormal eigenvectors U (columns)
    shrink : (P,) h_i / (h_i + lambda), the predicted scaling of each coordinate of theta* in
        the eigenbasis (when g = 0)
    coordinates : (P,) U^T theta*
    theta_star : (P,) float64, the trained parameters analysed
    theta_predicted : (P,) theta* - (B + lambda I)^{-1} (g + lambda theta*)
    grad_norm : float, |g| at theta* (the model's optimum reduces to (B + lambda I)^{-1} B theta*
        only when this is 0)
    model_valid : bool, B + lambda I positive definite (otherwise the model has no minimum
        and theta_predicted is its stationary point)
    loss_star : float, the regularised loss at theta* (net with l2 + lambda)
    loss_predicted : float, the model's regularised loss at theta_predicted
    loss_at_predicted : float, the true regularised loss at theta_predicted
    theta_retrained : (P,) or None, from ``tk.minimize`` on the network with l2 + lambda
    loss_retrained : float (NaN without retraining)
    shrink_actual : (P,) (U^T theta_retrained)_i / (U^T theta*)_i (NaN where the coordinate
        of theta* is below 1e-12 |theta*|, or without retraining)
    error : float, |theta_predicted - theta_retrained| / |theta_retrained|
    displacement_error : float, |theta_predicted - theta_retrained| / |theta_retrained - theta*|
        (how well the model predicts the move itself)
    retrain_result : the OptimizeResult, or None
    """

    lam: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    shrink: np.ndarray
    coordinates: np.ndarray
    theta_star: np.ndarray
    theta_predicted: np.ndarray
    grad_norm: float
    model_valid: bool
    loss_star: float
    loss_predicted: float
    loss_at_predicted: float
    theta_retrained: np.ndarray | None
    loss_retrained: float
    shrink_actual: np.ndarray
    error: float
    displacement_error: float
    retrain_result: object


def regularized_net(net, lam) -> MLP:
    """A copy of ``net`` with ``l2 = net.l2 + lam``."""
    return MLP(net.sizes, activation=net.activation, loss=net.loss_name, loss_scale=net.loss_scale,
               l2=net.l2 + lam, dtype=net.dtype)


def regularization(net, theta_star, X, Y, lam, curvature="hessian", retrain="newton",
                   retrain_options=None) -> Regularization:
    """L2 regularisation as the quadratic term: predicted vs retrained optimum.

    Parameters
    ----------
    net, theta_star (P,), X (N, d0), Y : the network and a trained theta* (g ~ 0)
    lam : float > 0, the L2 strength added (``1/2 lam |theta|^2``)
    curvature : "hessian" (exact model) or "ggn"
    retrain : a ``tk.minimize`` method started from theta* on the network with
        ``l2 = net.l2 + lam`` (default "newton"), or None to skip retraining
    retrain_options : dict of ``tk.minimize`` options (default ``max_iter=200, ftol=0``:
        converged on the gradient norm, gtol)

    Needs B as a full (P, P) matrix and its eigendecomposition (O(P^3)); refused with the
    memory it would need when that does not fit.  For a loss that is quadratic in theta (a
    single linear layer with mse) the model is exact and the prediction equals the
    retrained optimum up to rounding.
    """
    check_net(net)
    curvature = check_curvature(curvature)
    lam = real("lam", lam, lo=0, lo_open=True)
    P = net.num_params
    check_memory(f"the regularization analysis (P = {P}: B, its eigenvectors and workspace)",
                  4.0 * P * P, "it needs the full P x P curvature")
    theta64 = np.asarray(theta_star, dtype=np.float64)
    _, g = net.loss_and_grad(theta_star, X, Y)
    g = np.asarray(g, dtype=np.float64)
    B = np.asarray(net.hessian(theta_star, X, Y) if curvature == "hessian" else net.ggn(theta_star, X, Y),
                   dtype=np.float64)
    h, U = np.linalg.eigh(0.5 * (B + B.T))
    c = U.T @ theta64
    rhs = U.T @ (g + lam * theta64)
    denom = h + lam
    valid = bool(np.all(denom > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = -(U @ (rhs / denom))
        shrink = h / denom
    theta_pred = theta64 + delta
    rnet = regularized_net(net, lam)
    loss_star = rnet.loss(theta_star, X, Y)
    # The model of the regularised loss: L* + (g + lam theta*).delta + 1/2 delta (B + lam I) delta.
    loss_pred = loss_star + float((g + lam * theta64) @ delta) + 0.5 * float(delta @ (B @ delta) + lam * delta @ delta)
    loss_at_pred = rnet.loss(theta_pred.astype(net.dtype), X, Y) if np.isfinite(theta_pred).all() else math.nan

    theta_ret, loss_ret, res = None, math.nan, None
    shrink_actual = np.full(P, np.nan)
    err = disp_err = math.nan
    if retrain is not None:
        from .optim import minimize  # the optimizers import nothing from here
        # ftol off: a small lambda's second Newton step changes the loss by less than a
        # relative 1e-12, and stopping before it would return the model's own prediction.
        opts = dict(max_iter=200, ftol=0.0)
        opts.update(retrain_options or {})
        res = minimize(rnet, np.asarray(theta_star, dtype=net.dtype), X, Y, method=retrain, **opts)
        theta_ret = np.asarray(res.theta, dtype=np.float64)
        loss_ret = float(res.loss)
        c_ret = U.T @ theta_ret
        big = np.abs(c) > 1e-12 * max(np.linalg.norm(theta64), 1e-300)
        shrink_actual[big] = c_ret[big] / c[big]
        diff = float(np.linalg.norm(theta_pred - theta_ret))
        err = diff / max(float(np.linalg.norm(theta_ret)), 1e-300)
        disp_err = diff / max(float(np.linalg.norm(theta_ret - theta64)), 1e-300)
    return Regularization(lam=lam, eigenvalues=h, eigenvectors=U, shrink=shrink, coordinates=c,
                          theta_star=theta64, theta_predicted=theta_pred,
                          grad_norm=float(np.linalg.norm(g)), model_valid=valid, loss_star=float(loss_star),
                          loss_predicted=float(loss_pred), loss_at_predicted=float(loss_at_pred),
                          theta_retrained=theta_ret, loss_retrained=loss_ret, shrink_actual=shrink_actual,
                          error=err, displacement_error=disp_err, retrain_result=res)
