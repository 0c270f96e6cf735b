"""The FLOP model of every benchmark quantity, and the machine's GEMM ceiling.

:func:`flops` counts the USEFUL work of a quantity as the matrix products of the algorithm
in docs/curvature.md (the one csrc/ implements; its cost in §12), a multiply-add counting 2 FLOPs.  It is a
model of what must be computed, not of what an implementation does: workspace copies,
index permutations, elementwise activations, bias additions and the implementation's own
redundancy are not counted, nor are lower-order per-sample chains (the cross-layer factors
B_{m,l} and M^{(l,m)} of the full matrices, O(N sum d^3)).  An implementation doing more
work (a Hessian as P Hessian-vector products, ~12 N P^2 FLOPs) therefore shows a low
achieved rate: "GFLOP/s" is model FLOPs per second of the quantity, comparable across
implementations.

Notation: layers l = 1..L, widths d_0..d_L, k = d_L outputs, w_l = d_{l-1} d_l weights,
P_l = (d_{l-1}+1) d_l parameters of layer l ([W_l; b_l]), P = sum P_l, N samples,
T(n) = n(n+1)/2 (a symmetric n x n matrix's distinct entries).  Counted:

* forward      2N sum_l w_l                      (z_l = a_{l-1} W_l)
* adjoints     2N sum_{l>=2} w_l                 (e_{l-1} = g_l W_l^T)
* weight grads 2N sum_l w_l                      (a_{l-1}^T g_l)
* loss_and_grad = forward + adjoints + weight grads.
* R-op with m directions (hvp, hvp_V32: m = 32; ggn_vp): tangents Rz_l = Ra_{l-1} W_l +
  a_{l-1} VW_l (one product for l = 1, two after), 2Nm(2 sum w - w_1); backward for the GGN
  a^T Rg and Rg W^T, 2Nm(2 sum w - w_1); the Hessian adds Ra^T g and g VW^T,
  2Nm(2 sum w - 2 w_1).  ce adds the dense k x k output curvature, 2Nmk^2.  Plus the forward
  (and, for the Hessian, the adjoints that give g).
* jacobian: forward, k rows backpropagated per sample (2Nk sum_{l>=2} w_l), and one multiply
  per entry of the N k x P result (it is a memory-bound fill).
* curvature factors per sample: Hessian, Q_{l-1} = D W_l Q_l W_l^T D from Q_L = H_out,
  2N sum_{l>=2} w_l (d_{l-1} + d_l), on top of forward + adjoints; GGN, U_{l-1} = U_l W_l^T D
  (k rows) and Q_l = U_l^T U_l, 2Nk sum_{l>=2} w_l + 2Nk sum_{l<L} T(d_l), on top of the
  forward.
* Kronecker products over samples: diagonal block l with the symmetry of both factors,
  2N T(d_{l-1}+1) T(d_l); off-diagonal block l < m, 2N P_l P_m; the Hessian's bilinear
  cross term, 2N P_l w_m for l < m - 1 and 2N P_l d_m for m = l + 1 (where B_{l,l} = I).
  Full matrix = all of them (the upper triangle: ~N P^2 FLOPs); blocks = the diagonal ones.
* diagonals (csrc/diagonal.cpp): one product (a~_l^2)^T q_l per layer, 2N P, with
  q_l = diag Q_l split as column sums of U_l^2 (the GGN part: U backpropagated, 2Nk sum_l d_l
  for the sums) plus, for the Hessian with a curved activation, diag S_l of the activation
  curvature S_{l-1} = D W_l S_l W_l^T D + diag(e act''): 2N w_l per step while S_l is
  diagonal (up to two hidden layers), 2N w_l (d_{l-1} + d_l) per step as matrices below.

:func:`gemm_ceiling` measures dgemm/sgemm of scipy.linalg.blas -- the OpenBLAS the compiled
kernels link -- in this process, with its thread pins; :func:`gemm_ceiling_without_coretype`
measures the same in a subprocess whose environment lacks OPENBLAS_CORETYPE (a machine may
set it to pin an older, slower kernel; it is never changed here).  Kernels with a GEMM of
their own (csrc/gemm_avx512.hpp) are not bound by the first: their fraction of it can pass 1.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

from .problems import QUANTITIES


def _tri(n):
    return n * (n + 1) // 2


def flops(quantity, sizes, N, loss, m=32, activation="tanh"):
    """Model FLOPs of ``quantity`` (one of problems.QUANTITIES) for an MLP ``sizes`` on N samples.

    ``m`` is the number of directions of "hvp_V32" (hvp and ggn_vp have one); ``activation``
    only matters to hessian_diag (relu and identity have no activation curvature)."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity: unknown {quantity!r}; expected one of {QUANTITIES}")
    # all but ce: a diagonal H_out, or gaussian's 2 x 2 per (mean, log-variance) pair, O(k) per sample
    if loss not in ("mse", "ce", "bce", "poisson", "huber", "soft_l1", "gaussian"):
        raise ValueError(f"loss: expected one of mse, ce, bce, poisson, huber, soft_l1, gaussian, got {loss!r}")
    d = [int(s) for s in sizes]
    L, k = len(d) - 1, d[-1]
    w = [d[l - 1] * d[l] for l in range(1, L + 1)]           # w[l-1] = w_l
    Pl = [(d[l - 1] + 1) * d[l] for l in range(1, L + 1)]
    sw, sw2 = sum(w), sum(w[1:])                             # sum_l w_l, sum_{l>=2} w_l
    forward, adjoints, wgrad = 2 * N * sw, 2 * N * sw2, 2 * N * sw

    def rop(m, hessian):
        head = 2 * N * m * k * k if loss == "ce" else 0
        tangents = 2 * N * m * (2 * sw - w[0])
        back = 2 * N * m * (2 * sw - w[0])           # a^T Rg, Rg W^T
        if hessian:
            back += 2 * N * m * (2 * sw - 2 * w[0])  # Ra^T g, g VW^T
        return forward + (adjoints if hessian else 0) + head + tangents + back

    def factors(hessian):
        if hessian:  # Q recursion from Q_L = H_out
            return forward + adjoints + 2 * N * sum(w[l - 1] * (d[l - 1] + d[l]) for l in range(2, L + 1))
        return forward + 2 * N * k * sw2 + 2 * N * k * sum(_tri(d[l]) for l in range(1, L))

    diag_kron = sum(2 * N * _tri(d[l - 1] + 1) * _tri(d[l]) for l in range(1, L + 1))
    if quantity == "loss_and_grad":
        return forward + adjoints + wgrad
    if quantity in ("hvp", "hvp_V32"):
        return rop(1 if quantity == "hvp" else m, hessian=True)
    if quantity == "ggn_vp":
        return rop(1, hessian=False)
    if quantity == "jacobian":
        return forward + 2 * N * k * sw2 + N * k * sum(Pl)
    hessian = quantity.startswith("hessian")
    if quantity in ("ggn", "hessian"):
        off = sum(2 * N * Pl[a] * Pl[b] for a in range(L) for b in range(a + 1, L))
        cross = sum(2 * N * Pl[a] * (d[b + 1] if b == a + 1 else w[b])  # B_{l,l} = I: a delta
                    for a in range(L) for b in range(a + 1, L)) if hessian else 0
        return factors(hessian) + diag_kron + off + cross
    if quantity.endswith("_blocks"):
        return factors(hessian) + diag_kron
    # diagonals: GGN rows U (backpropagated) and their column sums, then (a~^2)^T q per layer
    out = forward + 2 * N * k * sw2 + 2 * N * k * sum(d[1:]) + 2 * N * sum(Pl)
    acts = [activation] if isinstance(activation, str) else list(activation)
    if hessian and any(a not in ("relu", "identity") for a in acts):
        out += adjoints  # e, for the activation curvature e * act''
        for l in range(L - 1, 1, -1):  # S_{l-1} from S_l, S_{L-1} = diag(c_{L-1})
            out += 2 * N * w[l - 1] * (1 if l == L - 1 == 2 else d[l - 1] + d[l])
    return out


# ------------------------------------------------------------------------------ the ceiling
# n x n GEMMs (17 GFLOP each at 2048: well past the sizes where packing and thread start-up
# show), at least CEILING_REPEATS calls and CEILING_SECONDS of them (a busy machine has quiet
# moments); TAYLORKERN_CEILING_N / _SECONDS make quick runs (the CLI's tests) cheaper, and their
# ceiling lower
CEILING_N = int(os.environ.get("TAYLORKERN_CEILING_N", "2048"))
CEILING_SECONDS = float(os.environ.get("TAYLORKERN_CEILING_SECONDS", "1.0"))
CEILING_REPEATS = 5


def _gemm_gflops(dtype, n, repeats):
    """Best GFLOP/s of C = A B on n x n matrices over at least ``repeats`` timed calls (and at
    least CEILING_SECONDS of them) after one warm-up."""
    from scipy.linalg import blas

    dtype = np.dtype(dtype)
    gemm = {np.dtype(np.float64): blas.dgemm, np.dtype(np.float32): blas.sgemm}[dtype]
    rng = np.random.default_rng(0)
    A = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    B = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    C = np.zeros((n, n), dtype, order="F")
    gemm(1.0, A, B, 0.0, C, overwrite_c=1)
    best, start, calls = np.inf, time.perf_counter(), 0
    while calls < repeats or time.perf_counter() - start < CEILING_SECONDS:
        t0 = time.perf_counter()
        gemm(1.0, A, B, 0.0, C, overwrite_c=1)
        best, calls = min(best, time.perf_counter() - t0), calls + 1
    return 2.0 * n ** 3 / best / 1e9


def gemm_ceiling(dtype=np.float64, n=CEILING_N, repeats=CEILING_REPEATS):
    """GFLOP/s of scipy's dgemm (float64) or sgemm (float32) on n x n matrices, the best call of
    ``repeats`` or more, measured once per process with its current thread pins and environment."""
    return _in_process(np.dtype(dtype).name, int(n), int(repeats))


def gemm_ceiling_without_coretype(dtype=np.float64, n=CEILING_N, repeats=CEILING_REPEATS):
    """:func:`gemm_ceiling` in a subprocess whose environment lacks OPENBLAS_CORETYPE (the
    same thread pins otherwise).  Without the variable set this is :func:`gemm_ceiling`."""
    if "OPENBLAS_CORETYPE" not in os.environ:
        return gemm_ceiling(dtype, n, repeats)
    return _in_subprocess(np.dtype(dtype).name, int(n), int(repeats))


@functools.cache
def _in_process(dtype, n, repeats):
    return _gemm_gflops(dtype, n, repeats)


@functools.cache
def _in_subprocess(dtype, n, repeats):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    code = ("import json, sys; from taylorkern.benchmarks.flops import _gemm_gflops; "
            "print(json.dumps(_gemm_gflops(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", code, dtype, str(n), str(repeats)],
                       env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"the GEMM ceiling without OPENBLAS_CORETYPE failed:\n{r.stderr}")
    return float(json.loads(r.stdout.strip().splitlines()[-1]))


def ceilings(dtypes=("float64", "float32"), fresh=False):
    """{dtype: {"gflops": in this process, "gflops_without_coretype": ..., "kernel", "n", ...}}:
    the session's cached measurement, or with ``fresh`` a new one (on a shared machine the
    ceiling moves with the load: a run can record it at its start and at its end)."""
    out = {}
    for dt in dtypes:
        name = np.dtype(dt).name
        if fresh:
            here = _gemm_gflops(name, CEILING_N, CEILING_REPEATS)
            without = (_in_subprocess.__wrapped__(name, CEILING_N, CEILING_REPEATS)
                       if "OPENBLAS_CORETYPE" in os.environ else here)
        else:
            here, without = gemm_ceiling(name), gemm_ceiling_without_coretype(name)
        out[name] = {"kernel": "dgemm" if name == "float64" else "sgemm", "n": CEILING_N, "gflops": here,
                     "gflops_without_coretype": without,
                     "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}
    return out
