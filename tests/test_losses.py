"""The losses beyond mse and ce: bce (binary cross-entropy with logits), poisson (Poisson
negative log-likelihood of log-rates), the robust huber and soft_l1, and gaussian (the Gaussian
negative log-likelihood of a mean and a log-variance per target).

The general suite (test_reference.py, test_backends.py) runs them through ``cases()``; here:
their definitions against plain formulas and the peers' conventions, every backend against the
reference on every quantity with and without sample weights, the regimes where the textbook
forms cancel or overflow (saturated logits, huge counts, extreme variances) against long double,
gaussian's exact Hessian against finite differences and its GGN against J^T Fisher J, and bad
targets.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DATA_QUANTITIES,
    FD_RTOL_HESS,
    FD_STEP_HESS,
    compare,
    compute,
    make_problem,
    output_hessians,
    rtol_for,
)

import taylorkern as tk

LOSSES = ("bce", "poisson", "huber", "soft_l1", "gaussian")
REDUCTIONS = ("mean", "sum")
DTYPES = [np.float64, np.float32]

# (sizes, activation, N): one output, several, deep, a single layer, a tiny network (the cpp
# lanes paths' size: they hand these losses to the general kernels) and one past the Gram route
SHAPES = [([3, 5, 2], "tanh", 9), ([2, 6, 1], "softplus", 7), ([3, 4, 3, 5, 3], "gelu", 8),
          ([4, 3], "identity", 5), ([2, 8, 1], "relu", 13), ([4, 7, 6, 2], "sigmoid", 11)]


def _even(loss, sizes):
    """gaussian's last width is two per target: an odd one is made even."""
    return [*sizes[:-1], sizes[-1] + sizes[-1] % 2] if loss == "gaussian" else sizes


# ----------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_is_the_peers_definition(loss):
    """bce = mean over all N*k of softplus(f) - y f (torch's BCEWithLogitsLoss: -[y log s(f) +
    (1 - y) log(1 - s(f))]); poisson = mean of exp(f) - y f (PoissonNLLLoss(log_input=True,
    full=False)); gaussian = mean over all N*k targets of torch's GaussianNLLLoss(full=False),
    (log var + (y - mu)^2 / var) / 2, with var = exp of the second half of the outputs; "sum"
    drops the 1/N, keeps the 1/k."""
    p = make_problem(_even(loss, [3, 4, 3]), "tanh", loss, N=6, seed=1)
    F = p.net.predict(p.theta, p.X)
    k = p.Y.shape[1]
    if loss == "gaussian":
        mu, var = F[:, :k], np.exp(F[:, k:])
        elem = 0.5 * (np.log(var) + (p.Y - mu) ** 2 / var)
    elif loss == "bce":
        sig = 1.0 / (1.0 + np.exp(-F))
        elem = -(p.Y * np.log(sig) + (1 - p.Y) * np.log(1 - sig))
    elif loss == "poisson":
        elem = np.exp(F) - p.Y * F
    elif loss == "huber":  # torch.nn.HuberLoss(delta=1): 0.5 r^2 below delta, delta (|r| - delta/2) above
        r = np.abs(F - p.Y)
        assert (r < 1).any() and (r > 1).any()
        elem = np.where(r < 1, 0.5 * r * r, r - 0.5)
    else:  # scipy.optimize.least_squares(loss="soft_l1"): rho(z) = 2 ((1 + z)^0.5 - 1), z = r^2
        elem = 0.5 * 2 * (np.sqrt(1 + (F - p.Y) ** 2) - 1)
    with tk.use_backend("reference"):
        compare(p.net.loss(p.theta, p.X, p.Y), elem.mean())
        compare(p.net.loss(p.theta, p.X, p.Y, "sum"), elem.sum() / k)


@pytest.mark.parametrize("loss", LOSSES)
def test_one_output_accepts_1d_targets(loss, backend):
    p = make_problem(_even(loss, [3, 4, 1]), "tanh", loss, N=5, seed=2)
    compare(p.net.loss_and_grad(p.theta, p.X, p.Y[:, 0]), p.net.loss_and_grad(p.theta, p.X, p.Y))


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", SHAPES, ids=["-".join(map(str, s[0])) + "-" + s[1] for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_backend_matches_reference(backend, loss, shape, dtype):
    sizes, act, N = shape
    p = make_problem(_even(loss, sizes), act, loss, N=N, l2=0.05, dtype=dtype, seed=N)
    p64 = p.astype(np.float64)
    w = np.random.default_rng(N).uniform(0.0, 2.0, N)
    w[0] = 0.0
    failures = []
    for reduction in REDUCTIONS:
        for weights in (None, w):
            for q in DATA_QUANTITIES:
                with tk.use_backend("reference"):
                    want = compute(p64, q, reduction, weights)
                try:
                    compare(compute(p, q, reduction, weights), want, dtype, what=q)
                except AssertionError as exc:
                    failures.append(f"{reduction} {'weighted' if weights is not None else ''}: {exc}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- hard regimes
def _single_layer(loss, F, Y, dtype):
    """A one-layer identity network whose outputs are exactly F (N, k): X = I (N = d0), W = F,
    b = 0, so the gradient and curvature in b are sums of the per-output quantities."""
    N, k = F.shape
    net = tk.MLP([N, k], loss=loss, dtype=dtype)
    theta = net.flatten([(F.astype(dtype), np.zeros(k, dtype))])
    return net, theta, np.eye(N, dtype=dtype), Y.astype(dtype)


def _long_double_bce(F, Y):
    """(l, l', l'') of bce per output in long double, with 1 - s(f) written as e^-f / (1 + e^-f)
    for f >= 0 (and s(f) as e^f / (1 + e^f) below), which no rounding cancels."""
    f, y = F.astype(np.longdouble), Y.astype(np.longdouble)
    e = np.exp(-np.abs(f))
    s = np.where(f >= 0, 1 / (1 + e), e / (1 + e))
    one_minus_s = np.where(f >= 0, e / (1 + e), 1 / (1 + e))
    value = np.log1p(e) + np.maximum(f, 0) - y * f
    # s - y as (1 - y) - (1 - s) for f >= 0: s itself rounds to 1 past f ~ 45 even in long double
    return value, np.where(f >= 0, (1 - y) - one_minus_s, s - y), s * one_minus_s


@pytest.mark.parametrize("dtype, big", [(np.float64, [40.0, 55.0, 300.0, 700.0]),
                                        (np.float32, [20.0, 35.0, 60.0, 85.0])], ids=["f64", "f32"])
def test_bce_saturated_logits(backend, dtype, big):
    """Logits of |f| from 20 to 700 with targets on the confident side and on the wrong one: the
    loss, gradient and curvature are tiny (e^-|f|) or large (|f|), never 0 from cancellation
    (1 / (1 + e^-f) - 1 and s (1 - s) round to 0 there in the textbook forms)."""
    f = np.array(big)
    F = np.stack([f, -f, f, -f, 0.5 * f], axis=1)       # (4, 5)
    Y = np.array([[1.0, 0.0, 0.0, 1.0, 0.3]] * 4)
    net, theta, X, Yd = _single_layer("bce", F, Y, dtype)
    v, g, h = _long_double_bce(F.astype(dtype).astype(np.float64), Y.astype(dtype).astype(np.float64))
    N, k = F.shape
    tol = rtol_for(dtype)
    # per output, through b's gradient / curvature on one sample at a time (no sums across sizes)
    for n in range(N):
        xs, ys = X[n:n + 1], Yd[n:n + 1]
        value, grad = net.loss_and_grad(theta, xs, ys, "sum")
        gb = grad[-k:].astype(np.float64)
        np.testing.assert_allclose(value, float(v[n].sum() / k), rtol=tol)
        np.testing.assert_allclose(gb, (g[n] / k).astype(np.float64), rtol=tol, atol=0)
        Hb = np.diagonal(net.hessian(theta, xs, ys, "sum"))[-k:].astype(np.float64)
        Gb = net.ggn_diag(theta, xs, ys, "sum")[-k:].astype(np.float64)
        want = (h[n] / k).astype(np.float64)
        assert (want > 0).all()
        np.testing.assert_allclose(Hb, want, rtol=tol, atol=0)
        np.testing.assert_allclose(Gb, want, rtol=tol, atol=0)
        e = np.zeros(net.num_params, dtype)
        e[-k:] = 1
        np.testing.assert_allclose(net.hvp(theta, xs, ys, e, "sum")[-k:].astype(np.float64), want, rtol=tol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_poisson_huge_counts(backend, dtype):
    """Counts up to 1e12 (f = log y up to ~28) and a large rate against a zero count: the loss
    e^f - y f is a difference of large numbers near its minimum, compared with long double."""
    y = np.array([0.0, 3.0, 1e4, 1e8, 1e12])
    F = np.log(np.maximum(y, 1.0))[None, :] + np.array([[0.0], [0.3], [-0.2]])   # (3, 5)
    F[:, 0] = [5.0, 30.0, -3.0]
    Y = np.broadcast_to(y, F.shape).copy()
    net, theta, X, Yd = _single_layer("poisson", F, Y, dtype)
    k = F.shape[1]
    f = F.astype(dtype).astype(np.longdouble)
    yl = Y.astype(dtype).astype(np.longdouble)
    tol = rtol_for(dtype)
    for n in range(F.shape[0]):
        xs, ys = X[n:n + 1], Yd[n:n + 1]
        value, grad = net.loss_and_grad(theta, xs, ys, "sum")
        want_v = float(np.sum(np.exp(f[n]) - yl[n] * f[n]) / k)
        np.testing.assert_allclose(value, want_v, rtol=tol)
        g = np.asarray((np.exp(f[n]) - yl[n]) / k, dtype=np.float64)
        # e^f - y is itself a difference: where f = log y its terms' rounding, not the method,
        # bounds it, so the error is measured against the terms' size
        terms = np.asarray(np.maximum(np.exp(f[n]), yl[n]) / k, dtype=np.float64)
        assert np.all(np.abs(grad[-k:].astype(np.float64) - g) <= tol * terms)
        h = np.asarray(np.exp(f[n]) / k, dtype=np.float64)
        np.testing.assert_allclose(net.ggn_diag(theta, xs, ys, "sum")[-k:].astype(np.float64), h, rtol=tol)
        np.testing.assert_allclose(np.diagonal(net.hessian(theta, xs, ys, "sum"))[-k:].astype(np.float64), h,
                                   rtol=tol)


def test_poisson_log_rate_near_overflow():
    """e^f of f = 700 is 1e304: finite and exact to a few ulp in float64 on every backend."""
    F = np.array([[700.0, -700.0]])
    Y = np.array([[2.0, 0.0]])
    for name in tk.available_backends():
        with tk.use_backend(name):
            net, theta, X, Yd = _single_layer("poisson", F, Y, np.float64)
            value, grad = net.loss_and_grad(theta, X, Yd, "sum")
            want = (np.exp(700.0) - 1400.0 + np.exp(-700.0)) / 2
            assert value == pytest.approx(want, rel=1e-12), name
            assert grad[-2] == pytest.approx((np.exp(700.0) - 2.0) / 2, rel=1e-12), name


# ----------------------------------------------------------------------------- gaussian
def _fd_hessian(net, theta, X, Y, reduction):
    """Central differences of the gradient, column by column."""
    cols = []
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = FD_STEP_HESS
        gp = net.loss_and_grad(theta + e, X, Y, reduction)[1]
        gm = net.loss_and_grad(theta - e, X, Y, reduction)[1]
        cols.append((gp - gm) / (2 * FD_STEP_HESS))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("shape", SHAPES, ids=["-".join(map(str, s[0])) + "-" + s[1] for s in SHAPES])
def test_gaussian_hessian_by_finite_differences(backend, shape):
    """Each backend's exact Hessian (full, blocks, diagonal, products) against differences of its
    own gradient, and its GGN against J^T Fisher J (J from its Jacobian, the Fisher written in
    conftest): float64.  The two differ, and only the GGN is positive semi-definite."""
    sizes, act, N = shape
    p = make_problem(_even("gaussian", sizes), act, "gaussian", N=N, l2=0.05, seed=N + 1)
    net, k, P = p.net, p.net.num_outputs, p.net.num_params
    J = net.jacobian(p.theta, p.X).reshape(N, k, P)
    F = net.predict(p.theta, p.X)
    for reduction in REDUCTIONS:
        H = net.hessian(p.theta, p.X, p.Y, reduction)
        compare(H, _fd_hessian(net, p.theta, p.X, p.Y, reduction), rtol=FD_RTOL_HESS, what=f"H ({reduction})")
        compare(np.diagonal(H), net.hessian_diag(p.theta, p.X, p.Y, reduction), what="hessian_diag")
        compare(H @ p.V, net.hvp(p.theta, p.X, p.Y, p.V, reduction), what="hvp")
        l2 = (net.l2 if reduction == "mean" else 0.0) * np.eye(P)
        G = net.ggn(p.theta, p.X, p.Y, reduction)
        compare(G, np.einsum("ncp,ncd,ndq->pq", J, output_hessians(p, F, reduction), J) + l2, what="G")
        compare(G @ p.V, net.ggn_vp(p.theta, p.X, p.Y, p.V, reduction), what="ggn_vp")
        compare(np.diagonal(G), net.ggn_diag(p.theta, p.X, p.Y, reduction), what="ggn_diag")
        assert np.abs(H - G).max() > 1e-3 * np.abs(H).max()
        assert np.linalg.eigvalsh(G - l2).min() >= -1e-12 * np.abs(G).max()


def _long_double_gaussian(F, Y):
    """gaussian per pair in long double, from e^-v directly: (loss, dl/dmu, dl/dv, Hessian's
    (mu-mu, mu-v, v-v)), unscaled."""
    h = Y.shape[1]
    mu, v, y = (a.astype(np.longdouble) for a in (F[:, :h], F[:, h:], Y))
    r, E = y - mu, np.exp(-v)
    return 0.5 * (v + r * r * E), -r * E, 0.5 * (1 - r * r * E), (E, r * E, 0.5 * r * r * E)


@pytest.mark.parametrize("dtype, vs", [(np.float64, [-300.0, -20.0, 0.0, 20.0, 300.0]),
                                       (np.float32, [-40.0, -5.0, 0.0, 5.0, 40.0])], ids=["f64", "f32"])
def test_gaussian_extreme_variances(backend, dtype, vs):
    """Log-variances from -300 to 300 (-40 to 40 in float32) with residuals 0, tiny and large:
    the loss, gradient and output curvature (the output layer's bias block of H and G, sample by
    sample) against long double."""
    v = np.array(vs)
    R = np.array([0.0, 1e-3, 1.5, -2.0, 1e-6])
    mu = np.linspace(-1.0, 1.0, v.size)
    F = np.concatenate([mu, v])[None, :] * np.ones((3, 1))
    F[1, v.size:] = v[::-1]
    F[2, :v.size] = 0.25
    Y = F[:, :v.size] + R  # r = y - mu
    net, theta, X, Yd = _single_layer("gaussian", F, Y, dtype)
    Fd, Yl = F.astype(dtype).astype(np.float64), Yd.astype(np.float64)
    h = v.size
    value, gm, gv, (hmm, hmv, hvv) = _long_double_gaussian(Fd, Yl)
    tol = rtol_for(dtype)
    for n in range(F.shape[0]):
        xs, ys = X[n:n + 1], Yd[n:n + 1]
        got_v, grad = net.loss_and_grad(theta, xs, ys, "sum")
        np.testing.assert_allclose(got_v, float(value[n].sum() / h), rtol=tol)
        want_g = np.concatenate([gm[n], gv[n]]).astype(np.float64) / h
        np.testing.assert_allclose(grad[-2 * h:].astype(np.float64), want_g, rtol=tol, atol=0)
        Hb = net.hessian(theta, xs, ys, "sum")[-2 * h:, -2 * h:].astype(np.float64)
        Gb = net.ggn(theta, xs, ys, "sum")[-2 * h:, -2 * h:].astype(np.float64)
        want_H, want_G = np.zeros((2 * h, 2 * h)), np.zeros((2 * h, 2 * h))
        j = np.arange(h)
        want_H[j, j] = want_G[j, j] = np.asarray(hmm[n], np.float64) / h
        want_H[j, h + j] = want_H[h + j, j] = np.asarray(hmv[n], np.float64) / h
        want_H[h + j, h + j] = np.asarray(hvv[n], np.float64) / h
        want_G[h + j, h + j] = 0.5 / h
        np.testing.assert_allclose(Hb, want_H, rtol=tol, atol=0)
        np.testing.assert_allclose(Gb, want_G, rtol=tol, atol=0)
        np.testing.assert_allclose(net.hessian_diag(theta, xs, ys, "sum")[-2 * h:].astype(np.float64),
                                   np.diagonal(want_H), rtol=tol, atol=0)


@pytest.mark.parametrize("dtype, v", [(np.float64, [-1000.0, -1500.0, 1600.0]),
                                      (np.float32, [-120.0, -200.0, 220.0])], ids=["f64", "f32"])
def test_gaussian_zero_residual_where_the_precision_overflows(dtype, v):
    """A zero residual where e^-v overflows (v = -1000; -120 in float32), where even e^(-v/2)
    does (-1500; -200), or where it underflows (1600; 220): the loss is the mean of v / 2 and the
    gradient (0, 1/2) / 3 per pair on every backend, never NaN from r^2 * inf."""
    F = np.array([[0.5, -0.25, 2.0, *v]])
    Y = F[:, :3].copy()
    want = np.array([0.0, 0.0, 0.0, 0.5, 0.5, 0.5], dtype) / 3
    for name in tk.available_backends():
        with tk.use_backend(name):
            net, theta, X, Yd = _single_layer("gaussian", F, Y, dtype)
            value, grad = net.loss_and_grad(theta, X, Yd, "sum")
            assert value == pytest.approx(sum(v) / 6, rel=rtol_for(dtype)), name
            np.testing.assert_array_equal(grad[-6:], want, err_msg=name)


def test_gaussian_is_refused_by_least_squares():
    """scipy's least squares (a sum of squares) refuses gaussian by name, before any result.
    K-FAC (both kinds) and the Laplace posterior take it (tests/test_kfac.py,
    tests/test_laplace.py), MLPRegressor too (tests/test_scipy_sklearn.py)."""
    pytest.importorskip("scipy")
    from taylorkern import scipy as tks
    p = make_problem([3, 5, 4], "tanh", "gaussian", N=8, seed=1)
    with pytest.raises(ValueError, match="^net: .*'gaussian'"):
        tks.least_squares(p.net, p.theta, p.X, p.Y)


def test_gaussian_odd_width_is_refused():
    with pytest.raises(ValueError, match="^sizes: .*'gaussian'.*even"):
        tk.MLP([2, 3, 3], loss="gaussian")


@pytest.mark.parametrize("method, options", [("gauss-newton", {}), ("lm", {}), ("lm", dict(space="samples")),
                                             ("newton", {}), ("newton-cg", {}), ("lbfgs", {})])
def test_gaussian_fit_learns_the_noise_level(method, options):
    """Heteroscedastic data, y = sin(x) + noise of standard deviation 0.05 + 0.3 |x|: every
    second-order method of tk.minimize lowers the loss from the initial point, and the
    Gauss-Newton methods (the Fisher's curvature) fit the noise's scale."""
    rng = np.random.default_rng(0)
    N = 60 if options.get("space") == "samples" else 400
    x = rng.uniform(-2, 2, (N, 1))
    sd = 0.05 + 0.3 * np.abs(x)
    y = np.sin(x) + sd * rng.standard_normal((N, 1))
    net = tk.MLP([1, 12 if N > 100 else 40, 2], activation="tanh", loss="gaussian", l2=1e-4)
    theta0 = net.init(seed=1)
    f0 = net.loss(theta0, x, y)
    res = tk.minimize(net, theta0, x, y, method=method, max_iter=300, **options)
    assert np.isfinite(res.loss) and res.loss < f0 - 0.5
    if method in ("gauss-newton", "lm") and N > 100:
        grid = np.array([[-1.8], [0.0], [1.8]])
        std = np.exp(0.5 * net.predict(res.theta, grid)[:, 1])
        np.testing.assert_allclose(std, 0.05 + 0.3 * np.abs(grid[:, 0]), rtol=0.5, atol=0.05)


# ----------------------------------------------------------------------------- bad targets
@pytest.mark.parametrize("loss, Y, match", [
    ("bce", [[0.2, 1.5]] * 3, r"\[0, 1\]"),
    ("bce", [[-0.1, 0.5]] * 3, r"\[0, 1\]"),
    ("bce", [[np.nan, 0.5]] * 3, "NaN"),
    ("bce", [[0.5, 0.5, 0.5]] * 3, r"shape \(3, 2\)"),
    ("poisson", [[1.0, -2.0]] * 3, ">= 0"),
    ("poisson", [[1.0, np.inf]] * 3, "Inf"),
    ("poisson", [0, 1, 2], r"shape \(3, 2\)"),
    ("gaussian", [[0.2, 1.5]] * 3, r"shape \(3, 1\)"),
    ("gaussian", [[np.nan]] * 3, "NaN"),
    ("gaussian", [[-np.inf]] * 3, "Inf"),
])
def test_bad_targets_are_refused_naming_Y(loss, Y, match):
    net = tk.MLP([2, 3, 2], loss=loss)
    theta, X = net.init(seed=0), np.ones((3, 2))
    for call in (net.loss, net.loss_and_grad, net.ggn, net.hessian_diag):
        with pytest.raises(ValueError, match="^Y: ") as info:
            call(theta, X, np.array(Y))
        assert info.match(match)


# ----------------------------------------------------------------------------- loss_scale
@pytest.mark.parametrize("loss", ["huber", "soft_l1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_loss_scale(backend, loss, dtype):
    """huber's delta and soft_l1's c: the loss against its formula at c = 0.3 and 4 (huber with
    residuals on both sides of delta), and every quantity against the reference."""
    for c in (0.3, 4.0):
        p0 = make_problem([3, 5, 2], "tanh", loss, N=9, dtype=dtype, seed=4)
        net = tk.MLP([3, 5, 2], "tanh", loss, dtype=dtype, loss_scale=c)
        p = type(p0)(net, p0.theta, p0.X, p0.Y, p0.V, p0.name)
        p64 = p.astype(np.float64)
        F = p64.net.predict(p64.theta, p64.X)
        r = np.abs(F - p64.Y)
        if loss == "huber":
            assert (r < c).any() and (r > c).any()
            elem = np.where(r < c, 0.5 * r * r, c * (r - 0.5 * c))
        else:
            elem = c * c * (np.sqrt(1 + (r / c) ** 2) - 1)
        compare(net.loss(p.theta, p.X, p.Y), elem.mean(), dtype, what="loss")
        for q in DATA_QUANTITIES:
            with tk.use_backend("reference"):
                want = compute(p64, q, "mean")
            compare(compute(p, q, "mean"), want, dtype, what=f"{q} at loss_scale {c}")


def test_soft_l1_small_and_huge_residuals():
    """soft_l1 as r (r / (1 + q)): for r/c = 1e-9 the loss r^2 / 2 is not lost to q - 1's
    cancellation, and r/c = 1e200 does not overflow (q = |r|/c)."""
    F = np.array([[1e-9, 1e200, -1e200, 3.0]])
    Y = np.zeros_like(F)
    for name in tk.available_backends():
        with tk.use_backend(name):
            net, theta, X, Yd = _single_layer("soft_l1", F, Y, np.float64)
            value, grad = net.loss_and_grad(theta, X, Yd, "sum")
            want = (0.5e-18 + 2 * (1e200 - 1) + (np.sqrt(10.0) - 1)) / 4
            assert value == pytest.approx(want, rel=1e-12), name
            np.testing.assert_allclose(grad[-4:], np.array([1e-9, 1.0, -1.0, 3 / np.sqrt(10)]) / 4, rtol=1e-12)


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, "1", True])
def test_bad_loss_scale_is_refused(scale):
    with pytest.raises(ValueError, match="^loss_scale: "):
        tk.MLP([2, 3, 1], loss="huber", loss_scale=scale)
