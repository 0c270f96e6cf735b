"""Second-order pruning: remove the parameters whose removal costs the least loss.

Index letters: P parameters, n active (not yet pruned) parameters in a curvature matrix,
K parameters removed, N samples.

Removing parameter q means the step delta with delta_q = -theta_q.  On the quadratic model
around a trained theta (gradient g ~ 0, curvature B = H or G, plus ``damping * I``):

- ``obd`` (Optimal Brain Damage, LeCun et al. 1990): only delta_q moves; the loss rises by
  ``1/2 B_qq theta_q^2`` (the diagonal of B: ``hessian_diag``/``ggn_diag``, no P x P matrix);
- ``obs`` (Optimal Brain Surgeon, Hassibi & Stork 1993): the other parameters move too, by
  the best compensating update ``delta = -theta_q / [B^-1]_qq * B^-1 e_q``, and the loss rises
  by ``theta_q^2 / (2 [B^-1]_qq)`` — never more than OBD's;
- ``taylor1``: the first-order term, ``|g_q theta_q|`` (Molchanov et al. 2017);
- ``magnitude``: ``|theta_q|``, the baseline.

OBS here is exact and affordable: B over the active parameters is factored and inverted
once per pruning step (Cholesky, O(n^3)); each removed weight then downdates the inverse by
the rank-1 Schur complement ``B^-1 <- B^-1 - B^-1 e_q e_q^T B^-1 / [B^-1]_qq`` — exactly the
inverse over the parameters that remain — so that removing K weights one after another
(each chosen with the saliencies of the updated inverse, each compensated) costs O(K n^2),
not K inversions.  The downdates are applied lazily in blocks of 64 (one matrix product per
block) and the inverse is compacted to the remaining parameters as they go.  On a loss that
is quadratic in theta, at its minimum and with damping 0, the sum of the OBS saliencies is
exactly the loss increase and the compensated theta the exact constrained optimum.
``blockwise=True`` uses the per-layer blocks of B instead (``hessian_blocks``/``ggn_blocks``,
memory sum P_l^2), for networks whose full P x P matrix would not fit.

:func:`prune` removes the least salient parameters in one or several steps, retraining in
between with ``taylorkern.minimize`` (any method; pruned parameters stay exactly zero
through the optimizers' ``mask``), and reports the loss before and after every step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import numpy as np
import scipy.linalg

from ._validate import (
    available_memory,
    check_curvature,
    check_net,
    choice,
    format_bytes,
    integer,
)
from .model import TooLargeError

METHODS = ("obd", "obs", "taylor1", "magnitude")
SCOPES = ("global", "layer")
PARAMS = ("weights", "all")

# Default OBS damping, relative to the mean of diag(B) over the active parameters: enough to
# make a (numerically) singular GGN invertible, small enough not to change the saliencies of
# well-determined parameters.
OBS_RELATIVE_DAMPING = 1e-4
_FLUSH = 64  # pending rank-1 downdates applied together in one matrix product


# ----------------------------------------------------------------------------- checks
def _check_mask(net, mask):
    """Boolean (P,) kept-mask (True = kept), or all True."""
    if mask is None:
        return np.ones(net.num_params, bool)
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != (net.num_params,):
        raise ValueError(f"mask: expected a boolean array of shape ({net.num_params},) (True = kept), "
                         f"got dtype {m.dtype} and shape {m.shape}")
    return m.copy()


def _check_damping(damping):
    if damping is None:
        return None
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) or not math.isfinite(damping) \
            or damping < 0:
        raise ValueError(f"damping: expected None or a finite number >= 0, got {damping!r}")
    return float(damping)


def weight_mask(net) -> np.ndarray:
    """Boolean (P,): True on the weight entries (W of every layer), False on the biases."""
    m = np.zeros(net.num_params, bool)
    for l, (a, b) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        o = net.offsets[l]
        m[o:o + a * b] = True
    return m


def _layer_of(net) -> np.ndarray:
    """(P,) int: the layer index of every parameter."""
    return np.repeat(np.arange(net.num_layers), net.layer_sizes)


def _diag(net, theta, X, Y, curvature):
    d = net.hessian_diag(theta, X, Y) if curvature == "hessian" else net.ggn_diag(theta, X, Y)
    return np.asarray(d, dtype=np.float64)


# ----------------------------------------------------------------------------- OBS core
def _obs_memory_check(n, what="OBS"):
    need = 8.0 * 3.0 * n * n  # B, its factor/inverse (in place) and the kernels' workspace
    have = available_memory()
    if need > have:
        raise TooLargeError(
            f"{what} over n = {n} parameters needs the n x n inverse curvature, about "
            f"{format_bytes(need)} with workspace, but only {format_bytes(have)} of memory is available; "
            "use blockwise=True (per-layer blocks), method='obd', or prune fewer parameters at once")


def _inverse_spd(B, damping, curvature):
    """(B + damping I)^{-1} for symmetric B (n, n), float64; B's diagonal is shifted in place.

    Cholesky, then LAPACK's dpotri overwrites the factor with the inverse's lower triangle,
    which is mirrored in row blocks: peak memory two n x n arrays (B and the result).
    """
    n = B.shape[0]
    B.flat[::n + 1] += damping
    try:
        c, _ = scipy.linalg.cho_factor(B, lower=True, overwrite_a=False, check_finite=False)
    except np.linalg.LinAlgError:
        lam = float(scipy.linalg.eigh(B, eigvals_only=True, subset_by_index=[0, 0])[0])
        raise ValueError(
            f"OBS: the {curvature} plus damping ({damping:.3g}) over the {n} remaining parameters is not "
            f"positive definite (smallest eigenvalue {lam:.3g}); use curvature='ggn' or a damping "
            f"larger than {max(-lam + damping, 0.0):.3g}") from None
    inv, info = scipy.linalg.lapack.dpotri(c, lower=1, overwrite_c=1)
    if info != 0:  # pragma: no cover - dpotri only fails on a singular factor
        raise ValueError(f"OBS: inverting the damped {curvature} failed (LAPACK info {info})")
    bs = 256
    for r0 in range(0, n, bs):
        r1 = min(n, r0 + bs)
        upper = np.triu(np.ones((r1 - r0, n - r0), bool), 1)
        np.copyto(inv[r0:r1, r0:], inv[r0:, r0:r1].T, where=upper)
    return inv


class _OBSBlock:
    """Sequential OBS removals over one set of parameters ``idx`` (global indices), with the
    inverse ``Hinv`` (n, n) of the damped curvature over them.  ``theta`` (P,) float64 is
    updated in place (the compensation); ``cand`` (n,) marks which may be removed, and
    ``group`` (n,) their quota group."""

    def __init__(self, Hinv, idx, theta, cand, group):
        self.Hinv = Hinv
        self.idx = np.asarray(idx)
        self.theta = theta
        self.cand = cand.copy()
        self.group = group.copy()
        self.alive = np.ones(len(self.idx), bool)
        self.diag = np.diag(Hinv).copy()
        n = len(self.idx)
        self.U = np.empty((n, _FLUSH))
        self.s = np.empty(_FLUSH)
        self.c = 0
        self.dead_since_compact = 0

    def saliencies(self):
        """(n,) current theta_q^2 / (2 [B^-1]_qq); inf where not removable."""
        w = self.theta[self.idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(self.diag > 0, w * w / (2.0 * self.diag), np.inf)
        return np.where(self.cand & self.alive, s, np.inf)

    def remove(self, q):
        """Remove local parameter q with its compensating update; returns its saliency."""
        col = self.Hinv[:, q].copy()
        if self.c:
            col -= self.U[:, :self.c] @ (self.U[q, :self.c] / self.s[:self.c])
        hqq = col[q]
        w = self.theta[self.idx[q]]
        sal = w * w / (2.0 * hqq)
        self.theta[self.idx] -= (w / hqq) * col
        self.theta[self.idx[q]] = 0.0
        self.diag -= col * col / hqq
        self.diag[q] = 0.0
        self.alive[q] = False
        self.cand[q] = False
        self.U[:, self.c] = col
        self.s[self.c] = hqq
        self.c += 1
        self.dead_since_compact += 1
        if self.c == _FLUSH:
            self._flush()
        return sal

    def _flush(self):
        if self.c:
            Us = self.U[:, :self.c] / self.s[:self.c]
            self.Hinv -= Us @ self.U[:, :self.c].T
            self.c = 0
        if self.dead_since_compact * 8 >= len(self.idx) and self.alive.any():
            keep = np.flatnonzero(self.alive)
            self.Hinv = np.ascontiguousarray(self.Hinv[np.ix_(keep, keep)])
            self.idx, self.cand, self.group = self.idx[keep], self.cand[keep], self.group[keep]
            self.diag, self.alive = self.diag[keep], self.alive[keep]
            self.U = np.empty((len(keep), _FLUSH))
            self.dead_since_compact = 0


def _obs_blocks(net, theta, X, Y, kept, curvature, damping, blockwise, cand_global, group_global,
                work):
    """The OBS engines over the kept parameters: one (full B, at theta) or one per layer;
    they update ``work`` ((P,) float64, theta's values) in place as they remove parameters."""
    if blockwise:
        spans = [(net.offsets[l], net.offsets[l + 1]) for l in range(net.num_layers)]
    else:
        spans = [(0, net.num_params)]
    sizes = [int(kept[a:b].sum()) for a, b in spans]
    _obs_memory_check(max(sizes) if blockwise else sizes[0],
                      "OBS (blockwise)" if blockwise else "OBS")
    if not blockwise:
        mats = [net.hessian(theta, X, Y) if curvature == "hessian" else net.ggn(theta, X, Y)]
    else:
        mats = net.hessian_blocks(theta, X, Y) if curvature == "hessian" else net.ggn_blocks(theta, X, Y)
    engines, used = [], []
    for i, (a, b) in enumerate(spans):
        M, mats[i] = mats[i], None  # one block alive at a time (the caller keeps no copy)
        loc = np.flatnonzero(kept[a:b])
        if loc.size == 0:
            continue
        B = np.asarray(M, dtype=np.float64)  # a fresh result of the network's call: ours to modify
        B = B[np.ix_(loc, loc)] if loc.size < b - a else B
        d = OBS_RELATIVE_DAMPING * max(float(np.mean(np.diag(B))), 0.0) if damping is None else damping
        if d == 0.0 and damping is None:
            d = np.finfo(np.float64).eps
        used.append(d)
        Hinv = _inverse_spd(B, d, curvature)
        idx = a + loc
        engines.append(_OBSBlock(Hinv, idx, work, cand_global[idx], group_global[idx]))
    return engines, (max(used) if used else 0.0)


def _obs_inverse_diag(net, theta, X, Y, kept, curvature, damping, blockwise):
    """diag of (B + damping I)^{-1} over the kept parameters, (P,) with NaN elsewhere."""
    P = net.num_params
    engines, used = _obs_blocks(net, theta, X, Y, kept, curvature, damping, blockwise,
                                np.ones(P, bool), np.zeros(P, int), np.asarray(theta, dtype=np.float64))
    out = np.full(P, np.nan)
    for e in engines:
        out[e.idx] = e.diag
    return out, used


# ----------------------------------------------------------------------------- saliency
def saliency(net, theta, X, Y, method="obd", curvature="ggn", damping=None, mask=None,
             blockwise=False) -> np.ndarray:
    """Per-parameter saliency, shape (P,): the estimated loss increase of removing it alone.

    Parameters
    ----------
    net, theta (P,), X (N, d0), Y : the network, its parameters and data
    method : "obd" ``1/2 (B_qq + damping) theta_q^2``; "obs" ``theta_q^2 / (2 [(B + damping I)^-1]_qq)``
        over the kept parameters; "taylor1" ``|g_q theta_q|``; "magnitude" ``|theta_q|``
    curvature : "ggn" (default; positive semi-definite) or "hessian" (exact, may be indefinite:
        OBD saliencies can then be negative, and OBS needs H + damping I positive definite)
    damping : added to B's diagonal; None = 0 for obd and, for obs,
        ``OBS_RELATIVE_DAMPING * mean(diag B)`` (so that a singular GGN can be inverted)
    mask : boolean (P,), True = kept; pruned parameters get saliency +inf
    blockwise : obs only: invert each layer's block instead of the full B

    OBS with ``blockwise=False`` forms the P x P matrix and inverts it (refused with the
    memory it needs when that does not fit).
    """
    check_net(net)
    method = choice("method", method, METHODS)
    curvature = check_curvature(curvature)
    damping = _check_damping(damping)
    kept = _check_mask(net, mask)
    net.unflatten(theta)  # validates theta's shape, dtype and values
    th = np.asarray(theta, dtype=np.float64)
    if method == "magnitude":
        s = np.abs(th)
    elif method == "taylor1":
        _, g = net.loss_and_grad(theta, X, Y)
        s = np.abs(np.asarray(g, dtype=np.float64) * th)
    elif method == "obd":
        s = 0.5 * (_diag(net, theta, X, Y, curvature) + (damping or 0.0)) * th * th
    else:
        dinv, _ = _obs_inverse_diag(net, theta, X, Y, kept, curvature, damping, blockwise)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(dinv > 0, th * th / (2.0 * dinv), np.inf)
    return np.where(kept, s, np.inf)


# ----------------------------------------------------------------------------- pruning
@dataclasses.dataclass
class PruneStep:
    """One pruning step.

    Attributes
    ----------
    step : int (1-based)
    sparsity : float, fraction of the prunable parameters that are zero after this step
    n_pruned : int, prunable parameters pruned in total;  n_removed : int, in this step
    loss_before : float, loss before this step's removals
    loss_pruned : float, loss right after them (with OBS's compensating update)
    predicted_increase : float, the method's own estimate of loss_pruned - loss_before (sum of
        the removed saliencies for obd/obs (their quadratic model, g taken as 0), the
        first-order ``-g.theta`` over the removed for taylor1, NaN for magnitude)
    model_increase : float, the full quadratic model ``g.delta + 1/2 delta.B delta`` of the
        step actually taken (undamped B at the pre-step theta; NaN for obs with blockwise B)
    loss_retrained : float, after retraining (NaN without)
    retrain_nit : int, optimizer iterations (0 without)
    retrain_status : str ("" without)
    time : float, seconds for this step (removal and retraining)
    """

    step: int
    sparsity: float
    n_pruned: int
    n_removed: int
    loss_before: float
    loss_pruned: float
    predicted_increase: float
    model_increase: float
    loss_retrained: float
    retrain_nit: int
    retrain_status: str
    time: float


@dataclasses.dataclass
class PruneResult:
    """The outcome of :func:`prune`.

    Attributes
    ----------
    theta : (P,) the pruned (and retrained) parameters, network dtype; exactly 0 where ~mask
    mask : (P,) bool, True = kept
    steps : list of :class:`PruneStep`
    method, curvature : str;  damping : float, the damping used (OBS: the largest over steps)
    loss_initial, loss_final : float
    sparsity : float, final fraction of the prunable parameters that are zero
    prunable : (P,) bool, the parameters that could be pruned (``params``)
    """

    theta: np.ndarray
    mask: np.ndarray
    steps: list
    method: str
    curvature: str
    damping: float
    loss_initial: float
    loss_final: float
    sparsity: float
    prunable: np.ndarray

    def table(self) -> str:
        """The per-step report as a text table."""
        head = (f"{'step':>4} {'sparsity':>8} {'removed':>7} {'loss before':>12} {'pruned':>12} "
                f"{'predicted +':>12} {'model +':>12} {'retrained':>12} {'nit':>5}")
        rows = [head]
        for s in self.steps:
            rows.append(f"{s.step:>4} {s.sparsity:>8.3f} {s.n_removed:>7} {s.loss_before:>12.6g} "
                        f"{s.loss_pruned:>12.6g} {s.predicted_increase:>12.4g} {s.model_increase:>12.4g} "
                        f"{s.loss_retrained:>12.6g} {s.retrain_nit:>5}")
        return "\n".join(rows)


def _retrain(net, theta, X, Y, kept, retrain, options):
    """Retrain the kept parameters; returns (theta, nit, status)."""
    if callable(retrain):
        out = np.asarray(retrain(net, theta.astype(net.dtype), X, Y, kept.copy()), dtype=np.float64)
        if out.shape != theta.shape:
            raise ValueError(f"retrain: the callable returned shape {out.shape}, expected {theta.shape}")
        nit, status = 0, "callable"
    else:
        from .optim import minimize  # the optimizers import nothing from here
        res = minimize(net, theta.astype(net.dtype), X, Y, method=retrain, mask=kept, **(options or {}))
        out = np.asarray(res.theta, dtype=np.float64)
        nit, status = int(res.nit), res.status.name
    moved = np.flatnonzero((out != 0) & ~kept)
    if moved.size:
        raise RuntimeError(f"retrain: {moved.size} pruned parameter(s) became non-zero during retraining "
                           f"(first index {moved[0]}); the optimizer does not honour the mask")
    return out, nit, status


def _quotas(target_counts, pruned_counts):
    return {g: max(int(t) - int(pruned_counts.get(g, 0)), 0) for g, t in target_counts.items()}


def _schedule(prunable, kept, group, sparsity, steps):
    """(prunable parameters per quota group, the sparsity to reach after each step): from the
    mask's sparsity, rising linearly to ``sparsity`` over ``steps``."""
    n_prunable = {g: int(np.sum(prunable & (group == g))) for g in np.unique(group[prunable])}
    total_prunable = int(prunable.sum())
    if total_prunable == 0:
        raise ValueError("params: the network has no prunable parameters")
    s0 = float(np.sum(prunable & ~kept)) / total_prunable
    return n_prunable, [s0 + (sparsity - s0) * (t + 1) / steps for t in range(steps)]


def _remove_obs(net, th, X, Y, kept, cand, group, quota, n_new, curvature, damping, blockwise):
    """One step of sequential OBS: n_new removals among ``cand``, at most ``quota[g]`` from
    group g, each the least salient under the inverse updated by the ones before, each
    compensated in ``th`` (updated in place).  Returns (removed indices, the sum of their
    saliencies, the damping used)."""
    engines, d_used = _obs_blocks(net, th.astype(net.dtype), X, Y, kept, curvature, damping,
                                  blockwise, cand, group, th)
    rem, predicted = [], 0.0
    left = np.zeros(int(group.max()) + 1, int)
    for g, k in quota.items():
        left[g] = k
    for _ in range(n_new):
        best, best_e, best_q = np.inf, None, -1
        for e in engines:
            sal = np.where(left[e.group] > 0, e.saliencies(), np.inf)
            if sal.size:
                q = int(np.argmin(sal))
                if sal[q] < best:
                    best, best_e, best_q = sal[q], e, q
        if best_e is None:
            break
        g = int(best_e.group[best_q])
        rem.append(int(best_e.idx[best_q]))
        predicted += best_e.remove(best_q)
        left[g] -= 1
    return np.asarray(rem, int), predicted, d_used


def _remove_ranked(net, th, X, Y, kept, cand, group, quota, method, curvature, damping):
    """One step of obd / taylor1 / magnitude: the ``quota[g]`` least salient of ``cand`` in
    each group g at once, zeroed in ``th``.  Returns (removed indices, the method's predicted
    loss increase: NaN for magnitude)."""
    sal = saliency(net, th.astype(net.dtype), X, Y, method, curvature, damping, kept)
    rem = []
    for g, k in quota.items():
        if k == 0:
            continue
        idx = np.flatnonzero(cand & (group == g))
        order = np.argsort(sal[idx], kind="stable")
        rem.append(idx[order[:k]])
    removed = np.concatenate(rem) if rem else np.zeros(0, int)
    if method == "obd":
        predicted = float(sal[removed].sum())
    elif method == "taylor1":
        _, g_ = net.loss_and_grad(th.astype(net.dtype), X, Y)
        predicted = float(-(np.asarray(g_, dtype=np.float64)[removed] * th[removed]).sum())
    else:
        predicted = math.nan
    th[removed] = 0.0
    return removed, predicted


def _model_increase(net, th_before, th, X, Y, curvature):
    """The quadratic model ``g.delta + 1/2 delta.B delta`` of the step th_before -> th, with g
    and the undamped B at th_before."""
    delta = th - th_before
    _, g0 = net.loss_and_grad(th_before.astype(net.dtype), X, Y)
    prod = net.hvp if curvature == "hessian" else net.ggn_vp
    Bd = np.asarray(prod(th_before.astype(net.dtype), X, Y, delta.astype(net.dtype)), dtype=np.float64)
    return float(np.asarray(g0, dtype=np.float64) @ delta + 0.5 * delta @ Bd)


def prune(net, theta, X, Y, sparsity, method="obs", steps=1, curvature="ggn", damping=None,
          retrain=None, retrain_options=None, scope="global", params="weights", mask=None,
          blockwise=False) -> PruneResult:
    """Prune ``net`` to ``sparsity`` by removing the least salient parameters.

    Parameters
    ----------
    net, theta (P,), X (N, d0), Y : the network, trained parameters and data
    sparsity : float in [0, 1], the final fraction of the prunable parameters set to zero
    method : "obs" (default), "obd", "taylor1" or "magnitude" (see the module docstring)
    steps : int >= 1, pruning rounds; the target sparsity rises linearly to ``sparsity``, and
        the saliencies (and curvature) are recomputed at the current theta every round
    curvature : "ggn" (default) or "hessian"; damping : see :func:`saliency`
    retrain : None (no retraining), a ``taylorkern.minimize`` method name ("lm", "newton",
        "lbfgs", "adam", ...) run after every round with ``mask`` = the kept parameters, or a
        callable ``(net, theta, X, Y, kept_mask) -> theta``; pruned parameters must stay
        exactly zero (a RuntimeError says otherwise)
    retrain_options : dict of options for ``minimize`` (e.g. ``{"max_iter": 50}``)
    scope : "global" (one ranking across layers) or "layer" (every layer pruned to the same
        sparsity)
    params : "weights" (default; biases are never pruned, but OBS compensates and
        retraining trains them) or "all"
    mask : boolean (P,), True = kept: parameters already pruned (set to zero here)
    blockwise : OBS on the per-layer blocks of B instead of the full matrix

    Within a round, OBS removes weights one at a time, each chosen with the saliencies of
    the updated inverse and compensated (exact sequential OBS on the quadratic model);
    obd/taylor1/magnitude remove the round's lowest saliencies at once.  Returns a
    :class:`PruneResult`; ``result.table()`` formats the per-round report.
    """
    check_net(net)
    method = choice("method", method, METHODS)
    curvature = check_curvature(curvature)
    damping = _check_damping(damping)
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity: expected a number in [0, 1], got {sparsity!r}")
    steps = integer("steps", steps, 1)
    scope = choice("scope", scope, SCOPES)
    params = choice("params", params, PARAMS)
    if retrain is not None and not callable(retrain) and not isinstance(retrain, str):
        raise ValueError(f"retrain: expected None, a minimize method name or a callable, got {retrain!r}")
    if retrain_options is not None and not isinstance(retrain_options, dict):
        raise ValueError(f"retrain_options: expected a dict, got {type(retrain_options).__name__}")
    kept = _check_mask(net, mask)
    loss0 = net.loss(theta, X, Y)  # validates theta, X, Y
    th = np.asarray(theta, dtype=np.float64).copy()
    th[~kept] = 0.0

    prunable = weight_mask(net) if params == "weights" else np.ones(net.num_params, bool)
    group = _layer_of(net) if scope == "layer" else np.zeros(net.num_params, int)
    n_prunable, schedule = _schedule(prunable, kept, group, float(sparsity), steps)
    total_prunable = sum(n_prunable.values())

    report, used_damping = [], 0.0
    loss = net.loss(th.astype(net.dtype), X, Y)
    for t, s_t in enumerate(schedule):
        t0 = time.perf_counter()
        targets = {g: int(round(s_t * c)) for g, c in n_prunable.items()}
        pruned_now = {g: int(np.sum(prunable & ~kept & (group == g))) for g in n_prunable}
        quota = _quotas(targets, pruned_now)
        n_new = sum(quota.values())
        loss_before = loss
        th_before = th.copy()
        predicted = 0.0
        removed = np.zeros(0, int)
        if n_new:
            cand = prunable & kept
            if method == "obs":
                removed, predicted, d_used = _remove_obs(net, th, X, Y, kept, cand, group, quota, n_new,
                                                         curvature, damping, blockwise)
                used_damping = max(used_damping, d_used)
            else:
                removed, predicted = _remove_ranked(net, th, X, Y, kept, cand, group, quota, method,
                                                    curvature, damping)
                if method == "obd" and damping is not None:
                    used_damping = damping
            kept[removed] = False
            th[~kept] = 0.0
        loss_pruned = net.loss(th.astype(net.dtype), X, Y)
        model_inc = math.nan
        if n_new and not (method == "obs" and blockwise):
            model_inc = _model_increase(net, th_before, th, X, Y, curvature)
        loss_ret, nit, status = math.nan, 0, ""
        loss = loss_pruned
        if retrain is not None:
            th, nit, status = _retrain(net, th, X, Y, kept, retrain, retrain_options)
            loss_ret = net.loss(th.astype(net.dtype), X, Y)
            loss = loss_ret
        n_pruned = int(np.sum(prunable & ~kept))
        report.append(PruneStep(step=t + 1, sparsity=float(n_pruned) / total_prunable, n_pruned=n_pruned,
                                n_removed=int(removed.size), loss_before=float(loss_before),
                                loss_pruned=float(loss_pruned), predicted_increase=float(predicted),
                                model_increase=model_inc, loss_retrained=float(loss_ret),
                                retrain_nit=nit, retrain_status=status, time=time.perf_counter() - t0))
    out = th.astype(net.dtype)
    out[~kept] = 0
    return PruneResult(theta=out, mask=kept, steps=report, method=method, curvature=curvature,
                       damping=float(used_damping), loss_initial=float(loss0), loss_final=float(loss),
                       sparsity=float(np.sum(prunable & ~kept)) / total_prunable, prunable=prunable)
