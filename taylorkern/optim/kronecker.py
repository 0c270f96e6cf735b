"""kfac: K-FAC's damped natural-gradient step with its length from the quadratic model.

Each iteration takes K-FAC's factors at the current point (taylorkern.kfac.factors), the
direction d = -(K + lambda I)^-1 g (exact for the damped Kronecker approximation, by the
factors' eigendecompositions), and the step alpha d with alpha minimising the damped quadratic
model along d: alpha = -g.d / (d.G d + lambda d.d), G the exact GGN (one product, l2 included).
The damping lambda is adapted from the gain ratio rho = (actual decrease) / (the undamped
model's predicted decrease), as Levenberg-Marquardt does: multiplied by 2/3 when rho > 3/4, by
3/2 when rho < 1/4; a step with rho <= eta is rejected and retried from the same factors with
lambda x 4.  lambda starts at ``damping`` times the approximation's mean diagonal.  The first
layer's A (the inputs' outer products) is the same at every point, so it and its eigendecomposition,
the widest ones for a wide input, are computed once (MLP.kfac_factors's input_factor=False, then
KFAC.reuse_eigh_of_A).

With a ``mask`` the factors and the direction are taken over all parameters (the gradient
zero on the frozen ones) and the direction is restricted to the trainable ones.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kfac as _kfac
from ._result import Status
from ._run import Stop, norm


def _scale(K):
    """The approximation's mean diagonal entry, the damping's unit."""
    total = sum(float(np.trace(A)) * float(np.trace(B)) for A, B in zip(K.A, K.B)) + K.l2 * K.num_params
    return total / K.num_params


def kfac(run, *, damping, kind, seed, mc_samples, eta):
    z, f, g = run.z0, run.f0, run.g0
    run.check_finite("the initial loss or gradient", f, g)
    rng = np.random.default_rng(seed)
    lam = None
    K = K_old = None
    while True:
        gnorm = norm(g)
        run.check_gtol(gnorm)
        run.check_budget()
        if K is None:
            run.nhev += 1
            draw = int(rng.integers(2**63)) if kind == "mc" else None
            if K_old is None:
                K = _kfac.factors(run.net, run.theta(z), run.X, run.Y, kind=kind, seed=draw, mc_samples=mc_samples,
                                  sample_weight=run.w)
            else:  # the first layer's A (the inputs') is the same every time: kept, with its eigh
                K = _kfac._factors_keeping_inputs(K_old, run.net, run.theta(z), run.X, run.Y, seed=draw)
            scale = _scale(K)
            scale = scale if scale > 0 and math.isfinite(scale) else 1.0
            if lam is None:
                lam = damping * scale
                lam_min, lam_max = 1e-15 * scale, 1e16 * scale
        d = -run._restrict(K.inverse_mv(run._expand(g).astype(np.float64), lam))
        Gd = run.curvature_vp("ggn", z, d)
        gd, dGd, dd = float(g @ d), float(d @ Gd), float(d @ d)
        if not (math.isfinite(gd) and math.isfinite(dGd)):
            raise Stop(Status.NONFINITE, "the K-FAC direction or its curvature is not finite")
        if gd >= 0 or dd == 0:
            raise Stop(Status.NO_PROGRESS, "the K-FAC direction is not a descent direction")
        alpha = -gd / (dGd + lam * dd) if dGd + lam * dd > 0 else 1.0
        pred = -(alpha * gd + 0.5 * alpha * alpha * dGd)
        z_new, _, snorm, f_new, g_new, finite = run.trial(z, alpha * d)
        rho = (f - f_new) / pred if finite and pred > 0 else -math.inf
        if rho > eta:
            f_old, z_old = f, z
            z, f, g = z_new, f_new, g_new
            run.record(z, f, norm(g), snorm, lam)
            run.check_ftol(f_old, f)
            run.check_xtol(z_old, snorm)
            if rho > 0.75:
                lam *= 2.0 / 3.0
            elif rho < 0.25:
                lam *= 1.5
            lam = max(lam, lam_min)
            K_old, K = K, None  # new factors at the new point
        else:
            run.record(z, f, gnorm, 0.0, lam, accepted=False)
            run.check_xtol(z, snorm, accepted=False)
            lam *= 4.0
            if lam > lam_max:
                raise Stop(Status.NO_PROGRESS, f"damping grew past {lam_max:.3g} without a decrease")
