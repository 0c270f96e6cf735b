"""Products H V and G V for V of shape (P, m): Pearlmutter's R-op, all m directions at once
(csrc/rop.cpp: the same formulas and tangent layout; one tape of all N samples, and act''
always stored for the Hessian product).

Forward tangents (direction c; V_l = [VW_l; Vb_l] is layer l's slice of V):
  Rz_l = Ra_l W_l + a_l VW_l + Vb_l,      Ra_{l+1} = act'(z_l) * Rz_l      (Ra_0 = 0)
Backward, starting from Rg_{L-1} = H_out Rz_{L-1} (mse: 2s/k Rf; ce: s (p*r - p (p.r))):
  R{grad [W_l; b_l]} = [a_l^T Rg_l + Ra_l^T g_l ; 1^T Rg_l]
  Re_{l-1} = Rg_l W_l^T + g_l VW_l^T,   Rg_{l-1} = Re_{l-1} * act'(z_{l-1}) + e_{l-1} * act''(z_{l-1}) * Rz_{l-1}
The GGN product G V = J^T H_out J V keeps only the first term of each line.

Layout: tangents are (N, m, d) so that every product above is ONE matrix product with N*m
rows; V's layer slices are transposed once to Vt_l[i][c][j] (and Vtt_l[j][c][i]) so that
a_l VW_l and g_l VW_l^T are single products too.  Tangent blocks follow the tape's unit
layers, m times wider: Rz of z_l at m*o[l+1], Ra of a_l at m*o[l].
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .blas import gemm
from .common import CHUNKS, kernel, parallel_kernel, threaded
from .forward_backward import backward, broadcast_rows, colsum, forward, loss_head, most_likely, mul0
from .workspace import carve


@parallel_kernel
def next_ra(N, m, dn, D1, do, Rz, zo, Ra, ao):
    """Ra = act' * Rz of a hidden layer's tangents:
    Ra[ao + (n m + c) dn + j] = D1[do + n dn + j] * Rz[zo + (n m + c) dn + j]."""
    if threaded(N * m * dn):
        for n in prange(N):
            for c in range(m):
                q = (n * m + c) * dn
                for j in range(dn):
                    Ra[ao + q + j] = D1[do + n * dn + j] * Rz[zo + q + j]
    else:
        for n in range(N):
            for c in range(m):
                q = (n * m + c) * dn
                for j in range(dn):
                    Ra[ao + q + j] = D1[do + n * dn + j] * Rz[zo + q + j]


@kernel
def _out_rows(lo, hi, m, k, s0, W, Pm, Rz, zo, Rg):
    """s p_j (u_j - p.u), around the most likely class t: (u_j - u_t) - sum_i p_i (u_i - u_t)
    (no cancellation where p_t is near 1: forward_backward.most_likely)."""
    for n in range(lo, hi):
        s = s0 * W[n] if W.size else s0
        t = most_likely(Pm, n * k, k)
        for c in range(m):
            r = zo + (n * m + c) * k
            ut = Rz[r + t]
            dot = 0.0
            for j in range(k):
                dot += Pm[n * k + j] * (Rz[r + j] - ut)
            for j in range(k):
                Rg[(n * m + c) * k + j] = s * Pm[n * k + j] * ((Rz[r + j] - ut) - dot)


@parallel_kernel
def out_curvature(loss, N, m, k, s, W, Pm, Rz, zo, Rg, gn):
    """Rg = H_out Rf for the output tangents Rf = Rz[zo:] (N, m, k); sample n's weight s W[n]
    where weights are given (W not empty), else s.  gaussian: per pair (q, z) in Pm, the
    Hessian's s/h [[q^2, z q], [z q, z^2/2]] or, with gn, the Fisher's s/h diag(q^2, 1/2)."""
    if loss == 6:
        h = k // 2
        for n in range(N):
            c2 = (s * W[n] if W.size else s) / h
            for c in range(m):
                r = (n * m + c) * k
                for j in range(h):
                    q, z = Pm[n * k + j], Pm[n * k + h + j]
                    xm, xv = Rz[zo + r + j], Rz[zo + r + h + j]
                    if gn:
                        Rg[r + j] = c2 * q * q * xm
                        Rg[r + h + j] = 0.5 * c2 * xv
                    else:
                        zq = mul0(z, q)
                        Rg[r + j] = c2 * (q * q * xm + zq * xv)
                        Rg[r + h + j] = c2 * (zq * xm + 0.5 * z * z * xv)
    elif loss == 0 and W.size:
        for n in range(N):
            c2 = 2 * (s * W[n]) / k
            for i in range(n * m * k, (n + 1) * m * k):
                Rg[i] = c2 * Rz[zo + i]
    elif loss >= 2:  # elementwise heads: s/k diag(l''), l'' in Pm
        for n in range(N):
            c2 = (s * W[n] if W.size else s) / k
            for c in range(m):
                for j in range(k):
                    i = (n * m + c) * k + j
                    Rg[i] = c2 * Pm[n * k + j] * Rz[zo + i]
    elif loss == 0:
        c2 = 2 * s / k
        for i in range(N * m * k):
            Rg[i] = c2 * Rz[zo + i]
    elif threaded(N * m * k):
        nch = min(N, CHUNKS)
        for ch in prange(nch):
            _out_rows(np.int64(ch) * N // nch, (np.int64(ch) + 1) * N // nch, m, k, s, W, Pm, Rz, zo, Rg)
    else:
        _out_rows(np.int64(0), N, m, k, s, W, Pm, Rz, zo, Rg)


@kernel
def _back_rows(lo, hi, m, di, gn, Re, D1, D2, E, do, Rz, zo, Rg):
    for n in range(lo, hi):
        for c in range(m):
            q = (n * m + c) * di
            for i in range(di):
                if gn:
                    Rg[q + i] = Re[q + i] * D1[do + n * di + i]
                else:
                    Rg[q + i] = (Re[q + i] * D1[do + n * di + i]
                                 + E[do + n * di + i] * D2[do + n * di + i] * Rz[zo + q + i])


@parallel_kernel
def next_rg(N, m, di, gn, Re, D1, D2, E, do, Rz, zo, Rg):
    """Rg = Re * act' (+ e * act'' * Rz for the Hessian), rows of unit layer l at do."""
    if threaded(N * m * di):
        nch = min(N, CHUNKS)
        for ch in prange(nch):
            _back_rows(np.int64(ch) * N // nch, (np.int64(ch) + 1) * N // nch, m, di, gn, Re, D1, D2, E, do, Rz, zo, Rg)
    else:
        _back_rows(np.int64(0), N, m, di, gn, Re, D1, D2, E, do, Rz, zo, Rg)


@kernel
def forward_tangents(d, off, theta, X, A, o, D1, N, m, Vt, vto, Rz, Ra):
    """The forward tangents: Rz_l = Ra_l W_l + a_l VW_l + Vb_l and Ra_{l+1} = act'(z_l) Rz_l."""
    L = d.size - 1
    for l in range(L):
        di, dn = d[l], d[l + 1]
        zo = m * o[l + 1]
        broadcast_rows(N, m * dn, Vt, vto[l] + di * m * dn, Rz, zo)
        if l == 0:
            gemm(False, False, N, m * dn, di, 1.0, X, 0, di, Vt, vto[l], m * dn, 1.0, Rz, zo, m * dn)
        else:
            gemm(False, False, N, m * dn, di, 1.0, A, o[l], di, Vt, vto[l], m * dn, 1.0, Rz, zo, m * dn)
            gemm(False, False, N * m, dn, di, 1.0, Ra, m * o[l], di, theta, off[l], dn, 1.0, Rz, zo, dn)
        if l + 1 < L:
            next_ra(N, m, dn, D1, o[l + 1], Rz, zo, Ra, m * o[l + 1])


@kernel
def layer_rgrad(d, off, X, A, o, G, N, m, gn, l, Rg, Ra, acc, tmp, out):
    """R{grad} of layer l, [a_l^T Rg_l + Ra_l^T g_l ; 1^T Rg_l] (the cross term Ra_l^T g_l for the
    Hessian, l > 0): acc[i][c][j], then scattered into out[(off + i dn + j) m + c]."""
    di, dn = d[l], d[l + 1]
    if l == 0:
        gemm(True, False, di, m * dn, N, 1.0, X, 0, di, Rg, 0, m * dn, 0.0, acc, 0, m * dn)
    else:
        gemm(True, False, di, m * dn, N, 1.0, A, o[l], di, Rg, 0, m * dn, 0.0, acc, 0, m * dn)
    colsum(N, m * dn, Rg, 0, acc, di * m * dn)
    if not gn and l > 0:
        # tmp[c][i][j] = sum_n Ra_l[n][c][i] g_l[n][j]
        gemm(True, False, m * di, dn, N, 1.0, Ra, m * o[l], m * di, G, o[l + 1], dn, 0.0, tmp, 0, dn)
        for c in range(m):
            for i in range(di):
                for j in range(dn):
                    acc[(i * m + c) * dn + j] += tmp[(c * di + i) * dn + j]
    ob = off[l] * m
    for i in range(di + 1):
        for j in range(dn):
            for c in range(m):
                out[ob + (i * dn + j) * m + c] = acc[(i * m + c) * dn + j]


@kernel
def rg_below(d, off, theta, o, D1, D2, E, G, N, m, gn, l, Vtt, vto, Rz, Rg, Re):
    """One layer down from Rg_l, l > 0: Re_{l-1} = Rg_l W_l^T (+ g_l VW_l^T for the Hessian), then
    Rg_{l-1} by next_rg."""
    di, dn = d[l], d[l + 1]
    gemm(False, True, N * m, di, dn, 1.0, Rg, 0, dn, theta, off[l], dn, 0.0, Re, 0, di)
    if not gn:
        gemm(False, False, N, m * di, dn, 1.0, G, o[l + 1], dn, Vtt, vto[l], m * di, 1.0, Re, 0, m * di)
    next_rg(N, m, di, gn, Re, D1, D2, E, o[l], Rz, m * o[l], Rg)


@kernel
def rop(d, acts, off, lossc, lscale, theta, X, N, Y, labels, mean, W, V, m, gn, ws, top):
    """out (P, m) = H V (gn False) or G V (gn True), V flat (P*m,)."""
    L = d.size - 1
    k = d[L]
    P = off[L]
    top[0] = 0
    A, D1, D2, o = forward(d, acts, off, theta, X, N, not gn, ws, top)
    G = carve(ws, top, o[L + 1])
    value, Pm = loss_head(d, lossc, lscale, A, o, N, Y, labels, mean, W, G, not gn, ws, top)
    E = carve(ws, top, o[L] if not gn else 0)
    if not gn:
        backward(d, off, theta, o, N, G, E, D1)
    s = 1.0 / N if mean else 1.0
    dmax = 0
    for l in range(L + 1):
        dmax = max(dmax, d[l])

    # Transposed slices of V: Vt[l][i][c][j] (i <= din, bias row last); Vtt[l][j][c][i] (i < din).
    vto = np.zeros(L + 1, np.int64)
    for l in range(L):
        vto[l + 1] = vto[l] + (d[l] + 1) * m * d[l + 1]
    Vt = carve(ws, top, vto[L])
    Vtt = carve(ws, top, vto[L] if not gn else 0)  # layer l's slice at the same offset
    for l in range(L):
        di, dn = d[l], d[l + 1]
        v = off[l] * m
        for i in range(di + 1):
            for j in range(dn):
                for c in range(m):
                    Vt[vto[l] + (i * m + c) * dn + j] = V[v + (i * dn + j) * m + c]
        if not gn and l > 0:
            for i in range(di):
                for j in range(dn):
                    for c in range(m):
                        Vtt[vto[l] + (j * m + c) * di + i] = V[v + (i * dn + j) * m + c]

    Rz = carve(ws, top, m * o[L + 1])
    Ra = carve(ws, top, m * o[L])
    forward_tangents(d, off, theta, X, A, o, D1, N, m, Vt, vto, Rz, Ra)
    Rg = carve(ws, top, N * m * dmax)
    Re = carve(ws, top, N * m * dmax)
    out_curvature(lossc, N, m, k, s, W, Pm, Rz, m * o[L], Rg, gn)
    out = np.empty(P * m, theta.dtype)
    acc = carve(ws, top, (dmax + 1) * m * dmax)
    tmp = carve(ws, top, m * dmax * dmax)
    for l in range(L - 1, -1, -1):  # backward: R{grad} of layer l, then Rg one layer down
        layer_rgrad(d, off, X, A, o, G, N, m, gn, l, Rg, Ra, acc, tmp, out)
        if l > 0:
            rg_below(d, off, theta, o, D1, D2, E, G, N, m, gn, l, Vtt, vto, Rz, Rg, Re)
    return out
