"""taylorkern.prune: saliencies from the full matrices, exact sequential OBS, pruning with
retraining under masks, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

import taylorkern as tk
from taylorkern import prune as pr


def _linear_problem(d=6, k=3, N=40, seed=0):
    """One linear layer with mse (a quadratic loss) at its exact least-squares minimum."""
    net = tk.MLP([d, k], loss="mse")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d)) @ (np.eye(d) + 0.5 * rng.standard_normal((d, d)))  # correlated
    Y = X @ rng.standard_normal((d, k)) + 0.3 * rng.standard_normal((N, k))
    Wb = np.linalg.lstsq(np.c_[X, np.ones(N)], Y, rcond=None)[0]
    return net, Wb.ravel().copy(), X, Y


def _nonlinear_problem(seed=0, loss="ce"):
    """A 5-8-3 tanh network trained (LM) on data from a random tanh teacher."""
    net = tk.MLP([5, 8, 3], activation="tanh", loss=loss, l2=1e-2)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((60, 5))
    T = np.tanh(X @ rng.standard_normal((5, 4))) @ rng.standard_normal((4, 3))
    Y = T.argmax(axis=1) if loss == "ce" else T + 0.1 * rng.standard_normal((60, 3))
    res = tk.minimize(net, net.init(seed=seed), X, Y, method="lm", max_iter=100)
    return net, res.theta, X, Y


def _constrained_lstsq(net, theta, X, Y, kept):
    """argmin of the mse over theta with theta[~kept] = 0, for a single linear layer."""
    J = net.jacobian(theta, X)  # f = J theta exactly
    sol = np.linalg.lstsq(J[:, kept], np.asarray(Y).ravel(), rcond=None)[0]
    out = np.zeros(net.num_params)
    out[kept] = sol
    return out


# ----------------------------------------------------------------------------- saliencies
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_obd_saliency_is_half_diag_times_theta_squared(curvature):
    net, theta, X, Y = _nonlinear_problem()
    B = net.hessian(theta, X, Y) if curvature == "hessian" else net.ggn(theta, X, Y)
    s = pr.saliency(net, theta, X, Y, "obd", curvature=curvature)
    np.testing.assert_allclose(s, 0.5 * np.diag(B) * theta ** 2, rtol=1e-10, atol=1e-16)
    s = pr.saliency(net, theta, X, Y, "obd", curvature=curvature, damping=0.1)
    np.testing.assert_allclose(s, 0.5 * (np.diag(B) + 0.1) * theta ** 2, rtol=1e-10, atol=1e-16)


def test_obs_taylor1_magnitude_saliencies():
    net, theta, X, Y = _nonlinear_problem()
    G = net.ggn(theta, X, Y)
    s = pr.saliency(net, theta, X, Y, "obs", damping=1e-3)
    Ginv = np.linalg.inv(G + 1e-3 * np.eye(net.num_params))
    np.testing.assert_allclose(s, theta ** 2 / (2 * np.diag(Ginv)), rtol=1e-8)
    assert np.all(s <= pr.saliency(net, theta, X, Y, "obd", damping=1e-3) * (1 + 1e-10))  # OBS <= OBD
    # over the kept parameters only: the inverse of the kept sub-matrix
    kept = np.ones(net.num_params, bool)
    kept[::3] = False
    sk = pr.saliency(net, theta, X, Y, "obs", damping=1e-3, mask=kept)
    Gk = np.linalg.inv(G[np.ix_(kept, kept)] + 1e-3 * np.eye(kept.sum()))
    np.testing.assert_allclose(sk[kept], theta[kept] ** 2 / (2 * np.diag(Gk)), rtol=1e-8)
    assert np.all(np.isinf(sk[~kept]))
    # blockwise: each layer's block inverted on its own
    sb = pr.saliency(net, theta, X, Y, "obs", damping=1e-3, blockwise=True)
    o = net.offsets
    for l in range(net.num_layers):
        Bl = G[o[l]:o[l + 1], o[l]:o[l + 1]] + 1e-3 * np.eye(o[l + 1] - o[l])
        np.testing.assert_allclose(sb[o[l]:o[l + 1]], theta[o[l]:o[l + 1]] ** 2 / (2 * np.diag(np.linalg.inv(Bl))),
                                   rtol=1e-8)
    _, g = net.loss_and_grad(theta, X, Y)
    np.testing.assert_allclose(pr.saliency(net, theta, X, Y, "taylor1"), np.abs(g * theta), rtol=1e-14)
    np.testing.assert_array_equal(pr.saliency(net, theta, X, Y, "magnitude"), np.abs(theta))


# ----------------------------------------------------------------------------- OBS is exact
@pytest.mark.parametrize("sparsity", [0.3, 0.7])
@pytest.mark.parametrize("steps", [1, 3])
def test_obs_predicts_the_loss_increase_exactly_on_a_quadratic_loss(sparsity, steps):
    net, theta, X, Y = _linear_problem()
    r = pr.prune(net, theta, X, Y, sparsity, method="obs", steps=steps, damping=0.0)
    for s in r.steps:
        assert s.n_removed > 0
        actual = s.loss_pruned - s.loss_before
        assert s.predicted_increase == pytest.approx(actual, rel=1e-9, abs=1e-14)
        assert s.model_increase == pytest.approx(actual, rel=1e-9, abs=1e-14)
    # and the compensated theta is the exact optimum with the pruned weights held at zero
    np.testing.assert_allclose(r.theta, _constrained_lstsq(net, theta, X, Y, r.mask), rtol=1e-9, atol=1e-12)
    assert np.all(r.theta[~r.mask] == 0)
    # OBD and magnitude remove weights without compensation: never better than OBS
    for m in ("obd", "magnitude"):
        other = pr.prune(net, theta, X, Y, sparsity, method=m, steps=steps)
        assert other.loss_final >= r.loss_final - 1e-12


def _brute_force_obs(B, theta, cand, n_remove):
    """Greedy OBS with a fresh inverse of B over the remaining parameters at every removal."""
    th = theta.astype(float).copy()
    alive = np.ones(len(th), bool)
    order, total = [], 0.0
    for _ in range(n_remove):
        idx = np.flatnonzero(alive)
        Binv = np.linalg.inv(B[np.ix_(idx, idx)])
        d = np.diag(Binv)
        sal = np.where(cand[idx], th[idx] ** 2 / (2 * d), np.inf)
        q = int(np.argmin(sal))
        total += sal[q]
        th[idx] -= th[idx[q]] / d[q] * Binv[:, q]
        th[idx[q]] = 0.0
        alive[idx[q]] = False
        order.append(int(idx[q]))
    return order, th, total


def test_sequential_obs_equals_reinverting_at_every_removal():
    # 130 parameters, 100 removals: crosses the lazy-update flushes (64) and compactions.
    net, theta, X, Y = _linear_problem(d=12, k=10, N=60, seed=3)
    B = net.ggn(theta, X, Y)
    cand = pr.weight_mask(net)
    n_remove = 100
    order, th_ref, total = _brute_force_obs(B, theta, cand, n_remove)
    r = pr.prune(net, theta, X, Y, n_remove / cand.sum(), method="obs", damping=0.0)
    assert r.steps[0].n_removed == n_remove
    assert set(np.flatnonzero(~r.mask)) == set(order)
    np.testing.assert_allclose(r.theta, th_ref, rtol=1e-8, atol=1e-10)
    assert r.steps[0].predicted_increase == pytest.approx(total, rel=1e-9)
    assert r.steps[0].predicted_increase == pytest.approx(r.steps[0].loss_pruned - r.steps[0].loss_before,
                                                          rel=1e-8)


def test_obs_blockwise_and_layer_scope():
    net, theta, X, Y = _nonlinear_problem()
    w = pr.weight_mask(net)
    layer = np.repeat(np.arange(net.num_layers), net.layer_sizes)
    for blockwise in (False, True):
        r = pr.prune(net, theta, X, Y, 0.5, method="obs", scope="layer", blockwise=blockwise)
        for l in range(net.num_layers):
            wl = w & (layer == l)
            assert np.sum(~r.mask & wl) == round(0.5 * wl.sum())  # every layer at the target
        assert np.all(r.mask[~w])  # biases kept
        for m in ("obd", "magnitude"):
            assert r.loss_final < pr.prune(net, theta, X, Y, 0.5, method=m, scope="layer").loss_final


# ----------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("retrain", ["lm", "lbfgs", "adam", "newton-cg"])
def test_pruned_weights_stay_zero_through_retraining(retrain):
    net, theta, X, Y = _nonlinear_problem(loss="mse")
    opts = {"max_iter": 15} if retrain != "adam" else {"max_iter": 30, "lr": 1e-2}
    r = pr.prune(net, theta, X, Y, 0.6, method="obd", steps=2, retrain=retrain, retrain_options=opts)
    assert len(r.steps) == 2 and r.steps[-1].sparsity == pytest.approx(0.6, abs=1 / 40)
    assert np.all(r.theta[~r.mask] == 0)  # exactly zero
    assert np.sum(~r.mask) == round(0.6 * pr.weight_mask(net).sum())
    for s in r.steps:
        assert s.retrain_nit > 0 and s.loss_retrained <= s.loss_pruned
    assert r.loss_final == pytest.approx(net.loss(r.theta, X, Y), rel=1e-12)
    # the second step's removals left the first step's zeros in place
    assert r.steps[1].n_pruned == r.steps[0].n_pruned + r.steps[1].n_removed


def test_retrain_callable_and_mask_violation_detected():
    net, theta, X, Y = _nonlinear_problem()
    seen = {}

    def good(net_, th, X_, Y_, kept):
        seen["kept"] = kept.copy()
        return th * np.where(kept, 1.01, 0.0)

    r = pr.prune(net, theta, X, Y, 0.5, method="magnitude", retrain=good)
    assert np.array_equal(seen["kept"], r.mask) and np.all(r.theta[~r.mask] == 0)

    def bad(net_, th, X_, Y_, kept):
        return th + 1e-3

    with pytest.raises(RuntimeError, match="pruned parameter"):
        pr.prune(net, theta, X, Y, 0.5, method="magnitude", retrain=bad)


def test_initial_mask_params_all_and_report():
    net, theta, X, Y = _nonlinear_problem()
    kept = np.ones(net.num_params, bool)
    kept[:10] = False
    r = pr.prune(net, theta, X, Y, 0.5, method="obs", params="all", mask=kept, steps=2)
    assert np.all(~r.mask[:10]) and np.all(r.theta[:10] == 0)
    assert np.sum(~r.mask) == round(0.5 * net.num_params)
    assert r.steps[0].loss_before == pytest.approx(net.loss(np.where(kept, theta, 0), X, Y))
    for s in r.steps:  # a sum of OBS saliencies of a positive definite (damped) G
        assert s.predicted_increase > 0 and np.isfinite(s.model_increase)
    assert r.steps[1].n_pruned == np.sum(~r.mask)
    text = r.table()
    assert "sparsity" in text and len(text.splitlines()) == 3


def test_taylor1_and_float32():
    net, theta, X, Y = _nonlinear_problem()
    net32 = tk.MLP(net.sizes, activation=net.activation, loss=net.loss_name, l2=net.l2, dtype=np.float32)
    r = pr.prune(net32, theta.astype(np.float32), X.astype(np.float32), Y, 0.5, method="taylor1")
    assert r.theta.dtype == np.float32 and np.all(r.theta[~r.mask] == 0)
    r = pr.prune(net32, theta.astype(np.float32), X.astype(np.float32), Y, 0.5, method="obs")
    assert r.theta.dtype == np.float32 and r.loss_final < 10


# ----------------------------------------------------------------------------- refusals
def test_obs_refuses_when_the_inverse_does_not_fit(monkeypatch):
    net, theta, X, Y = _nonlinear_problem()
    monkeypatch.setattr(pr, "available_memory", lambda: 1000.0)
    with pytest.raises(tk.TooLargeError, match=r"needs the n x n inverse curvature, about .*KiB"):
        pr.prune(net, theta, X, Y, 0.5, method="obs")
    # OBD needs no matrix
    assert pr.prune(net, theta, X, Y, 0.5, method="obd").sparsity == pytest.approx(0.5, abs=0.02)


def test_obs_on_an_indefinite_hessian_needs_damping():
    net = tk.MLP([3, 5, 2], activation="tanh", loss="mse")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))
    theta = net.init(seed=0) * 3
    assert np.linalg.eigvalsh(net.hessian(theta, X, Y))[0] < 0
    with pytest.raises(ValueError, match="not positive definite"):
        pr.prune(net, theta, X, Y, 0.5, method="obs", curvature="hessian", damping=0.0)


def test_bad_input():
    net, theta, X, Y = _linear_problem()
    with pytest.raises(ValueError, match="sparsity"):
        pr.prune(net, theta, X, Y, 1.5)
    with pytest.raises(ValueError, match="method"):
        pr.prune(net, theta, X, Y, 0.5, method="random")
    with pytest.raises(ValueError, match="mask"):
        pr.prune(net, theta, X, Y, 0.5, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="damping"):
        pr.saliency(net, theta, X, Y, "obd", damping=-1.0)
    with pytest.raises(ValueError, match="scope"):
        pr.prune(net, theta, X, Y, 0.5, scope="row")
    with pytest.raises(ValueError, match="theta"):
        pr.prune(net, theta[:-1], X, Y, 0.5)
