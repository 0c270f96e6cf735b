"""Exact Hessian and GGN of an MLP from their Kronecker structure (csrc/curvature.cpp: the
same algorithm and factors).

Math (docs/curvature.md §4-6; 0-based layers, a~_l = [a_l, 1] the augmented input of layer l,
H_l = d[l+1], D_l = diag act'(z_l)).  Per sample:
  Q_{L-1} = H_out,  Q_{l-1} = D_{l-1} W_l Q_l W_l^T D_{l-1} + diag(e_{l-1} * act''(z_{l-1}))
  (the GGN drops the diag term: Q_l = U_l^T U_l with U backpropagated from sqrt(H_out)).
  Block (l, m), l <= m, of the Hessian/GGN:
    H[(l,i,j), (m,i',j')] += a~_l[i] a~_m[i'] M^{(l,m)}[j, j'],   M^{(l,m)} = B_{m,l}^T Q_m
  and, Hessian only, for l < m (the bilinear coupling W_m * a_{m-1}; i' a true unit of a_m-input):
    H[(l,i,j), (m,i',j')] += a~_l[i] g_m[j'] act'(z_{m-1})[i'] B_{m-1,l}[i', j]
Summed over samples, each term is ONE matrix product over the sample index: e.g.
  K[(i,i'), (j',j)] = sum_n (a~_l[n,i] a~_m[n,i']) (M^{(l,m)}_n[j,j'])
costs 2 N P_l P_m, followed by an index permutation into the block.  Diagonal blocks use the
symmetry of both factors (i <= i', j <= j'): a quarter of the products.

The forward/backward tape covers all N samples (the C++ keeps one chunk's tape); the factors
and Kronecker products go a chunk of samples at a time (chunk_size as in the C++); per-sample
factors come from stacked products (BLAS, N*rows x d) and per-sample loops (prange over
samples); the big Kronecker products are BLAS calls accumulating over chunks into per-block
buffers; the final permutation writes each output element once, prange over rows.

Per-chunk factors for samples [n0, n0 + c), flat with offset tables (csrc/curvature.hpp):
  Q  (c, H_l, H_l) at qo[l]            curvature with respect to z_l (symmetric)
  Tm (c, H_m, H_l) at tmo[l, m], l < m  M^{(l,m)} transposed                      (full)
  S  (c, H_l, d[m]) at so[l, m], m >= l+2  B_{m-1,l}^T act'(z_{m-1})   (Hessian term 3, full)
  U  (c, k, H_l) at uo[l]              GGN only: d f/d z_l^T rows times sqrt(H_out)
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .blas import gemm
from .common import CHUNKS, kernel, parallel_kernel, threaded
from .forward_backward import backward, backward_rows, forward, loss_head, mul0, scale_rows, top_and_rest
from .workspace import carve, carve_zeros

NEED_DIAG, NEED_BLOCKS, NEED_FULL = 0, 1, 2


@kernel
def tri(a, b, n):
    """Packed index of (a, b), a <= b, in the row-major upper triangle of an n x n matrix."""
    return a * n - a * (a - 1) // 2 + (b - a)


@kernel
def _AtB_ones(lo, hi, r, p, q, A, ao, B, bo, C, co):
    for n in range(lo, hi):
        c0 = co + n * p * q
        for i in range(p * q):
            C[c0 + i] = 0
        for t in range(r):
            a = ao + (n * r + t) * p
            b = bo + (n * r + t) * q
            for i in range(p):
                ai = A[a + i]
                for j in range(q):
                    C[c0 + i * q + j] += ai * B[b + j]


@parallel_kernel
def _batched_AtB(c, r, p, q, A, ao, B, bo, C, co):
    """Per sample n < c: C_n (p x q) = A_n^T B_n, A_n (r x p), B_n (r x q)."""
    if threaded(c * r * p * q):
        nch = min(c, CHUNKS)
        for ch in prange(nch):
            _AtB_ones(np.int64(ch) * c // nch, (np.int64(ch) + 1) * c // nch, r, p, q, A, ao, B, bo, C, co)
    else:
        _AtB_ones(np.int64(0), c, r, p, q, A, ao, B, bo, C, co)


@parallel_kernel
def _transpose_scale(c, Hp, Hl, D1, do, y, yt):
    """yt[(n Hp + i) Hl + j] = D1[do + n Hp + i] y[(n Hl + j) Hp + i]."""
    if threaded(c * Hl * Hp):
        for n in prange(c):
            for i in range(Hp):
                s = D1[do + n * Hp + i]
                for j in range(Hl):
                    yt[(n * Hp + i) * Hl + j] = s * y[(n * Hl + j) * Hp + i]
    else:
        for n in range(c):
            for i in range(Hp):
                s = D1[do + n * Hp + i]
                for j in range(Hl):
                    yt[(n * Hp + i) * Hl + j] = s * y[(n * Hl + j) * Hp + i]


@parallel_kernel
def _outer_rows(c, p, q, X, xo, xs, Y, yo, ys, Lf):
    """Lf[(n p + i) q + j] = X[xo + n xs + i] Y[yo + n ys + j]: per-sample outer products."""
    if threaded(c * p * q):
        for n in prange(c):
            for i in range(p):
                x = X[xo + n * xs + i]
                for j in range(q):
                    Lf[(n * p + i) * q + j] = x * Y[yo + n * ys + j]
    else:
        for n in range(c):
            for i in range(p):
                x = X[xo + n * xs + i]
                for j in range(q):
                    Lf[(n * p + i) * q + j] = x * Y[yo + n * ys + j]


@kernel
def _packed_ones(lo, hi, Da, H, Aug, ao, Q, qo, Lf, Rf):
    for n in range(lo, hi):
        DP, HP = Da * (Da + 1) // 2, H * (H + 1) // 2
        a = ao + n * Da
        t = n * DP
        for i in range(Da):
            for i2 in range(i, Da):
                Lf[t] = Aug[a + i] * Aug[a + i2]
                t += 1
        q = qo + n * H * H
        t = n * HP
        for j in range(H):
            for j2 in range(j, H):
                Rf[t] = Q[q + j * H + j2]
                t += 1


@parallel_kernel
def _packed_factors(c, Da, H, Aug, ao, Q, qo, Lf, Rf):
    if threaded(c * (Da * (Da + 1) // 2 + H * (H + 1) // 2)):
        nch = min(c, CHUNKS)
        for ch in prange(nch):
            _packed_ones(np.int64(ch) * c // nch, (np.int64(ch) + 1) * c // nch, Da, H, Aug, ao, Q, qo, Lf, Rf)
    else:
        _packed_ones(np.int64(0), c, Da, H, Aug, ao, Q, qo, Lf, Rf)


@kernel
def diag_block_product(c, Da, H, Aug, ao, Q, qo, Lf, Rf, Kd, ko):
    """Kd (Da(Da+1)/2, H(H+1)/2) += sum_n tri(a~ a~^T) tri(Q_n)^T for one layer."""
    DP, HP = Da * (Da + 1) // 2, H * (H + 1) // 2
    _packed_factors(c, Da, H, Aug, ao, Q, qo, Lf, Rf)
    gemm(True, False, DP, HP, c, 1.0, Lf, 0, DP, Rf, 0, HP, 1.0, Kd, ko, HP)


@kernel
def _unpack_diag_rows(lo, hi, Da, H, Kd, ko, out, ob, ld):
    # One packed row of Kd at a time into the row segments it fills (csrc/curvature.cpp).
    HP = H * (H + 1) // 2
    for i in range(lo, hi):
        for i2 in range(Da):
            kk = ko + tri(min(i, i2), max(i, i2), Da) * HP
            for j in range(H):
                seg = ob + (i * H + j) * ld + i2 * H
                p = kk + j  # tri(0, j)
                for j2 in range(j):
                    out[seg + j2] = Kd[p]
                    p += H - j2 - 1
                run = kk + tri(j, j, H) - j
                for j2 in range(j, H):
                    out[seg + j2] = Kd[run + j2]


@parallel_kernel
def unpack_diag_block(Da, H, Kd, ko, out, ob, ld):
    """Block (Da H x Da H, leading dimension ld, at out[ob:]) from its packed Kronecker sum."""
    if threaded(Da * Da * H * H):
        nch = min(Da, CHUNKS)
        for ch in prange(nch):
            _unpack_diag_rows(np.int64(ch) * Da // nch, (np.int64(ch) + 1) * Da // nch, Da, H, Kd, ko, out, ob, ld)
    else:
        _unpack_diag_rows(np.int64(0), Da, Da, H, Kd, ko, out, ob, ld)


@kernel
def chunk_size(d, N, need, room):
    """Samples per chunk so that the per-chunk buffers stay near max(2^23, room) values (the full
    matrices and blocks pass half their result's size: csrc/curvature.hpp)."""
    L = d.size - 1
    k = d[L]
    budget = max(1 << 23, room)
    if need == NEED_DIAG:  # diagonals from vectors per sample: U rows, S, q, a~^2
        foot = k * k
        for l in range(L):
            foot += (k + 3) * d[l + 1] + d[l] + 1
        return max(1, min(min(N, 4096), budget // foot))
    foot, widest = k * k, 0
    for l in range(L):
        H, Da = d[l + 1], d[l] + 1
        foot += 3 * H * H + k * H + 2 * H * d[l] + Da
        widest = max(widest, Da * (Da + 1) // 2 + H * (H + 1) // 2)
        if need == NEED_FULL:
            for m in range(l + 1, L):
                foot += 2 * d[m + 1] * H + H * d[m]
                widest = max(widest, Da * (d[m] + 1) + Da * d[m + 1] + H * d[m])
    foot += widest
    return max(1, min(min(N, 512), budget // max(foot, 1)))


@kernel
def alloc_factors(d, C, gn, need, ws, top):
    """Buffers and offset tables of the per-chunk factors for chunks of up to C samples."""
    L = d.size - 1
    k = d[L]
    full = need == NEED_FULL
    qo = np.zeros(L + 1, np.int64)
    uo = np.zeros(L + 1, np.int64)
    tmo = np.zeros((L, L), np.int64)
    so = np.zeros((L, L), np.int64)
    nq = nu = nt = ns = 0
    hmax = 0
    for l in range(L + 1):
        hmax = max(hmax, d[l])
    for l in range(L):
        H = d[l + 1]
        qo[l] = nq
        if need != NEED_DIAG or not gn:
            nq += C * H * H
        uo[l] = nu
        if gn:
            nu += C * k * H
        for m in range(l + 1, L):
            tmo[l, m] = nt
            if full:
                nt += C * d[m + 1] * H
            so[l, m] = ns
            if full and not gn and m >= l + 2:
                ns += C * H * d[m]
    qo[L], uo[L] = nq, nu
    Q = carve(ws, top, nq)
    U = carve(ws, top, nu)
    Tm = carve(ws, top, nt)
    S = carve(ws, top, ns)
    y = carve(ws, top, 0 if gn else C * hmax * hmax)
    yt = carve(ws, top, 0 if gn else C * hmax * hmax)
    B = carve(ws, top, C * hmax * hmax if full and not gn else 0)
    return Q, qo, U, uo, Tm, tmo, S, so, y, yt, B


@kernel
def gn_rows(d, off, lossc, theta, o, D1, Pm, N, mean, W, n0, c, U, uo, gn):
    """U (c, k, d[l+1]) at uo[l], every layer l, for samples [n0, n0+c): the rows of a square
    root R of H_out (R^T R = H_out) backpropagated to z_l, so that the GGN's per-sample
    Q_l = U_l^T U_l (the same rows serve the Hessian's diagonal, csrc gn_rows).
      mse: H_out = 2s/k I, R = sqrt(2s/k) I;  ce: H_out = s (diag p - p p^T),
      row r = sqrt(s p_r) (e_r - p).
      gaussian (csrc/formulas.hpp, curvature_root), pair j of h = k/2, c = s/h: with gn (the
      Fisher) rows sqrt(c) q e_mu and sqrt(c/2) e_v; without (the Hessian) rows
      sqrt(c) (q e_mu + z e_v) and sqrt(c/2) |z| e_v, the second counted with the sign -1
      (root_sign)."""
    L = d.size - 1
    k = d[L]
    s0 = 1.0 / N if mean else 1.0
    b = uo[L - 1]
    for q in range(c * k * k):
        U[b + q] = 0
    for n in range(c):
        p = (n0 + n) * k
        s = s0 * W[n0 + n] if W.size else s0
        t, rest = top_and_rest(Pm, p, k) if lossc == 1 else (0, 0.0)
        for r in range(k):
            u = b + (n * k + r) * k
            if lossc == 0:
                U[u + r] = math.sqrt(2 * s / k)
            elif lossc == 6:
                h = k // 2
                j = r % h
                if r < h:
                    U[u + j] = math.sqrt(s / h) * Pm[p + j]
                    if not gn:
                        U[u + h + j] = math.sqrt(s / h) * Pm[p + h + j]
                else:
                    U[u + h + j] = math.sqrt(0.5 * s / h) * (1.0 if gn else abs(Pm[p + h + j]))
            elif lossc >= 2:  # elementwise: sqrt(s/k l'') e_r
                U[u + r] = math.sqrt(s / k * Pm[p + r])
            else:
                w = math.sqrt(s * Pm[p + r])
                for j in range(k):
                    U[u + j] = -w * Pm[p + j]
                # w (1 - p_r), not -w p_r + w: where p_r rounds to 1, U's float32 holds -w p_r
                # as float32(-w), and adding the float64 w left w's rounding, ~1e-8 w, in place
                # of ~0 (a confident float32 GGN was off by 1e9)
                U[u + r] = w * (rest if r == t else 1.0 - Pm[p + r])
    backward_rows(d, off, theta, o, D1, n0, c, k, U, uo)


@kernel
def root_sign(lossc, k, r, gn):
    """The sign of gn_rows' row r: -1 only for gaussian's second rows of the Hessian."""
    return -1.0 if lossc == 6 and not gn and r >= k // 2 else 1.0


@kernel
def gn_factors(d, need, c, U, uo, Q, qo, Tm, tmo):
    """The GGN's factors from the rows U of gn_rows: Q at qo[l] = U_l^T U_l and, for the full
    matrix, Tm at tmo[l, m] = U_m^T U_l."""
    L = d.size - 1
    k = d[L]
    for l in range(L):
        H = d[l + 1]
        _batched_AtB(c, k, H, H, U, uo[l], U, uo[l], Q, qo[l])
        if need == NEED_FULL:
            for m in range(l + 1, L):
                _batched_AtB(c, k, d[m + 1], H, U, uo[m], U, uo[l], Tm, tmo[l, m])


@kernel
def output_hessian(lossc, k, s0, W, Pm, n0, c, Q, b):
    """The Hessian's Q_{L-1} = H_out per sample, at Q[b:]: mse 2s/k I; ce s (diag(p) - p p^T),
    the diagonal as s p_i (1 - p_i) (top_and_rest); elementwise s/k diag(l''); gaussian, per
    pair (q, z), s/h [[q^2, z q], [z q, z^2/2]]."""
    for n in range(c):
        q = b + n * k * k
        p = (n0 + n) * k
        s = s0 * W[n0 + n] if W.size else s0
        for i in range(k * k):
            Q[q + i] = 0
        t, rest = top_and_rest(Pm, p, k) if lossc == 1 else (0, 0.0)
        for i in range(k):
            if lossc == 0:
                Q[q + i * k + i] = 2 * s / k
            elif lossc == 6:
                h = k // 2
                if i < h:
                    qq, z = Pm[p + i], Pm[p + h + i]
                    Q[q + i * k + i] = s / h * qq * qq
                    Q[q + (h + i) * k + h + i] = 0.5 * s / h * z * z
                    Q[q + i * k + h + i] = Q[q + (h + i) * k + i] = s / h * mul0(z, qq)
            elif lossc >= 2:
                Q[q + i * k + i] = s / k * Pm[p + i]
            else:
                for j in range(k):
                    Q[q + i * k + j] = -s * Pm[p + i] * Pm[p + j]
                Q[q + i * k + i] = s * Pm[p + i] * (rest if i == t else 1.0 - Pm[p + i])


@kernel
def tm_below(d, l, theta, wo, D1, do, c, y, Tm, tmo):
    """One layer down from Tm[l][.], for the full matrix: Tm[l-1][m] = Tm[l][m] W_l^T D_{l-1}
    (m > l) and Tm[l-1][l] = y D_{l-1}, with y = Q_l W_l^T, W_l at theta[wo:] and act'(z_{l-1})
    of the chunk at D1[do:]."""
    L = d.size - 1
    Hl, Hp = d[l + 1], d[l]
    for m in range(l + 1, L):
        gemm(False, True, c * d[m + 1], Hp, Hl, 1.0, Tm, tmo[l, m], Hl, theta, wo, Hl, 0.0,
             Tm, tmo[l - 1, m], Hp)
        scale_rows(c, d[m + 1], Hp, Tm, tmo[l - 1, m], D1, do)
    t = tmo[l - 1, l]
    for i in range(c * Hl * Hp):
        Tm[t + i] = y[i]
    scale_rows(c, Hl, Hp, Tm, t, D1, do)


@kernel
def q_below(d, l, theta, wo, D1, D2, E, do, c, y, yt, Q, qo):
    """One layer down from Q_l: Q_{l-1} = yt W_l^T D_{l-1} + diag(e_{l-1} * act''(z_{l-1})), with
    yt = D_{l-1} y^T = D_{l-1} W_l Q_l (Q_l is symmetric) from y = Q_l W_l^T; the chunk's tape
    rows of unit layer l at do."""
    Hl, Hp = d[l + 1], d[l]
    _transpose_scale(c, Hp, Hl, D1, do, y, yt)
    gemm(False, True, c * Hp, Hp, Hl, 1.0, yt, 0, Hl, theta, wo, Hl, 0.0, Q, qo[l - 1], Hp)
    scale_rows(c, Hp, Hp, Q, qo[l - 1], D1, do)
    for n in range(c):
        for i in range(Hp):
            Q[qo[l - 1] + (n * Hp + i) * Hp + i] += E[do + n * Hp + i] * D2[do + n * Hp + i]


@kernel
def term3_factors(d, off, theta, o, D1, n0, c, S, so, B):
    """The Hessian's term-3 factors S at so[l, m] = B^T_{m-1,l} D_{m-1}, m >= l + 2, walking B up
    from B^T_{l+1,l} = D_l W_{l+1} by B^T_{m,l} = S[l][m] W_m."""
    L = d.size - 1
    for l in range(L - 2):
        H, H1 = d[l + 1], d[l + 2]
        dl = o[l + 1] + n0 * H  # act'(z_l)
        w1 = off[l + 1]  # W_{l+1}: (H, H1)
        for n in range(c):
            for i in range(H):
                for j in range(H1):
                    B[(n * H + i) * H1 + j] = D1[dl + n * H + i] * theta[w1 + i * H1 + j]
        for m in range(l + 2, L):  # B holds B^T_{m-1,l}: (c, H, d[m])
            Hm = d[m]
            sm = so[l, m]
            for i in range(c * H * Hm):
                S[sm + i] = B[i]
            scale_rows(c, H, Hm, S, sm, D1, o[m] + n0 * Hm)
            if m + 1 < L:
                gemm(False, False, c * H, d[m + 1], Hm, 1.0, S, sm, Hm, theta, off[m], d[m + 1], 0.0,
                     B, 0, d[m + 1])


@kernel
def chunk_factors(d, off, lossc, theta, o, D1, D2, E, Pm, N, mean, W, gn, need, n0, c,
                  Q, qo, U, uo, Tm, tmo, S, so, y, yt, B):
    """The per-chunk factors (csrc chunk_factors).  GGN: the rows U (gn_rows), then Q and Tm from
    them.  Hessian: Q_{L-1} = H_out, then down the layers y = Q_l W_l^T (one product over the
    chunk's rows), and from it Tm[l-1][.] and Q_{l-1}; then the term-3 factors S.  Tm and S
    only for the full matrix."""
    L = d.size - 1
    k = d[L]
    if gn:
        gn_rows(d, off, lossc, theta, o, D1, Pm, N, mean, W, n0, c, U, uo, True)
        if need != NEED_DIAG:
            gn_factors(d, need, c, U, uo, Q, qo, Tm, tmo)
        return
    output_hessian(lossc, k, 1.0 / N if mean else 1.0, W, Pm, n0, c, Q, qo[L - 1])
    for l in range(L - 1, 0, -1):
        Hl, Hp = d[l + 1], d[l]
        wo = off[l]  # W_l: (Hp, Hl)
        do = o[l] + n0 * Hp  # act'(z_{l-1}) of the chunk's samples
        gemm(False, True, c * Hl, Hp, Hl, 1.0, Q, qo[l], Hl, theta, wo, Hl, 0.0, y, 0, Hp)
        if need == NEED_FULL:
            tm_below(d, l, theta, wo, D1, do, c, y, Tm, tmo)
        q_below(d, l, theta, wo, D1, D2, E, do, c, y, yt, Q, qo)
    if need == NEED_FULL:
        term3_factors(d, off, theta, o, D1, n0, c, S, so, B)


@kernel
def curvature_tape(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn, ws, top):
    """Forward (and, for the Hessian, backward) pass over all N samples."""
    L = d.size - 1
    top[0] = 0
    A, D1, D2, o = forward(d, acts, off, theta, X, N, not gn, ws, top)
    G = carve(ws, top, o[L + 1] if not gn else 0)
    value, Pm = loss_head(d, lossc, lscale, A, o, N, Y, labels, mean, W, G, not gn, ws, top)
    E = carve(ws, top, o[L] if not gn else 0)
    if not gn:
        backward(d, off, theta, o, N, G, E, D1)
    return A, D1, D2, o, G, E, Pm


@kernel
def augmented(d, l, X, A, o, n0, c, Aug, ao):
    """Augmented inputs [a_l, 1] of layer l for the chunk: (c, d[l]+1) at Aug[ao:]."""
    di = d[l]
    for n in range(c):
        for i in range(di):
            Aug[ao + n * (di + 1) + i] = X[(n0 + n) * di + i] if l == 0 else A[o[l] + (n0 + n) * di + i]
        Aug[ao + n * (di + 1) + di] = 1


@kernel
def _unpack_off_rows(lo, hi, H, dm, Hm, adjacent, dlm, gn, Ko, ko, E3a, e3a, E3, e3, out, ob, P):
    # One (Hm x H) sub-block of Ko at a time into its H row segments (csrc/curvature.cpp).
    for i in range(lo, hi):
        for i2 in range(dm):
            kb = ko + (i * dm + i2) * (Hm * H)
            for j in range(H):
                seg = ob + (i * H + j) * P + i2 * Hm
                for j2 in range(Hm):
                    v = Ko[kb + j2 * H + j]
                    if not gn and i2 < dm - 1:
                        if adjacent:
                            if i2 == j:
                                v += E3a[e3a + (i * H + j) * Hm + j2]
                        else:
                            v += E3[e3 + (i * Hm + j2) * (H * dlm) + j * dlm + i2]
                    out[seg + j2] = v


@parallel_kernel
def _unpack_off_block(da, H, dm, Hm, adjacent, dlm, gn, Ko, ko, E3a, e3a, E3, e3, out, ob, P):
    """Block (l, m), l < m, at out[ob:] (leading dimension P) from its accumulators."""
    if threaded(da * H * dm * Hm):
        nch = min(da, CHUNKS)
        for ch in prange(nch):
            _unpack_off_rows(np.int64(ch) * da // nch, (np.int64(ch) + 1) * da // nch, H, dm, Hm, adjacent, dlm, gn,
                             Ko, ko, E3a, e3a, E3, e3, out, ob, P)
    else:
        _unpack_off_rows(np.int64(0), da, H, dm, Hm, adjacent, dlm, gn, Ko, ko, E3a, e3a, E3, e3, out, ob, P)


@kernel
def _mirror_rows(lo, hi, off, P, out):
    for r in range(lo, hi):
        l = 0
        while off[l + 1] <= r:
            l += 1
        for q in range(off[l]):
            out[r * P + q] = out[q * P + r]


@parallel_kernel
def _mirror(off, P, out):
    """Lower triangle outside the diagonal blocks: out[r][q] = out[q][r]."""
    if threaded(P * P):
        nch = min(P, CHUNKS)
        for ch in prange(nch):
            _mirror_rows(np.int64(ch) * P // nch, (np.int64(ch) + 1) * P // nch, off, P, out)
    else:
        _mirror_rows(np.int64(0), P, off, P, out)


@kernel
def full_accumulators(d, gn):
    """Offset tables of curvature_full's accumulators over chunks, one per block and term, and
    their total size: Kd at kdo[l], then Ko at koo[l, m], E3a at e3ao[l], E3 at e3o[l, m]
    (relative to their own starts, returned as k0, a0, e0)."""
    L = d.size - 1
    kdo = np.zeros(L + 1, np.int64)
    e3ao = np.zeros(L + 1, np.int64)
    koo = np.zeros((L, L), np.int64)
    e3o = np.zeros((L, L), np.int64)
    nko = ne3 = 0
    for l in range(L):
        Da, H = d[l] + 1, d[l + 1]
        kdo[l + 1] = kdo[l] + Da * (Da + 1) // 2 * (H * (H + 1) // 2)
        e3ao[l + 1] = e3ao[l] + (Da * H * d[l + 2] if not gn and l + 1 < L else 0)
        for m in range(l + 1, L):
            koo[l, m] = nko
            nko += Da * (d[m] + 1) * d[m + 1] * H
            e3o[l, m] = ne3
            if not gn and m >= l + 2:
                ne3 += Da * d[m + 1] * H * d[m]
    k0 = kdo[L]
    a0 = k0 + nko
    e0 = a0 + e3ao[L]
    return kdo, koo, e3ao, e3o, k0, a0, e0, e0 + ne3


@kernel
def accumulators(acc, size, first, ws, top):
    """acc (zeroed when `first`), or, when acc is empty (one call for all samples), zeroed
    scratch of `size` values."""
    if acc.size == 0:
        return carve_zeros(ws, top, size)
    if first:
        acc[:] = 0
    return acc


@kernel
def curvature_full(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn, acc, first, last, ws,
                   top):
    """(P, P): the data term of H (gn False) or G (gn True).  The backend calls it once, or, on
    many samples, once per piece of samples (so that Python sees a pending signal between
    pieces): then acc holds the accumulators from the `first` piece to the `last`, which alone
    returns the matrix ((0, 0) before it)."""
    L = d.size - 1
    P = off[L]
    A, D1, D2, o, G, E, Pm = curvature_tape(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn,
                                            ws, top)
    kdo, koo, e3ao, e3o, k0, a0, e0, size = full_accumulators(d, gn)
    buf = accumulators(acc, size, first, ws, top)
    Kd, Ko, E3a, E3 = buf[:k0], buf[k0:a0], buf[a0:e0], buf[e0:size]
    dt = theta.dtype

    C = chunk_size(d, N, np.int64(NEED_FULL), P * P // 2)
    need = np.int64(NEED_FULL)
    Q, qo, U, uo, Tm, tmo, S, so, y, yt, B = alloc_factors(d, C, gn, need, ws, top)
    ago = np.zeros(L + 1, np.int64)
    lf = rf = 0
    for l in range(L):
        Da, H = d[l] + 1, d[l + 1]
        ago[l + 1] = ago[l] + C * Da
        lf = max(lf, Da * (Da + 1) // 2)
        rf = max(rf, H * (H + 1) // 2)
        for m in range(l + 1, L):
            lf = max(lf, max(Da * (d[m] + 1), Da * d[m + 1]))
        lf = max(lf, Da * H)
    Aug = carve(ws, top, ago[L])
    Lf = carve(ws, top, C * lf)
    Rf = carve(ws, top, C * rf)

    for n0 in range(0, N, C):
        c = min(C, N - n0)
        chunk_factors(d, off, lossc, theta, o, D1, D2, E, Pm, N, mean, W, gn, need, n0, c,
                      Q, qo, U, uo, Tm, tmo, S, so, y, yt, B)
        for l in range(L):
            augmented(d, l, X, A, o, n0, c, Aug, ago[l])
        for l in range(L):
            da, H = d[l] + 1, d[l + 1]
            diag_block_product(c, da, H, Aug, ago[l], Q, qo[l], Lf, Rf, Kd, kdo[l])
            for m in range(l + 1, L):
                dm, Hm = d[m] + 1, d[m + 1]
                # Ko[(i,i'), (j',j)] += sum_n a~_l[i] a~_m[i'] Tm[l][m][j',j]
                _outer_rows(c, da, dm, Aug, ago[l], da, Aug, ago[m], dm, Lf)
                gemm(True, False, da * dm, Hm * H, c, 1.0, Lf, 0, da * dm, Tm, tmo[l, m], Hm * H, 1.0,
                     Ko, koo[l, m], Hm * H)
                if gn:
                    continue
                if m == l + 1:
                    # E3a[(i, j), j'] += sum_n a~_l[i] act'(z_l)[j] g_m[j']
                    _outer_rows(c, da, H, Aug, ago[l], da, D1, o[l + 1] + n0 * H, H, Lf)
                    gemm(True, False, da * H, Hm, c, 1.0, Lf, 0, da * H, G, o[m + 1] + n0 * Hm, Hm, 1.0,
                         E3a, e3ao[l], Hm)
                else:
                    # E3[(i, j'), (j, i')] += sum_n a~_l[i] g_m[j'] S[l][m][j, i']
                    _outer_rows(c, da, Hm, Aug, ago[l], da, G, o[m + 1] + n0 * Hm, Hm, Lf)
                    cols = H * d[m]
                    gemm(True, False, da * Hm, cols, c, 1.0, Lf, 0, da * Hm, S, so[l, m], cols, 1.0,
                         E3, e3o[l, m], cols)

    if not last:
        return np.empty((0, 0), dt)
    # Permute the accumulators into the upper blocks of out, then mirror.
    out = np.empty(P * P, dt)
    for l in range(L):
        da, H, ol = d[l] + 1, d[l + 1], off[l]
        unpack_diag_block(da, H, Kd, kdo[l], out, ol * P + ol, P)
        for m in range(l + 1, L):
            _unpack_off_block(da, H, d[m] + 1, d[m + 1], m == l + 1, d[m], gn, Ko, koo[l, m], E3a,
                              e3ao[l], E3, e3o[l, m], out, ol * P + off[m], P)
    _mirror(off, P, out)
    return out.reshape(P, P)


@kernel
def curvature_blocks(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn, acc, first, last, ws,
                     top):
    """The diagonal blocks (P_l, P_l), concatenated flat in layer order; acc, first, last as
    for curvature_full (empty before the last piece)."""
    L = d.size - 1
    A, D1, D2, o, G, E, Pm = curvature_tape(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, gn,
                                            ws, top)
    kdo = np.zeros(L + 1, np.int64)
    bo = np.zeros(L + 1, np.int64)
    lf = rf = 0
    for l in range(L):
        Da, H = d[l] + 1, d[l + 1]
        kdo[l + 1] = kdo[l] + Da * (Da + 1) // 2 * (H * (H + 1) // 2)
        bo[l + 1] = bo[l] + (Da * H) * (Da * H)
        lf = max(lf, Da * (Da + 1) // 2)
        rf = max(rf, H * (H + 1) // 2)
    dt = theta.dtype
    Kd = accumulators(acc, kdo[L], first, ws, top)
    need = np.int64(NEED_BLOCKS)
    C = chunk_size(d, N, need, bo[L] // 2)
    Q, qo, U, uo, Tm, tmo, S, so, y, yt, B = alloc_factors(d, C, gn, need, ws, top)
    ago = np.zeros(L + 1, np.int64)
    for l in range(L):
        ago[l + 1] = ago[l] + C * (d[l] + 1)
    Aug = carve(ws, top, ago[L])
    Lf = carve(ws, top, C * lf)
    Rf = carve(ws, top, C * rf)
    for n0 in range(0, N, C):
        c = min(C, N - n0)
        chunk_factors(d, off, lossc, theta, o, D1, D2, E, Pm, N, mean, W, gn, need, n0, c,
                      Q, qo, U, uo, Tm, tmo, S, so, y, yt, B)
        for l in range(L):
            augmented(d, l, X, A, o, n0, c, Aug, ago[l])
            diag_block_product(c, d[l] + 1, d[l + 1], Aug, ago[l], Q, qo[l], Lf, Rf, Kd, kdo[l])
    if not last:
        return np.empty(0, dt)
    out = np.empty(bo[L], dt)
    for l in range(L):
        Pl = (d[l] + 1) * d[l + 1]
        unpack_diag_block(d[l] + 1, d[l + 1], Kd, kdo[l], out, bo[l], Pl)
    return out
