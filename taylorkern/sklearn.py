"""scikit-learn estimators trained with taylorkern's second-order methods.

:class:`MLPRegressor` (mean squared error) and :class:`MLPClassifier` (softmax
cross-entropy) follow scikit-learn's estimator conventions — ``fit`` / ``predict`` /
``score``, ``get_params`` / ``set_params``, fitted attributes ending in ``_``, input
validation, ``n_features_in_`` — and pass its estimator checks.  They need scikit-learn,
an optional extra: ``pip install "taylorkern[sklearn]"``.  ``import taylorkern`` never
imports scikit-learn; only importing this module does.

The regressor's default solver is ``"lm"``, Levenberg-Marquardt, the classical
least-squares algorithm on the residuals.  Cross-entropy is not a sum of squares, so the
classifier's default is ``"newton-cg"``: a trust-region Newton method on exact
Hessian-vector products, truncated CG (Steihaug) inside, no P x P matrix formed.  It was
chosen over the alternatives on the GGN by measurement (iris, wine, breast cancer, moons,
two initialisations each; 10 tanh units, alpha 1e-4): it converged in 18-75 iterations,
where Levenberg-Marquardt on the softmax GGN (``solver="lm"``, available) and Gauss-Newton
had mostly not converged after 200 — they crawl along the loss's flat directions, while
Newton-CG uses the negative curvature those directions have on the way.  Every method of
:func:`taylorkern.minimize` can be selected with ``solver``, and its
options passed in ``solver_options``.

Differences from ``sklearn.neural_network``: ``alpha`` is the network's ``l2``: it adds
``alpha/2 * |theta|^2`` (all parameters, biases included) to the mean loss; the defaults
(one hidden layer of 10 tanh units, ``tol=1e-8``) suit second-order training of small
networks.  Inputs are not rescaled: standardize them as for any MLP.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("taylorkern.sklearn needs scikit-learn: pip install 'taylorkern[sklearn]' "
                      "(or pip install scikit-learn)") from exc

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, X="no_validation", y="no_validation", **kwargs):
        return estimator._validate_data(X, y, **kwargs)

from . import laplace
from ._validate import choice
from .model import MLP
from .optim import METHODS, Status, minimize

__all__ = ["MLPRegressor", "MLPClassifier"]

_ACTIVATION_ALIASES = {"logistic": "sigmoid"}  # scikit-learn's name for the sigmoid
_TINY_PRIOR = 1e-12  # the prior precision used for alpha = 0 (keeps pcov_ finite where J is rank-deficient)


class _TaylorMLP(BaseEstimator):
    """Shared parameters, fitting and prediction."""

    _loss = "mse"

    def __init__(self, hidden_layer_sizes=(10,), activation="tanh", solver="lm", alpha=1e-5,
                 max_iter=200, tol=1e-8, random_state=None, solver_options=None, dtype="float64",
                 verbose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.solver_options = solver_options
        self.dtype = dtype
        self.verbose = verbose

    # -------------------------------------------------------------- parameter checks
    def _hidden_sizes(self):
        h = self.hidden_layer_sizes
        if isinstance(h, numbers.Integral) and not isinstance(h, bool):
            h = (h,)
        try:
            h = tuple(h)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes: expected a tuple of positive integers, got {h!r}") from None
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in h):
            raise ValueError(f"hidden_layer_sizes: expected positive integers, got {self.hidden_layer_sizes!r}")
        return tuple(int(s) for s in h)

    def _check_params(self):
        choice("solver", self.solver, METHODS)
        if (isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral)
                or self.max_iter < 1):
            raise ValueError(f"max_iter: expected a positive integer, got {self.max_iter!r}")
        if (isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or not self.tol >= 0):
            raise ValueError(f"tol: expected a number >= 0, got {self.tol!r}")
        if self.solver_options is not None and not isinstance(self.solver_options, dict):
            raise ValueError(f"solver_options: expected a dict or None, got {self.solver_options!r}")
        options = dict(self.solver_options or {})
        reserved = {"max_iter", "ftol", "progress", "sample_weight"} & set(options)
        if reserved:
            raise ValueError(f"solver_options: {sorted(reserved)} are set by the estimator's own "
                             "parameters (max_iter, tol, verbose) and fit's sample_weight")
        return options

    def _net_loss(self):
        """(loss, loss_scale) of the network: the estimator's kind's, or MLPRegressor's loss=."""
        return self._loss, 1.0

    def _make_net(self, n_in, n_out):
        activation = self.activation
        if isinstance(activation, str):
            activation = _ACTIVATION_ALIASES.get(activation, activation)
        loss, scale = self._net_loss()
        if loss == "gaussian":  # a mean and a log-variance per target
            n_out *= 2
        return MLP([n_in, *self._hidden_sizes(), n_out], activation=activation, loss=loss,
                   l2=self.alpha, dtype=self.dtype, loss_scale=scale)

    # -------------------------------------------------------------- fit / predict
    def _fit(self, X, Y, sample_weight=None):
        options = self._check_params()
        if sample_weight is not None:  # scikit-learn's conventions (a list, a scalar), then minimize's checks
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            options["sample_weight"] = sample_weight
        net = self._make_net(X.shape[1], Y.shape[1] if Y.ndim == 2 else len(self.classes_))
        rng = check_random_state(self.random_state)
        theta0 = net.init(seed=int(rng.randint(np.iinfo(np.int32).max)))
        result = minimize(net, theta0, X, Y, method=self.solver, max_iter=self.max_iter,
                          ftol=self.tol, progress=bool(self.verbose), **options)
        if not result.success:
            if result.status == Status.MAX_ITER:
                warnings.warn(f"{type(self).__name__}: solver {self.solver!r} reached max_iter = "
                              f"{self.max_iter} before converging; increase max_iter", ConvergenceWarning,
                              stacklevel=3)
            elif result.status in (Status.NONFINITE, Status.NO_PROGRESS):
                warnings.warn(f"{type(self).__name__}: solver {self.solver!r} stopped early: "
                              f"{result.message}", ConvergenceWarning, stacklevel=3)
        self.net_ = net
        self.theta_ = result.theta
        params = net.unflatten(result.theta)
        self.coefs_ = [W.copy() for W, _ in params]
        self.intercepts_ = [b.copy() for _, b in params]
        self.loss_ = result.loss
        self.loss_curve_ = list(result.history["loss"])
        self.n_iter_ = result.nit
        self.result_ = result
        return self

    def _outputs(self, X):
        check_is_fitted(self, "theta_")
        X = _validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return np.asarray(self.net_.predict(self.theta_, X), dtype=np.float64)

    def __getstate__(self):
        # The network holds compiled per-backend handles that cannot be pickled; a fresh
        # network of the same configuration can (and rebuilds them on first use).
        state = super().__getstate__()
        net = state.get("net_")
        if net is not None:
            state["net_"] = MLP(net.sizes, activation=net.activation, loss=net.loss_name,
                                loss_scale=net.loss_scale, l2=net.l2,
                                dtype=net.dtype)
        return state


class MLPRegressor(RegressorMixin, _TaylorMLP):
    """A multi-layer perceptron regressor (mean squared error by default), trained by
    Levenberg-Marquardt by default.

    Parameters
    ----------
    loss : {"mse", "huber", "soft_l1", "poisson", "gaussian"}, default "mse"
        The network's loss (taylorkern.MLP): squared error, the robust huber and soft_l1 of
        the residual (their scale is ``loss_scale``), the Poisson likelihood of counts
        (y >= 0; the outputs are log-rates, and ``predict`` returns the rates exp(f)), or the
        Gaussian likelihood with a noise variance that depends on x (heteroscedastic
        regression: the network has a mean and a log-variance output per target, ``predict``
        returns the means and ``return_std=True`` the network's noise standard deviations).
    loss_scale : float, default 1.0
        huber's delta, soft_l1's c.
    hidden_layer_sizes : tuple of int, default (10,)
        Widths of the hidden layers; ``()`` gives a linear model.
    activation : str, default "tanh"
        Hidden activation: identity, relu, tanh, sigmoid (or "logistic"), softplus, gelu, sin.
    solver : str, default "lm"
        A :func:`taylorkern.minimize` method: lm, newton, newton-cg, gauss-newton, lbfgs,
        taylor-step, gd, momentum, adam.
    alpha : float, default 1e-5
        L2 penalty: adds ``alpha/2 * |theta|^2`` to the mean squared error.
    max_iter : int, default 200
        Iterations of the solver (epochs for mini-batched first-order solvers).
    tol : float, default 1e-8
        Stop when an accepted step changes the loss by less than ``tol`` relative (the
        solver's ``ftol``); the solver's other stopping rules apply too.
    random_state : int, RandomState or None
        Seeds the initial weights.
    solver_options : dict or None
        More options for the solver, e.g. ``{"lr": 1e-2, "batch_size": 32}`` for adam.
    dtype : "float64" (default) or "float32".
    verbose : bool
        Show the solver's progress bar.

    Attributes
    ----------
    coefs_, intercepts_ : lists of arrays, one per layer (``coefs_[l]`` of shape
        (d_l, d_{l+1})).
    theta_ : the flat parameter vector; ``net_`` : the :class:`taylorkern.MLP`.
    loss_, loss_curve_, n_iter_ : final training loss (with the l2 term), its history and
        the solver's iterations; ``result_`` : the full :class:`taylorkern.OptimizeResult`.
    n_features_in_, n_outputs_.
    pcov_ : (P, P) the covariance of theta_, as ``scipy.optimize.curve_fit`` reports it (see
        ``_fit_posterior``), or None above ``laplace_max_params`` parameters.
    sigma_noise_ : the noise standard deviation estimated from the residuals.
    laplace_ : the :class:`taylorkern.laplace.Laplace` posterior behind both (full GGN).
    """

    _loss = "mse"
    LOSSES = ("mse", "huber", "soft_l1", "poisson", "gaussian")

    # Above this many parameters fit() skips the Laplace posterior (its P x P GGN and eigen-
    # decomposition would cost more than the training); pcov_ is None then.
    laplace_max_params = 3000

    def __init__(self, hidden_layer_sizes=(10,), activation="tanh", solver="lm", alpha=1e-5,
                 max_iter=200, tol=1e-8, random_state=None, solver_options=None, dtype="float64",
                 verbose=False, loss="mse", loss_scale=1.0):
        super().__init__(hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
                         alpha=alpha, max_iter=max_iter, tol=tol, random_state=random_state,
                         solver_options=solver_options, dtype=dtype, verbose=verbose)
        self.loss = loss
        self.loss_scale = loss_scale

    def _net_loss(self):
        return choice("loss", self.loss, self.LOSSES), self.loss_scale

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y); ``sample_weight`` (n_samples,) weighs each sample's loss (the loss is
        then sum w_n l_n / sum w_n, plus the penalty)."""
        X, y = _validate_data(self, X, y, multi_output=True, y_numeric=True,
                              dtype=(np.float64, np.float32))
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        self.n_outputs_ = Y.shape[1]
        self._fit(X, Y, sample_weight)
        self._fit_posterior(X, Y, sample_weight)
        return self

    def _fit_posterior(self, X, Y, sample_weight):
        """pcov_ as curve_fit computes it, for the regularised fit: sigma^2 (J^T J + rho I)^-1,
        rho = alpha N k / 2 (the prior that the l2 term is, in units of the noise variance), and
        sigma^2 = SSE / (N k - dof), dof = tr(J^T J (J^T J + rho I)^-1) the effective number of
        parameters (P when alpha = 0 and J has full rank, as in curve_fit).  With sample weights
        w, as frequencies: J^T W J, the weighted SSE, and N = sum w (integer weights give the
        pcov_ of the repeated rows)."""
        net, theta = self.net_, self.theta_
        if net.num_params > self.laplace_max_params or net.loss_name != "mse":
            self.laplace_, self.pcov_, self.sigma_noise_ = None, None, None
            return
        k = Y.shape[1]
        w = np.ones(Y.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
        N = float(w.sum())
        rho = max(float(self.alpha) * N * k / 2.0, 0.0)
        post = laplace.fit(net, theta, X, Y.astype(net.dtype), structure="full", curvature="ggn",
                           prior_precision=max(rho, _TINY_PRIOR), sigma_noise=1.0, sample_weight=sample_weight)
        dof = post.effective_num_params()
        R = np.asarray(net.predict(theta, X), dtype=np.float64) - Y
        floor = np.finfo(np.float64).eps ** 2 * max(1.0, float(np.mean(Y * Y)))
        s2 = max(float(np.sum(w[:, None] * R * R)) / max(N * k - dof, 1.0), floor)
        post.update(prior_precision=max(rho, _TINY_PRIOR) / s2, sigma_noise=math.sqrt(s2))
        self.laplace_ = post
        self.sigma_noise_ = math.sqrt(s2)
        self.pcov_ = post.covariance()

    def predict(self, X, return_std=False):
        """Predictions, shape (n_samples,) if fitted on a 1-D y, else (n_samples, n_outputs);
        with loss="poisson" the rates exp(f), with loss="gaussian" the means.

        With ``return_std=True`` also the standard deviation of the predictive distribution of
        y at X, of the same shape: sqrt(J pcov_ J^T + sigma_noise_^2), the linearised (GLM)
        Laplace predictive with the noise estimated at fit (as ``BayesianRidge`` reports it);
        J is the Jacobian of the outputs in the parameters at X (see :mod:`taylorkern.laplace`).
        With loss="gaussian" it is the network's own noise standard deviation exp(v / 2) at X
        (v its log-variance output), without a term for the uncertainty of theta_.
        """
        F = self._outputs(X)
        std = None
        if self.net_.loss_name == "poisson":
            F = np.exp(F)
        elif self.net_.loss_name == "gaussian":
            k = F.shape[1] // 2
            F, std = F[:, :k], np.exp(0.5 * F[:, k:])
        if not return_std:
            return F.ravel() if self._y_ndim == 1 else F
        if std is not None:
            return (F.ravel(), std.ravel()) if self._y_ndim == 1 else (F, std)
        if self.laplace_ is None:
            raise ValueError(f"return_std: only for loss='mse' fits of at most "
                             f"laplace_max_params = {self.laplace_max_params} parameters (this one: "
                             f"loss={self.net_.loss_name!r}, {self.net_.num_params} parameters); fit a "
                             "posterior with taylorkern.laplace.fit instead")
        X = _validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        _, var = self.laplace_.predict(X, noise=True)
        std = np.sqrt(var)
        return (F.ravel(), std.ravel()) if self._y_ndim == 1 else (F, std)

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}


class MLPClassifier(ClassifierMixin, _TaylorMLP):
    """A multi-layer perceptron classifier: softmax cross-entropy with one output per class;
    a binary problem takes one output (the logit of ``classes_[1]``) and binary cross-entropy
    (loss "bce").  Trained by trust-region Newton-CG on exact Hessian-vector products by
    default (see the module docstring for why not "lm").  Parameters and attributes as
    :class:`MLPRegressor`, plus ``classes_``; ``predict_proba`` and ``predict_log_proba`` give
    the softmax of the outputs (the sigmoid of the one output for two classes)."""

    _loss = "ce"

    def __init__(self, hidden_layer_sizes=(10,), activation="tanh", solver="newton-cg", alpha=1e-5,
                 max_iter=200, tol=1e-8, random_state=None, solver_options=None, dtype="float64",
                 verbose=False):
        super().__init__(hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
                         alpha=alpha, max_iter=max_iter, tol=tol, random_state=random_state,
                         solver_options=solver_options, dtype=dtype, verbose=verbose)

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y); ``sample_weight`` (n_samples,) weighs each sample's loss."""
        X, y = _validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} can't train when only one class is present "
                             f"(got only {self.classes_[0]!r}); it needs at least 2 classes")
        labels = labels.reshape(-1)
        if len(self.classes_) == 2:  # one logit, binary cross-entropy
            self.n_outputs_ = 1
            return self._fit(X, labels.astype(np.float64).reshape(-1, 1), sample_weight)
        self.n_outputs_ = len(self.classes_)
        return self._fit(X, labels.astype(np.int64), sample_weight)

    def _net_loss(self):
        return ("bce" if len(self.classes_) == 2 else "ce"), 1.0

    def _logits(self, X):
        """The outputs as one logit per class: for two classes (0, f), whose softmax is
        (1 - sigmoid(f), sigmoid(f))."""
        F = self._outputs(X)
        return np.hstack([np.zeros_like(F), F]) if F.shape[1] == 1 else F

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        F = self._logits(X)
        F = F - F.max(axis=1, keepdims=True)
        E = np.exp(F)
        return E / E.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """log predict_proba, as log1p of the other classes around the most likely one: its
        log-probability stays nonzero (and exact) where it is within rounding of 0."""
        F = self._logits(X)
        rows, top = np.arange(F.shape[0]), np.argmax(F, axis=1)
        F = F - F[rows, top][:, None]
        E = np.exp(F)
        E[rows, top] = 0.0
        return F - np.log1p(E.sum(axis=1, keepdims=True))

    def predict(self, X):
        F = self._logits(X)
        return self.classes_[np.argmax(F, axis=1)]
