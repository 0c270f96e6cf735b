"""taylorkern.kfac and MLP.kfac_factors: K-FAC's factors against a direct numpy construction
(from the network's Jacobian and the output Hessians written out here), every backend against
the reference, the one-layer exactness, the operations (mv, inverse_mv, logdet, EKFAC) against
dense numpy on the same matrices, quality(), the kfac optimizer, bad input, and curvlinops where
it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import case_param, compare, make_problem, output_hessians, rel_err, rtol_for

import taylorkern as tk
from taylorkern import kfac

# ----------------------------------------------------------------------------- direct oracle


def _softmax(F):
    E = np.exp(F - F.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def _act(name, z):
    return {"identity": z, "tanh": np.tanh(z), "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)),
            "softplus": np.logaddexp(0, z), "sin": np.sin(z)}[name]


def direct_factors(net, theta, X, reduction="mean", noise=None, p=None):
    """(A_l, B_l) from a forward pass written out here and the per-sample Jacobians of the
    outputs with respect to each layer's pre-activations, read off net.jacobian's bias columns
    (df/db_l = df/dz_l); B_l = sum_n D_n^T C_n D_n with C_n the (scaled) output Hessian, or the
    outer product of sampled gradients for noise (ce's labels by the softmax's inverse CDF, the
    other losses' rows as _noise gives them).  The
    losses other than mse and ce take C from conftest's output_hessians of problem p."""
    N, k = X.shape[0], net.num_outputs
    s = 1.0 / N if reduction == "mean" else 1.0
    a, ins = X, []
    for l, (W, b) in enumerate(net.unflatten(theta)):
        ins.append(np.hstack([a, np.ones((N, 1))]))
        z = a @ W + b
        a = _act(net.activations[l], z) if l < net.num_layers - 1 else z
    F = a
    J = net.jacobian(theta, X).reshape(N, k, -1)
    if noise is None:
        if net.loss_name == "mse":
            C = np.broadcast_to(2.0 * s / k * np.eye(k), (N, k, k))
        elif net.loss_name != "ce":
            C = output_hessians(p, F, reduction)
        else:
            p = _softmax(F)
            C = s * (np.einsum("nc,cd->ncd", p, np.eye(k)) - np.einsum("nc,nd->ncd", p, p))
    else:
        M = noise.shape[1]
        if net.loss_name != "ce":  # the unit-weight gradient rows of the MLP's draws
            g = np.sqrt(s) * noise
        else:
            p = _softmax(F)
            g = np.empty((N, M, k))
            for n in range(N):
                for m in range(M):
                    label = min(int(np.searchsorted(np.cumsum(p[n]), noise[n, m], side="right")), k - 1)
                    g[n, m] = np.sqrt(s) * (p[n] - np.eye(k)[label])
        C = np.einsum("nmc,nmd->ncd", g, g) / M
    out = []
    for l in range(net.num_layers):
        o, Db = net.offsets[l + 1], net.sizes[l + 1]
        D = J[:, :, o - Db:o]  # (N, k, d_l): the bias columns
        out.append((ins[l].T @ ins[l] / N, np.einsum("nci,ncd,ndj->ij", D, C, D)))
    return out


KINDS_CASES = [case_param(s, act, loss, n) for s, act, loss, n in [
    ([3, 2], "tanh", "mse", 1), ([2, 5, 1], "relu", "mse", 4), ([4, 1, 3], "sigmoid", "ce", 6),
    ([3, 4, 3, 5, 2], "tanh", "ce", 5), ([5, 8, 6, 3], "softplus", "mse", 9), ([6, 7, 4], "sin", "ce", 1),
    ([3, 6, 4], "identity", "ce", 11)]]


def _noise(net, N, M, seed):
    """The MLP's draws for a seed: ce's uniforms, mse's sqrt(2/k) eps (the gradient rows of
    targets drawn around f, their mean outer product 2/k I)."""
    rng = np.random.default_rng(seed)
    k = net.num_outputs
    return rng.random((N, M)) if net.loss_name == "ce" else math.sqrt(2.0 / k) * rng.standard_normal((N, M, k))


@pytest.mark.parametrize("case", KINDS_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_factors_match_the_direct_construction(case, reduction):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, seed=3)
    with tk.use_backend("reference"):
        got = p.net.kfac_factors(p.theta, p.X, p.Y, reduction=reduction)
    compare(got, direct_factors(p.net, p.theta, p.X, reduction), rtol=1e-12, what="exact factors")
    for A, B in got:  # symmetric, positive semi-definite
        for M in (A, B):
            np.testing.assert_array_equal(M, M.T) if M is A else compare(M, M.T, rtol=1e-14)
            assert np.linalg.eigvalsh(M)[0] >= -1e-12 * max(1.0, np.abs(M).max())
    # the sampled factors, with the MLP's draws for a seed
    noise = _noise(p.net, N, 3, 7)
    with tk.use_backend("reference"):
        sampled = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=7, mc_samples=3, reduction=reduction)
    compare(sampled, direct_factors(p.net, p.theta, p.X, reduction, noise), rtol=1e-12, what="mc factors")


@pytest.mark.parametrize("case", KINDS_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_backend_matches_the_reference(backend, case, dtype):
    sizes, act, loss, N = case
    p64 = make_problem(sizes, act, loss, N, seed=4)
    p = p64.astype(dtype)
    for kind, extra in (("exact", {}), ("mc", dict(seed=11, mc_samples=4))):
        for reduction in ("mean", "sum"):
            got = p.net.kfac_factors(p.theta, p.X, p.Y, kind=kind, reduction=reduction, **extra)
            assert all(A.dtype == dtype and B.dtype == dtype for A, B in got)
            with tk.use_backend("reference"):
                want = p64.net.kfac_factors(p64.theta, p64.X, p64.Y, kind=kind, reduction=reduction, **extra)
            compare(got, want, dtype, what=f"{backend} {kind} {reduction}")
            bases = _random_bases(p64.net, 5)
            got = p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases, kind=kind, reduction=reduction, **extra)
            assert all(S.dtype == dtype for S in got)
            with tk.use_backend("reference"):
                want = p64.net.kfac_eigen_scales(p64.theta, p64.X, p64.Y, bases, kind=kind, reduction=reduction,
                                                 **extra)
            compare(got, want, dtype, what=f"{backend} {kind} {reduction} EKFAC eigenvalues")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_input_factor_false_skips_only_the_first_A(backend, dtype):
    """input_factor=False: None for the first layer's A, every other factor bit for bit the one of
    the full call (the same chunks, threads and sums), for both kinds and with weights; the
    skipped A is the one a later call on the same data would give."""
    p = make_problem([7, 9, 5, 3], "tanh", "ce", 300, seed=6).astype(dtype)
    w = np.random.default_rng(1).integers(0, 4, 300).astype(float)
    for kind, extra in (("exact", {}), ("mc", dict(seed=3, mc_samples=2))):
        for weights in (None, w):
            full = p.net.kfac_factors(p.theta, p.X, p.Y, kind=kind, sample_weight=weights, **extra)
            part = p.net.kfac_factors(p.theta, p.X, p.Y, kind=kind, sample_weight=weights, input_factor=False,
                                      **extra)
            assert part[0][0] is None
            np.testing.assert_array_equal(part[0][1], full[0][1])
            for (A, B), (A2, B2) in zip(full[1:], part[1:]):
                np.testing.assert_array_equal(A2, A)
                np.testing.assert_array_equal(B2, B)
            moved = p.net.kfac_factors(p.theta + 0.05, p.X, p.Y, kind=kind, sample_weight=weights, **extra)
            np.testing.assert_array_equal(moved[0][0], full[0][0])
    with pytest.raises(TypeError, match="input_factor"):
        p.net.kfac_factors(p.theta, p.X, p.Y, input_factor="no")


def _random_bases(net, seed):
    """Random orthogonal (Qa, Qb) per layer (QR of Gaussian matrices)."""
    rng = np.random.default_rng(seed)
    return [(np.linalg.qr(rng.standard_normal((a + 1, a + 1)))[0], np.linalg.qr(rng.standard_normal((b, b)))[0])
            for a, b in zip(net.sizes[:-1], net.sizes[1:])]


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_cpp_many_chunks_and_two_threads(loss, restore_threads):
    if "cpp" not in tk.available_backends():
        pytest.skip("the compiled backend is not built here")
    from taylorkern import _core
    p = make_problem([7, 9, 5, 4], "tanh", loss, 700, seed=5)
    with tk.use_backend("reference"):
        want = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=1, mc_samples=2)
    old = _core._set_chunk_bytes(4096)
    try:
        with tk.use_backend("cpp"):
            for n in (1, 2):
                tk.set_num_threads(n)
                first = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=1, mc_samples=2)
                compare(first, want, what=f"{n} threads")
                p.net.hessian_blocks(p.theta, p.X, p.Y)  # the pooled workspace used by another call
                again = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=1, mc_samples=2)
                assert all(np.array_equal(x, y) for a, b in zip(first, again) for x, y in zip(a, b))
                bases = _random_bases(p.net, 1)
                with tk.use_backend("reference"):
                    want_s = p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases)
                compare(p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases), want_s, what=f"EKFAC {n} threads")
    finally:
        _core._set_chunk_bytes(old)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_numba_many_chunks_and_pieces(loss, monkeypatch, restore_threads):
    """The numba kernels over several chunks of samples per call (a small chunk budget) and
    several calls (pieces of samples, summed by the backend with the weights applied once)."""
    if "numba" not in tk.available_backends():
        pytest.skip("numba is not installed here")
    import taylorkern.backends.numba as nb
    p = make_problem([7, 9, 5, 4], "tanh", loss, 300, seed=5)
    bases = _random_bases(p.net, 1)
    calls = [(kind, red, what) for kind in ("exact", "mc") for red in ("mean", "sum") for what in ("factors", "scales")]

    def run(kind, red, what):
        extra = dict(seed=1, mc_samples=3) if kind == "mc" else {}
        if what == "factors":
            return p.net.kfac_factors(p.theta, p.X, p.Y, kind=kind, reduction=red, **extra)
        return p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases, kind=kind, reduction=red, **extra)

    with tk.use_backend("reference"):
        want = {c: run(*c) for c in calls}
    with tk.use_backend("numba"):
        whole = {c: run(*c) for c in calls}
        monkeypatch.setattr(nb, "_KFAC_CHUNK", 200)  # chunks of the least, 32 samples
        monkeypatch.setattr(nb, "_PIECE_WORK", 1)    # pieces of _PIECE_MIN = 64 samples
        assert len(nb._pieces(300, 10**6, nb._PIECE_MIN)) == 4
        for n in (1, 2):
            tk.set_num_threads(n)
            for c in calls:
                got = run(*c)
                compare(got, want[c], what=f"{c}, chunks and pieces, {n} threads")
                compare(got, whole[c], rtol=1e-13, what=f"{c}, chunks and pieces against one call")


@pytest.mark.parametrize("loss, sizes", [("mse", [4, 1]), ("mse", [3, 5]), ("ce", [4, 3]), ("ce", [2, 6]),
                                         ("bce", [3, 2]), ("poisson", [2, 3]), ("soft_l1", [2, 2]),
                                         ("gaussian", [3, 4])])
@pytest.mark.parametrize("l2", [0.0, 0.2])
def test_one_layer_one_sample_kfac_is_the_exact_ggn(backend, loss, sizes, l2):
    p = make_problem(sizes, "tanh", loss, 1, l2=l2, seed=8)
    K = kfac.factors(p.net, p.theta, p.X, p.Y)
    G = p.net.ggn(p.theta, p.X, p.Y)
    compare(K.matrix(), G, what="A kron B vs the GGN")
    compare(np.kron(K.A[0], K.B[0]) + l2 * np.eye(p.net.num_params), G, what="kron")


OTHER_LOSS_CASES = [case_param(s, act, loss, n) for s, act, loss, n in [
    ([3, 4, 2], "tanh", "bce", 7), ([2, 5, 3, 2], "softplus", "poisson", 6), ([3, 4, 3], "tanh", "huber", 9),
    ([4, 3, 2], "sigmoid", "soft_l1", 5), ([3, 5, 4, 4], "tanh", "gaussian", 8)]]


@pytest.mark.parametrize("case", OTHER_LOSS_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exact_factors_of_the_other_losses(backend, case, dtype):
    """The exact kind of every loss (the rows of the GGN's output Hessian, gaussian's Fisher)
    against the direct construction, on every backend; the sampled kind of the likelihoods
    against the reference with the same seed (huber and soft_l1, not likelihoods, refuse it by
    name)."""
    sizes, act, loss, N = case
    p64 = make_problem(sizes, act, loss, N, seed=6)
    p = p64.astype(dtype)
    for reduction in ("mean", "sum"):
        got = p.net.kfac_factors(p.theta, p.X, p.Y, reduction=reduction)
        assert all(A.dtype == dtype and B.dtype == dtype for A, B in got)
        want = direct_factors(p64.net, p64.theta, p64.X, reduction, p=p64)
        compare(got, want, dtype, what=f"{backend} {loss} {reduction}")
    bases = _random_bases(p64.net, 5)
    got = p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases)
    with tk.use_backend("reference"):
        want = p64.net.kfac_eigen_scales(p64.theta, p64.X, p64.Y, bases)
    compare(got, want, dtype, what=f"{backend} {loss} EKFAC eigenvalues")
    if loss in ("huber", "soft_l1"):
        with pytest.raises(ValueError, match=f"kind: 'mc' draws targets from the model's likelihood, which '{loss}'"):
            p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=1)
        return
    for reduction in ("mean", "sum"):
        got = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=3, mc_samples=4, reduction=reduction)
        with tk.use_backend("reference"):
            want = p64.net.kfac_factors(p64.theta, p64.X, p64.Y, kind="mc", seed=3, mc_samples=4, reduction=reduction)
        compare(got, want, dtype, what=f"{backend} {loss} mc {reduction}")
    got = p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases, kind="mc", seed=3, mc_samples=4)
    with tk.use_backend("reference"):
        want = p64.net.kfac_eigen_scales(p64.theta, p64.X, p64.Y, bases, kind="mc", seed=3, mc_samples=4)
    compare(got, want, dtype, what=f"{backend} {loss} mc EKFAC eigenvalues")


WEIGHTED_CASES = [case_param(s, act, loss, n) for s, act, loss, n in [
    ([3, 4, 2], "tanh", "mse", 7), ([4, 5, 3], "relu", "ce", 8), ([3, 4, 2], "sigmoid", "bce", 6),
    ([2, 5, 3, 2], "softplus", "poisson", 6), ([3, 4, 3], "tanh", "huber", 7), ([4, 3, 2], "tanh", "soft_l1", 5),
    ([3, 5, 4, 4], "tanh", "gaussian", 6)]]


@pytest.mark.parametrize("case", WEIGHTED_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_integer_weights_repeat_rows(backend, case, dtype):
    """sample_weight with integer weights 0-3 gives the factors (and EKFAC's eigenvalues) of the
    data with each row repeated that many times (zero-weight rows dropped), both reductions, on
    every backend and loss; non-integer weights match the reference, the sampled kind too."""
    sizes, act, loss, N = case
    p64 = make_problem(sizes, act, loss, N, seed=7)
    p = p64.astype(dtype)
    w = np.random.default_rng(1).integers(0, 4, N).astype(np.float64)
    w[0], w[1] = 0.0, 3.0  # a dropped row and a repeated one, whatever the draw
    rep = np.repeat(np.arange(N), w.astype(int))
    bases = _random_bases(p64.net, 2)
    for reduction in ("mean", "sum"):
        got = p.net.kfac_factors(p.theta, p.X, p.Y, reduction=reduction, sample_weight=w)
        want = p.net.kfac_factors(p.theta, p.X[rep], p.Y[rep], reduction=reduction)
        compare(got, want, dtype, what=f"{backend} {loss} {reduction} weighted factors")
        got = p.net.kfac_eigen_scales(p.theta, p.X, p.Y, bases, reduction=reduction, sample_weight=w)
        want = p.net.kfac_eigen_scales(p.theta, p.X[rep], p.Y[rep], bases, reduction=reduction)
        compare(got, want, dtype, what=f"{backend} {loss} {reduction} weighted EKFAC eigenvalues")
    v = np.random.default_rng(2).uniform(0.0, 2.0, N)
    v[2] = 0.0
    kinds = [("exact", {})] + ([] if loss in ("huber", "soft_l1") else [("mc", dict(seed=4, mc_samples=3))])
    for kind, extra in kinds:
        for reduction in ("mean", "sum"):
            got = p.net.kfac_factors(p.theta, p.X, p.Y, kind=kind, reduction=reduction, sample_weight=v, **extra)
            with tk.use_backend("reference"):
                want = p64.net.kfac_factors(p64.theta, p64.X, p64.Y, kind=kind, reduction=reduction,
                                            sample_weight=v, **extra)
            compare(got, want, dtype, what=f"{backend} {loss} {kind} {reduction} real weights")


def test_weighted_factors_against_the_direct_construction():
    """The reference's weighted factors against the direct one (conftest's output Hessians):
    A = sum_n w_n a~ a~^T / sum w, B = sum_n (w_n / sum w) D_n^T H_n D_n; equal weights give
    the unweighted factors bit for bit (the MLP drops them)."""
    p = make_problem([3, 5, 4], "tanh", "poisson", 9, seed=2)
    w = np.random.default_rng(5).uniform(0.1, 3.0, 9)
    with tk.use_backend("reference"):
        got = p.net.kfac_factors(p.theta, p.X, p.Y, sample_weight=w)
    N = 9
    a = p.X
    ins = []
    for l, (W, b) in enumerate(p.net.unflatten(p.theta)):
        ins.append(np.hstack([a, np.ones((N, 1))]))
        a = np.tanh(a @ W + b) if l < p.net.num_layers - 1 else a @ W + b
    C = output_hessians(p, a, "sum") * (w / w.sum())[:, None, None]
    J = p.net.jacobian(p.theta, p.X).reshape(N, 4, -1)
    for l, (A, B) in enumerate(got):
        o, Db = p.net.offsets[l + 1], p.net.sizes[l + 1]
        D = J[:, :, o - Db:o]
        compare(A, (ins[l].T * w) @ ins[l] / w.sum(), rtol=1e-13, what="weighted A")
        compare(B, np.einsum("nci,ncd,ndj->ij", D, C, D), rtol=1e-12, what="weighted B")
    same = p.net.kfac_factors(p.theta, p.X, p.Y, sample_weight=np.full(9, 2.5))
    plain = p.net.kfac_factors(p.theta, p.X, p.Y)
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(same, plain))
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(same, plain))


def test_minimize_kfac_with_integer_weights_is_the_run_on_repeated_rows():
    rng = np.random.default_rng(6)
    net = tk.MLP([3, 8, 2], activation="tanh", loss="bce", l2=1e-3)
    X = rng.standard_normal((40, 3))
    Y = (X[:, :2] + 0.3 * rng.standard_normal((40, 2)) > 0).astype(float)
    w = rng.integers(0, 3, 40).astype(float)
    rep = np.repeat(np.arange(40), w.astype(int))
    theta0 = net.init(seed=3)
    a = tk.minimize(net, theta0, X, Y, method="kfac", max_iter=8, sample_weight=w)
    b = tk.minimize(net, theta0, X[rep], Y[rep], method="kfac", max_iter=8)
    assert a.nit == b.nit == 8
    compare(a.theta, b.theta, rtol=1e-8, what="theta after 8 kfac steps")
    q = kfac.quality(net, a.theta, X, Y, sample_weight=w)
    r = kfac.quality(net, a.theta, X[rep], Y[rep])
    np.testing.assert_allclose(q.errors, r.errors, rtol=1e-8)
    assert q.cosine == pytest.approx(r.cosine, rel=1e-8)


def test_bad_sample_weight_is_refused_by_name():
    p = make_problem([3, 4, 2], "tanh", "mse", 5, seed=1)
    with pytest.raises(ValueError, match="^sample_weight: expected shape \\(5,\\)"):
        p.net.kfac_factors(p.theta, p.X, p.Y, sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="^sample_weight: weights must be >= 0"):
        kfac.factors(p.net, p.theta, p.X, p.Y, sample_weight=-np.ones(5))
    with pytest.raises(ValueError, match="^sample_weight: the weights must have a positive"):
        kfac.factors(p.net, p.theta, p.X, p.Y, sample_weight=np.zeros(5))


def test_kfac_is_not_exact_in_general():
    p = make_problem([3, 5, 4], "tanh", "ce", 12, seed=9)
    K = kfac.factors(p.net, p.theta, p.X, p.Y)
    blocks = p.net.ggn_blocks(p.theta, p.X, p.Y)
    assert all(rel_err(k, b) > 1e-3 for k, b in zip(K.blocks(), blocks))


# ----------------------------------------------------------------------------- operations
def _kfac_problem(loss="ce", l2=0.05, sizes=(4, 6, 3), N=15, kind="exact"):
    p = make_problem(list(sizes), "tanh", loss, N, l2=l2, seed=12)
    return p, kfac.factors(p.net, p.theta, p.X, p.Y, kind=kind, seed=2, mc_samples=2)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("kind", ["exact", "mc"])
def test_operations_against_the_dense_matrix(loss, kind):
    p, K = _kfac_problem(loss, kind=kind)
    M = K.matrix()
    P = p.net.num_params
    # blocks are kron(A, B) + l2 I, zero between layers
    for l, blk in enumerate(K.blocks()):
        s = slice(p.net.offsets[l], p.net.offsets[l + 1])
        compare(blk, np.kron(K.A[l], K.B[l]) + 0.05 * np.eye(blk.shape[0]), rtol=1e-14)
        compare(M[s, s], blk, rtol=0)
        assert not M[s, :p.net.offsets[l]].any()
    V = np.random.default_rng(0).standard_normal((P, 3))
    compare(K.mv(V), M @ V, what="mv")
    compare(K.mv(V[:, 0]), M @ V[:, 0], what="mv of one vector")
    for damping in (0.0, 0.3):
        Md = M + damping * np.eye(P)
        compare(K.inverse_mv(V, damping), np.linalg.solve(Md, V), rtol=1e-9, what="inverse_mv")
        sign, logdet = np.linalg.slogdet(Md)
        assert sign > 0 and K.logdet(damping) == pytest.approx(logdet, rel=1e-10)
    # the factored damping: (A + pi sqrt(lam) I) kron (B + sqrt(lam)/pi I), lam = l2 + damping
    lam = 0.05 + 0.3
    out = K.inverse_mv(V, 0.3, method="factored")
    for l in range(p.net.num_layers):
        A, B = K.A[l], K.B[l]
        pi = math.sqrt((np.trace(A) / A.shape[0]) / (np.trace(B) / B.shape[0]))
        Mf = np.kron(A + pi * math.sqrt(lam) * np.eye(A.shape[0]), B + math.sqrt(lam) / pi * np.eye(B.shape[0]))
        s = slice(p.net.offsets[l], p.net.offsets[l + 1])
        compare(out[s], np.linalg.solve(Mf, V[s]), rtol=1e-9, what="factored inverse_mv")


def test_singular_factors_need_damping():
    p = make_problem([6, 2], "tanh", "mse", 2, seed=1)  # A of rank 2 < 7
    K = kfac.factors(p.net, p.theta, p.X, p.Y)
    assert K.logdet() == -math.inf or K.logdet() < -20  # rank-deficient A: det ~ 0
    with pytest.raises(ValueError, match="damping"):
        K.inverse_mv(np.ones(p.net.num_params), method="factored")
    v = np.random.default_rng(1).standard_normal(p.net.num_params)
    x = K.inverse_mv(v, 1e-2)
    compare(K.mv(x) + 1e-2 * x, v, rtol=1e-9)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_ekfac_eigenvalues_are_the_exact_diagonal_in_kfacs_basis(backend, loss):
    p, K = _kfac_problem(loss, l2=0.0, sizes=(3, 5, 4, 3), N=10)
    E = K.ekfac(p.net, p.theta, p.X, p.Y)
    blocks = p.net.ggn_blocks(p.theta, p.X, p.Y)
    errs_k, errs_e = [], []
    for l, (Qa, Qb) in enumerate(E.Q):
        la, Qa2, lb, Qb2 = K.eigh(l)
        compare(Qa, Qa2, rtol=0), compare(Qb, Qb2, rtol=0)
        Q = np.kron(Qa, Qb)
        compare(E.S[l].ravel(), np.diagonal(Q.T @ blocks[l] @ Q), what="EKFAC eigenvalues")
        compare(np.outer(la, lb), np.diagonal(Q.T @ np.kron(K.A[l], K.B[l]) @ Q).reshape(la.size, lb.size),
                rtol=1e-9, what="K-FAC's eigenvalues")
        nrm = np.linalg.norm(blocks[l])
        errs_k.append(np.linalg.norm(K.blocks()[l] - blocks[l]) / nrm)
        errs_e.append(np.linalg.norm(E.blocks()[l] - blocks[l]) / nrm)
    # the exact diagonal in the basis is the closest matrix of that form (the output layer
    # under mse is exact for both, up to rounding)
    assert all(e <= k + 1e-12 for e, k in zip(errs_e, errs_k)), (errs_e, errs_k)
    # EKFAC's operations against its dense matrix
    M = E.matrix()
    V = np.random.default_rng(2).standard_normal((p.net.num_params, 2))
    compare(E.mv(V), M @ V, what="ekfac mv")
    compare(E.inverse_mv(V, 0.1), np.linalg.solve(M + 0.1 * np.eye(len(M)), V), rtol=1e-9)
    assert E.logdet(0.1) == pytest.approx(np.linalg.slogdet(M + 0.1 * np.eye(len(M)))[1], rel=1e-10)
    with pytest.raises(ValueError, match="factored"):
        E.inverse_mv(V, 0.1, method="factored")


@pytest.mark.parametrize("loss", ["mse", "bce", "poisson", "gaussian"])
def test_mc_draws_are_gradients_at_targets_from_the_likelihood(loss):
    """The sampled kind's rows (taylorkern.model._mc_draws) for k = 4 outputs: over 40,000 draws
    at moderate outputs their mean is 0 and their mean outer product the unit-weight H_out of
    the GGN (conftest's output_hessians with "sum", independent of the sampler), each entry
    within 6 standard errors; at extreme outputs each row is still a gradient at a target in
    the likelihood's support, to rounding: bce's sigma(f) or sigma(f) - 1 with saturated logits
    kept to their last digit, poisson's counts integers at a rate of e^20, gaussian's
    (1 - eps^2) / 2 from the eps of its mean's row at log-variances of +-30."""
    from types import SimpleNamespace

    from taylorkern.model import _mc_draws
    k, M = 4, 40000
    F = np.array([[-1.5, 0.3, 0.8, -0.2], [0.6, -0.9, 1.2, 0.1]])
    G = _mc_draws(loss, 2, k, lambda: F, np.random.default_rng(0), M)
    assert G.shape == (2, M, k)
    fake = SimpleNamespace(net=SimpleNamespace(loss_name=loss, loss_scale=1.0), Y=np.zeros((2, k // 2)))
    want = output_hessians(fake, F, "sum")
    outer = np.einsum("nmi,nmj->nmij", G, G)
    se = outer.std(axis=1) / math.sqrt(M)
    assert np.all(np.abs(outer.mean(axis=1) - want) <= 6 * se + 1e-15), (outer.mean(axis=1), want)
    assert np.all(np.abs(G.mean(axis=1)) <= 6 * G.std(axis=1) / math.sqrt(M))
    if loss == "mse":
        return
    extreme = {"bce": [[-40.0, -700.0, 30.0, 700.0]], "poisson": [[-30.0, 0.0, 5.0, 20.0]],
               "gaussian": [[0.5, -2.0, 30.0, -30.0]]}[loss]
    F = np.array(extreme)
    G = _mc_draws(loss, 1, k, lambda: F, np.random.default_rng(1), 500)[0] * (math.sqrt(k) if loss != "gaussian"
                                                                               else math.sqrt(k // 2))
    assert np.all(np.isfinite(G))
    if loss == "bce":
        sig = np.where(F >= 0, 1.0 / (1.0 + np.exp(-np.abs(F))), np.exp(-np.abs(F)) / (1.0 + np.exp(-np.abs(F))))
        one_minus = np.where(F >= 0, np.exp(-np.abs(F)) / (1.0 + np.exp(-np.abs(F))), 1.0 / (1.0 + np.exp(-np.abs(F))))
        assert np.all((G == sig) | (G == -one_minus))
        assert np.all(G[:, 0] == sig[0, 0]) and 0 < sig[0, 0] < 1e-17  # sigma(-40), not rounded to 0
        assert np.all(G[:, 2] == -one_minus[0, 2]) and 0 < one_minus[0, 2] < 1e-13
    elif loss == "poisson":
        y = np.exp(F) - G
        assert np.all(y >= -1e-6) and np.all(np.abs(y - np.round(y)) <= 1e-6 * np.maximum(1.0, np.exp(F)))
        assert abs(y[:, 3].mean() / math.exp(20.0) - 1) < 1e-3  # e^20 ~ 4.9e8 counts, sd ~ 2.2e4
    else:
        eps = -G[:, :2] / np.exp(-0.5 * F[0, 2:])
        compare(G[:, 2:], 0.5 * (1.0 - eps * eps), rtol=1e-12, what="gaussian's v rows")


def test_mc_poisson_refuses_rates_numpy_cannot_draw():
    net = tk.MLP([2, 3, 1], loss="poisson")
    theta = net.init(seed=0)
    theta[-1] = 50.0  # the output bias: rates around e^50 ~ 5e21
    X, Y = np.zeros((4, 2)), np.ones((4, 1))
    with pytest.raises(ValueError, match="^kind: 'mc' draws Poisson counts for rates e\\^f up to 1e\\+18"):
        net.kfac_factors(theta, X, Y, kind="mc", seed=0)
    assert np.all(np.isfinite(net.kfac_factors(theta, X, Y)[0][1]))  # the exact kind takes them


@pytest.mark.parametrize("loss", ["mse", "ce", "bce", "poisson", "gaussian"])
def test_mc_factors_are_seeded_and_converge_to_the_exact_ones(loss):
    """The sampled kind of every likelihood: the same seed gives the same factors, another seed
    others, and many draws the exact factors (B within the statistical error of 4,000 draws
    per sample: the draws' gradients have the right second moments, the GGN's H_out)."""
    p = make_problem([3, 6, 4], "tanh", loss, 30, seed=13)
    a = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=5)
    b = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=5)
    c = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=6)
    compare(a, b, rtol=0)
    assert rel_err(c, a) > 1e-3
    exact = p.net.kfac_factors(p.theta, p.X, p.Y)
    many = p.net.kfac_factors(p.theta, p.X, p.Y, kind="mc", seed=5, mc_samples=4000)
    for (A, B), (Ae, Be) in zip(many, exact):
        np.testing.assert_array_equal(A, Ae)  # A does not depend on the draws
        assert rel_err(B, Be) < 0.1, rel_err(B, Be)  # ~ 1/sqrt(4000 * 30) statistical error


# ----------------------------------------------------------------------------- quality
@pytest.mark.parametrize("loss, sizes", [("mse", [5, 1]), ("mse", [3, 4])])
def test_quality_where_kfac_is_exact(backend, loss, sizes):
    # one linear layer under mse: the output Hessian is a constant multiple of I, so
    # G = A kron B exactly, for any number of samples
    p = make_problem(sizes, "tanh", loss, 40, seed=14, l2=0.01)
    q = kfac.quality(p.net, p.theta, p.X, p.Y)
    assert q.errors[0] < 1e-12 and q.ekfac_errors[0] < 1e-12
    assert q.cosine == pytest.approx(1.0, abs=1e-10) and q.ekfac_cosine == pytest.approx(1.0, abs=1e-10)
    assert "layer" in q.table() and "cosine" in str(q)


def test_quality_on_a_deep_network_reports_the_gap():
    p = make_problem([4, 8, 6, 3], "tanh", "ce", 50, seed=15)
    q = kfac.quality(p.net, p.theta, p.X, p.Y, damping=1e-3)
    G = p.net.ggn(p.theta, p.X, p.Y)
    K = kfac.factors(p.net, p.theta, p.X, p.Y)
    for l, err in enumerate(q.errors):
        s = slice(p.net.offsets[l], p.net.offsets[l + 1])
        assert err == pytest.approx(np.linalg.norm(K.blocks()[l] - G[s, s]) / np.linalg.norm(G[s, s]), rel=1e-10)
        assert 1e-4 < err < 1.0
    assert all(e <= k * (1 + 1e-12) for e, k in zip(q.ekfac_errors, q.errors))
    _, g = p.net.loss_and_grad(p.theta, p.X, p.Y)
    exact = np.linalg.solve(G + 1e-3 * np.eye(len(G)), g)
    mine = K.inverse_mv(g, 1e-3)
    assert q.cosine == pytest.approx(mine @ exact / np.linalg.norm(mine) / np.linalg.norm(exact), rel=1e-9)
    assert 0.0 < q.cosine < 1.0 - 1e-6


# ----------------------------------------------------------------------------- minimize
@pytest.mark.parametrize("kind", ["exact", "mc"])
def test_minimize_kfac_decreases_the_loss(kind):
    rng = np.random.default_rng(3)
    net = tk.MLP([4, 10, 3], activation="tanh", loss="ce", l2=1e-4)
    X = rng.standard_normal((80, 4))
    Y = np.argmax(X @ rng.standard_normal((4, 3)), axis=1)
    theta0 = net.init(seed=1)
    f0 = net.loss(theta0, X, Y)
    res = tk.minimize(net, theta0, X, Y, method="kfac", kind=kind, seed=0, max_iter=30)
    gd = tk.minimize(net, theta0, X, Y, method="gd", lr=0.1, max_iter=30)
    assert res.loss < 0.3 * f0 and res.loss < gd.loss, (res.loss, gd.loss, f0)
    assert res.nhev >= res.nit and np.isfinite(res.theta).all()
    assert res.history["accepted"][1:].any()


@pytest.mark.parametrize("kind", ["exact", "mc"])
@pytest.mark.parametrize("loss", ["bce", "poisson", "gaussian"])
def test_minimize_kfac_fits_the_other_likelihoods(loss, kind):
    """The kfac method with either kind on multi-label, count and heteroscedastic data: the loss
    falls well below its start and below plain gradient descent's with the same budget."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((120, 3))
    Z = np.tanh(X @ rng.standard_normal((3, 2)))
    Y = {"bce": (Z > 0).astype(float), "poisson": rng.poisson(np.exp(1.5 * Z)).astype(float),
         "gaussian": Z[:, :1] + (0.1 + 0.3 * np.abs(Z[:, 1:])) * rng.standard_normal((120, 1))}[loss]
    net = tk.MLP([3, 10, 2], activation="tanh", loss=loss, l2=1e-4)
    theta0 = net.init(seed=2)
    f0 = net.loss(theta0, X, Y)
    res = tk.minimize(net, theta0, X, Y, method="kfac", kind=kind, seed=0, max_iter=40)
    gd = tk.minimize(net, theta0, X, Y, method="gd", lr=0.05, max_iter=40)
    assert np.isfinite(res.theta).all() and res.loss < gd.loss < f0, (res.loss, gd.loss, f0)
    assert f0 - res.loss > 0.3 * abs(f0), (res.loss, f0)


def test_minimize_kfac_decomposes_the_inputs_factor_once(monkeypatch):
    """The kfac method computes the first layer's A (A_0 depends on the inputs only) and its
    eigendecomposition once per run, keeping them across refreshes of the factors: one eigh of
    that shape per run instead of one per refresh, every later kfac_factors call with
    input_factor=False, and the very same iterates as a run that recomputes everything."""
    rng = np.random.default_rng(2)
    net = tk.MLP([12, 6, 3], activation="tanh", loss="ce", l2=1e-3)
    X = rng.standard_normal((60, 12))
    Y = np.argmax(X[:, :3] + 0.5 * rng.standard_normal((60, 3)), axis=1)
    theta0 = net.init(seed=0)
    calls, inputs = [], []
    eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a, *args, **kw: calls.append(np.shape(a)) or eigh(a, *args, **kw))
    factors = tk.MLP.kfac_factors
    monkeypatch.setattr(tk.MLP, "kfac_factors",
                        lambda self, *a, **kw: inputs.append(kw.get("input_factor", True)) or factors(self, *a, **kw))
    a = tk.minimize(net, theta0, X, Y, method="kfac", max_iter=6)
    refreshes = calls.count((6, 6))  # B_0, decomposed at every refresh of the factors
    assert refreshes >= 4 and calls.count((13, 13)) == 1
    assert inputs == [True] + [False] * (refreshes - 1)
    calls.clear()
    monkeypatch.setattr(kfac, "_factors_keeping_inputs",
                        lambda old, net, theta, X, Y, seed=None: kfac.factors(
                            net, theta, X, Y, kind=old.kind, seed=seed, mc_samples=old.mc_samples,
                            sample_weight=old.sample_weight))
    b = tk.minimize(net, theta0, X, Y, method="kfac", max_iter=6)
    assert calls.count((6, 6)) == calls.count((13, 13)) == refreshes
    np.testing.assert_array_equal(a.theta, b.theta)


def test_reuse_eigh_of_A_only_where_A_is_the_same():
    p = make_problem([4, 5, 3], "tanh", "mse", 10, seed=3)
    K1 = kfac.factors(p.net, p.theta, p.X, p.Y)
    K2 = kfac.factors(p.net, p.theta + 0.1, p.X, p.Y)  # other weights: A_1 moves, A_0 does not
    assert K2.reuse_eigh_of_A(K1) == [0]
    assert K2.eigh(0)[1] is K1.eigh(0)[1]
    compare(K2.matrix(), kfac.factors(p.net, p.theta + 0.1, p.X, p.Y).matrix(), rtol=1e-13, what="reused basis")
    K3 = kfac.factors(p.net, p.theta, p.X[::-1] * 2.0, p.Y)
    assert K3.reuse_eigh_of_A(K1) == []


def test_minimize_kfac_solves_a_linear_least_squares_problem():
    # one linear layer under mse: K-FAC is the exact GGN, so each step is a damped Gauss-Newton
    # step and the damping shrinks as the model proves exact
    rng = np.random.default_rng(4)
    net = tk.MLP([3, 2], activation="identity")
    X = rng.standard_normal((30, 3))
    Y = X @ rng.standard_normal((3, 2)) + 0.5
    res = tk.minimize(net, net.init(seed=0), X, Y, method="kfac", max_iter=100, gtol=1e-10)
    assert res.loss < 1e-18, res


@pytest.mark.parametrize("options, match", [
    (dict(damping=0.0), "damping: expected a number > 0"),
    (dict(kind="fisher"), "kind: expected one of"),
    (dict(mc_samples=0), "mc_samples: expected an integer >= 1"),
    (dict(seed=-1), "seed: expected None or an integer >= 0"),
    (dict(eta=0.5), "eta: expected a number < 0.25"),
])
def test_minimize_kfac_bad_options(options, match):
    net = tk.MLP([2, 3, 1])
    X, Y = np.ones((4, 2)), np.zeros(4)
    with pytest.raises(ValueError, match=match):
        tk.minimize(net, net.init(seed=0), X, Y, method="kfac", **options)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_the_argument_named():
    p = make_problem([3, 4, 2], "tanh", "ce", 5, seed=1)
    net, th, X, Y = p.net, p.theta, p.X, p.Y
    with pytest.raises(ValueError, match="kind: expected"):
        net.kfac_factors(th, X, Y, kind="kfac")
    with pytest.raises(ValueError, match="kind: expected"):
        kfac.factors(net, th, X, Y, kind="emp")
    with pytest.raises(ValueError, match="mc_samples: expected an integer >= 1"):
        net.kfac_factors(th, X, Y, kind="mc", mc_samples=0)
    with pytest.raises(ValueError, match="seed: expected"):
        net.kfac_factors(th, X, Y, kind="mc", seed="a")
    with pytest.raises(ValueError, match="theta: expected shape"):
        net.kfac_factors(th[:-1], X, Y)
    with pytest.raises(ValueError, match="Y: labels must lie"):
        net.kfac_factors(th, X, Y + 5)
    with pytest.raises(ValueError, match="reduction: expected"):
        net.kfac_factors(th, X, Y, reduction="avg")
    with pytest.raises(TypeError, match="net: expected a taylorkern.MLP"):
        kfac.factors("net", th, X, Y)
    with pytest.raises(ValueError, match="bases: expected one"):
        net.kfac_eigen_scales(th, X, Y, [])
    with pytest.raises(ValueError, match=r"bases\[1\]: expected shapes"):
        net.kfac_eigen_scales(th, X, Y, [(np.eye(4), np.eye(4)), (np.eye(4), np.eye(3))])
    K = kfac.factors(net, th, X, Y)
    with pytest.raises(ValueError, match="v: expected shape"):
        K.mv(np.ones(3))
    with pytest.raises(ValueError, match="v: contains NaN"):
        K.inverse_mv(np.full(net.num_params, np.nan), 1.0)
    with pytest.raises(ValueError, match="damping: expected a number >= 0"):
        K.inverse_mv(np.ones(net.num_params), -1.0)
    with pytest.raises(ValueError, match="method: expected one of"):
        K.inverse_mv(np.ones(net.num_params), 1.0, method="cg")
    with pytest.raises(ValueError, match="damping: expected a finite number"):
        K.logdet(float("inf"))
    with pytest.raises(ValueError, match="net: these factors are of a network"):
        K.ekfac(tk.MLP([3, 2], loss="ce"), np.zeros(8), X, Y)
    with pytest.raises(ValueError, match="damping: expected a number >= 0"):
        kfac.quality(net, th, X, Y, damping=-1.0)


def test_float32_network_gives_float32_results():
    p = make_problem([3, 4, 2], "tanh", "mse", 6, seed=2, dtype=np.float32)
    K = kfac.factors(p.net, p.theta, p.X, p.Y)
    v = np.ones(p.net.num_params, np.float32)
    assert K.mv(v).dtype == np.float32 and K.inverse_mv(v, 0.1).dtype == np.float32
    assert K.matrix().dtype == np.float32
    p64 = make_problem([3, 4, 2], "tanh", "mse", 6, seed=2)
    K64 = kfac.factors(p64.net, p64.theta, p64.X, p64.Y)
    compare(K.mv(v), K64.mv(v.astype(np.float64)), np.float32)
    assert rtol_for(np.float32) > 0


# ----------------------------------------------------------------------------- peer check
def _torch_layout(net):
    """perm with theta[perm] in torch's parameter order: per layer weight (out, in) row-major,
    then bias."""
    perm = []
    for l, (a, b) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        o = net.offsets[l]
        perm += [o + i * b + j for j in range(b) for i in range(a)]
        perm += [o + a * b + j for j in range(b)]
    return np.array(perm)


@pytest.mark.parametrize("loss, sizes", [("mse", [3, 5, 2]), ("ce", [4, 6, 5, 3]), ("bce", [3, 4, 3])])
def test_kfac_and_ekfac_match_curvlinops(loss, sizes):
    torch = pytest.importorskip("torch", reason="torch is not installed (the curvlinops check needs it)")
    cl = pytest.importorskip("curvlinops", reason="curvlinops (curvlinops-for-pytorch) is not installed")
    p = make_problem(sizes, "tanh", loss, 7, seed=21)
    net = p.net
    layers = []
    for l, (W, b) in enumerate(net.unflatten(p.theta)):
        lin = torch.nn.Linear(W.shape[0], W.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(lin)
        if l < net.num_layers - 1:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    if loss == "mse":
        loss_fn, Y = torch.nn.MSELoss(), torch.from_numpy(p.Y)
    elif loss == "bce":  # curvlinops takes 0/1 targets only (the exact factors do not read Y)
        loss_fn, Y = torch.nn.BCEWithLogitsLoss(), torch.from_numpy(np.round(p.Y))
    else:
        loss_fn, Y = torch.nn.CrossEntropyLoss(), torch.from_numpy(p.Y).long()
    data = [(torch.from_numpy(p.X), Y)]
    perm = _torch_layout(net)
    eye = torch.eye(net.num_params, dtype=torch.float64)
    # curvlinops' type-2 Fisher is the exact output Hessian: our kind="exact"
    for name, ours in (("KFACLinearOperator", kfac.factors(net, p.theta, p.X, p.Y)),
                       ("EKFACLinearOperator", kfac.ekfac(net, p.theta, p.X, p.Y))):
        op = getattr(cl, name)(model, loss_fn, list(model.parameters()), data, fisher_type="type-2",
                               separate_weight_and_bias=False, check_deterministic=False)
        theirs = (op @ eye).detach().numpy()
        compare(ours.matrix()[np.ix_(perm, perm)], theirs, rtol=1e-12, what=name)


@pytest.mark.parametrize("name", ["cpp", "numba", "reference"])
def test_cpu_backends_follow_the_optional_protocol(name):
    import importlib
    import inspect

    from taylorkern.backends import FactorsKronecker
    try:
        mod = importlib.import_module(f"taylorkern.backends.{name}")
    except ImportError as exc:
        pytest.skip(f"backend {name!r} does not load here: {exc}")
    assert isinstance(mod, FactorsKronecker)
    params = list(inspect.signature(mod.kfac_factors).parameters)
    assert params == ["net", "theta", "X", "Y", "reduction", "noise", "bases", "sample_weight", "input_factor"]
