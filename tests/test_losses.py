"""The likelihoods beyond mse and ce: bce (binary cross-entropy with logits) and poisson
(Poisson negative log-likelihood of log-rates).

The general suite (test_reference.py, test_backends.py) runs them through ``cases()``; here:
their definitions against plain formulas and the peers' conventions, every backend against the
reference on every quantity with and without sample weights, the regimes where the textbook
forms cancel or overflow (saturated logits, huge counts) against long double, and bad targets.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA_QUANTITIES, compare, make_problem, rtol_for

import taylorkern as tk

LOSSES = ("bce", "poisson", "huber", "soft_l1")
REDUCTIONS = ("mean", "sum")
DTYPES = [np.float64, np.float32]

# (sizes, activation, N): one output, several, deep, a single layer, a tiny network (the cpp
# lanes paths' size: they hand these losses to the general kernels) and one past the Gram route
SHAPES = [([3, 5, 2], "tanh", 9), ([2, 6, 1], "softplus", 7), ([3, 4, 3, 5, 3], "gelu", 8),
          ([4, 3], "identity", 5), ([2, 8, 1], "relu", 13), ([4, 7, 6, 2], "sigmoid", 11)]


def _quantity(p, q, reduction, w=None):
    net = p.net
    if q in ("hvp", "ggn_vp"):
        return getattr(net, q)(p.theta, p.X, p.Y, p.V[:, 0], reduction, sample_weight=w)
    if q in ("hvp_multi", "ggn_vp_multi"):
        return getattr(net, q[:-6])(p.theta, p.X, p.Y, p.V, reduction, sample_weight=w)
    return getattr(net, q)(p.theta, p.X, p.Y, reduction, sample_weight=w)


# ----------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_is_the_peers_definition(loss):
    """bce = mean over all N*k of softplus(f) - y f (torch's BCEWithLogitsLoss: -[y log s(f) +
    (1 - y) log(1 - s(f))]); poisson = mean of exp(f) - y f (PoissonNLLLoss(log_input=True,
    full=False)); "sum" drops the 1/N, keeps the 1/k."""
    p = make_problem([3, 4, 3], "tanh", loss, N=6, seed=1)
    F = p.net.predict(p.theta, p.X)
    if loss == "bce":
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
        compare(p.net.loss(p.theta, p.X, p.Y, "sum"), elem.sum() / 3)


@pytest.mark.parametrize("loss", LOSSES)
def test_one_output_accepts_1d_targets(loss, backend):
    p = make_problem([3, 4, 1], "tanh", loss, N=5, seed=2)
    compare(p.net.loss_and_grad(p.theta, p.X, p.Y[:, 0]), p.net.loss_and_grad(p.theta, p.X, p.Y))


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", SHAPES, ids=["-".join(map(str, s[0])) + "-" + s[1] for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_backend_matches_reference(backend, loss, shape, dtype):
    sizes, act, N = shape
    p = make_problem(sizes, act, loss, N=N, l2=0.05, dtype=dtype, seed=N)
    p64 = p.astype(np.float64)
    w = np.random.default_rng(N).uniform(0.0, 2.0, N)
    w[0] = 0.0
    failures = []
    for reduction in REDUCTIONS:
        for weights in (None, w):
            for q in DATA_QUANTITIES:
                with tk.use_backend("reference"):
                    want = _quantity(p64, q, reduction, weights)
                try:
                    compare(_quantity(p, q, reduction, weights), want, dtype, what=q)
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


# ----------------------------------------------------------------------------- bad targets
@pytest.mark.parametrize("loss, Y, match", [
    ("bce", [[0.2, 1.5]] * 3, r"\[0, 1\]"),
    ("bce", [[-0.1, 0.5]] * 3, r"\[0, 1\]"),
    ("bce", [[np.nan, 0.5]] * 3, "NaN"),
    ("bce", [[0.5, 0.5, 0.5]] * 3, r"shape \(3, 2\)"),
    ("poisson", [[1.0, -2.0]] * 3, ">= 0"),
    ("poisson", [[1.0, np.inf]] * 3, "Inf"),
    ("poisson", [0, 1, 2], r"shape \(3, 2\)"),
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
                want = _quantity(p64, q, "mean")
            compare(_quantity(p, q, "mean"), want, dtype, what=f"{q} at loss_scale {c}")


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
