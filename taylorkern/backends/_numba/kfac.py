"""K-FAC's factors and EKFAC's eigenvalues (csrc/kfac.cpp: the same algorithm and step names).

One forward pass over the samples (the tape, as the other numba kernels keep it for all N),
the loss head for the softmax, then a chunk of samples at a time: the rows of the output
Hessian's square root (or the sampled gradients) at the output (``top_rows``), backpropagated
to every layer (forward_backward.backward_rows), and per layer the chunk's a~^T a~ and U^T U
added to the accumulators by symmetric rank-c updates of which only the lower triangle is
computed (``lower_rank_update``: BLAS products over row panels of the triangle),
the inputs' column of ones never formed (``augmented_rank_update``: its row is the inputs'
column sums).  The triangles are mirrored once at the end (``mirror_scaled``).

Unlike the C++ (threads over samples, each with its own accumulators), the parallelism is the
BLAS's own, inside each product; the loops here are O(c r k) and O(c d) per chunk.

The kernels return sums: A's sum over samples of a~ a~^T (the backend divides by N once, after
summing pieces of samples) and B with the sample weight s of ``mean`` inside, as the rows carry
it.  ``noise`` empty means the exact rows (r = k per sample); else the MLP's draws, (N, M)
uniforms for ce or (N, M, k) unit-weight sampled gradient rows for the other likelihoods, flat.
"""

from __future__ import annotations

import math

import numpy as np

from .blas import gemm
from .common import kernel, ro
from .forward_backward import backward_rows, forward, loss_head
from .workspace import carve

# Row panels of the lower-triangle updates.
PANEL = 32


@kernel
def lower_rank_update(D, rows, R, ro, beta, acc, ao, ldc):
    """acc[ao:] (D, D, row stride ldc)'s lower triangle (and the upper part of its diagonal
    panels) = beta acc + R^T R, R (rows, D) row-major at R[ro:].  Row panels: rows [b0, b0 + w)
    of the triangle, columns [0, b0 + w), one BLAS product each (numba has no syrk to call;
    with OpenBLAS, row panels ran these updates 10-20% faster than column panels,
    bench/KFAC.md)."""
    for b0 in range(0, D, PANEL):
        w = min(PANEL, D - b0)
        gemm(True, False, w, b0 + w, rows, 1.0, R, ro + b0, D, R, ro, D, beta, acc, ao + b0 * ldc, ldc)


@kernel
def augmented_rank_update(d, rows, a, ao, W, wo, beta, acc, co, scaled):
    """The same for the augmented inputs [a 1] (rows, d + 1) without forming them: a^T a into
    the leading (d, d) block, and the last row (the bias row) beta acc + (1^T a, rows).  With
    weights W[wo:] (non-empty W), sum_n w_n [a_n 1]^T [a_n 1]: the rows scaled by sqrt(w_n)
    into ``scaled`` (rows * d values) first."""
    Da = d + 1
    if W.size:
        for n in range(rows):
            r = math.sqrt(W[wo + n])
            for i in range(d):
                scaled[n * d + i] = r * a[ao + n * d + i]
        lower_rank_update(d, rows, scaled, 0, beta, acc, co, Da)
    else:
        lower_rank_update(d, rows, a, ao, beta, acc, co, Da)
    last = co + d * Da
    for i in range(d + 1):
        acc[last + i] = 0.0 if beta == 0 else beta * acc[last + i]  # never 0 * (NaN left there)
    for n in range(rows):
        wn = W[wo + n] if W.size else 1.0
        for i in range(d):
            acc[last + i] += wn * a[ao + n * d + i]
        acc[last + d] += wn


@kernel
def mirror_scaled(D, acc, ao, scale):
    """acc[ao:] (D, D) = scale * acc with the upper triangle from the lower, in place, in
    tiles (a column written element by element would miss the cache on every write)."""
    tile = 32
    for i0 in range(0, D, tile):
        for j0 in range(0, i0 + 1, tile):
            i1, j1 = min(D, i0 + tile), min(D, j0 + tile)
            if scale != 1.0:
                for i in range(i0, i1):
                    for j in range(j0, min(j1, i + 1)):
                        acc[ao + i * D + j] *= scale
            for j in range(j0, j1):
                for i in range(max(i0, j + 1), i1):
                    acc[ao + j * D + i] = acc[ao + i * D + j]


@kernel
def top_rows(k, lossc, c, Pm, po, s0, W, wo, noise, no, M, top):
    """The chunk's rows (c, r, k) at the output: exact (noise empty) the k rows of a square
    root of s H_out, the GGN's (mse sqrt(2 s/k) I; ce row r = sqrt(s p_r) (e_r - p); the
    elementwise heads sqrt(s/k l''_r) e_r; gaussian's Fisher sqrt(s/h) q_j e_mu_j and
    sqrt(s/(2h)) e_v_j, csrc/formulas.hpp's curvature_root); sampled, for ce sqrt(s / M) (p - e_y)
    with the label y the number of cumulative sums of p at or below the uniform draw (at most
    k - 1), for the other likelihoods sqrt(s / M) times the MLP's gradient rows.  s is sample
    n's weight: s0, or s0 W[wo + n] with weights (non-empty W)."""
    if noise.size == 0:
        for q in range(c * k * k):
            top[q] = 0.0
        h = k // 2
        for n in range(c):
            s = s0 * W[wo + n] if W.size else s0
            for r in range(k):
                row = (n * k + r) * k
                if lossc == 0:
                    top[row + r] = math.sqrt(2.0 * s / k)
                elif lossc == 6:
                    top[row + r] = math.sqrt(s / h) * Pm[po + n * k + r] if r < h else math.sqrt(0.5 * s / h)
                elif lossc >= 2:
                    top[row + r] = math.sqrt(s / k * Pm[po + n * k + r])
                else:
                    p = po + n * k
                    w = math.sqrt(s * Pm[p + r])
                    for j in range(k):
                        top[row + j] = -w * Pm[p + j]
                    top[row + r] += w
        return
    for n in range(c):
        w = math.sqrt((s0 * W[wo + n] if W.size else s0) / M)
        if lossc != 1:
            for q in range(n * M * k, (n + 1) * M * k):
                top[q] = w * noise[no + q]
            continue
        p = po + n * k
        for m in range(M):
            u = noise[no + n * M + m]
            label = 0
            cdf = 0.0
            for j in range(k):
                cdf += Pm[p + j]
                if u >= cdf:
                    label = j + 1
            label = min(label, k - 1)
            row = (n * M + m) * k
            for j in range(k):
                top[row + j] = w * Pm[p + j]
            top[row + label] -= w


@kernel
def accumulators(d, eigen):
    """Offsets of the accumulators, per layer, and their total size at the end: A_l (Da^2) then
    B_l (Db^2) for the factors, the (Da, Db) eigenvalues for EKFAC."""
    L = d.size - 1
    offs = np.zeros(2 * L + 1, np.int64)
    for l in range(L):
        Da, Db = d[l] + 1, d[l + 1]
        offs[2 * l + 1] = offs[2 * l] + (Da * Db if eigen else Da * Da)
        offs[2 * l + 2] = offs[2 * l + 1] + (0 if eigen else Db * Db)
    return offs


@kernel
def chunk_rows(d, r, budget):
    """Samples per chunk (csrc/common.hpp's chunk_rows): a chunk's tape, inputs and rows about
    ``budget`` values (the backend's _KFAC_CHUNK), and at least 32 samples and 4 S / (values per
    sample), S the accumulators' size, so that the products over a chunk stay tall enough to be
    efficient."""
    L = d.size - 1
    per = d[0] + d[L] * 2
    for l in range(L):
        per += d[l + 1] * 2 + d[l] + 1 + r * d[l + 1]
    S = accumulators(d, False)[2 * L]
    return max(32, max(budget // per, 4 * S // per))


@kernel
def kfac_pass_start(d, acts, off, lossc, lscale, theta, X, N, Y, labels, noise, M, C, ws, top):
    """The tape (forward pass and, for ce, the softmax), the rows per sample r and the rows'
    buffers U (C, r, d[l+1]) at uo[l] for every layer, for chunks of up to C samples."""
    L = d.size - 1
    k = d[L]
    top[0] = 0
    A, D1, D2, o = forward(d, acts, off, theta, X, N, bool(0), ws, top)
    G = carve(ws, top, 0)
    W = np.empty(0, np.float64)
    value, Pm = loss_head(d, lossc, lscale, A, o, N, Y, labels, bool(0), W, G, bool(0), ws, top)
    r = k if noise.size == 0 else M
    uo = np.zeros(L + 1, np.int64)
    for l in range(L):
        uo[l + 1] = uo[l] + min(C, N) * r * d[l + 1]
    U = carve(ws, top, uo[L])
    return A, D1, o, Pm, r, U, uo


@kernel
def chunk_inputs(d, l, X, A, o, n0):
    """(buffer, offset) of layer l's inputs of sample n0 on: X, or the tape's unit layer l."""
    if l == 0:
        return ro(X), n0 * d[0]
    return ro(A), o[l] + n0 * d[l]


@kernel
def kfac_chunk_rows(d, off, lossc, theta, D1, o, Pm, s, W, noise, M, r, n0, c, U, uo):
    """The chunk's rows at every layer: top_rows, then backward_rows."""
    L = d.size - 1
    k = d[L]
    top_rows(k, lossc, c, Pm, n0 * k, s, W, n0, noise, n0 * M * (1 if lossc == 1 else k), M, U[uo[L - 1]:uo[L]])
    backward_rows(d, off, theta, o, D1, n0, c, r, U, uo)


@kernel
def kfac_factors(d, acts, off, lossc, lscale, theta, X, N, Y, labels, s, W, a_scale, noise, M, C, acc, first,
                 last, input_factor, ws, top):
    """K-FAC's factors of the samples given, added to the accumulators ``acc`` (accumulators()
    values; overwritten when ``first``): per layer the lower triangle of the sum of a~ a~^T
    (weighted by W where it is not empty) and of B (the rows carry the sample weight ``s``, times
    W), in chunks of up to C samples.  The backend
    calls it once, or once per piece of samples (so that Python sees a pending signal between
    pieces); the ``last`` call leaves the factors in acc, mirrored and A scaled by ``a_scale``
    (1/N for the whole data).  Without ``input_factor`` the first layer's A is left alone."""
    L = d.size - 1
    A, D1, o, Pm, r, U, uo = kfac_pass_start(d, acts, off, lossc, lscale, theta, X, N, Y, labels, noise, M, C,
                                             ws, top)
    offs = accumulators(d, False)
    widest = 0
    for l in range(L):
        widest = max(widest, d[l])
    scaled = carve(ws, top, min(C, N) * widest if W.size else 0)
    for n0 in range(0, N, C):
        c = min(C, N - n0)
        kfac_chunk_rows(d, off, lossc, theta, D1, o, Pm, s, W, noise, M, r, n0, c, U, uo)
        beta = 0.0 if first and n0 == 0 else 1.0
        for l in range(L):
            a, ao = chunk_inputs(d, l, X, A, o, n0)
            if l or input_factor:
                augmented_rank_update(d[l], c, a, ao, W, n0, beta, acc, offs[2 * l], scaled)
            lower_rank_update(d[l + 1], c * r, U, uo[l], beta, acc, offs[2 * l + 1], d[l + 1])
    if last:
        for l in range(L):
            if l or input_factor:
                mirror_scaled(d[l] + 1, acc, offs[2 * l], a_scale)
            mirror_scaled(d[l + 1], acc, offs[2 * l + 1], 1.0)


@kernel
def kfac_eigen_scales(d, acts, off, lossc, lscale, theta, X, N, Y, labels, s, W, noise, M, C, Qa, qao, Qb, qbo,
                      acc, first, ws, top):
    """EKFAC's eigenvalues, flat (Da, Db) per layer as accumulators(d, True) places them: the
    sum over samples and rows of ([a 1] Qa)_i^2 (U Qb)_j^2, Qa[qao[l]:] (Da, Da) and Qb[qbo[l]:]
    (Db, Db) the bases, per chunk one product of pa = ([a 1] Qa)^2 (c, Da) and
    pu = sum_r (U Qb)^2 (c, Db), added to acc (overwritten when ``first``)."""
    L = d.size - 1
    A, D1, o, Pm, r, U, uo = kfac_pass_start(d, acts, off, lossc, lscale, theta, X, N, Y, labels, noise, M, C,
                                             ws, top)
    offs = accumulators(d, True)
    wa = wu = 0
    for l in range(L):
        wa = max(wa, d[l] + 1)
        wu = max(wu, d[l + 1])
    c0 = min(C, N)
    pa = carve(ws, top, c0 * wa)
    mu = carve(ws, top, c0 * r * wu)
    pu = carve(ws, top, c0 * wu)
    for n0 in range(0, N, C):
        c = min(C, N - n0)
        kfac_chunk_rows(d, off, lossc, theta, D1, o, Pm, s, W, noise, M, r, n0, c, U, uo)
        beta = 0.0 if first and n0 == 0 else 1.0
        for l in range(L):
            di, Da, Db = d[l], d[l] + 1, d[l + 1]
            a, ao = chunk_inputs(d, l, X, A, o, n0)
            # pa = ([a 1] Qa)^2: a Qa's first d rows, plus Qa's last row
            gemm(False, False, c, Da, di, 1.0, a, ao, di, Qa, qao[l], Da, 0.0, pa, 0, Da)
            last_row = qao[l] + di * Da
            for n in range(c):
                for i in range(Da):
                    v = pa[n * Da + i] + Qa[last_row + i]
                    pa[n * Da + i] = v * v
            # pu = sum over the r rows of each sample of (U Qb)^2
            gemm(False, False, c * r, Db, Db, 1.0, U, uo[l], Db, Qb, qbo[l], Db, 0.0, mu, 0, Db)
            for n in range(c):
                for j in range(Db):
                    pu[n * Db + j] = 0.0
                for q in range(r):
                    m = (n * r + q) * Db
                    for j in range(Db):
                        pu[n * Db + j] += mu[m + j] * mu[m + j]
            gemm(True, False, Da, Db, c, 1.0, pa, 0, Da, pu, 0, Db, beta, acc, offs[2 * l], Db)
