"""Diagonals of H and G (csrc/diagonal.cpp, same algorithm): only the diagonal blocks touch
the diagonal, and there the Kronecker structure gives
  diag[(l, i, j)] = sum_n a~_l[n, i]^2 Q_l[n, j, j]
i.e. ONE matrix product (a~_l^2)^T q_l per layer, with q_l[n, j] = Q_l[n, j, j].

Only the diagonals of the per-sample Q_l are needed, never the d x d matrices where they can
be avoided.  Split Q_l = U_l^T U_l + S_l: the GGN part from the k backpropagated rows of a
square root of H_out (curvature.gn_rows; q_l gets the column sums of U_l^2: N k d work; for
the Hessian of gaussian, whose H_out is indefinite, the last k/2 rows count with the sign -1:
curvature.root_sign), and
the activation-curvature part (Hessian only)
  S_{L-1} = 0,   S_{l-1} = D_{l-1} W_l S_l W_l^T D_{l-1} + diag(c_{l-1}),  c = e * act''.
While S_l is diagonal (vector s_l) the diagonal of the next one is one stacked product:
  diag S_{l-1} = act'(z_{l-1})^2 * (s_l (W_l * W_l)^T) + c_{l-1},
so for networks with up to two hidden layers (and for relu/identity, where c = 0, at any
depth) the Hessian's diagonal costs about what the GGN's does: O(N (k + 1) P).  Deeper layers
of deeper tanh-like networks need S_l as a matrix (the recursion of curvature.py, O(N d^3)),
formed only from the third layer from the top down.
Chunked over samples like the full matrices (NEED_BLOCKS only when matrices are needed);
products in BLAS, the rest prange over samples."""

from __future__ import annotations

import numpy as np
from numba import prange

from .blas import gemm
from .common import CHUNKS, kernel, parallel_kernel, ro, threaded
from .curvature import NEED_BLOCKS, NEED_DIAG, _transpose_scale, chunk_size, curvature_tape, gn_rows, root_sign
from .forward_backward import scale_rows
from .workspace import carve

# What S[l] of the chunk holds (csrc: an empty vector, or `full`).
S_ZERO, S_DIAG, S_MATRIX = 0, 1, 2


@kernel
def curved(f):
    """Whether act'' can be nonzero (every activation but identity (0) and relu (1))."""
    return f != 0 and f != 1


@kernel
def _layer_ones(lo, hi, di, H, k, kpos, src, ao, U, uo, S, so, st, Asq, q):
    # Through 2-D views of the rows [lo, hi): an index that is a loop variable needs no
    # wraparound check, so LLVM vectorizes the row loops (it does not on flat offsets).
    m, Da = hi - lo, di + 1
    a = src[ao + lo * di:ao + hi * di].reshape(m, di)
    asq = Asq[lo * Da:hi * Da].reshape(m, Da)
    qm = q[lo * H:hi * H].reshape(m, H)
    u = U[uo + lo * k * H:uo + hi * k * H].reshape(m * k, H)
    if st == S_DIAG:
        sd = S[so + lo * H:so + hi * H].reshape(m, H)
    else:
        sd = S[so + lo * H * H:so + hi * H * H].reshape(m, H * H) if st == S_MATRIX else S[0:0].reshape(0, H)
    for n in range(m):
        for i in range(di):
            asq[n, i] = a[n, i] * a[n, i]
        asq[n, di] = 1
        if st == S_DIAG:
            for j in range(H):
                qm[n, j] = sd[n, j]
        elif st == S_MATRIX:
            for j in range(H):
                qm[n, j] = sd[n, j * (H + 1)]
        else:
            for j in range(H):
                qm[n, j] = 0
        for r in range(kpos):
            for j in range(H):
                qm[n, j] += u[n * k + r, j] * u[n * k + r, j]
        for r in range(kpos, k):  # rows of sign -1 (curvature.root_sign)
            for j in range(H):
                qm[n, j] -= u[n * k + r, j] * u[n * k + r, j]


@parallel_kernel
def _layer_factors(c, di, H, k, kpos, src, ao, U, uo, S, so, st, Asq, q):
    """Per sample n < c: Asq[n] = [a_l^2, 1] (a_l at src[ao + n di:]) and
    q[n, j] = S_l[n, j, j] + sum_r sign_r U_l[n, r, j]^2 (S_l as `st` says; sign_r = 1 for the
    rows r < kpos, -1 for the others)."""
    if threaded(c * (H * (k + 1) + di + 1)):
        nch = min(c, CHUNKS)
        for ch in prange(nch):
            _layer_ones(np.int64(ch) * c // nch, (np.int64(ch) + 1) * c // nch, di, H, k, kpos, src, ao, U, uo, S,
                        so, st, Asq, q)
    else:
        _layer_ones(np.int64(0), c, di, H, k, kpos, src, ao, U, uo, S, so, st, Asq, q)


@kernel
def _s_recursion(d, acts, off, theta, o, D1, D2, E, n0, c, Wsq, S, so, st, y, yt):
    """S_l of the chunk's samples, top down; st[l] says what S[so[l]:] holds."""
    L = d.size - 1
    st[L - 1] = S_ZERO
    for l in range(L - 1, 0, -1):
        Hl, Hp = d[l + 1], d[l]
        wo = off[l]  # W_l: (Hp, Hl)
        do = o[l] + n0 * Hp  # act'(z_{l-1}), act'', e of the chunk's samples
        sl, sp = so[l], so[l - 1]
        cur = curved(acts[l - 1])
        # the chunk's act'(z_{l-1}), act'', e and diagonal S_{l-1} as views (vectorized loops)
        d1, d2, e = D1[do:do + c * Hp], D2[do:do + c * Hp], E[do:do + c * Hp]
        sdiag = S[sp:sp + c * Hp]
        if st[l] == S_ZERO:  # S_{l-1} = diag(c_{l-1})
            if not cur:
                st[l - 1] = S_ZERO
                continue
            for i in range(c * Hp):
                sdiag[i] = e[i] * d2[i]
            st[l - 1] = S_DIAG
        elif st[l] == S_DIAG and l == 1:  # diagonal of S_0 from a diagonal S_1
            gemm(False, True, c, Hp, Hl, 1.0, S, sl, Hl, Wsq, 0, Hl, 0.0, S, sp, Hp)
            if cur:
                for i in range(c * Hp):
                    sdiag[i] = d1[i] * d1[i] * sdiag[i] + e[i] * d2[i]
            else:
                for i in range(c * Hp):
                    sdiag[i] = d1[i] * d1[i] * sdiag[i]
            st[0] = S_DIAG
        else:  # matrices: S_{l-1} = D W S_l W^T D + diag(c)
            if st[l] == S_DIAG:  # a diagonal S_l as matrices
                for i in range(c * Hl):
                    yt[i] = S[sl + i]
                for i in range(c * Hl * Hl):
                    S[sl + i] = 0
                for n in range(c):
                    for j in range(Hl):
                        S[sl + (n * Hl + j) * Hl + j] = yt[n * Hl + j]
                st[l] = S_MATRIX
            # y_n = S_n W^T (Hl x Hp); yt_n = D y_n^T = D W S_n (S_n symmetric); S_{l-1} = yt_n W^T D
            gemm(False, True, c * Hl, Hp, Hl, 1.0, S, sl, Hl, theta, wo, Hl, 0.0, y, 0, Hp)
            _transpose_scale(c, Hp, Hl, D1, do, y, yt)
            gemm(False, True, c * Hp, Hp, Hl, 1.0, yt, 0, Hl, theta, wo, Hl, 0.0, S, sp, Hp)
            scale_rows(c, Hp, Hp, S, sp, D1, do)
            if cur:
                for n in range(c):
                    for i in range(Hp):
                        S[sp + (n * Hp + i) * Hp + i] += e[n * Hp + i] * d2[n * Hp + i]
            st[l - 1] = S_MATRIX


@kernel
def curvature_diag(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn, ws, top):
    """(P,): diag(H) (gn False) or diag(G) (gn True), data term."""
    L = d.size - 1
    k = d[L]
    A, D1, D2, o, G, E, Pm = curvature_tape(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn,
                                            ws, top)
    out = np.zeros(off[L], theta.dtype)
    # Hessian only: the deepest hidden layer whose S is still diagonal is L-2; S turns into a
    # matrix at the first curved layer l <= L-3 that has another layer below it.
    any_curved = False
    for l in range(L - 1):
        any_curved = any_curved or curved(acts[l])
    with_s = not gn and any_curved
    matrices = with_s and L >= 4
    C = chunk_size(d, N, np.int64(NEED_BLOCKS if matrices else NEED_DIAG), np.int64(0))

    uo = np.zeros(L + 1, np.int64)  # U_l rows (c, k, H_l)
    so = np.zeros(L + 1, np.int64)  # S_l: diagonal (c, H_l) or matrices (c, H_l, H_l)
    dmax = 0
    for l in range(L + 1):
        dmax = max(dmax, d[l])
    for l in range(L):
        H = d[l + 1]
        uo[l + 1] = uo[l] + C * k * H
        so[l + 1] = so[l] + ((C * H * H if matrices else C * H) if with_s and l + 1 < L else 0)
    U = carve(ws, top, uo[L])
    S = carve(ws, top, so[L])
    y = carve(ws, top, C * dmax * dmax if matrices else 0)
    yt = carve(ws, top, C * dmax * dmax if matrices else 0)
    H1 = d[2] if L >= 2 else 0
    Wsq = carve(ws, top, d[1] * H1 if with_s else 0)  # W_1 * W_1: (d[1], d[2])
    for i in range(Wsq.size):
        w = theta[off[1] + i]
        Wsq[i] = w * w
    Asq = carve(ws, top, C * (dmax + 1))
    q = carve(ws, top, C * dmax)
    st = np.zeros(L, np.int64)  # all S_ZERO for the GGN
    kpos = k  # rows of sign +1 (root_sign): the first ones
    while kpos > 0 and root_sign(lossc, k, kpos - 1, gn) < 0:
        kpos -= 1

    for n0 in range(0, N, C):
        c = min(C, N - n0)
        gn_rows(d, off, lossc, theta, o, D1, Pm, N, mean, W, n0, c, U, uo, gn)
        if with_s:
            _s_recursion(d, acts, off, theta, o, D1, D2, E, n0, c, Wsq, S, so, st, y, yt)
        for l in range(L):
            di, H = d[l], d[l + 1]
            Da = di + 1
            if l == 0:
                _layer_factors(c, di, H, k, kpos, ro(X), n0 * di, U, uo[l], S, so[l], st[l], Asq, q)
            else:
                _layer_factors(c, di, H, k, kpos, ro(A), o[l] + n0 * di, U, uo[l], S, so[l], st[l], Asq, q)
            gemm(True, False, Da, H, c, 1.0, Asq, 0, Da, q, 0, H, 1.0, out, off[l], H)
    return out
