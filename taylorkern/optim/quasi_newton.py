"""L-BFGS: the two-loop recursion over the last ``memory`` pairs (s, y), initial scaling
s.y / y.y, and a strong-Wolfe line search (so s.y > 0 and the update stays positive
definite).  A pair with s.y <= eps |s| |y| is skipped; a failed line search from a
quasi-Newton direction is retried once along -g with the memory cleared."""

from __future__ import annotations

import collections
import math

import numpy as np

from ._linesearch import strong_wolfe


def _two_loop(g, pairs):
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * float(s @ q)
        alphas.append(a)
        q -= a * y
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        b = rho * float(y @ q)
        q += (a - b) * s
    return -q


def lbfgs(run, *, memory, c1, c2, max_ls):
    z, f, g = run.z0, run.f0, run.g0
    run.check_finite("the initial loss or gradient", f, g)
    pairs = collections.deque(maxlen=memory)
    while True:
        gnorm = float(np.linalg.norm(g))
        run.check_gtol(gnorm)
        run.check_budget()
        t = None
        for _attempt in range(2):
            if pairs:
                d = _two_loop(g, list(pairs))
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
        s = t.z.astype(np.float64) - z
        y = t.g - g
        sy = float(s @ y)
        if sy > run.eps * float(np.linalg.norm(s)) * float(np.linalg.norm(y)) and sy > 0:
            pairs.append((s, y, 1.0 / sy))
        run.record(t.z, t.f, float(np.linalg.norm(t.g)), t.snorm, t.alpha)
        run.check_ftol(f, t.f)
        run.check_xtol(z, t.snorm)
        z, f, g = t.z, t.f, t.g
