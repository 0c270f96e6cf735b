"""Line searches along a descent direction d from z: Armijo backtracking and strong Wolfe.

Both evaluate ``phi(a) = (loss, gradient)`` at z + a*d through the run's counted calls and
treat a NaN/Inf loss as "too far" (they shrink).  They return the accepted step length with
the loss and gradient there, so that the method never evaluates the same point twice, or
None when no acceptable step was found.
"""

from __future__ import annotations

import math


class Trial:
    """A step length with the point, loss and gradient it gave, and the step actually taken
    (float64) with its norm."""

    __slots__ = ("alpha", "z", "f", "g", "step", "snorm", "slope")

    def __init__(self, alpha, z, f, g, step, snorm, slope):
        self.alpha, self.z, self.f, self.g, self.step, self.snorm, self.slope = alpha, z, f, g, step, snorm, slope


def _evaluate(run, z, d, alpha):
    z_new, step, snorm, f, g, ok = run.trial(z, alpha * d)
    if not ok:
        f = math.inf
    slope = float(g.dot(d)) if ok else math.nan
    return Trial(alpha, z_new, f, g, step, snorm, slope)


def backtracking(run, z, f0, slope0, d, alpha=1.0, c1=1e-4, max_steps=40):
    """Armijo: the first alpha in alpha, then shrinking by quadratic interpolation (clipped to
    [0.1, 0.5] of the previous one), with f(z + alpha d) <= f0 + c1 alpha slope0."""
    for _ in range(max_steps):
        t = _evaluate(run, z, d, alpha)
        if t.snorm == 0.0:  # the step no longer changes z in this dtype
            return None
        if t.f <= f0 + c1 * alpha * slope0:
            return t
        if math.isfinite(t.f):
            # minimiser of the parabola through f0, slope0 and f(alpha)
            denom = 2.0 * (t.f - f0 - slope0 * alpha)
            a_new = -slope0 * alpha * alpha / denom if denom > 0 else 0.5 * alpha
            alpha = min(max(a_new, 0.1 * alpha), 0.5 * alpha)
        else:
            alpha *= 0.25
    return None


def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic interpolating f and f' at a and b, or None."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    rad = d1 * d1 - da * db
    if not math.isfinite(rad) or rad < 0:
        return None
    d2 = math.copysign(math.sqrt(rad), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0:
        return None
    x = b - (b - a) * (db + d2 - d1) / denom
    return x if math.isfinite(x) else None


def strong_wolfe(run, z, f0, slope0, d, alpha=1.0, c1=1e-4, c2=0.9, max_steps=30, alpha_max=1e10):
    """Nocedal & Wright, Algorithms 3.5 and 3.6 (bracketing, then zoom by safeguarded cubic
    interpolation).  Returns a Trial meeting the strong Wolfe conditions; failing that, the
    best trial with sufficient decrease; failing that, None."""
    best = None

    def consider(t):
        nonlocal best
        if t.f <= f0 + c1 * t.alpha * slope0 and (best is None or t.f < best.f):
            best = t

    prev = Trial(0.0, z, f0, None, None, 0.0, slope0)
    steps = 0
    lo = hi = None
    while steps < max_steps:
        t = _evaluate(run, z, d, alpha)
        steps += 1
        consider(t)
        if t.f > f0 + c1 * alpha * slope0 or (steps > 1 and t.f >= prev.f) or not math.isfinite(t.f):
            lo, hi = prev, t
            break
        if abs(t.slope) <= -c2 * slope0:
            return t
        if t.slope >= 0:
            lo, hi = t, prev
            break
        prev = t
        alpha = min(2.0 * alpha, alpha_max)
    else:
        return best

    # zoom: lo has sufficient decrease and the lowest loss so far; the minimiser lies between
    while steps < max_steps:
        a, b = lo.alpha, hi.alpha
        width = abs(b - a)
        if width <= 1e-16 * max(a, b):
            break
        x = None
        if all(math.isfinite(v) for v in (lo.f, lo.slope, hi.f, hi.slope)):
            x = _cubic_min(a, lo.f, lo.slope, b, hi.f, hi.slope)
        lo_end, hi_end = min(a, b) + 0.1 * width, max(a, b) - 0.1 * width
        if x is None or not (lo_end <= x <= hi_end):
            x = 0.5 * (a + b)
        t = _evaluate(run, z, d, x)
        steps += 1
        consider(t)
        if t.snorm == 0.0:
            break
        if not math.isfinite(t.f) or t.f > f0 + c1 * x * slope0 or t.f >= lo.f:
            hi = t
        else:
            if abs(t.slope) <= -c2 * slope0:
                return t
            if t.slope * (hi.alpha - lo.alpha) >= 0:
                hi = lo
            lo = t
    return best
