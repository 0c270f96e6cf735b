"""taylorkern.laplace against laplace-torch's full-GGN Laplace and its K-FAC (KronLaplace) on
the same network.

The network is rebuilt as torch's ``nn.Sequential(Linear, act, ..., Linear)`` in float64: a
``Linear`` holds W^T (out x in), so laplace-torch's parameter vector is, per layer,
[W^T.ravel(), b] and taylorkern's [W.ravel(), b]; ``_torch_order`` maps one to the other.
Both libraries then see the same data, prior precision and noise; the log marginal
likelihood, the posterior covariance and the GLM predictive must agree to float64 rounding
(measured: 3e-16 to 3e-14 relative).
Skipped when torch or laplace-torch is absent (neither is a dependency of taylorkern).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import compare, make_problem

from taylorkern import kfac, laplace

torch = pytest.importorskip("torch", reason="the laplace-torch comparison needs torch")
try:  # laplace-torch imports torchvision, which raises more than ImportError beside a mismatched torch
    with warnings.catch_warnings():  # their import-time deprecations (pytestmark below ignores them in tests)
        warnings.simplefilter("ignore")
        import laplace as laplace_torch
except ImportError:
    pytest.skip("the comparison needs laplace-torch (pip install laplace-torch)", allow_module_level=True)
except Exception as exc:  # noqa: BLE001 - an installed laplace-torch that cannot import: say why
    pytest.skip(f"laplace-torch is installed but does not import here ({type(exc).__name__}: {exc})",
                allow_module_level=True)

# laplace-torch's own imports and calls warn about torch APIs it uses (its deprecations, not ours)
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

RTOL = 1e-9  # float64 on both sides; the two sum the curvature and factorise it in different orders


@pytest.fixture(autouse=True)
def _torch_float64():
    """torch's default dtype float64 while a test runs: laplace-torch's curvature backend
    (curvlinops) makes some of its work vectors in the default dtype, which rounds its GGN to
    float32 (2.8e-8 relative here) when that is float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

_ACTS = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU}


def _torch_model(net, theta):
    layers = []
    params = net.unflatten(theta)
    for l, (W, b) in enumerate(params):
        lin = torch.nn.Linear(W.shape[0], W.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(np.array(b)))
        layers.append(lin)
        if l < len(params) - 1:
            layers.append(_ACTS[net.activations[l]]())
    return torch.nn.Sequential(*layers)


def _torch_order(net):
    """idx with theta_torch = theta[idx]."""
    idx = []
    for l, (a, b) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        o = net.offsets[l]
        W = np.arange(o, o + a * b).reshape(a, b)
        idx.extend(W.T.ravel())
        idx.extend(range(o + a * b, o + (a + 1) * b))
    return np.array(idx)


def _loader(X, Y, loss):
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float64))
    Yt = torch.from_numpy(np.asarray(Y, dtype=np.float64)) if loss == "mse" else torch.from_numpy(np.asarray(Y))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, Yt), batch_size=len(Xt))


@pytest.mark.parametrize(("loss", "sizes", "act", "N"), [
    ("mse", [3, 6, 2], "tanh", 25),
    ("mse", [2, 5, 4, 1], "sigmoid", 30),
    ("ce", [3, 5, 3], "tanh", 28),
])
def test_full_ggn_laplace_matches_laplace_torch(loss, sizes, act, N):
    p = make_problem(sizes, act, loss, N=N, seed=11)
    net, theta, X, Y = p.net, p.theta, p.X, p.Y
    sigma = 0.4 if loss == "mse" else 1.0
    prior = 0.7
    model = _torch_model(net, theta)
    likelihood = "regression" if loss == "mse" else "classification"
    la = laplace_torch.Laplace(model, likelihood, subset_of_weights="all", hessian_structure="full",
                               sigma_noise=sigma, prior_precision=prior)
    la.fit(_loader(X, Y, loss))
    post = laplace.fit(net, theta, X, Y, structure="full", prior_precision=prior, sigma_noise=sigma)
    order = _torch_order(net)
    # the layout maps: the same parameters, the same posterior precision
    compare(theta[order], la.mean.detach().numpy(), rtol=0, what="parameters")
    compare(post.covariance()[np.ix_(order, order)], la.posterior_covariance.detach().numpy(), rtol=RTOL,
            what="posterior covariance")
    compare(post.log_marginal_likelihood(), float(la.log_marginal_likelihood()), rtol=RTOL, what="lml")
    Xn = np.random.default_rng(2).standard_normal((9, sizes[0]))
    Xt = torch.from_numpy(Xn)
    mean, cov = post.predict_f(Xn, full_cov=True)
    if loss == "mse":
        f_mu, f_var = la(Xt, pred_type="glm")
    else:  # its public call gives probabilities only; the function-space Gaussian behind them
        f_mu, f_var = la._glm_predictive_distribution(Xt)
    compare(mean, f_mu.detach().numpy(), rtol=RTOL, what="GLM mean")
    compare(cov, f_var.detach().numpy(), rtol=RTOL, what="GLM predictive covariance")
    if loss == "ce":
        probs = la(Xt, pred_type="glm", link_approx="probit").detach().numpy()
        compare(post.predict(Xn, link="probit"), probs, rtol=RTOL, what="probit predictive")
    # other priors and noise from the same fit (laplace-torch's call also sets them: last)
    for prior2, sigma2 in [(2.5, sigma), (0.3, sigma * 1.7 if loss == "mse" else 1.0)]:
        ours = post.log_marginal_likelihood(prior2, sigma2)
        theirs = la.log_marginal_likelihood(torch.tensor(prior2),
                                            torch.tensor(sigma2) if loss == "mse" else None)
        compare(ours, float(theirs), rtol=RTOL, what=f"lml at prior {prior2}, sigma {sigma2}")


# ----------------------------------------------------------------------------- K-FAC (KronLaplace)
# laplace-torch's KronLaplace (its default curvlinops backend, curvlinops' KFAC of the GGN,
# "type-2" Fisher: the exact output Hessians' square roots, what taylorkern calls kind "exact")
# factorises each Linear's weight and bias apart (curvlinops' separate_weight_and_bias):
#
#   weight block  Bw kron Aw   (torch's W^T layout),   bias block  Bb,
#
# with Aw the mean of the layer inputs' outer products (no column of ones) and Bw, Bb the summed
# outer products of the backpropagated rows.  taylorkern factorises [W; b] together with the
# augmented inputs a~ = [a 1]: block scale (A kron B), A = mean a~ a~^T.  A's last row holds the
# inputs' mean, the W-b cross terms; with it set to (0, ..., 0, 1) the two are the same matrix:
# scale (A_in kron B) for W and scale B for b.  Two conventions differ, neither a definition:
# laplace-torch multiplies its likelihood factor f (1/2 for regression, 1 for classification)
# into a Kronecker pair as sqrt(f) on each factor, and curvlinops' mse rows are those of
# sum (f - y)^2 (Hessian 2 I) where taylorkern's are of mean_c (f - y)^2 (2/k I), so that
#
#   Aw = sqrt(f) A_in,   Bw = scale / sqrt(f) B,   Bb = scale B     (scale = k/2 mse, 1 ce).
#
# The tests check these factors, then rebuild taylorkern's K-FAC posterior from the factors with
# the cross terms dropped (the same Laplace code as structure="kfac": eigenbases, marginal
# likelihood, predictive) and compare it with laplace-torch's; and on a linear model with
# centred inputs, where the cross terms are zero, taylorkern's own structure="kfac" posterior.
# Measured (float64, torch 2.13 CPU, laplace-torch 0.3, curvlinops 3.0.1): factors within 5e-16
# relative, log marginal likelihoods 8e-16, GLM means 3e-16, GLM predictive covariances and
# variances of y 3.5e-15, probit probabilities 3e-16; asserted to RTOL (1e-9) as above.
# laplace-torch's sampled Kron (stochastic=True) draws with torch's generator: no common draws
# with taylorkern's kind "mc", which is left out here.
KRON_CASES = [("mse", [3, 6, 2], "tanh", 25), ("mse", [2, 5, 4, 1], "sigmoid", 30),
              ("ce", [3, 5, 3], "tanh", 28), ("ce", [4, 6, 5, 3], "tanh", 20)]


def _kron_torch(net, theta, X, Y, prior, sigma):
    """laplace-torch's fitted KronLaplace, taylorkern's scale (k/2 mse, 1 ce) and laplace-torch's
    likelihood factor f."""
    loss = net.loss_name
    model = _torch_model(net, theta)
    la = laplace_torch.Laplace(model, "regression" if loss == "mse" else "classification",
                               subset_of_weights="all", hessian_structure="kron",
                               sigma_noise=sigma, prior_precision=prior)
    la.fit(_loader(X, Y, loss))
    return la, 0.5 * net.num_outputs if loss == "mse" else 1.0, 0.5 if loss == "mse" else 1.0


def _without_cross_terms(post):
    """taylorkern's K-FAC posterior ``post`` with each layer's A_l[-1, :-1] (and its transpose)
    zeroed: the weight-and-bias-apart K-FAC, through the same posterior code."""
    K = post._parts[0].K
    net = post.net
    A = []
    for Al in K.A:
        Al = Al.copy()
        Al[-1, :-1] = Al[:-1, -1] = 0.0
        A.append(Al)
    K2 = kfac.KFAC(net, list(zip(A, K.B)), 0.0, K.kind, "sum", K.seed, K.mc_samples)
    parts = [laplace._KronPart(p.lo, p.hi, p.groups, K2, p.layer, p.scale) for p in post._parts]
    return laplace.Laplace(net, post.theta, "kfac", "ggn", parts, post.prior_precision, post.sigma_noise,
                           post.n_data, post._data_term)


def _compare_predictive(post, la, sizes, loss):
    Xn = np.random.default_rng(2).standard_normal((9, sizes[0]))
    Xt = torch.from_numpy(Xn)
    mean, cov = post.predict_f(Xn, full_cov=True)
    f_mu, f_var = la._glm_predictive_distribution(Xt)
    compare(mean, f_mu.detach().numpy(), rtol=RTOL, what="GLM mean")
    compare(cov, f_var.detach().numpy(), rtol=RTOL, what="GLM predictive covariance")
    if loss == "mse":
        compare(post.predict(Xn)[1], la(Xt, pred_type="glm")[1].detach().numpy()[:, np.arange(sizes[-1]),
                                                                                np.arange(sizes[-1])]
                + post.sigma_noise ** 2, rtol=RTOL, what="predictive variance of y")
    else:
        probs = la(Xt, pred_type="glm", link_approx="probit").detach().numpy()
        compare(post.predict(Xn, link="probit"), probs, rtol=RTOL, what="probit predictive")


@pytest.mark.parametrize(("loss", "sizes", "act", "N"), KRON_CASES)
def test_kfac_laplace_matches_laplace_torch_kron(loss, sizes, act, N):
    p = make_problem(sizes, act, loss, N=N, seed=11)
    net, theta, X, Y = p.net, p.theta, p.X, p.Y
    sigma = 0.4 if loss == "mse" else 1.0
    prior = np.random.default_rng(3).uniform(0.3, 3.0, net.num_layers)
    # laplace-torch's layer-wise prior is per parameter group: weight and bias of each Linear
    la, scale, f = _kron_torch(net, theta, X, Y, torch.from_numpy(np.repeat(prior, 2)), sigma)
    post = laplace.fit(net, theta, X, Y, structure="kfac", prior_precision=prior, sigma_noise=sigma)
    K = post._parts[0].K
    for l, d in enumerate(sizes[:-1]):
        Bw, Aw = (t.detach().numpy() for t in la.H_facs.kfacs[2 * l])
        (Bb,) = (t.detach().numpy() for t in la.H_facs.kfacs[2 * l + 1])
        compare(Aw, math.sqrt(f) * K.A[l][:d, :d], rtol=RTOL, what=f"layer {l + 1}: A (inputs)")
        compare(Bw, scale / math.sqrt(f) * K.B[l], rtol=RTOL, what=f"layer {l + 1}: B (weight)")
        compare(Bb, scale * K.B[l], rtol=RTOL, what=f"layer {l + 1}: B (bias)")
    sep = _without_cross_terms(post)
    compare(sep.log_marginal_likelihood(), float(la.log_marginal_likelihood()), rtol=RTOL, what="lml")
    _compare_predictive(sep, la, sizes, loss)
    for prior2, sigma2 in [(2.5, sigma), (0.3, sigma * 1.7 if loss == "mse" else 1.0)]:
        ours = sep.log_marginal_likelihood(prior2, sigma2)
        theirs = la.log_marginal_likelihood(torch.tensor(prior2), torch.tensor(sigma2) if loss == "mse" else None)
        compare(ours, float(theirs), rtol=RTOL, what=f"lml at prior {prior2}, sigma {sigma2}")
    # the cross terms are what separates the two: taylorkern's own posterior differs from theirs
    assert abs(post.log_marginal_likelihood() - sep.log_marginal_likelihood()) > 1e-6


@pytest.mark.parametrize(("loss", "sizes"), [("mse", [4, 3]), ("ce", [3, 4])])
def test_kfac_laplace_is_laplace_torch_kron_without_cross_terms(loss, sizes):
    """One Linear layer on centred inputs: the mean of the inputs is zero, so taylorkern's
    augmented A has no W-b cross terms and structure="kfac" is laplace-torch's KronLaplace."""
    p = make_problem(sizes, "tanh", loss, N=23, seed=5)
    X = p.X - p.X.mean(axis=0)
    net, theta, Y = p.net, p.theta, p.Y
    sigma = 0.6 if loss == "mse" else 1.0
    la, _, _ = _kron_torch(net, theta, X, Y, 0.8, sigma)
    post = laplace.fit(net, theta, X, Y, structure="kfac", prior_precision=0.8, sigma_noise=sigma)
    compare(post.log_marginal_likelihood(), float(la.log_marginal_likelihood()), rtol=RTOL, what="lml")
    _compare_predictive(post, la, sizes, loss)
