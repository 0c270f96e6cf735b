"""taylorkern.laplace: the Laplace posterior checked against a dense numpy computation.

The oracle here is written from the definitions, not from the module: the data curvature
from the reference backend's Jacobian (mse: J^T J / sigma^2; ce: sum_n J_n^T (diag p - p p^T) J_n;
bce: sum_n J_n^T diag(p (1 - p)) J_n; poisson and gaussian likewise from the output Hessians, or
the reference Hessian scaled as the module's docstring derives), the log likelihood from
the outputs, the posterior precision as a dense matrix, its log-determinant by
``numpy.linalg.slogdet`` and its inverse by ``numpy.linalg.inv``.  Gradients are checked by
central differences, the structures against the full matrix restricted to them.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest
from conftest import compare, make_problem, output_hessians, rtol_for

import taylorkern as tk
import taylorkern.model as model_module
from taylorkern import kfac, laplace

STRUCTURES = ("full", "diag", "blocks", "last-layer")


# ----------------------------------------------------------------------------- the oracle
def _dense(p, curvature, sigma):
    """(log likelihood, C) of problem p on the float64 reference: C the NLL's curvature (P, P)."""
    q = p.astype(np.float64)
    net, th, X, Y = q.net, q.theta, q.X, q.Y
    with tk.use_backend("reference"):
        F = net.predict(th, X)
        J = net.jacobian(th, X)
        H = net.hessian(th, X, Y, reduction="sum") if curvature == "hessian" else None
    N, k = F.shape
    if net.loss_name == "mse":
        R = F - Y.reshape(N, k)
        loglik = -0.5 * np.sum(R * R) / sigma ** 2 - 0.5 * N * k * math.log(2 * math.pi * sigma ** 2)
        # d^2/dtheta^2 of SSE / (2 sigma^2): J^T J / sigma^2 (+ residual term for the Hessian)
        C = J.T @ J / sigma ** 2 if H is None else H * (k / 2) / sigma ** 2
    else:
        if net.loss_name == "ce":
            Z = F - F.max(axis=1, keepdims=True)
            logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
            loglik, scale = float(np.sum(logp[np.arange(N), Y])), 1.0
        elif net.loss_name == "bce":  # a Bernoulli per output, log p = y f - softplus(f); a mean over k
            loglik, scale = float(np.sum(Y * F - np.logaddexp(0.0, F))), float(k)
        elif net.loss_name == "poisson":  # log p = y f - e^f - log y!; a mean over k
            lfact = sum(math.lgamma(v + 1.0) for v in Y.ravel())
            loglik, scale = float(np.sum(Y * F - np.exp(F))) - lfact, float(k)
        else:  # gaussian: y ~ N(mu, e^v) per pair; a mean over the h = k/2 pairs
            h = k // 2
            mu, v = F[:, :h], F[:, h:]
            R = Y.reshape(N, h) - mu
            loglik = float(-0.5 * np.sum(v + R * R * np.exp(-v))) - 0.5 * N * h * math.log(2 * math.pi)
            scale = float(h)
        Hout = output_hessians(q, F, reduction="sum")
        Jn = J.reshape(N, k, -1)
        C = scale * (np.einsum("nci,ncd,ndj->ij", Jn, Hout, Jn) if H is None else H)
    return loglik, C


def _restrict(net, C, structure):
    """C as the structure keeps it (zeros elsewhere), over the posterior's parameters."""
    if structure == "full":
        return C
    if structure == "diag":
        return np.diag(np.diag(C))
    o = net.offsets
    if structure == "last-layer":
        return C[o[-2]:, o[-2]:]
    out = np.zeros_like(C)
    for a, b in zip(o[:-1], o[1:]):
        out[a:b, a:b] = C[a:b, a:b]
    return out


def _delta(net, prior, structure):
    P = net.num_params - (net.offsets[-2] if structure == "last-layer" else 0)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim == 0:
        return np.full(P, float(prior))
    if prior.size == P:
        return prior
    if structure == "last-layer":
        return np.full(P, prior[0])
    return np.repeat(prior, net.layer_sizes)


def _dense_lml(p, structure, curvature, prior, sigma):
    loglik, C = _dense(p, curvature, sigma)
    net = p.net
    lo = net.offsets[-2] if structure == "last-layer" else 0
    d = _delta(net, prior, structure)
    Lam = _restrict(net, C, structure) + np.diag(d)
    th = p.theta.astype(np.float64)[lo:]
    sign, logdet = np.linalg.slogdet(Lam)
    assert sign > 0
    return loglik - 0.5 * th @ (d * th) + 0.5 * np.sum(np.log(d)) - 0.5 * logdet, Lam


def _prior(kind, net, structure, seed=1):
    rng = np.random.default_rng(seed)
    P = net.num_params - (net.offsets[-2] if structure == "last-layer" else 0)
    n_groups = 1 if structure == "last-layer" else net.num_layers
    return {"scalar": float(rng.uniform(0.3, 3.0)), "layer": rng.uniform(0.3, 3.0, n_groups),
            "diagonal": rng.uniform(0.3, 3.0, P)}[kind]


PROBLEMS = [
    ("mse", [3, 5, 2], "tanh", 9),
    ("mse", [2, 4, 3, 1], "sigmoid", 11),
    ("ce", [3, 6, 3], "tanh", 12),
    ("ce", [4, 3, 5, 2], "gelu", 7),
    ("bce", [3, 5, 2], "tanh", 10),
    ("poisson", [3, 5, 2], "tanh", 9),
    ("gaussian", [2, 4, 4], "tanh", 11),
]


def _case_id(c):
    return f"{c[0]}-{'x'.join(map(str, c[1]))}"


def _cross(kinds=("scalar", "layer", "diagonal")):
    """(case, structure, kind) for every combination; one problem per loss covers every
    structure and prior kind without the exhaustive mark, the other rotates through them."""
    out = []
    for i, case in enumerate(PROBLEMS):
        for j, structure in enumerate(STRUCTURES):
            for m, kind in enumerate(kinds):
                rep = i in (0, 3) or (i + j + m) % 3 == 0
                out.append(pytest.param(case, structure, kind, id=f"{_case_id(case)}-{structure}-{kind}",
                                        marks=() if rep else pytest.mark.exhaustive))
    return out


def _problem(loss, sizes, act, N, dtype=np.float64):
    return make_problem(sizes, act, loss, N=N, dtype=dtype, seed=3)


def _fit(p, structure, curvature="ggn", prior=1.0, sigma=1.0, **kfac_options):
    return laplace.fit(p.net, p.theta, p.X, p.Y, structure=structure, curvature=curvature,
                       prior_precision=prior, sigma_noise=sigma, **kfac_options)


# ----------------------------------------------------------------------------- marginal likelihood
@pytest.mark.parametrize(("case", "structure", "kind"), _cross())
def test_lml_matches_dense_slogdet(backend, case, structure, kind):
    p = _problem(*case)
    sigma = 0.7 if p.net.loss_name == "mse" else 1.0
    prior = _prior(kind, p.net, structure)
    post = _fit(p, structure, prior=prior, sigma=sigma)
    ref, _ = _dense_lml(p, structure, "ggn", prior, sigma)
    compare(post.log_marginal_likelihood(), ref, what="lml")
    # the same posterior evaluated at another prior and noise (the reuse path)
    prior2 = _prior(kind, p.net, structure, seed=7)
    sigma2 = 1.3 if p.net.loss_name == "mse" else 1.0
    ref2, _ = _dense_lml(p, structure, "ggn", prior2, sigma2)
    compare(post.log_marginal_likelihood(prior2, sigma2), ref2, what="lml at another prior")
    assert post.jitter == 0.0 and post.lml_jitter == 0.0


@pytest.mark.parametrize("case", PROBLEMS, ids=_case_id)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_lml_hessian_matches_dense(backend, case, structure):
    p = _problem(*case)
    # a prior large enough that the Hessian's precision is positive definite
    _, C = _dense(p, "hessian", 1.0)
    prior = 1.0 + max(0.0, -np.linalg.eigvalsh(C).min())
    post = _fit(p, structure, curvature="hessian", prior=prior)
    ref, _ = _dense_lml(p, structure, "hessian", prior, 1.0)
    compare(post.log_marginal_likelihood(), ref, what="lml (hessian)")
    assert post.jitter == 0.0


@pytest.mark.parametrize("dtype", [np.float32])
@pytest.mark.parametrize("case", PROBLEMS[::2], ids=lambda c: c[0])
def test_lml_float32(backend, case, dtype):
    p = _problem(*case, dtype=dtype)
    post = _fit(p, "full", prior=0.8)
    ref, _ = _dense_lml(p, "full", "ggn", 0.8, 1.0)
    compare(post.log_marginal_likelihood(), ref, dtype=dtype, what="lml float32")
    mean, var = post.predict_f(p.X[:4], full_cov=False)
    _, Lam = _dense_lml(p, "full", "ggn", 0.8, 1.0)
    with tk.use_backend("reference"):
        J = p.net.jacobian(p.theta.astype(np.float64), p.X[:4].astype(np.float64))
    ref_var = np.einsum("ij,ji->i", J, np.linalg.solve(Lam, J.T)).reshape(4, -1)
    compare(var, ref_var, dtype=dtype, what="variance float32")


def _fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def _check_lml_gradient(post, prior, sigma, kind, mse, g_prior, g_sigma, h=1e-6):
    """The marginal likelihood's gradient in the prior (scalar, or each entry) and in sigma
    against central differences; ce has no noise: its sigma gradient is 0."""
    if kind == "scalar":
        fd = _fd(lambda d: post.log_marginal_likelihood(d, sigma), prior, h)
        assert g_prior == pytest.approx(fd, rel=1e-6, abs=1e-7)
    else:
        prior = np.asarray(prior)
        assert np.shape(g_prior) == prior.shape
        fd = np.empty(prior.size)
        for i in range(prior.size):
            e = np.zeros(prior.size)
            e[i] = 1.0
            fd[i] = _fd(lambda t: post.log_marginal_likelihood(prior + t * e, sigma), 0.0, h)
        np.testing.assert_allclose(g_prior, fd, rtol=1e-6, atol=1e-7)
    if mse:
        fd = _fd(lambda s: post.log_marginal_likelihood(prior, s), sigma, h)
        assert g_sigma == pytest.approx(fd, rel=1e-6, abs=1e-7)
    else:
        assert g_sigma == 0.0


@pytest.mark.parametrize(("case", "structure", "kind"), _cross())
def test_lml_gradient_matches_finite_differences(case, structure, kind):
    p = _problem(*case)
    mse = p.net.loss_name == "mse"
    sigma = 0.8 if mse else 1.0
    prior = _prior(kind, p.net, structure)
    post = _fit(p, structure, prior=prior, sigma=sigma)
    value, g_prior, g_sigma = post.log_marginal_likelihood(prior, sigma, return_grad=True)
    assert value == pytest.approx(post.log_marginal_likelihood(prior, sigma), rel=1e-14)
    _check_lml_gradient(post, prior, sigma, kind, mse, g_prior, g_sigma)


@pytest.mark.parametrize("loss", ["mse", "ce", "bce", "poisson", "gaussian"])
def test_optimize_prior_reaches_a_stationary_maximum(loss):
    p = _problem(*[c for c in PROBLEMS if c[0] == loss][0])
    post = _fit(p, "full", prior=0.05)
    before = post.log_marginal_likelihood()
    res = post.optimize_prior()
    after = post.log_marginal_likelihood()
    assert res.success and after > before
    value, g_prior, g_sigma = post.log_marginal_likelihood(return_grad=True)
    assert value == pytest.approx(after, rel=1e-13)  # eigenvalues here, the posterior's Cholesky factor there
    # stationary in log prior and log sigma
    assert abs(g_prior * post.prior_precision) < 1e-4
    assert abs(g_sigma * post.sigma_noise) < 1e-4
    for f in (0.9, 1.1):  # and a maximum along each coordinate
        assert post.log_marginal_likelihood(post.prior_precision * f) < after
        if loss == "mse":
            assert post.log_marginal_likelihood(None, post.sigma_noise * f) < after
    # the posterior now uses the optimum: its predictions match a fresh fit there
    fresh = _fit(p, "full", prior=post.prior_precision, sigma=post.sigma_noise)
    compare(post.variance(), fresh.variance(), what="posterior after optimize_prior")


def test_marginal_likelihood_recovers_the_noise_level():
    """On data with a known noise level, the evidence-optimal sigma_noise of a trained network is
    close to it (a statistical check: 200 samples give sigma to about 5%)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (200, 1))
    y = np.sin(3 * x) + 0.1 * rng.standard_normal((200, 1))
    net = tk.MLP([1, 12, 1], activation="tanh", loss="mse", l2=1e-4)
    theta = tk.minimize(net, net.init(seed=0), x, y, method="lm", max_iter=200).theta
    post = laplace.fit(net, theta, x, y, prior_precision=1.0, sigma_noise=1.0)
    post.optimize_prior()
    assert 0.085 < post.sigma_noise < 0.115
    # and the predictive standard deviation of y at the data is about the noise level
    _, var = post.predict(x)
    assert 0.1 < np.sqrt(var.mean()) < 0.125


def test_update_and_assignment_refactorise():
    p = _problem(*PROBLEMS[0])
    post = _fit(p, "full", prior=1.0, sigma=1.0)
    Xn = p.X[:3]
    before = post.predict(Xn)[1]
    post.prior_precision, post.sigma_noise = 3.0, 0.5
    fresh = _fit(p, "full", prior=3.0, sigma=0.5)
    compare(post.predict(Xn)[1], fresh.predict(Xn)[1], what="after assignment")
    assert post.log_marginal_likelihood() == pytest.approx(fresh.log_marginal_likelihood(), rel=1e-12)
    assert not np.allclose(before, fresh.predict(Xn)[1])
    post.update(prior_precision=1.0, sigma_noise=1.0)
    compare(post.predict(Xn)[1], before, what="after update back")
    with pytest.raises(ValueError, match="prior_precision"):
        post.prior_precision = -1.0
    with pytest.raises(ValueError, match="sigma_noise"):
        post.sigma_noise = 0.0


def test_optimize_prior_per_layer():
    p = _problem(*PROBLEMS[0])
    post = _fit(p, "blocks", prior=np.ones(p.net.num_layers))
    post.optimize_prior()
    _, g, gs = post.log_marginal_likelihood(return_grad=True)
    assert np.shape(post.prior_precision) == (p.net.num_layers,)
    assert np.max(np.abs(g * post.prior_precision)) < 1e-4 and abs(gs * post.sigma_noise) < 1e-4


@pytest.mark.parametrize("kind", ["scalar", "diagonal"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_effective_num_params(structure, kind):
    p = _problem(*PROBLEMS[1])
    prior = _prior(kind, p.net, structure)
    post = _fit(p, structure, prior=prior, sigma=0.5)
    _, Lam = _dense_lml(p, structure, "ggn", prior, 0.5)
    d = _delta(p.net, prior, structure)
    ref = np.trace((Lam - np.diag(d)) @ np.linalg.inv(Lam))
    assert post.effective_num_params() == pytest.approx(ref, rel=1e-10)
    assert 0 < ref < post.n_params


# ----------------------------------------------------------------------------- structures
@pytest.mark.parametrize("case", PROBLEMS[:3:2], ids=lambda c: c[0])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_variance_and_covariance_match_restricted_inverse(backend, case, structure):
    p = _problem(*case)
    prior = _prior("diagonal", p.net, structure)
    post = _fit(p, structure, prior=prior)
    _, Lam = _dense_lml(p, structure, "ggn", prior, 1.0)
    Sigma = np.linalg.inv(Lam)
    compare(post.variance(), np.diag(Sigma), what="variance")
    cov = post.covariance()
    compare(cov, np.diag(Sigma) if structure == "diag" else Sigma, what="covariance")
    assert post.n_params == Lam.shape[0]


@pytest.mark.parametrize(("case", "structure", "kind"), _cross(kinds=("scalar", "diagonal")))
def test_predictive_matches_explicit_j_sigma_jt(backend, case, structure, kind):
    p = _problem(*case)
    mse = p.net.loss_name == "mse"
    sigma = 0.6 if mse else 1.0
    prior = _prior(kind, p.net, structure)
    post = _fit(p, structure, prior=prior, sigma=sigma)
    rng = np.random.default_rng(5)
    Xn = rng.standard_normal((13, p.net.sizes[0]))
    _, Lam = _dense_lml(p, structure, "ggn", prior, sigma)
    with tk.use_backend("reference"):
        J = p.net.jacobian(p.theta, Xn)
        F = p.net.predict(p.theta, Xn)
    J = J[:, p.net.offsets[-2]:] if structure == "last-layer" else J
    k = p.net.num_outputs
    cov = (J @ np.linalg.solve(Lam, J.T)).reshape(13, k, 13, k)
    cov = np.stack([cov[i, :, i, :] for i in range(13)])  # per point (k, k)
    mean, full = post.predict_f(Xn, full_cov=True)
    compare(mean, F, what="mean")
    compare(full, cov, what="output covariance")
    diag = np.diagonal(cov, axis1=1, axis2=2)
    if mse:
        m, var = post.predict(Xn)
        compare(var, diag + sigma ** 2, what="predictive variance (+noise)")
        _, var_f = post.predict(Xn, noise=False)
        compare(var_f, diag, what="predictive variance of f")
        _, c3 = post.predict(Xn, full_cov=True)
        compare(c3, cov + sigma ** 2 * np.eye(k), what="predictive covariance")
    elif p.net.loss_name == "poisson":  # the rate e^f of a Gaussian f: log-normal moments
        rate = np.exp(F + diag / 2)
        rcov = rate[:, :, None] * rate[:, None, :] * np.expm1(cov)
        m, var = post.predict(Xn)
        compare(m, rate, what="expected rate")
        compare(var, np.diagonal(rcov, axis1=1, axis2=2) + rate, what="count variance")
        _, c3 = post.predict(Xn, full_cov=True, noise=False)
        compare(c3, rcov, what="rate covariance")
    elif p.net.loss_name == "gaussian":  # the means, and the expected noise variance E[e^v]
        h = k // 2
        m, var = post.predict(Xn)
        compare(m, F[:, :h], what="means")
        compare(var, diag[:, :h] + np.exp(F[:, h:] + diag[:, h:] / 2), what="predictive variance")
        _, c3 = post.predict(Xn, full_cov=True, noise=False)
        compare(c3, cov[:, :h, :h], what="covariance of the means")
    else:
        probs = post.predict(Xn, link="probit")
        z = F / np.sqrt(1 + np.pi / 8 * np.diagonal(cov, axis1=1, axis2=2))
        if p.net.loss_name == "bce":  # a Bernoulli per output
            compare(probs, 1 / (1 + np.exp(-z)), what="probit")
        else:
            ref = np.exp(z - z.max(1, keepdims=True))
            compare(probs, ref / ref.sum(1, keepdims=True), what="probit")


def test_predict_in_chunks_matches_one_chunk(monkeypatch):
    p = _problem(*PROBLEMS[1])
    post = _fit(p, "full")
    Xn = np.random.default_rng(2).standard_normal((37, p.net.sizes[0]))
    whole = post.predict(Xn)
    monkeypatch.setattr(laplace, "_CHUNK_BYTES", 1)  # one row per chunk
    parts = post.predict(Xn)
    compare(parts, whole, rtol=1e-13, what="chunked predictive")


def test_mc_link_agrees_with_independent_sampling():
    p = _problem(*PROBLEMS[2])
    post = _fit(p, "full", prior=0.5)
    Xn = np.random.default_rng(4).standard_normal((6, p.net.sizes[0]))
    n = 20000
    mc = post.predict(Xn, link="mc", n_samples=n, seed=11)
    np.testing.assert_allclose(mc.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(mc, post.predict(Xn, link="mc", n_samples=n, seed=11))
    # independent Monte Carlo: sample theta-space Gaussian through the linearisation
    mean, cov = post.predict_f(Xn, full_cov=True)
    rng = np.random.default_rng(99)
    ref = np.empty_like(mc)
    for i in range(6):
        f = rng.multivariate_normal(mean[i], cov[i], size=n, method="eigh")
        e = np.exp(f - f.max(1, keepdims=True))
        ref[i] = (e / e.sum(1, keepdims=True)).mean(0)
    assert np.max(np.abs(mc - ref)) < 0.02  # two MC estimates, each with sd < 0.5/sqrt(n)
    # and with a sharp posterior the mc and probit predictions both become softmax(f)
    sharp = _fit(p, "full", prior=1e12)
    z = mean - mean.max(1, keepdims=True)
    soft = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    compare(sharp.predict(Xn, link="mc", n_samples=50), soft, rtol=1e-6, what="mc, sharp")
    compare(sharp.predict(Xn, link="probit"), soft, rtol=1e-6, what="probit, sharp")


def test_bce_mc_link_and_round_trip(tmp_path):
    """bce's Monte Carlo link averages the logistic over each output's marginal (against an
    independent estimate); with a sharp posterior both links become sigma(f); the posterior
    saves and loads; a noise level is refused by name."""
    p = _problem(*[c for c in PROBLEMS if c[0] == "bce"][0])
    post = _fit(p, "full", prior=0.5)
    Xn = np.random.default_rng(4).standard_normal((6, p.net.sizes[0]))
    n = 20000
    mc = post.predict(Xn, link="mc", n_samples=n, seed=11)
    np.testing.assert_array_equal(mc, post.predict(Xn, link="mc", n_samples=n, seed=11))
    mean, var = post.predict_f(Xn, full_cov=False)
    f = mean + np.sqrt(var) * np.random.default_rng(99).standard_normal((n,) + mean.shape)
    assert np.max(np.abs(mc - (1 / (1 + np.exp(-f))).mean(0))) < 0.02  # two estimates, sd < 0.5/sqrt(n)
    assert np.all(np.abs(mc - 0.5) < np.abs(1 / (1 + np.exp(-mean)) - 0.5))  # uncertainty pulls to 1/2
    sharp = _fit(p, "full", prior=1e12)
    compare(sharp.predict(Xn, link="mc", n_samples=50), 1 / (1 + np.exp(-mean)), rtol=1e-6, what="mc, sharp")
    compare(sharp.predict(Xn), 1 / (1 + np.exp(-mean)), rtol=1e-6, what="probit, sharp")
    back = laplace.load(post.save(tmp_path / "bce"))
    assert back.log_marginal_likelihood(0.7) == post.log_marginal_likelihood(0.7)
    np.testing.assert_array_equal(back.predict(Xn), post.predict(Xn))
    with pytest.raises(ValueError, match="sigma_noise: classification \\('bce'\\)"):
        _fit(p, "full", sigma=2.0)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_samples_have_the_posterior_moments(structure):
    p = _problem(*PROBLEMS[0])
    post = _fit(p, structure, prior=2.0, sigma=0.5)
    S = post.sample(40000, seed=3)
    assert S.shape == (40000, p.net.num_params) and S.dtype == p.net.dtype
    np.testing.assert_array_equal(S, post.sample(40000, seed=3))
    sl = post.param_slice
    np.testing.assert_array_equal(S[:, :sl.start], np.broadcast_to(p.theta[:sl.start], (40000, sl.start)))
    D = S[:, sl] - p.theta[sl]
    emp = D.T @ D / len(D)
    cov = post.covariance()
    cov = np.diag(cov) if cov.ndim == 1 else cov
    scale = np.max(np.abs(cov))
    assert np.max(np.abs(emp - cov)) < 0.05 * scale  # sampling error ~ sqrt(2/n) = 0.7%
    assert np.max(np.abs(D.mean(0))) < 0.05 * math.sqrt(scale)


# ----------------------------------------------------------------------------- jitter
def test_jitter_policy_on_an_indefinite_hessian():
    p = _problem("mse", [2, 6, 1], "tanh", 8)
    _, C = _dense(p, "hessian", 1.0)
    lo = np.linalg.eigvalsh(C).min()
    assert lo < -1e-3  # this problem's Hessian has negative curvature
    prior = 1e-3
    post = _fit(p, "full", curvature="hessian", prior=prior)
    lam_min = lo + prior
    assert post.jitter == pytest.approx(-lam_min, rel=1e-6)  # shifted to (about) zero, reported
    assert np.isfinite(post.log_marginal_likelihood()) and np.all(post.variance() > 0)
    # the Cholesky route (a varying prior) applies the same policy
    d = np.full(p.net.num_params, prior)
    d[0] *= 1.0000001
    v = post.log_marginal_likelihood(d)
    assert np.isfinite(v) and post.lml_jitter == pytest.approx(post.jitter, rel=1e-4)
    # and a large enough prior needs none
    assert _fit(p, "full", curvature="hessian", prior=1.0 - lo).jitter == 0.0


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("structure", (*STRUCTURES, "kfac", "kfac-mc"))
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_save_load_round_trip(tmp_path, structure, loss):
    case = [c for c in PROBLEMS if c[0] == loss][1]
    p = _problem(*case)
    opts = KFAC_KINDS["mc"] if structure == "kfac-mc" else {}
    structure = structure.removesuffix("-mc")
    kind = {"full": "layer", "diag": "diagonal", "blocks": "scalar", "last-layer": "diagonal",
            "kfac": "layer"}[structure]
    post = _fit(p, structure, prior=_prior(kind, p.net, structure), sigma=0.9 if loss == "mse" else 1.0, **opts)
    post.log_marginal_likelihood(1.5)  # computes the eigendecompositions, saved with it
    path = post.save(tmp_path / "post")
    assert path.endswith(".npz")
    with np.load(path, allow_pickle=False) as z:  # no object arrays
        assert all(z[name].dtype != object for name in z.files)
    back = laplace.load(path)
    assert (back.structure, back.curvature, back.n_params, back.sigma_noise) == (
        post.structure, post.curvature, post.n_params, post.sigma_noise)
    assert (back.kfac_kind, back.kfac_seed, back.kfac_mc_samples) == (
        post.kfac_kind, post.kfac_seed, post.kfac_mc_samples)
    if structure == "kfac":
        want = ("mc", 17, 3) if opts else ("exact", None, 1)
        assert (back.kfac_kind, back.kfac_seed, back.kfac_mc_samples) == want
        # the saved options remake the same factors
        again = _fit(p, structure, prior=back.prior_precision, sigma=back.sigma_noise, kfac_kind=back.kfac_kind,
                     **({"seed": back.kfac_seed, "mc_samples": back.kfac_mc_samples} if opts else {}))
        assert again.log_marginal_likelihood() == back.log_marginal_likelihood()
    else:
        assert back.kfac_kind is None
    np.testing.assert_array_equal(back.theta, post.theta)
    np.testing.assert_array_equal(back.prior_precision, post.prior_precision)
    assert back.log_marginal_likelihood() == post.log_marginal_likelihood()
    assert back.log_marginal_likelihood(0.7) == post.log_marginal_likelihood(0.7)
    Xn = np.random.default_rng(0).standard_normal((5, p.net.sizes[0]))
    np.testing.assert_array_equal(back.predict(Xn)[1] if loss == "mse" else back.predict(Xn),
                                  post.predict(Xn)[1] if loss == "mse" else post.predict(Xn))
    np.testing.assert_array_equal(back.sample(3, seed=1), post.sample(3, seed=1))


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match="path"):
        laplace.load(path)
    np.savez(path, meta=np.array('{"format": "other/9"}'))
    with pytest.raises(ValueError, match="unknown format"):
        laplace.load(path)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    p = _problem(*PROBLEMS[0])
    net, th, X, Y = p.net, p.theta, p.X, p.Y
    with pytest.raises(ValueError, match=r"structure: .*'full', 'diag', 'blocks', 'last-layer', 'kfac'"):
        laplace.fit(net, th, X, Y, structure="dense")
    with pytest.raises(ValueError, match="curvature"):
        laplace.fit(net, th, X, Y, curvature="fisher")
    with pytest.raises(TypeError, match="net"):
        laplace.fit("net", th, X, Y)
    for bad in (0.0, -1.0, float("nan"), np.ones(5), np.array([1.0, -1.0]), "a", [[1.0]]):
        with pytest.raises(ValueError, match="prior_precision"):
            laplace.fit(net, th, X, Y, prior_precision=bad)
    for bad in (0.0, -2.0, float("inf"), None):
        with pytest.raises(ValueError, match="sigma_noise"):
            laplace.fit(net, th, X, Y, sigma_noise=bad)
    with pytest.raises(ValueError, match="theta"):
        laplace.fit(net, th[:-1], X, Y)
    with pytest.raises(ValueError, match="X"):
        laplace.fit(net, th, X[:, :-1], Y)
    with pytest.raises(ValueError, match="Y"):
        laplace.fit(net, th, X, Y[:-1])
    post = laplace.fit(net, th, X, Y)
    with pytest.raises(ValueError, match="prior_precision"):
        post.log_marginal_likelihood(np.ones(3))
    with pytest.raises(ValueError, match="sigma_noise"):
        post.log_marginal_likelihood(1.0, -1.0)
    with pytest.raises(ValueError, match="X"):
        post.predict(np.ones((3, 7)))
    with pytest.raises(ValueError, match="n"):
        post.sample(0)
    with pytest.raises(ValueError, match="link"):
        post.predict(X, link="probit")
    pc = _problem(*PROBLEMS[2])
    with pytest.raises(ValueError, match="sigma_noise"):
        laplace.fit(pc.net, pc.theta, pc.X, pc.Y, sigma_noise=2.0)
    post_c = laplace.fit(pc.net, pc.theta, pc.X, pc.Y)
    with pytest.raises(ValueError, match="link"):
        post_c.predict(pc.X, link="logit")
    with pytest.raises(ValueError, match="n_samples"):
        post_c.predict(pc.X, link="mc", n_samples=0)
    for loss in ("huber", "soft_l1"):  # not normalised likelihoods
        pb = make_problem([3, 4, 1], "tanh", loss, N=6, seed=2)
        for structure in ("full", "kfac"):
            with pytest.raises(ValueError, match=f"net: .*'{loss}'"):
                laplace.fit(pb.net, pb.theta, pb.X, pb.Y, structure=structure)


def test_oversized_posterior_is_refused_with_the_memory_needed(monkeypatch):
    p = _problem(*PROBLEMS[0])
    calls = []
    monkeypatch.setattr(model_module, "_available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(p.net, "ggn", lambda *a, **k: calls.append(1))
    with pytest.raises(tk.TooLargeError, match=r"full Laplace posterior.*would need .*KiB"):
        laplace.fit(p.net, p.theta, p.X, p.Y, structure="full")
    assert not calls  # refused before any curvature was computed
    # the diagonal needs no P x P and is still possible
    assert laplace.fit(p.net, p.theta, p.X, p.Y, structure="diag").n_params == p.net.num_params


def test_network_l2_is_left_to_the_prior():
    p = _problem(*PROBLEMS[0])
    net_l2 = tk.MLP(p.net.sizes, activation=p.net.activation, loss="mse", l2=0.3)
    a = laplace.fit(net_l2, p.theta, p.X, p.Y, prior_precision=0.5).log_marginal_likelihood()
    b = _fit(p, "full", prior=0.5).log_marginal_likelihood()
    assert a == pytest.approx(b, rel=rtol_for(np.float64))


# ----------------------------------------------------------------------------- scikit-learn
@pytest.mark.parametrize("alpha", [1e-3, 0.0])
@pytest.mark.parametrize("outputs", [1, 2])
def test_regressor_pcov_and_return_std(alpha, outputs):
    pytest.importorskip("sklearn", reason="scikit-learn is installed with the 'test' extra")
    from taylorkern.sklearn import MLPRegressor
    rng = np.random.default_rng(8)
    X = rng.uniform(-1, 1, (40, 2))
    y = np.sin(2 * X[:, 0]) * X[:, 1] + 0.05 * rng.standard_normal(40)
    Y = y if outputs == 1 else np.column_stack([y, np.cos(X[:, 0]) + 0.05 * rng.standard_normal(40)])
    reg = MLPRegressor(hidden_layer_sizes=(4,), alpha=alpha, max_iter=100, random_state=0)
    with warnings_ignored():
        reg.fit(X, Y)
    net, th = reg.net_, reg.theta_
    Y2 = Y.reshape(40, -1)
    N, k = Y2.shape
    # curve_fit's covariance, regularised: s^2 (J^T J + rho I)^-1, rho = alpha N k / 2,
    # s^2 = SSE / (N k - dof), dof = tr(J^T J (J^T J + rho I)^-1)
    with tk.use_backend("reference"):
        J = net.jacobian(th, X)
        F = net.predict(th, X)
    rho = max(alpha * N * k / 2, 1e-12)
    A = J.T @ J
    M = np.linalg.inv(A + rho * np.eye(len(th)))
    g = np.linalg.eigvalsh(A)
    dof = np.sum(g / (g + rho))  # = tr(A M), without M's rounding where A is singular (alpha = 0)
    s2 = np.sum((F - Y2) ** 2) / (N * k - dof)
    assert reg.sigma_noise_ == pytest.approx(math.sqrt(s2), rel=1e-8)
    if alpha > 0:  # well conditioned: compare the matrix itself
        compare(reg.pcov_, s2 * M, rtol=1e-8, what="pcov_")
    Xn = rng.uniform(-1.5, 1.5, (7, 2))
    mean, std = reg.predict(Xn, return_std=True)
    np.testing.assert_array_equal(mean, reg.predict(Xn))
    assert std.shape == mean.shape
    with tk.use_backend("reference"):
        Jn = net.jacobian(th, Xn)
    var = np.einsum("ij,jk,ik->i", Jn, reg.pcov_, Jn).reshape(7, k) + reg.sigma_noise_ ** 2
    np.testing.assert_allclose(std.reshape(7, k), np.sqrt(var), rtol=1e-6)
    assert np.all(std >= reg.sigma_noise_)


@pytest.mark.parametrize("structure", [*STRUCTURES, "kfac"])
@pytest.mark.parametrize("case", PROBLEMS, ids=_case_id)
def test_integer_weights_are_repeated_rows(case, structure):
    """sample_weight as frequencies: integer weights 0-3 give the posterior of the data with
    each row repeated that many times (zero-weight rows dropped): n_data, the log marginal
    likelihood and its gradient at another prior (and noise), and the predictive."""
    p = _problem(*case)
    N = p.X.shape[0]
    w = np.random.default_rng(3).integers(0, 4, N).astype(np.float64)
    w[0], w[1], w[2] = 0.0, 2.0, 3.0
    w[3] = 1.0 if w.sum() == N else w[3]  # a total other than N, which the constants must count
    assert w.sum() != N
    rep = np.repeat(np.arange(N), w.astype(int))
    sigma = 0.8 if p.net.loss_name == "mse" else 1.0
    kw = dict(structure=structure, prior_precision=1.3, sigma_noise=sigma)
    a = laplace.fit(p.net, p.theta, p.X, p.Y, sample_weight=w, **kw)
    b = laplace.fit(p.net, p.theta, p.X[rep], p.Y[rep], **kw)
    assert a.n_data == b.n_data == len(rep)
    prior = _prior("layer" if structure != "last-layer" else "scalar", p.net, structure, seed=4)
    sigma2 = sigma * 1.1 if p.net.loss_name == "mse" else 1.0
    va, ga, sa = a.log_marginal_likelihood(prior, sigma2, return_grad=True)
    vb, gb, sb = b.log_marginal_likelihood(prior, sigma2, return_grad=True)
    assert va == pytest.approx(vb, rel=1e-11)
    compare(ga, gb, rtol=1e-10, what="lml gradient in the prior")
    assert sa == pytest.approx(sb, rel=1e-10, abs=1e-12)
    Xn = np.random.default_rng(5).standard_normal((4, p.net.sizes[0]))
    fa, va_ = a.predict_f(Xn, full_cov=False)
    fb, vb_ = b.predict_f(Xn, full_cov=False)
    np.testing.assert_array_equal(fa, fb)
    compare(va_, vb_, rtol=1e-9, what="predictive variance")


def test_weighted_regressor_pcov_is_the_weighted_curve_fit_covariance():
    """MLPRegressor.fit(..., sample_weight=w): pcov_ = s^2 (J^T W J + rho I)^-1 with
    rho = alpha (sum w) k / 2 and s^2 = sum w r^2 / ((sum w) k - dof), the weights as
    frequencies, so that return_std works on weighted fits too."""
    pytest.importorskip("sklearn", reason="scikit-learn is installed with the 'test' extra")
    from taylorkern.sklearn import MLPRegressor
    rng = np.random.default_rng(9)
    X = rng.uniform(-1, 1, (30, 2))
    y = np.sin(2 * X[:, 0]) + 0.1 * rng.standard_normal(30)
    w = rng.uniform(0.2, 3.0, 30)
    alpha = 1e-3
    reg = MLPRegressor(hidden_layer_sizes=(4,), alpha=alpha, max_iter=60, random_state=0)
    with warnings_ignored():
        reg.fit(X, y, sample_weight=w)
    net, th = reg.net_, reg.theta_
    with tk.use_backend("reference"):
        J = net.jacobian(th, X)
        r = net.predict(th, X)[:, 0] - y
    n = w.sum()
    rho = alpha * n / 2
    A = J.T @ (w[:, None] * J)
    g = np.linalg.eigvalsh(A)
    s2 = np.sum(w * r * r) / (n - np.sum(g / (g + rho)))
    assert reg.sigma_noise_ == pytest.approx(math.sqrt(s2), rel=1e-8)
    compare(reg.pcov_, s2 * np.linalg.inv(A + rho * np.eye(len(th))), rtol=1e-8, what="weighted pcov_")
    _, std = reg.predict(X[:3], return_std=True)
    assert np.all(std >= reg.sigma_noise_)


@contextlib.contextmanager
def warnings_ignored():
    """The short fits here need not converge: their ConvergenceWarning is beside the point."""
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def test_regressor_without_posterior_refuses_return_std():
    pytest.importorskip("sklearn", reason="scikit-learn is installed with the 'test' extra")
    from taylorkern.sklearn import MLPRegressor
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 3)), rng.standard_normal(20)
    reg = MLPRegressor(hidden_layer_sizes=(3,), max_iter=5, random_state=0)
    reg.laplace_max_params = 5
    with warnings_ignored():
        reg.fit(X, y)
    assert reg.pcov_ is None
    with pytest.raises(ValueError, match="return_std.*laplace_max_params"):
        reg.predict(X, return_std=True)


# ----------------------------------------------------------------------------- structure="kfac"
# The reference: the same K-FAC matrix, made dense by taylorkern.kfac (K.matrix() of the summed
# loss, times the NLL's scale), put through the dense oracle (slogdet, inv) and through the
# "full" structure's own formulas (a Laplace posterior over that matrix).
KFAC_CASES = [PROBLEMS[0], PROBLEMS[1], PROBLEMS[2], PROBLEMS[3]]


# K-FAC's kinds: the exact factors, and sampled ones (a fixed seed and draws per sample).
KFAC_KINDS = {"exact": {}, "mc": {"kfac_kind": "mc", "seed": 17, "mc_samples": 3}}


def _kfac_dense(p, prior, sigma, kfac_kind="exact", seed=None, mc_samples=1):
    """(lml, Lambda, C) of the K-FAC posterior, dense: C = scale (A kron B) per layer, the
    factors of ``kfac.factors`` of the summed loss with the same kind, seed and draws."""
    net = p.net
    K = kfac.factors(net, p.theta, p.X, p.Y, kind=kfac_kind, seed=seed, mc_samples=mc_samples, reduction="sum")
    scale = {"mse": 0.5 * net.num_outputs, "ce": 1.0, "gaussian": 0.5 * net.num_outputs}.get(
        net.loss_name, float(net.num_outputs))  # the NLL's scale (module docstring): k for bce and poisson
    C = scale * np.asarray(K.matrix(), dtype=np.float64)
    loglik, _ = _dense(p, "ggn", sigma)
    c = 1.0 / sigma ** 2 if net.loss_name == "mse" else 1.0
    d = _delta(net, prior, "kfac")
    Lam = c * C + np.diag(d)
    th = p.theta.astype(np.float64)
    sign, logdet = np.linalg.slogdet(Lam)
    assert sign > 0
    return loglik - 0.5 * th @ (d * th) + 0.5 * np.sum(np.log(d)) - 0.5 * logdet, Lam, C


def _kfac_as_full(p, C, prior, sigma):
    """A "full"-structure posterior whose curvature is the dense K-FAC matrix C."""
    post = _fit(p, "kfac", prior=prior, sigma=sigma)
    layer_of = np.repeat(np.arange(p.net.num_layers), p.net.layer_sizes)
    part = laplace._Part(0, p.net.num_params, layer_of, C)
    return laplace.Laplace(p.net, post.theta, "full", "ggn", [part], prior, sigma, post.n_data, post._data_term)


def _kfac_case(case, kind, seed=1):
    p = _problem(*case)
    sigma = 0.7 if p.net.loss_name == "mse" else 1.0
    return p, _prior(kind, p.net, "kfac", seed), sigma


# every likelihood, each with each kind
KFAC_LML_CASES = [pytest.param(c, kk, id=f"{_case_id(c)}-{kk}") for c in PROBLEMS for kk in KFAC_KINDS]


@pytest.mark.parametrize("kind", ["scalar", "layer"])
@pytest.mark.parametrize(("case", "kfac_kind"), KFAC_LML_CASES)
def test_kfac_lml_matches_dense_kfac_matrix(backend, case, kind, kfac_kind):
    opts = KFAC_KINDS[kfac_kind]
    p, prior, sigma = _kfac_case(case, kind)
    post = _fit(p, "kfac", prior=prior, sigma=sigma, **opts)
    ref, Lam, C = _kfac_dense(p, prior, sigma, **opts)
    compare(post.log_marginal_likelihood(), ref, what="kfac lml")
    full = _kfac_as_full(p, C, prior, sigma)
    compare(post.log_marginal_likelihood(), full.log_marginal_likelihood(), what="kfac lml against 'full'")
    # another prior and noise from the same factorisations
    prior2 = _prior(kind, p.net, "kfac", seed=7)
    sigma2 = 1.3 if p.net.loss_name == "mse" else 1.0
    compare(post.log_marginal_likelihood(prior2, sigma2), _kfac_dense(p, prior2, sigma2, **opts)[0],
            what="kfac lml at another prior")
    compare(post.effective_num_params(), full.effective_num_params(), what="effective parameters")
    assert post.jitter == 0.0 and post.lml_jitter == 0.0 and post.n_params == p.net.num_params


def test_kfac_is_the_exact_posterior_where_kfac_is_exact():
    """One linear layer under mse: A kron B is the GGN for any number of samples, so the K-FAC
    posterior is the full one (no K-FAC code in the reference)."""
    p = make_problem([4, 3], "tanh", "mse", N=17, seed=5)
    prior, sigma = 0.9, 0.4
    post, ref = _fit(p, "kfac", prior=prior, sigma=sigma), _fit(p, "full", prior=prior, sigma=sigma)
    compare(post.log_marginal_likelihood(), _dense_lml(p, "full", "ggn", prior, sigma)[0], what="lml")
    compare(post.log_marginal_likelihood(1.7, 0.6, return_grad=True),
            ref.log_marginal_likelihood(1.7, 0.6, return_grad=True), what="lml and gradient")
    Xn = np.random.default_rng(3).standard_normal((9, 4))
    compare(post.predict(Xn), ref.predict(Xn), what="predictive")


@pytest.mark.parametrize("kfac_kind", list(KFAC_KINDS))
@pytest.mark.parametrize("kind", ["scalar", "layer"])
@pytest.mark.parametrize("case", KFAC_CASES, ids=_case_id)
def test_kfac_lml_gradient(case, kind, kfac_kind):
    opts = KFAC_KINDS[kfac_kind]
    p, prior, sigma = _kfac_case(case, kind)
    mse = p.net.loss_name == "mse"
    post = _fit(p, "kfac", prior=prior, sigma=sigma, **opts)
    value, g_prior, g_sigma = post.log_marginal_likelihood(prior, sigma, return_grad=True)
    full = _kfac_as_full(p, _kfac_dense(p, prior, sigma, **opts)[2], prior, sigma)
    compare((value, g_prior, g_sigma), full.log_marginal_likelihood(prior, sigma, return_grad=True),
            what="kfac lml gradient against 'full'")
    _check_lml_gradient(post, prior, sigma, kind, mse, g_prior, g_sigma)


@pytest.mark.parametrize(("kind", "kfac_kind"), [("scalar", "exact"), ("layer", "exact"), ("layer", "mc")])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_kfac_optimize_prior(loss, kind, kfac_kind):
    opts = KFAC_KINDS[kfac_kind]
    case = [c for c in PROBLEMS if c[0] == loss][1]
    p, prior, sigma = _kfac_case(case, kind)
    post = _fit(p, "kfac", prior=prior, sigma=sigma, **opts)
    before = post.log_marginal_likelihood()
    res = post.optimize_prior()
    assert res.success
    after, g_prior, g_sigma = post.log_marginal_likelihood(return_grad=True)
    assert after >= before
    # stationary in log space (to L-BFGS-B's default tolerances)
    np.testing.assert_allclose(np.atleast_1d(g_prior) * np.atleast_1d(post.prior_precision), 0.0, atol=1e-3)
    assert abs(g_sigma * post.sigma_noise) < 1e-3
    assert np.ndim(post.prior_precision) == np.ndim(prior)
    # the "full" formulas over the same matrix reach the same optimum
    full = _kfac_as_full(p, _kfac_dense(p, prior, sigma, **opts)[2], prior, sigma)
    full.optimize_prior()
    compare(post.log_marginal_likelihood(), full.log_marginal_likelihood(), rtol=1e-8, what="optimum")


@pytest.mark.parametrize("kfac_kind", list(KFAC_KINDS))
@pytest.mark.parametrize("case", KFAC_CASES, ids=_case_id)
def test_kfac_moments_and_predictive(backend, case, kfac_kind):
    opts = KFAC_KINDS[kfac_kind]
    p, prior, sigma = _kfac_case(case, "layer")
    post = _fit(p, "kfac", prior=prior, sigma=sigma, **opts)
    _, Lam, C = _kfac_dense(p, prior, sigma, **opts)
    Sigma = np.linalg.inv(Lam)
    compare(post.variance(), np.diag(Sigma), what="variance")
    compare(post.covariance(), Sigma, what="covariance")
    Xn = np.random.default_rng(5).standard_normal((13, p.net.sizes[0]))
    with tk.use_backend("reference"):
        J = p.net.jacobian(p.theta, Xn)
        F = p.net.predict(p.theta, Xn)
    k = p.net.num_outputs
    cov = (J @ Sigma @ J.T).reshape(13, k, 13, k)
    cov = np.stack([cov[i, :, i, :] for i in range(13)])
    mean, full_cov = post.predict_f(Xn, full_cov=True)
    compare(mean, F, what="mean")
    compare(full_cov, cov, what="output covariance")
    full = _kfac_as_full(p, C, prior, sigma)
    if p.net.loss_name == "mse":
        compare(post.predict(Xn), full.predict(Xn), what="predictive (+noise)")
        compare(post.predict(Xn, full_cov=True), full.predict(Xn, full_cov=True), what="predictive covariance")
    else:
        compare(post.predict(Xn, link="probit"), full.predict(Xn, link="probit"), what="probit")
        compare(post.predict(Xn, link="mc", n_samples=30), full.predict(Xn, link="mc", n_samples=30),
                rtol=1e-9, what="mc link")


def test_kfac_predictive_with_dead_relu_units():
    """The predictive reads each layer's input and output derivative off the Jacobian's blocks;
    where a point's relu units are all off, a layer's block is zero, and so is its share."""
    p = make_problem([3, 5, 4, 2], "relu", "ce", N=11, seed=4)
    net, th = p.net, p.theta.copy()
    W1, b1 = net.unflatten(th)[0]
    rng = np.random.default_rng(8)
    Xn = rng.standard_normal((12, 3))
    Xn[:4] = -20.0 * np.sign(W1.sum(axis=1))[None, :] * np.abs(rng.standard_normal((4, 3)))  # some dead units
    post = laplace.fit(net, th, p.X, p.Y, structure="kfac", prior_precision=np.array([0.5, 1.5, 1.0]))
    _, Lam, _ = _kfac_dense(p, np.array([0.5, 1.5, 1.0]), 1.0)
    with tk.use_backend("reference"):
        J = net.jacobian(th, Xn)
    cov = (J @ np.linalg.solve(Lam, J.T)).reshape(12, 2, 12, 2)
    cov = np.stack([cov[i, :, i, :] for i in range(12)])
    compare(post.predict_f(Xn)[1], cov, what="output covariance, relu")
    compare(post.predict_f(Xn, full_cov=False)[1], np.diagonal(cov, axis1=1, axis2=2), what="variances, relu")
    # the first four points have every unit of the first hidden layer off: the first layer's
    # block of their Jacobian is zero (the others' is not)
    zero = np.all(J.reshape(12, 2, -1)[:, :, :net.offsets[1]] == 0, axis=(1, 2))
    np.testing.assert_array_equal(zero, np.arange(12) < 4)


def test_kfac_predict_in_chunks_matches_one_chunk(monkeypatch):
    p = _problem(*PROBLEMS[3])
    post = _fit(p, "kfac", prior=np.array([0.5, 2.0, 1.0]))
    Xn = np.random.default_rng(2).standard_normal((23, p.net.sizes[0]))
    whole = post.predict_f(Xn)
    monkeypatch.setattr(laplace, "_CHUNK_BYTES", 1)
    compare(post.predict_f(Xn), whole, rtol=1e-13, what="chunked predictive")


@pytest.mark.parametrize("kfac_kind", list(KFAC_KINDS))
@pytest.mark.parametrize("case", KFAC_CASES[:3:2], ids=_case_id)
def test_kfac_samples_are_the_posterior_square_root(case, kfac_kind):
    """theta - theta* = S z with the generator's own z: with more draws than parameters, S is
    recovered from the draws by least squares, and S S^T must be the dense K-FAC covariance."""
    opts = KFAC_KINDS[kfac_kind]
    p, prior, sigma = _kfac_case(case, "layer")
    post = _fit(p, "kfac", prior=prior, sigma=sigma, **opts)
    P = p.net.num_params
    n = 3 * P
    D = (post.sample(n, seed=4) - p.theta).T  # (P, n)
    Z = np.random.default_rng(4).standard_normal((P, n))
    S = np.linalg.lstsq(Z.T, D.T, rcond=None)[0].T  # D = S Z
    compare(S @ Z, D, rtol=1e-10, what="draws are linear in the generator's normals")
    Sigma = np.linalg.inv(_kfac_dense(p, prior, sigma, **opts)[1])
    compare(S @ S.T, Sigma, rtol=1e-10, what="S S^T")
    # block diagonal: each layer's draws come from that layer's normals only
    o = p.net.offsets
    assert np.all(S[o[0]:o[1], o[1]:] == 0.0) or np.max(np.abs(S[o[0]:o[1], o[1]:])) < 1e-12 * np.max(np.abs(S))


def test_kfac_bad_input():
    p = _problem(*PROBLEMS[1])
    net, th, X, Y = p.net, p.theta, p.X, p.Y
    P = net.num_params
    with pytest.raises(ValueError, match=r"prior_precision: structure='kfac'.*per-parameter"):
        laplace.fit(net, th, X, Y, structure="kfac", prior_precision=np.ones(P))
    with pytest.raises(ValueError, match=r"curvature: structure='kfac'"):
        laplace.fit(net, th, X, Y, structure="kfac", curvature="hessian")
    post = laplace.fit(net, th, X, Y, structure="kfac")
    for call in (lambda: post.log_marginal_likelihood(np.ones(P)),
                 lambda: post.update(prior_precision=np.ones(P)),
                 lambda: setattr(post, "prior_precision", np.ones(P))):
        with pytest.raises(ValueError, match=r"prior_precision: structure='kfac'"):
            call()
    for bad in (0.0, -1.0, np.ones(net.num_layers + 1), np.array([1.0, -1.0, 1.0])):
        with pytest.raises(ValueError, match="prior_precision"):
            laplace.fit(net, th, X, Y, structure="kfac", prior_precision=bad)
    assert post.prior_precision == 1.0  # unchanged by the refusals
    assert "structure='kfac'" in repr(post)


# ----------------------------------------------------------------------------- kfac_kind="mc"
def test_kfac_mc_is_reproducible_from_its_seed(tmp_path):
    p, prior, sigma = _kfac_case(PROBLEMS[2], "layer")
    a = _fit(p, "kfac", prior=prior, sigma=sigma, kfac_kind="mc", seed=3, mc_samples=2)
    b = _fit(p, "kfac", prior=prior, sigma=sigma, kfac_kind="mc", seed=3, mc_samples=2)
    c = _fit(p, "kfac", prior=prior, sigma=sigma, kfac_kind="mc", seed=4, mc_samples=2)
    Xn = np.random.default_rng(1).standard_normal((6, p.net.sizes[0]))
    for l in range(p.net.num_layers):
        np.testing.assert_array_equal(a._parts[l].K.B[l], b._parts[l].K.B[l])
    assert a.log_marginal_likelihood() == b.log_marginal_likelihood()
    np.testing.assert_array_equal(a.predict(Xn), b.predict(Xn))
    np.testing.assert_array_equal(a.sample(4, seed=2), b.sample(4, seed=2))
    assert c.log_marginal_likelihood() != a.log_marginal_likelihood()
    # A does not depend on the draws; the exact kind's A is the same
    ex = _fit(p, "kfac", prior=prior, sigma=sigma)
    for l in range(p.net.num_layers):
        np.testing.assert_array_equal(c._parts[0].K.A[l], ex._parts[0].K.A[l])
    # seed=None draws a seed, records it, and that seed remakes the posterior
    d = _fit(p, "kfac", prior=prior, sigma=sigma, kfac_kind="mc")
    assert isinstance(d.kfac_seed, int) and d.kfac_seed >= 0 and d.kfac_mc_samples == 1
    e = _fit(p, "kfac", prior=prior, sigma=sigma, kfac_kind="mc", seed=d.kfac_seed)
    assert e.log_marginal_likelihood() == d.log_marginal_likelihood()
    back = laplace.load(d.save(tmp_path / "drawn"))  # the drawn seed (128 bits) through the JSON header
    assert back.kfac_seed == d.kfac_seed and back.log_marginal_likelihood() == d.log_marginal_likelihood()
    assert "kfac_kind='mc'" in repr(d)


@pytest.mark.parametrize("case", [PROBLEMS[0], PROBLEMS[2]], ids=_case_id)
def test_kfac_mc_approaches_the_exact_kind(case):
    """B's draws average to the exact B: the Monte Carlo error falls as 1/sqrt(mc_samples).
    Deterministic (fixed seed, the same draws on every backend), so the bounds cannot flake;
    measured on these problems: B's relative Frobenius error 0.09-0.16 at 30 draws per sample
    and 0.0023-0.0035 at 20,000 (sqrt(20000/30) = 26 times smaller expected); at 20,000 the
    marginal likelihood within 2.8e-4 relative, the variances 1.7e-3 and the predictive
    covariances 1.1e-3.  The bounds below leave a factor of about 3 or more on those."""
    p, prior, sigma = _kfac_case(case, "layer")
    ex = _fit(p, "kfac", prior=prior, sigma=sigma)
    Ke = ex._parts[0].K

    def errors(M):
        post = _fit(p, "kfac", prior=prior, sigma=sigma, kfac_kind="mc", seed=11, mc_samples=M)
        K = post._parts[0].K
        eB = max(np.linalg.norm(b - be) / np.linalg.norm(be) for b, be in zip(K.B, Ke.B))
        return post, eB

    _, few = errors(30)
    post, many = errors(20_000)
    assert many < 0.01 and many < few / 8, (few, many)
    compare(post.log_marginal_likelihood(), ex.log_marginal_likelihood(), rtol=1e-3, what="lml, mc against exact")
    compare(post.variance(), ex.variance(), rtol=1e-2, what="variance, mc against exact")
    Xn = np.random.default_rng(6).standard_normal((8, p.net.sizes[0]))
    compare(post.predict_f(Xn)[1], ex.predict_f(Xn)[1], rtol=1e-2, what="predictive covariance, mc against exact")


def test_kfac_options_bad_input():
    p = _problem(*PROBLEMS[1])
    net, th, X, Y = p.net, p.theta, p.X, p.Y
    with pytest.raises(ValueError, match=r"kfac_kind: expected one of \('exact', 'mc'\)"):
        laplace.fit(net, th, X, Y, structure="kfac", kfac_kind="kflr")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="mc_samples: expected an integer >= 1"):
            laplace.fit(net, th, X, Y, structure="kfac", kfac_kind="mc", mc_samples=bad)
    for bad in (-1, 0.5, np.random.default_rng(0), "1"):
        with pytest.raises(ValueError, match="seed: expected an integer >= 0"):
            laplace.fit(net, th, X, Y, structure="kfac", kfac_kind="mc", seed=bad)
    with pytest.raises(ValueError, match="kfac_kind: .*structure='kfac' only"):
        laplace.fit(net, th, X, Y, structure="full", kfac_kind="mc")
    with pytest.raises(ValueError, match="seed: .*structure='kfac' only"):
        laplace.fit(net, th, X, Y, structure="blocks", seed=1)
    with pytest.raises(ValueError, match="mc_samples: seed and mc_samples apply to kfac_kind='mc' only"):
        laplace.fit(net, th, X, Y, structure="kfac", mc_samples=4)
    with pytest.raises(ValueError, match="seed: seed and mc_samples apply to kfac_kind='mc' only"):
        laplace.fit(net, th, X, Y, structure="kfac", seed=0)
