"""Per-sample weights (``sample_weight=``) on every data call and in tk.minimize.

With weights w the data term is sum w_n l_n / sum w_n ("mean") or sum w_n l_n ("sum").  The
reference's weighted quantities are checked against an oracle that shares nothing with them:
integer weights are the same samples repeated (and zero weights the samples left out), computed
by the unweighted code.  Every other backend is then compared with the reference, and w = 1
(or equal weights with "mean") must give the unweighted results bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DATA_QUANTITIES,
    bitwise_equal,
    compare,
    compute,
    gram_route,
    make_problem,
    random_weights,
    rtol_for,
)

import taylorkern as tk

try:
    from taylorkern import _core
except ImportError:  # pragma: no cover - no compiled module
    _core = None

REDUCTIONS = ("mean", "sum")

# (sizes, activation, loss, N): one and several outputs, deep, one-unit layers, a tiny network
# (the cpp lanes paths' size), a single layer, and the Gram route's shapes.
CASES = [
    ([3, 5, 2], "tanh", "mse", 9),
    ([2, 5, 1], "softplus", "mse", 7),
    ([4, 1, 3], "gelu", "ce", 6),
    ([3, 4, 3, 5, 2], "sigmoid", "ce", 8),
    ([2, 8, 1], "relu", "mse", 13),
    ([3, 2], "identity", "ce", 5),
    ([4, 6, 5, 3], "sin", "mse", 11),
    ([3, 5, 4], "tanh", "gaussian", 9),
    ([2, 8, 2], "softplus", "gaussian", 13),
]
CASE_IDS = ["-".join(map(str, s)) + f"-{a}-{lo}" for s, a, lo, _ in CASES]


def _repeated(p, counts):
    """p with sample n repeated counts[n] times (0: left out)."""
    idx = np.repeat(np.arange(p.N), counts)
    return type(p)(p.net, p.theta, p.X[idx], p.Y[idx], p.V, p.name)


# ----------------------------------------------------------------------------- the oracle
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_integer_weights_are_repeated_samples(case, reduction):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N=N, l2=0.3, seed=3)
    counts = np.random.default_rng(N).integers(0, 4, N)
    counts[0] = max(counts[0], 1)
    rep = _repeated(p, counts)
    with tk.use_backend("reference"):
        for q in DATA_QUANTITIES:
            compare(compute(p, q, reduction, counts.astype(np.float64)), compute(rep, q, reduction, None),
                    what=f"{q} ({reduction})")
            # integer dtypes are accepted as they are
            compare(compute(p, q, reduction, counts), compute(rep, q, reduction, None), what=q)


def test_reference_mean_is_normalised_by_the_weights():
    """Scaling all weights changes "sum" by that factor and leaves "mean" alone; the mean is the
    weighted average of the per-sample losses, written out here."""
    p = make_problem([3, 4, 2], "tanh", "ce", N=7, seed=5)
    w = random_weights(7, 1)
    with tk.use_backend("reference"):
        per_sample = np.array([p.net.loss(p.theta, p.X[n:n + 1], p.Y[n:n + 1]) for n in range(7)])
        compare(p.net.loss(p.theta, p.X, p.Y, sample_weight=w), np.dot(w, per_sample) / w.sum())
        compare(p.net.loss(p.theta, p.X, p.Y, "sum", sample_weight=w), np.dot(w, per_sample))
        for q in ("loss_and_grad", "hessian", "ggn"):
            compare(compute(p, q, "mean", 7.5 * w), compute(p, q, "mean", w), what=q)
            scaled = [7.5 * np.asarray(x) for x in _parts(compute(p, q, "sum", w))]
            compare(_parts(compute(p, q, "sum", 7.5 * w)), scaled, what=q)


def _parts(x):
    return list(x) if isinstance(x, tuple) else [x]


# ----------------------------------------------------------------------------- every backend
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_backend_matches_reference_with_weights(backend, case, dtype):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N=N, l2=0.2, dtype=dtype, seed=11)
    p64 = p.astype(np.float64)
    w = random_weights(N, N)
    for reduction in REDUCTIONS:
        for q in DATA_QUANTITIES:
            got = compute(p, q, reduction, w)
            with tk.use_backend("reference"):
                want = compute(p64, q, reduction, w)
            compare(got, want, dtype, what=f"{backend} {q} ({reduction})")


@pytest.mark.parametrize("loss", ["mse", "ce", "gaussian"])
def test_many_samples_chunks_and_threads(backend, loss, small_chunks, restore_threads):
    """Enough samples for several chunks and threads (cpp) and pieces (numba)."""
    tk.set_num_threads(2)
    p = make_problem([3, 7, 6, 4 if loss == "gaussian" else 3], "tanh", loss, N=700, seed=2)
    w = random_weights(700, 9)
    for q in ("loss_and_grad", "hvp_multi", "ggn_vp", "hessian", "ggn", "hessian_blocks", "ggn_diag",
              "hessian_diag"):
        got = compute(p, q, "mean", w)
        with tk.use_backend("reference"):
            want = compute(p, q, "mean", w)
        compare(got, want, what=f"{backend} {q}")


@pytest.mark.skipif(_core is None, reason="the cpp backend is not built")
@pytest.mark.parametrize("route", [1, -1], ids=["gram", "kronecker"])
@pytest.mark.parametrize("loss", ["mse", "ce", "gaussian"])
def test_cpp_ggn_routes_with_weights(route, loss):
    p = make_problem([3, 9, 2], "tanh", loss, N=300, seed=4)
    w = random_weights(300, 3)
    with tk.use_backend("reference"):
        want = [compute(p, q, "sum", w) for q in ("ggn", "hessian")]
        want.append(p.net.loss_and_grad(p.theta, p.X, p.Y, "sum", w))
    with tk.use_backend("cpp"), gram_route(route):
        got = [compute(p, q, "sum", w) for q in ("ggn", "hessian")]
        got.append(p.net.loss_grad_ggn(p.theta, p.X, p.Y, "sum", sample_weight=w)[:2])
    compare(got, want)


# ----------------------------------------------------------------------------- w = 1 is the old path
@pytest.mark.parametrize("case", CASES[:4], ids=CASE_IDS[:4])
def test_unit_or_equal_weights_are_bitwise_unweighted(backend, case):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N=N, l2=0.1, seed=6)
    for q in DATA_QUANTITIES:
        plain = {r: compute(p, q, r, None) for r in REDUCTIONS}
        assert bitwise_equal(compute(p, q, "sum", np.ones(N)), plain["sum"]), q
        assert bitwise_equal(compute(p, q, "mean", np.ones(N)), plain["mean"]), q
        assert bitwise_equal(compute(p, q, "mean", np.full(N, 2.5)), plain["mean"]), q
        assert bitwise_equal(compute(p, q, "mean", np.ones(N, np.int64)), plain["mean"]), q


def test_ggn_factor_with_weights(backend):
    for loss in ("mse", "ce"):
        p = make_problem([3, 5, 3], "tanh", loss, N=8, seed=7)
        w = random_weights(8, 5)
        for reduction in REDUCTIONS:
            B = p.net.ggn_factor(p.theta, p.X, p.Y, reduction, sample_weight=w)
            compare(B.T @ B, p.net.ggn(p.theta, p.X, p.Y, reduction, sample_weight=w), what=f"{loss} {reduction}")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("w, err, match", [
    (np.array([1.0, -0.5, 1.0, 1.0]), ValueError, ">= 0"),
    (np.array([1.0, np.nan, 1.0, 1.0]), ValueError, "NaN"),
    (np.array([1.0, np.inf, 1.0, 1.0]), ValueError, "NaN or Inf"),
    (np.zeros(4), ValueError, "positive"),
    (np.ones(3), ValueError, r"shape \(4,\)"),
    (np.ones((4, 1)), ValueError, r"shape \(4,\)"),
    (np.array(["a", "b", "c", "d"]), TypeError, "numeric"),
    (np.array([1e308, 1e308, 1.0, 1.0]), ValueError, "finite sum"),
])
def test_bad_weights_are_refused_naming_the_argument(w, err, match):
    p = make_problem([2, 3, 2], "tanh", "mse", N=4)
    V = p.V[:, 0]
    calls = [lambda: p.net.loss(p.theta, p.X, p.Y, sample_weight=w),
             lambda: p.net.loss_and_grad(p.theta, p.X, p.Y, sample_weight=w),
             lambda: p.net.hvp(p.theta, p.X, p.Y, V, sample_weight=w),
             lambda: p.net.ggn_vp(p.theta, p.X, p.Y, V, sample_weight=w),
             lambda: p.net.hessian(p.theta, p.X, p.Y, sample_weight=w),
             lambda: p.net.ggn_blocks(p.theta, p.X, p.Y, sample_weight=w),
             lambda: p.net.hessian_diag(p.theta, p.X, p.Y, "sum", sample_weight=w),
             lambda: p.net.ggn_factor(p.theta, p.X, p.Y, sample_weight=w),
             lambda: tk.minimize(p.net, p.theta, p.X, p.Y, method="gd", max_iter=1, sample_weight=w)]
    for call in calls:
        with pytest.raises(err, match="sample_weight") as info:
            call()
        assert info.match(match)


# ----------------------------------------------------------------------------- minimize
@pytest.mark.parametrize("method, options", [("lm", {}), ("newton", {}), ("newton-cg", {}),
                                             ("lbfgs", {}), ("gd", {"lr": 0.05})])
def test_minimize_with_integer_weights_is_repeated_samples(method, options):
    """A run on integer-weighted samples takes the same iterates as a run on the repeated samples
    (the same loss, gradient and curvature at every point, up to summation order)."""
    p = make_problem([2, 6, 1], "tanh", "mse", N=12, l2=1e-3, seed=8)
    counts = np.random.default_rng(1).integers(0, 4, 12)
    rep = _repeated(p, counts)
    a = tk.minimize(p.net, p.theta, p.X, p.Y, method=method, max_iter=6, sample_weight=counts, **options)
    b = tk.minimize(rep.net, rep.theta, rep.X, rep.Y, method=method, max_iter=6, **options)
    assert a.nit == b.nit > 0
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-9)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-7, atol=1e-9)
    assert a.loss == pytest.approx(p.net.loss(a.theta, p.X, p.Y, sample_weight=counts), rel=1e-12)


def test_minimize_mini_batches_with_weights():
    """Mini-batches are weighted within themselves; a batch of zero weights moves theta by its
    l2 term only, and the run's reported loss is the weighted one."""
    p = make_problem([2, 5, 1], "tanh", "mse", N=10, l2=1e-2, seed=9)
    w = np.array([0, 0, 0, 0, 0, 1.0, 2.0, 0.5, 3.0, 1.0])
    res = tk.minimize(p.net, p.theta, p.X, p.Y, method="adam", max_iter=5, batch_size=5, seed=0,
                      sample_weight=w, lr=1e-2)
    assert res.nit == 5
    assert res.loss == pytest.approx(p.net.loss(res.theta, p.X, p.Y, sample_weight=w), rel=1e-12)
    assert res.loss < p.net.loss(p.theta, p.X, p.Y, sample_weight=w)


def test_float32_weights_tolerance(backend):
    """float32 networks with weights of very different sizes stay within float32's tolerance."""
    p = make_problem([4, 6, 3], "tanh", "ce", N=40, dtype=np.float32, seed=10)
    w = np.geomspace(1e-3, 1e3, 40)
    got = p.net.hessian(p.theta, p.X, p.Y, sample_weight=w)
    with tk.use_backend("reference"):
        p64 = p.astype(np.float64)
        want = p64.net.hessian(p64.theta, p64.X, p64.Y, sample_weight=w)
    compare(got, want, np.float32, rtol=rtol_for(np.float32))


# ----------------------------------------------------------------------------- scikit-learn
@pytest.mark.parametrize("name", ["MLPRegressor", "MLPClassifier"])
def test_sklearn_fit_with_integer_weights_is_repeated_samples(name):
    sk = pytest.importorskip("taylorkern.sklearn", exc_type=ImportError)
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (30, 2))
    y = np.sin(3 * X[:, 0]) + X[:, 1] if name == "MLPRegressor" else (X[:, 0] * X[:, 1] > 0).astype(int)
    counts = rng.integers(0, 3, 30)
    counts[:2] = 1  # both classes present
    if name == "MLPClassifier":
        counts[np.flatnonzero(y == 0)[0]] = counts[np.flatnonzero(y == 1)[0]] = 1
    est = getattr(sk, name)(hidden_layer_sizes=(4,), max_iter=8, random_state=0)
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = est.fit(X, y, sample_weight=counts).theta_.copy()
        b = est.fit(np.repeat(X, counts, axis=0), np.repeat(y, counts)).theta_.copy()
        c = est.fit(X, y, sample_weight=counts.tolist()).theta_.copy()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="sample_weight"):
        est.fit(X, y, sample_weight=-np.ones(30))
