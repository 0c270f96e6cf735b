"""``minimize``: one entry point, every method, options checked up front."""

from __future__ import annotations

import contextlib

import numpy as np

from .._validate import boolean, check_curvature, check_net, choice, integer, real
from ..data import Data
from . import first_order, kronecker, quasi_newton, second_order
from ._result import Status
from ._run import SERIAL_BLAS_MAX_ORDER, Run, Stop, serial_blas

COMMON = dict(max_iter=1000, max_time=None, gtol=1e-10, ftol=1e-12, xtol=1e-12, target=None,
              callback=None, mask=None, progress=False, sample_weight=None)

_BATCH = dict(batch_size=None, seed=None)
METHOD_OPTIONS = {
    "gd": dict(lr=0.01, **_BATCH),
    "momentum": dict(lr=0.01, momentum=0.9, nesterov=False, **_BATCH),
    "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, **_BATCH),
    "taylor-step": dict(curvature="hessian", c1=1e-4),
    "newton": dict(curvature="hessian", radius=None, max_radius=1e3, eta=0.1),
    "gauss-newton": dict(shift=None, c1=1e-4),
    "lm": dict(damping=1e-3, update="nielsen", scaling="identity", eta=1e-4, space="auto"),
    "newton-cg": dict(curvature="hessian", radius=1.0, max_radius=1e3, eta=0.1, max_cg=None,
                      cg_tol=None),
    "lbfgs": dict(memory=10, c1=1e-4, c2=0.9, max_ls=25),
    "kfac": dict(damping=1e-3, kind="exact", seed=None, mc_samples=1, eta=1e-4),
}
METHODS = tuple(METHOD_OPTIONS)


# ----------------------------------------------------------------------------- checks
def _check_method_options(method, o):
    """Validated keyword arguments for the method's function."""
    if method in ("gd", "momentum", "adam"):
        out = dict(kind=method, lr=real("lr", o["lr"], lo=0, lo_open=True),
                   batch_size=integer("batch_size", o["batch_size"], lo=1, none=True), seed=o["seed"])
        if method == "momentum":
            out.update(momentum=real("momentum", o["momentum"], lo=0, hi=1, hi_open=True),
                       nesterov=boolean("nesterov", o["nesterov"]))
        if method == "adam":
            out.update(beta1=real("beta1", o["beta1"], lo=0, hi=1, hi_open=True),
                       beta2=real("beta2", o["beta2"], lo=0, hi=1, hi_open=True),
                       eps=real("eps", o["eps"], lo=0, lo_open=True))
        return first_order.first_order, out
    if method == "taylor-step":
        return second_order.taylor_step, dict(
            curvature=check_curvature(o["curvature"]),
            c1=real("c1", o["c1"], lo=0, hi=1, lo_open=True, hi_open=True))
    if method in ("newton", "newton-cg"):
        radius = real("radius", o["radius"], lo=0, lo_open=True, none=method == "newton")
        max_radius = real("max_radius", o["max_radius"], lo=0, lo_open=True)
        if radius is not None and max_radius < radius:
            raise ValueError(f"max_radius: expected >= radius ({radius:g}), got {max_radius:g}")
        out = dict(curvature=check_curvature(o["curvature"]), radius=radius,
                   max_radius=max_radius, eta=real("eta", o["eta"], lo=0, hi=0.25, hi_open=True))
        if method == "newton":
            return second_order.newton, out
        out.update(max_cg=integer("max_cg", o["max_cg"], lo=1, none=True),
                   cg_tol=real("cg_tol", o["cg_tol"], lo=0, hi=1, hi_open=True, none=True))
        return second_order.newton_cg, out
    if method == "gauss-newton":
        return second_order.gauss_newton, dict(
            shift=real("shift", o["shift"], lo=0, hi=1, none=True),
            c1=real("c1", o["c1"], lo=0, hi=1, lo_open=True, hi_open=True))
    if method == "lm":
        return second_order.lm, dict(
            damping=real("damping", o["damping"], lo=0, lo_open=True),
            update=choice("update", o["update"], ("nielsen", "classic")),
            scaling=choice("scaling", o["scaling"], ("identity", "marquardt")),
            eta=real("eta", o["eta"], lo=0, hi=0.25, hi_open=True),
            space=choice("space", o["space"], ("auto", "parameters", "samples")))
    if method == "lbfgs":
        c1 = real("c1", o["c1"], lo=0, hi=1, lo_open=True, hi_open=True)
        c2 = real("c2", o["c2"], lo=0, hi=1, lo_open=True, hi_open=True)
        if c2 <= c1:
            raise ValueError(f"c2: expected c1 < c2 < 1 (c1 = {c1:g}), got {c2:g}")
        return quasi_newton.lbfgs, dict(memory=integer("memory", o["memory"], lo=1), c1=c1, c2=c2,
                                        max_ls=integer("max_ls", o["max_ls"], lo=1))
    if method == "kfac":
        seed = o["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed: expected None or an integer >= 0, got {seed!r}")
        return kronecker.kfac, dict(
            damping=real("damping", o["damping"], lo=0, lo_open=True),
            kind=choice("kind", o["kind"], ("exact", "mc")), seed=seed,
            mc_samples=integer("mc_samples", o["mc_samples"], lo=1),
            eta=real("eta", o["eta"], lo=0, hi=0.25, hi_open=True))
    raise AssertionError(method)  # pragma: no cover


def minimize(net, theta0, X, Y=None, method="lm", **options):
    """Train ``net`` from ``theta0`` on (X, Y); returns an :class:`OptimizeResult`.

    A data object (``tk.Batches``, ``taylorkern.distributed.ShardedData``) may take the place
    of X, Y: ``minimize(net, theta0, data, method="lm")``.  Every evaluation then sums over
    its chunks, and the run takes the same steps as on the arrays in memory (up to summation
    order); the mini-batch options (``batch_size``) and lm's ``space="samples"`` need arrays.

    Methods (``taylorkern.optim.METHODS``), with their own options and defaults:

    - ``gd`` (lr=0.01), ``momentum`` (lr=0.01, momentum=0.9, nesterov=False),
      ``adam`` (lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8): baselines; each takes
      ``batch_size`` (None = full batch; otherwise one iteration is one epoch) and ``seed``.
    - ``taylor-step`` (curvature="hessian"|"ggn", c1=1e-4): steepest descent with the step
      length g.g / g.B g from the quadratic model; an Armijo backtracking safeguard and,
      where g.B g <= 0, a doubled previous step.
    - ``newton`` (curvature="hessian"|"ggn", radius=None, max_radius=1e3, eta=0.1): the exact
      trust-region step from an eigendecomposition of B; escapes saddle points; converged
      only where |g| <= gtol and H has no clearly negative eigenvalue.  The initial radius
      (None) is the full Newton step's length where B is positive definite at theta0 (so a
      quadratic loss is minimised in one step), 1.0 otherwise.
    - ``gauss-newton`` (shift=None, c1=1e-4): p = -G^+ g, the inverse filtered as
      lam / (lam^2 + mu^2) with mu = shift * max eig(G) (default: the square root of the
      dtype's epsilon): exact where G is well conditioned (a quadratic in one step), bounded
      where G is singular; Armijo backtracking from the full step.
    - ``lm`` (damping=1e-3, update="nielsen"|"classic", scaling="identity"|"marquardt",
      eta=1e-4, space="auto"|"parameters"|"samples"): Levenberg-Marquardt on the GGN,
      (G + lambda D) p = -g by Cholesky with an eigen-solve fallback; lambda starts at
      damping * max diag(G).  ``nielsen`` updates lambda from the gain ratio (accepts
      rho > eta), ``classic`` multiplies it by 0.1 after a decrease and by 10 otherwise.  The
      system is solved in parameter space (F x F, each trial point evaluated by one fused
      MLP.loss_grad_ggn call) or, with fewer outputs N*dL than trainable parameters F (the
      "auto" choice), in sample space through the (N*dL)-square system of MLP.ggn_factor.
      For mse this is the classical least-squares algorithm; for ce, the same damping of the
      softmax GGN.
    - ``newton-cg`` (curvature="hessian"|"ggn", radius=1.0, max_radius=1e3, eta=0.1,
      max_cg=None (= F), cg_tol=None (= min(0.5, sqrt|g|))): Steihaug truncated CG on
      Hessian- or GGN-vector products inside a trust region; no P x P matrix is formed.
    - ``lbfgs`` (memory=10, c1=1e-4, c2=0.9, max_ls=25): L-BFGS with a strong-Wolfe line
      search.
    - ``kfac`` (damping=1e-3, kind="exact"|"mc", seed=None, mc_samples=1, eta=1e-4): K-FAC's
      damped direction -(K + lambda I)^-1 g (taylorkern.kfac), its length minimising the damped
      quadratic model along it (one GGN product), lambda (starting at damping times K's mean
      diagonal) adapted from the gain ratio; a step with gain ratio <= eta is rejected and
      retried with more damping.  No P x P matrix is formed: only per-layer factors.

    Options for every method:

    - ``max_iter`` (1000), ``max_time`` (seconds, None), ``target`` (stop once the loss is
      <= target, None);
    - ``gtol`` (1e-10): stop when |g|_2 <= gtol; ``ftol`` (1e-12): stop when an accepted
      step changes the loss by <= ftol relative (or a Newton step's predicted decrease is
      that small); ``xtol`` (1e-12): stop when a step is <= xtol (|theta| + xtol).  ftol and
      xtol never go below the dtype's machine epsilon (0 switches them off);
    - ``callback(info)``: called after every iteration with an :class:`Iterate` (nit, theta,
      loss, grad_norm, step_norm, damping, accepted, time); returning True stops the run;
    - ``mask``: boolean (P,) array, True = trainable; the other parameters keep theta0's
      values exactly (zero them in theta0 for a pruned network);
    - ``progress``: show a tqdm bar (a line per second on stderr without tqdm);
    - ``sample_weight``: (N,) weights of the samples' losses (MLP.loss): the run minimises
      sum w_n l_n / sum w_n (+ l2); a mini-batch is weighted within itself.

    A NaN/Inf loss or gradient at an accepted point stops the run (status NONFINITE); the
    damped, trust-region and line-search methods first back off from a non-finite trial
    point.  ``theta`` in the result is always the best iterate found.  theta0 is not modified.

    newton, gauss-newton and lm factorize an F x F matrix (F trainable parameters) every
    iteration; up to F = 512 they run with BLAS held to one thread (restored afterwards),
    which is faster at these sizes.  Use newton-cg or lbfgs when P x P does not fit.
    """
    check_net(net)
    if isinstance(X, Data):
        if isinstance(Y, str):  # minimize(net, theta0, data, "lm")
            method, Y = Y, None
        elif Y is not None:
            raise TypeError("Y: not taken with a data object, which holds the targets")
    elif Y is None:
        raise TypeError("Y: missing; pass X and Y, or a data object in place of both")
    if not isinstance(method, str):
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    name = method.strip().lower().replace("_", "-")
    if name not in METHOD_OPTIONS:
        raise ValueError(f"method: unknown {method!r}; expected one of {METHODS}")
    allowed = {**COMMON, **METHOD_OPTIONS[name]}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"minimize: unknown option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))} for method {name!r}; "
                         f"its options are: {', '.join(sorted(allowed))}")
    o = {**allowed, **options}

    common = dict(
        max_iter=integer("max_iter", o["max_iter"], lo=0),
        max_time=real("max_time", o["max_time"], lo=0, none=True),
        gtol=real("gtol", o["gtol"], lo=0), ftol=real("ftol", o["ftol"], lo=0),
        xtol=real("xtol", o["xtol"], lo=0),
        target=real("target", o["target"], none=True),
        mask=o["mask"], progress=boolean("progress", o["progress"]), sample_weight=o["sample_weight"])
    if o["callback"] is not None and not callable(o["callback"]):
        raise ValueError(f"callback: expected a callable or None, got {o['callback']!r}")
    fn, kwargs = _check_method_options(name, o)
    if isinstance(X, Data):
        if o.get("batch_size") is not None:
            raise ValueError("batch_size: mini-batches need arrays X, Y, not a data object")
        if o.get("space") == "samples":
            raise ValueError("space: 'samples' needs arrays X, Y (MLP.ggn_factor), not a data object")

    run = Run(net, theta0, X, Y, name, callback=o["callback"], **common)
    dense = name in ("newton", "gauss-newton", "lm") and run.F <= SERIAL_BLAS_MAX_ORDER
    # kfac factorizes per-layer factors of order d_{l-1} + 1 at most
    dense = dense or (name == "kfac" and max(net.sizes) + 1 <= SERIAL_BLAS_MAX_ORDER)
    try:
        # Overflow on the way to a NaN/Inf is detected and reported as a status, not a warning.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                serial_blas() if dense else contextlib.nullcontext():
            if run.target is not None and run.f0 <= run.target:
                raise Stop(Status.TARGET, f"the initial loss {run.f0:.6g} is already <= target "
                                          f"{run.target:.6g}")
            fn(run, **kwargs)
    except Stop as stop:
        return run.finish(stop.status, stop.message)
    finally:
        run.close()
    raise AssertionError("a method returned without a status")  # pragma: no cover
