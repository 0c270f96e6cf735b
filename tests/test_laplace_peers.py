"""taylorkern.laplace against laplace-torch's full-GGN Laplace on the same network.

The network is rebuilt as torch's ``nn.Sequential(Linear, act, ..., Linear)`` in float64: a
``Linear`` holds W^T (out x in), so laplace-torch's parameter vector is, per layer,
[W^T.ravel(), b] and taylorkern's [W.ravel(), b]; ``_torch_order`` maps one to the other.
Both libraries then see the same data, prior precision and noise; the log marginal
likelihood, the posterior covariance and the GLM predictive must agree to float64 rounding
(measured: 3e-16 to 3e-14 relative).
Skipped when torch or laplace-torch is absent (neither is a dependency of taylorkern).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compare, make_problem

from taylorkern import laplace

torch = pytest.importorskip("torch", reason="the laplace-torch comparison needs torch")
laplace_torch = pytest.importorskip("laplace", reason="the comparison needs laplace-torch (pip install laplace-torch)")

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
