"""Adaptors for scipy.optimize and scipy.sparse.linalg.

- :class:`Objective`: ``fun``, ``jac``, ``hess``, ``hessp`` (and ``ggn``, ``ggnp``) for
  ``scipy.optimize.minimize`` — trust-ncg, trust-krylov, trust-exact, Newton-CG, BFGS,
  L-BFGS-B ... work out of the box.  The loss and gradient of the last theta are cached,
  so scipy's separate ``fun`` and ``jac`` calls at one point cost one kernel call.
- :func:`hessian_operator`, :func:`ggn_operator`: ``LinearOperator``\\ s for H and G at a
  point (matrix-free; ``matmat`` uses the kernels' multi-direction products), e.g. for
  ``scipy.sparse.linalg.eigsh`` or ``cg``.
- :class:`Residuals`: residual vector and its Jacobian for ``scipy.optimize.least_squares``
  (``lm``, ``trf``, ``dogbox``); mse networks only.
- :func:`minimize`, :func:`least_squares`: the two scipy calls with all of the above wired
  in.

Everything is handed to scipy in float64 (a float32 network computes in float32; its
results are widened), and theta arrives from scipy as float64 and is rounded to the
network's dtype.  Index letters: P parameters, N samples, k = dL outputs.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.sparse.linalg

from ._validate import check_curvature, check_net

__all__ = ["Objective", "Residuals", "hessian_operator", "ggn_operator", "minimize", "least_squares"]

# scipy.optimize.minimize methods and the curvature they take from an Objective.
_NEEDS_HESS = ("trust-exact", "dogleg")
_TAKES_HESSP = ("newton-cg", "trust-ncg", "trust-krylov", "trust-constr")
_NO_GRADIENT = ("nelder-mead", "powell", "cobyla", "cobyqa")


def _data(net, X, Y):
    """Validate X, Y once with the network's own messages; return them in its dtype."""
    net.loss(np.zeros(net.num_params, net.dtype), X, Y)
    X = np.ascontiguousarray(X, dtype=net.dtype)
    if net.loss_name == "ce":
        Y = np.ascontiguousarray(Y, dtype=np.int64)
    else:
        Y = np.ascontiguousarray(np.asarray(Y, dtype=net.dtype).reshape(X.shape[0], net.target_width))
    return X, Y


class _Operator(scipy.sparse.linalg.LinearOperator):
    """Symmetric P x P operator V -> M V through a product call of the network."""

    def __init__(self, product, net, theta, X, Y):
        super().__init__(dtype=np.dtype(np.float64), shape=(net.num_params, net.num_params))
        self._product, self._net = product, net
        self._theta, self._X, self._Y = theta, X, Y

    def _apply(self, V):
        V = np.asarray(V, dtype=self._net.dtype)
        return np.asarray(self._product(self._theta, self._X, self._Y, V), dtype=np.float64)

    def _matvec(self, v):
        return self._apply(np.ravel(v)).reshape(np.shape(v))

    def _matmat(self, V):
        return self._apply(V)

    def _rmatvec(self, v):
        return self._matvec(v)

    def _adjoint(self):
        return self


def _operator(kind, net, theta, X, Y):
    check_net(net)
    X, Y = _data(net, X, Y)
    theta = np.array(theta, dtype=net.dtype)
    net.loss(theta, X, Y)  # validates theta
    return _Operator(net.hvp if kind == "hessian" else net.ggn_vp, net, theta, X, Y)


def hessian_operator(net, theta, X, Y):
    """The Hessian at theta as a ``scipy.sparse.linalg.LinearOperator`` (P x P, float64)."""
    return _operator("hessian", net, theta, X, Y)


def ggn_operator(net, theta, X, Y):
    """The Gauss-Newton matrix at theta as a ``LinearOperator`` (P x P, float64)."""
    return _operator("ggn", net, theta, X, Y)


class Objective:
    """The network's loss on (X, Y) as a function of theta, for ``scipy.optimize.minimize``::

        obj = Objective(net, X, Y)
        scipy.optimize.minimize(obj.fun, theta0, jac=obj.jac, hessp=obj.hessp, method="trust-ncg")

    ``fun(theta)`` -> float, ``jac(theta)`` -> (P,), ``hess(theta)`` -> (P, P),
    ``hessp(theta, p)`` -> (P,), ``ggn``/``ggnp`` the same with the GGN,
    ``fun_and_jac(theta)`` -> (float, (P,)) for ``jac=True``, and ``hess_operator(theta)`` /
    ``ggn_operator(theta)``.  All results are float64.  ``nfev``, ``njev``, ``nhev`` count
    the kernel calls actually made (cache hits are free).
    """

    def __init__(self, net, X, Y):
        check_net(net)
        self.net = net
        self.X, self.Y = _data(net, X, Y)
        self.nfev = self.njev = self.nhev = 0
        self._theta = None  # the cached point, in the network's dtype
        self._value = None
        self._grad = None

    def _point(self, theta):
        t = np.asarray(theta)
        if t.shape != (self.net.num_params,):
            raise ValueError(f"theta: expected shape ({self.net.num_params},), got {t.shape}")
        return np.asarray(t, dtype=self.net.dtype)

    def _evaluate(self, theta):
        t = self._point(theta)
        if self._theta is None or not np.array_equal(t, self._theta):
            value, grad = self.net.loss_and_grad(t, self.X, self.Y)
            self.nfev += 1
            self.njev += 1
            self._theta = t.copy()
            self._value, self._grad = float(value), np.asarray(grad, dtype=np.float64)
        return t

    def fun(self, theta):
        self._evaluate(theta)
        return self._value

    def jac(self, theta):
        self._evaluate(theta)
        return self._grad.copy()

    def fun_and_jac(self, theta):
        self._evaluate(theta)
        return self._value, self._grad.copy()

    __call__ = fun

    def hess(self, theta):
        self.nhev += 1
        return np.asarray(self.net.hessian(self._point(theta), self.X, self.Y), dtype=np.float64)

    def hessp(self, theta, p):
        self.nhev += 1
        p = np.asarray(p, dtype=self.net.dtype)
        return np.asarray(self.net.hvp(self._point(theta), self.X, self.Y, p), dtype=np.float64)

    def ggn(self, theta):
        self.nhev += 1
        return np.asarray(self.net.ggn(self._point(theta), self.X, self.Y), dtype=np.float64)

    def ggnp(self, theta, p):
        self.nhev += 1
        p = np.asarray(p, dtype=self.net.dtype)
        return np.asarray(self.net.ggn_vp(self._point(theta), self.X, self.Y, p), dtype=np.float64)

    def hess_operator(self, theta):
        return _Operator(self.net.hvp, self.net, self._point(theta).copy(), self.X, self.Y)

    def ggn_operator(self, theta):
        return _Operator(self.net.ggn_vp, self.net, self._point(theta).copy(), self.X, self.Y)


class Residuals:
    """Residuals r(theta) with loss = r.r, and their Jacobian, for
    ``scipy.optimize.least_squares`` (whose cost 1/2 r.r has the same minimisers)::

        res = Residuals(net, X, Y)
        scipy.optimize.least_squares(res.fun, theta0, jac=res.jac, method="lm")

    r = concat((f(X) - Y).ravel() / sqrt(N k), sqrt(l2 / 2) theta)   -> (N k [+ P],)
    J = [jacobian / sqrt(N k); sqrt(l2 / 2) I]                       -> (N k [+ P], P)

    The l2 rows are present only when the network has ``l2 > 0`` (they also give
    ``method="lm"`` the m >= n residuals it needs).  For ``loss="mse"``, and for the robust
    losses ``"huber"`` and ``"soft_l1"``, which are scipy's own losses of the same names:
    pass ``loss=res.scipy_loss, f_scale=res.f_scale`` to ``least_squares`` (the
    :func:`least_squares` below does), whose cost 1/2 sum f_scale^2 rho((r/f_scale)^2) is
    then half the network's loss.  There r = (f(X) - Y).ravel() / sqrt(2 N k) and f_scale =
    loss_scale / sqrt(2 N k); no l2 rows (scipy would apply its robust loss to them too), so
    the network must have l2 = 0.  Softmax cross-entropy and the likelihoods are not sums of
    squares: use Objective with scipy.optimize.minimize, or taylorkern.minimize.
    """

    def __init__(self, net, X, Y):
        check_net(net)
        if net.loss_name not in ("mse", "huber", "soft_l1"):
            raise ValueError(f"net: least-squares residuals need loss='mse', 'huber' or 'soft_l1', got "
                             f"loss={net.loss_name!r} (not a sum of squares; use Objective with "
                             "scipy.optimize.minimize, or taylorkern.minimize)")
        robust = net.loss_name != "mse"
        if robust and net.l2 > 0:
            raise ValueError(f"net: least-squares residuals of loss={net.loss_name!r} need l2 = 0 (scipy "
                             "applies its robust loss to every residual, the l2 rows included)")
        self.net = net
        self.X, self.Y = _data(net, X, Y)
        N, k = self.Y.shape
        self._scale = 1.0 / np.sqrt((2.0 if robust else 1.0) * N * k)
        self.scipy_loss = net.loss_name if robust else "linear"
        self.f_scale = net.loss_scale * self._scale if robust else 1.0
        self._l2 = np.sqrt(0.5 * net.l2) if net.l2 > 0 else 0.0
        self.nfev = self.njev = 0

    @property
    def num_residuals(self) -> int:
        return self.Y.size + (self.net.num_params if self._l2 else 0)

    def _point(self, theta):
        t = np.asarray(theta)
        if t.shape != (self.net.num_params,):
            raise ValueError(f"theta: expected shape ({self.net.num_params},), got {t.shape}")
        return np.asarray(t, dtype=self.net.dtype)

    def fun(self, theta):
        t = self._point(theta)
        self.nfev += 1
        F = np.asarray(self.net.predict(t, self.X), dtype=np.float64)
        r = (F - self.Y).ravel() * self._scale
        if self._l2:
            r = np.concatenate([r, self._l2 * t.astype(np.float64)])
        return r

    __call__ = fun

    def jac(self, theta):
        t = self._point(theta)
        self.njev += 1
        J = np.asarray(self.net.jacobian(t, self.X), dtype=np.float64) * self._scale
        if self._l2:
            J = np.vstack([J, self._l2 * np.eye(self.net.num_params)])
        return J

    def loss(self, theta):
        """The network's loss from the residuals: r.r for mse, 2 (the cost scipy's robust loss
        gives them) for huber and soft_l1; equals ``net.loss(theta, X, Y)``."""
        r = self.fun(theta)
        if self.scipy_loss == "linear":
            return float(r @ r)
        z = (r / self.f_scale) ** 2
        rho = np.where(z <= 1, z, 2 * np.sqrt(z) - 1) if self.scipy_loss == "huber" else 2 * (np.sqrt(1 + z) - 1)
        return float(self.f_scale ** 2 * rho.sum())


def minimize(net, theta0, X, Y, method="trust-ncg", curvature="hessian", **kwargs):
    """``scipy.optimize.minimize`` on the network's loss, with the gradient and the curvature
    it needs wired in: ``hess`` (a matrix) for trust-exact and dogleg, ``hessp`` for
    Newton-CG, trust-ncg, trust-krylov and trust-constr, only ``jac`` otherwise (nothing for
    the derivative-free methods).
    ``curvature="ggn"`` passes the Gauss-Newton matrix instead of the Hessian (it is PSD,
    which dogleg requires).  Returns scipy's OptimizeResult (x float64)."""
    check_net(net)
    curvature = check_curvature(curvature)
    obj = Objective(net, X, Y)
    m = method.lower() if isinstance(method, str) else method
    extra = {}
    if m in _NEEDS_HESS:
        extra["hess"] = obj.hess if curvature == "hessian" else obj.ggn
    elif m in _TAKES_HESSP:
        extra["hessp"] = obj.hessp if curvature == "hessian" else obj.ggnp
    x0 = np.asarray(theta0, dtype=np.float64)
    if m in _NO_GRADIENT:
        res = scipy.optimize.minimize(obj.fun, x0, method=method, **kwargs)
    else:
        res = scipy.optimize.minimize(obj.fun_and_jac, x0, jac=True, method=method, **extra, **kwargs)
    res["objective"] = obj
    return res


def least_squares(net, theta0, X, Y, method=None, **kwargs):
    """``scipy.optimize.least_squares`` on the network's residuals with the exact Jacobian:
    mse, or huber / soft_l1 through scipy's robust loss of the same name (``loss`` and
    ``f_scale`` set from the network, see :class:`Residuals`).  ``method`` defaults to "lm"
    for mse and "trf" for the robust losses (scipy's "lm" takes none).  Returns scipy's result;
    ``result.cost`` is half the network's loss."""
    res_fn = Residuals(net, X, Y)
    x0 = np.asarray(theta0, dtype=np.float64)
    if res_fn.scipy_loss != "linear":
        clash = sorted({"loss", "f_scale"} & set(kwargs))
        if clash:
            raise ValueError(f"{clash[0]}: set from the network's loss and loss_scale "
                             f"({res_fn.scipy_loss!r}, f_scale {res_fn.f_scale:.6g}); do not pass it")
        kwargs.update(loss=res_fn.scipy_loss, f_scale=res_fn.f_scale)
    if method is None:
        method = "lm" if res_fn.scipy_loss == "linear" else "trf"
    out = scipy.optimize.least_squares(res_fn.fun, x0, jac=res_fn.jac, method=method, **kwargs)
    out["residuals"] = res_fn
    return out
