"""The routes for few parameters and many samples, and the fused loss, gradient and GGN.

cpp computes the full GGN by one of two routes (docs/curvature.md, "The Gram route"): the Gram
matrix of the Jacobian rows R_n J_n (csrc/gram.cpp) or the Kronecker route (csrc/curvature.cpp),
with tiny networks on SIMD lanes; a cost model picks.  The Hessian of a network of at most one
hidden layer takes the Gram route too, with its two other terms added.  Each route is forced here on random
shapes of either kind, both losses, dtypes and reductions, 1 and 2 threads and many chunks, and
compared with the float64 reference (tolerances: conftest.RTOL).  MLP.loss_grad_ggn must give
what loss_and_grad and ggn give, on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compare, gram_route, make_problem, reference

import taylorkern as tk

try:
    from taylorkern import _core
except ImportError:  # pragma: no cover - no compiled backend: its tests skip
    _core = None

needs_cpp = pytest.mark.skipif(_core is None or "cpp" not in tk.available_backends(),
                               reason="the compiled backend (taylorkern._core) is not available")


def _random_shapes(seed, count):
    """Networks of one hidden layer (the Gram route's own) and of two or three, few outputs."""
    rng = np.random.default_rng(seed)
    shapes = []
    for i in range(count):
        depth = 1 + i % 3
        sizes = [int(rng.integers(1, 6))] + [int(rng.integers(1, 16)) for _ in range(depth)]
        sizes.append(int(rng.integers(1, 4)))
        shapes.append(sizes)
    return shapes


SHAPES = _random_shapes(7, 6) + [[1, 20, 1], [2, 50, 1], [3, 7, 2], [1, 15, 1], [4, 6, 1], [2, 9, 1], [3, 5, 2]]
# every activation, on networks of one hidden layer too (the Hessian's Gram route)
ACTS = [tk.ACTIVATIONS[i % len(tk.ACTIVATIONS)] for i in range(len(SHAPES))]
# route x dtype x loss: the dev loop runs both routes on each shape in one dtype and loss,
# rotating through those, so each shape, activation, loss, dtype and route is in it; the rest of
# the product is exhaustive
VARIANTS = [(route, dtype, loss) for route in ("gram", "kronecker") for dtype in ("f64", "f32")
            for loss in ("mse", "ce", "gaussian")]
CASES = [pytest.param(sizes, act, loss, {"f64": np.float64, "f32": np.float32}[dtype],
                      {"gram": 1, "kronecker": -1}[route],
                      id=f"{route}-{dtype}-{loss}-" + "-".join(map(str, sizes)) + f"-{act}",
                      marks=() if j in (i % 12, (i + 6) % 12) else pytest.mark.exhaustive)
         for i, (sizes, act) in enumerate(zip(SHAPES, ACTS))
         for j, (route, dtype, loss) in enumerate(VARIANTS)]


@needs_cpp
@pytest.mark.parametrize("sizes, act, loss, dtype, route", CASES)
def test_each_route_matches_the_reference(sizes, act, loss, dtype, route, restore_threads, split_every_call):
    """(gaussian's Hessian, indefinite at the output, leaves the Gram route for the Kronecker one.)"""
    if loss == "ce" and sizes[-1] < 2:
        sizes = sizes[:-1] + [2]
    if loss == "gaussian" and sizes[-1] % 2:
        sizes = sizes[:-1] + [sizes[-1] + 1]
    N = 300 + 37 * len(sizes)
    p = make_problem(sizes, act, loss, N=N, l2=0.0, dtype=dtype, seed=len(sizes))
    want = {r: (reference(p, "loss_and_grad", r), reference(p, "ggn", r), reference(p, "hessian", r))
            for r in ("mean", "sum")}
    chunk = _core._set_chunk_bytes(16 << 10)  # many chunks per thread
    try:
        with tk.use_backend("cpp"), gram_route(route):
            for threads in (1, 2):
                tk.set_num_threads(threads)
                for reduction, ((f0, g0), G0, H0) in want.items():
                    G = p.net.ggn(p.theta, p.X, p.Y, reduction)
                    compare(G, G0, dtype, what=f"ggn ({reduction}, {threads} threads)")
                    assert np.array_equal(G, G.T), "the GGN must be exactly symmetric"
                    H = p.net.hessian(p.theta, p.X, p.Y, reduction)
                    compare(H, H0, dtype, what=f"hessian ({reduction}, {threads} threads)")
                    assert np.array_equal(H, H.T), "the Hessian must be exactly symmetric"
                    f, g, G2 = p.net.loss_grad_ggn(p.theta, p.X, p.Y, reduction)
                    compare((f, g, G2), (f0, g0, G0), dtype, what=f"loss_grad_ggn ({reduction})")
    finally:
        _core._set_chunk_bytes(chunk)


@needs_cpp
def test_the_routes_agree_to_rounding(restore_threads):
    """On a network where both routes run, their float64 results agree to rounding (they add
    the same terms in another order)."""
    p = make_problem([2, 30, 1], "tanh", "mse", N=5000, seed=3)
    with tk.use_backend("cpp"):
        with gram_route(1):
            a = p.net.ggn(p.theta, p.X, p.Y)
        with gram_route(-1):
            b = p.net.ggn(p.theta, p.X, p.Y)
    compare(a, b, np.float64, rtol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_loss_grad_ggn_is_loss_and_grad_and_ggn(backend, loss, l2):
    """Every backend, fused or not: the same numbers as the separate calls (l2 included, added
    once by the MLP)."""
    p = make_problem([3, 9, 3], "tanh", loss, N=301, l2=l2, seed=11)
    for reduction in ("mean", "sum"):
        f, g, G = p.net.loss_grad_ggn(p.theta, p.X, p.Y, reduction)
        f1, g1 = p.net.loss_and_grad(p.theta, p.X, p.Y, reduction)
        G1 = p.net.ggn(p.theta, p.X, p.Y, reduction)
        assert isinstance(f, float)
        compare((f, g, G), (f1, g1, G1), np.float64, rtol=1e-12, what=f"{backend} ({reduction})")
        compare((f, g, G), (reference(p, "loss", reduction), reference(p, "loss_and_grad", reduction)[1],
                            reference(p, "ggn", reduction)), np.float64, what="against the reference")


def test_loss_grad_ggn_checks_its_inputs():
    net = tk.MLP([2, 3, 1])
    theta = net.init(seed=0)
    X, Y = np.ones((4, 2)), np.ones((4, 1))
    with pytest.raises(ValueError, match="theta"):
        net.loss_grad_ggn(theta[:-1], X, Y)
    with pytest.raises(ValueError, match="X"):
        net.loss_grad_ggn(theta, X[:, :1], Y)
    with pytest.raises(ValueError, match="reduction"):
        net.loss_grad_ggn(theta, X, Y, reduction="max")


@needs_cpp
# (the dev loop runs half of them: each shape with both N and both quantities)
@pytest.mark.parametrize("sizes, N, gn", [
    pytest.param(sizes, N, gn, id=f"{sizes}-{N}-{'ggn' if gn else 'hessian'}",
                 marks=() if (i + j + gn) % 2 == 0 else pytest.mark.exhaustive)
    for i, sizes in enumerate([[3, 8, 6, 2], [3, 16, 12, 2], [5, 30, 3]])
    for j, N in enumerate([1001, 8 * 300]) for gn in (False, True)])
def test_lanes_path_split_over_threads(sizes, N, gn, restore_threads, split_every_call):
    """Networks of at most 400 parameters take the SIMD-lanes path for the GGN (and for the
    Hessian with one hidden layer; P = 100, 294, 273 here), its samples split over threads in whole
    vectors of 8 (only the last has unused lanes): 1 and 2 threads against the reference, N a
    multiple of 8 and not."""
    p = make_problem(sizes, "tanh", "ce", N=N, seed=4)
    q = "ggn" if gn else "hessian"
    want = reference(p, q)
    with tk.use_backend("cpp"), gram_route(-1):
        for threads in (1, 2):
            tk.set_num_threads(threads)
            compare(getattr(p.net, q)(p.theta, p.X, p.Y), want, np.float64, what=f"{q}, {threads} threads")


@needs_cpp
def test_lm_takes_one_call_per_accepted_iteration():
    """Levenberg-Marquardt evaluates trial points with the fused call: an accepted step already
    holds the next GGN, so each iteration costs one sweep (plus a loss for each rejected trial
    after a rejection)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (2000, 1))
    Y = np.sinc(3 * X)
    net = tk.MLP([1, 10, 1], activation="tanh")
    res = tk.minimize(net, net.init(seed=0), X, Y, method="lm", max_iter=60)
    accepted = int(res.history["accepted"][1:].sum())
    rejected = res.nit - accepted
    assert accepted > 10
    # one GGN for the start, then one fused call per trial evaluated with it
    assert res.nhev <= 1 + res.nit
    assert res.nhev >= 1 + accepted
    assert res.nfev <= 1 + res.nit + rejected
    assert res.loss < 0.1 * net.loss(net.init(seed=0), X, Y)
