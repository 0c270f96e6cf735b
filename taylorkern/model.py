"""The MLP: sizes, activations, loss, parameter layout, init, and input checks.

Index letters used throughout the package (and in the kernels):
    N  samples            P  parameters (all layers)
    L  layers             d_l  width of layer l (d_0 inputs, d_L = k outputs)
    m  directions in a product with V of shape (P, m)

Layout (docs/design.md §1): theta = concat(W1.ravel(), b1, W2.ravel(), b2, ...), Wl of shape
(d_{l-1}, d_l) row-major, so layer l's parameters are the augmented matrix
[Wl; bl] of shape (d_{l-1}+1, d_l) raveled row-major.

Every public call checks its inputs here, once, then hands contiguous arrays of the
network's dtype to the active backend (``taylorkern._dispatch``).  The l2 term is
added here too, so that backends compute only the data term.
"""

from __future__ import annotations

import collections
import copy
import math
import numbers
import os
import pickle
import threading

import numpy as np

from . import _dispatch

try:  # a compiled scan, faster than np.isfinite(x).all()
    from ._core import all_finite as _all_finite_fast
except ImportError:  # pragma: no cover - exercised when the extension is absent
    _all_finite_fast = None


def _all_finite(arr):
    if _all_finite_fast is not None:
        ok = _all_finite_fast(arr)
        if ok is not None:
            return ok
    return bool(np.isfinite(arr).all())

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "softplus", "gelu", "sin")
LOSSES = ("mse", "ce", "bce", "poisson", "huber", "soft_l1", "gaussian")
REDUCTIONS = ("mean", "sum")
INIT_SCHEMES = ("he", "xavier", "lecun", "normal")


class TooLargeError(ValueError, MemoryError):
    """A request whose result or workspace would not fit in memory."""


def _available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 34


_MEMORY_CHECK_MIN = 64 << 20  # bytes


def _shape(x):
    s = getattr(x, "shape", None)
    return s if s is not None else np.shape(x)


_HOST_DLPACK_DEVICES = (1, 3, 13)  # DLPack's CPU, CUDA pinned host and CUDA managed memory


def _host_array(x, name):
    """x as a numpy array, reading its memory in place where it allows: numpy arrays as they
    are, other arrays through ``__array__`` (CPU tensors of PyTorch and JAX: no copy) or, for
    objects with only ``__dlpack__``, through ``np.from_dlpack``.  What is not in host memory
    (a GPU tensor or JAX array: never copied silently) or cannot be read this way (a torch
    tensor that requires grad) is a TypeError naming the argument."""
    if type(x) is np.ndarray:
        return x
    on_host = getattr(x, "is_cpu", None)  # torch tensors answer in C; 2 us less than asking DLPack
    if not isinstance(on_host, bool):
        where = getattr(x, "__dlpack_device__", None)
        on_host = where is None or where()[0] in _HOST_DLPACK_DEVICES
    if not on_host:
        raise TypeError(f"{name}: an array on a device, not in host memory, which MLP calls read: pass a CPU "
                        "array (e.g. a tensor's .cpu()); GPU data for the cuda backend goes through "
                        "taylorkern.backends.cuda.DeviceData")
    try:
        if (hasattr(x, "__dlpack__") and not hasattr(x, "__array__")
                and not hasattr(x, "__array_interface__")):
            return np.from_dlpack(x)
        return np.asarray(x)
    except (TypeError, RuntimeError, BufferError) as exc:
        raise TypeError(f"{name}: cannot be read as an array in host memory ({exc}); pass a CPU array "
                        "(a tensor's .detach() or .cpu()); GPU data for the cuda backend goes through "
                        "taylorkern.backends.cuda.DeviceData") from exc


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


class _NumpyL2:
    """How MLP._add_l2 updates numpy results."""

    @staticmethod
    def sq_norm(x):
        return float(np.dot(x, x))

    @staticmethod
    def axpy(alpha, x, out):
        out += alpha * np.asarray(x).reshape(out.shape)

    @staticmethod
    def add(out, value):
        out += value

    @staticmethod
    def add_diagonal(out, value):
        out.flat[::out.shape[0] + 1] += value


_SHARED_HANDLES = collections.OrderedDict()  # pickled attributes -> handles, most recent last
_SHARED_KEEP = 4
_SHARED_LOCK = threading.Lock()


def _unpickle_shared(cls, state):
    """An unpickled network whose backend handles are those of the last networks unpickled in
    this process with the same attributes (the last _SHARED_KEEP kinds of them): the compiled
    description and workspaces are built once per process, not once per unpickling.  Backend
    handles take concurrent calls (each call leases its own workspace).  Copies
    (copy.copy, copy.deepcopy) get their own handles."""
    net = object.__new__(cls)
    net.__setstate__(state)
    try:
        key = (cls, pickle.dumps({k: v for k, v in net.__dict__.items() if k != "_handles"}, protocol=5))
    except Exception:  # an attribute that does not pickle: no sharing
        return net
    with _SHARED_LOCK:
        handles = _SHARED_HANDLES.pop(key, None)
        if handles is None:
            handles = net._handles
        _SHARED_HANDLES[key] = handles
        while len(_SHARED_HANDLES) > _SHARED_KEEP:
            _SHARED_HANDLES.popitem(last=False)
    net._handles = handles
    return net


_POISSON_RATE_MAX = 1e18  # numpy's Poisson sampler refuses rates near 2**63


def _mc_draws(loss, N, k, outputs, rng, M):
    """What K-FAC's sampled kind hands the kernels for N samples of k outputs, from a Generator;
    outputs() gives the network's outputs F (N, k), called where the draws depend on them.

    ce: (N, M) uniforms (the kernels draw each label from the softmax by inverse CDF).  The
    other likelihoods: (N, M, k) rows g = sqrt(m) * (the gradient of the per-sample loss at a
    target drawn from the model's predictive distribution), m the number of terms the loss
    averages (k, or h = k/2 pairs for gaussian), so that E[g g^T] is the unit-weight output
    Hessian of the GGN, the kernels scaling by sqrt(s / M):
      mse       y ~ N(f, 1/2)               g = sqrt(2/k) eps
      bce       y ~ Bernoulli(sigma(f))     g = (sigma(f) - y) / sqrt(k)
      poisson   y ~ Poisson(e^f)            g = (e^f - y) / sqrt(k)
      gaussian  y ~ N(mu, e^v), eps = (y - mu) e^(-v/2)
                g_mu = -eps e^(-v/2) / sqrt(h),  g_v = (1 - eps^2) / (2 sqrt(h))
    Drawn in float64 (the outputs too), whatever the network's dtype."""
    if loss == "ce":
        return rng.random((N, M))
    if loss == "mse":
        return math.sqrt(2.0 / k) * rng.standard_normal((N, M, k))
    F = np.asarray(outputs(), np.float64)[:, None, :]
    if loss == "bce":  # sigma(f) - y: sigma(f) where y = 0, -sigma(-f) where y = 1, each without cancellation
        e = np.exp(-np.abs(F))
        small, big = e / (1.0 + e), 1.0 / (1.0 + e)  # sigma(-|f|), sigma(|f|)
        up, down = np.where(F >= 0, big, small), np.where(F >= 0, small, big)  # sigma(f), sigma(-f)
        return np.where(rng.random((N, M, k)) < up, -down, up) / math.sqrt(k)
    if loss == "poisson":
        with np.errstate(over="ignore"):
            rate = np.exp(F)
        top = float(rate.max(initial=0.0))
        if not top <= _POISSON_RATE_MAX:
            raise ValueError(f"kind: 'mc' draws Poisson counts for rates e^f up to {_POISSON_RATE_MAX:.0e}; the "
                             f"largest here is {top:.3g}; use 'exact'")
        return (rate - rng.poisson(rate, (N, M, k))) / math.sqrt(k)
    h = k // 2  # gaussian
    eps = rng.standard_normal((N, M, h))
    with np.errstate(over="ignore"):
        q = np.exp(-0.5 * F[:, :, h:])
    return np.concatenate([-eps * q, 0.5 * (1.0 - eps * eps)], axis=2) / math.sqrt(h)


class MLP:
    """A fully-connected network with a loss, and every curvature quantity of it.

    Parameters
    ----------
    sizes : sequence of int
        ``[d0, d1, ..., dL]``; at least one layer.
    activation : str or sequence of str
        Hidden activation, one for all hidden layers or one per hidden layer
        (``len(sizes) - 2`` of them).  The last layer is linear.
    loss : {"mse", "ce", "bce", "poisson", "huber", "soft_l1", "gaussian"}
        Mean squared error over all N*dL elements; mean softmax cross-entropy (integer labels);
        binary cross-entropy with logits, the mean over all N*dL elements of softplus(f) - y f
        (targets in [0, 1], torch's BCEWithLogitsLoss); or the Poisson negative log-likelihood
        with log-rate outputs, the mean of exp(f) - y f (targets >= 0, torch's
        PoissonNLLLoss(log_input=True, full=False)); or, of the residual r = f - y, the mean of
        torch's HuberLoss(delta=loss_scale) (``"huber"``) or of c^2 (sqrt(1 + (r/c)^2) - 1) with
        c = loss_scale (``"soft_l1"``, scipy's robust loss of that name); or the Gaussian negative
        log-likelihood with a variance per output (``"gaussian"``, heteroscedastic regression):
        the network's dL = 2k outputs are k means mu and k log-variances v (outputs
        ``[mu_1..mu_k, v_1..v_k]``), Y has shape (N, k), and each sample's loss is the mean over
        the k pairs of (v + (y - mu)^2 e^-v) / 2.  Its GGN uses the Fisher, the output Hessian's
        expectation under the model, diag(e^-v, 1/2) per pair; its Hessian is exact.
    l2 : float
        Adds ``0.5 * l2 * ||theta||^2`` to the loss (with reduction="mean").
    dtype : float64 (default) or float32.
    loss_scale : float
        huber's delta and soft_l1's c (finite, > 0; default 1.0); the other losses ignore it.
    """

    def __init__(self, sizes, activation="tanh", loss="mse", l2=0.0, dtype=np.float64, loss_scale=1.0):
        try:
            sizes = None if isinstance(sizes, (str, bytes)) else list(sizes)
        except TypeError:
            sizes = None
        if not sizes or len(sizes) < 2:
            raise ValueError("sizes: expected a sequence of at least two layer widths [d0, ..., dL]")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
                raise ValueError(f"sizes: every width must be a positive integer, got {sizes!r}")
        self.sizes = tuple(int(s) for s in sizes)
        n_hidden = len(self.sizes) - 2

        if isinstance(activation, str):
            acts = [activation] * n_hidden
        else:
            try:
                acts = list(activation)
            except TypeError:
                raise TypeError(f"activation: expected a name or a list of names, got {activation!r}") from None
            if len(acts) != n_hidden:
                raise ValueError(
                    f"activation: a list needs one entry per hidden layer ({n_hidden}), got {len(acts)}")
        for a in acts:
            if not isinstance(a, str) or a not in ACTIVATIONS:
                raise ValueError(f"activation: unknown {a!r}; expected one of {ACTIVATIONS}")
        self.activation = activation if isinstance(activation, str) else tuple(acts)
        self.activations = tuple(acts)  # one per hidden layer

        if loss not in LOSSES:
            raise ValueError(f"loss: unknown {loss!r}; expected one of {LOSSES}")
        if loss == "ce" and self.sizes[-1] < 2:
            raise ValueError("loss: 'ce' needs at least 2 outputs (sizes[-1] >= 2)")
        if loss == "gaussian" and self.sizes[-1] % 2:
            raise ValueError(f"sizes: loss 'gaussian' needs an even last width (a mean and a log-variance per "
                             f"target), got sizes[-1] = {self.sizes[-1]}")
        self.loss_name = loss

        if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not math.isfinite(l2) or l2 < 0:
            raise ValueError(f"l2: expected a finite number >= 0, got {l2!r}")
        self.l2 = float(l2)

        if (isinstance(loss_scale, bool) or not isinstance(loss_scale, numbers.Real)
                or not math.isfinite(loss_scale) or not loss_scale > 0):
            raise ValueError(f"loss_scale: expected a finite number > 0, got {loss_scale!r}")
        self.loss_scale = float(loss_scale)

        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: expected float64 or float32, got {dtype!r}") from None
        if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise TypeError(f"dtype: expected float64 or float32, got {dt}")
        self.dtype = dt

        # offsets[l] is where layer l+1's [W; b] starts in theta.
        self.layer_sizes = tuple((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        self.offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.layer_sizes)]))
        self.num_params = self.offsets[-1]
        self._handles = {}  # per-backend prepared state (compiled net descriptions)

    # ------------------------------------------------------------------ layout
    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def num_outputs(self) -> int:
        return self.sizes[-1]

    @property
    def target_width(self) -> int:
        """Values per sample of float targets Y: dL, but dL / 2 for 'gaussian' (one target per
        (mean, log-variance) pair)."""
        return self.sizes[-1] // 2 if self.loss_name == "gaussian" else self.sizes[-1]

    def __getstate__(self):
        # backend handles (compiled network descriptions, workspaces) are rebuilt on demand
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __setstate__(self, state):
        state.setdefault("loss_scale", 1.0)  # pickled before the argument existed
        self.__dict__.update(state)

    def __reduce__(self):
        # unpickled through _unpickle_shared: equal networks unpickled in one process (a Dask
        # worker receiving the network with every task) share their backend handles
        return _unpickle_shared, (type(self), self.__getstate__())

    def __copy__(self):
        new = object.__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def __repr__(self):
        scale = f", loss_scale={self.loss_scale}" if self.loss_scale != 1.0 else ""
        return (f"MLP(sizes={list(self.sizes)}, activation={self.activation!r}, "
                f"loss={self.loss_name!r}, l2={self.l2}, dtype={self.dtype.name}{scale})")

    def unflatten(self, theta):
        """Views ``[(W1, b1), (W2, b2), ...]`` into theta (no copy)."""
        theta = self._check_theta(theta)
        out = []
        for l, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            o = self.offsets[l]
            out.append((theta[o:o + a * b].reshape(a, b), theta[o + a * b:o + (a + 1) * b]))
        return out

    def flatten(self, params):
        """Inverse of :meth:`unflatten`: ``[(W1, b1), ...]`` -> theta of shape (P,)."""
        params = list(params)
        if len(params) != self.num_layers:
            raise ValueError(f"params: expected {self.num_layers} (W, b) pairs, got {len(params)}")
        theta = np.empty(self.num_params, self.dtype)
        for l, ((a, b), pair) in enumerate(zip(zip(self.sizes[:-1], self.sizes[1:]), params)):
            W, bias = (_host_array(p, f"params[{l}]") for p in pair)
            if W.shape != (a, b) or bias.shape != (b,):
                raise ValueError(f"params[{l}]: expected W {(a, b)} and b {(b,)}, got {W.shape} and {bias.shape}")
            o = self.offsets[l]
            theta[o:o + a * b] = W.ravel()
            theta[o + a * b:o + (a + 1) * b] = bias
        return theta

    def init(self, seed=None, scheme=None, std=None):
        """Random parameters: weights from ``scheme``, biases zero.

        scheme: "he" (std sqrt(2/fan_in)), "xavier" (std sqrt(2/(fan_in+fan_out))),
        "lecun" (std sqrt(1/fan_in)) or "normal" (the given ``std``).  Default: "he"
        for relu/gelu hidden layers, "xavier" otherwise.
        """
        if scheme is None:
            scheme = "he" if set(self.activations) <= {"relu", "gelu"} and self.activations else "xavier"
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"scheme: unknown {scheme!r}; expected one of {INIT_SCHEMES}")
        if scheme == "normal":
            if (std is None or isinstance(std, bool) or not isinstance(std, numbers.Real)
                    or not (std >= 0 and math.isfinite(std))):
                raise ValueError("std: scheme='normal' needs a finite std >= 0")
        elif std is not None:
            raise ValueError(f"std: only used with scheme='normal', not {scheme!r}")
        rng = np.random.default_rng(seed)
        params = []
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            s = {"he": math.sqrt(2.0 / a), "xavier": math.sqrt(2.0 / (a + b)),
                 "lecun": math.sqrt(1.0 / a), "normal": std}[scheme]
            params.append((rng.standard_normal((a, b)) * s, np.zeros(b)))
        return self.flatten(params)

    # ------------------------------------------------------------------ checks
    def _as_float(self, x, name):
        arr = np.asarray(x)
        if arr.dtype == self.dtype and arr.flags.c_contiguous:  # the common case, fast
            if not _all_finite(arr):
                raise ValueError(f"{name}: contains NaN or Inf")
            return arr
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not _all_finite(arr):
            raise ValueError(f"{name}: contains NaN or Inf")
        if arr.dtype != self.dtype and arr.size:
            limit = np.finfo(self.dtype).max
            if np.abs(arr).max() > limit:
                raise ValueError(f"{name}: values beyond the {self.dtype.name} range (|x| > {limit:.3g})")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _check_theta(self, theta):
        t = _host_array(theta, "theta")
        if t.ndim != 1 or t.shape[0] != self.num_params:
            raise ValueError(f"theta: expected shape ({self.num_params},), got {t.shape}")
        if t.dtype.kind != "f":
            raise TypeError(f"theta: expected a floating array, got dtype {t.dtype}")
        return self._as_float(t, "theta")

    def _check_X(self, X):
        arr = _host_array(X, "X")
        if arr.ndim != 2 or arr.shape[1] != self.sizes[0]:
            raise ValueError(f"X: expected shape (N, {self.sizes[0]}), got {arr.shape}")
        if arr.shape[0] < 1:
            raise ValueError("X: needs at least one sample (N >= 1)")
        return self._as_float(arr, "X")

    def _check_Y(self, Y, n):
        k = self.num_outputs
        arr = _host_array(Y, "Y")
        if self.loss_name == "ce":
            if arr.shape != (n,):
                raise ValueError(f"Y: 'ce' expects integer labels of shape ({n},), got {arr.shape}")
            if arr.dtype.kind == "f":
                if not np.isfinite(arr).all() or np.any(arr != np.round(arr)):
                    raise TypeError("Y: 'ce' labels must be integers (got non-integral floats)")
            elif arr.dtype.kind not in "iu":
                raise TypeError(f"Y: 'ce' labels must be integers, got dtype {arr.dtype}")
            if n and (arr.min() < 0 or arr.max() >= k):
                raise ValueError(f"Y: labels must lie in [0, {k}), got range [{arr.min()}, {arr.max()}]")
            return np.ascontiguousarray(arr, dtype=np.int64)
        k = self.target_width
        if arr.ndim == 1 and k == 1 and arr.shape[0] == n:
            arr = arr.reshape(n, 1)
        if arr.shape != (n, k):
            extra = f" (one target per mean and log-variance pair of the {2 * k} outputs)" \
                if self.loss_name == "gaussian" else ""
            raise ValueError(f"Y: {self.loss_name!r} expects shape ({n}, {k}){extra}, got {arr.shape}")
        arr = self._as_float(arr, "Y")
        if self.loss_name == "bce" and arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"Y: 'bce' targets must lie in [0, 1], got range [{arr.min()}, {arr.max()}]")
        if self.loss_name == "poisson" and arr.size and arr.min() < 0:
            raise ValueError(f"Y: 'poisson' targets (counts) must be >= 0, got a minimum of {arr.min()}")
        return arr

    def _check_V(self, V):
        arr = _host_array(V, "V")
        P = self.num_params
        if arr.ndim not in (1, 2) or arr.shape[0] != P or (arr.ndim == 2 and arr.shape[1] < 1):
            raise ValueError(f"V: expected shape ({P},) or ({P}, m) with m >= 1, got {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"V: expected a real numeric array, got dtype {arr.dtype}")
        return self._as_float(arr, "V")

    @staticmethod
    def _check_weights(sample_weight, n, reduction):
        """sample_weight as float64 (n,), or None where it changes nothing: None itself, equal
        weights with reduction "mean", all ones with "sum" (those calls then take the unweighted
        path, so their results are bitwise the unweighted ones)."""
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "fiu":
            raise TypeError(f"sample_weight: expected a real numeric array, got dtype {w.dtype}")
        if w.shape != (n,):
            raise ValueError(f"sample_weight: expected shape ({n},), one weight per sample, got {w.shape}")
        w = np.ascontiguousarray(w, dtype=np.float64)
        if not np.isfinite(w).all():
            raise ValueError("sample_weight: contains NaN or Inf")
        if (w < 0).any():
            raise ValueError(f"sample_weight: weights must be >= 0, got a minimum of {w.min()!r}")
        with np.errstate(over="ignore"):
            total = float(w.sum())
        if not total > 0 or not math.isfinite(total):
            raise ValueError(f"sample_weight: the weights must have a positive, finite sum, got {total!r}")
        if (reduction == "mean" and (w == w[0]).all()) or (reduction == "sum" and (w == 1.0).all()):
            return None
        return w

    @staticmethod
    def _check_reduction(reduction):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        return reduction

    def _check_data(self, theta, X, Y, reduction, sample_weight=None):
        """theta, X, Y and reduction checked, and the weights as _check_weights returns them."""
        theta = self._check_theta(theta)
        X = self._check_X(X)
        Y = self._check_Y(Y, X.shape[0])
        if reduction not in REDUCTIONS:
            self._check_reduction(reduction)
        w = None if sample_weight is None else self._check_weights(sample_weight, X.shape[0], reduction)
        return theta, X, Y, reduction, w

    def _check_memory(self, what, n_elements):
        """Refuse a request of n_elements values that cannot fit; `what` names it (a callable
        returning the name is called only then, so that hot calls format nothing)."""
        need = float(n_elements) * self.dtype.itemsize
        if need < _MEMORY_CHECK_MIN:  # asking the OS costs a microsecond: only for large requests
            return
        have = _available_memory_bytes()
        if need > have and callable(what):
            what = what()
        if need > have:
            raise TooLargeError(
                f"{what} would need {_fmt_bytes(need)} ({n_elements:.3g} {self.dtype.name} values) "
                f"but only {_fmt_bytes(have)} of memory is available; use products (hvp/ggn_vp), "
                "blocks or diagonals instead")

    def _l2_active(self, reduction):
        return self.l2 > 0.0 and reduction == "mean"

    def _add_l2(self, kind, result, reduction, theta, V=None, ops=None):
        """The backend's data term ``result`` of quantity ``kind`` with the l2 term added (for
        reduction="mean"): 0.5 l2 |theta|^2 to the loss, l2 theta to the gradient, l2 V to a
        product, l2 to the diagonal of the matrices and blocks.  Arrays are updated in place,
        numpy ones by default; ``ops`` does it for others (cuda.DeviceData's device arrays)."""
        if not self._l2_active(reduction):
            return result
        ops, l2 = ops or _NumpyL2, self.l2
        if kind == "loss":
            return result + 0.5 * l2 * ops.sq_norm(theta)
        if kind in ("loss_and_grad", "loss_grad_ggn"):
            value, grad = result[0], result[1]
            ops.axpy(l2, theta, grad)
            if kind == "loss_grad_ggn":
                ops.add_diagonal(result[2], l2)
            return (value + 0.5 * l2 * ops.sq_norm(theta),) + tuple(result[1:])
        if kind in ("hvp", "ggn_vp"):
            ops.axpy(l2, V, result)
        elif kind.endswith("_diag"):
            ops.add(result, l2)
        else:  # hessian, ggn, their blocks
            for B in result if isinstance(result, list) else [result]:
                ops.add_diagonal(B, l2)
        return result

    def _trusted(self, kind, theta, X, Y, reduction="mean", sample_weight=None):
        """``kind`` (loss, loss_and_grad, loss_grad_ggn, hessian, ggn, and their blocks and
        diagonals) with the l2 term, on inputs checked already: theta, X and Y as the checks
        return them (the network's dtype, C-contiguous, finite; ce labels int64), sample_weight
        as _check_weights returns it.  The public calls check, then come here; the optimizers
        check their data once per run and come here every iteration (taylorkern.optim._run)."""
        impl = self._impl()
        # the weights reach the backend only when given: without them, the call is the old one
        kw = {} if sample_weight is None else {"sample_weight": sample_weight}
        if kind == "loss_grad_ggn":
            fused = getattr(impl, "loss_grad_ggn", None)
            if fused is not None:
                result = fused(self, theta, X, Y, reduction, **kw)
            else:
                result = (impl.loss_and_grad(self, theta, X, Y, reduction, **kw)
                          + (impl.ggn(self, theta, X, Y, reduction, **kw),))
        else:
            result = getattr(impl, kind)(self, theta, X, Y, reduction, **kw)
        if self._l2_active(reduction):
            result = self._add_l2(kind, result, reduction, theta)
        if kind == "loss":
            return float(result)
        if kind in ("loss_and_grad", "loss_grad_ggn"):
            return (float(result[0]),) + tuple(result[1:])
        return result

    def _impl(self):
        return _dispatch.current()

    # ------------------------------------------------------------------ calls
    def predict(self, theta, X):
        """Network outputs f(X), shape (N, dL)."""
        theta, X = self._check_theta(theta), self._check_X(X)
        return self._impl().predict(self, theta, X)

    def loss(self, theta, X, Y, reduction="mean", sample_weight=None):
        """The loss (a float).  ``sample_weight`` (N,), finite, >= 0 with a positive sum, weighs
        each sample's loss: sum w_n l_n / sum w_n with reduction "mean", sum w_n l_n with "sum"
        (every data call takes it)."""
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        return self._trusted("loss", theta, X, Y, reduction, w)

    def loss_and_grad(self, theta, X, Y, reduction="mean", sample_weight=None):
        """(loss, gradient of shape (P,))."""
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        return self._trusted("loss_and_grad", theta, X, Y, reduction, w)

    def loss_grad_ggn(self, theta, X, Y, reduction="mean", sample_weight=None):
        """(loss, gradient (P,), GGN (P, P)): what a Gauss-Newton or Levenberg-Marquardt
        iteration needs at a point.  One sweep over the samples where the backend fuses them
        (cpp, on the networks its Gram route takes: docs/curvature.md), else loss_and_grad and
        ggn; the same values either way."""
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        self._check_memory("loss_grad_ggn", 2.0 * self.num_params * self.num_params)
        return self._trusted("loss_grad_ggn", theta, X, Y, reduction, w)

    def _product(self, kind, theta, X, Y, V, reduction, sample_weight=None):
        # sizes first (shapes only), so that an oversized request is refused before any copy
        xs, shape = _shape(X), _shape(V)
        n = xs[0] if len(xs) == 2 else 0
        m = shape[1] if len(shape) == 2 else 1
        # tangents of every layer's activations for all m directions, plus the result; a
        # backend that holds less says how much (asked only for large requests: it costs a call)
        need = 3.0 * n * m * sum(self.sizes) + 2.0 * self.num_params * m
        impl = self._impl()
        if need * self.dtype.itemsize >= _MEMORY_CHECK_MIN and hasattr(impl, "product_memory_values"):
            need = impl.product_memory_values(self, n, m)
        self._check_memory(lambda: f"{kind} with V of shape {shape}", need)
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        V = self._check_V(V)
        V2 = V.reshape(self.num_params, -1)
        kw = {} if w is None else {"sample_weight": w}
        out = self._add_l2(kind, getattr(impl, kind)(self, theta, X, Y, V2, reduction, **kw), reduction, theta, V2)
        return out.reshape(V.shape)

    def hvp(self, theta, X, Y, V, reduction="mean", sample_weight=None):
        """Hessian-vector product(s) H @ V for V of shape (P,) or (P, m)."""
        return self._product("hvp", theta, X, Y, V, reduction, sample_weight)

    def ggn_vp(self, theta, X, Y, V, reduction="mean", sample_weight=None):
        """Gauss-Newton-matrix product(s) G @ V for V of shape (P,) or (P, m)."""
        return self._product("ggn_vp", theta, X, Y, V, reduction, sample_weight)

    def jacobian(self, theta, X):
        """d f / d theta, shape (N*dL, P); row n*dL + c is output c of sample n."""
        xs = _shape(X)
        n = xs[0] if len(xs) == 2 else 0
        self._check_memory("jacobian", float(n) * self.num_outputs * self.num_params)
        theta, X = self._check_theta(theta), self._check_X(X)
        return self._impl().jacobian(self, theta, X)

    def _full(self, kind, theta, X, Y, reduction, sample_weight=None):
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        P = self.num_params
        self._check_memory(kind, 2.0 * P * P)  # result plus the kernels' block workspace
        return self._trusted(kind, theta, X, Y, reduction, w)

    def hessian(self, theta, X, Y, reduction="mean", sample_weight=None):
        """The exact Hessian of the loss, shape (P, P)."""
        return self._full("hessian", theta, X, Y, reduction, sample_weight)

    def ggn(self, theta, X, Y, reduction="mean", sample_weight=None):
        """The generalized Gauss-Newton matrix J^T H_out J (+ l2 I), shape (P, P)."""
        return self._full("ggn", theta, X, Y, reduction, sample_weight)

    def ggn_factor(self, theta, X, Y, reduction="mean", sample_weight=None):
        """B of shape (N*dL, P) with B^T B = the GGN's data term: row n*dL + r is row r of a
        square root R_n of sample n's output Hessian times its Jacobian, R_n J_n (mse:
        sqrt(2 s / dL) J_n; bce, poisson: diag(sqrt(s / dL l''(f))) J_n; ce: R_n = diag(sqrt(s p))
        (I - 1 p^T), p the softmax; gaussian, with h = dL/2 pairs: diag(sqrt(s / h e^-v), sqrt(s / 2h))
        J_n, the square root of the Fisher; s = 1/N for
        reduction="mean", 1 for "sum"; with sample weights s_n = w_n / sum w or w_n).  With N*dL < P
        it is the smaller factor: a
        Levenberg-Marquardt step then solves an (N*dL)-square system instead of a P-square one
        (taylorkern.optim, lm's space="samples").  l2 is not in it: G = B^T B + l2 I."""
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        N, k = X.shape[0], self.num_outputs
        self._check_memory("ggn_factor", 2.0 * N * k * self.num_params)
        impl = self._impl()
        J = impl.jacobian(self, theta, X).reshape(N, k, self.num_params)
        s = 1.0 / N if reduction == "mean" else 1.0
        if w is not None:  # one per sample, (N, 1)
            s = (w / w.sum() if reduction == "mean" else w)[:, None]
        if self.loss_name == "mse":
            J *= np.sqrt(2.0 * s / k).astype(self.dtype)[..., None] if w is not None else \
                np.sqrt(2.0 * s / k).astype(self.dtype)
            return J.reshape(N * k, -1)
        F = impl.predict(self, theta, X).astype(np.float64)
        if self.loss_name == "gaussian":  # the Fisher, s/h diag(e^-v, 1/2) per pair
            h = k // 2
            root = np.empty((N, k))
            root[:, :h] = np.exp(-0.5 * F[:, h:])
            root[:, h:] = math.sqrt(0.5)
            J *= (np.sqrt(s / h) * root).astype(self.dtype)[:, :, None]
            return J.reshape(N * k, -1)
        if self.loss_name in ("bce", "poisson", "huber", "soft_l1"):  # s/k diag(l'')
            c, R = self.loss_scale, F - Y
            if self.loss_name == "bce":  # sigmoid', through exp(-|f|)
                e = np.exp(-np.abs(F))
                h = e / (1 + e) ** 2
            elif self.loss_name == "poisson":
                h = np.exp(F)
            elif self.loss_name == "huber":
                h = (np.abs(R) <= c).astype(np.float64)
            else:
                h = (1 / np.hypot(1.0, R / c)) ** 3
            J *= np.sqrt(s / k * h).astype(self.dtype)[:, :, None]
            return J.reshape(N * k, -1)
        p = np.exp(F - F.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        R = np.sqrt(s * p)[:, :, None] * (np.eye(k) - p[:, None, :])  # (N, k, k)
        return np.matmul(R.astype(self.dtype), J).reshape(N * k, -1)

    def _blocks(self, kind, theta, X, Y, reduction, sample_weight=None):
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        self._check_memory(kind, 2.0 * sum(p * p for p in self.layer_sizes))
        return self._trusted(kind, theta, X, Y, reduction, w)

    def hessian_blocks(self, theta, X, Y, reduction="mean", sample_weight=None):
        """Per-layer diagonal blocks of the Hessian: list of (P_l, P_l), layer l = [Wl; bl]."""
        return self._blocks("hessian_blocks", theta, X, Y, reduction, sample_weight)

    def ggn_blocks(self, theta, X, Y, reduction="mean", sample_weight=None):
        """Per-layer diagonal blocks of the GGN: list of (P_l, P_l)."""
        return self._blocks("ggn_blocks", theta, X, Y, reduction, sample_weight)

    def _diag(self, kind, theta, X, Y, reduction, sample_weight=None):
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        return self._trusted(kind, theta, X, Y, reduction, w)

    def hessian_diag(self, theta, X, Y, reduction="mean", sample_weight=None):
        """diag(H), shape (P,), without forming H."""
        return self._diag("hessian_diag", theta, X, Y, reduction, sample_weight)

    def ggn_diag(self, theta, X, Y, reduction="mean", sample_weight=None):
        """diag(G), shape (P,), without forming G."""
        return self._diag("ggn_diag", theta, X, Y, reduction, sample_weight)

    # ------------------------------------------------------------ Kronecker factors
    def _kfac_call(self, theta, X, Y, kind, seed, mc_samples, reduction, bases, sample_weight, input_factor=True):
        if kind not in ("exact", "mc"):
            raise ValueError(f"kind: expected 'exact' or 'mc', got {kind!r}")
        if kind == "mc" and self.loss_name in ("huber", "soft_l1"):
            raise ValueError(f"kind: 'mc' draws targets from the model's likelihood, which {self.loss_name!r} "
                             "is not (not a normalised density); use 'exact'")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, numbers.Integral) or mc_samples < 1:
            raise ValueError(f"mc_samples: expected an integer >= 1, got {mc_samples!r}")
        if seed is not None and not isinstance(seed, np.random.Generator) and (
                isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed: expected None, an integer >= 0 or a numpy Generator, got {seed!r}")
        theta, X, Y, reduction, w = self._check_data(theta, X, Y, reduction, sample_weight)
        N, k = X.shape[0], self.num_outputs
        rows = k if kind == "exact" else int(mc_samples)
        self._check_memory(lambda: f"kfac factors of {N} samples with {rows} rows each",
                           2.0 * N * rows * max(self.sizes) + sum((a + 1) ** 2 + b * b for a, b in
                                                                  zip(self.sizes[:-1], self.sizes[1:])))
        noise = None
        if kind == "mc":
            noise = _mc_draws(self.loss_name, N, k, lambda: self._impl().predict(self, theta, X),
                              np.random.default_rng(seed), rows).astype(self.dtype)
        return _dispatch.optional("kfac_factors")(self, theta, X, Y, reduction, noise, bases,
                                                  **({} if w is None else {"sample_weight": w}),
                                                  **({} if input_factor else {"input_factor": False}))

    def kfac_factors(self, theta, X, Y, kind="exact", seed=None, mc_samples=1, reduction="mean",
                     sample_weight=None, input_factor=True):
        """Kronecker factors of each layer's GGN block: a list of (A_l, B_l).

        A_l, (d_{l-1} + 1, d_{l-1} + 1), is the mean over samples of a~ a~^T, a~ the layer's
        inputs with a 1 appended (the order of [Wl; bl]'s rows).  B_l, (d_l, d_l), is the sum
        over samples of u u^T over rows u backpropagated from the output to the layer's
        pre-activations, the reduction's sample weight included: with ``kind="exact"`` the dL
        rows of a square root of each sample's output Hessian, the GGN's (K-FAC's "KFLR"; every
        loss, gaussian's Fisher), with ``kind="mc"`` ``mc_samples`` gradients of the loss at
        targets drawn from the model's predictive distribution (a Gaussian for mse and gaussian,
        the softmax for ce, Bernoulli for bce, Poisson for poisson; huber and soft_l1 are not
        likelihoods and take "exact" only), seeded by ``seed``.
        ``kron(A_l, B_l)`` is then in theta's order, and equals the exact GGN block for one
        sample through one layer.  l2 is not included (taylorkern.kfac adds it).  With
        ``sample_weight`` w, A_l is the weighted mean sum_n w_n a~ a~^T / sum_n w_n and each
        sample's rows carry its weight as in the other calls (w_n / sum w, or w_n with "sum"):
        integer weights give the factors of the data with each row repeated that many times.
        With ``input_factor=False`` the first layer's A, which depends on X and the weights only,
        is not computed and None stands in its place: for a caller that keeps it from an earlier
        call on the same data (the kfac optimizer does), it is the widest factor for a wide input.
        """
        if not isinstance(input_factor, (bool, np.bool_)):
            raise TypeError(f"input_factor: expected True or False, got {input_factor!r}")
        return self._kfac_call(theta, X, Y, kind, seed, mc_samples, reduction, None, sample_weight,
                               bool(input_factor))

    def kfac_eigen_scales(self, theta, X, Y, bases, kind="exact", seed=None, mc_samples=1, reduction="mean",
                          sample_weight=None):
        """EKFAC's eigenvalues: for each layer's basis (Qa, Qb) (orthogonal, (d_{l-1} + 1)- and
        d_l-square), the (d_{l-1} + 1, d_l) diagonal of the layer's GGN data term (kind="exact")
        or its sampled estimate (kind="mc", the same draws as kfac_factors with the same seed)
        in the basis Qa kron Qb: sum over samples and rows of (Qa^T a~)_i^2 (Qb^T u)_j^2."""
        bases = list(bases)
        if len(bases) != self.num_layers:
            raise ValueError(f"bases: expected one (Qa, Qb) pair per layer ({self.num_layers}), got {len(bases)}")
        checked = []
        for l, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            try:
                Qa, Qb = bases[l]
            except (TypeError, ValueError):
                raise ValueError(f"bases[{l}]: expected a pair (Qa, Qb)") from None
            Qa, Qb = np.asarray(Qa), np.asarray(Qb)
            if Qa.shape != (a + 1, a + 1) or Qb.shape != (b, b):
                raise ValueError(f"bases[{l}]: expected shapes {(a + 1, a + 1)} and {(b, b)}, "
                                 f"got {Qa.shape} and {Qb.shape}")
            checked.append((self._as_float(Qa, f"bases[{l}]"), self._as_float(Qb, f"bases[{l}]")))
        return self._kfac_call(theta, X, Y, kind, seed, mc_samples, reduction, checked, sample_weight)


# A data object (tk.Batches, taylorkern.distributed.ShardedData) in place of X, Y: the one
# place that recognises one (taylorkern/data.py sums the chunks' calls).
from . import data as _data  # noqa: E402

for _kind in _data.SUM_KINDS + _data.ROW_KINDS + ("ggn_factor",):
    setattr(MLP, _kind, _data.accepting(getattr(MLP, _kind), _kind))
MLP._trusted = _data.accepting_trusted(MLP._trusted)
