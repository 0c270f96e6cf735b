"""Diagonals of H and G (csrc/diagonal.cpp, same algorithm): only the diagonal blocks touch
the diagonal, and there the Kronecker structure gives
  diag[(l, i, j)] = sum_n a~_l[n, i]^2 Q_l[n, j, j]
i.e. ONE matrix product (a~_l^2)^T q_l per layer, with q_l[n, j] = Q_l[n, j, j].  For the
GGN, Q_l = U_l^T U_l, so q_l = column sums of U_l^2 (no d x d matrix at all); for the Hessian
the Q_l come from the backward recursion of curvature.py.  Chunked over samples like the full
matrices; products in BLAS, the rest prange over samples."""

from __future__ import annotations

import numpy as np
from numba import prange

from .blas import gemm
from .common import CHUNKS, kernel, parallel_kernel, threaded
from .curvature import NEED_BLOCKS, NEED_DIAG, alloc_factors, chunk_factors, chunk_size, curvature_tape
from .workspace import carve


@kernel
def _q_ones(lo, hi, k, H, gn, U, uo, Q, qo, q):
    for n in range(lo, hi):
        if gn:
            for j in range(H):
                q[n * H + j] = 0
            for r in range(k):
                u = uo + (n * k + r) * H
                for j in range(H):
                    q[n * H + j] += U[u + j] * U[u + j]
        else:
            for j in range(H):
                q[n * H + j] = Q[qo + (n * H + j) * H + j]


@parallel_kernel
def _diag_q(c, k, H, gn, U, uo, Q, qo, q):
    """q[n, j] = Q_l[n, j, j] (for the GGN: sum_r U_l[n, r, j]^2)."""
    if threaded(c * H * k):
        nch = min(c, CHUNKS)
        for ch in prange(nch):
            _q_ones(np.int64(ch) * c // nch, (np.int64(ch) + 1) * c // nch, k, H, gn, U, uo, Q, qo, q)
    else:
        _q_ones(np.int64(0), c, k, H, gn, U, uo, Q, qo, q)


@kernel
def curvature_diag(d, acts, off, lossc, theta, X, N, Y, labels, mean, gn, ws, top):
    """(P,): diag(H) (gn False) or diag(G) (gn True), data term."""
    L = d.size - 1
    k = d[L]
    A, D1, D2, o, G, E, Pm = curvature_tape(d, acts, off, lossc, theta, X, N, Y, labels, mean, gn,
                                            ws, top)
    dt = theta.dtype
    out = np.zeros(off[L], dt)
    need = np.int64(NEED_DIAG if gn else NEED_BLOCKS)
    C = chunk_size(d, N, need)
    Q, qo, U, uo, Tm, tmo, S, so, y, yt, B = alloc_factors(d, C, gn, need, ws, top)
    dmax = 0
    for l in range(L + 1):
        dmax = max(dmax, d[l])
    Asq = carve(ws, top, C * (dmax + 1))
    q = carve(ws, top, C * dmax)
    for n0 in range(0, N, C):
        c = min(C, N - n0)
        chunk_factors(d, off, lossc, theta, o, D1, D2, E, Pm, N, mean, gn, need, n0, c,
                      Q, qo, U, uo, Tm, tmo, S, so, y, yt, B)
        for l in range(L):
            di, H = d[l], d[l + 1]
            Da = di + 1
            for n in range(c):
                for i in range(di):
                    a = X[(n0 + n) * di + i] if l == 0 else A[o[l] + (n0 + n) * di + i]
                    Asq[n * Da + i] = a * a
                Asq[n * Da + di] = 1
            _diag_q(c, k, H, gn, U, uo[l], Q, qo[l], q)
            gemm(True, False, Da, H, c, 1.0, Asq, 0, Da, q, 0, H, 1.0, out, off[l], H)
    return out
