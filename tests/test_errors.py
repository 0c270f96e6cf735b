"""Bad input is refused with a ValueError/TypeError naming the argument, before any backend
runs; oversized requests are refused up front (TooLargeError) without allocating; odd but
valid input (non-contiguous, Fortran order, other dtypes, read-only) gives the same numbers.
Also the MLP constructor, init schemes and the flatten/unflatten layout."""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
from conftest import QUANTITIES, compare, compute, make_problem

import taylorkern as tk
import taylorkern.model as model_module

METHODS_XY = ("loss", "loss_and_grad", "hvp", "ggn_vp", "hessian", "ggn", "hessian_blocks",
              "ggn_blocks", "hessian_diag", "ggn_diag")
METHODS_X = ("predict", "jacobian")
METHODS_ALL = METHODS_X + METHODS_XY
METHODS_V = ("hvp", "ggn_vp")


def call(p, method, **override):
    """p.net.<method> with p's arguments, any of them replaced by ``override``."""
    a = dict(theta=p.theta, X=p.X, Y=p.Y, V=p.V[:, 0], reduction="mean")
    a.update(override)
    if method in METHODS_X:
        return getattr(p.net, method)(a["theta"], a["X"])
    if method in METHODS_V:
        return getattr(p.net, method)(a["theta"], a["X"], a["Y"], a["V"], reduction=a["reduction"])
    return getattr(p.net, method)(a["theta"], a["X"], a["Y"], reduction=a["reduction"])


class _Tripwire:
    """Stands in for the active backend: any use of it means a check came too late."""

    name = "tripwire"

    def __getattr__(self, attr):
        raise AssertionError(f"backend function {attr!r} reached with invalid input")


@pytest.fixture
def tripwire(monkeypatch):
    monkeypatch.setattr(model_module._dispatch, "current", lambda: _Tripwire())


def _with(arr, index, value):
    out = np.array(arr, dtype=np.float64, copy=True)
    out.flat[index] = value
    return out


# (argument, description, bad value from the problem, expected exception)
BAD_COMMON = [
    ("theta", "too-short", lambda p: p.theta[:-1], ValueError),
    ("theta", "too-long", lambda p: np.concatenate([p.theta, [0.0]]), ValueError),
    ("theta", "2-D", lambda p: p.theta[None, :], ValueError),
    ("theta", "scalar", lambda p: np.float64(1.0), ValueError),
    ("theta", "integer", lambda p: np.zeros(p.net.num_params, dtype=np.int64), TypeError),
    ("theta", "complex", lambda p: p.theta.astype(np.complex128), TypeError),
    ("theta", "NaN", lambda p: _with(p.theta, 3, np.nan), ValueError),
    ("theta", "Inf", lambda p: _with(p.theta, 0, np.inf), ValueError),
    ("theta", "-Inf", lambda p: _with(p.theta, -1, -np.inf), ValueError),
    ("X", "wrong-width", lambda p: np.ones((p.N, p.X.shape[1] + 1)), ValueError),
    ("X", "1-D", lambda p: p.X[0], ValueError),
    ("X", "3-D", lambda p: p.X[:, :, None], ValueError),
    ("X", "no-samples", lambda p: p.X[:0], ValueError),
    ("X", "NaN", lambda p: _with(p.X, 1, np.nan), ValueError),
    ("X", "Inf", lambda p: _with(p.X, 2, np.inf), ValueError),
    ("X", "complex", lambda p: p.X.astype(np.complex128), TypeError),
    ("X", "bool", lambda p: p.X > 0, TypeError),
    ("X", "strings", lambda p: p.X.astype(str), TypeError),
]

BAD_MSE_Y = [
    ("Y", "wrong-N", lambda p: p.Y[:-1], ValueError),
    ("Y", "wrong-outputs", lambda p: p.Y[:, :-1], ValueError),
    ("Y", "1-D-with-2-outputs", lambda p: p.Y[:, 0], ValueError),
    ("Y", "NaN", lambda p: _with(p.Y, 0, np.nan), ValueError),
    ("Y", "Inf", lambda p: _with(p.Y, 3, -np.inf), ValueError),
    ("Y", "complex", lambda p: p.Y.astype(np.complex128), TypeError),
    ("Y", "strings", lambda p: p.Y.astype(str), TypeError),
]

BAD_CE_Y = [
    ("Y", "one-hot-2-D", lambda p: np.eye(p.net.num_outputs)[p.Y], ValueError),
    ("Y", "wrong-N", lambda p: p.Y[:-1], ValueError),
    ("Y", "label-equal-k", lambda p: np.where(np.arange(p.N) == 1, p.net.num_outputs, p.Y), ValueError),
    ("Y", "label-negative", lambda p: np.where(np.arange(p.N) == 2, -1, p.Y), ValueError),
    ("Y", "non-integral-float", lambda p: p.Y + 0.5, TypeError),
    ("Y", "bool", lambda p: p.Y > 0, TypeError),
    ("Y", "strings", lambda p: p.Y.astype(str), TypeError),
    ("Y", "NaN-float", lambda p: _with(p.Y, 0, np.nan), (TypeError, ValueError)),
]

BAD_V = [
    ("V", "wrong-P", lambda p: p.V[:-1], ValueError),
    ("V", "3-D", lambda p: p.V[:, :, None], ValueError),
    ("V", "no-columns", lambda p: p.V[:, :0], ValueError),
    ("V", "NaN", lambda p: _with(p.V, 5, np.nan), ValueError),
    ("V", "Inf", lambda p: _with(p.V[:, 0], 1, np.inf), ValueError),
    ("V", "complex", lambda p: p.V.astype(np.complex128), TypeError),
]

BAD_REDUCTION = [
    ("reduction", r, (lambda r: lambda p: r)(r), ValueError) for r in ("avg", "MEAN", None, ["mean"])
]


def _bad_inputs(loss, method):
    """Every bad value that applies to method: theta and X for all, Y and reduction for the
    data calls, V for the products."""
    bad = list(BAD_COMMON)
    if method in METHODS_XY:
        bad += (BAD_CE_Y if loss == "ce" else BAD_MSE_Y) + BAD_REDUCTION
    if method in METHODS_V:
        bad += BAD_V
    return bad


@pytest.mark.parametrize("method", METHODS_ALL)
@pytest.mark.parametrize("loss", ["mse", "ce", "gaussian"])
def test_bad_input_is_refused_before_any_kernel(loss, method, tripwire):
    """Each method with each bad value of each of its arguments, with no backend to reach
    (tripwire): every check runs and every miss is reported, not just the first."""
    p = make_problem([3, 4, 4] if loss == "gaussian" else [3, 4, 3], "tanh", loss, N=5)
    misses = []
    for arg, desc, make_bad, exc in _bad_inputs(loss, method):
        try:
            call(p, method, **{arg: make_bad(p)})
        except exc as e:
            if not re.search(rf"\b{arg}\b", str(e)):
                misses.append(f"{arg} {desc}: message does not name {arg}: {e}")
        except (TypeError, ValueError, AssertionError) as e:  # the wrong type, or the tripwire
            misses.append(f"{arg} {desc}: {type(e).__name__}: {e}")
        else:
            misses.append(f"{arg} {desc}: accepted")
    assert not misses, f"{loss} {method}:\n" + "\n".join(misses)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 10, 11, 43, 700])
def test_non_finite_found_anywhere(dtype, rows):
    """The finiteness check (blocks of 32 or 64 values, then a tail) sees one bad value at
    any position: first, last, inside a block, in the tail."""
    net = tk.MLP([3, 2], dtype=dtype)
    theta = np.zeros(net.num_params, dtype)
    X = np.ones((rows, 3), dtype)
    net.predict(theta, X)
    for pos in sorted({0, 1, X.size // 2, X.size - 2, X.size - 1} - {-1}):
        for bad in (np.nan, np.inf, -np.inf):
            Z = X.copy()
            Z.flat[pos] = bad
            with pytest.raises(ValueError, match="X: contains NaN or Inf"):
                net.predict(theta, Z)


@pytest.mark.parametrize("method", METHODS_XY)
def test_labels_as_integral_floats_or_unsigned_accepted(method):
    """On the active backend only: model.py turns the labels into int64 before any backend."""
    p = make_problem([3, 4, 3], "tanh", "ce", N=6)
    want = call(p, method)
    compare(call(p, method, Y=p.Y.astype(np.float64)), want, what="float labels")
    compare(call(p, method, Y=p.Y.astype(np.uint8)), want, what="uint8 labels")


def test_float32_net_refuses_theta_out_of_float32_range(request):
    p = make_problem([3, 4, 2], "tanh", "mse", N=3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"\btheta\b"):
        p.net.loss(np.full(p.net.num_params, 1e300), p.X, p.Y)


# ----------------------------------------------------------------------------- odd valid input
def _variants(p):
    """(name, theta, X, Y, V): the same values with one argument in another memory layout."""
    P, (N, d0) = p.net.num_params, p.X.shape
    wide = np.zeros((N, 2 * d0), p.X.dtype)
    wide[:, ::2] = p.X
    big = np.zeros(P + 7, p.theta.dtype)
    big[3:3 + P] = p.theta
    strided = np.zeros(2 * P, p.theta.dtype)
    strided[::2] = p.theta
    Vw = np.zeros((P, 2 * p.V.shape[1]), p.V.dtype)
    Vw[:, 1::2] = p.V
    Ystr = np.zeros((2 * N,) + p.Y.shape[1:], p.Y.dtype)
    Ystr[::2] = p.Y
    out = [
        ("X-strided-columns", p.theta, wide[:, ::2], p.Y, p.V),
        ("X-fortran", p.theta, np.asfortranarray(p.X), p.Y, p.V),
        ("X-negative-strides", p.theta, p.X[::-1].copy()[::-1], p.Y, p.V),
        ("theta-offset-view", big[3:3 + P], p.X, p.Y, p.V),
        ("theta-strided", strided[::2], p.X, p.Y, p.V),
        ("Y-strided", p.theta, p.X, Ystr[::2], p.V),
        ("V-strided-fortran", p.theta, p.X, p.Y, np.asfortranarray(Vw[:, 1::2])),
        ("V-transposed-view", p.theta, p.X, p.Y, np.ascontiguousarray(p.V.T).T),
    ]
    if p.Y.ndim == 2:
        out.append(("Y-fortran", p.theta, p.X, np.asfortranarray(p.Y), p.V))
    for name, *arrays in out:
        if name != "theta-offset-view":
            assert not all(a.flags.c_contiguous for a in arrays), name
        else:
            assert arrays[0].base is big and arrays[0].ctypes.data != big.ctypes.data
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_non_contiguous_inputs_give_the_same_results(backend, loss, dtype):
    p = make_problem([4, 5, 3], "gelu", loss, N=6, l2=0.1, dtype=dtype)
    want = {q: compute(p, q) for q in QUANTITIES}
    for name, theta, X, Y, V in _variants(p):
        other = type(p)(p.net, theta, X, Y, V, p.name)
        for q in QUANTITIES:
            compare(compute(other, q), want[q], dtype, what=f"{q} with {name}")


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_inputs_of_another_float_dtype_are_converted(loss):
    """float32 inputs to a float64 net (widened exactly) and float64 inputs to a float32 net
    (rounded once) give the results of inputs already of the net's dtype.  On the active
    backend only: model.py converts them before any backend."""
    p64 = make_problem([4, 5, 3], "sigmoid", loss, N=6, l2=0.1, dtype=np.float32).astype(np.float64)
    p32 = p64.astype(np.float32)
    for net_p, in_p in ((p64, p32), (p32, p64)):
        mixed = type(net_p)(net_p.net, in_p.theta, in_p.X, in_p.Y, in_p.V, net_p.name)
        for q in QUANTITIES:
            compare(compute(mixed, q), compute(net_p, q), net_p.net.dtype,
                    what=f"{q}: {in_p.net.dtype} inputs to a {net_p.net.dtype} net")


def test_integer_inputs_are_converted():
    """On the active backend only: model.py converts them before any backend."""
    p = make_problem([3, 4, 2], "tanh", "mse", N=4)
    Xi = np.arange(12).reshape(4, 3) % 3 - 1
    Yi = np.arange(8).reshape(4, 2) % 2
    Vi = np.arange(p.net.num_params) % 5 - 2
    compare(p.net.loss(p.theta, Xi, Yi), p.net.loss(p.theta, Xi.astype(float), Yi.astype(float)))
    compare(p.net.hvp(p.theta, Xi, Yi, Vi),
            p.net.hvp(p.theta, Xi.astype(float), Yi.astype(float), Vi.astype(float)))


# ----------------------------------------------------------------------------- too large
def _needed_bytes(message):
    m = re.search(r"(\d+(?:\.\d+)?) ([KMGTP]?i?B)\b", message)
    assert m, f"no size in message: {message!r}"
    unit = {"B": 0, "KiB": 1, "MiB": 2, "GiB": 3, "TiB": 4, "PiB": 5}[m.group(2)]
    return float(m.group(1)) * 1024 ** unit


def _refuses(fn, at_least_bytes):
    tracemalloc.start()
    try:
        with pytest.raises(tk.TooLargeError) as info:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)
    assert _needed_bytes(str(info.value)) >= 0.9 * at_least_bytes, str(info.value)
    return str(info.value)


def test_too_large_error_is_value_and_memory_error():
    assert issubclass(tk.TooLargeError, ValueError) and issubclass(tk.TooLargeError, MemoryError)


@pytest.mark.parametrize("method", ["hessian", "ggn", "hessian_blocks", "ggn_blocks"])
def test_full_curvature_of_a_huge_net_is_refused_without_allocating(method):
    """On the active backend only: model.py sizes the result and refuses before any backend."""
    net = tk.MLP([1000, 1000, 1000])
    P = net.num_params
    theta = np.zeros(P)
    X, Y = np.zeros((2, 1000)), np.zeros((2, 1000))
    result_values = P * P if method in ("hessian", "ggn") else sum(s * s for s in net.layer_sizes)
    _refuses(lambda: getattr(net, method)(theta, X, Y), 8 * result_values)


def test_huge_jacobian_is_refused_without_allocating():
    """On the active backend only: model.py refuses before any backend."""
    net = tk.MLP([1000, 1000, 1000], dtype=np.float32)
    theta, X = np.zeros(net.num_params, np.float32), np.zeros((1000, 1000), np.float32)
    _refuses(lambda: net.jacobian(theta, X), 4.0 * 1000 * 1000 * net.num_params)


@pytest.mark.parametrize("method", METHODS_V)
def test_product_with_huge_workspace_is_refused_without_allocating(backend, method):
    """A layer of 10^8 units: even cpp, which keeps the tape and tangents of one chunk of (at
    least 32) samples at a time, would need ~9 values per unit and sample, 230 GB a chunk
    (np.zeros reserves theta and V without touching them)."""
    width = 10 ** 8
    net = tk.MLP([1, width, 1])
    theta, V = np.zeros(net.num_params), np.zeros(net.num_params)
    X, Y = np.zeros((1000, 1)), np.zeros((1000, 1))
    _refuses(lambda: getattr(net, method)(theta, X, Y, V), 8.0 * 32 * 9 * width)


@pytest.mark.parametrize("method", METHODS_V)
def test_product_memory_check_counts_what_the_backend_holds(backend, method, monkeypatch):
    """cpp's R-op keeps the tangents of a chunk of samples at a time (csrc/rop.cpp): a request
    whose tangents for all samples (~74 MB here) would not fit in the memory available runs
    there, and is refused, with that size, by a backend that holds them all."""
    p = make_problem([3, 20, 1], "tanh", "mse", N=2000, seed=3, m=64)
    P, N, m = p.net.num_params, 2000, 64
    all_tangents = 8.0 * (3 * N * m * sum(p.net.sizes) + 2 * P * m)
    want = getattr(p.net, method)(p.theta, p.X, p.Y, p.V)
    impl = tk._dispatch.current()
    monkeypatch.setattr(model_module, "_available_memory_bytes", lambda: 32 << 20)
    if hasattr(impl, "product_memory_values"):
        assert 8.0 * impl.product_memory_values(p.net, N, m) < 16 << 20
        compare(getattr(p.net, method)(p.theta, p.X, p.Y, p.V), want, np.float64, what=method)
    else:
        _refuses(lambda: getattr(p.net, method)(p.theta, p.X, p.Y, p.V), all_tangents)


@pytest.mark.parametrize("method", METHODS_V)
def test_huge_zero_stride_directions_are_refused_before_any_copy(backend, method):
    """A broadcast V of shape (P, 10^9) is 4 bytes of memory until something copies it (2.4 TB
    as float64: more than any machine has; 10^7 columns fit the RAM of a large one)."""
    net = tk.MLP([3, 50, 2])
    P = net.num_params
    theta, X, Y = np.zeros(P), np.zeros((4, 3)), np.zeros((4, 2))
    V = np.broadcast_to(np.float32(1.0), (P, 10 ** 9))  # float32: the check must come before conversion
    _refuses(lambda: getattr(net, method)(theta, X, Y, V), 8.0 * P * 10 ** 9)


def test_huge_zero_stride_inputs_to_jacobian_are_refused_before_any_copy():
    """On the active backend only: model.py refuses before any backend."""
    net = tk.MLP([3, 300, 300, 2])
    X = np.broadcast_to(np.float32(1.0), (10 ** 7, 3))
    _refuses(lambda: net.jacobian(np.zeros(net.num_params), X), 8.0 * 10 ** 7 * 2 * net.num_params)


@pytest.mark.parametrize("method", ["hessian_diag", "ggn_diag"])
def test_reference_diagonal_of_a_huge_net_is_refused(method):
    """The reference forms the full matrix to take its diagonal: it must refuse, not try."""
    net = tk.MLP([1000, 1000, 1000])
    P = net.num_params
    with tk.use_backend("reference"):
        _refuses(lambda: getattr(net, method)(np.zeros(P), np.zeros((2, 1000)), np.zeros((2, 1000))),
                 8.0 * P * P)


# ----------------------------------------------------------------------------- constructor
BAD_CONSTRUCTOR = [
    ("sizes", dict(sizes=[]), ValueError),
    ("sizes", dict(sizes=[3]), ValueError),
    ("sizes", dict(sizes="32"), ValueError),
    ("sizes", dict(sizes=[3, 0, 2]), ValueError),
    ("sizes", dict(sizes=[3, -1]), ValueError),
    ("sizes", dict(sizes=[3, 2.5]), ValueError),
    ("sizes", dict(sizes=[3, 2.0]), ValueError),
    ("sizes", dict(sizes=[3, True]), ValueError),
    ("sizes", dict(sizes=[3, "4"]), ValueError),
    ("activation", dict(sizes=[3, 4, 2], activation="swish"), ValueError),
    ("activation", dict(sizes=[3, 4, 2], activation="ReLU"), ValueError),
    ("activation", dict(sizes=[3, 4, 4, 2], activation=["relu"]), ValueError),
    ("activation", dict(sizes=[3, 4, 2], activation=["relu", "tanh"]), ValueError),
    ("activation", dict(sizes=[3, 4, 4, 2], activation=["relu", "bogus"]), ValueError),
    ("loss", dict(sizes=[3, 2], loss="hinge"), ValueError),
    ("loss", dict(sizes=[3, 2], loss="CE"), ValueError),
    ("loss", dict(sizes=[3, 2], loss=None), ValueError),
    ("loss", dict(sizes=[3, 1], loss="ce"), ValueError),
    ("sizes", dict(sizes=[3, 3], loss="gaussian"), ValueError),
    ("sizes", dict(sizes=[3, 4, 1], loss="gaussian"), ValueError),
    ("l2", dict(sizes=[3, 2], l2=-0.1), ValueError),
    ("l2", dict(sizes=[3, 2], l2=float("nan")), ValueError),
    ("l2", dict(sizes=[3, 2], l2=float("inf")), ValueError),
    ("l2", dict(sizes=[3, 2], l2="0.1"), ValueError),
    ("l2", dict(sizes=[3, 2], l2=True), ValueError),
    ("l2", dict(sizes=[3, 2], l2=None), ValueError),
    ("l2", dict(sizes=[3, 2], l2=1j), ValueError),
    ("dtype", dict(sizes=[3, 2], dtype=np.int64), TypeError),
    ("dtype", dict(sizes=[3, 2], dtype=np.float16), TypeError),
    ("dtype", dict(sizes=[3, 2], dtype=np.complex128), TypeError),
    ("dtype", dict(sizes=[3, 2], dtype="int32"), TypeError),
]


def _kwargs_id(kwargs):
    return ",".join(f"{n}={getattr(v, '__name__', repr(v))}" for n, v in kwargs.items())


@pytest.mark.parametrize("arg, kwargs, exc", [
    pytest.param(a, k, e, id=_kwargs_id(k)) for a, k, e in BAD_CONSTRUCTOR])
def test_constructor_validation(arg, kwargs, exc):
    with pytest.raises(exc, match=rf"\b{arg}\b"):
        tk.MLP(**kwargs)


# Non-iterable sizes/activation and unknown dtype names are reported under the argument's name.


@pytest.mark.parametrize("arg, kwargs, exc", [
    pytest.param("sizes", dict(sizes=None), (TypeError, ValueError), id="sizes-None"),
    pytest.param("sizes", dict(sizes=5), (TypeError, ValueError), id="sizes-int"),
    pytest.param("activation", dict(sizes=[3, 4, 2], activation=None), (TypeError, ValueError),
                 id="activation-None"),
    pytest.param("activation", dict(sizes=[3, 4, 2], activation=5), (TypeError, ValueError),
                 id="activation-int"),
    pytest.param("dtype", dict(sizes=[3, 2], dtype="bogus"), TypeError, id="dtype-bogus"),
])
def test_constructor_messages_name_the_argument(arg, kwargs, exc):
    with pytest.raises(exc) as info:
        tk.MLP(**kwargs)
    assert re.search(rf"\b{arg}\b", str(info.value)), str(info.value)


def test_used_network_pickles_and_deep_copies(backend):
    """A network that has run kernels holds backend handles; copies must rebuild them."""
    import copy
    import pickle
    p = make_problem([3, 4, 2], "tanh", "ce", N=5)
    want = p.net.hessian(p.theta, p.X, p.Y)
    for clone in (pickle.loads(pickle.dumps(p.net)), copy.deepcopy(p.net)):
        assert repr(clone) == repr(p.net)
        compare(clone.hessian(p.theta, p.X, p.Y), want)


def test_unpickled_equal_networks_share_handles():
    """Networks unpickled in one process with the same attributes share their backend handles
    (a Dask worker gets the network with every task); different networks and copies do not."""
    import copy
    import pickle
    p = make_problem([3, 4, 2], "tanh", "ce", N=5)
    want = p.net.hessian(p.theta, p.X, p.Y)
    a, b = pickle.loads(pickle.dumps(p.net)), pickle.loads(pickle.dumps(p.net))
    assert a is not b and a._handles is b._handles
    assert p.net._handles is not a._handles  # the original keeps its own
    compare(a.hessian(p.theta, p.X, p.Y), want)
    assert a._handles  # built by a's call, found by b's
    compare(b.hessian(p.theta, p.X, p.Y), want)
    other = tk.MLP([3, 4, 2], activation="tanh", loss="ce", l2=0.5)
    c = pickle.loads(pickle.dumps(other))
    assert c._handles is not a._handles
    for clone in (copy.deepcopy(a), copy.copy(a)):
        assert clone._handles is not a._handles and not clone._handles
        compare(clone.hessian(p.theta, p.X, p.Y), want)
    deep = copy.deepcopy(a)
    deep.l2 = 1.0  # an independent object
    assert a.l2 == 0.0 and b.l2 == 0.0


def test_constructor_accepts_valid_forms():
    net = tk.MLP((np.int64(3), 4, np.int32(2)), activation=["sin"], loss="ce", l2=np.float32(0.5),
                 dtype="float32")
    assert net.sizes == (3, 4, 2) and all(type(s) is int for s in net.sizes)
    assert net.activations == ("sin",) and net.l2 == 0.5 and net.dtype == np.float32
    assert net.num_params == (3 + 1) * 4 + (4 + 1) * 2 == net.offsets[-1]
    assert net.num_layers == 2 and net.num_outputs == 2
    assert tk.MLP(np.array([5, 1])).num_params == 6
    assert tk.MLP([2, 3, 3, 1], activation=["relu", "gelu"]).activations == ("relu", "gelu")
    assert tk.MLP([2, 1], activation=[]).activations == ()


# ----------------------------------------------------------------------------- init
STD = {"he": lambda a, b: math.sqrt(2.0 / a), "xavier": lambda a, b: math.sqrt(2.0 / (a + b)),
       "lecun": lambda a, b: math.sqrt(1.0 / a), "normal": lambda a, b: 0.3}


@pytest.mark.parametrize("scheme", ["he", "xavier", "lecun", "normal"])
def test_init_schemes_have_their_std_and_zero_biases(scheme):
    net = tk.MLP([400, 300, 100], activation="tanh")
    theta = net.init(seed=1, scheme=scheme, std=0.3 if scheme == "normal" else None)
    assert theta.shape == (net.num_params,) and theta.dtype == np.float64
    for (W, b), (a, c) in zip(net.unflatten(theta), zip(net.sizes[:-1], net.sizes[1:])):
        want = STD[scheme](a, c)
        assert abs(W.std() / want - 1) < 0.03, (scheme, W.std(), want)  # n >= 30000: 0.4% noise
        assert abs(W.mean()) < 0.03 * want
        assert np.all(b == 0)


@pytest.mark.parametrize("activation, scheme", [
    ("relu", "he"), ("gelu", "he"), (["relu", "gelu"], "he"), ("tanh", "xavier"),
    ("sigmoid", "xavier"), ("softplus", "xavier"), ("identity", "xavier"), ("sin", "xavier")])
def test_init_default_scheme_follows_activation(activation, scheme):
    net = tk.MLP([20, 30, 30, 5], activation=activation)
    others = [s for s in STD if s not in (scheme, "normal")]
    default = net.init(seed=4)
    assert np.array_equal(default, net.init(seed=4, scheme=scheme))
    for other in others:  # and not the other schemes (their stds differ for these widths)
        assert not np.allclose(default, net.init(seed=4, scheme=other))


def test_init_is_reproducible_and_of_the_net_dtype():
    net = tk.MLP([5, 6, 3], dtype=np.float32)
    a, b, c = net.init(seed=11), net.init(seed=11), net.init(seed=12)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(net.init(seed=0, scheme="normal", std=0.0), np.zeros(net.num_params))


@pytest.mark.parametrize("arg, kwargs", [
    ("scheme", dict(scheme="kaiming")), ("scheme", dict(scheme="HE")),
    ("std", dict(scheme="normal")), ("std", dict(scheme="he", std=0.1)),
    ("std", dict(std=0.1)), ("std", dict(scheme="normal", std=-1.0)),
    ("std", dict(scheme="normal", std=float("nan"))), ("std", dict(scheme="normal", std=float("inf"))),
    ("std", dict(scheme="normal", std="0.1"))], ids=lambda v: _kwargs_id(v) if isinstance(v, dict) else v)
def test_init_validation(arg, kwargs):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        tk.MLP([3, 4, 2]).init(seed=0, **kwargs)


# ----------------------------------------------------------------------------- layout
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_flatten_unflatten_round_trip_and_layout(dtype):
    p = make_problem([3, 1, 4, 2], "tanh", "mse", N=2, dtype=dtype)
    net = p.net
    params = net.unflatten(p.theta)
    assert [(W.shape, b.shape) for W, b in params] == [((3, 1), (1,)), ((1, 4), (4,)), ((4, 2), (2,))]
    o = 0
    for W, b in params:  # the layout of docs/design.md §1: concat(W1.ravel(), b1, W2.ravel(), b2, ...)
        assert np.array_equal(W.ravel(), p.theta[o:o + W.size])
        assert np.array_equal(b, p.theta[o + W.size:o + W.size + b.size])
        assert np.shares_memory(W, p.theta) and np.shares_memory(b, p.theta)  # views, no copy
        o += W.size + b.size
    back = net.flatten(params)
    assert back.dtype == net.dtype and np.array_equal(back, p.theta)
    assert not np.shares_memory(back, p.theta)


def test_flatten_and_unflatten_validation():
    net = tk.MLP([3, 4, 2])
    params = net.unflatten(net.init(seed=0))
    with pytest.raises(ValueError, match=r"\bparams\b"):
        net.flatten(params[:1])
    with pytest.raises(ValueError, match=r"\bparams\b"):
        net.flatten([(params[0][0].T, params[0][1]), params[1]])
    with pytest.raises(ValueError, match=r"\bparams\b"):
        net.flatten([params[0], (params[1][0], np.zeros(3))])
    with pytest.raises(ValueError, match=r"\btheta\b"):
        net.unflatten(np.zeros(net.num_params + 1))
    with pytest.raises(ValueError, match=r"\btheta\b"):
        net.unflatten(np.full(net.num_params, np.nan))
