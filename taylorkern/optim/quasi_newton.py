"""L-BFGS: the inverse-Hessian approximation of the last ``memory`` pairs (s, y) with initial
scaling s.y / y.y, applied by the two-loop recursion (_Memory), and a strong-Wolfe line search
(so s.y > 0 and the update stays positive definite).  A pair with s.y <= eps |s| |y| is
skipped; a failed line search from a quasi-Newton direction is retried once along -g with the
memory cleared."""

from __future__ import annotations

import math

import numpy as np

from ._linesearch import strong_wolfe
from ._run import norm

try:  # the compiled recursion: one call where numpy needs four per stored pair
    from .._core import lbfgs_direction as _two_loop
except ImportError:  # pragma: no cover - exercised when the extension is absent
    _two_loop = None


def two_loop(S, Y, rho, head, k, gamma, g, alpha, out):
    """out = -H g for the k newest pairs, row (head + j) % m of S and Y being the j-th oldest
    (Nocedal & Wright, Algorithm 7.4); alpha (m,) is scratch.  The numpy form of
    ``_core.lbfgs_direction``, used where the extension is absent."""
    m = len(rho)
    out[:] = g
    for j in range(k - 1, -1, -1):
        i = (head + j) % m
        alpha[i] = rho[i] * (S[i] @ out)
        out -= alpha[i] * Y[i]
    out *= gamma
    for j in range(k):
        i = (head + j) % m
        out += (alpha[i] - rho[i] * (Y[i] @ out)) * S[i]
    out *= -1.0


class _Memory:
    """The last ``m`` pairs (s, y) in a ring of rows (no row is ever moved), with rho = 1 / s.y
    and the newest pair's gamma = s.y / y.y."""

    def __init__(self, m, F):
        self.m, self.k, self.head, self.gamma = m, 0, 0, 1.0
        self.S = np.zeros((m, F))
        self.Y = np.zeros((m, F))
        self.rho = np.zeros(m)
        self.alpha = np.zeros(m)
        self.apply = _two_loop or two_loop

    def clear(self):
        self.k = self.head = 0

    def __bool__(self):
        return self.k > 0

    def push(self, s, y, sy, yy):
        """Store a pair with s.y = sy > 0 and y.y = yy, dropping the oldest when full."""
        if self.k == self.m:
            i = self.head
            self.head = (self.head + 1) % self.m
        else:
            i = (self.head + self.k) % self.m
            self.k += 1
        self.S[i], self.Y[i], self.rho[i], self.gamma = s, y, 1.0 / sy, sy / yy

    def direction(self, g):
        """-H g."""
        out = np.empty_like(g)
        self.apply(self.S, self.Y, self.rho, self.head, self.k, self.gamma, g, self.alpha, out)
        return out


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
            slope = float(g.dot(d))
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
        sy, ynorm = float(s.dot(y)), norm(y)
        if sy > run.eps * t.snorm * ynorm and sy > 0:
            pairs.push(s, y, sy, ynorm * ynorm)
        gnorm = norm(t.g)
        run.record(t.z, t.f, gnorm, t.snorm, t.alpha)
        run.check_ftol(f, t.f)
        run.check_xtol(z, t.snorm)
        z, f, g = t.z, t.f, t.g
