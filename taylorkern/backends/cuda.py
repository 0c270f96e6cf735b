"""The CUDA backend (taylorkern._cuda): every quantity of the ``cpp`` backend on an NVIDIA GPU.

The kernels (csrc/cuda/) mirror the C++ ones family by family; the large products run in
cuBLAS, which is not linked but loaded at import from, in order:

1. the path in ``TAYLORKERN_CUBLAS`` (a file, or a folder holding libcublas.so*);
2. the ``nvidia-cublas`` wheel (``nvidia/cu13/lib`` for CUDA 13 wheels, ``nvidia/cublas/lib``
   before), found from this Python's installed packages;
3. the CUDA toolkit (``$CUDA_HOME``/``$CUDA_PATH``, /usr/local/cuda) and the plain sonames
   ``libcublas.so.13`` / ``libcublas.so``.

Importing this module raises ImportError, with the reason, when the extension was not built,
no GPU is visible, or cuBLAS cannot be loaded; the dispatcher records that reason.

Inputs: numpy arrays are copied to the GPU once per call (into the network's pooled device
workspace); objects with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba,
:class:`DeviceArray`) or a CUDA DLPack export (JAX; ``_device_arrays.py``) are used in
place.  :class:`DeviceData` keeps X and Y resident on the GPU for an optimizer's repeated
calls.  Results come back as numpy arrays, or stay on the GPU as :class:`DeviceArray` with
``out="device"`` (DeviceData methods).

float32 products are plain IEEE float32 (no TF32) unless :func:`set_tf32` opts in.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import sys

import numpy as np

from .._threads import get_num_threads
from ._device_arrays import interface, is_device_array
from ._weights import kernel_weights

try:
    from .. import _cuda
except ImportError as exc:  # not built (no nvcc at install time) or not loadable
    raise ImportError(f"taylorkern._cuda is not available ({exc}); it is built when nvcc is found at install "
                      "time") from exc

name = "cuda"


# ----------------------------------------------------------------------------- cuBLAS
def cublas_candidates():
    """Where cuBLAS is looked for, in order (paths and sonames)."""
    out = []
    env = os.environ.get("TAYLORKERN_CUBLAS", "").strip()
    if env:
        if os.path.isdir(env):
            out += sorted(glob.glob(os.path.join(env, "libcublas.so*")), key=_soname_rank)
        else:
            out.append(env)
    out += _wheel_cublas()
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
                out += sorted(glob.glob(os.path.join(root, sub, "libcublas.so.*[0-9]")), key=_soname_rank)
    out += ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def _soname_rank(path):
    """libcublas.so.13 first, then .so.12, then anything else."""
    base = os.path.basename(path)
    for rank, major in enumerate(("13", "12")):
        if base.startswith(f"libcublas.so.{major}"):
            return (rank, len(base), base)
    return (9, len(base), base)


def _wheel_cublas():
    """libcublas from the nvidia-cublas wheel(s) of this Python, best first."""
    found = []
    for dist_name in ("nvidia-cublas", "nvidia-cublas-cu13", "nvidia-cublas-cu12"):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            base = os.path.basename(str(f))
            if base.startswith("libcublas.so") and not base.startswith("libcublasLt"):
                found.append(str(dist.locate_file(f)))
    try:  # the namespace package, for installs without a RECORD file
        spec = importlib.util.find_spec("nvidia")
        roots = list(spec.submodule_search_locations or []) if spec else []
    except (ImportError, ValueError):
        roots = []
    for root in roots:
        for sub in ("cu13/lib", "cublas/lib"):
            found += glob.glob(os.path.join(root, sub, "libcublas.so*"))
    found = [p for p in found if os.path.exists(p)]
    return sorted(set(found), key=_soname_rank)


_reason = _cuda.init(cublas_candidates())
if _reason:
    raise ImportError(f"the cuda backend is unavailable: {_reason}")

DeviceArray = _cuda.DeviceArray
_DEVICE = int(_cuda.device_info().get("device", 0))  # the GPU the backend runs on


def info():
    """The GPU, driver, runtime and cuBLAS in use."""
    return _cuda.device_info()


def set_tf32(on: bool):
    """Opt in (or out) of TF32 tensor cores for float32 products: faster, ~1e-3 relative."""
    _cuda.set_tf32(bool(on))


# ----------------------------------------------------------------------------- inputs
def _net(net):
    h = net._handles.get(name)
    if h is None:
        h = net._handles[name] = _cuda.Net(list(net.sizes), [_cuda.ACTIVATION_CODES[a] for a in net.activations],
                                           _cuda.LOSS_CODES[net.loss_name], net.loss_scale)
    return h


def _f32(net):
    return net.dtype == np.float32


def _device_pointer(x, name, dtype, shape):
    """The device pointer of a device array (``__cuda_array_interface__`` or DLPack) after
    checking it: dtype, shape (None entries free), C-contiguous, memory of this GPU; waits for
    its stream."""
    cai = interface(x)
    got_dtype = np.dtype(cai["typestr"])
    if got_dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected a device array of {np.dtype(dtype).name}, got {got_dtype.name}")
    got_shape = tuple(int(s) for s in cai["shape"])
    if len(got_shape) != len(shape) or any(w is not None and w != g for w, g in zip(shape, got_shape)):
        want = tuple("N" if w is None else w for w in shape)
        raise ValueError(f"{name}: expected a device array of shape {want}, got {got_shape}")
    strides = cai.get("strides")
    if strides is not None:
        expect, step = [], got_dtype.itemsize
        for s in reversed(got_shape):
            expect.append(step)
            step *= s
        if tuple(int(s) for s in strides) != tuple(reversed(expect)) and int(np.prod(got_shape)) > 1:
            raise TypeError(f"{name}: the device array must be C-contiguous")
    if cai.get("mask") is not None:
        raise TypeError(f"{name}: masked device arrays are not supported")
    ptr = int(cai["data"][0])
    stream = cai.get("stream")
    if stream:  # the producer's work on it may still be queued
        _cuda.sync_stream(int(stream))
    kind, device = _cuda.pointer_info(ptr)
    if kind not in (2, 3) or (kind == 2 and device != _DEVICE):
        raise ValueError(f"{name}: the array is not memory of the GPU in use (device {_DEVICE})")
    return ptr


def _input(x, name, dtype, shape):
    """A numpy array of dtype (as the kernels take it) or a checked device pointer."""
    if is_device_array(x):
        return _device_pointer(x, name, dtype, shape)
    return np.ascontiguousarray(x, dtype=dtype)


def _rows(x):
    return int(interface(x)["shape"][0]) if is_device_array(x) else int(np.shape(x)[0])


def _targets(net, Y, N):
    if net.loss_name == "ce":
        return _input(Y, "Y", np.int64, (N,))
    if is_device_array(Y) and len(interface(Y)["shape"]) == 1 and net.target_width == 1:
        return _input(Y, "Y", net.dtype, (N,))  # (N,) and (N, 1) are the same memory
    return _input(Y, "Y", net.dtype, (N, net.target_width))


# ----------------------------------------------------------------------------- protocol
# (net, theta, X[, Y][, V], reduction) -> numpy results, data term only (taylorkern.backends);
# the _cuda calls take cpp's arguments (taylorkern._core), then keywords for device pointers.
def _args(net, theta, X, *Y):
    """The leading arguments of a _cuda call (net, theta, X[, Y]) and the keywords f32 and n,
    which say the dtype and rows of inputs passed as device pointers."""
    N = _rows(X)
    args = [_net(net), _input(theta, "theta", net.dtype, (net.num_params,)),
            _input(X, "X", net.dtype, (N, net.sizes[0]))]
    args += [_targets(net, y, N) for y in Y]
    return args, {"f32": _f32(net), "n": N}


def _weights(net, sample_weight, reduction, N):
    """(mean, w) for a _cuda call, as cpp passes them (backends/_weights.py, kernel_weights: "mean"
    folded into the weights, the kernels summing): host weights as a numpy array of the
    network's dtype; device weights, (N,) of the network's dtype, as their pointer with "sum",
    and with "mean" read back once (N values) to be normalised as host ones are."""
    if sample_weight is None or not is_device_array(sample_weight):
        return kernel_weights(net, sample_weight, reduction)
    ptr = _device_pointer(sample_weight, "sample_weight", net.dtype, (N,))
    if reduction == "sum":
        return False, ptr
    return kernel_weights(net, _cuda.to_host(ptr, [N], net.dtype.str), reduction)


def predict(net, theta, X, out="numpy"):
    args, kw = _args(net, theta, X)
    return _cuda.predict(*args, **kw, device_out=out == "device")


def jacobian(net, theta, X, out="numpy"):
    args, kw = _args(net, theta, X)
    return _cuda.jacobian(*args, **kw, device_out=out == "device")


def loss(net, theta, X, Y, reduction, sample_weight=None):
    args, kw = _args(net, theta, X, Y)
    return _cuda.loss(*args, *_weights(net, sample_weight, reduction, kw["n"]), **kw)


def loss_and_grad(net, theta, X, Y, reduction, out="numpy", sample_weight=None):
    args, kw = _args(net, theta, X, Y)
    return _cuda.loss_and_grad(*args, *_weights(net, sample_weight, reduction, kw["n"]), **kw,
                               device_out=out == "device")


def _with_vectors(fn_name):
    fn = getattr(_cuda, fn_name)

    def call(net, theta, X, Y, V, reduction, out="numpy", sample_weight=None):
        args, kw = _args(net, theta, X, Y)
        shape = interface(V)["shape"] if is_device_array(V) else np.shape(V)
        m = int(shape[1]) if len(shape) == 2 else 1
        Vin = _input(V, "V", net.dtype, (net.num_params, m) if len(shape) == 2 else (net.num_params,))
        if isinstance(Vin, np.ndarray):
            Vin = Vin.reshape(net.num_params, m)
        return fn(*args, Vin, *_weights(net, sample_weight, reduction, kw["n"]), **kw, m=m,
                  device_out=out == "device")

    call.__name__ = fn_name
    return call


def _with_data(fn_name):
    fn = getattr(_cuda, fn_name)

    def call(net, theta, X, Y, reduction, out="numpy", sample_weight=None):
        args, kw = _args(net, theta, X, Y)
        return fn(*args, *_weights(net, sample_weight, reduction, kw["n"]), **kw, device_out=out == "device")

    call.__name__ = fn_name
    return call


hvp = _with_vectors("hvp")
ggn_vp = _with_vectors("ggn_vp")
hessian = _with_data("hessian")
ggn = _with_data("ggn")
hessian_blocks = _with_data("hessian_blocks")
ggn_blocks = _with_data("ggn_blocks")
hessian_diag = _with_data("hessian_diag")
ggn_diag = _with_data("ggn_diag")

QUANTITIES = ("predict", "loss", "loss_and_grad", "hvp", "ggn_vp", "jacobian", "hessian", "ggn",
              "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag")


# ----------------------------------------------------------------------------- crossover
# When the dispatcher picks "cuda" by itself (not forced), each call goes to the GPU only when
# the estimate below says it is faster there, else to the CPU backend (cpp).  The model:
#   t_cpu = cpu work / (CPU_MADDS_PER_S * threads ** CPU_THREAD_EXPONENT)
#   t_gpu = GPU_CALL_S + work / GPU_MADDS_PER_S + inputs / H2D_BYTES_PER_S + result / D2H_BYTES_PER_S
# with work the call's multiply-adds (estimate(); the CPU's differs for hessian_diag, whose cpp
# kernel needs no per-sample matrices in most networks: cpp_hessian_diag_work), inputs the host
# arrays copied in and result the numpy array copied back.  Constants fitted to the crossover
# measurements in bench/GPU_NOTES.md; set_crossover() overrides.
CROSSOVER = {"CPU_MADDS_PER_S": 3e10, "CPU_THREAD_EXPONENT": 0.7, "GPU_MADDS_PER_S": 2.5e13,
             "GPU_CALL_S": 1.5e-4, "H2D_BYTES_PER_S": 8e9, "D2H_BYTES_PER_S": 1.2e10}


def set_crossover(**constants):
    for key, value in constants.items():
        if key not in CROSSOVER:
            raise ValueError(f"set_crossover: unknown {key!r}; known: {sorted(CROSSOVER)}")
        CROSSOVER[key] = float(value)


def estimate(net, quantity, N, m=1):
    """(multiply-adds, bytes of host inputs copied to the GPU, bytes of the result copied back)
    of one call."""
    P, k, d = net.num_params, net.num_outputs, net.sizes
    layers = list(zip(d[:-1], d[1:]))
    item = net.dtype.itemsize
    inputs = (N * (d[0] + k) + P) * item
    if quantity in ("predict", "loss"):
        return N * P, inputs, N * k * item
    if quantity == "loss_and_grad":
        return 3 * N * P, inputs, P * item
    if quantity in ("hvp", "ggn_vp"):
        return 8 * N * P * m, inputs + P * m * item, P * m * item
    if quantity == "jacobian":
        return N * k * P, inputs, N * k * P * item
    factors = N * sum(h * h * (a + h) for a, h in layers)  # per-sample Q / M recursions
    if quantity in ("hessian", "ggn"):
        return N * P * P // 2 + factors, inputs, P * P * item
    if quantity in ("hessian_blocks", "ggn_blocks"):
        sq = sum(((a + 1) * h) ** 2 for a, h in layers)
        return N * sq // 2 + factors, inputs, sq * item
    if quantity == "ggn_diag":
        return N * k * P, inputs, P * item
    if quantity == "hessian_diag":
        return factors + N * P, inputs, P * item
    raise ValueError(f"unknown quantity {quantity!r}")


def cpp_hessian_diag_work(net, N):
    """The multiply-adds of cpp's hessian_diag: about the GGN diagonal's, plus, for networks of
    three or more hidden layers with a curved activation, the per-sample matrices S_l below the
    top two (diagonal.cpp).  The GPU forms every layer's per-sample matrices (estimate())."""
    d, k = net.sizes, net.num_outputs
    curved = set(net.activations) - {"relu", "identity"}
    deep = range(1, len(d) - 3) if curved else ()
    return N * (k + 1) * net.num_params + N * sum(d[l + 1] ** 2 * (d[l] + d[l + 2]) for l in deep)


def worth_it(net, quantity, N, m=1) -> bool:
    """Whether the GPU is estimated to beat the CPU on this call (see CROSSOVER)."""
    work, inputs, result = estimate(net, quantity, N, m)
    c = CROSSOVER
    cpu = cpp_hessian_diag_work(net, N) if quantity == "hessian_diag" else work
    t_cpu = cpu / (c["CPU_MADDS_PER_S"] * get_num_threads() ** c["CPU_THREAD_EXPONENT"])
    t_gpu = (c["GPU_CALL_S"] + work / c["GPU_MADDS_PER_S"] + inputs / c["H2D_BYTES_PER_S"]
             + result / c["D2H_BYTES_PER_S"])
    return t_gpu < t_cpu


class Auto:
    """The backend the dispatcher installs when it chooses "cuda" itself: each call runs on
    the GPU when :func:`worth_it`, else on ``fallback`` (a backend module, e.g. cpp).
    Forcing "cuda" (TAYLORKERN_BACKEND, set_backend, use_backend) runs everything on the GPU."""

    name = name

    def __init__(self, fallback):
        self.fallback = fallback
        this = sys.modules[__name__]
        for q in QUANTITIES:
            setattr(self, q, self._router(q, getattr(this, q), getattr(fallback, q)))
        # The model's memory check before hvp / ggn_vp asks the backend what a product holds in
        # host memory: the fallback's answer (cpp's chunked R-op), which also bounds a GPU call's
        # (its result).  Without it the check assumed a tape of all N samples and refused
        # products that cpp runs.
        if hasattr(fallback, "product_memory_values"):
            self.product_memory_values = fallback.product_memory_values

    @staticmethod
    def _router(quantity, gpu, cpu):
        def call(net, theta, X, *rest, sample_weight=None):
            kw = {} if sample_weight is None else {"sample_weight": sample_weight}
            m = 1
            if quantity in ("hvp", "ggn_vp"):
                shape = np.shape(rest[1]) if not is_device_array(rest[1]) else \
                    interface(rest[1])["shape"]
                m = int(shape[1]) if len(shape) == 2 else 1
            return (gpu if worth_it(net, quantity, _rows(X), m) else cpu)(net, theta, X, *rest, **kw)

        call.__name__ = quantity
        return call

    def __repr__(self):
        return f"<cuda backend, small problems on {getattr(self.fallback, 'name', self.fallback)!r}>"


def auto(fallback):
    return Auto(fallback)


# ----------------------------------------------------------------------------- resident data
class DeviceData:
    """X and Y of one network kept on the GPU, for repeated calls without re-copying them.

    ``X`` and ``Y`` may be numpy arrays (checked as the MLP checks them, then copied once) or
    device arrays (``__cuda_array_interface__`` or DLPack: CuPy, PyTorch, JAX; used in place,
    checked once on the GPU for NaN/Inf and label range, and kept referenced).  Methods take
    ``theta`` (and ``V``) as numpy or device arrays and mirror the MLP's, l2 included; those
    with ``out="device"`` return a :class:`DeviceArray` that stays on the GPU.
    ``sample_weight`` (N,), numpy or a device array of the network's dtype, is checked as the
    MLP checks it and weighs every call that takes targets.

        data = DeviceData(net, X, Y)
        for it in range(100):
            value, grad = data.loss_and_grad(theta)
    """

    def __init__(self, net, X, Y=None, sample_weight=None):
        self.net = net
        if is_device_array(X):
            shape = tuple(interface(X)["shape"])
            if len(shape) != 2 or shape[1] != net.sizes[0] or shape[0] < 1:
                raise ValueError(f"X: expected shape (N, {net.sizes[0]}) with N >= 1, got {shape}")
            self.N = int(shape[0])
            ptr = _device_pointer(X, "X", net.dtype, (self.N, net.sizes[0]))
            if not _cuda.all_finite(ptr, self.N * net.sizes[0], _f32(net)):
                raise ValueError("X: contains NaN or Inf")
            self._X = X
        else:
            Xh = net._check_X(X)
            self.N = Xh.shape[0]
            self._X = _cuda.to_device(Xh)
        self._Y = None
        if Y is not None:
            if is_device_array(Y):
                if net.loss_name == "ce":
                    ptr = _device_pointer(Y, "Y", np.int64, (self.N,))
                    if not _cuda.labels_in_range(ptr, self.N, net.num_outputs):
                        raise ValueError(f"Y: labels must lie in [0, {net.num_outputs})")
                else:
                    ptr = _targets(net, Y, self.N)
                    if not _cuda.all_finite(ptr, self.N * net.target_width, _f32(net)):
                        raise ValueError("Y: contains NaN or Inf")
                self._Y = Y
            else:
                self._Y = _cuda.to_device(net._check_Y(Y, self.N))
        self._w = self._resident_weights(sample_weight)

    def _resident_weights(self, sample_weight):
        """{reduction: the weights on the GPU as the kernels take them when summing (w / sum w for
        "mean", as backends/_weights.py folds it, and w for "sum"), or None where they change
        nothing}.  Checked once as the MLP checks them; device weights (N,) of the network's dtype
        are read back once for that (N values)."""
        if sample_weight is None:
            return {}
        if is_device_array(sample_weight):
            ptr = _device_pointer(sample_weight, "sample_weight", self.net.dtype, (self.N,))
            sample_weight = _cuda.to_host(ptr, [self.N], self.net.dtype.str)
        resident = {}
        for reduction in ("mean", "sum"):
            w = self.net._check_weights(sample_weight, self.N, reduction)
            resident[reduction] = None if w is None else \
                _cuda.to_device(kernel_weights(self.net, w, reduction)[1])
        return resident

    def __repr__(self):
        return f"DeviceData({self.net!r}, N={self.N})"

    # -- helpers
    def _need_y(self):
        if self._Y is None:
            raise ValueError("Y: this DeviceData was made without targets")
        return self._Y

    def _theta(self, theta):
        if is_device_array(theta):
            _device_pointer(theta, "theta", self.net.dtype, (self.net.num_params,))
            return theta
        return self.net._check_theta(theta)

    @staticmethod
    def _check_out(out):
        if out not in ("numpy", "device"):
            raise ValueError(f"out: expected 'numpy' or 'device', got {out!r}")
        return out

    def _call(self, kind, theta, reduction, out=None, V=None):
        """The backend call of quantity kind on the resident data, with the MLP's l2 term."""
        reduction = self.net._check_reduction(reduction)
        theta = self._theta(theta)
        extra = () if V is None else (V,)
        outs = () if out is None else (self._check_out(out),)
        fn = getattr(sys.modules[__name__], kind)
        w = self._w.get(reduction)
        if w is None:
            result = fn(self.net, theta, self._X, self._need_y(), *extra, reduction, *outs)
        else:  # the resident weights carry the mean's 1 / sum w: the kernels sum
            result = fn(self.net, theta, self._X, self._need_y(), *extra, "sum", *outs, sample_weight=w)
        return self.net._add_l2(kind, result, reduction, theta, V, ops=_DeviceL2(self.net.dtype))

    # -- calls
    def predict(self, theta, out="numpy"):
        return predict(self.net, self._theta(theta), self._X, self._check_out(out))

    def jacobian(self, theta, out="numpy"):
        return jacobian(self.net, self._theta(theta), self._X, self._check_out(out))

    def loss(self, theta, reduction="mean"):
        return float(self._call("loss", theta, reduction))

    def loss_and_grad(self, theta, reduction="mean", out="numpy"):
        value, grad = self._call("loss_and_grad", theta, reduction, out)
        return float(value), grad

    def _product(self, kind, theta, V, reduction, out):
        if not is_device_array(V):
            V = self.net._check_V(V)
        result = self._call(kind, theta, reduction, out, V)
        if isinstance(result, np.ndarray):
            return result.reshape(interface(V)["shape"] if is_device_array(V) else V.shape)
        return result  # (P, m) on the device

    def hvp(self, theta, V, reduction="mean", out="numpy"):
        return self._product("hvp", theta, V, reduction, out)

    def ggn_vp(self, theta, V, reduction="mean", out="numpy"):
        return self._product("ggn_vp", theta, V, reduction, out)

    def hessian(self, theta, reduction="mean", out="numpy"):
        return self._call("hessian", theta, reduction, out)

    def ggn(self, theta, reduction="mean", out="numpy"):
        return self._call("ggn", theta, reduction, out)

    def hessian_blocks(self, theta, reduction="mean", out="numpy"):
        return self._call("hessian_blocks", theta, reduction, out)

    def ggn_blocks(self, theta, reduction="mean", out="numpy"):
        return self._call("ggn_blocks", theta, reduction, out)

    def hessian_diag(self, theta, reduction="mean", out="numpy"):
        return self._call("hessian_diag", theta, reduction, out)

    def ggn_diag(self, theta, reduction="mean", out="numpy"):
        return self._call("ggn_diag", theta, reduction, out)


class _DeviceL2:
    """MLP._add_l2's updates for DeviceData: results numpy arrays or DeviceArrays, theta and V
    numpy or device arrays."""

    def __init__(self, dtype):
        self.dtype = dtype

    def _host(self, x):
        if is_device_array(x):
            cai = interface(x)
            return _cuda.to_host(int(cai["data"][0]), [int(s) for s in cai["shape"]], self.dtype.str)
        return np.asarray(x)

    def sq_norm(self, x):
        h = self._host(x).ravel()
        return float(np.dot(h, h))

    def axpy(self, alpha, x, out):
        if isinstance(out, np.ndarray):
            out += alpha * self._host(x).reshape(out.shape)
        else:
            dev = x if is_device_array(x) else _cuda.to_device(np.ascontiguousarray(x, self.dtype))
            _cuda.axpy(alpha, int(interface(dev)["data"][0]), out)

    def add(self, out, value):
        if isinstance(out, np.ndarray):
            out += value
        else:
            ones = _cuda.to_device(np.ones(out.shape, self.dtype))
            _cuda.axpy(value, ones.ptr, out)

    def add_diagonal(self, out, value):
        if isinstance(out, np.ndarray):
            out.flat[::out.shape[0] + 1] += value
        else:
            _cuda.add_diagonal(out, value)
