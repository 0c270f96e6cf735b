"""Methods on the quadratic model  m(p) = L + g.p + 1/2 p.B p,  B the Hessian H or the GGN G.

taylor-step   p = -alpha g with alpha = g.g / g.B g (one product), Armijo safeguard.
newton        exact trust-region step from an eigendecomposition of B (default H): a descent
              method on indefinite curvature that leaves saddle points along the lowest
              eigenvector; converged only where g is small AND H has no negative eigenvalue.
gauss-newton  p = -G^+ g with a Tikhonov filter (a singular G is fine), Armijo backtracking
              from the full step.
lm            Levenberg-Marquardt on the GGN: (G + lambda D) p = -g by Cholesky (eigen-solve
              fallback), lambda adapted by the gain ratio (Nielsen) or x0.1 / x10 (classic).
              For mse, G = 2 J_r^T J_r and g = 2 J_r^T r with the residuals r, so this is the
              classical algorithm; for ce it is the same damping on the GGN of the softmax.
              The model decrease of a Cholesky step is (lambda p.D p - g.p) / 2, with no
              product with G: besides its cost, that keeps numpy's threaded BLAS asleep
              between the kernel calls (docs/threading.md, "Idle threads: OpenBLAS's").
newton-cg     Steihaug truncated CG on H or G products inside a trust region; no P x P matrix.

All linear algebra is float64 whatever the network's dtype.  The gain ratio
rho = (actual decrease) / (model decrease) drives the trust radius / damping; a trial point
with a NaN/Inf loss is a rejected step.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from ._linesearch import backtracking
from ._result import Status
from ._run import Stop, norm
from ._subproblem import steihaug_cg, trust_region_eig


def _gnorm(g):
    return norm(g)


def _start(run):
    z, f, g = run.z0, run.f0, run.g0
    run.check_finite("the initial loss or gradient", f, g)
    return z, f, g


def _trust_step(run, z, f, g, gnorm, p, pred, boundary, delta, max_radius, eta):
    """One trust-region step p whose model predicted decrease ``pred``: try it, update the
    radius (quartered to the step on a poor model, doubled on a good one that hit the
    boundary), accept it when rho = actual / predicted decrease > eta, record the iteration
    and check the stopping rules.  Returns (z, f, g, delta, accepted)."""
    z_new, _, snorm, f_new, g_new, finite = run.trial(z, p)
    rho = (f - f_new) / pred if finite and pred > 0 else -math.inf
    if rho < 0.25:
        delta = 0.25 * float(np.linalg.norm(p))
    elif rho > 0.75 and boundary:
        delta = min(2.0 * delta, max_radius)
    z_old, accepted = z, rho > eta
    if accepted:
        f_old = f
        z, f, g = z_new, f_new, g_new
        run.record(z, f, _gnorm(g), snorm, delta)
        if rho > 0.25:
            run.check_ftol(f_old, f)
    else:
        run.record(z, f, gnorm, 0.0, delta, accepted=False)
        run.check_xtol(z, delta, accepted=False)
    run.check_xtol(z_old, snorm, accepted=accepted)
    return z, f, g, delta, accepted



# ------------------------------------------------------------------------ taylor-step
def taylor_step(run, *, curvature, c1):
    z, f, g = _start(run)
    alpha_prev = None
    while True:
        gnorm = _gnorm(g)
        run.check_gtol(gnorm)
        run.check_budget()
        gg = gnorm * gnorm
        Bg = run.curvature_vp(curvature, z, g)
        gBg = float(g @ Bg)
        if gBg > 0 and math.isfinite(gBg):
            alpha = gg / gBg                      # minimiser of the model along -g
        elif alpha_prev is not None:
            alpha = 2.0 * alpha_prev              # no positive curvature: model unbounded
        else:
            alpha = 1.0 / gnorm                   # ... a unit step to start from
        d = -g
        t = backtracking(run, z, f, -gg, d, alpha=alpha, c1=c1)
        if t is None:
            run.line_search_failed(z, f, alpha * gg)
        alpha_prev = t.alpha
        run.record(t.z, t.f, _gnorm(t.g), t.snorm, t.alpha)
        run.check_ftol(f, t.f)
        run.check_xtol(z, t.snorm)
        z, f, g = t.z, t.f, t.g


# ------------------------------------------------------------------------ newton
def newton(run, *, curvature, radius, max_radius, eta):
    z, f, g = _start(run)
    delta = radius
    lam = Q = None
    while True:
        if lam is None:
            B = run.curvature(curvature, z)
            run.check_finite(f"the {curvature}", B)
            lam, Q = np.linalg.eigh(B)
        gnorm = _gnorm(g)
        neg_tol = math.sqrt(run.eps) * max(abs(lam[0]), abs(lam[-1]))
        if gnorm <= run.gtol and lam[0] >= -neg_tol:
            raise Stop(Status.GTOL, f"gradient norm {gnorm:.3g} <= gtol = {run.gtol:g} and no negative "
                                    f"curvature (lowest eigenvalue {lam[0]:.3g})")
        # (a small gradient with a clearly negative eigenvalue is a saddle: keep going)
        run.check_budget()
        if delta is None:  # first step: the full Newton step where the model has a minimum
            delta = 1.0
            if lam[0] > 0:
                delta = max(float(np.linalg.norm((Q.T @ g) / lam)) * (1 + 1e-9), np.finfo(np.float64).tiny)
        p, pred, boundary = trust_region_eig(lam, Q, g, delta, eps=run.eps)
        if not boundary and pred <= run.ftol * abs(f):
            raise Stop(Status.FTOL, f"the Newton step's predicted decrease {pred:.3g} is below "
                                    f"ftol = {run.ftol:g} times the loss")
        z, f, g, delta, accepted = _trust_step(run, z, f, g, gnorm, p, pred, boundary, delta, max_radius, eta)
        if accepted:
            lam = None


# ------------------------------------------------------------------------ gauss-newton
def gauss_newton(run, *, shift, c1):
    z, f, g = _start(run)
    while True:
        gnorm = _gnorm(g)
        run.check_gtol(gnorm)
        run.check_budget()
        G = run.curvature("ggn", z)
        run.check_finite("the GGN", G)
        lam, Q = np.linalg.eigh(G)
        # Tikhonov-filtered inverse: 1/lam becomes lam / (lam^2 + mu^2), mu = shift * max lam.
        # Where lam >> mu that is 1/lam to a relative (mu/lam)^2 (a well-conditioned G is
        # solved exactly, a quadratic in one step); directions G barely sees (lam <~ mu)
        # move by at most |g_i| / (2 mu), so a near-singular G cannot fling theta away.
        mu = (math.sqrt(run.eps) if shift is None else shift) * max(float(lam[-1]), 0.0)
        lam_p = np.maximum(lam, 0.0)
        denom = lam_p * lam_p + mu * mu
        filt = np.divide(lam_p, denom, out=np.zeros_like(lam_p), where=denom > 0)
        p = -(Q @ ((Q.T @ g) * filt))
        slope = float(g @ p)
        if not slope < -1e-3 * run.eps * gnorm * float(np.linalg.norm(p)) or not math.isfinite(slope):
            # g (numerically) outside the range of G: fall back to a scaled gradient step
            p = -g / max(lam[-1], run.eps)
            slope = float(g @ p)
        t = backtracking(run, z, f, slope, p, alpha=1.0, c1=c1)
        if t is None:
            run.line_search_failed(z, f, slope)
        run.record(t.z, t.f, _gnorm(t.g), t.snorm, t.alpha)
        run.check_ftol(f, t.f)
        run.check_xtol(z, t.snorm)
        z, f, g = t.z, t.f, t.g


# ------------------------------------------------------------------------ lm
_POTRF, _POTRS = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potrs"), dtype=np.float64)


def _cholesky_solve(A, b):
    """A^{-1} b for a symmetric positive definite A held in a Fortran-ordered buffer that it
    overwrites (LAPACK called directly); None when the factorization fails."""
    c, info = _POTRF(A, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        return None
    x, info = _POTRS(c, b, lower=1)
    return x if info == 0 and math.isfinite(float(np.sum(x))) else None


def _eigen_solve(A, b):
    """A^{-1} b on A's well-determined eigenspace: for a positive definite A that rounding made
    Cholesky reject (a tiny damping on a singular G)."""
    w, V = np.linalg.eigh(A)
    keep = w > np.finfo(np.float64).eps * max(w[-1], 0.0) * len(w)
    return V[:, keep] @ ((V[:, keep].T @ b) / w[keep])


class _ParameterSpace:
    """The GGN as an (F, F) matrix: p = -(G + lam D)^{-1} g by a Cholesky factorization of F x F
    into a buffer allocated once per run.  ``exact``: whether the last solve was the Cholesky
    one (not the eigenspace fallback)."""

    def __init__(self, F):
        self.A = np.empty((F, F), order="F")
        self.diag = self.A.reshape(-1, order="F")[::F + 1]  # a view of A's diagonal
        self.G = None
        self.exact = False

    def set(self, G):
        self.G = G

    def diagonal(self):
        return self.G.diagonal()

    def times(self, p):
        return self.G @ p

    def solve(self, lam, D, g):
        A = self.A
        np.copyto(A, self.G)  # G is symmetric: its C order is the transpose LAPACK reads, the same
        self.diag += lam * D
        x = _cholesky_solve(A, g)
        self.exact = x is not None
        if x is None:
            np.copyto(A, self.G)
            self.diag += lam * D
            x = _eigen_solve(A, g)
        return -x


class _SampleSpace:
    """The GGN as B^T B + l2 I with B (n, F) = MLP.ggn_factor, n = N dL < F rows: the damped system
    (B^T B + Delta) p = -g, Delta = l2 + lam D diagonal, solved through the n x n system
    I + B Delta^{-1} B^T (Woodbury's identity) instead of the F x F one."""

    def __init__(self, n):
        self.A = np.empty((n, n), order="F")
        self.diag = self.A.reshape(-1, order="F")[::n + 1]
        self.B = None
        self.l2 = 0.0
        self.exact = False

    def set(self, factor):
        self.B, self.l2 = factor

    def diagonal(self):
        return np.einsum("ij,ij->j", self.B, self.B) + self.l2

    def times(self, p):
        return self.B.T @ (self.B @ p) + self.l2 * p

    def solve(self, lam, D, g):
        B = self.B
        inv = 1.0 / (self.l2 + lam * D)  # Delta^{-1}, a scalar or (F,)
        BD = B * inv  # B Delta^{-1}
        A = self.A
        np.matmul(BD, B.T, out=A.T)  # A is symmetric: filling its transpose fills it
        self.diag += 1.0
        u = BD @ g
        y = _cholesky_solve(A, u)
        self.exact = y is not None
        if y is None:
            np.matmul(BD, B.T, out=A.T)
            self.diag += 1.0
            y = _eigen_solve(A, u)
        return -(inv * g - BD.T @ y)


def _scaling(curv, scaling):
    if scaling != "marquardt":
        return 1.0
    dg = curv.diagonal()
    return np.maximum(dg, 1e-12 * max(float(dg.max()), np.finfo(np.float64).tiny))


def lm(run, *, damping, update, scaling, eta, space="auto"):
    """The damped system is solved in parameter space (F x F) or, when the samples' outputs are
    fewer than the parameters (N dL < F: wide networks, few samples), in sample space (N dL
    square, from MLP.ggn_factor); ``space`` forces either.  In parameter space each trial point
    is evaluated with the loss, gradient and GGN of one call (MLP.loss_grad_ggn: one sweep over
    the samples where the backend fuses them), so that an accepted step holds the next
    iteration's GGN; after a rejection, while the damping is still being raised, trials are
    evaluated by their loss alone and the gradient and GGN of the point finally accepted are
    taken then.  In sample space trials take the loss and gradient, and an accepted point its
    factor."""
    z, f, g = _start(run)
    n = run.N * run.net.num_outputs
    samples = space == "samples" or (space == "auto" and n < run.F and run.data is None)
    if samples:
        curv = _SampleSpace(n)
        curv.set(run.ggn_factor(z))
        run.check_finite("the GGN factor", curv.B)
    else:
        curv = _ParameterSpace(run.F)
        curv.set(run.curvature("ggn", z))
        run.check_finite("the GGN", curv.G)
    dg = curv.diagonal()
    scale = float(np.max(dg)) if dg.size else 1.0
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    lam_min, lam_max = 1e-15 * scale, 1e16 * scale
    lam = max(damping * scale, lam_min)
    nu = 2.0
    fused = not samples  # in parameter space, after an accepted step: expect this one to be too
    while True:
        gnorm = math.sqrt(float(g @ g))
        run.check_gtol(gnorm)
        run.check_budget()
        D = _scaling(curv, scaling)
        p = curv.solve(lam, D, g)
        gp = float(g @ p)
        if curv.exact:  # (G + lam D) p = -g: the model's decrease without a product with G, a sum
            pred = 0.5 * (lam * float(p @ (D * p)) - gp)  # of two terms >= 0 (Madsen et al. 2004)
        else:
            pred = -(gp + 0.5 * float(p @ curv.times(p)))
        z_old = z
        z_new, snorm = run.step(z, p)
        G_new = None
        if fused:
            f_new, g_new, G_new = run.loss_grad_ggn(z_new)
        elif samples:
            f_new, g_new = run.loss_and_grad(z_new)
        else:
            f_new, g_new = run.loss(z_new), None
        finite = math.isfinite(f_new) and (g_new is None or math.isfinite(float(g_new @ g_new)))
        if finite:
            run.finite_trial()
        else:
            run.nonfinite_trial()
        rho = (f - f_new) / pred if finite and pred > 0 else -math.inf
        if update == "classic":
            accepted = finite and f_new < f
            lam = lam * 0.1 if accepted else lam * 10.0
        else:  # Nielsen's gain-ratio update
            accepted = rho > eta
            if accepted:
                lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
            else:
                lam *= nu
                nu *= 2.0
        lam = max(lam, lam_min)
        if accepted:
            if samples:
                G_new = run.ggn_factor(z_new)
                run.check_finite("the GGN factor", G_new[0])
            elif G_new is None:
                f_new, g_new, G_new = run.loss_grad_ggn(z_new)
            run.check_finite("the loss or gradient", f_new, g_new)
            f_old = f
            z, f, g = z_new, f_new, g_new
            curv.set(G_new)
            run.record(z, f, math.sqrt(float(g @ g)), snorm, lam)
            run.check_ftol(f_old, f)
            run.check_xtol(z_old, snorm)
            if not samples:
                run.check_finite("the GGN", G_new)
        else:
            run.record(z, f, gnorm, 0.0, lam, accepted=False)
            run.check_xtol(z, snorm, accepted=False)
            if lam > lam_max:
                raise Stop(Status.NO_PROGRESS, f"damping grew past {lam_max:.3g} without a decrease")
        fused = accepted and not samples


# ------------------------------------------------------------------------ newton-cg
def newton_cg(run, *, curvature, radius, max_radius, eta, max_cg, cg_tol):
    z, f, g = _start(run)
    delta = radius
    max_cg = run.F if max_cg is None else max_cg
    while True:
        gnorm = _gnorm(g)
        run.check_gtol(gnorm)
        run.check_budget()
        # forcing term: |r| <= min(0.5, sqrt|g|) |g| gives superlinear convergence
        tol = (min(0.5, math.sqrt(gnorm)) if cg_tol is None else cg_tol) * gnorm
        p, pred, boundary, _ = steihaug_cg(lambda v: run.curvature_vp(curvature, z, v), g, delta, tol,
                                           max_cg)
        if not math.isfinite(pred):
            run.check_finite(f"the {curvature}-vector product", np.nan)
        if not boundary and pred <= run.ftol * abs(f):
            raise Stop(Status.FTOL, f"the CG step's predicted decrease {pred:.3g} is below "
                                    f"ftol = {run.ftol:g} times the loss")
        z, f, g, delta, _ = _trust_step(run, z, f, g, gnorm, p, pred, boundary, delta, max_radius, eta)
