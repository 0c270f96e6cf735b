"""Optimizers on the second-order Taylor model of an MLP's loss.

``minimize(net, theta0, X, Y, method=..., **options)`` -> :class:`OptimizeResult`.
Methods: gd, momentum, adam (baselines), taylor-step, newton, gauss-newton, lm, newton-cg,
lbfgs, kfac.  They use only the network's public calls (loss, gradient, Hessian / GGN matrices
and products), never a backend, so they run on whichever backend is active.
"""

from ._minimize import METHOD_OPTIONS, METHODS, minimize
from ._result import Iterate, OptimizeResult, Status

__all__ = ["minimize", "OptimizeResult", "Iterate", "Status", "METHODS", "METHOD_OPTIONS"]
