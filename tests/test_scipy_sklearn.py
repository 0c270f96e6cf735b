"""taylorkern.scipy (objective, operators, least-squares residuals) with scipy.optimize and
scipy.sparse.linalg; taylorkern.sklearn estimators, including scikit-learn's own estimator
checks.  scikit-learn comes with the ``test`` extra; without it only its tests skip."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse.linalg

import taylorkern as tk
import taylorkern.scipy as tks


def problem(loss="mse", dtype=np.float64, l2=1e-2, seed=0, N=30):
    rng = np.random.default_rng(seed)
    sizes = [2, 5, 1] if loss == "mse" else [2, 5, 3]
    net = tk.MLP(sizes, activation="tanh", loss=loss, l2=l2, dtype=dtype)
    X = rng.standard_normal((N, 2))
    Y = (np.sin(X[:, :1]) * X[:, 1:] if loss == "mse" else rng.integers(0, 3, N))
    return net, net.init(seed=seed), X, Y


# ----------------------------------------------------------------------------- Objective
@pytest.mark.parametrize("method", ["trust-ncg", "trust-krylov", "trust-exact", "Newton-CG"])
def test_objective_drives_scipy_second_order_methods(method):
    net, theta0, X, Y = problem(seed=1)
    obj = tks.Objective(net, X, Y)
    kwargs = dict(hess=obj.hess) if method == "trust-exact" else dict(hessp=obj.hessp)
    res = scipy.optimize.minimize(obj.fun, theta0, jac=obj.jac, method=method,
                                  options=dict(gtol=1e-7) if method != "Newton-CG" else dict(xtol=1e-12),
                                  **kwargs)
    assert res.success, res.message
    assert np.linalg.norm(net.loss_and_grad(res.x, X, Y)[1]) < 1e-6
    # the same minimum taylorkern's own Newton finds from the same start
    ref = tk.minimize(net, theta0, X, Y, method="newton")
    assert res.fun == pytest.approx(ref.loss, rel=1e-9)
    assert obj.nhev >= 1 and obj.nfev <= res.nfev + res.njev


def test_objective_caches_the_last_point():
    net, theta0, X, Y = problem()
    obj = tks.Objective(net, X, Y)
    f = obj.fun(theta0)
    g = obj.jac(theta0.copy())
    assert obj.nfev == obj.njev == 1
    f_ref, g_ref = net.loss_and_grad(theta0, X, Y)
    assert f == f_ref
    np.testing.assert_array_equal(g, g_ref)
    g[0] = 99.0  # a caller writing into the returned gradient must not corrupt the cache
    np.testing.assert_array_equal(obj.jac(theta0), g_ref)
    assert obj.fun_and_jac(theta0 + 1e-3)[0] != f and obj.nfev == 2
    assert obj(theta0) == f and obj.nfev == 3


def test_objective_products_and_matrices():
    net, theta, X, Y = problem(seed=2)
    obj = tks.Objective(net, X, Y)
    v = np.random.default_rng(0).standard_normal(net.num_params)
    np.testing.assert_allclose(obj.hessp(theta, v), net.hvp(theta, X, Y, v), rtol=1e-14)
    np.testing.assert_allclose(obj.ggnp(theta, v), net.ggn_vp(theta, X, Y, v), rtol=1e-14)
    np.testing.assert_array_equal(obj.hess(theta), net.hessian(theta, X, Y))
    np.testing.assert_array_equal(obj.ggn(theta), net.ggn(theta, X, Y))
    np.testing.assert_allclose(obj.hess_operator(theta) @ v, obj.hessp(theta, v), rtol=1e-14)
    assert obj.nhev == 5


def test_float32_network_hands_scipy_float64():
    net, theta, X, Y = problem(dtype=np.float32)
    obj = tks.Objective(net, X, Y)
    assert isinstance(obj.fun(theta), float) and obj.jac(theta).dtype == np.float64
    assert obj.hessp(theta, np.ones(net.num_params)).dtype == np.float64
    # gtol above float32's noise floor: the gradient's rounding is about 1e-4 here, where the
    # trust region stalls ("bad approximation") or not by the build's last bits
    res = tks.minimize(net, theta, X, Y, method="trust-krylov", options=dict(gtol=1e-3))
    assert res.success and res.fun < net.loss(theta, X, Y)


@pytest.mark.parametrize("method, curvature", [("trust-ncg", "hessian"), ("trust-krylov", "ggn"),
                                               ("trust-exact", "hessian"), ("dogleg", "ggn"),
                                               ("L-BFGS-B", "hessian"), ("Powell", "hessian")])
def test_minimize_wrapper_wires_the_curvature_each_method_needs(method, curvature):
    net, theta0, X, Y = problem(seed=3)
    res = tks.minimize(net, theta0, X, Y, method=method, curvature=curvature)
    assert res.fun < 0.5 * net.loss(theta0, X, Y)
    obj = res.objective
    assert (obj.nhev > 0) == (method not in ("L-BFGS-B", "Powell"))


def test_ce_objective():
    net, theta0, X, Y = problem("ce", seed=4)
    res = tks.minimize(net, theta0, X, Y, method="trust-ncg", options=dict(gtol=1e-8))
    assert res.success
    assert res.fun == pytest.approx(tk.minimize(net, theta0, X, Y, method="newton-cg").loss, rel=1e-8)


# ----------------------------------------------------------------------------- operators
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_linear_operators(kind):
    net, theta, X, Y = problem(seed=5)
    op = (tks.hessian_operator if kind == "hessian" else tks.ggn_operator)(net, theta, X, Y)
    M = net.hessian(theta, X, Y) if kind == "hessian" else net.ggn(theta, X, Y)
    P = net.num_params
    assert op.shape == (P, P) and op.dtype == np.float64
    V = np.random.default_rng(1).standard_normal((P, 3))
    np.testing.assert_allclose(op @ V[:, 0], M @ V[:, 0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(op.matmat(V), M @ V, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(op.rmatvec(V[:, 1]), M @ V[:, 1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(op.H @ V[:, 2], M @ V[:, 2], rtol=1e-12, atol=1e-14)
    top = scipy.sparse.linalg.eigsh(op, k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(M)[-2:], rtol=1e-9)
    if kind == "ggn":  # G is PSD: CG solves (G + I) x = b
        shifted = op + scipy.sparse.linalg.aslinearoperator(np.eye(P))
        x, info = scipy.sparse.linalg.cg(shifted, V[:, 0], rtol=1e-12)
        assert info == 0
        np.testing.assert_allclose(x, np.linalg.solve(M + np.eye(P), V[:, 0]), rtol=1e-8)


def test_operator_input_checks():
    net, theta, X, Y = problem()
    with pytest.raises(TypeError, match="net: expected a taylorkern.MLP"):
        tks.hessian_operator(object(), theta, X, Y)
    with pytest.raises(ValueError, match="theta: expected shape"):
        tks.ggn_operator(net, theta[:3], X, Y)
    with pytest.raises(ValueError, match="X: expected shape"):
        tks.Objective(net, X[:, :1], Y)
    with pytest.raises(ValueError, match="theta: expected shape"):
        tks.Objective(net, X, Y).fun(theta[:-1])


# ----------------------------------------------------------------------------- least squares
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_residuals_square_to_the_loss_and_jacobian_is_exact(l2):
    rng = np.random.default_rng(6)
    net = tk.MLP([2, 4, 3], activation="tanh", l2=l2)  # k = 3 outputs: rows n*k + c
    X = rng.standard_normal((7, 2))
    Y = rng.standard_normal((7, 3))
    theta = net.init(seed=1)
    res = tks.Residuals(net, X, Y)
    r = res.fun(theta)
    assert r.shape == (res.num_residuals,) == (21 + (net.num_params if l2 else 0),)
    assert r @ r == pytest.approx(net.loss(theta, X, Y), rel=1e-14)
    assert res.loss(theta) == pytest.approx(net.loss(theta, X, Y), rel=1e-14)
    J = res.jac(theta)
    h = 1e-6
    fd = np.column_stack([(res.fun(theta + h * e) - res.fun(theta - h * e)) / (2 * h)
                          for e in np.eye(net.num_params)])
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8)
    # 2 J^T r is the gradient and 2 J^T J the GGN (l2 included)
    np.testing.assert_allclose(2 * J.T @ r, net.loss_and_grad(theta, X, Y)[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(2 * J.T @ J, net.ggn(theta, X, Y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["lm", "trf"])
def test_least_squares_agrees_with_taylorkern_lm(method):
    net, theta0, X, Y = problem(seed=7, l2=1e-2)
    out = tks.least_squares(net, theta0, X, Y, method=method, ftol=1e-14, xtol=1e-14, gtol=1e-14)
    assert out.success
    ours = tk.minimize(net, theta0, X, Y, method="lm")
    assert 2 * out.cost == pytest.approx(ours.loss, rel=1e-9)
    assert out.residuals.njev >= 1


def test_residuals_refuse_cross_entropy():
    net, theta0, X, Y = problem("ce")
    with pytest.raises(ValueError, match="least-squares residuals need loss='mse', 'huber' or 'soft_l1', got "
                                         "loss='ce'"):
        tks.Residuals(net, X, Y)
    with pytest.raises(ValueError, match="need loss='mse'"):
        tks.least_squares(net, theta0, X, Y)


@pytest.mark.parametrize("loss", ["huber", "soft_l1"])
@pytest.mark.parametrize("scale", [0.4, 2.0])
def test_least_squares_maps_robust_losses_to_scipys(loss, scale):
    """huber and soft_l1 go to scipy's own robust losses: the cost scipy computes with its rho is
    half the network's loss at theta0 and at its solution, and so is scipy's gradient of it
    (J^T rho'(z) r, the Jacobian's scaling included)."""
    rng = np.random.default_rng(8)
    net = tk.MLP([2, 5, 2], activation="tanh", loss=loss, loss_scale=scale)
    X = rng.standard_normal((25, 2))
    Y = np.column_stack([np.sin(2 * X[:, 0]), X[:, 1] ** 2]) + 0.05 * rng.standard_normal((25, 2))
    Y[::7] += 4.0  # outliers, beyond huber's delta
    theta0 = net.init(seed=2)
    first = tks.least_squares(net, theta0, X, Y, max_nfev=1)
    res = first.residuals
    assert 2 * scipy.optimize.least_squares(res.fun, theta0, jac=res.jac, loss=res.scipy_loss, f_scale=res.f_scale,
                                            max_nfev=1).cost == pytest.approx(net.loss(theta0, X, Y), rel=1e-12)
    assert res.loss(theta0) == pytest.approx(net.loss(theta0, X, Y), rel=1e-12)
    out = tks.least_squares(net, theta0, X, Y, ftol=1e-15, xtol=1e-15, gtol=1e-12, max_nfev=400)
    assert 2 * out.cost == pytest.approx(net.loss(out.x, X, Y), rel=1e-12)
    assert out.cost < 0.5 * first.cost
    # scipy's gradient of its cost (J^T rho' r, with its robust rho) is half the network's
    g = net.loss_and_grad(out.x, X, Y)[1]
    np.testing.assert_allclose(out.grad, 0.5 * g, rtol=1e-8, atol=1e-10 * np.abs(g).max())
    with pytest.raises(ValueError, match="^f_scale: set from the network"):
        tks.least_squares(net, theta0, X, Y, f_scale=1.0)
    with pytest.raises(ValueError, match="need l2 = 0"):
        tks.Residuals(tk.MLP([2, 5, 2], loss=loss, l2=0.1), X, Y)


# ----------------------------------------------------------------------------- sklearn
@pytest.fixture(scope="module")
def sk():
    pytest.importorskip("sklearn", reason="scikit-learn is installed with the 'test' extra")
    import taylorkern.sklearn as tksk
    return tksk


# Checks scikit-learn skips by design here: array-API input (needs SCIPY_ARRAY_API=1 and an
# array library) and pandas input (pandas is not a dependency).  Anything else must pass.
MAY_SKIP = {"check_array_api_input", "check_regressor_data_not_an_array",
            "check_classifier_data_not_an_array", "check_sample_weights_pandas_series"}
# Integer weights against repeated samples after the check's 50 iterations of the classifier's
# trust-region Newton-CG, compared to 1e-7: the two sums differ by rounding (1e-16) and the
# unconverged, saturating run amplifies that (3e-16 after 10 iterations, 1e-11 after 20, 1e-6
# after 50, on the check's data).  test_sample_weight.py checks the equivalence on short runs.
MAY_FAIL = {"MLPClassifier": {"check_sample_weight_equivalence_on_dense_data"}}


@pytest.mark.parametrize("name", ["MLPRegressor", "MLPClassifier"])
def test_estimators_pass_scikit_learn_checks(sk, name):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils.estimator_checks import check_estimator
    # A smaller network and iteration budget than the defaults keep this fast; the
    # conventions checked do not depend on them.  The checks' noisy toy data need not
    # converge in 50 iterations: the ConvergenceWarning that says so is tested below.
    est = getattr(sk, name)(hidden_layer_sizes=(5,), max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = check_estimator(est, on_fail=None, on_skip=None)
    assert len(results) > 40
    failed = [(r["check_name"], r["exception"]) for r in results
              if r["status"] == "failed" and r["check_name"] not in MAY_FAIL.get(name, ())]
    assert not failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= MAY_SKIP, skipped - MAY_SKIP


def sine_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 1))
    return X, np.sin(np.pi * X[:, 0])


def test_regressor_fits_a_sine_to_high_precision(sk):
    from sklearn.exceptions import ConvergenceWarning
    X, y = sine_data()
    reg = sk.MLPRegressor(random_state=0).fit(X, y)  # defaults: lm, alpha 1e-5, converges
    assert reg.result_.success and reg.n_iter_ < 200
    assert reg.score(X, y) > 0.9999
    assert reg.predict(X).shape == (60,)
    assert len(reg.coefs_) == 2 and reg.coefs_[0].shape == (1, 10) and reg.intercepts_[1].shape == (1,)
    assert reg.loss_curve_[-1] == reg.loss_ and reg.n_features_in_ == 1
    np.testing.assert_array_equal(reg.net_.unflatten(reg.theta_)[0][0], reg.coefs_[0])
    # without the penalty the fit keeps improving (towards a minimum at infinity)
    with pytest.warns(ConvergenceWarning):
        exact = sk.MLPRegressor(alpha=0.0, max_iter=300, random_state=0).fit(X, y)
    assert 1 - exact.score(X, y) < 1e-6


def test_regressor_multioutput_and_solver_choice(sk):
    X, y = sine_data(seed=1)
    Y = np.column_stack([y, np.cos(np.pi * X[:, 0])])
    for solver, options in [("lm", None), ("newton", None), ("lbfgs", None),
                            ("adam", {"lr": 0.02, "batch_size": 16, "seed": 0})]:
        reg = sk.MLPRegressor(solver=solver, solver_options=options, random_state=1,
                              max_iter=300 if solver != "adam" else 400)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # adam may not converge in 400 epochs
            reg.fit(X, Y)
        assert reg.predict(X).shape == (60, 2)
        assert reg.score(X, Y) > (0.999 if solver != "adam" else 0.9), solver


def test_classifier_on_iris_like_data(sk):
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning
    X, y = load_iris(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = sk.MLPClassifier(random_state=0).fit(X, labels)
    assert clf.result_.success
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.score(X, labels) > 0.97
    P = clf.predict_proba(X)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[P.argmax(axis=1)], clf.predict(X))
    logP = clf.predict_log_proba(X)
    np.testing.assert_allclose(np.exp(logP), P, rtol=1e-10)
    rows, top = np.arange(len(P)), P.argmax(axis=1)  # log p_top = log1p(-(sum of the others)):
    others = P.sum(axis=1, where=np.arange(P.shape[1]) != top[:, None])  # nonzero where p_top
    np.testing.assert_allclose(logP[rows, top], np.log1p(-others), rtol=1e-10)  # rounds to 1
    with warnings.catch_warnings():  # lm on the softmax GGN crawls along flat directions
        warnings.simplefilter("ignore", ConvergenceWarning)
        lm = sk.MLPClassifier(solver="lm", random_state=0, max_iter=100).fit(X, labels)
    assert lm.score(X, labels) > 0.97


def test_binary_classifier_has_two_outputs(sk):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = sk.MLPClassifier(random_state=0, alpha=1e-3).fit(X, y)
    assert clf.predict_proba(X).shape == (40, 2) and clf.score(X, y) == 1.0


def test_params_clone_pickle_and_warnings(sk):
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    X, y = sine_data(seed=3)
    reg = sk.MLPRegressor(hidden_layer_sizes=[4, 3], activation="logistic", alpha=1e-4,
                          random_state=3, dtype="float32")
    assert reg.get_params()["activation"] == "logistic"
    reg.set_params(max_iter=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    assert reg.net_.activations == ("sigmoid", "sigmoid") and reg.theta_.dtype == np.float32
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))
    np.testing.assert_array_equal(copy.deepcopy(reg).predict(X), reg.predict(X))
    fresh = clone(reg)
    assert not hasattr(fresh, "theta_") and fresh.get_params() == reg.get_params()
    with pytest.warns(ConvergenceWarning, match="reached max_iter = 2"):
        sk.MLPRegressor(max_iter=2, random_state=0).fit(X, y)


@pytest.mark.parametrize("params, match", [
    (dict(solver="sgd"), "solver: expected one of"),
    (dict(hidden_layer_sizes=(0,)), "hidden_layer_sizes: expected positive integers"),
    (dict(activation="swish"), "activation: unknown 'swish'"),
    (dict(max_iter=0), "max_iter: expected a positive integer"),
    (dict(alpha=-1.0), "l2: expected a finite number >= 0"),
    (dict(solver_options={"max_iter": 3}), "set by the estimator's own parameters"),
    (dict(solver_options={"lr": 0.1}), "unknown option 'lr' for method 'lm'"),
])
def test_bad_estimator_parameters_fail_at_fit(sk, params, match):
    X, y = sine_data(n=10)
    reg = sk.MLPRegressor(**params)  # constructing never validates (scikit-learn convention)
    with pytest.raises(ValueError, match=match):
        reg.fit(X, y)


def test_linear_model_and_one_class(sk):
    X, y = sine_data(n=20)
    lin = sk.MLPRegressor(hidden_layer_sizes=(), alpha=0.0).fit(X, 3 * X[:, 0] - 1)
    np.testing.assert_allclose(lin.coefs_[0].ravel(), [3.0], rtol=1e-10)
    np.testing.assert_allclose(lin.intercepts_[0], [-1.0], rtol=1e-10)
    with pytest.raises(ValueError, match="only one class"):
        sk.MLPClassifier().fit(X, np.zeros(20, int))


@pytest.mark.parametrize("loss, scale", [("huber", 0.5), ("soft_l1", 0.3), ("poisson", 1.0)])
def test_regressor_loss(sk, loss, scale):
    """MLPRegressor(loss=...) trains the network of that loss (and loss_scale): its loss_ is the
    network's weighted loss at theta_ plus the penalty; the robust losses fit the clean points
    of data with gross outliers better than mse does; poisson predicts rates exp(f) > 0."""
    from sklearn.exceptions import ConvergenceWarning
    rng = np.random.default_rng(11)
    X = rng.uniform(-1, 1, (80, 1))
    if loss == "poisson":
        y = rng.poisson(np.exp(1.0 + X[:, 0])).astype(np.float64)
    else:
        y = np.sin(2 * X[:, 0])
        y[::8] += 10.0  # gross outliers
    w = rng.uniform(0.5, 1.5, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = sk.MLPRegressor(hidden_layer_sizes=(6,), loss=loss, loss_scale=scale, max_iter=100,
                              random_state=0).fit(X, y, sample_weight=w)
        mse = sk.MLPRegressor(hidden_layer_sizes=(6,), max_iter=100, random_state=0).fit(X, y, sample_weight=w)
    assert est.net_.loss_name == loss and est.net_.loss_scale == scale
    assert est.loss_ == pytest.approx(est.net_.loss(est.theta_, X, y, sample_weight=w), rel=1e-12)
    pred = est.predict(X)
    if loss == "poisson":
        assert (pred > 0).all()
        np.testing.assert_allclose(pred, np.exp(est.net_.predict(est.theta_, X)[:, 0]))
        assert np.corrcoef(pred, np.exp(1.0 + X[:, 0]))[0, 1] > 0.85  # the trend of 80 noisy counts
    else:
        clean = np.arange(80) % 8 != 0
        err = np.abs(pred - np.sin(2 * X[:, 0]))[clean].mean()
        err_mse = np.abs(mse.predict(X) - np.sin(2 * X[:, 0]))[clean].mean()
        assert err < 0.5 * err_mse
    with pytest.raises(ValueError, match="^loss: "):
        sk.MLPRegressor(loss="ce").fit(X, y)
    with pytest.raises(ValueError, match="^loss_scale: "):
        sk.MLPRegressor(loss="huber", loss_scale=0.0).fit(X, y)


def test_regressor_gaussian_learns_the_noise_level(sk):
    """loss="gaussian": a mean and a log-variance output per target; predict gives the means,
    return_std=True the network's exp(v / 2), which follows noise that grows with |x|; its loss_
    is the network's weighted loss plus the penalty; 2-D targets give (n, k) means and stds."""
    from sklearn.exceptions import ConvergenceWarning
    rng = np.random.default_rng(13)
    X = rng.uniform(-1, 1, (600, 1))
    noise = 0.02 + 0.3 * np.abs(X[:, 0])
    y = np.sin(2 * X[:, 0]) + noise * rng.standard_normal(600)
    w = rng.uniform(0.5, 1.5, 600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = sk.MLPRegressor(hidden_layer_sizes=(8,), loss="gaussian", max_iter=150,
                              random_state=0).fit(X, y, sample_weight=w)
    assert est.net_.sizes[-1] == 2 and est.net_.loss_name == "gaussian"
    assert est.loss_ == pytest.approx(est.net_.loss(est.theta_, X, y, sample_weight=w), rel=1e-12)
    mean, std = est.predict(X, return_std=True)
    F = est.net_.predict(est.theta_, X)
    np.testing.assert_array_equal(mean, est.predict(X))
    np.testing.assert_allclose(mean, F[:, 0], rtol=0, atol=0)
    np.testing.assert_allclose(std, np.exp(0.5 * F[:, 1]), rtol=1e-15)
    assert np.abs(mean - np.sin(2 * X[:, 0])).mean() < 0.05
    assert np.corrcoef(std, noise)[0, 1] > 0.9
    assert np.median(std / noise) == pytest.approx(1.0, abs=0.25)
    Y2 = np.column_stack([y, -y])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est2 = sk.MLPRegressor(hidden_layer_sizes=(4,), loss="gaussian", max_iter=5, random_state=0).fit(X, Y2)
    mean2, std2 = est2.predict(X[:7], return_std=True)
    assert est2.net_.sizes[-1] == 4 and mean2.shape == std2.shape == (7, 2) and (std2 > 0).all()


def test_binary_classifier_is_one_logit_with_bce(sk):
    """Two classes: one output and loss "bce", probabilities (1 - sigmoid(f), sigmoid(f)) with
    exact logs for confident samples; three classes keep softmax cross-entropy."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((60, 2))
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "yes", "no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning is not what this test is about
        clf = sk.MLPClassifier(hidden_layer_sizes=(4,), max_iter=60, random_state=0).fit(X, y)
    assert clf.net_.loss_name == "bce" and clf.net_.num_outputs == 1 and clf.n_outputs_ == 1
    assert list(clf.classes_) == ["no", "yes"]
    f = clf.net_.predict(clf.theta_, X)[:, 0]
    P = clf.predict_proba(X)
    np.testing.assert_allclose(P[:, 1], 1 / (1 + np.exp(-f)), rtol=1e-12)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(clf.predict(X), np.where(f > 0, "yes", "no"))
    assert (clf.predict(X) == y).mean() > 0.9
    L = clf.predict_log_proba(X)
    np.testing.assert_allclose(L, np.column_stack([-np.logaddexp(0, f), -np.logaddexp(0, -f)]), rtol=1e-12)
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        three = sk.MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0)
        three.fit(X, np.digitize(X[:, 0], [-0.5, 0.5]))
    assert three.net_.loss_name == "ce" and three.net_.num_outputs == 3
