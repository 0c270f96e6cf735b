"""Trust-region subproblems: min_p  g.p + 1/2 p.B p  subject to |p| <= radius.

``trust_region_eig`` solves it exactly from an eigendecomposition B = Q diag(lam) Q^T
(Moré & Sorensen's characterisation: p = -(B + s I)^{-1} g with s >= max(0, -lam_1) and
s (radius - |p|) = 0, including the "hard case" where g has no component along the lowest
eigenvector and the step follows that eigenvector to the boundary — which is how Newton
leaves a saddle point where g = 0).

``steihaug_cg`` is the truncated conjugate-gradient method of Steihaug and Toint: only
products B v, stopping at the boundary or on negative curvature.

Both return (p, predicted decrease = -(g.p + 1/2 p.B p), whether p is on the boundary).
"""

from __future__ import annotations

import math

import numpy as np


def _norm(v):
    """np.linalg.norm of a float64 vector without its call overhead (the secular iteration
    below takes tens of norms per step)."""
    return math.sqrt(v.dot(v))


def trust_region_eig(lam, Q, g, radius, eps=np.finfo(np.float64).eps):
    """lam (F,) ascending eigenvalues and Q (F, F) eigenvectors of B; g (F,); radius > 0.

    eps: the relative accuracy of B (its dtype's), for deciding when components of g are
    negligible (the hard case)."""
    ph, pred, boundary = _eigenbasis_step(lam, Q.T @ g, radius, eps)
    return Q @ ph, pred, boundary


def eigenbasis_step(lam, gh, radius, eps):
    """The subproblem in B's eigenbasis, gh = Q^T g: (ph, predicted decrease, on boundary).  The
    numpy form of ``_core.trust_region_eigenbasis``, used where the extension is absent."""
    lam1 = float(lam[0])
    scale = max(abs(lam1), abs(float(lam[-1])), np.finfo(np.float64).tiny)
    gnorm = _norm(gh)

    def pred(ph):
        return -(float(gh @ ph) + 0.5 * float(lam @ (ph * ph)))

    if lam1 > 0:
        ph = -gh / lam
        if _norm(ph) <= radius:
            return ph, pred(ph), False

    lo = max(0.0, -lam1)

    def pnorm(s):
        return _norm(gh / (lam + s))

    if lam1 <= 0:
        # Hard case when even just above -lam_1 the step is inside the region: the components
        # of g along the lowest eigenvector(s) are (numerically) zero.
        near = lam <= lam1 + 10 * eps * scale
        s_probe = lo + 10 * eps * scale
        far = ~near
        ph = np.zeros_like(gh)
        ph[far] = -gh[far] / (lam[far] - lam1)
        hard = (_norm(gh[near]) <= 10 * eps * max(gnorm, scale * radius)
                or pnorm(s_probe) <= radius)
        if hard and _norm(ph) <= radius:
            tau = math.sqrt(max(radius * radius - float(ph @ ph), 0.0))
            # either sign is a solution; take the one that does not climb along g
            ph[0] += -tau if gh[0] > 0 else tau
            return ph, pred(ph), True

    # Ordinary case: find s > lo with |p(s)| = radius.  |p(s)| decreases from > radius
    # (at lo) to 0; for s >= |g|/radius - lam_1 it is <= radius.  Safeguarded Newton on the
    # nearly linear 1/|p(s)| - 1/radius, with bisection on a bracket [a, b].
    a = lo
    b = max(lo, gnorm / radius - lam1)
    b = b + max(1e-12 * b, 1e-300)
    for _ in range(60):  # rounding only
        if pnorm(b) <= radius:
            break
        b = 2 * b + 1e-300
    s, gh2 = b, gh * gh
    for _ in range(200):
        d = lam + s
        p = gh / d
        n = _norm(p)
        if abs(n - radius) <= 1e-12 * radius:
            break
        if n > radius:
            a = s
        else:
            b = s
        dn = float((gh2 / (d * d * d)).sum()) / n  # -d|p|/ds
        s_new = s + (n - radius) / radius * n / dn if dn > 0 else math.nan  # Newton on 1/|p|
        if not (a < s_new < b):
            s_new = 0.5 * (a + b)
        if s_new == s:
            break
        s = s_new
    ph = -gh / (lam + s)
    return ph, pred(ph), True


try:  # the compiled form: one call where numpy needs tens per step
    from .._core import trust_region_eigenbasis as _eigenbasis_step
except ImportError:  # pragma: no cover - exercised when the extension is absent
    _eigenbasis_step = eigenbasis_step


def steihaug_cg(Bv, g, radius, tol, max_iter):
    """Bv: v (F,) -> B v; stop when |r| <= tol, on the boundary, on negative curvature or
    after max_iter products.  Returns (p, predicted decrease, on boundary, products used)."""
    z = np.zeros_like(g)
    Bz = np.zeros_like(g)
    r = g.copy()
    d = -r
    rr = float(r @ r)
    n_products = 0

    def to_boundary(z, d):
        # tau >= 0 with |z + tau d| = radius
        dd, zd, zz = float(d @ d), float(z @ d), float(z @ z)
        return (-zd + math.sqrt(max(zd * zd + dd * (radius * radius - zz), 0.0))) / dd

    def pred(p, Bp):
        return -(float(g @ p) + 0.5 * float(p @ Bp))

    if math.sqrt(rr) <= tol:
        return z, 0.0, False, 0
    for _ in range(max_iter):
        Bd = Bv(d)
        n_products += 1
        dBd = float(d @ Bd)
        if not math.isfinite(dBd):
            break
        if dBd <= 0:  # negative curvature: follow d to the boundary
            tau = to_boundary(z, d)
            p, Bp = z + tau * d, Bz + tau * Bd
            return p, pred(p, Bp), True, n_products
        alpha = rr / dBd
        z_new = z + alpha * d
        if np.linalg.norm(z_new) >= radius:
            tau = to_boundary(z, d)
            p, Bp = z + tau * d, Bz + tau * Bd
            return p, pred(p, Bp), True, n_products
        z, Bz = z_new, Bz + alpha * Bd
        r = r + alpha * Bd
        rr_new = float(r @ r)
        if math.sqrt(rr_new) <= tol:
            break
        d = -r + (rr_new / rr) * d
        rr = rr_new
    return z, pred(z, Bz), False, n_products
