"""Bookkeeping shared by every method: counted calls into the network over the trainable
coordinates, the best iterate, the history, and every stopping rule.

Methods work on ``z``, the trainable parameters (all of theta when no mask is given), kept
in the network's dtype so that the point evaluated is exactly the point returned; steps,
gradients and curvature are handed to the methods in float64.  A method stops by raising
:class:`Stop`; :func:`taylorkern.optim.minimize` turns it into the result.

Index letters: P parameters, F trainable ones (F = P without a mask), N samples.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time

import numpy as np

from ..data import Data
from ..model import _all_finite
from ._result import HISTORY_KEYS, Iterate, OptimizeResult, Status

# Consecutive non-finite trial points a damped / trust-region / line-search method backs
# off from before it gives up (each back-off shrinks the step at least 4-fold).
MAX_NONFINITE_TRIALS = 30


# The methods that factorize an F x F matrix every iteration (newton, gauss-newton, lm) run
# with BLAS's own thread pool held to one thread while F <= this: at these orders threads
# cost more than they save, and on a busy machine far more (bench/RESULTS.md).  One
# threadpoolctl limit per run, restored at the end; the kernels hold BLAS to one thread inside
# their own OpenMP regions anyway.
SERIAL_BLAS_MAX_ORDER = 512
_controller = None


def serial_blas():
    """A context holding BLAS to one thread (restored afterwards), or a no-op."""
    global _controller
    try:
        if _controller is None:
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController()
        return _controller.limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl unable to inspect this process
        return contextlib.nullcontext()


def _resolution_sum(net, theta, e, X, Y) -> float:
    """Run.loss_resolution's sum over the rows X, Y (mse: of the outputs' squared rounding
    errors; ce: of each sample's largest |output|); a module function, so that a data object
    can send it to where the rows are."""
    F = np.abs(np.asarray(net.predict(theta, X), dtype=np.float64))
    if net.loss_name == "mse":
        return float(np.sum((e * (F + np.abs(np.asarray(Y, dtype=np.float64)).reshape(F.shape))) ** 2))
    return float(np.sum(F.max(axis=1)))


class Stop(Exception):
    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def norm(v) -> float:
    """The 2-norm of a vector, as float64 (np.linalg.norm's formula, without its call overhead;
    ndarray.dot costs half of ``@`` on vectors of a few hundred values)."""
    v = v if v.dtype == np.float64 else v.astype(np.float64)
    return math.sqrt(v.dot(v))


def finite(x) -> bool:
    return _all_finite(x) if isinstance(x, np.ndarray) else bool(np.isfinite(x).all())


class Run:
    """One optimizer run: see the module docstring."""

    def __init__(self, net, theta0, X, Y, method, *, mask, max_iter, max_time, gtol, ftol,
                 xtol, target, callback, progress, sample_weight=None):
        self.t0 = time.perf_counter()
        self.net, self.method = net, method
        self.dtype = net.dtype
        self.eps = float(np.finfo(net.dtype).eps)
        self.max_iter, self.max_time, self.target = max_iter, max_time, target
        self.gtol = gtol
        # Below the dtype's resolution a relative change or step is noise: the floors.
        self.ftol = max(ftol, self.eps) if ftol > 0 else 0.0
        self.xtol = xtol
        self.xtol_floor = max(xtol, self.eps) if xtol > 0 else 0.0
        self.callback = callback
        self.nfev = self.njev = self.nhev = 0
        self.nit = 0
        self.nonfinite_trials = 0

        # The first call validates theta0, X, Y and the weights with the network's own messages.
        f0, g0 = net.loss_and_grad(theta0, X, Y, sample_weight=sample_weight)
        self.nfev += 1
        self.njev += 1
        if isinstance(X, Data):  # every call sums over its chunks (taylorkern.data)
            self.data, self.X, self.Y, self.N = X, X, None, X.num_rows
        else:
            self.data = None
            self.X = np.ascontiguousarray(X, dtype=net.dtype)
            N = self.X.shape[0]
            if net.loss_name == "ce":
                self.Y = np.ascontiguousarray(Y, dtype=np.int64)
            else:
                self.Y = np.ascontiguousarray(np.asarray(Y, dtype=net.dtype).reshape(N, net.target_width))
            self.N = N
        # float64 (N,), or None where the weights change nothing (MLP._check_weights)
        self.w = net._check_weights(sample_weight, self.N, "mean")
        self.w_full = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        # a copy: the caller's array is never written (np.asarray first: torch's __array__ takes no copy=)
        theta0 = np.array(np.asarray(theta0), dtype=net.dtype)
        self.P = theta0.shape[0]

        if mask is None:
            self.idx = None
            self.base = None
            z0 = theta0
        else:
            m = np.asarray(mask)
            if m.dtype != np.bool_ or m.shape != (self.P,):
                raise ValueError(f"mask: expected a boolean array of shape ({self.P},) "
                                 f"(True = trainable), got dtype {m.dtype} and shape {m.shape}")
            if not m.any():
                raise ValueError("mask: no parameter is trainable (all False)")
            self.idx = np.flatnonzero(m)
            self.base = theta0
            z0 = theta0[self.idx].copy()
        self.F = z0.shape[0]

        self.z0 = z0
        self.f0 = float(f0)
        self.g0 = self._restrict(g0)
        self.best_z = z0.copy()
        self.best_f = self.f0 if math.isfinite(self.f0) else math.inf
        self.best_gnorm = norm(self.g0)
        self.hist = {k: [] for k in HISTORY_KEYS}
        self._append(self.f0, self.best_gnorm, 0.0, math.nan, True)

        self.bar = None            # a tqdm bar, or
        self.print_progress = False  # a line per second on stderr without tqdm
        self._last_print = -math.inf
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.print_progress = True
            else:
                self.bar = tqdm(total=max_iter, desc=f"minimize[{method}]", leave=False, file=sys.stderr)

    # ---------------------------------------------------------------- coordinates
    def theta(self, z) -> np.ndarray:
        """Full parameters (P,) for trainable ones z (F,)."""
        if self.idx is None:
            return z
        t = self.base.copy()
        t[self.idx] = z
        return t

    def _restrict(self, v):
        """A full (P,) or (P, m) gradient/product restricted to the trainable rows, float64."""
        v = np.asarray(v, dtype=np.float64)
        return v if self.idx is None else v[self.idx]

    def _expand(self, v):
        """A float64 direction (F,) as a full (P,) direction with zeros on frozen parameters."""
        if self.idx is None:
            return v
        out = np.zeros(self.P)
        out[self.idx] = v
        return out

    def step(self, z, p):
        """z + p rounded to the network's dtype, and the norm of the step actually taken."""
        z_new, _, snorm = self.advance(z, p)
        return z_new, snorm

    def advance(self, z, p):
        """z + p rounded to the network's dtype, the step actually taken (float64) and its norm."""
        if z.dtype == np.float64:
            z_new = z + p
            s = z_new - z
        else:
            z_new = (z.astype(np.float64) + p).astype(self.dtype)
            s = z_new.astype(np.float64) - z
        return z_new, s, math.sqrt(s.dot(s))

    def trial(self, z, p):
        """Evaluate z + p: (z_new, the step taken (float64), its norm, loss, float64 gradient,
        whether both are finite), with the run's count of consecutive non-finite trials updated."""
        z_new, s, snorm = self.advance(z, p)
        f_new, g_new = self.loss_and_grad(z_new)
        ok = math.isfinite(f_new) and g_new is not None and finite(g_new)
        if ok:
            self.finite_trial()
        else:
            self.nonfinite_trial()
        return z_new, s, snorm, f_new, g_new, ok

    # ---------------------------------------------------------------- counted calls
    def _trusted(self, kind, z):
        """MLP._trusted on the run's own arrays (checked once), with the run's weights when it has
        any (without them, exactly the unweighted call)."""
        if self.w is None:
            return self.net._trusted(kind, self.theta(z), self.X, self.Y)
        return self.net._trusted(kind, self.theta(z), self.X, self.Y, "mean", self.w)

    def loss_and_grad(self, z, batch=None):
        """(loss, float64 gradient over F), or (nan, None) when z itself is not finite."""
        if not finite(z):
            return math.nan, None
        if batch is None:  # the run's own arrays, checked once (MLP._trusted)
            f, g = self._trusted("loss_and_grad", z)
        elif self.w_full is not None and not self.w_full[batch].any():
            # a mini-batch whose samples all weigh 0 carries only the l2 term
            theta = self.theta(z)
            l2 = self.net.l2
            f, g = 0.5 * l2 * float(np.dot(theta, theta)), l2 * theta
        else:
            f, g = self.net.loss_and_grad(self.theta(z), self.X[batch], self.Y[batch],
                                          sample_weight=None if self.w_full is None else self.w_full[batch])
        self.nfev += 1
        self.njev += 1
        return f, self._restrict(g)

    def loss(self, z):
        if not finite(z):
            return math.nan
        self.nfev += 1
        return self._trusted("loss", z)

    def loss_grad_ggn(self, z):
        """(loss, float64 gradient over F, float64 (F, F) GGN) from one call, or (nan, None, None)
        when z is not finite."""
        if not finite(z):
            return math.nan, None, None
        self.net._check_memory("the GGN", 2.0 * self.P * self.P)
        f, g, G = self._trusted("loss_grad_ggn", z)
        self.nfev += 1
        self.njev += 1
        self.nhev += 1
        return f, self._restrict(g), self._restrict_matrix(G)

    def curvature_vp(self, kind, z, v):
        """H v or G v over the trainable coordinates, float64."""
        self.nhev += 1
        fn = self.net.hvp if kind == "hessian" else self.net.ggn_vp
        return self._restrict(fn(self.theta(z), self.X, self.Y, self._expand(v).astype(self.dtype),
                                 sample_weight=self.w))

    def curvature(self, kind, z):
        """The (F, F) Hessian or GGN over the trainable coordinates, float64."""
        self.nhev += 1
        self.net._check_memory(f"the {kind}", 2.0 * self.P * self.P)
        return self._restrict_matrix(self._trusted(kind, z))

    def ggn_factor(self, z):
        """B (N*dL, F), float64, with B^T B + l2 I = the GGN over the trainable coordinates
        (MLP.ggn_factor), and that l2 (0 when the loss has none)."""
        self.nhev += 1
        B = np.asarray(self.net.ggn_factor(self.theta(z), self.X, self.Y, sample_weight=self.w), dtype=np.float64)
        l2 = self.net.l2 if self.net._l2_active("mean") else 0.0
        return (B if self.idx is None else B[:, self.idx]), l2

    def _restrict_matrix(self, M):
        M = np.asarray(M, dtype=np.float64)
        return M if self.idx is None else M[np.ix_(self.idx, self.idx)]

    # ---------------------------------------------------------------- record and stop
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _append(self, f, gnorm, snorm, damping, accepted):
        h = self.hist
        h["loss"].append(f)
        h["grad_norm"].append(gnorm)
        h["step_norm"].append(snorm)
        h["damping"].append(damping)
        h["accepted"].append(bool(accepted))
        h["time"].append(self.elapsed())

    def record(self, z, f, gnorm, snorm, damping, accepted=True):
        """One finished iteration: history, best iterate, progress, callback and target."""
        self.nit += 1
        self._append(f, gnorm, snorm, damping, accepted)
        if accepted and math.isfinite(f) and f < self.best_f:
            self.best_f, self.best_gnorm = f, gnorm
            self.best_z = z.copy()
        self._progress(f, gnorm)
        if self.callback is not None:
            info = Iterate(self.nit, self.theta(z).copy(), f, gnorm, snorm, damping, bool(accepted),
                           self.elapsed())
            if self.callback(info) is True:
                raise Stop(Status.CALLBACK, f"stopped by the callback at iteration {self.nit}")
        if self.target is not None and accepted and f <= self.target:
            raise Stop(Status.TARGET, f"loss {f:.6g} reached the target {self.target:.6g}")

    def _progress(self, f, gnorm):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{f:.4e}", refresh=False)
        elif self.print_progress:
            now = self.elapsed()
            if now - self._last_print >= 1.0:
                self._last_print = now
                print(f"minimize[{self.method}] it {self.nit:6d}  loss {f:.6e}  |g| {gnorm:.3e}",
                      file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def check_budget(self):
        """Before starting another iteration."""
        if self.nit >= self.max_iter:
            raise Stop(Status.MAX_ITER, f"reached max_iter = {self.max_iter}")
        if self.max_time is not None and self.elapsed() >= self.max_time:
            raise Stop(Status.MAX_TIME, f"time budget max_time = {self.max_time:g} s spent "
                                        f"after {self.nit} iterations")

    def check_gtol(self, gnorm):
        if gnorm <= self.gtol:
            raise Stop(Status.GTOL, f"gradient norm {gnorm:.3g} <= gtol = {self.gtol:g}")

    def check_ftol(self, f_old, f_new):
        """After an accepted step."""
        if abs(f_old - f_new) <= self.ftol * abs(f_old):
            raise Stop(Status.FTOL, f"relative loss change {abs(f_old - f_new) / max(abs(f_old), 1e-300):.3g}"
                                    f" <= ftol = {self.ftol:g}")

    def check_xtol(self, z, snorm, accepted=True):
        """After a step of norm snorm from z.  A step that was rejected (or a trust radius
        that shrank) is held to xtol floored at the dtype's epsilon: below that, theta
        cannot change; an accepted step, which lowered the loss, only to xtol itself."""
        xtol = self.xtol if accepted else self.xtol_floor
        if snorm <= xtol * (norm(z) + xtol):
            self._nonfinite_neighbourhood()
            raise Stop(Status.XTOL, f"{'step' if accepted else 'rejected step / trust radius'} "
                                    f"{snorm:.3g} <= xtol = {xtol:g} relative to |theta|")

    def check_finite(self, what, *values):
        """Stop when any of an accepted point's values is NaN/Inf (None counts as not finite)."""
        for v in values:
            if v is None or not finite(v):
                raise Stop(Status.NONFINITE, f"{what} is not finite at iteration {self.nit}; "
                                             f"returning the best theta (loss {self.best_f:.6g})")

    def _nonfinite_neighbourhood(self):
        """A method backed off to nothing: if the trials it backed off from were NaN/Inf, that
        is the reason to report, not a small step."""
        if self.nonfinite_trials:
            raise Stop(Status.NONFINITE, f"the loss was not finite at the last {self.nonfinite_trials} "
                                         f"trial points, down to the smallest step; returning the "
                                         f"best theta (loss {self.best_f:.6g})")

    def nonfinite_trial(self):
        """A trial point's loss was NaN/Inf: the method backs off, up to a limit."""
        self.nonfinite_trials += 1
        if self.nonfinite_trials > MAX_NONFINITE_TRIALS:
            raise Stop(Status.NONFINITE, f"the loss was not finite at {MAX_NONFINITE_TRIALS} "
                                         f"consecutive trial points; returning the best theta "
                                         f"(loss {self.best_f:.6g})")

    def finite_trial(self):
        self.nonfinite_trials = 0

    def loss_resolution(self, z) -> float:
        """The size of the loss's rounding noise at z in this dtype, from the magnitude of the
        network's outputs: a loss below it cannot be lowered reliably (mse: the outputs'
        rounding errors squared; ce: their rounding errors)."""
        e = 10.0 * self.eps
        self.nfev += 1
        if self.data is not None:
            n, total = self.data.map_sum(functools.partial(_resolution_sum, self.net, self.theta(z), e))
        else:
            n, total = self.N, _resolution_sum(self.net, self.theta(z), e, self.X, self.Y)
        if self.net.loss_name == "mse":
            return total / (n * self.net.num_outputs)
        return e * (1.0 + total / n)

    def line_search_failed(self, z, f, predicted):
        """No step length gave a decrease.  Success when the decrease the model predicts for the
        full step, or the loss itself, is below the loss's rounding level in this dtype;
        failure otherwise."""
        self._nonfinite_neighbourhood()
        floor = 100.0 * self.eps * max(abs(f), np.finfo(np.float64).tiny)
        if abs(predicted) <= floor:
            raise Stop(Status.FTOL, f"no decrease resolvable: predicted decrease {abs(predicted):.3g} "
                                    f"is below the {self.dtype.name} rounding level of the loss")
        resolution = self.loss_resolution(z)
        if abs(f) <= resolution:
            raise Stop(Status.FTOL, f"no decrease resolvable: the loss {f:.3g} is at the "
                                    f"{self.dtype.name} resolution of the outputs ({resolution:.3g})")
        raise Stop(Status.NO_PROGRESS, f"line search found no decrease at iteration {self.nit + 1} "
                                       f"(predicted decrease {abs(predicted):.3g})")

    def finish(self, status: Status, message: str) -> OptimizeResult:
        self.close()
        hist = {k: np.asarray(v, dtype=bool if k == "accepted" else np.float64)
                for k, v in self.hist.items()}
        return OptimizeResult(
            theta=self.theta(self.best_z).copy(), loss=float(self.best_f), grad_norm=float(self.best_gnorm),
            nit=self.nit, nfev=self.nfev, njev=self.njev, nhev=self.nhev, status=status,
            message=message, method=self.method, history=hist, time=self.elapsed())
