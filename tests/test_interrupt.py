"""Long calls stop promptly on SIGINT (docs/design.md, threading): KeyboardInterrupt within
half a second of the signal, from the C++ kernels (which poll between chunks of work) and from
the numba backend (which calls its kernels a chunk of samples at a time), and the next call on
the same network is correct (the workspace pool is intact).

Each case starts a call that would take several seconds, sends SIGINT to the process from a
timer thread shortly after, and measures the time from the signal to the exception.  If the
call is not interrupted the test fails on the lag (and takes the call's full time)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import interrupt_lag, max_interrupt_lag

import taylorkern as tk

pytestmark = pytest.mark.usefixtures("python_sigint")  # conftest.py

BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(b not in tk.available_backends(),
                                                     reason=f"backend {b!r} unavailable"))
            for b in ("cpp", "numba")]


def problem(sizes, N, seed=0):
    net = tk.MLP(sizes, activation="tanh", loss="mse")
    rng = np.random.default_rng(seed)
    theta = net.init(seed=seed)
    X = rng.standard_normal((N, sizes[0]))
    Y = rng.standard_normal((N, sizes[-1]))
    return net, theta, X, Y


# (name, sizes, N, call on the large problem, check on a small one): each call takes several
# seconds uninterrupted on the large problem.
def _V(net, m, seed=1):
    return np.random.default_rng(seed).standard_normal((net.num_params, m))


CASES = {
    "hessian": ([20, 32, 32, 1], 200_000, lambda net, t, X, Y: net.hessian(t, X, Y)),
    "ggn": ([20, 32, 32, 1], 200_000, lambda net, t, X, Y: net.ggn(t, X, Y)),
    "hessian_blocks": ([20, 64, 64, 1], 400_000, lambda net, t, X, Y: net.hessian_blocks(t, X, Y)),
    "hvp_many": ([20, 64, 64, 1], 10_000, lambda net, t, X, Y: net.hvp(t, X, Y, _V(net, 64))),
    "jacobian": ([20, 64, 64, 10], 4_000, lambda net, t, X, Y: net.jacobian(t, X)),
    "hessian_diag": ([20, 64, 64, 64, 1], 1_000_000, lambda net, t, X, Y: net.hessian_diag(t, X, Y)),
    "loss_and_grad": ([20, 64, 64, 1], 4_000_000, lambda net, t, X, Y: net.loss_and_grad(t, X, Y)),
    # tiny networks take the SIMD-lanes paths of the C++ kernels, which poll between blocks
    "loss_and_grad_tiny": ([1, 20, 1], 16_000_000, lambda net, t, X, Y: net.loss_and_grad(t, X, Y)),
    "ggn_tiny": ([1, 20, 1], 8_000_000, lambda net, t, X, Y: net.ggn(t, X, Y)),
    "hvp_tiny": ([1, 20, 1], 16_000_000, lambda net, t, X, Y: net.hvp(t, X, Y, _V(net, 1)[:, 0])),
    # wide layers: the numba kernels' chunks are tall there, its pieces bounded by their work (B of the
    # 1024-wide layer from 10 rows per sample keeps the cpp call at seconds)
    "kfac_factors": ([512, 1024, 10], 20_000, lambda net, t, X, Y: [m for ab in net.kfac_factors(t, X, Y)
                                                                    for m in ab]),
}


# the dev loop interrupts each call on one backend, alternating; the other is exhaustive
@pytest.mark.parametrize("case, backend", [
    pytest.param(case, backend.values[0], id=f"{case}-{backend.values[0]}",
                 marks=[*backend.marks, *(() if (i + j) % 2 == 0 else (pytest.mark.exhaustive,))])
    for i, case in enumerate(sorted(CASES)) for j, backend in enumerate(BACKENDS)])
def test_long_call_interrupted_then_next_call_correct(case, backend):
    """After the interrupt, a call on the same network (its pooled workspace) gives what a
    fresh network gives."""
    sizes, N, call = CASES[case]
    net, theta, X, Y = problem(sizes, N)
    fresh = tk.MLP(sizes, activation="tanh", loss="mse")
    Xs, Ys = X[:300], Y[:300]
    with tk.use_backend(backend):
        call(net, theta, Xs, Ys)  # compiled (numba), a workspace in the pool
        lag = interrupt_lag(lambda: call(net, theta, X, Y))
        got = call(net, theta, Xs, Ys)
        want = call(fresh, theta, Xs, Ys)
    print(f"{backend} {case}: lag {lag * 1e3:.0f} ms (load {os.getloadavg()[0]:.1f})")
    for g, w in zip(_flat(got), _flat(want)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14 * np.abs(w).max())
    assert lag < max_interrupt_lag(), f"{backend} {case}: KeyboardInterrupt {lag:.2f} s after SIGINT"


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [np.asarray(v, float) for v in x]
    return [np.asarray(x, float)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_minimize_interrupted(backend):
    """An optimizer loop stops at SIGINT (between or inside its iterations' calls), and a
    following run is unaffected."""
    net, theta, X, Y = problem([20, 64, 64, 1], 20_000)
    with tk.use_backend(backend):
        tk.minimize(net, theta, X[:50], Y[:50], method="lbfgs", max_iter=2)
        lag = interrupt_lag(lambda: tk.minimize(net, theta, X, Y, method="lbfgs", max_iter=10**6,
                                                gtol=0.0, ftol=0.0, xtol=0.0))
        got = tk.minimize(net, theta, X[:200], Y[:200], method="lbfgs", max_iter=5)
        fresh = tk.MLP(net.sizes, activation="tanh", loss="mse")
        want = tk.minimize(fresh, theta, X[:200], Y[:200], method="lbfgs", max_iter=5)
    print(f"{backend} minimize: lag {lag * 1e3:.0f} ms")
    np.testing.assert_allclose(got.theta, want.theta, rtol=1e-12, atol=1e-14)
    assert lag < max_interrupt_lag(), f"{backend} minimize: KeyboardInterrupt {lag:.2f} s after SIGINT"


NUMBA = pytest.mark.skipif("numba" not in tk.available_backends(), reason="numba is not installed")


@NUMBA
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_numba_pieces_match_one_call(monkeypatch, loss, reduction):
    """The numba backend's calls in pieces of samples (what makes them interruptible) give the
    one-call results up to summation order."""
    from taylorkern.backends import numba as nb
    net = tk.MLP([3, 6, 5, 4], activation="tanh", loss=loss)
    rng = np.random.default_rng(2)
    theta = net.init(seed=2)
    N = 37
    X = rng.standard_normal((N, 3))
    Y = rng.integers(0, 4, N) if loss == "ce" else rng.standard_normal((N, 4))
    V = rng.standard_normal((net.num_params, 3))
    noise = rng.random((N, 2)) if loss == "ce" else rng.standard_normal((N, 2, 4))
    bases = [(np.linalg.qr(rng.standard_normal((a + 1, a + 1)))[0], np.linalg.qr(rng.standard_normal((b, b)))[0])
             for a, b in zip(net.sizes[:-1], net.sizes[1:])]
    calls = {
        "predict": lambda: nb.predict(net, theta, X),
        "loss": lambda: nb.loss(net, theta, X, Y, reduction),
        "loss_and_grad": lambda: nb.loss_and_grad(net, theta, X, Y, reduction),
        "hvp": lambda: nb.hvp(net, theta, X, Y, V, reduction),
        "ggn_vp": lambda: nb.ggn_vp(net, theta, X, Y, V, reduction),
        "jacobian": lambda: nb.jacobian(net, theta, X),
        "hessian": lambda: nb.hessian(net, theta, X, Y, reduction),
        "ggn": lambda: nb.ggn(net, theta, X, Y, reduction),
        "hessian_blocks": lambda: nb.hessian_blocks(net, theta, X, Y, reduction),
        "ggn_blocks": lambda: nb.ggn_blocks(net, theta, X, Y, reduction),
        "hessian_diag": lambda: nb.hessian_diag(net, theta, X, Y, reduction),
        "ggn_diag": lambda: nb.ggn_diag(net, theta, X, Y, reduction),
        "kfac_factors": lambda: [m for ab in nb.kfac_factors(net, theta, X, Y, reduction) for m in ab],
        "kfac_factors (mc)": lambda: [m for ab in nb.kfac_factors(net, theta, X, Y, reduction, noise=noise)
                                      for m in ab],
        "kfac_eigen_scales": lambda: nb.kfac_factors(net, theta, X, Y, reduction, bases=bases),
    }
    whole = {name: call() for name, call in calls.items()}
    monkeypatch.setattr(nb, "_PIECE_WORK", 1)
    monkeypatch.setattr(nb, "_PIECE_MIN", 8)
    monkeypatch.setattr(nb._kernels().curv, "chunk_size", lambda *args: 8)
    assert nb._pieces(N, 1, 8) == [(0, 9), (9, 18), (18, 27), (27, 37)]
    for name, call in calls.items():
        for g, w in zip(_flat(call()), _flat(whole[name])):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14 * np.abs(w).max(), err_msg=name)
