"""Shared tolerances, problem builders, comparison helpers and the ``backend`` fixture.

Every backend that loads here (``tk.available_backends()``) is forced in turn through the
``backend`` fixture, so a compiled backend, once built, runs the very tests the reference
runs.  Results are compared with the float64 reference on the same (exactly representable)
inputs, norm-wise: ``max|a - b| / max|b|``.

Test modules import the helpers below with ``from conftest import ...`` (tests/ has no
``__init__.py``, so pytest puts it on sys.path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# pyproject turns warnings into errors.  While the compiled module is not built, importing
# the package warns once (RuntimeWarning: falling back to the reference backend); that is
# dispatch's documented behaviour, tested in test_dispatch.py in a subprocess, so ignore
# exactly that category for exactly this import and nowhere else.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import taylorkern as tk

# ----------------------------------------------------------------------------- tolerances
# Relative (norm-wise, scaled by max|expected|) tolerances, one per dtype.
RTOL_F64 = 1e-10  # float64 vs float64 reference: only summation order differs (~1e-15 x terms).
RTOL_F32 = 1e-4   # float32 vs float64 reference: eps32 = 1.2e-7, times sums over N*P terms.
RTOL = {np.dtype(np.float64): RTOL_F64, np.dtype(np.float32): RTOL_F32}

# Finite differences (always in float64, on the reference): separate and looser.
FD_STEP_GRAD = 1e-6  # central difference of the loss: O(h^2) truncation + O(eps/h) rounding.
FD_RTOL_GRAD = 1e-6  # that error is ~1e-10 relative; 1e-6 leaves room for curvature.
FD_STEP_HESS = 1e-5  # central difference of the gradient for Hessian columns / Jacobians.
FD_RTOL_HESS = 1e-6  # O(h^2 * third derivative) ~1e-10 plus O(eps/h) ~1e-11.
FD_STEP_CURV = 1e-4  # second difference of the loss, (L(+h) - 2L + L(-h)) / h^2.
FD_RTOL_CURV = 1e-5  # O(h^2) truncation ~1e-8 and O(eps/h^2) rounding ~1e-8.
FD_STEP_ACT = 1e-6   # central differences of reference.act on a grid of z.
FD_RTOL_ACT = 1e-7   # O(eps/h) ~1e-10 rounding, O(h^2) truncation: sigma', sigma'' are O(1).


def rtol_for(dtype) -> float:
    return RTOL[np.dtype(dtype)]


# ----------------------------------------------------------------------------- comparison
def _as_list(x):
    """A result as a list of arrays: tuples (loss, grad) and block lists flattened."""
    if isinstance(x, (list, tuple)):
        out = []
        for item in x:
            out.extend(_as_list(item))
        return out
    return [np.asarray(x)]


def rel_err(a, b) -> float:
    """max|a - b| / max|b| over all parts (absolute error where b is exactly zero)."""
    la, lb = _as_list(a), _as_list(b)
    assert len(la) == len(lb), f"{len(la)} parts vs {len(lb)} parts"
    diff = scale = 0.0
    for x, y in zip(la, lb):
        assert x.shape == y.shape, f"shape {x.shape} vs expected {y.shape}"
        if y.size:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            assert np.isfinite(x64).all(), "result contains NaN or Inf"
            diff = max(diff, float(np.max(np.abs(x64 - y64))))
            scale = max(scale, float(np.max(np.abs(y64))))
    return diff / scale if scale > 0 else diff


def compare(a, b, dtype=np.float64, rtol=None, what="result"):
    """Assert a matches the expected b within the tolerance of dtype (or rtol)."""
    tol = rtol_for(dtype) if rtol is None else rtol
    err = rel_err(a, b)
    assert err <= tol, f"{what}: relative error {err:.3g} exceeds {tol:.1g}"


def bitwise_equal(a, b) -> bool:
    la, lb = _as_list(a), _as_list(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(la, lb))


# ----------------------------------------------------------------------------- problems
@dataclasses.dataclass
class Problem:
    """A network and data: theta, X, Y (labels for ce) and directions V of shape (P, 3)."""

    net: tk.MLP
    theta: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    V: np.ndarray
    name: str

    @property
    def N(self) -> int:
        return self.X.shape[0]

    def astype(self, dtype, l2=None) -> Problem:
        """The same values (exactly, when widening) on a network of another dtype / l2."""
        net = self.net
        new = tk.MLP(net.sizes, activation=net.activation, loss=net.loss_name,
                     l2=net.l2 if l2 is None else l2, dtype=dtype, loss_scale=net.loss_scale)
        Y = self.Y if net.loss_name == "ce" else self.Y.astype(dtype)
        return Problem(new, self.theta.astype(dtype), self.X.astype(dtype), Y,
                       self.V.astype(dtype), self.name)

    def __str__(self):  # pragma: no cover - shown in failure messages
        return self.name


def random_theta(net, rng) -> np.ndarray:
    """Not an init: weights ~ N(0, (g/sqrt(fan_in))^2) with a random gain g per layer, and
    non-zero biases, so that pre-activations are O(1) and every nonlinearity is exercised."""
    params = []
    for a, b in zip(net.sizes[:-1], net.sizes[1:]):
        gain = rng.uniform(0.6, 1.6)
        params.append((rng.standard_normal((a, b)) * gain / np.sqrt(a), 0.4 * rng.standard_normal(b)))
    return net.flatten(params)


def problem_name(sizes, activation, loss, N) -> str:
    act = activation if isinstance(activation, str) else "+".join(activation)
    return f"{loss}-{act}-{'x'.join(map(str, sizes))}-N{N}"


def make_problem(sizes, activation="tanh", loss="mse", N=5, l2=0.0, dtype=np.float64, seed=0,
                 m=3) -> Problem:
    """A random problem, generated in float64 and rounded once to dtype (so that its float64
    copy, ``astype(np.float64)``, holds exactly the same values)."""
    net64 = tk.MLP(sizes, activation=activation, loss=loss, l2=l2, dtype=np.float64)
    rng = np.random.default_rng([seed, len(sizes), N, *sizes])
    theta = random_theta(net64, rng)
    X = rng.standard_normal((N, sizes[0]))
    if loss == "mse":
        Y = rng.standard_normal((N, sizes[-1]))
    elif loss in ("huber", "soft_l1"):  # residuals on both sides of huber's delta = 1
        Y = 2.0 * rng.standard_normal((N, sizes[-1]))
    elif loss == "bce":  # probabilities, some exactly 0 or 1
        Y = rng.uniform(0.0, 1.0, (N, sizes[-1]))
        Y[rng.random(Y.shape) < 0.3] = 0.0
        Y[rng.random(Y.shape) < 0.3] = 1.0
    elif loss == "poisson":  # counts
        Y = rng.poisson(2.0, (N, sizes[-1])).astype(np.float64)
    elif loss == "gaussian":  # one target per (mean, log-variance) pair of outputs
        Y = rng.standard_normal((N, sizes[-1] // 2))
    else:
        Y = rng.integers(0, sizes[-1], size=N)
    V = rng.standard_normal((net64.num_params, m))
    p = Problem(net64, theta, X, Y, V, problem_name(sizes, activation, loss, N))
    return p if np.dtype(dtype) == np.float64 else p.astype(dtype)


# Awkward shapes (N = 1, one-unit layers, a single layer, 4+ layers, dL = 1 and > 1), each
# with its sample count, plus a few drawn at random with a fixed seed.  P <= ~150.
EDGE_SHAPES = [
    ([3, 2], 1),              # single layer, one sample
    ([2, 5, 1], 4),           # one output (mse only)
    ([4, 1, 3], 6),           # one-unit hidden layer
    ([3, 4, 3, 5, 2], 5),     # four layers
    ([2, 3, 1, 4, 3], 3),     # four layers with a one-unit bottleneck
    ([5, 8, 6, 3], 9),        # the largest, P = 123
    ([6, 7, 4], 1),           # N = 1 with a hidden layer
]


def _random_shapes(count, seed=20240611):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        depth = int(rng.integers(1, 5))
        sizes = [int(s) for s in rng.integers(1, 7, size=depth + 1)]
        sizes[-1] = max(sizes[-1], 2)
        n_params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        if n_params <= 150:
            out.append((sizes, int(rng.integers(1, 9))))
    return out


SHAPES = EDGE_SHAPES + _random_shapes(3)


def shapes_for(loss):
    if loss == "gaussian":  # a mean and a log-variance per target
        return [(s, n) for s, n in SHAPES if s[-1] % 2 == 0]
    return [(s, n) for s, n in SHAPES if loss == "mse" or s[-1] >= 2]


def case_param(sizes, activation, loss, N):
    return pytest.param((tuple(sizes), activation, loss, N), id=problem_name(sizes, activation, loss, N))


def cases(per_combo=2, activations=tk.ACTIVATIONS, losses=tk.LOSSES):
    """(sizes, activation, loss, N) for every activation x loss, rotating through the shapes
    so that each shape meets several activations; ``per_combo`` shapes per combination."""
    out = []
    for i, act in enumerate(activations):
        for j, loss in enumerate(losses):
            if loss not in ("mse", "ce") and (i + j) % 2:
                # the losses after mse and ce meet every other activation (each activation meets
                # some of them), to keep the suite's time; tests/test_losses.py adds their own
                continue
            pool = shapes_for(loss)
            for r in range(per_combo):
                sizes, N = pool[(i * per_combo * len(losses) + j * per_combo + r) % len(pool)]
                out.append(case_param(sizes, act, loss, N))
    return out


# ----------------------------------------------------------------------------- quantities
QUANTITIES = ("predict", "loss", "loss_and_grad", "hvp", "hvp_multi", "ggn_vp", "ggn_vp_multi",
              "jacobian", "hessian", "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag",
              "ggn_diag")
DATA_QUANTITIES = tuple(q for q in QUANTITIES if q not in ("predict", "jacobian"))


def compute(p: Problem, q: str, reduction="mean", sample_weight=None):
    """One quantity of problem p on the active backend (data quantities with sample_weight)."""
    net = p.net
    if q == "predict":
        return net.predict(p.theta, p.X)
    if q == "jacobian":
        return net.jacobian(p.theta, p.X)
    if q in ("hvp", "ggn_vp"):
        return getattr(net, q)(p.theta, p.X, p.Y, p.V[:, 0], reduction, sample_weight)
    if q in ("hvp_multi", "ggn_vp_multi"):
        return getattr(net, q[:-6])(p.theta, p.X, p.Y, p.V, reduction, sample_weight)
    return getattr(net, q)(p.theta, p.X, p.Y, reduction, sample_weight)


def random_weights(N, seed, zeros=True):
    """Positive random sample weights of different magnitudes, a quarter of them exactly zero
    (with zeros, N > 2)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.1, 3.0, N) * 10.0 ** rng.integers(-1, 2, N)
    if zeros and N > 2:
        w[rng.choice(N, size=max(1, N // 4), replace=False)] = 0.0
    return w


def reference(p: Problem, q: str, reduction="mean"):
    """The same quantity from the float64 reference, on p's values widened to float64."""
    with tk.use_backend("reference"):
        return compute(p.astype(np.float64), q, reduction)


def output_hessians(p: Problem, F: np.ndarray, reduction="mean", exact=False) -> np.ndarray:
    """Per-sample output curvature of the GGN, shape (N, k, k), written from the loss
    definitions: d^2 loss / d f^2 for every loss but gaussian, mse 2/(N*k) I; bce, poisson,
    huber, soft_l1 1/(N*k) diag of sigmoid'(f), exp(f), [|f - y| <= c] and
    (1 + ((f - y)/c)^2)^(-3/2); ce (diag(p) - p p^T) / N ("sum" drops the 1/N), its diagonal
    p_c (1 - p_c) as p_c sum_{j != c} p_j: positive terms only, exact to a few ulp also where
    p_c is near 1.  gaussian (f = [mu, v], h = k/2 pairs, r = y - mu): its Fisher
    1/(N*h) diag(e^-v, 1/2) per pair, or with ``exact`` the Hessian
    1/(N*h) [[e^-v, r e^-v], [r e^-v, r^2 e^-v / 2]]."""
    N, k = F.shape
    s = 1.0 / N if reduction == "mean" else 1.0
    F = F.astype(np.float64)
    if p.net.loss_name == "gaussian":
        h = k // 2
        E, R = np.exp(-F[:, h:]), p.Y.astype(np.float64) - F[:, :h]
        H = np.zeros((N, k, k))
        for j in range(h):
            H[:, j, j] = E[:, j]
            H[:, h + j, h + j] = 0.5 * R[:, j] ** 2 * E[:, j] if exact else 0.5
            if exact:
                H[:, j, h + j] = H[:, h + j, j] = R[:, j] * E[:, j]
        return s / h * H
    if p.net.loss_name == "mse":
        return np.broadcast_to(s * 2.0 / k * np.eye(k), (N, k, k)).copy()
    if p.net.loss_name in ("bce", "poisson", "huber", "soft_l1"):  # s/k diag(l'')
        sig = 1.0 / (1.0 + np.exp(-F))
        u = (F - p.Y) / p.net.loss_scale if p.net.loss_name in ("huber", "soft_l1") else None
        h = {"bce": lambda: sig * (1.0 - sig), "poisson": lambda: np.exp(F),
             "huber": lambda: (np.abs(u) <= 1.0).astype(np.float64),
             "soft_l1": lambda: (1.0 + u * u) ** -1.5}[p.net.loss_name]()
        return s / k * h[:, :, None] * np.eye(k)
    E = np.exp(F - F.max(axis=1, keepdims=True))
    prob = E / E.sum(axis=1, keepdims=True)
    H = -prob[:, :, None] * prob[:, None, :]
    for c in range(k):
        H[:, c, c] = prob[:, c] * prob.sum(axis=1, where=np.arange(k) != c)
    return s * H


# ----------------------------------------------------------------------------- array inputs
class RecordingBackend:
    """Stands in for the active backend, forwarding every call to it and keeping the arrays
    each call received (``calls``: a list of (function name, positional arguments)), so that a
    test can see what memory reached the kernels (tensors read in place: test_torch.py,
    test_jax.py, test_array_inputs.py)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls = []

    def __getattr__(self, attr):
        fn = getattr(self.inner, attr)
        if not callable(fn):
            return fn

        def recorded(*args, **kwargs):
            self.calls.append((attr, args))
            return fn(*args, **kwargs)
        return recorded

    def received(self, index):
        """The ``index``-th positional argument of every call that had one (1: theta, 2: X, ...)."""
        return [(attr, args[index]) for attr, args in self.calls if len(args) > index]


@pytest.fixture
def recording_backend(monkeypatch):
    """The active backend wrapped in a RecordingBackend for the test's duration."""
    import taylorkern.model as model_module
    spy = RecordingBackend(model_module._dispatch.current())
    monkeypatch.setattr(model_module._dispatch, "current", lambda: spy)
    return spy


MLP_CALLS = ("predict", "jacobian", "loss", "loss_and_grad", "loss_grad_ggn", "hvp", "ggn_vp", "hessian",
             "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag", "ggn_factor")


def call_mlp(net, name, theta, X, Y, V):
    """MLP method ``name`` with these arguments (V only for the products)."""
    fn = getattr(net, name)
    if name in ("predict", "jacobian"):
        return fn(theta, X)
    if name in ("hvp", "ggn_vp"):
        return fn(theta, X, Y, V)
    return fn(theta, X, Y)


# ----------------------------------------------------------------------------- interruption
# Long calls stop on SIGINT (docs/design.md, "Interruption"): test_interrupt.py (the CPU
# backends) and test_cuda.py (the GPU) start a call, send SIGINT to the process from a timer
# thread shortly after, and measure the time from the signal to KeyboardInterrupt.
INTERRUPT_DELAY = 0.3  # seconds from the call's start to the signal


def max_interrupt_lag():
    """Seconds from the signal to KeyboardInterrupt: half a second on an idle machine, longer in
    proportion where the load average says the call gets a fraction of a core."""
    return 0.5 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (raise KeyboardInterrupt), whatever the runner installed."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled in the main thread only")
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def interrupt_lag(call):
    """Seconds from SIGINT (sent INTERRUPT_DELAY after the call starts) to call's
    KeyboardInterrupt; a call that is not interrupted fails the test (after its full time)."""
    sent = []

    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(INTERRUPT_DELAY, fire)
    start = time.perf_counter()
    timer.start()
    try:
        call()
    except KeyboardInterrupt:
        return time.perf_counter() - sent[0]
    finally:
        timer.cancel()
        timer.join()
    pytest.fail(f"not interrupted: the call ran to its end in {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------------- fixtures
# All backends that load here; TAYLORKERN_BACKEND (which also picks the import-time backend)
# narrows the suite to that one, e.g. to test only the reference while a build is broken.
BACKENDS = ([os.environ["TAYLORKERN_BACKEND"].strip()] if os.environ.get("TAYLORKERN_BACKEND", "").strip()
            else tk.available_backends())


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each available backend forced in turn for the test's duration."""
    with tk.use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _backend_restored():
    """No test may leave another backend active than the one it found."""
    before = tk.backend()
    yield
    assert tk.backend() == before, f"test left backend {tk.backend()!r} active (was {before!r})"


@pytest.fixture
def restore_threads():
    n = tk.get_num_threads()
    yield n
    tk.set_num_threads(n)


@contextlib.contextmanager
def gram_route(mode):
    """cpp's full GGN forced onto the Gram route (1), off it (-1), or the cost model's (0)."""
    from taylorkern import _core
    before = _core._set_gram_route(mode)
    try:
        yield
    finally:
        _core._set_gram_route(before)


@pytest.fixture
def small_chunks():
    """cpp's chunks of samples cut to their least, so that small problems have many: 32 rows
    for the calls that size them by bytes (csrc/common.hpp, chunk_rows), 7 samples for the full
    matrices, blocks and diagonals (csrc/curvature.hpp, max_chunk_rows)."""
    try:
        from taylorkern import _core
    except ImportError:  # no cpp backend: nothing to set
        yield
        return
    before = _core._set_chunk_bytes(16 << 10), _core._set_curvature_chunk(7)
    try:
        yield
    finally:
        _core._set_chunk_bytes(before[0])
        _core._set_curvature_chunk(before[1])


@pytest.fixture
def split_every_call():
    """While the test runs, the compiled kernels split every call over samples across their
    threads however small it is (csrc/common.hpp, sample_threads: below a cost threshold a call
    stays on one thread), so that comparing 1 and 2 threads compares real splits."""
    try:
        from taylorkern import _core
    except ImportError:
        yield
        return
    before = _core._set_sample_parallel_min(1)
    yield
    _core._set_sample_parallel_min(before)


# Hypothesis: reproducible (derandomized), no example database written into the repo, and no
# deadline (the first call of a compiled backend may be slow).
settings.register_profile("taylorkern", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.load_profile("taylorkern")

# When a hypothesis test fails, its pytest plugin imports hypothesis.extra._patching (libcst,
# black) while reporting, inside pytest's warnings-as-errors filter; a DeprecationWarning raised
# by those imports (libcst 1.0 + mypy_extensions does) then aborts the whole session with an
# INTERNALERROR instead of showing the failure.  Import it here once, ignoring only
# DeprecationWarning and only for this third-party import.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # not installed (optional libcst) or changed: the plugin skips patches then
        pass
