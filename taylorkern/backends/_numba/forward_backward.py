"""Forward pass fused with the activations, the loss head, and backpropagation
(csrc/forward_backward.cpp, same algorithm).

Per layer l (0-based):  z_l = a_l W_l + b_l,  a_{l+1} = act(z_l) for l < L-1,  f = z_{L-1}.
Loss head (per-sample weight s = 1/N or 1):
  mse  loss = s/k sum (f - y)^2,         g_{L-1} = 2 s / k (f - y)
  ce   loss = s sum (logsumexp f - f_y),  g_{L-1} = s (softmax(f) - onehot(y))
  bce, poisson, huber, soft_l1 (elementwise): loss = s/k sum l(f_j, y_j), g_{L-1} = s/k l'(f, y),
  and Pm = l''(f); lscale is huber's delta, soft_l1's c
  gaussian: f = [mu, v] (h = k/2 pairs, v the log-variances), loss = s/h sum (v + (y - mu)^2 e^-v)/2,
  and Pm = [q, z] per pair, q = e^(-v/2), z = (y - mu) q (gauss_pair)
Backward:  e_l = g_{l+1} W_{l+1}^T (adjoint of a_{l+1}),  g_l = e_l * act'(z_l);
gradient of [W_l; b_l] = [a_l^T g_l; 1^T g_l].
Large products are BLAS calls (blas.gemm); the elementwise work is fused per row and
parallel over samples.  Tape layout: see the package docstring (unit layers, offsets o).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .activations import activate
from .blas import gemm
from .common import CHUNKS, kernel, parallel_kernel, threaded
from .workspace import carve


@kernel
def unit_offsets(d, N):
    """o[j] = start of unit layer j's block of N*d[j] values (j = 1..L); o[L+1] = total."""
    L = d.size - 1
    o = np.zeros(L + 2, np.int64)
    for j in range(1, L + 1):
        o[j + 1] = o[j] + N * d[j]
    return o


@parallel_kernel
def _activate_rows(f, N, dn, A, D1, D2, base, second):
    """Rows n < N of width dn at base: A <- act(A) in place, D1 = act', D2 = act''.  The
    rows are contiguous: one call on the whole block (or on CHUNKS blocks in parallel), not
    one per row: every view costs two atomic reference-count updates."""
    w = dn if second else 0
    if threaded(N * dn):
        nch = min(N, CHUNKS)
        for c in prange(nch):
            lo, hi = c * N // nch, (c + 1) * N // nch
            activate(f, A[base + lo * dn:base + hi * dn], D1[base + lo * dn:base + hi * dn],
                     D2[base + lo * w:base + hi * w], second)
    else:
        activate(f, A[base:base + N * dn], D1[base:base + N * dn], D2[base:base + N * w], second)


@kernel
def forward(d, acts, off, theta, X, N, second, ws, top):
    """Returns (A, D1, D2, o): activations and outputs, act', act'' (D2 only when
    ``second``, else empty), indexed by unit layer; buffers carved from the arena ws."""
    L = d.size - 1
    o = unit_offsets(d, N)
    A = carve(ws, top, o[L + 1])
    D1 = carve(ws, top, o[L])
    D2 = carve(ws, top, o[L] if second else 0)
    for l in range(L):
        di, dn = d[l], d[l + 1]
        zo = o[l + 1]
        bo = off[l] + di * dn
        broadcast_rows(N, dn, theta, bo, A, zo)
        if l == 0:
            gemm(False, False, N, dn, di, 1.0, X, 0, di, theta, off[l], dn, 1.0, A, zo, dn)
        else:
            gemm(False, False, N, dn, di, 1.0, A, o[l], di, theta, off[l], dn, 1.0, A, zo, dn)
        if l + 1 < L:
            _activate_rows(acts[l], N, dn, A, D1, D2, zo, second)
    return A, D1, D2, o


@kernel
def elem_loss(loss, f, y, c):
    """(l, l', l'') of one output of an elementwise head (csrc/formulas.hpp, elem_loss):
    bce softplus(f) - y f through e = e^-|f|, q = e / (1 + e) and c = 1 - q = 1 / (1 + e), so that
    saturated logits lose nothing; poisson e^f - y f; huber (delta c) and soft_l1 (scale c) of r = f - y, soft_l1's
    c^2 (q - 1) as r (r / (1 + q))."""
    if loss == 4:
        r = f - y
        if abs(r) <= c:
            return 0.5 * r * r, r, 1.0
        return c * (abs(r) - 0.5 * c), (c if r > 0 else -c), 0.0
    if loss == 5:
        r = f - y
        u = r / c
        q = abs(u) if abs(u) > 67108864.0 else math.sqrt(1 + u * u)
        return r * (r / (1 + q)), r / q, 1 / (q * q * q)
    if loss == 2:
        e = math.exp(-abs(f))
        c = 1 / (1 + e)
        q = e * c
        h = q * c
        lp = math.log1p(e)
        if f >= 0:
            return (1 - y) * f + lp, (1 - y) - q, h
        return lp - y * f, q - y, h
    ef = math.exp(f)
    return ef - y * f, ef - y, ef


@kernel
def mul0(a, b):
    """a * b, but 0 where a is 0 even if b is infinite (csrc/formulas.hpp, mul0)."""
    return 0.0 if a == 0 else a * b


@kernel
def gauss_pair(mu, v, y):
    """(l, q, z, dl/dmu, dl/dv) of one (mean, log-variance) pair (csrc/formulas.hpp, gauss_pair):
    q = e^(-v/2), z = (y - mu) q, l = (v + z^2) / 2, dl/dmu = -z q, dl/dv = (1 - z^2) / 2."""
    q = math.exp(-0.5 * v)
    z = mul0(y - mu, q)
    return 0.5 * (v + z * z), q, z, -mul0(z, q), 0.5 * (1 - z * z)


@kernel
def _loss_block(lo, hi, loss, lscale, k, F, fo, Y, labels, s0, W, G, Pm, rowloss, want_grad):
    for n in range(lo, hi):
        s = s0 * W[n] if W.size else s0
        if loss == 6:  # gaussian: Pm holds (q, z) of each pair
            h = k // 2
            c = s / h
            acc = 0.0
            for j in range(h):
                v, q, z, gm, gv = gauss_pair(F[fo + n * k + j], F[fo + n * k + h + j], Y[n * h + j])
                acc += v
                Pm[n * k + j] = q
                Pm[n * k + h + j] = z
                if want_grad:
                    G[fo + n * k + j] = c * gm
                    G[fo + n * k + h + j] = c * gv
            rowloss[n] = acc * W[n] if W.size else acc
        elif loss >= 2:  # elementwise heads: Pm holds l''
            c = s / k
            acc = 0.0
            for j in range(k):
                v, g, h = elem_loss(loss, F[fo + n * k + j], Y[n * k + j], lscale)
                acc += v
                Pm[n * k + j] = h
                if want_grad:
                    G[fo + n * k + j] = c * g
            rowloss[n] = acc * W[n] if W.size else acc
        elif loss == 0:
            c = 2 * s / k
            acc = 0.0
            for j in range(k):
                r = F[fo + n * k + j] - Y[n * k + j]
                acc += r * r
                if want_grad:
                    G[fo + n * k + j] = c * r
            rowloss[n] = acc * W[n] if W.size else acc
        else:
            f = fo + n * k
            p = n * k
            t = 0  # the most likely class; loss and gradient around it (reference.py)
            for j in range(1, k):
                if F[f + j] > F[f + t]:
                    t = j
            mx = F[f + t]
            rest = 0.0
            for j in range(k):
                e = math.exp(F[f + j] - mx) if j != t else 0.0
                Pm[p + j] = e
                rest += e
            inv = 1 / (1 + rest)
            for j in range(k):
                Pm[p + j] *= inv
            Pm[p + t] = inv
            y = labels[n]
            rowloss[n] = math.log1p(rest) + (mx - F[f + y])
            if W.size:
                rowloss[n] *= W[n]
            if want_grad:
                for j in range(k):
                    G[f + j] = s * Pm[p + j]
                if y == t:
                    G[f + y] = -s * (rest * inv)
                else:
                    G[f + y] -= s


@parallel_kernel
def _loss_rows(loss, lscale, N, k, F, fo, Y, labels, s, W, G, Pm, rowloss, want_grad):
    if threaded(N * k):
        nch = min(N, CHUNKS)
        for ch in prange(nch):
            _loss_block(np.int64(ch) * N // nch, (np.int64(ch) + 1) * N // nch, loss, lscale, k, F, fo, Y, labels,
                        s, W, G, Pm, rowloss, want_grad)
    else:
        _loss_block(np.int64(0), N, loss, lscale, k, F, fo, Y, labels, s, W, G, Pm, rowloss, want_grad)


@kernel
def most_likely(Pm, p, k):
    """The class of largest probability in Pm[p:p+k] (the first of ties).  ce's H_out =
    diag(p) - p p^T is formed around it: where its p_t is near 1, 1 - p_t and u_t - p.u are
    tiny differences that rounding erases (a logit gap of 40 is enough); around t they are
    sums of small terms instead (reference.py has the identities)."""
    t = 0
    for j in range(1, k):
        if Pm[p + j] > Pm[p + t]:
            t = j
    return t


@kernel
def top_and_rest(Pm, p, k):
    """(t, sum of the other p): the most likely class and 1 - p_t without cancellation, once
    per sample; 1 - p_i of the others is exact as written."""
    t = most_likely(Pm, p, k)
    rest = 0.0
    for j in range(k):
        if j != t:
            rest += Pm[p + j]
    return t, rest


@kernel
def loss_head(d, loss, lscale, A, o, N, Y, labels, mean, W, G, want_grad, ws, top):
    """Loss value (accumulated in float64) and, when ``want_grad``, G's block L; returns
    (value, Pm) with Pm = softmax(F) (N, k) for ce, l'' for the elementwise heads, (q, z) for
    gaussian (empty for mse)."""
    L = d.size - 1
    k = d[L]
    s = 1.0 / N if mean else 1.0
    Pm = carve(ws, top, N * k if loss != 0 else 0)
    rowloss = np.empty(N, np.float64)
    _loss_rows(loss, lscale, N, k, A, o[L], Y, labels, s, W, G, Pm, rowloss, want_grad)
    total = 0.0  # serial: deterministic whatever the thread count
    for n in range(N):
        total += rowloss[n]
    return total * s / (1 if loss == 1 else k // 2 if loss == 6 else k), Pm


@kernel
def _mul(X, Y, Z):
    for i in range(Z.size):
        Z[i] = X[i] * Y[i]


@parallel_kernel
def _mul_rows(N, w, X, xo, Y, yo, Z, zo):
    """Z[zo + q] = X[xo + q] * Y[yo + q] for q < N*w, in CHUNKS row blocks in parallel."""
    if threaded(N * w):
        nch = min(N, CHUNKS)
        for c in prange(nch):
            lo, hi = c * N // nch * w, (c + 1) * N // nch * w
            _mul(X[xo + lo:xo + hi], Y[yo + lo:yo + hi], Z[zo + lo:zo + hi])
    else:
        _mul(X[xo:xo + N * w], Y[yo:yo + N * w], Z[zo:zo + N * w])


@kernel
def backward(d, off, theta, o, N, G, E, D1):
    """G blocks 1..L-1 and E from G's block L."""
    L = d.size - 1
    for l in range(L - 1, 0, -1):
        di, dn = d[l], d[l + 1]
        gemm(False, True, N, di, dn, 1.0, G, o[l + 1], dn, theta, off[l], dn, 0.0, E, o[l], di)
        _mul_rows(N, di, E, o[l], D1, o[l], G, o[l])


@kernel
def colsum(N, w, X, xo, out, oo):
    """out[oo:oo+w] = sum over the N rows of width w at X[xo:] (through one 2-D view, so
    that LLVM vectorizes the loop, which it does not on flat offsets)."""
    acc = out[oo:oo + w]
    M = X[xo:xo + N * w].reshape(N, w)
    for j in range(w):
        acc[j] = 0
    for n in range(N):
        for j in range(w):
            acc[j] += M[n, j]


@kernel
def broadcast_rows(N, w, src, so, X, xo):
    """Each of the N rows of width w at X[xo:] = src[so:so+w]."""
    v = src[so:so + w]
    M = X[xo:xo + N * w].reshape(N, w)
    for n in range(N):
        for j in range(w):
            M[n, j] = v[j]


@kernel
def param_grad(d, off, X, A, o, N, G, grad):
    L = d.size - 1
    for l in range(L):
        di, dn = d[l], d[l + 1]
        if l == 0:
            gemm(True, False, di, dn, N, 1.0, X, 0, di, G, o[1], dn, 0.0, grad, off[0], dn)
        else:
            gemm(True, False, di, dn, N, 1.0, A, o[l], di, G, o[l + 1], dn, 0.0, grad, off[l], dn)
        colsum(N, dn, G, o[l + 1], grad, off[l] + di * dn)


@parallel_kernel
def scale_rows(c, rows, cols, X, xo, S, so):
    """Per sample n < c: each of its `rows` rows of X (c, rows, cols) scaled elementwise by
    S[so + n cols : so + (n+1) cols] (e.g. act'(z) of that sample)."""
    if threaded(c * rows * cols):
        for n in prange(c):
            for r in range(rows):
                x = xo + (n * rows + r) * cols
                for j in range(cols):
                    X[x + j] *= S[so + n * cols + j]
    else:
        for n in range(c):
            for r in range(rows):
                x = xo + (n * rows + r) * cols
                for j in range(cols):
                    X[x + j] *= S[so + n * cols + j]


@kernel
def backward_rows(d, off, theta, o, D1, n0, N, r, U, uo):
    """Backpropagates r rows per sample through the network's Jacobian: U's layer L-1 block
    (N, r, k) at uo[L-1] given; block l-1 = (block l W_l^T) * act'(z_{l-1}), each (N, r, d[l]),
    for samples [n0, n0+N) of the tape.  With identity rows at L-1 this is d f / d z_l."""
    L = d.size - 1
    for l in range(L - 1, 0, -1):
        di, dn = d[l], d[l + 1]
        gemm(False, True, N * r, di, dn, 1.0, U, uo[l], dn, theta, off[l], dn, 0.0, U, uo[l - 1], di)
        scale_rows(N, r, di, U, uo[l - 1], D1, o[l] + n0 * di)


# ---------------------------------------------------------------- entry points
@kernel
def predict(d, acts, off, theta, X, N, ws, top):
    top[0] = 0
    A, D1, D2, o = forward(d, acts, off, theta, X, N, bool(0), ws, top)
    L = d.size - 1
    k = d[L]
    return A[o[L]:o[L] + N * k].copy().reshape(N, k)


@kernel
def loss(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, ws, top):
    top[0] = 0
    A, D1, D2, o = forward(d, acts, off, theta, X, N, bool(0), ws, top)
    G = carve(ws, top, 0)
    value, Pm = loss_head(d, lossc, lscale, A, o, N, Y, labels, mean, W, G, bool(0), ws, top)
    return value


@kernel
def loss_and_grad(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, ws, top):
    top[0] = 0
    L = d.size - 1
    A, D1, D2, o = forward(d, acts, off, theta, X, N, bool(0), ws, top)
    G = carve(ws, top, o[L + 1])
    value, Pm = loss_head(d, lossc, lscale, A, o, N, Y, labels, mean, W, G, bool(1), ws, top)
    E = carve(ws, top, o[L])
    backward(d, off, theta, o, N, G, E, D1)
    grad = np.empty(off[L], theta.dtype)
    param_grad(d, off, X, A, o, N, G, grad)
    return value, grad
