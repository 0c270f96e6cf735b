"""taylorkern.spectrum: Lanczos, exact eigenvalues, Hutchinson, SLQ, condition numbers, per layer.

Reference values come from the full matrices (``net.hessian``/``net.ggn`` and their blocks)
and ``numpy.linalg.eigvalsh``; the estimators are checked on matrices whose trace and
spectrum are known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import taylorkern as tk
from taylorkern import spectrum as sp

# Lanczos stops at residual <= 1e-8 |B|; an eigenvalue's error is at most its residual (and
# usually its square), so 1e-8 relative to max|lambda| is the stated accuracy.
LANCZOS_RTOL = 1e-8


def _problem(sizes=(4, 7, 5, 3), activation="tanh", loss="ce", N=30, l2=0.0, seed=0):
    net = tk.MLP(list(sizes), activation=activation, loss=loss, l2=l2)
    rng = np.random.default_rng(seed)
    theta = net.init(seed=seed) * 1.5 + 0.1 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((N, sizes[0]))
    Y = rng.integers(0, sizes[-1], N) if loss == "ce" else rng.standard_normal((N, sizes[-1]))
    return net, theta, X, Y


@pytest.fixture(scope="module")
def prob():
    # mse with N k = 120 > P = 93: G has no null space.  (A softmax GGN has one of dimension
    # >= d_{L-1} + 1, a degenerate eigenvalue 0, which a Krylov method finds only as many
    # times as its block size allows, see test_lanczos_finds_repeated_eigenvalues.)
    return _problem(loss="mse", N=40)


@pytest.fixture(scope="module")
def prob_ce():
    return _problem(loss="ce", N=30)


def _matrix(net, theta, X, Y, curvature, layer=None):
    if layer is None:
        return net.hessian(theta, X, Y) if curvature == "hessian" else net.ggn(theta, X, Y)
    blocks = net.hessian_blocks(theta, X, Y) if curvature == "hessian" else net.ggn_blocks(theta, X, Y)
    return blocks[layer]


# ----------------------------------------------------------------------------- Lanczos
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
@pytest.mark.parametrize("block_size", [1, 3])
def test_lanczos_matches_eigvalsh(prob, curvature, which, block_size):
    net, theta, X, Y = prob
    ev = np.linalg.eigvalsh(_matrix(net, theta, X, Y, curvature))
    k = 4
    e = sp.eigenvalues(net, theta, X, Y, k=k, which=which, curvature=curvature, method="lanczos",
                       block_size=block_size, seed=1, return_vectors=True)
    ref = {"largest": ev[-k:], "smallest": ev[:k], "both": np.r_[ev[:k], ev[-k:]]}[which]
    scale = np.abs(ev).max()
    assert e.method == "lanczos" and e.converged.all()
    assert np.max(np.abs(e.values - ref)) <= LANCZOS_RTOL * scale
    # the vectors are orthonormal eigenvectors: B v = lambda v up to the stated residual
    B = _matrix(net, theta, X, Y, curvature)
    V = e.vectors
    np.testing.assert_allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-10)
    res = np.linalg.norm(B @ V - V * e.values, axis=0)
    np.testing.assert_allclose(res, e.residuals, rtol=1e-4, atol=1e-12)
    if which == "largest":  # extreme, well separated: fewer products than columns of B
        assert e.n_products < net.num_params


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_lanczos_per_layer_matches_block_eigvalsh(prob_ce, layer):
    net, theta, X, Y = prob_ce
    ev = np.linalg.eigvalsh(_matrix(net, theta, X, Y, "hessian", layer % net.num_layers))
    # The last layer's block of a softmax loss has the eigenvalue 0 d_{L-1} + 1 = 6 times
    # (adding c 1^T to [W; b] leaves the softmax unchanged): a block of 6 finds every copy.
    bs = 6 if layer == -1 else 1
    e = sp.eigenvalues(net, theta, X, Y, k=2, which="both", layer=layer, method="lanczos", block_size=bs)
    assert np.max(np.abs(e.values - np.r_[ev[:2], ev[-2:]])) <= LANCZOS_RTOL * np.abs(ev).max()
    ex = sp.eigenvalues(net, theta, X, Y, k=2, which="both", layer=layer, method="exact")
    np.testing.assert_allclose(ex.values, np.r_[ev[:2], ev[-2:]], rtol=1e-12, atol=1e-14)


def test_exact_eigenvalues_and_auto(prob):
    net, theta, X, Y = prob
    ev = np.linalg.eigvalsh(net.hessian(theta, X, Y))
    np.testing.assert_allclose(sp.exact_eigenvalues(net, theta, X, Y), ev, rtol=1e-12, atol=1e-14)
    e = sp.eigenvalues(net, theta, X, Y, k=3, return_vectors=True)  # auto: small P -> exact
    assert e.method == "exact" and e.n_products == 0
    np.testing.assert_allclose(e.values, ev[-3:], rtol=1e-12)
    H = net.hessian(theta, X, Y)
    np.testing.assert_allclose(H @ e.vectors, e.vectors * e.values, atol=1e-12)


def test_lanczos_finds_repeated_eigenvalues():
    # A Krylov space from b starting vectors holds at most b copies of a repeated eigenvalue:
    # block_size >= the multiplicity finds every copy; a single vector finds one, and the
    # values it returns are still eigenvalues.
    rng = np.random.default_rng(3)
    d = np.r_[[5.0, 5.0, 5.0], np.linspace(-1, 1, 27)]
    Q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    A = (Q * d) @ Q.T
    e = sp.lanczos(A, k=3, which="largest", block_size=3, seed=0)
    np.testing.assert_allclose(e.values, [5, 5, 5], rtol=1e-9)
    e1 = sp.lanczos(A, k=3, which="largest", block_size=1, seed=0)
    assert e1.values[-1] == pytest.approx(5.0, rel=1e-9)
    assert all(np.min(np.abs(d - v)) < 1e-8 for v in e1.values)
    e = sp.lanczos(lambda V: A @ V, 30, k=3, which="smallest", seed=0)
    np.testing.assert_allclose(e.values, np.sort(d)[:3], atol=1e-9)
    # an exhausted Krylov space (A = 2 I has a one-dimensional one) continues with fresh
    # random directions, so every copy is found
    e = sp.lanczos(2.0 * np.eye(12), k=5, which="largest", seed=0)
    np.testing.assert_allclose(e.values, 2.0, rtol=1e-12)


def test_lanczos_full_basis_is_exact_and_small_basis_warns():
    rng = np.random.default_rng(4)
    M = rng.standard_normal((40, 40))
    A = M + M.T
    ev = np.linalg.eigvalsh(A)
    e = sp.lanczos(A, k=20, which="both", max_basis=40)
    np.testing.assert_allclose(e.values, ev, atol=1e-10)
    assert e.basis_size == 40
    with pytest.warns(RuntimeWarning, match="did not reach"):
        e = sp.lanczos(A, k=1, which="smallest", max_basis=3, tol=1e-14)
    assert not e.converged.all()


def test_lanczos_seeded_and_deterministic(prob):
    net, theta, X, Y = prob
    a = sp.eigenvalues(net, theta, X, Y, k=2, method="lanczos", seed=7)
    b = sp.eigenvalues(net, theta, X, Y, k=2, method="lanczos", seed=7)
    assert np.array_equal(a.values, b.values) and a.n_products == b.n_products


def test_float32_network_lanczos():
    net, theta, X, Y = _problem(loss="mse")
    net32 = tk.MLP(net.sizes, activation=net.activation, loss=net.loss_name, dtype=np.float32)
    ev = np.linalg.eigvalsh(net.hessian(theta, X, Y))
    e = sp.eigenvalues(net32, theta.astype(np.float32), X.astype(np.float32), Y.astype(np.float32),
                       k=2, method="lanczos", tol=1e-5)
    assert e.values.dtype == np.float64
    np.testing.assert_allclose(e.values, ev[-2:], rtol=1e-4)


# ----------------------------------------------------------------------------- trace
def test_trace_exact_and_per_layer(prob_ce):
    net, theta, X, Y = prob_ce
    for curvature in ("hessian", "ggn"):
        t = sp.trace(net, theta, X, Y, curvature)
        B = _matrix(net, theta, X, Y, curvature)
        assert t.method == "exact" and t.stderr == 0
        assert t.value == pytest.approx(np.trace(B), rel=1e-12, abs=1e-13)
        blocks = [np.trace(_matrix(net, theta, X, Y, curvature, l)) for l in range(net.num_layers)]
        np.testing.assert_allclose(t.per_layer, blocks, rtol=1e-12, atol=1e-13)
        assert sp.trace(net, theta, X, Y, curvature, layer=1).value == pytest.approx(blocks[1], rel=1e-12)


def test_hutchinson_exact_on_diagonal_matrix():
    # z_i^2 = 1 for Rademacher z: the estimate of a diagonal matrix's trace has no variance.
    d = np.linspace(-3, 7, 25)
    t = sp.hutchinson(np.diag(d), n_probes=5, seed=0)
    assert t.value == pytest.approx(d.sum(), rel=1e-14) and t.stderr == pytest.approx(0, abs=1e-13)


@pytest.mark.parametrize("kind", ["spd", "indefinite", "low-rank"])
def test_hutchinson_within_stated_error_on_known_matrices(kind):
    rng = np.random.default_rng(11)
    n = 60
    M = rng.standard_normal((n, n))
    A = {"spd": M @ M.T / n, "indefinite": (M + M.T) / 2, "low-rank": M[:, :3] @ M[:, :3].T}[kind]
    exact = np.trace(A)
    # Var(z^T A z) = 2 sum_{i != j} A_ij^2 for Rademacher z: the stated error must match it.
    sd = math.sqrt(2 * (np.sum(A * A) - np.sum(np.diag(A) ** 2)))
    z_scores = []
    for seed in range(20):
        t = sp.hutchinson(A, n_probes=200, seed=seed, batch=64)
        assert t.stderr == pytest.approx(sd / math.sqrt(200), rel=0.35)
        z_scores.append((t.value - exact) / t.stderr)
    z = np.abs(np.array(z_scores))
    assert z.max() < 4.0          # every estimate within 4 stated standard errors
    assert np.mean(z < 2.0) >= 0.8  # ~95% within 2 (at least 16 of 20)


def test_hutchinson_trace_of_network_within_stated_error(prob_ce):
    net, theta, X, Y = prob_ce
    H = net.hessian(theta, X, Y)
    t = sp.trace(net, theta, X, Y, "hessian", method="hutchinson", n_probes=300, seed=2)
    assert t.method == "hutchinson" and t.n_probes == 300 and t.samples.shape == (300,)
    assert abs(t.value - np.trace(H)) <= 4 * t.stderr
    offs = net.offsets
    for l in range(net.num_layers):
        exact = np.trace(H[offs[l]:offs[l + 1], offs[l]:offs[l + 1]])
        assert abs(t.per_layer[l] - exact) <= 4 * t.per_layer_stderr[l] + 1e-12
    tl = sp.trace(net, theta, X, Y, "hessian", layer=0, method="hutchinson", n_probes=300, seed=2)
    assert abs(tl.value - np.trace(H[:offs[1], :offs[1]])) <= 4 * tl.stderr


# ----------------------------------------------------------------------------- density
def test_slq_quadrature_is_exact_with_a_full_krylov_space():
    rng = np.random.default_rng(5)
    n = 20
    d = np.linspace(-2.0, 3.0, n)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * d) @ Q.T
    nodes, weights = sp.slq(A, n_probes=4, n_steps=n, seed=0)
    np.testing.assert_allclose(np.nansum(weights, axis=1), 1.0, rtol=1e-12)
    for i in range(4):  # n steps: the nodes are the eigenvalues themselves
        np.testing.assert_allclose(np.sort(nodes[i]), d, atol=1e-10)


def test_slq_moments_match_probe_quadratic_forms():
    # Gauss quadrature with m nodes integrates polynomials of degree < 2m exactly:
    # sum_j w_j node_j^p = z^T A^p z / n for the (normalised) probe.
    rng = np.random.default_rng(6)
    n = 80
    M = rng.standard_normal((n, n))
    A = (M + M.T) / (2 * math.sqrt(n))
    nodes, weights = sp.slq(A, n_probes=3, n_steps=6, seed=1)
    Z = np.random.default_rng(1).integers(0, 2, size=(n, 3)).astype(float) * 2 - 1
    for p in (1, 2, 5):
        Ap = np.linalg.matrix_power(A, p)
        expect = np.einsum("np,nm,mp->p", Z, Ap, Z) / n
        np.testing.assert_allclose(np.nansum(weights * nodes ** p, axis=1), expect, rtol=1e-9, atol=1e-12)


def test_density_of_network(prob_ce):
    net, theta, X, Y = prob_ce
    ev = np.linalg.eigvalsh(net.hessian(theta, X, Y))
    d = sp.density(net, theta, X, Y, "hessian", n_probes=20, n_steps=40, seed=0)
    assert d.method == "slq" and d.values.shape == d.grid.shape and np.all(d.values >= 0)
    assert np.trapezoid(d.values, d.grid) == pytest.approx(1.0, abs=1e-3)
    # the extreme nodes converge to the extreme eigenvalues first
    assert np.nanmax(d.nodes) == pytest.approx(ev[-1], rel=1e-6)
    assert np.nanmin(d.nodes) == pytest.approx(ev[0], rel=1e-6)
    frac, se = d.fraction_below(0.0, return_stderr=True)
    assert abs(frac - np.mean(ev < 0)) <= 4 * se + 0.02
    assert d.moment(1) == pytest.approx(ev.mean(), abs=0.05 * np.abs(ev).max())  # trace / n
    de = sp.density(net, theta, X, Y, "hessian", method="exact")
    assert de.fraction_below(0.0) == pytest.approx(np.mean(ev < 0))


# ----------------------------------------------------------------------------- condition
def test_condition_number_exact_and_lanczos():
    net, theta, X, Y = _problem(sizes=(3, 4, 2), loss="mse", N=40, l2=0.05)
    G = net.ggn(theta, X, Y)  # positive definite (l2 > 0)
    c = sp.condition_number(net, theta, X, Y, "ggn")
    assert c.method == "exact" and c.rank == net.num_params
    assert c.cond == pytest.approx(np.linalg.cond(G), rel=1e-8)
    assert c.cond_nonzero == pytest.approx(c.cond)
    cl = sp.condition_number(net, theta, X, Y, "ggn", method="lanczos")
    assert cl.converged and cl.cond == pytest.approx(c.cond, rel=1e-6)


def test_condition_number_of_singular_ggn():
    # mse GGN = 2/(N k) J^T J has rank <= N k: with N k < P it is singular.
    net, theta, X, Y = _problem(sizes=(4, 6, 2), loss="mse", N=5)
    c = sp.condition_number(net, theta, X, Y, "ggn")
    ev = np.linalg.eigvalsh(net.ggn(theta, X, Y))
    assert c.cond == math.inf and c.rank == 10 == np.linalg.matrix_rank(net.jacobian(theta, X))
    nz = np.sort(ev)[-10:]
    assert c.cond_nonzero == pytest.approx(nz[-1] / nz[0], rel=1e-6)
    cl = sp.condition_number(net, theta, X, Y, "ggn", method="lanczos")
    assert cl.cond == math.inf


def test_layer_spectra_match_blocks(prob):
    net, theta, X, Y = prob
    rows = sp.layer_spectra(net, theta, X, Y, "hessian")
    assert [r["n"] for r in rows] == list(net.layer_sizes)
    for l, r in enumerate(rows):
        ev = np.linalg.eigvalsh(_matrix(net, theta, X, Y, "hessian", l))
        assert r["lambda_max"] == pytest.approx(ev[-1], rel=1e-10)
        assert r["lambda_min"] == pytest.approx(ev[0], rel=1e-10)
        assert r["trace"] == pytest.approx(ev.sum(), rel=1e-9, abs=1e-12)
    lz = sp.layer_spectra(net, theta, X, Y, "ggn", method="lanczos")
    for l, r in enumerate(lz):
        ev = np.linalg.eigvalsh(_matrix(net, theta, X, Y, "ggn", l))
        assert r["lambda_max"] == pytest.approx(ev[-1], rel=1e-7)


# ----------------------------------------------------------------------------- bad input
def test_bad_input(prob):
    net, theta, X, Y = prob
    with pytest.raises(ValueError, match="curvature"):
        sp.eigenvalues(net, theta, X, Y, curvature="fisher", method="lanczos")
    with pytest.raises(ValueError, match="layer"):
        sp.eigenvalues(net, theta, X, Y, layer=3)
    with pytest.raises(ValueError, match="k:"):
        sp.eigenvalues(net, theta, X, Y, k=net.num_params + 1)
    with pytest.raises(ValueError, match="which"):
        sp.lanczos(np.eye(3), k=1, which="middle")
    with pytest.raises(ValueError, match="theta"):
        sp.trace(net, theta[:-1], X, Y, method="hutchinson")
    with pytest.raises(TypeError, match="net"):
        sp.trace("net", theta, X, Y)
    with pytest.raises(ValueError, match="n_probes"):
        sp.hutchinson(np.eye(3), n_probes=1)
