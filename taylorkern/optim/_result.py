"""What an optimizer run returns: the result, its status codes, and the per-iteration record."""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Status(enum.IntEnum):
    """Why a run stopped.  The first four are successes (``result.success``)."""

    GTOL = 0         # gradient norm below gtol (newton: and no negative curvature)
    FTOL = 1         # relative loss change, or the model's predicted decrease, below ftol
    XTOL = 2         # step (or trust radius) below xtol relative to |theta|
    TARGET = 3       # loss reached the requested target
    MAX_ITER = 4     # iteration limit
    MAX_TIME = 5     # time budget spent
    CALLBACK = 6     # the callback returned True
    NONFINITE = 7    # NaN or Inf in the loss, the gradient or the curvature
    NO_PROGRESS = 8  # line search or damping could not find a decrease

    @property
    def success(self) -> bool:
        return self in (Status.GTOL, Status.FTOL, Status.XTOL, Status.TARGET)


HISTORY_KEYS = ("loss", "grad_norm", "step_norm", "damping", "accepted", "time")


@dataclasses.dataclass(frozen=True)
class Iterate:
    """What a callback receives after every iteration (``theta`` is a copy, full length P)."""

    nit: int
    theta: np.ndarray
    loss: float
    grad_norm: float
    step_norm: float
    damping: float
    accepted: bool
    time: float


@dataclasses.dataclass(repr=False)
class OptimizeResult:
    """The outcome of :func:`taylorkern.minimize`.

    Attributes
    ----------
    theta : (P,) array of the network's dtype
        The best parameters found (lowest loss over every accepted iterate) — never a
        later, worse or non-finite one.
    loss, grad_norm : float
        Loss and gradient 2-norm at ``theta`` (the gradient over the trainable
        parameters when a mask is given).
    nit : int
        Iterations, each one row of ``history`` after row 0 (the start).  For the
        trust-region and damped methods a rejected trial step is an iteration too; for
        mini-batched gd/momentum/adam an iteration is one epoch.
    nfev, njev, nhev : int
        Calls into the network that evaluated the loss, the gradient, and curvature
        (a Hessian/GGN matrix, a Jacobian, or one Hessian/GGN-vector product each),
        whatever their batch size.
    success, status, message
        ``status`` is a :class:`Status`; ``success`` is ``status.success``.
    method : str
    history : dict of str -> array, each of length ``nit + 1``
        ``loss`` (full-data loss of the current iterate), ``grad_norm``, ``step_norm``
        (0 for a rejected step), ``damping`` (learning rate for gd/momentum/adam, step
        length for taylor-step/gauss-newton/lbfgs, trust radius for newton/newton-cg,
        damping lambda for lm), ``accepted`` and ``time`` (seconds since the start).
    time : float
        Wall time of the whole run, in seconds.
    """

    theta: np.ndarray
    loss: float
    grad_norm: float
    nit: int
    nfev: int
    njev: int
    nhev: int
    status: Status
    message: str
    method: str
    history: dict
    time: float

    @property
    def success(self) -> bool:
        return self.status.success

    # scipy.optimize names, for code written against OptimizeResult.
    @property
    def x(self) -> np.ndarray:
        return self.theta

    @property
    def fun(self) -> float:
        return self.loss

    def __repr__(self):
        return (f"OptimizeResult(method={self.method!r}, success={self.success}, "
                f"status={self.status.name}, message={self.message!r}, loss={self.loss:.6g}, "
                f"grad_norm={self.grad_norm:.3g}, nit={self.nit}, nfev={self.nfev}, "
                f"njev={self.njev}, nhev={self.nhev}, time={self.time:.3g}s, "
                f"theta=<{self.theta.shape[0]} {self.theta.dtype}>)")
