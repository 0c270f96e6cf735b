"""L-BFGS: the inverse-Hessian approximation of the last ``memory`` pairs (s, y) with initial
scaling s.y / y.y (in the compact form: _Memory), and a strong-Wolfe line search (so s.y > 0
and the update stays positive definite).  A pair with s.y <= eps |s| |y| is skipped; a failed line search from a
quasi-Newton direction is retried once along -g with the memory cleared."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg.lapack

from ._linesearch import strong_wolfe
from ._run import norm

_TRTRS = scipy.linalg.lapack.get_lapack_funcs("trtrs", dtype=np.float64)


class _Memory:
    """The last ``m`` pairs (s, y) and the inverse-Hessian approximation they define, in the
    compact form of Byrd, Nocedal and Schnabel (1994): with S, Y the pairs as rows (oldest
    first), R the upper triangle of S Y^T (R_ij = s_i.y_j, i <= j), D its diagonal and
    gamma = s.y / y.y of the newest pair,

        H g = gamma g + S^T c_S + Y^T c_Y,   t = R^{-1} (S g),
        c_S = R^{-T} (D t + gamma (Y Y^T) t - gamma (Y g)),   c_Y = -gamma t,

    the same H as the two-loop recursion, from a few products with the (2m, F) rows and two
    triangular solves of order m: a fixed, small number of numpy calls per iteration however
    large m is.  S Y^T and Y Y^T are kept and updated by one row and column per pair."""

    def __init__(self, m, F):
        self.m, self.k = m, 0
        self.W = np.zeros((2 * m, F))  # rows 0..m-1: s, rows m..2m-1: y
        self.S, self.Y = self.W[:m], self.W[m:]
        self.SY = np.zeros((m, m))
        self.YY = np.zeros((m, m))
        self.coef = np.zeros(2 * m)

    def clear(self):
        self.k = 0

    def __bool__(self):
        return self.k > 0

    def push(self, s, y):
        m, k = self.m, self.k
        if k == m:  # drop the oldest pair
            self.S[:-1] = self.S[1:]
            self.Y[:-1] = self.Y[1:]
            self.SY[:-1, :-1] = self.SY[1:, 1:]
            self.YY[:-1, :-1] = self.YY[1:, 1:]
            k -= 1
        self.S[k], self.Y[k] = s, y
        self.k = k = k + 1
        self.SY[k - 1, :k] = self.Y[:k] @ s
        self.SY[:k, k - 1] = self.S[:k] @ y
        self.YY[k - 1, :k] = self.YY[:k, k - 1] = self.Y[:k] @ y

    def direction(self, g):
        """-H g."""
        m, k = self.m, self.k
        SY, yy = self.SY[:k, :k], self.YY[k - 1, k - 1]
        gamma = SY[k - 1, k - 1] / yy
        ab = self.W @ g
        a, b = ab[:k], ab[m:m + k]
        # R is SY's upper triangle: trtrs reads only that triangle of SY
        t, _ = _TRTRS(SY, a, lower=0)
        u = np.diagonal(SY) * t + gamma * (self.YY[:k, :k] @ t - b)
        cs, _ = _TRTRS(SY, u, lower=0, trans=1)
        coef = self.coef
        coef.fill(0.0)
        coef[:k], coef[m:m + k] = cs, -gamma * t
        return -(gamma * g + coef @ self.W)


def lbfgs(run, *, memory, c1, c2, max_ls):
    z, f, g = run.z0, run.f0, run.g0
    run.check_finite("the initial loss or gradient", f, g)
    pairs = _Memory(memory, run.F)
    gnorm = norm(g)
    while True:
        run.check_gtol(gnorm)
        run.check_budget()
        t = None
        for _attempt in range(2):
            if pairs:
                d = pairs.direction(g)
                alpha0 = 1.0
            else:
                d = -g
                alpha0 = min(1.0, 1.0 / gnorm)
            slope = float(g @ d)
            if not (slope < 0 and math.isfinite(slope)):
                pairs.clear()
                d, slope, alpha0 = -g, -gnorm * gnorm, min(1.0, 1.0 / gnorm)
            t = strong_wolfe(run, z, f, slope, d, alpha=alpha0, c1=c1, c2=c2, max_steps=max_ls)
            if t is not None or not pairs:
                break
            pairs.clear()
        if t is None:
            run.line_search_failed(z, f, slope)
        s = t.step
        y = t.g - g
        sy = float(s @ y)
        if sy > run.eps * t.snorm * norm(y) and sy > 0:
            pairs.push(s, y)
        gnorm = norm(t.g)
        run.record(t.z, t.f, gnorm, t.snorm, t.alpha)
        run.check_ftol(f, t.f)
        run.check_xtol(z, t.snorm)
        z, f, g = t.z, t.f, t.g
