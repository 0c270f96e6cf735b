"""Backends: one protocol, several implementations (chosen in taylorkern._dispatch).

A backend is a module (``cpp``, ``numba``, ``reference``, ``cuda``; or, for the routed CUDA
backend, an object) whose functions compute the curvature quantities of an MLP's loss.
:class:`Backend` is the protocol they follow, :class:`ReportsProductMemory` and
:class:`FusesGaussNewton` optional extras; docs/design.md (section 3, the backend protocol)
describes them with the data flow.

The contract, for every function:

- The MLP has checked every input before the call, so a backend checks nothing:
  ``theta`` (P,), ``X`` (N, d0) with N >= 1, and for mse ``Y`` (N, k) are C-contiguous,
  finite and of ``net.dtype`` (float64 or float32); for ce ``Y`` is (N,) int64 labels in
  [0, k); ``V`` is (P, m) with m >= 1, C-contiguous, of ``net.dtype``; ``reduction`` is
  "mean" or "sum".  Index letters as in taylorkern.model (P parameters, N samples, k = dL
  outputs, m directions, P_l the parameters of layer l, [Wl; bl]).
- A backend returns the data term only: the MLP adds the l2 term itself.  "mean" divides
  by N (and mse also by k: its mean is over all N*k elements).
- Results are new numpy arrays of ``net.dtype`` owned by the caller, never views of a
  workspace (the MLP adds l2 to them in place); a loss is a real number (a Python float or
  a numpy scalar).  Inputs are left untouched and may be read-only, and the same call gives
  the same result (tests/test_backends.py checks these; tests/test_protocol.py the
  signatures and shapes).
- A backend may keep prepared state per network (a compiled description of the layers, a
  workspace pool) in ``net._handles[name]``; the MLP empties that dict when pickled.
- Extra keyword parameters are allowed when they have defaults (the cuda backend's
  ``out="numpy"``); the MLP never passes them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """What taylorkern.MLP calls on the active backend (``taylorkern._dispatch.current()``)."""

    name: str
    """The backend's name, as ``taylorkern.backend()`` reports it and ``set_backend`` takes it."""

    def predict(self, net, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The network's outputs f(X), (N, k)."""

    def loss(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, reduction: str) -> float:
        """The loss's data term."""

    def loss_and_grad(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray,
                      reduction: str) -> tuple[float, np.ndarray]:
        """(the loss's data term, its gradient (P,))."""

    def hvp(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, V: np.ndarray,
            reduction: str) -> np.ndarray:
        """Hessian-vector products H V, (P, m)."""

    def ggn_vp(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, V: np.ndarray,
               reduction: str) -> np.ndarray:
        """Gauss-Newton-matrix products G V, (P, m)."""

    def jacobian(self, net, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """d f / d theta, (N*k, P); row n*k + c is output c of sample n."""

    def hessian(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, reduction: str) -> np.ndarray:
        """The Hessian H, (P, P), symmetric."""

    def ggn(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, reduction: str) -> np.ndarray:
        """The generalized Gauss-Newton matrix G = J^T H_out J, (P, P), symmetric."""

    def hessian_blocks(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray,
                       reduction: str) -> list[np.ndarray]:
        """H's diagonal blocks, one (P_l, P_l) per layer, in layer order."""

    def ggn_blocks(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray,
                   reduction: str) -> list[np.ndarray]:
        """G's diagonal blocks, one (P_l, P_l) per layer, in layer order."""

    def hessian_diag(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray,
                     reduction: str) -> np.ndarray:
        """diag(H), (P,)."""

    def ggn_diag(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, reduction: str) -> np.ndarray:
        """diag(G), (P,)."""


@runtime_checkable
class ReportsProductMemory(Protocol):
    """Optional: a backend whose hvp / ggn_vp hold less than the MLP's default estimate (the
    tangents of every sample for all m directions) says how much, so that the MLP's memory
    check refuses only what would not fit.  The MLP asks only for large requests."""

    def product_memory_values(self, net, n: int, m: int) -> float:
        """Values of ``net.dtype`` that hvp / ggn_vp hold for n samples and m directions,
        their result included."""



@runtime_checkable
class FusesGaussNewton(Protocol):
    """Optional: a backend that computes the loss, gradient and GGN of a point in one sweep over
    the samples (what a Gauss-Newton or Levenberg-Marquardt iteration needs).  Without it the
    MLP calls loss_and_grad and ggn."""

    def loss_grad_ggn(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray,
                      reduction: str) -> tuple[float, np.ndarray, np.ndarray]:
        """(the loss's data term, its gradient (P,), the GGN (P, P))."""


@runtime_checkable
class FactorsKronecker(Protocol):
    """Optional: a backend that computes K-FAC's per-layer factors itself (docs/kfac.md).  The
    MLP takes ``kfac_factors`` through ``taylorkern._dispatch.optional``: from the active
    backend, else the cuda router's CPU backend, else the reference backend's numpy code."""

    def kfac_factors(self, net, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, reduction: str,
                     noise=None, bases=None, sample_weight=None, input_factor=True) -> list:
        """[(A_l, B_l)] per layer ((d_{l-1} + 1)-square, d_l-square); ``noise`` None for the exact
        rows of the output Hessian's square root, else the MLP's draws ((N, M) uniforms for ce,
        (N, M, k) unit-weight gradient rows for the other likelihoods); with ``bases`` [(Qa, Qb)]
        instead EKFAC's eigenvalues, one (d_{l-1} + 1, d_l) array per layer; ``sample_weight``
        as the other calls take it (A then the weighted mean); ``input_factor`` False: the first
        layer's A is not computed, None in its place."""
