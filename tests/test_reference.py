"""The oracle itself, checked by routes that share nothing with it: a forward pass and the
losses written here in plain numpy, central finite differences of the loss, gradient and
outputs, and exact identities (single-layer H == G).  All in float64 on the reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    FD_RTOL_ACT,
    FD_RTOL_CURV,
    FD_RTOL_GRAD,
    FD_RTOL_HESS,
    FD_STEP_ACT,
    FD_STEP_CURV,
    FD_STEP_GRAD,
    FD_STEP_HESS,
    RTOL_F64,
    cases,
    compare,
    make_problem,
    output_hessians,
)
from scipy.special import log_softmax

import taylorkern as tk
from taylorkern.backends import reference as ref

REDUCTIONS = ["mean", "sum"]


@pytest.fixture(autouse=True)
def _on_reference():
    with tk.use_backend("reference"):
        yield


# ----------------------------------------------------------------------------- activations
# Closed forms written independently of reference.act (sigmoid and softplus by their
# textbook formulas, not the tanh forms the reference uses).
GELU_C = np.sqrt(2.0 / np.pi)
CLOSED_FORMS = {
    "identity": lambda z: z,
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "gelu": lambda z: 0.5 * z * (1.0 + np.tanh(GELU_C * (z + 0.044715 * z ** 3))),
    "sin": np.sin,
}


def _grid():
    z = np.linspace(-4.0, 4.0, 801)
    return z[np.abs(z) > 1e-3]  # away from relu's kink at 0


@pytest.mark.parametrize("name", tk.ACTIVATIONS)
def test_activation_values(name):
    z = _grid()
    s, _, _ = ref.act(name, z)
    compare(s, CLOSED_FORMS[name](z), rtol=RTOL_F64, what=f"{name}(z)")


@pytest.mark.parametrize("name", tk.ACTIVATIONS)
def test_activation_derivatives_by_finite_differences(name):
    z, h = _grid(), FD_STEP_ACT
    _, d1, d2 = ref.act(name, z)
    sp, d1p, _ = ref.act(name, z + h)
    sm, d1m, _ = ref.act(name, z - h)
    compare(d1, (sp - sm) / (2 * h), rtol=FD_RTOL_ACT, what=f"{name}'")
    compare(d2, (d1p - d1m) / (2 * h), rtol=FD_RTOL_ACT, what=f"{name}''")


@pytest.mark.parametrize("name", tk.ACTIVATIONS)
def test_activation_keeps_float32(name, request):
    z = _grid().astype(np.float32)
    out = ref.act(name, z)
    assert [o.dtype for o in out] == [np.float32] * 3


# ----------------------------------------------------------------------------- forward, losses
def _forward(net, theta, X):
    """The layout of docs/design.md §1 read directly: theta = [W1.ravel(), b1, W2.ravel(), b2, ...]."""
    a, o = X, 0
    n_layers = len(net.sizes) - 1
    for l, (d_in, d_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        W = theta[o:o + d_in * d_out].reshape(d_in, d_out)
        o += d_in * d_out
        b = theta[o:o + d_out]
        o += d_out
        a = a @ W + b
        if l < n_layers - 1:
            a = CLOSED_FORMS[net.activations[l]](a)
    assert o == theta.size
    return a


def _loss(net, F, Y, reduction):
    N = F.shape[0]
    if net.loss_name == "mse":
        per_sample = np.mean((F - Y) ** 2, axis=1)        # np.mean((Y - F)**2) overall
    elif net.loss_name == "bce":                          # torch's BCEWithLogitsLoss
        per_sample = np.mean(np.logaddexp(0.0, F) - Y * F, axis=1)
    elif net.loss_name == "poisson":                      # PoissonNLLLoss(log_input=True, full=False)
        per_sample = np.mean(np.exp(F) - Y * F, axis=1)
    elif net.loss_name == "huber":                        # torch's HuberLoss(delta=c)
        c, R = net.loss_scale, np.abs(F - Y)
        per_sample = np.mean(np.where(R < c, 0.5 * R ** 2, c * (R - 0.5 * c)), axis=1)
    elif net.loss_name == "soft_l1":                      # scipy's soft_l1, f_scale c
        c = net.loss_scale
        per_sample = np.mean(c ** 2 * (np.sqrt(1 + ((F - Y) / c) ** 2) - 1), axis=1)
    elif net.loss_name == "gaussian":                     # -log N(y; mu, e^v) less log(2 pi) / 2
        h = F.shape[1] // 2
        mu, var = F[:, :h], np.exp(F[:, h:])
        per_sample = np.mean(0.5 * np.log(var) + 0.5 * (Y - mu) ** 2 / var, axis=1)
    else:
        per_sample = -log_softmax(F, axis=1)[np.arange(N), Y]
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


@pytest.mark.parametrize("case", cases(per_combo=2))
def test_predict_and_loss_match_plain_numpy(case):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.2)
    F = _forward(p.net, p.theta, p.X)
    compare(p.net.predict(p.theta, p.X), F, rtol=RTOL_F64, what="predict")
    for red in REDUCTIONS:
        want = _loss(p.net, F, p.Y, red) + (0.1 * p.theta @ p.theta if red == "mean" else 0.0)
        compare(p.net.loss(p.theta, p.X, p.Y, reduction=red), want, rtol=RTOL_F64, what=f"loss {red}")
        compare(p.net.loss_and_grad(p.theta, p.X, p.Y, reduction=red)[0], want, rtol=RTOL_F64,
                what=f"loss_and_grad value {red}")


def test_per_layer_activation_list():
    p = make_problem([3, 4, 5, 2], ["sin", "relu"], "mse", N=4)
    compare(p.net.predict(p.theta, p.X), _forward(p.net, p.theta, p.X), rtol=RTOL_F64,
            what="predict with per-layer activations")
    q = make_problem([3, 4, 5, 2], "sin", "mse", N=4)
    assert not np.allclose(p.net.predict(p.theta, p.X), q.net.predict(q.theta, q.X))


def test_mse_accepts_1d_targets_when_one_output():
    p = make_problem([3, 4, 1], "tanh", "mse", N=6)
    y1 = p.Y[:, 0].copy()
    assert p.net.loss(p.theta, p.X, y1) == p.net.loss(p.theta, p.X, p.Y)
    compare(p.net.hessian(p.theta, p.X, y1), p.net.hessian(p.theta, p.X, p.Y), rtol=0.0)


# ----------------------------------------------------------------------------- finite differences
def _fd_gradient(f, theta, h):
    g = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", cases(per_combo=2))
def test_gradient_by_finite_differences(case, reduction):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.2)
    _, grad = p.net.loss_and_grad(p.theta, p.X, p.Y, reduction=reduction)
    fd = _fd_gradient(lambda t: p.net.loss(t, p.X, p.Y, reduction=reduction), p.theta, FD_STEP_GRAD)
    compare(grad, fd, rtol=FD_RTOL_GRAD, what="gradient")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", cases(per_combo=2))
def test_hessian_columns_by_finite_differences_of_gradient(case, reduction):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.2)
    H = p.net.hessian(p.theta, p.X, p.Y, reduction=reduction)
    cols = []
    for i in range(p.net.num_params):
        e = np.zeros_like(p.theta)
        e[i] = FD_STEP_HESS
        gp = p.net.loss_and_grad(p.theta + e, p.X, p.Y, reduction=reduction)[1]
        gm = p.net.loss_and_grad(p.theta - e, p.X, p.Y, reduction=reduction)[1]
        cols.append((gp - gm) / (2 * FD_STEP_HESS))
    compare(H, np.stack(cols, axis=1), rtol=FD_RTOL_HESS, what="Hessian")


@pytest.mark.parametrize("case", cases(per_combo=1))
def test_curvature_along_directions_by_second_differences_of_loss(case):
    """v^T H v from the loss alone (no gradient involved), for the 3 directions of V."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.2)
    net, h = p.net, FD_STEP_CURV
    H = net.hessian(p.theta, p.X, p.Y)
    L0 = net.loss(p.theta, p.X, p.Y)
    for c in range(p.V.shape[1]):
        v = p.V[:, c] / np.linalg.norm(p.V[:, c])
        fd = (net.loss(p.theta + h * v, p.X, p.Y) - 2 * L0 + net.loss(p.theta - h * v, p.X, p.Y)) / h ** 2
        # absolute error against the Hessian's scale: v^T H v may be near zero for some v
        assert abs(v @ H @ v - fd) <= FD_RTOL_CURV * max(abs(fd), np.abs(H).max()), (c, v @ H @ v, fd)


@pytest.mark.parametrize("case", cases(per_combo=2))
def test_jacobian_by_finite_differences_of_outputs(case):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N)
    J = p.net.jacobian(p.theta, p.X)
    cols = []
    for i in range(p.net.num_params):
        e = np.zeros_like(p.theta)
        e[i] = FD_STEP_HESS
        dF = p.net.predict(p.theta + e, p.X) - p.net.predict(p.theta - e, p.X)
        cols.append(dF.ravel() / (2 * FD_STEP_HESS))  # row n*k + c: output c of sample n
    compare(J, np.stack(cols, axis=1), rtol=FD_RTOL_HESS, what="Jacobian")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", cases(per_combo=2))
def test_ggn_is_hessian_of_linearized_model(case, reduction):
    """G = J^T H_out J with J from finite differences of predict and H_out from the loss
    definitions (itself checked by finite differences of the plain-numpy loss; for gaussian the
    GGN's H_out is the Fisher, and the exact output Hessian is what the differences check)."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.2)
    net, k, P = p.net, p.net.num_outputs, p.net.num_params
    F = net.predict(p.theta, p.X)
    cols = []
    for i in range(P):
        e = np.zeros_like(p.theta)
        e[i] = FD_STEP_HESS
        cols.append(((net.predict(p.theta + e, p.X) - net.predict(p.theta - e, p.X))
                     / (2 * FD_STEP_HESS)).reshape(N, k))
    J = np.stack(cols, axis=-1)  # (N, k, P)
    C = output_hessians(p, F, reduction)
    Cx = output_hessians(p, F, reduction, exact=True)
    # H_out itself, by second differences of the plain-numpy loss in F (one sample at a time)
    h = FD_STEP_CURV
    for n in range(min(N, 2)):
        for a in range(k):
            for b in range(k):
                def L(da, db):
                    G = F.copy()
                    G[n, a] += da
                    G[n, b] += db
                    return _loss(net, G, p.Y, reduction)
                fd = (L(h, h) - L(h, -h) - L(-h, h) + L(-h, -h)) / (4 * h * h)
                assert abs(fd - Cx[n, a, b]) <= FD_RTOL_CURV * max(1.0, abs(Cx).max()), (n, a, b)
    want = np.einsum("ncp,ncd,ndq->pq", J, C, J) + (net.l2 if reduction == "mean" else 0.0) * np.eye(P)
    compare(net.ggn(p.theta, p.X, p.Y, reduction=reduction), want, rtol=FD_RTOL_HESS, what="GGN")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", cases(per_combo=1))
def test_products_consistent_with_matrices(case, reduction):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.2)
    net = p.net
    for prod, full in (("hvp", "hessian"), ("ggn_vp", "ggn")):
        M = getattr(net, full)(p.theta, p.X, p.Y, reduction=reduction)
        compare(getattr(net, prod)(p.theta, p.X, p.Y, p.V, reduction=reduction), M @ p.V,
                rtol=RTOL_F64, what=f"{prod}(V)")
        compare(getattr(net, prod)(p.theta, p.X, p.Y, p.V[:, 1], reduction=reduction), M @ p.V[:, 1],
                rtol=RTOL_F64, what=f"{prod}(v)")


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("sizes, N", [([3, 2], 1), ([4, 3], 7), ([1, 5], 3)])
def test_single_layer_hessian_equals_ggn(sizes, N, loss):
    """f = X W + b is linear in theta, so every second derivative of f vanishes: H == G."""
    p = make_problem(sizes, "tanh", loss, N, l2=0.1)
    for red in REDUCTIONS:
        H = p.net.hessian(p.theta, p.X, p.Y, reduction=red)
        G = p.net.ggn(p.theta, p.X, p.Y, reduction=red)
        compare(H, G, rtol=RTOL_F64, what=f"H vs G ({red})")


@pytest.mark.parametrize("sizes, N", [([3, 2], 1), ([4, 6], 7)])
def test_gaussian_single_layer_hessian_is_exact_output_hessian(sizes, N):
    """gaussian on a linear f: H = J^T H_out J with the exact, indefinite output Hessian, and G
    the same with the Fisher, which differs from it (so a GGN taken for H fails here)."""
    p = make_problem(sizes, "tanh", "gaussian", N, l2=0.1)
    net, k, P = p.net, p.net.num_outputs, p.net.num_params
    J = net.jacobian(p.theta, p.X).reshape(N, k, P)
    F = net.predict(p.theta, p.X)
    for red in REDUCTIONS:
        l2 = (net.l2 if red == "mean" else 0.0) * np.eye(P)
        H = net.hessian(p.theta, p.X, p.Y, reduction=red)
        G = net.ggn(p.theta, p.X, p.Y, reduction=red)
        Cx = output_hessians(p, F, red, exact=True)
        compare(H, np.einsum("ncp,ncd,ndq->pq", J, Cx, J) + l2, rtol=RTOL_F64, what=f"H ({red})")
        compare(G, np.einsum("ncp,ncd,ndq->pq", J, output_hessians(p, F, red), J) + l2, rtol=RTOL_F64,
                what=f"G ({red})")
        assert np.abs(H - G).max() > 1e-2 * np.abs(H).max()
    assert np.linalg.eigvalsh(Cx[0]).min() < 0 < np.linalg.eigvalsh(Cx[0]).max()  # indefinite


@pytest.mark.parametrize("act", ["identity", "tanh"])
def test_multilayer_hessian_keeps_what_ggn_drops(act):
    """With two layers (even linear ones) and a non-zero residual, H - G is the bilinear /
    activation term: a reference that returned G for H would fail here (and in the FD test)."""
    p = make_problem([3, 4, 2], act, "mse", N=5)
    H = p.net.hessian(p.theta, p.X, p.Y)
    G = p.net.ggn(p.theta, p.X, p.Y)
    assert np.abs(H - G).max() > 1e-3 * np.abs(H).max()


def test_relu_hessian_of_network_with_no_active_units_is_zero_beyond_last_layer():
    """All hidden pre-activations negative: only the last layer's bias sees the data, so
    every Hessian entry outside the last layer's block vanishes (H == G there too)."""
    net = tk.MLP([2, 3, 2], activation="relu", loss="ce")
    W1 = -np.ones((2, 3))
    params = [(W1, -np.ones(3)), (np.arange(6.0).reshape(3, 2), np.array([0.3, -0.2]))]
    theta = net.flatten(params)
    X = np.abs(np.random.default_rng(0).standard_normal((4, 2)))
    Y = np.array([0, 1, 1, 0])
    H = net.hessian(theta, X, Y)
    o = net.offsets[1]
    assert np.all(H[:o, :] == 0) and np.all(H[:, :o] == 0)
    compare(H, net.ggn(theta, X, Y), rtol=RTOL_F64, what="H vs G, dead relu")
    assert np.abs(H[o:, o:]).max() > 0
