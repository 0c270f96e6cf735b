"""The CUDA backend (taylorkern._cuda, taylorkern.backends.cuda).

Everywhere: the extension is built wherever nvcc was found at install time and imports
without a GPU or cuBLAS; the backend then reports, with a reason, that it is unavailable,
and its calls refuse cleanly.  With a GPU: every quantity against the float64 reference
(float64 rel <= 1e-10, float32 <= 1e-4) on shapes, activations, losses and reductions, the
curvature kernels over several sample chunks, sample weights (numpy and device arrays),
device-array inputs (DeviceArray always, CuPy and PyTorch when importable), the resident-data
handle DeviceData, the input checks, and long calls stopped by Ctrl-C.
The GPU tests skip with the reason (visible with ``pytest -rs``) where there is none.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    DATA_QUANTITIES,
    QUANTITIES,
    bitwise_equal,
    cases,
    compare,
    compute,
    interrupt_lag,
    make_problem,
    max_interrupt_lag,
    random_weights,
    reference,
)

import taylorkern as tk
from taylorkern import _dispatch

try:
    from taylorkern import _cuda
    BUILD_REASON = None
except ImportError as exc:  # not built: no nvcc at install time, or TAYLORKERN_CUDA=OFF
    _cuda = None
    BUILD_REASON = f"taylorkern._cuda is not built ({exc})"

try:
    from taylorkern.backends import cuda
    GPU_REASON = None
except ImportError as exc:
    cuda = None
    GPU_REASON = str(exc)

needs_module = pytest.mark.skipif(_cuda is None, reason=str(BUILD_REASON))
needs_gpu = pytest.mark.skipif(cuda is None, reason=str(GPU_REASON))
no_gpu_only = pytest.mark.skipif(cuda is not None, reason="a GPU is present: the unavailable path is not taken")

PACKAGE_ROOT = str(Path(tk.__file__).resolve().parent.parent)


# ============================================================================ everywhere
def test_extension_is_built_where_nvcc_is():
    """CI has nvcc but no GPU: the CUDA module must still compile there and import, so that
    a build error is caught.  TAYLORKERN_ALLOW_NO_CUDA=1 runs deliberately without it."""
    if os.environ.get("TAYLORKERN_ALLOW_NO_CUDA") == "1":
        pytest.skip("TAYLORKERN_ALLOW_NO_CUDA=1: running without the CUDA module by request")
    if shutil.which("nvcc") is None and _cuda is None:
        pytest.skip("no nvcc on this machine: the CUDA module is not built here")
    assert _cuda is not None, BUILD_REASON
    assert hasattr(_cuda, "init") and hasattr(_cuda, "hessian") and hasattr(_cuda, "DeviceArray")


def _arguments(fn):
    """The argument names of a pybind11 function, from the signature line of its docstring."""
    head = fn.__doc__.splitlines()[0]
    inner = head[head.index("(") + 1:head.rindex(")")]
    return [a.split(":")[0].strip() for a in inner.split(",") if a.strip() not in ("*", "/")]


@needs_module
def test_cuda_and_core_take_the_same_arguments():
    """_cuda has _core's operations, with _core's arguments first (then its own keywords), and the
    same activation and loss codes."""
    core = pytest.importorskip("taylorkern._core")
    for q in (q for q in QUANTITIES if not q.endswith("_multi")):
        want = _arguments(getattr(core, q))  # the sample weights w included
        got = _arguments(getattr(_cuda, q))
        assert got[:len(want)] == want, q
        assert set(got[len(want):]) <= {"f32", "n", "m", "device_out"}, q
    assert _cuda.ACTIVATION_CODES == core.ACTIVATION_CODES and _cuda.LOSS_CODES == core.LOSS_CODES


@needs_module
def test_module_reports_readiness_with_a_reason():
    info = _cuda.device_info()
    assert info["ready"] == _cuda.ready() == (cuda is not None)
    assert info["runtime_version"] >= 12000  # built against CUDA >= 12
    if cuda is None:
        assert _cuda.reason() and info["reason"] == _cuda.reason()
        assert _cuda.reason() in GPU_REASON
    else:
        assert _cuda.reason() == ""
        assert info["device_count"] >= 1 and info["name"]


@needs_module
@no_gpu_only
def test_without_gpu_the_backend_is_unavailable_with_the_reason():
    assert "unavailable" in GPU_REASON and len(GPU_REASON) > len("the cuda backend is unavailable: ")
    assert "cuda" not in tk.available_backends()
    with pytest.raises(ValueError, match="cuda"):
        tk.set_backend("cuda")
    if "cuda" in _dispatch.ORDER:  # once dispatch lists it: the reason is recorded there
        assert _dispatch._why_not.get("cuda")


@needs_module
@no_gpu_only
def test_without_gpu_calls_refuse_cleanly():
    net = _cuda.Net([3, 4, 2], [2], 0)
    assert net.num_params == (3 + 1) * 4 + (4 + 1) * 2
    theta = np.zeros(net.num_params)
    X = np.zeros((5, 3))
    with pytest.raises(RuntimeError, match="unavailable"):
        _cuda.predict(net, theta, X)
    with pytest.raises(RuntimeError, match="unavailable"):
        _cuda.hessian(net, theta, X, np.zeros((5, 2)), True)
    with pytest.raises(RuntimeError, match="unavailable"):
        _cuda.to_device(X)
    # init again, with a bogus cuBLAS: still a reason, never a crash
    assert _cuda.init(["/nonexistent/libcublas.so.13"]) != ""


@needs_module
def test_net_description_is_checked():
    with pytest.raises(ValueError):
        _cuda.Net([3], [], 0)
    with pytest.raises(ValueError):
        _cuda.Net([3, 4, 2], [], 0)
    with pytest.raises(ValueError):
        _cuda.Net([3, 4, 2], [9], 0)
    with pytest.raises(ValueError):
        _cuda.Net([3, 4, 2], [1], 7)


FAKE_CUDA = """
import sys, types
calls = []
fake = types.ModuleType("taylorkern._cuda")
fake.init = lambda candidates: (calls.append(list(candidates)), REASON)[1]
fake.device_info = lambda: {"device": 0}
fake.DeviceArray = object
fake.__getattr__ = lambda attr: (lambda *args, **kwargs: None)  # any other entry point
sys.modules["taylorkern._cuda"] = fake
"""


def run_with_fake_module(code, reason="", env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TAYLORKERN_BACKEND", "TAYLORKERN_CUBLAS")}
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(env_extra or {})
    src = f"REASON = {reason!r}\n" + FAKE_CUDA + code
    return subprocess.run([sys.executable, "-c", src], env=env, capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE_ROOT)


def test_cublas_search_order(tmp_path):
    """TAYLORKERN_CUBLAS (file or folder) first, then the wheel, the toolkit, the sonames."""
    lib = tmp_path / "libcublas.so.13"
    lib.write_bytes(b"")
    code = ("import taylorkern.backends.cuda as c\n"
            "print('\\n'.join(calls[0]))\n")
    for value in (str(lib), str(tmp_path)):
        r = run_with_fake_module(code, env_extra={"TAYLORKERN_CUBLAS": value})
        assert r.returncode == 0, r.stderr
        found = r.stdout.split()
        assert found[0] == str(lib)
        assert found[-3:] == ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
        assert len(set(found)) == len(found)


def test_unavailable_reason_reaches_the_import_error():
    r = run_with_fake_module("import taylorkern.backends.cuda\n", reason="no GPU here (test)")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "no GPU here (test)" in r.stderr


def test_dlpack_capsules_are_read_in_place():
    """DLPack exports are read as array interfaces without a copy (numpy's CPU capsules here:
    the same structure as a GPU's): pointer, shape, dtype, byte strides."""
    from taylorkern.backends import _device_arrays as da
    base = np.arange(60.0).reshape(5, 12)
    cases = [(base, None), (base[1:, ::3], (96, 24)), (np.arange(7, dtype=np.float32), None),
             (np.arange(4, dtype=np.int64), None)]
    for arr, strides in cases:
        cai = da.read_capsule(arr.__dlpack__())
        assert cai["data"] == (arr.ctypes.data, False) and cai["shape"] == arr.shape
        assert np.dtype(cai["typestr"]) == arr.dtype and cai["device"] == (da.KDL_CPU, 0)
        assert cai["strides"] in ((None, arr.strides) if strides is None else (strides,))
    for bad in (np.zeros(3, bool), np.zeros(3, complex), object()):
        with pytest.raises(TypeError):
            da.read_capsule(bad.__dlpack__() if isinstance(bad, np.ndarray) else bad)


def test_device_arrays_are_told_apart_by_protocol():
    from taylorkern.backends import _device_arrays as da

    class Exporter:  # stands for a GPU array that speaks DLPack only (as JAX's do)
        def __init__(self, arr, device, stream_arg=True):
            self.arr, self.device, self.stream_arg, self.streams = arr, device, stream_arg, []

        def __dlpack_device__(self):
            if self.device is None:
                raise RuntimeError("no device")
            return self.device

        def __dlpack__(self, **kwargs):
            if kwargs and not self.stream_arg:
                raise TypeError("unexpected keyword 'stream'")
            self.streams.append(kwargs.get("stream"))
            return self.arr.__dlpack__()

    class Interface:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f8", "data": (1234, False), "version": 3}

    a = np.arange(6.0)
    assert not da.is_device_array(a) and not da.is_device_array([1.0]) and da.is_device_array(Interface())
    assert da.is_device_array(Exporter(a, (da.KDL_CUDA, 0))) and da.is_device_array(Exporter(a, (13, 0)))
    assert not da.is_device_array(Exporter(a, (da.KDL_CPU, 0))) and not da.is_device_array(Exporter(a, None))
    assert da.interface(Interface()) is Interface.__cuda_array_interface__
    for stream_arg in (True, False):
        e = Exporter(a, (da.KDL_CUDA, 0), stream_arg)
        cai = da.interface(e)
        assert cai["data"][0] == a.ctypes.data and cai["shape"] == (6,) and "capsule" in cai
        assert e.streams == ([1] if stream_arg else [None])  # the legacy default stream, where taken


# ============================================================================ on a GPU
@pytest.fixture
def on_cuda():
    """The cuda backend forced for the test, all calls on the GPU (no crossover), through the
    dispatcher itself, so that ``reference()`` still switches to the reference inside."""
    with tk.use_backend("cuda") as mod:
        assert mod is cuda
        yield cuda


def test_reference_is_not_the_backend_under_test():
    """Guard against a fixture that would send the oracle's calls to the backend under test."""
    p = make_problem([3, 4, 2], "tanh", "mse", N=3)
    with tk.use_backend("reference"):
        assert _dispatch.current().name == "reference"
    assert reference(p, "loss") == pytest.approx(compute(p, "loss"))


@pytest.fixture
def several_chunks():
    """Small per-chunk budgets, so that the curvature kernels run over several chunks."""
    _cuda.set_chunk_budget(1 << 12)
    yield
    _cuda.set_chunk_budget(0)


def check_all(p, dtype, reductions=("mean", "sum"), quantities=QUANTITIES):
    q32 = p if np.dtype(dtype) == np.float64 else p.astype(dtype)
    for q in quantities:
        for red in (reductions if q in DATA_QUANTITIES else ("mean",)):
            got = compute(q32, q, red)
            compare(got, reference(p, q, red), dtype, what=f"{p.name} {np.dtype(dtype).name} {q} {red}")


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", cases(per_combo=1))
def test_every_quantity_matches_the_reference(on_cuda, case, dtype):
    sizes, act, loss, N = case
    check_all(make_problem(list(sizes), act, loss, N=N), dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sizes,act,loss,N", [
    ([6, 9, 7, 5, 3], "tanh", "ce", 40),              # four layers: term 3 across two layers
    ([5, 8, 1], ["softplus"], "mse", 33),
    ([4, 6, 5, 4, 3, 2], ["gelu", "sin", "sigmoid", "relu"], "mse", 21),
    ([7, 40, 3], "sigmoid", "ce", 70),                # wider than a 32-wide permutation tile
    ([5, 8, 6, 4], "tanh", "gaussian", 37),           # an indefinite output Hessian, pairs of outputs
])
def test_several_sample_chunks(on_cuda, several_chunks, sizes, act, loss, N, dtype):
    check_all(make_problem(sizes, act, loss, N=N), dtype, reductions=("mean",))


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sizes,act,loss,N", [
    ([5, 300, 2], "relu", "ce", 75),              # 300 columns: two column tiles, three row chunks
    ([3, 270, 4], "tanh", "mse", 40),             # one direction of width 270; m = 3: 810 columns
    ([4, 20, 17, 16, 1], "sigmoid", "mse", 50),   # narrow layers: 16 and 1 outputs
    ([6, 9, 12, 3], ["softplus", "gelu"], "mse", 33),
])
def test_row_passes(on_cuda, sizes, act, loss, N, dtype):
    """The row passes (bias, activation, backpropagation, R-op) over several column tiles and
    narrow layers, with one and with several directions."""
    check_all(make_problem(sizes, act, loss, N=N, m=3), dtype, reductions=("mean",),
              quantities=("predict", "loss_and_grad", "hvp", "hvp_multi", "ggn_vp", "ggn_vp_multi"))


@needs_gpu
def test_l2_and_a_medium_problem(on_cuda):
    p = make_problem([12, 48, 40, 4], "tanh", "ce", N=257, l2=0.03)
    check_all(p, np.float64, reductions=("mean",))


@needs_gpu
def test_workspace_reuse_across_sizes(on_cuda):
    """One network, calls with growing and shrinking N and m: buffers regrow, nothing stale."""
    for N, m in ((3, 1), (50, 4), (7, 2), (120, 1), (5, 6)):
        p = make_problem([5, 7, 6, 3], "gelu", "ce", N=N, m=m, seed=N)
        check_all(p, np.float64, reductions=("mean",),
                  quantities=("loss_and_grad", "hvp_multi", "ggn_vp_multi", "hessian", "ggn_diag"))


@needs_gpu
def test_float32_is_plain_float32_by_default():
    assert _cuda.get_tf32() is False


@needs_gpu
def test_crossover_routes_small_problems_to_the_cpu():
    small = tk.MLP([5, 8, 6, 3], "tanh", "ce")
    big = tk.MLP([32, 128, 128, 1], "tanh", "mse")
    assert not cuda.worth_it(small, "hessian", 9)
    assert not cuda.worth_it(small, "loss_and_grad", 9)
    assert cuda.worth_it(big, "hessian", 8192) and cuda.worth_it(big, "ggn", 8192)
    calls = []

    class Fallback:
        name = "fake-cpu"

    for q in cuda.QUANTITIES:
        setattr(Fallback, q, staticmethod(lambda *a, _q=q: calls.append(_q) or "cpu"))
    auto = cuda.auto(Fallback)
    p = make_problem([5, 8, 6, 3], "tanh", "ce", N=9)
    assert auto.name == "cuda"
    assert auto.hessian(p.net, p.theta, p.X, p.Y, "mean") == "cpu" and calls == ["hessian"]


@needs_gpu
def test_auto_reports_its_fallbacks_product_memory():
    from taylorkern.backends import cpp

    auto = cuda.auto(cpp)
    net = tk.MLP([20, 64, 64, 1], "tanh", "mse")
    assert auto.product_memory_values(net, 40000, 256) == cpp.product_memory_values(net, 40000, 256)
    # A product through the auto backend (the MLP's memory check consults it) matches cpp's.
    p = make_problem([20, 64, 64, 1], "tanh", "mse", N=2000)
    V = np.random.default_rng(0).standard_normal((p.net.num_params, 8))
    with tk.use_backend("cpp"):
        expected = p.net.hvp(p.theta, p.X, p.Y, V)
    saved = _dispatch._active
    _dispatch._active = auto
    try:
        np.testing.assert_allclose(p.net.hvp(p.theta, p.X, p.Y, V), expected, rtol=1e-10, atol=1e-12)
    finally:
        _dispatch._active = saved


def run_python(code, warnings_as_errors=False, env=None):
    full = {k: v for k, v in os.environ.items() if k != "TAYLORKERN_BACKEND"}
    full["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [full.get("PYTHONPATH")] if p])
    full.update(env or {})
    args = [sys.executable] + (["-W", "error"] if warnings_as_errors else []) + ["-c", code]
    return subprocess.run(args, env=full, capture_output=True, text=True, timeout=120, cwd=PACKAGE_ROOT)


@needs_gpu
def test_dispatch_chooses_cuda_routing_small_calls_to_the_cpu():
    """Chosen by itself, "cuda" is the crossover router over the fastest CPU backend; forced,
    it is the module itself (every call on the GPU)."""
    code = ("import taylorkern as tk; from taylorkern import _dispatch as d; a = d.current(); "
            "print(tk.backend(), type(a).__name__, a.fallback.name, tk.available_backends()[0])")
    r = run_python(code, warnings_as_errors=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cuda", "Auto", tk.available_backends()[1], "cuda"]
    r = run_python("import taylorkern as tk; from taylorkern import _dispatch as d; print(d.current().__name__)",
                   env={"TAYLORKERN_BACKEND": "cuda"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["taylorkern.backends.cuda"]


# ----------------------------------------------------------------------------- device inputs
def _devices(arrays, kind):
    if kind == "DeviceArray":
        return [_cuda.to_device(np.ascontiguousarray(a)) for a in arrays]
    if kind == "cupy":
        cp = pytest.importorskip("cupy")
        return [cp.asarray(a) for a in arrays]
    if kind == "jax":
        jax = pytest.importorskip("jax")
        if not any(d.platform == "gpu" for d in jax.devices()):
            pytest.skip("JAX has no GPU here")
        jax.config.update("jax_enable_x64", True)
        return [jax.device_put(a, jax.devices("gpu")[0]) for a in arrays]
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    tensors = [torch.as_tensor(np.ascontiguousarray(a), device="cuda") for a in arrays]
    if kind == "dlpack":  # the same tensors through DLPack alone

        class DLPackOnly:
            def __init__(self, t):
                self.t = t

            def __dlpack__(self, **kwargs):
                return self.t.__dlpack__(**kwargs)

            def __dlpack_device__(self):
                return self.t.__dlpack_device__()

        return [DLPackOnly(t) for t in tensors]
    return tensors


@needs_gpu
@pytest.mark.parametrize("kind", ["DeviceArray", "cupy", "torch", "dlpack", "jax"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_device_array_inputs_are_used_in_place(kind, loss):
    p = make_problem([6, 10, 7, 3], "tanh", loss, N=31)
    th, X, Y, V = _devices([p.theta, p.X, p.Y if loss == "ce" else p.Y, p.V], kind)
    net = p.net
    compare(cuda.predict(net, th, X), reference(p, "predict"))
    compare(cuda.loss_and_grad(net, th, X, Y, "mean"), reference(p, "loss_and_grad"))
    compare(cuda.hvp(net, th, X, Y, V, "mean"), reference(p, "hvp_multi"))
    compare(cuda.ggn_vp(net, th, X, Y, V, "sum"), reference(p, "ggn_vp_multi", "sum"))
    compare(cuda.jacobian(net, th, X), reference(p, "jacobian"))
    for q in ("hessian", "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag"):
        compare(getattr(cuda, q)(net, th, X, Y, "mean"), reference(p, q), what=q)


# ----------------------------------------------------------------------------- sample weights
def check_weighted(p, dtype, w, reductions=("mean", "sum"), quantities=DATA_QUANTITIES):
    q32 = p if np.dtype(dtype) == np.float64 else p.astype(dtype)
    for q in quantities:
        for red in reductions:
            got = compute(q32, q, red, w)
            with tk.use_backend("reference"):
                want = compute(p, q, red, w)
            compare(got, want, dtype, what=f"{p.name} {np.dtype(dtype).name} {q} {red} weighted")


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sizes,act,loss,N", [
    ([5, 7, 3], "tanh", "mse", 12),
    ([4, 6, 5, 3], "gelu", "ce", 11),
    ([3, 5, 4], "softplus", "gaussian", 9),
    ([4, 6, 3], "sigmoid", "bce", 10),
    ([3, 5, 2], "tanh", "poisson", 8),
    ([3, 6, 5, 2], "sin", "huber", 9),
    ([4, 5, 3], "relu", "soft_l1", 10),
])
def test_sample_weights_match_the_reference(on_cuda, sizes, act, loss, N, dtype):
    """Every data quantity with random weights (zeros included), both reductions, on the GPU
    kernels (the weights reach the loss head and every curvature path) against the reference."""
    check_weighted(make_problem(sizes, act, loss, N=N, seed=3), dtype, random_weights(N, N))


@needs_gpu
@pytest.mark.parametrize("sizes,act,loss,N", [
    ([6, 9, 7, 5, 3], "tanh", "ce", 40),
    ([5, 8, 6, 4], "tanh", "gaussian", 37),
    ([5, 8, 1], "softplus", "mse", 33),
])
def test_sample_weights_over_several_chunks(on_cuda, several_chunks, sizes, act, loss, N):
    """Each chunk of the curvature kernels reads its own samples' weights."""
    check_weighted(make_problem(sizes, act, loss, N=N), np.float64, random_weights(N, 7),
                   quantities=("loss_and_grad", "hvp_multi", "ggn_vp", "hessian", "ggn", "hessian_blocks",
                               "ggn_blocks", "hessian_diag", "ggn_diag"))


@needs_gpu
@pytest.mark.parametrize("loss", ["mse", "ce", "gaussian", "bce"])
def test_unit_weights_with_sum_are_the_unweighted_results_bit_for_bit(on_cuda, loss):
    """Weights of one with "sum" (which the MLP drops; passed to the backend here) take the
    weighted kernels' path with every scale exactly the unweighted one: the same bits."""
    p = make_problem([4, 6, 5, 4 if loss == "gaussian" else 3], "tanh", loss, N=10, seed=5)
    ones = np.ones(p.N)
    for q in ("loss", "loss_and_grad", "hessian", "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag",
              "ggn_diag"):
        fn = getattr(cuda, q)
        got = fn(p.net, p.theta, p.X, p.Y, "sum", sample_weight=ones)
        assert bitwise_equal(got, fn(p.net, p.theta, p.X, p.Y, "sum")), q
    for q in ("hvp", "ggn_vp"):
        fn = getattr(cuda, q)
        got = fn(p.net, p.theta, p.X, p.Y, p.V, "sum", sample_weight=ones)
        assert bitwise_equal(got, fn(p.net, p.theta, p.X, p.Y, p.V, "sum")), q


@needs_gpu
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_sample_weights_with_device_arrays(loss):
    """Weights as a device array (in place with "sum", read back and normalised with "mean") or
    as numpy beside device inputs, and results left on the GPU: the reference's numbers; device
    weights of the wrong length or dtype are refused naming sample_weight."""
    p = make_problem([6, 10, 7, 3], "tanh", loss, N=31)
    w = random_weights(p.N, 2)
    th, X, Y, V, wd = _devices([p.theta, p.X, p.Y, p.V, w], "DeviceArray")
    net = p.net
    for red in ("mean", "sum"):
        with tk.use_backend("reference"):
            want = {q: compute(p, q, red, w) for q in ("loss", "loss_and_grad", "hvp_multi", "ggn_vp_multi",
                                                       "hessian", "ggn_blocks", "hessian_diag")}
        for weights in (wd, w):
            what = f"{red} {'device' if weights is wd else 'numpy'} weights"
            compare(cuda.loss(net, th, X, Y, red, sample_weight=weights), want["loss"], what=what)
            compare(cuda.loss_and_grad(net, th, X, Y, red, sample_weight=weights), want["loss_and_grad"], what=what)
            compare(cuda.hvp(net, th, X, Y, V, red, sample_weight=weights), want["hvp_multi"], what=what)
            compare(cuda.ggn_vp(net, th, X, Y, V, red, sample_weight=weights), want["ggn_vp_multi"], what=what)
            compare(cuda.hessian(net, th, X, Y, red, sample_weight=weights), want["hessian"], what=what)
            compare(cuda.ggn_blocks(net, th, X, Y, red, sample_weight=weights), want["ggn_blocks"], what=what)
            compare(cuda.hessian_diag(net, th, X, Y, red, sample_weight=weights), want["hessian_diag"], what=what)
        got = cuda.hessian(net, th, X, Y, red, out="device", sample_weight=wd)
        assert hasattr(got, "__cuda_array_interface__")
        compare(got.get(), want["hessian"], what=f"{red} hessian(out='device')")
        value, grad = cuda.loss_and_grad(net, p.theta, p.X, p.Y, red, out="device", sample_weight=w)
        compare((value, grad.get()), want["loss_and_grad"], what=f"{red} loss_and_grad(out='device')")
    for red in ("mean", "sum"):
        with pytest.raises(ValueError, match="sample_weight"):
            cuda.loss(net, th, X, Y, red, sample_weight=_cuda.to_device(w[:-1].copy()))
        with pytest.raises(TypeError, match="sample_weight"):
            cuda.loss(net, th, X, Y, red, sample_weight=_cuda.to_device(w.astype(np.float32)))
        with pytest.raises(ValueError, match="sample_weight"):
            cuda.ggn(net, p.theta, p.X, p.Y, red, sample_weight=w[:-1])


@needs_gpu
def test_sample_weights_through_the_crossover_router():
    """The router passes the weights to whichever side it picks: the CPU for a small call, the
    GPU when the estimate says so."""
    from taylorkern.backends import cpp

    p = make_problem([5, 7, 3], "tanh", "bce", N=12, seed=3)
    w = random_weights(p.N, 4)
    auto = cuda.Auto(cpp)
    with tk.use_backend("reference"):
        want = p.net.ggn(p.theta, p.X, p.Y, "sum", sample_weight=w)
    assert not cuda.worth_it(p.net, "ggn", p.N)
    compare(auto.ggn(p.net, p.theta, p.X, p.Y, "sum", sample_weight=w), want)
    saved = dict(cuda.CROSSOVER)
    cuda.set_crossover(GPU_CALL_S=0.0, CPU_MADDS_PER_S=1.0)  # every call "worth it"
    try:
        assert cuda.worth_it(p.net, "ggn", p.N)
        compare(auto.ggn(p.net, p.theta, p.X, p.Y, "sum", sample_weight=w), want)
    finally:
        cuda.CROSSOVER.update(saved)


@needs_gpu
def test_device_inputs_are_checked():
    p = make_problem([4, 5, 3], "tanh", "ce", N=8)
    th, X, Y = (_cuda.to_device(a) for a in (p.theta, p.X, p.Y))
    X32 = _cuda.to_device(p.X.astype(np.float32))
    with pytest.raises(TypeError, match="X"):
        cuda.predict(p.net, th, X32)
    with pytest.raises(ValueError, match="theta"):
        cuda.predict(p.net, _cuda.to_device(p.theta[:-1].copy()), X)
    with pytest.raises(TypeError, match="Y"):
        cuda.loss(p.net, th, X, _cuda.to_device(p.Y.astype(np.float64)), "mean")
    bad = p.X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cuda.DeviceData(p.net, _cuda.to_device(bad), Y)
    labels = p.Y.copy()
    labels[2] = 7
    with pytest.raises(ValueError, match="labels"):
        cuda.DeviceData(p.net, X, _cuda.to_device(labels))


@needs_gpu
@pytest.mark.parametrize("source", ["numpy", "DeviceArray", "cupy"])
def test_device_data_matches_the_model(source):
    p = make_problem([8, 16, 12, 4], "softplus", "ce", N=45, l2=0.02)
    net = p.net
    if source == "numpy":
        data = cuda.DeviceData(net, p.X, p.Y)
    else:
        X, Y = _devices([p.X, p.Y], source)
        data = cuda.DeviceData(net, X, Y)
    assert data.N == 45
    with tk.use_backend("reference"):
        want = {q: getattr(net, q)(p.theta, p.X, p.Y) for q in
                ("loss", "loss_and_grad", "hessian", "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag",
                 "ggn_diag")}
        want["hvp"] = net.hvp(p.theta, p.X, p.Y, p.V)
        want["ggn_vp"] = net.ggn_vp(p.theta, p.X, p.Y, p.V[:, 0])
        want["predict"] = net.predict(p.theta, p.X)
        want["jacobian"] = net.jacobian(p.theta, p.X)
    for theta in (p.theta, _cuda.to_device(p.theta)):
        for q in ("loss", "loss_and_grad", "hessian", "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag",
                  "ggn_diag", "predict", "jacobian"):
            compare(getattr(data, q)(theta), want[q], what=f"DeviceData.{q}")
        compare(data.hvp(theta, p.V), want["hvp"], what="DeviceData.hvp")
        compare(data.ggn_vp(theta, p.V[:, 0]), want["ggn_vp"], what="DeviceData.ggn_vp")
    # results left on the GPU: same numbers, l2 added there
    for q in ("hessian", "ggn", "predict", "jacobian", "hessian_diag", "ggn_diag"):
        got = getattr(data, q)(p.theta, out="device")
        assert hasattr(got, "__cuda_array_interface__")
        compare(got.get(), want[q], what=f"DeviceData.{q}(out='device')")
    compare([b.get() for b in data.ggn_blocks(p.theta, out="device")], want["ggn_blocks"])
    value, grad = data.loss_and_grad(p.theta, out="device")
    compare((value, grad.get()), want["loss_and_grad"])
    compare(data.hvp(p.theta, _cuda.to_device(p.V), out="device").get(), want["hvp"])
    compare(np.asarray(data.ggn_vp(p.theta, p.V[:, 0], out="device")).ravel(), want["ggn_vp"])


@needs_gpu
@pytest.mark.parametrize("source", ["numpy", "DeviceArray"])
def test_device_data_with_sample_weights(source):
    """DeviceData(sample_weight=...), numpy or on the GPU: the MLP's weighted numbers with l2, for
    both reductions; equal weights give the unweighted bits; bad weights are refused as the MLP
    refuses them, naming sample_weight."""
    p = make_problem([5, 9, 6, 3], "tanh", "ce", N=29, l2=0.03)
    net = p.net
    w = random_weights(p.N, 4)
    X, Y, wd = (p.X, p.Y, w) if source == "numpy" else _devices([p.X, p.Y, w], source)
    data = cuda.DeviceData(net, X, Y, sample_weight=wd)
    for red in ("mean", "sum"):
        with tk.use_backend("reference"):
            want = {q: compute(p, q, red, w) for q in ("loss", "loss_and_grad", "hvp_multi", "ggn_vp",
                                                       "hessian", "ggn_blocks", "ggn_diag")}
        compare(data.loss(p.theta, red), want["loss"], what=f"{red} loss")
        compare(data.loss_and_grad(p.theta, red), want["loss_and_grad"], what=f"{red} loss_and_grad")
        compare(data.hvp(p.theta, p.V, red), want["hvp_multi"], what=f"{red} hvp")
        compare(data.ggn_vp(p.theta, p.V[:, 0], red), want["ggn_vp"], what=f"{red} ggn_vp")
        compare(data.hessian(p.theta, red), want["hessian"], what=f"{red} hessian")
        compare(data.ggn_blocks(p.theta, red), want["ggn_blocks"], what=f"{red} ggn_blocks")
        compare(data.ggn_diag(p.theta, red, out="device").get(), want["ggn_diag"], what=f"{red} ggn_diag")
    equal = cuda.DeviceData(net, X, Y, sample_weight=np.full(p.N, 2.5))
    assert bitwise_equal(equal.hessian(p.theta), cuda.DeviceData(net, X, Y).hessian(p.theta))
    bads = [(w[:-1], ValueError), (-w, ValueError), (np.zeros(p.N), ValueError),
            (np.where(w > 0, np.nan, 0.0), ValueError)]
    if source != "numpy":  # device weights must have the network's dtype; numpy ones any real dtype
        bads = [(_cuda.to_device(np.ascontiguousarray(b)), e) for b, e in bads + [(w.astype(np.float32), TypeError)]]
    for bad, err in bads:
        with pytest.raises(err, match="sample_weight"):
            cuda.DeviceData(net, X, Y, sample_weight=bad)
    with pytest.raises(ValueError, match="out"):
        data.hessian(p.theta, out="gpu")


@needs_gpu
def test_device_array_interface_round_trips():
    a = np.arange(12.0).reshape(3, 4)
    d = _cuda.to_device(a)
    cai = d.__cuda_array_interface__
    assert cai["shape"] == (3, 4) and cai["typestr"] == "<f8" and cai["version"] == 3
    assert np.array_equal(d.get(), a) and np.array_equal(np.asarray(d), a)
    cp = pytest.importorskip("cupy")
    assert np.array_equal(cp.asnumpy(cp.asarray(d)), a)


@needs_gpu
@pytest.mark.parametrize("shape", [(5_000_001,), (3001, 4099)], ids=["40MB", "98MB"])
def test_large_results_come_back_whole(shape):
    """Copies to numpy past the staging threshold go in page-locked chunks (the last one
    partial): every element arrives, none from a stale chunk."""
    rng = np.random.default_rng(shape[0])
    a = rng.standard_normal(shape)
    d = _cuda.to_device(a)
    assert np.array_equal(d.get(), a)
    assert np.array_equal(_cuda.to_host(d.__cuda_array_interface__["data"][0], list(shape), "<f8"), a)


@needs_gpu
def test_large_matrix_to_numpy_matches_the_device_result(on_cuda):
    """A result over the staging threshold (P = 3301: 87 MB) through the numpy path."""
    p = make_problem([30, 80, 10, 1], "tanh", "mse", N=40)
    host = cuda.ggn(p.net, p.theta, p.X, p.Y, "mean")
    assert host.shape == (p.net.num_params,) * 2 and host.nbytes > (64 << 20)
    assert np.array_equal(host, cuda.DeviceData(p.net, p.X, p.Y).ggn(p.theta, out="device").get())
    compare(host, reference(p, "ggn"), np.float64, what="ggn to numpy")


@needs_gpu
def test_many_networks_share_a_few_lanes(on_cuda):
    """Streams and cuBLAS handles (tens of MiB of device memory each) are pooled per process,
    not made per network: a program with thousands of networks must not run out of memory."""
    p = make_problem([3, 4, 2], "tanh", "mse", N=2)
    cuda.loss(p.net, p.theta, p.X, p.Y, "mean")  # at least one lane exists
    before = _cuda.lanes_made()
    for i in range(40):
        p = make_problem([3, 4 + i % 5, 2], "tanh", "ce", N=3, seed=i)
        compare(cuda.hessian(p.net, p.theta, p.X, p.Y, "mean"), reference(p, "hessian"), np.float64)
    assert _cuda.lanes_made() == before


@needs_gpu
def test_gpu_out_of_memory_is_a_memory_error_and_later_calls_work(on_cuda):
    net = tk.MLP([200, 1000, 1], "tanh", "mse")  # P = 202,001: the GGN is 326 GB
    rng = np.random.default_rng(0)
    theta, X, Y = net.init(seed=0), rng.standard_normal((2, 200)), rng.standard_normal((2, 1))
    with pytest.raises(MemoryError, match="GPU out of memory: this call needs a further 30[0-9.]+ GiB block"):
        cuda.DeviceData(net, X, Y).ggn(theta, out="device")
    p = make_problem([5, 7, 3], "tanh", "ce", N=6)  # no error left behind for the next call
    compare(cuda.loss_and_grad(p.net, p.theta, p.X, p.Y, "mean")[1], reference(p, "loss_and_grad")[1], np.float64)


# ============================================================================ interruption
# Ctrl-C during a long GPU call (docs/design.md, "Interruption"), measured as
# tests/test_interrupt.py measures the CPU's: the calls' host code checks for a pending signal
# between launches and while it waits for the GPU, and keeps little work queued ahead of it
# (csrc/cuda/workspace.cuh, Pace), so that KeyboardInterrupt follows within half a second; the
# next call on the same network (its pooled workspace and lane) is exact.
# Each interrupted call is sized on the device to take seconds.  On a GPU only the curvature
# calls run that long on problems a test can hold (the products', the gradient's and the
# Jacobian's work grows with N only as fast as their memory); under the host emulation
# (csrc/cuda/emulate), which runs every kernel on the CPU, every call can, on a smaller network.
EMULATED = cuda is not None and cuda.info().get("name") == "host emulation"
WIDE, WIDER = ([6, 16, 16, 1], [6, 16, 16, 1]) if EMULATED else ([32, 128, 128, 1], [32, 512, 512, 1])
LONG_CALLS = {
    "hessian": (WIDE, lambda p: p.net.hessian(p.theta, p.X, p.Y)),
    "ggn": (WIDE, lambda p: p.net.ggn(p.theta, p.X, p.Y)),
    "hessian_blocks": (WIDE, lambda p: p.net.hessian_blocks(p.theta, p.X, p.Y)),
    "hessian_diag": (WIDER, lambda p: p.net.hessian_diag(p.theta, p.X, p.Y)),
}
if EMULATED:
    LONG_CALLS.update({
        "hvp_many": (WIDE, lambda p: p.net.hvp(p.theta, p.X, p.Y, p.V)),
        "loss_and_grad": (WIDE, lambda p: p.net.loss_and_grad(p.theta, p.X, p.Y)),
        "jacobian": ([6, 16, 16, 4], lambda p: p.net.jacobian(p.theta, p.X)),
    })


def long_call_samples(sizes, call, seconds=4.0):
    """Samples for which call(problem) takes about `seconds` beyond its fixed costs (a large
    result's copy to the host; the first, smallest call's time): N grows by fours until a call
    takes a second longer than that one, then in proportion, at most so many that the tapes
    (under a dozen values per unit and sample) take a sixteenth of the GPU's memory (the test
    runner's workers share it)."""
    n_max = max(256, cuda.info()["total_memory"] // 16 // (12 * sum(sizes) * 8))
    N, fixed = 64, None
    while True:
        p = make_problem(sizes, N=N, m=16)
        start = time.perf_counter()
        call(p)
        took = time.perf_counter() - start
        fixed = took if fixed is None else fixed
        if took - fixed >= 1.0 or N >= n_max:
            return int(min(n_max, N * seconds / max(took - fixed, 0.1)))
        N = min(4 * N, n_max)


@needs_gpu
@pytest.mark.parametrize("case", sorted(LONG_CALLS))
def test_long_gpu_call_interrupted_then_next_call_correct(on_cuda, python_sigint, case):
    """After the interrupt, a call on the same network gives what a fresh network gives."""
    sizes, call = LONG_CALLS[case]
    p = make_problem(sizes, N=long_call_samples(sizes, call), m=16)
    lag = interrupt_lag(lambda: call(p))
    small = dataclasses.replace(p, X=p.X[:40], Y=p.Y[:40])
    got = call(small)
    want = call(small.astype(np.float64))  # a new network of the same values
    print(f"cuda {case}: N {p.N}, lag {lag * 1e3:.0f} ms (load {os.getloadavg()[0]:.1f})")
    compare(got, want, rtol=1e-12, what=f"{case} after an interrupted call")
    assert lag < max_interrupt_lag(), f"cuda {case}: KeyboardInterrupt {lag:.2f} s after SIGINT"


@needs_gpu
def test_gpu_minimize_interrupted(on_cuda, python_sigint):
    """An optimizer loop on the GPU stops at SIGINT (inside a call or between calls), and a
    following run is unaffected."""
    p = make_problem(WIDE, N=20_000)
    lag = interrupt_lag(lambda: tk.minimize(p.net, p.theta, p.X, p.Y, method="lbfgs", max_iter=10**6, gtol=0.0,
                                            ftol=0.0, xtol=0.0))
    small = dataclasses.replace(p, X=p.X[:200], Y=p.Y[:200])
    got = tk.minimize(small.net, small.theta, small.X, small.Y, method="lbfgs", max_iter=5)
    fresh = small.astype(np.float64)
    want = tk.minimize(fresh.net, fresh.theta, fresh.X, fresh.Y, method="lbfgs", max_iter=5)
    print(f"cuda minimize: lag {lag * 1e3:.0f} ms")
    compare(got.theta, want.theta, rtol=1e-12, what="minimize after an interrupted one")
    assert lag < max_interrupt_lag(), f"cuda minimize: KeyboardInterrupt {lag:.2f} s after SIGINT"
