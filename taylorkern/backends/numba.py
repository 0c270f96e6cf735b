"""The numba backend: the C++ kernels' algorithms as numba-compiled functions.

Used when the compiled module ``taylorkern._core`` is missing (no compiler, a failed build, a
source tree installed without building): no longer plain numpy, still BLAS for every large
product.  The kernels live in ``taylorkern.backends._numba`` (one module per csrc/ file stem)
and follow the same algorithms; this module is the thin adaptor to the backend protocol.

Import and compile cost
    Importing this module imports numba (the probe: the backend is available exactly when
    numba imports) but none of the kernels: ``import taylorkern`` compiles nothing, and when
    the cpp backend is present it does not import numba at all.  The kernels are imported on
    the first call and each compiles on its first call with ``cache=True``: the compiled code
    is written next to the sources (or to numba's user cache directory when that is not
    writable), so a later process loads it instead of compiling.  Each kernel takes the
    network as int64 arrays (widths, activation codes, offsets) and the loss as an integer
    code, and every buffer as a flat 1-D array, so each has exactly one specialisation per
    float dtype; inputs are passed as read-only views so that read-only and writable caller
    arrays share it.

Workspaces
    As the C++ kernels, the numba kernels allocate no per-call scratch: each network keeps a
    pool of flat arenas (one per call in flight), and a kernel carves its tapes and factors
    out of one (_numba/workspace.py).  Freshly allocated multi-megabyte tapes cost more in
    page faults than the whole forward pass.

Threads
    Large products are BLAS calls (scipy's OpenBLAS, the one the cpp backend uses, with its
    own threads) made between the parallel loops, never inside them; the loops over samples
    run on numba's threading layer, so the two pools take turns.  The number of numba threads
    follows ``taylorkern.set_num_threads`` (capped at numba.config.NUMBA_NUM_THREADS).
    Threading layer: unless the user picked one (NUMBA_THREADING_LAYER or
    NUMBA_THREADING_LAYER_PRIORITY, or numba's threads already run), the backend asks for
    TBB, else workqueue, and OpenMP last.  Why not OpenMP (numba's default when TBB is
    absent): (1) its OpenMP layer is the same libgomp as the cpp backend's and, when it
    starts, calls omp_set_num_threads(NUMBA_NUM_THREADS) in the calling thread, which
    silently undoes ``tk.set_num_threads(1)`` for the cpp backend (checked: 1 -> 2); when
    OpenMP is in use anyway, the backend restores the count.  (2) Its idle threads spin in
    libgomp while OpenBLAS's threads want the same cores.  workqueue threads sleep when idle;
    with them, and BLAS kept out of the parallel regions, no thread-count setting is shared
    (timings: bench/RESULTS.md).
    The workqueue layer aborts the process on concurrent use from two threads, so on it calls
    are serialised with a lock; on TBB or OpenMP they run concurrently (the kernels release
    the GIL).

Interruption
    Compiled numba code never looks at signals: a SIGINT waits for the kernel to return.  So
    that a long call stops promptly (as the cpp backend's do, docs/design.md), the entry points
    call the kernels on pieces of samples of bounded work (``_pieces``), and Python raises a
    pending KeyboardInterrupt between them.  Pieces are summed with the sum reduction and scaled
    by 1/N at the end (a rounding apart from one call, the same for every repeat); the full
    matrices and blocks keep their
    accumulators across pieces in a buffer of their own.  A call small enough for one piece is
    one kernel call, as before.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numba as _numba  # noqa: F401  (the availability probe: ImportError -> not available)
import numpy as np

name = "numba"

# csrc/formulas.hpp's codes (_core.ACTIVATION_CODES / LOSS_CODES), kept here because numba runs
# without _core; tests/test_activations.py checks that they agree.
_ACT_CODE = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "softplus": 4, "gelu": 5, "sin": 6}
_LOSS_CODE = {"mse": 0, "ce": 1, "bce": 2, "poisson": 3, "huber": 4, "soft_l1": 5, "gaussian": 6}

_k = None  # the kernel modules, imported on first use
_lock = threading.Lock()
_serialize = True  # calls hold _lock unless the threading layer is thread-safe


def _choose_threading_layer():
    """Prefer numba threading layers that leave OpenMP alone (see the module docstring):
    TBB, then workqueue, then OpenMP, unless the user chose a layer or an order
    (NUMBA_THREADING_LAYER / NUMBA_THREADING_LAYER_PRIORITY, or numba.config) or numba's
    threads already run."""
    from numba.np.ufunc import parallel
    cfg = _numba.config
    if (parallel._is_initialized or cfg.THREADING_LAYER != "default"
            or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ):
        return
    cfg.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]


def _launch_threads():
    """Start numba's threads now, and undo what its OpenMP layer does to the OpenMP thread
    count of this thread (omp_set_num_threads(NUMBA_NUM_THREADS) at launch), which the cpp
    backend shares when both are loaded."""
    from numba.np.ufunc import parallel
    if parallel._is_initialized:
        return
    try:
        from .. import _core
    except ImportError:
        _core = None
    before = _core.get_num_threads() if _core is not None else None
    parallel._launch_threads()
    if _core is not None and _core.get_num_threads() != before:
        _core.set_num_threads(before)


_init_lock = threading.Lock()


def _kernels():
    global _k, _serialize
    if _k is not None:
        return _k
    with _init_lock:
        if _k is None:
            _choose_threading_layer()
            _launch_threads()
            _serialize = _numba.threading_layer() not in ("omp", "tbb")
            from ._numba import curvature, diagonal, forward_backward, jacobian, kfac, rop

            _k = SimpleNamespace(fb=forward_backward, rop=rop, jac=jacobian, curv=curvature,
                                 diag=diagonal, kfac=kfac)
    return _k


def _sync_threads():
    from .. import _threads
    n = max(1, min(int(_threads.get_num_threads()), _numba.config.NUMBA_NUM_THREADS))
    if _numba.get_num_threads() != n:
        _numba.set_num_threads(n)


class _Pool:
    """Workspaces (arena, top) of one network and dtype: one per call in flight, reused
    after it (csrc/bindings.cpp's Lease).  An arena grows to what its last call needed."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.free = []
        self.mu = threading.Lock()

    def take(self):
        with self.mu:
            if self.free:
                return self.free.pop()
        return np.empty(0, self.dtype), np.zeros(1, np.int64)

    def give(self, ws, top):
        if top[0] > ws.size:
            ws = np.empty(int(top[0]), self.dtype)
        with self.mu:
            self.free.append((ws, top))


def _run(pool, fn, *args):
    """fn(*args, ws, top) with a workspace from the pool (fn from _kernels(), which has set
    _serialize)."""
    _sync_threads()
    ws, top = pool.take()
    try:
        if not _serialize:
            return fn(*args, ws, top)
        with _lock:
            return fn(*args, ws, top)
    except SystemError as e:
        # Boxing a kernel's result runs Python code, and with it the handler of a signal that
        # arrived during the kernel; numba then returns the result with that handler's
        # exception set, which Python reports as this SystemError caused by it.
        if isinstance(e.__cause__, KeyboardInterrupt):
            raise e.__cause__ from None
        raise
    finally:
        pool.give(ws, top)


def _ro(a):
    """A flat read-only view (no copy) of a C-contiguous array."""
    v = a.reshape(-1)
    if v.flags.writeable:
        v = v.view()
        v.flags.writeable = False
    return v


_EMPTY = {}


def _empty(dtype):
    e = _EMPTY.get(dtype)
    if e is None:
        e = _EMPTY[dtype] = _ro(np.empty(0, dtype))
    return e


def _net(net):
    """(d, acts, off, loss code, workspace pool) of a network, built once."""
    h = net._handles.get(name)
    if h is None:
        d = np.array(net.sizes, np.int64)
        acts = np.array([_ACT_CODE[a] for a in net.activations], np.int64)
        off = np.array(net.offsets, np.int64)
        h = net._handles[name] = (d, acts, off, _LOSS_CODE[net.loss_name], _Pool(net.dtype))
    return h


def _data(net, theta, X, Y):
    """(d, acts, off, loss, loss_scale, theta, X, N, Y, labels) for a kernel call."""
    d, acts, off, loss, _ = _net(net)
    if loss == 1:
        Yf, labels = _empty(theta.dtype), _ro(Y)
    else:
        Yf, labels = _ro(Y), _empty(np.dtype(np.int64))
    return d, acts, off, loss, float(net.loss_scale), _ro(theta), _ro(X), X.shape[0], Yf, labels


def _pool(net):
    return _net(net)[4]


# Pieces of samples (Interruption, in the module docstring): about _PIECE_WORK multiply-adds
# each by a per-sample estimate, at least _PIECE_MIN samples (the full matrices and blocks:
# their kernel's chunk), so that the products over a piece's samples stay efficient.  The
# pieces depend on the problem's shape only, never on timing, so repeated calls give identical
# results.
_PIECE_WORK = 1 << 26
_PIECE_MIN = 64


def _first_rows(per_sample, least):
    return max(least, _PIECE_WORK // max(int(per_sample), 1))


def _pieces(N, per_sample, least):
    """Consecutive (n0, n1) covering [0, N): as many pieces of equal size (within one sample) as
    hold at least the rows above each."""
    count = max(1, N // _first_rows(per_sample, least))
    return [(N * i // count, N * (i + 1) // count) for i in range(count)]


# An activation's value and derivatives cost about as much as this many multiply-adds: on tiny
# networks they are most of a sample's work, and counting products alone made pieces of
# hundreds of thousands of samples that ran for most of a second between interrupt checks.
_ACT_WORK = 30


def _macs(net):
    """A sample's forward work in multiply-adds, the activations included (_ACT_WORK each)."""
    return sum(a * b for a, b in zip(net.sizes[:-1], net.sizes[1:])) + _ACT_WORK * sum(net.sizes[1:-1])


_NO_WEIGHTS = np.empty(0, np.float64)


def _weights(sample_weight, reduction):
    """(W, reduction) for the kernels: the weights as float64 with "mean" folded in (w / sum w,
    then summed), or an empty W (no weights) and the reduction as it was."""
    if sample_weight is None:
        return _NO_WEIGHTS, reduction
    w = np.asarray(sample_weight, np.float64)
    return (w / w.sum() if reduction == "mean" else np.array(w)), "sum"  # own, writable: one numba type


def _summed(net, theta, X, Y, reduction, per_sample, kernel, *args, sample_weight=None):
    """kernel's result (arrays and floats, or a tuple of them) summed over pieces of samples;
    one call when one piece does."""
    pool = _pool(net)
    W, reduction = _weights(sample_weight, reduction)
    mean = reduction == "mean"
    if X.shape[0] <= _first_rows(per_sample, _PIECE_MIN):
        return _run(pool, kernel, *_data(net, theta, X, Y), mean, W, *args)
    total = None
    for n0, n1 in _pieces(X.shape[0], per_sample, _PIECE_MIN):
        part = _run(pool, kernel, *_data(net, theta, X[n0:n1], Y[n0:n1]), False, W[n0:n1] if W.size else W,
                    *args)
        if total is None:
            total = part
        elif isinstance(part, tuple):
            total = tuple(t + p for t, p in zip(total, part))
        else:
            total += part
    if not mean:
        return total
    s = 1.0 / X.shape[0]
    return tuple(t * s for t in total) if isinstance(total, tuple) else total * s


def predict(net, theta, X):
    d, acts, off, _, pool = _net(net)
    if X.shape[0] <= _first_rows(_macs(net), _PIECE_MIN):
        return _run(pool, _kernels().fb.predict, d, acts, off, _ro(theta), _ro(X), X.shape[0])
    out = np.empty((X.shape[0], net.sizes[-1]), theta.dtype)
    for n0, n1 in _pieces(X.shape[0], _macs(net), _PIECE_MIN):
        out[n0:n1] = _run(pool, _kernels().fb.predict, d, acts, off, _ro(theta), _ro(X[n0:n1]),
                          n1 - n0)
    return out


def loss(net, theta, X, Y, reduction, sample_weight=None):
    return float(_summed(net, theta, X, Y, reduction, _macs(net), _kernels().fb.loss,
                         sample_weight=sample_weight))


def loss_and_grad(net, theta, X, Y, reduction, sample_weight=None):
    value, grad = _summed(net, theta, X, Y, reduction, 3 * _macs(net), _kernels().fb.loss_and_grad,
                          sample_weight=sample_weight)
    return float(value), grad


def _product(gn):
    def call(net, theta, X, Y, V, reduction, sample_weight=None):
        m = V.shape[1]
        out = _summed(net, theta, X, Y, reduction, _macs(net) * (3 + 6 * m), _kernels().rop.rop,
                      _ro(V), m, gn, sample_weight=sample_weight)
        return out.reshape(net.num_params, m)

    call.__name__ = "ggn_vp" if gn else "hvp"
    return call


hvp = _product(False)
ggn_vp = _product(True)


def jacobian(net, theta, X):
    d, acts, off, _, pool = _net(net)
    k, P = net.sizes[-1], net.num_params
    J = np.empty((X.shape[0] * k, P), theta.dtype)
    # writing J costs more per value than a multiply-add
    for n0, n1 in _pieces(X.shape[0], k * (8 * P + _macs(net)), _PIECE_MIN):
        _run(pool, _kernels().jac.jacobian, d, acts, off, _ro(theta), _ro(X[n0:n1]), n1 - n0,
             J[n0 * k:n1 * k].reshape(-1))
    return J


def _accumulated(net, theta, X, Y, reduction, per_sample, kernel, gn, need, size, sample_weight=None):
    """The full matrices' or blocks' kernel over pieces of samples, each at least the kernel's
    chunk (`need` and per_sample / 2 as in its chunk_size), its accumulators (size() values)
    kept from piece to piece in one buffer (the kernel's `acc`)."""
    pool = _pool(net)
    W, reduction = _weights(sample_weight, reduction)
    N = X.shape[0]
    least = _PIECE_MIN
    if N > least:
        least = max(least, int(_kernels().curv.chunk_size(_net(net)[0], N, need, per_sample // 2)))
    if N <= _first_rows(per_sample, least):
        return _run(pool, kernel, *_data(net, theta, X, Y), reduction == "mean", W, gn,
                    _writable_empty(theta.dtype), True, True)
    acc = np.empty(size(), theta.dtype)
    for n0, n1 in _pieces(N, per_sample, least):
        out = _run(pool, kernel, *_data(net, theta, X[n0:n1], Y[n0:n1]), False, W[n0:n1] if W.size else W,
                   gn, acc, n0 == 0,
                   n1 == N)
    if reduction == "mean":
        out *= 1.0 / X.shape[0]
    return out


def _blocks_accumulators(net):
    """Size of curvature_blocks' accumulators: per layer, a packed triangle of each factor."""
    return sum((a + 1) * (a + 2) // 2 * (b * (b + 1) // 2)
               for a, b in zip(net.sizes[:-1], net.sizes[1:]))


_WRITABLE_EMPTY = {}


def _writable_empty(dtype):
    e = _WRITABLE_EMPTY.get(dtype)
    if e is None:
        e = _WRITABLE_EMPTY[dtype] = np.empty(0, dtype)
    return e


def _full(gn):
    def call(net, theta, X, Y, reduction, sample_weight=None):
        curv = _kernels().curv
        return _accumulated(net, theta, X, Y, reduction, net.num_params ** 2, curv.curvature_full,
                            gn, curv.NEED_FULL, lambda: curv.full_accumulators(_net(net)[0], gn)[-1],
                            sample_weight)

    call.__name__ = "ggn" if gn else "hessian"
    return call


def _blocks(gn):
    def call(net, theta, X, Y, reduction, sample_weight=None):
        flat = _accumulated(net, theta, X, Y, reduction, sum(p * p for p in net.layer_sizes),
                            _kernels().curv.curvature_blocks, gn, _kernels().curv.NEED_BLOCKS,
                            lambda: _blocks_accumulators(net), sample_weight)
        out, o = [], 0
        for p in net.layer_sizes:
            out.append(flat[o:o + p * p].reshape(p, p))
            o += p * p
        return out

    call.__name__ = "ggn_blocks" if gn else "hessian_blocks"
    return call


def _diag(gn):
    def call(net, theta, X, Y, reduction, sample_weight=None):
        k, L = net.sizes[-1], len(net.sizes) - 1
        work = _macs(net) * (4 + k) + net.num_params
        if not gn and L >= 4:  # the Hessian's curvature of hidden units as matrices
            work += 8 * sum(h ** 3 for h in net.sizes[1:-1])
        return _summed(net, theta, X, Y, reduction, work, _kernels().diag.curvature_diag, gn,
                       sample_weight=sample_weight)

    call.__name__ = "ggn_diag" if gn else "hessian_diag"
    return call


hessian, ggn = _full(False), _full(True)
hessian_blocks, ggn_blocks = _blocks(False), _blocks(True)
hessian_diag, ggn_diag = _diag(False), _diag(True)


# K-FAC's factors and EKFAC's eigenvalues (_numba/kfac.py, csrc/kfac.cpp's algorithm).  A chunk
# of samples holds about this many values of tape and rows (_numba/kfac.py, chunk_rows).
_KFAC_CHUNK = 1 << 18


def kfac_factors(net, theta, X, Y, reduction, noise=None, bases=None, sample_weight=None, input_factor=True):
    """K-FAC's factors [(A_l, B_l)], or with ``bases`` EKFAC's eigenvalues, in one pass over the
    samples: one kernel call, or one per piece of samples (Interruption, each at least a chunk)
    adding to the same accumulators, the sample weights those of the whole data."""
    W, reduction = _weights(sample_weight, reduction)
    kern = _kernels().kfac
    d, L, k, N = _net(net)[0], net.num_layers, net.sizes[-1], X.shape[0]
    dt = theta.dtype
    if noise is None:
        M, r = 0, k
    else:
        noise = np.ascontiguousarray(noise, dt)
        M = r = noise.shape[1]
    per_sample = _macs(net) * (1 + r) + sum((a + 1) * (a + 1) // 2 + r * b * b // 2
                                            for a, b in zip(net.sizes[:-1], net.sizes[1:]))
    C = int(kern.chunk_rows(d, r, _KFAC_CHUNK))
    # pieces of at least a chunk, where that is at most 8 pieces' work: wide layers ask for tall
    # chunks (4 S / values per sample), which would otherwise delay a Ctrl-C by seconds
    least = max(_PIECE_MIN, min(C, 8 * _first_rows(per_sample, _PIECE_MIN)))
    pieces = [(0, N)] if N <= _first_rows(per_sample, least) else _pieces(N, per_sample, least)
    s = 1.0 / N if reduction == "mean" else 1.0
    offs = kern.accumulators(d, bases is not None)
    acc = np.empty(int(offs[-1]), dt)
    if bases is None:  # A's divisor: the samples, or the sum of their weights
        fn, extra = kern.kfac_factors, (1.0 / (float(W.sum()) if W.size else N),)
        tail = ()
    else:
        Qa = [np.ascontiguousarray(q, dt).ravel() for q, _ in bases]
        Qb = [np.ascontiguousarray(q, dt).ravel() for _, q in bases]
        qao = np.cumsum([0] + [q.size for q in Qa[:-1]]).astype(np.int64)
        qbo = np.cumsum([0] + [q.size for q in Qb[:-1]]).astype(np.int64)
        fn, extra = kern.kfac_eigen_scales, ()
        tail = (_ro(np.concatenate(Qa)), qao, _ro(np.concatenate(Qb)), qbo)
    for n0, n1 in pieces:
        nz = _empty(dt) if noise is None else _ro(noise[n0:n1])
        _run(_pool(net), fn, *_data(net, theta, X[n0:n1], Y[n0:n1]), s, W[n0:n1] if W.size else W, *extra, nz, M, C,
             *tail, acc, n0 == 0,
             *((n1 == N, bool(input_factor)) if bases is None else ()))
    out = acc  # the result: a view of it per factor
    if bases is not None:
        return [out[offs[2 * l]:offs[2 * l + 1]].reshape(net.sizes[l] + 1, net.sizes[l + 1]) for l in range(L)]
    A = [out[offs[2 * l]:offs[2 * l + 1]].reshape(net.sizes[l] + 1, net.sizes[l] + 1) for l in range(L)]
    B = [out[offs[2 * l + 1]:offs[2 * l + 2]].reshape(net.sizes[l + 1], net.sizes[l + 1]) for l in range(L)]
    if not input_factor:
        A[0] = None
    return list(zip(A, B))
