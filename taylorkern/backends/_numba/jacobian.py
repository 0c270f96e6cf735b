"""J[(n, c), (l, i, j)] = a~_l[n, i] * U_l[n, c, j] (csrc/jacobian.cpp, same algorithm), where
a~_l = [a_l, 1] is layer l's augmented input and U_l = d f / d z_l is backpropagated from
U_{L-1} = I (k rows per sample, one matrix product per layer: backward_rows).  The fill is
parallel over samples, each thread writing its own rows of J."""

from __future__ import annotations

import numpy as np
from numba import prange

from .common import CHUNKS, kernel, parallel_kernel, threaded
from .forward_backward import backward_rows, forward
from .workspace import carve


@kernel
def _fill_rows(lo, hi, d, off, k, P, X, A, o, U, uo, J):
    for n in range(lo, hi):
        L = d.size - 1
        for c in range(k):
            row = (n * k + c) * P
            for l in range(L):
                di, dn = d[l], d[l + 1]
                u = uo[l] + (n * k + c) * dn
                r = row + off[l]
                for i in range(di):
                    a = X[n * di + i] if l == 0 else A[o[l] + n * di + i]
                    for j in range(dn):
                        J[r + i * dn + j] = a * U[u + j]
                for j in range(dn):
                    J[r + di * dn + j] = U[u + j]


@parallel_kernel
def _fill(N, d, off, k, P, X, A, o, U, uo, J):
    if threaded(N * k * P):
        nch = min(N, CHUNKS)
        for ch in prange(nch):
            _fill_rows(np.int64(ch) * N // nch, (np.int64(ch) + 1) * N // nch, d, off, k, P, X, A, o, U, uo, J)
    else:
        _fill_rows(np.int64(0), N, d, off, k, P, X, A, o, U, uo, J)


@kernel
def jacobian(d, acts, off, theta, X, N, J, ws, top):
    """J (N*k*P,) = the (N*k, P) Jacobian: row n*k + c is d f_c(x_n) / d theta."""
    L = d.size - 1
    k = d[L]
    P = off[L]
    top[0] = 0
    A, D1, D2, o = forward(d, acts, off, theta, X, N, bool(0), ws, top)
    uo = np.zeros(L + 1, np.int64)  # U block of z_l: (N, k, d[l+1]) at uo[l]
    for l in range(L):
        uo[l + 1] = uo[l] + N * k * d[l + 1]
    U = carve(ws, top, uo[L])
    b = uo[L - 1]
    for q in range(N * k * k):
        U[b + q] = 0
    for n in range(N):
        for c in range(k):
            U[b + (n * k + c) * k + c] = 1
    backward_rows(d, off, theta, o, D1, np.int64(0), N, k, U, uo)
    _fill(N, d, off, k, P, X, A, o, U, uo, J)
