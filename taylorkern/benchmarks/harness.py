"""What ``bench/`` and ``python -m taylorkern bench`` share: the implementations to time, one
benchmark case each (set up, checked against the reference, with its FLOP count), the
timing plan, and the machine's description.

Implementations are named ``taylorkern-<backend>`` for every backend present
(``tk.available_backends()``) and by the peer's name for every peer installed
(:mod:`.peers`).  Every result is checked before anything is timed against the float64
reference backend run on the same data (float32 problems: their data cast up), as
``max|a - b| / max|b|`` within :data:`TOL`.  Full matrices, blocks and diagonals are checked
through reference products, which stay cheap at any P: ``M @ V[:, :4]``; each block against
the product with V[:, :4] restricted to that layer; the diagonal at up to 64 indices spread
over P against products with unit vectors.

The reference backend itself forms its full matrices from products with the identity
(its Hessian) or an einsum over the Jacobian (its GGN): at P in the thousands, minutes.  Past
:data:`DIRECT_MAX_P` parameters its ``ggn``/``hessian`` cases time products with the first
:data:`SLAB` columns of the identity and scale the time by P / SLAB (stated in the case's
note); its blocks and diagonals, which it slices out of the same full matrix, are skipped there.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np

import taylorkern as tk

from . import flops as _flops
from .problems import Problem

try:  # the peers are optional (pip install "taylorkern[bench]")
    from . import peers
except ImportError:  # pragma: no cover - only while the module is missing
    peers = None

TOL = {"float64": 1e-10, "float32": 1e-4}  # max|a-b|/max|b| against the float64 reference
DTYPES = ("float64", "float32")
MAX_RESULT_BYTES = 2e9  # a case whose result would be larger is skipped (for every implementation)
SLAB = 64               # identity columns the reference's full matrices are timed on ...
DIRECT_MAX_P = 256      # ... past this many parameters (below, it runs whole)
FULL = ("ggn", "hessian")
MATRICES = FULL + ("ggn_blocks", "hessian_blocks", "ggn_diag", "hessian_diag")  # the reference forms H or G
PRODUCT = {"ggn": "ggn_vp", "hessian": "hvp"}  # the matrix-free product of each matrix
PEER_DISTRIBUTIONS = ("torch", "jax", "jaxlib", "backpack-for-pytorch", "curvlinops-for-pytorch")
INSTALL_PEERS = 'pip install "taylorkern[bench]"'


class Skip(Exception):
    """A case that is not run, with the reason; ``not_offered``: the implementation lacks the quantity."""

    def __init__(self, reason, not_offered=False):
        super().__init__(reason)
        self.not_offered = not_offered


def relerr(a, b):
    """max|a - b| / max|b| (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} where {b.shape} was expected")
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if a.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def _kind(quantity):
    return "ggn" if quantity.startswith("ggn") else "hessian"


def result_bytes(problem, quantity):
    """Bytes of the dense result of ``quantity`` (0 for vectors)."""
    P, item = problem.P, problem.dtype.itemsize
    if quantity in FULL:
        return P * P * item
    if quantity.endswith("_blocks"):
        return sum(n * n for n in problem.net.layer_sizes) * item
    if quantity == "jacobian":
        return problem.N * problem.sizes[-1] * P * item
    return 0


def _gb(n):
    return f"{n / 1e9:.1f} GB"


# ------------------------------------------------------------------------------- the oracle
class Reference:
    """The float64 reference backend on one problem's data; checks results of any dtype."""

    def __init__(self, problem):
        p = problem
        self.problem = p
        self.net = tk.MLP(p.sizes, activation=p.activation, loss=p.loss, dtype=np.float64)
        f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
        self.theta, self.X, self.v, self.V = f64(p.theta), f64(p.X), f64(p.v), f64(p.V)
        self.Y = f64(p.Y) if p.loss == "mse" else p.Y
        self.V4 = self.V[:, :4]
        self._cache = {}

    def _call(self, name, *args):
        key = (name,) + tuple(id(a) for a in args)
        if key not in self._cache:
            with tk.use_backend("reference"):
                fn = getattr(self.net, name)
                self._cache[key] = fn(self.theta, self.X, *args) if name == "jacobian" else \
                    fn(self.theta, self.X, self.Y, *args)
        return self._cache[key]

    @functools.cached_property
    def _layer_V(self):
        """(P, 4L): V[:, :4] restricted to each layer in turn (zero elsewhere)."""
        net, L = self.net, self.net.num_layers
        out = np.zeros((net.num_params, 4 * L))
        for l in range(L):
            s = slice(net.offsets[l], net.offsets[l + 1])
            out[s, 4 * l:4 * l + 4] = self.V4[s]
        return out

    @functools.cached_property
    def _diag_probe(self):
        """(indices, unit columns): up to 64 indices spread over P, first and last included."""
        P = self.net.num_params
        idx = np.unique(np.linspace(0, P - 1, min(P, 64)).round().astype(int))
        E = np.zeros((P, idx.size))
        E[idx, np.arange(idx.size)] = 1.0
        return idx, E

    def error(self, quantity, got):
        """Relative error of ``got`` (taylorkern's layout) for ``quantity``."""
        if quantity == "loss_and_grad":
            loss, grad = self._call("loss_and_grad")
            return max(relerr(got[0], loss), relerr(got[1], grad))
        if quantity in ("hvp", "ggn_vp"):
            return relerr(got, self._call(quantity, self.v))
        if quantity == "hvp_V32":
            return relerr(got, self._call("hvp", self.V))
        if quantity == "jacobian":
            return relerr(got, self._call("jacobian"))
        product = PRODUCT[_kind(quantity)]
        if quantity in FULL:
            return relerr(np.asarray(got, np.float64) @ self.V4, self._call(product, self.V4))
        if quantity.endswith("_blocks"):
            want, net = self._call(product, self._layer_V), self.net
            if len(got) != net.num_layers:
                raise AssertionError(f"{len(got)} blocks where {net.num_layers} were expected")
            return max(relerr(np.asarray(B, np.float64) @ self.V4[s], want[s, 4 * l:4 * l + 4])
                       for l, (B, s) in enumerate(zip(got, (slice(a, b) for a, b in
                                                           zip(net.offsets[:-1], net.offsets[1:])))))
        idx, E = self._diag_probe
        want = self._call(product, E)[idx, np.arange(idx.size)]
        return relerr(np.asarray(got)[idx], want)

    def slab_error(self, quantity, slab):
        """Error of ``slab`` = M[:, :S] (the product with S identity columns): M[:S] V vs (M V)[:S]."""
        S = slab.shape[1]
        want = self._call(PRODUCT[quantity], self.V4)[:S]
        return relerr(np.asarray(slab, np.float64).T @ self.V4, want)


# ------------------------------------------------------------------------------- the cases
def peer_names():
    return list(peers.PEERS) if peers is not None else []


def available_peers():
    return peers.available_peers() if peers is not None else []


def unavailable_peers():
    """{peer: reason} for every peer that cannot run here."""
    if peers is None:
        return {"all": "taylorkern.benchmarks.peers is missing"}
    return {p: peers.why_unavailable(p) for p in peers.PEERS if peers.why_unavailable(p)}


def implementations(with_peers=True):
    """``taylorkern-<backend>`` for every backend present, then every peer installed."""
    return [f"taylorkern-{b}" for b in tk.available_backends()] + (available_peers() if with_peers else [])


def taylorkern_impl():
    return f"taylorkern-{tk.backend()}"


@dataclass
class Case:
    """One implementation computing one quantity on one problem.

    ``fn`` runs inside ``context()``; ``numpy(result)`` puts its result in taylorkern's layout;
    ``check(numpy result)`` is its error against the reference; times scale by ``scale``
    (the reference's slabs)."""

    problem: Problem
    impl: str
    quantity: str
    fn: object
    numpy: object
    check: object
    context: object = contextlib.nullcontext
    scale: float = 1.0
    note: str = ""
    flops: float = field(init=False)

    def __post_init__(self):
        p = self.problem
        self.flops = float(_flops.flops(self.quantity, p.sizes, p.N, p.loss, activation=p.activation))

    @property
    def tolerance(self):
        return TOL[self.problem.dtype.name]

    @property
    def group(self):
        return f"{self.problem.name} {self.quantity} {self.problem.dtype.name}"


class Cases:
    """Builds :class:`Case` objects, caching problems, oracles and prepared peers per session.

    ``slab``: identity columns the reference's full matrices are timed on past
    :data:`DIRECT_MAX_P` parameters; ``quantities``: the only ones peers are prepared for
    (default all)."""

    def __init__(self, slab=SLAB, quantities=None):
        self.slab, self.quantities = slab, quantities
        self._problems, self._refs, self._prepared = {}, {}, {}

    def problem(self, config, dtype):
        key = (config, np.dtype(dtype).name)
        if key not in self._problems:
            self._problems[key] = Problem(config, dtype)
        return self._problems[key]

    def reference(self, problem):
        key = (problem.name, problem.dtype.name)
        if key not in self._refs:
            self._refs[key] = Reference(problem)
        return self._refs[key]

    def prepared(self, peer, problem):
        """peers.prepare, once per peer and problem (a failure is raised again on each use)."""
        key = (peer, problem.name, problem.dtype.name)
        if key not in self._prepared:
            try:
                self._prepared[key] = peers.prepare(peer, problem, self.quantities)
            except Exception as exc:
                self._prepared[key] = exc
        if isinstance(self._prepared[key], Exception):
            raise self._prepared[key]
        return self._prepared[key]

    def case(self, config, dtype, impl, quantity):
        """The :class:`Case`, or :class:`Skip` with the reason it is not run."""
        p = self.problem(config, dtype)
        size = result_bytes(p, quantity)
        if size > MAX_RESULT_BYTES:
            shape = (f"{p.N * p.sizes[-1]:,} x {p.P:,}" if quantity == "jacobian" else
                     f"{p.P:,} x {p.P:,}" if quantity in FULL else
                     "blocks of " + " + ".join(f"{n:,}^2" for n in p.net.layer_sizes))
            raise Skip(f"{quantity} ({shape} {p.dtype.name}) would take {_gb(size)} "
                       f"> {_gb(MAX_RESULT_BYTES)}")
        ref = self.reference(p)
        if impl.startswith("taylorkern-"):
            backend = impl.split("-", 1)[1]
            ctx = functools.partial(tk.use_backend, backend)
            S = self.slab
            if backend == "reference" and p.P > DIRECT_MAX_P and quantity in MATRICES:
                if quantity not in FULL:
                    raise Skip(f"the reference slices blocks and diagonals out of its full {p.P:,} x {p.P:,} "
                               "matrix: see its ggn/hessian case for the cost")
                E = np.eye(p.P, S, dtype=p.dtype)
                product = getattr(p.net, PRODUCT[quantity])
                return Case(p, impl, quantity, lambda: product(p.theta, p.X, p.Y, E), np.asarray,
                            functools.partial(ref.slab_error, quantity), ctx, scale=p.P / S,
                            note=f"estimated: {PRODUCT[quantity]} with {S} of the {p.P:,} columns of "
                                 f"the identity, time x {p.P / S:.1f}")
            return Case(p, impl, quantity, p.call(quantity), lambda r: r,
                        functools.partial(ref.error, quantity), ctx)
        if peers is None or impl not in peers.PEERS:
            raise ValueError(f"implementation: unknown {impl!r}; expected taylorkern-<backend> or one of "
                             f"{peer_names()}")
        why = peers.why_unavailable(impl)
        if why:
            raise Skip(f"{impl}: {why}")
        prep = self.prepared(impl, p)
        if quantity not in prep.calls:
            if quantity in prep.skipped:
                raise Skip(f"{impl}: {prep.skipped[quantity]}")
            raise Skip(f"{impl} does not offer {quantity}", not_offered=True)
        return Case(p, impl, quantity, prep.calls[quantity], functools.partial(prep.numpy, quantity),
                    functools.partial(ref.error, quantity), note=prep.notes.get(quantity, ""))


# ------------------------------------------------------------------------------- timing
def first_call(case):
    """Run ``case`` once (untimed warm-up for what follows), check it, and return
    (seconds, error).  Raises AssertionError on a mismatch."""
    with case.context():
        t0 = time.perf_counter()
        result = case.fn()
        seconds = time.perf_counter() - t0
    err = case.check(case.numpy(result))
    if not err <= case.tolerance:
        raise AssertionError(f"{case.impl} {case.group}: error {err:.3g} against the reference "
                             f"> tolerance {case.tolerance:g}")
    return seconds, err


# Idle worker threads of other libraries keep spinning after their last call (OpenBLAS's for
# 2^28 cycles; libgomp's and XLA's for less) and take the cores from whatever runs next, which
# then times slow (bench/RESULTS.md).  Every measurement waits them out first.
SETTLE_S = 0.25


def settle():
    """Let other libraries' spinning idle threads go to sleep before a measurement."""
    time.sleep(SETTLE_S)


def timed_once(case, first, budget):
    """Whether a case's checked first call (``first`` seconds) stands as its only timing: the
    reference's estimates, and calls longer than ``budget`` except taylorkern's compiled ones
    (whose first call on a problem also sizes their workspaces)."""
    compiled = case.impl.startswith("taylorkern-") and case.impl != "taylorkern-reference"
    return case.scale != 1.0 or (first >= budget and not compiled)


def plan(seconds, budget, min_round=1e-3, max_rounds=200):
    """(rounds, iterations) so that rounds of ``iterations`` calls of ``seconds`` each fit in
    ``budget`` seconds: each round lasts at least ``min_round`` (many iterations for calls of
    microseconds), at least one round, at most ``max_rounds``."""
    seconds = max(seconds, 1e-9)
    iterations = max(1, int(min_round / seconds))
    rounds = int(budget / (seconds * iterations))
    return max(1, min(max_rounds, rounds)), iterations


def measure(case, budget):
    """Time ``case`` (already warmed up by :func:`first_call`) within about ``budget`` seconds:
    returns per-call seconds of each round, times ``case.scale``."""
    with case.context():
        settle()
        t0 = time.perf_counter()
        case.fn()
        one = time.perf_counter() - t0
        if one >= budget / 2:
            return [one * case.scale]
        rounds, iterations = plan(one, budget - one)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(iterations):
                case.fn()
            times.append((time.perf_counter() - t0) / iterations * case.scale)
    return times


def rates(case, seconds):
    """gflops and fractions of both GEMM ceilings for ``seconds`` per call of ``case``."""
    dt = case.problem.dtype.name
    c, c0 = _flops.gemm_ceiling(dt), _flops.gemm_ceiling_without_coretype(dt)
    g = case.flops / seconds / 1e9
    return {"flops": case.flops, "gflops": g, "ceiling_gflops": c, "fraction_of_ceiling": g / c,
            "ceiling_without_coretype_gflops": c0, "fraction_of_ceiling_without_coretype": g / c0}


# ------------------------------------------------------------------------------- the machine
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(with_peers=True):
    """The machine, the thread pins and every relevant version, as a JSON-able dict (with
    ``with_peers``, whether each peer can run here: that imports torch and jax)."""
    try:
        from threadpoolctl import threadpool_info
        pools = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
                 for p in threadpool_info()]
    except Exception as exc:  # pragma: no cover - informational only
        pools = [{"error": str(exc)}]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "TAYLORKERN_BENCH_THREADS", "OMP_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                          "XLA_FLAGS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "cores_allowed": affinity,
        "platform": platform.platform(), "python": platform.python_version(),
        "taylorkern": tk.__version__, "backends": tk.available_backends(), "active_backend": tk.backend(),
        "kernel_threads": tk.get_num_threads(), "environment": env, "blas": pools,
        "versions": {d: _version(d) for d in ("numpy", "scipy", "numba", "threadpoolctl",
                                             *PEER_DISTRIBUTIONS)},
        "peers": ({p: (peers.why_unavailable(p) or "available") for p in peer_names()} if with_peers
                  else "not timed"),
    }
