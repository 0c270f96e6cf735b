"""The Laplace approximation: a Gaussian posterior over a trained network's parameters from the
second-order Taylor model of its log posterior, with error bars and the marginal likelihood.

Index letters: N samples, k outputs (dL), P the posterior's parameters (all of theta, or the
last layer's for ``structure="last-layer"``), L layers, n new points.

At a trained theta* (a mode of the log posterior), with a Gaussian prior N(0, diag(delta)^-1)
on the parameters, the posterior is approximated by N(theta*, Sigma), Sigma = Lambda^-1 and

    Lambda = c * C + diag(delta),

where C is the curvature of the negative log likelihood at unit scale and c its scale:

* ``loss="mse"`` (regression, Gaussian noise of standard deviation sigma on every output): the
  network's mse with ``reduction="sum"`` is S = sum_n mean_c (f - y)^2 = SSE / k, and the
  negative log likelihood is SSE / (2 sigma^2) + (N k / 2) log(2 pi sigma^2).  So
  C = (k / 2) * curvature of S (for the GGN, exactly J^T J) and c = 1 / sigma^2;
* ``loss="ce"`` (classification): the negative log likelihood is the summed cross-entropy S
  itself, C = curvature of S and c = 1 (there is no noise parameter; sigma_noise must be 1);
* ``loss="bce"`` (binary or multi-label classification, an independent Bernoulli per output):
  S = sum_n mean_c (softplus(f) - y f) is the negative log likelihood over k, so C = k *
  curvature of S and c = 1 (no noise parameter either);
* ``loss="poisson"`` (counts, f the log-rate): the negative log likelihood is
  k S + sum log(y!), so C = k * curvature of S and c = 1;
* ``loss="gaussian"`` (heteroscedastic regression, k = 2h outputs: h means and h
  log-variances, each target's noise the network's own): the negative log likelihood is
  h S + (N h / 2) log(2 pi), so C = h * curvature of S (the GGN is the Fisher) and c = 1.
  The noise parameter of all but mse is fixed: sigma_noise must be 1.

The network's own ``l2`` is not part of the likelihood (the curvature is taken with
``reduction="sum"``, which leaves it out): the prior precision plays its role.

Structures (which part of Lambda is kept):

* ``"full"``: the P x P matrix (the GGN or the exact Hessian);
* ``"blocks"``: its per-layer diagonal blocks (``ggn_blocks`` / ``hessian_blocks``);
* ``"diag"``: its diagonal (``ggn_diag`` / ``hessian_diag``);
* ``"last-layer"``: the last layer's block only; the other parameters stay at theta* and are
  not part of the posterior (its P is the last layer's size);
* ``"kfac"``: per layer K-FAC's approximation A_l kron B_l of the GGN block
  (taylorkern.kfac of the summed loss, ``kfac_kind`` "exact" or "mc": B from the output
  Hessians' square roots, or from ``mc_samples`` gradients per sample at targets drawn from the
  model, seeded by ``seed``), C_l = scale (A_l kron B_l) with the same scale
  as above; GGN only.

Prior precision: a scalar, one value per layer of the posterior (L values, 1 for last-layer),
or one per parameter of the posterior (P values; not for "kfac", where a prior that varies
within a layer would break the Kronecker structure).

Factorisations, reused across prior values:

* the marginal likelihood: each dense part's curvature C has its eigenvalues g computed once
  (``numpy.linalg.eigvalsh``, on the first evaluation that needs them).  While the prior is
  constant over the part (a scalar prior, or a per-layer prior on per-layer blocks), Lambda's
  eigenvalues are c g + delta, and each evaluation, gradient included, costs O(P) after that
  one O(P^3).  A prior that varies within a dense part (per layer on the full matrix, per
  parameter) has no such shortcut: each evaluation then factorises Lambda by Cholesky, O(P^3);
  so does the gradient of a per-layer or per-parameter prior, which needs diag(Lambda^-1);
* "kfac": the factors' eigendecompositions A = Qa diag(a) Qa^T, B = Qb diag(b) Qb^T (KFAC.eigh,
  O(Da^3 + Db^3) per layer, once) give Lambda_l = (Qa kron Qb) diag(c scale a_i b_j + delta_l)
  (Qa kron Qb)^T exactly: the marginal likelihood and its gradient cost O(P) per prior value,
  samples take two rotations per layer, and the predictive rotates each new point's layer input
  and output derivatives (read off its Jacobian blocks, :meth:`_KronFactor.output_cov`); no
  P x P matrix is formed;
* the other structures' posterior itself (predictions, samples, covariances): one Cholesky
  factor L of Lambda at the current prior and noise, computed on first use and again after
  :meth:`Laplace.update` or :meth:`Laplace.optimize_prior`; the predictive variance is then
  the squared column norms of L^-1 J^T, one triangular solve per chunk of new points.

Eigenvalues rather than a Cholesky factorisation per value: eigvalsh costs a few Cholesky
factorisations of the same matrix (a full eigh many more), so a sweep of more than a handful of
values, as :meth:`Laplace.optimize_prior` makes, is cheaper this way.

Jitter policy: the precision must be positive definite for its log-determinant and inverse
(the exact Hessian can have negative curvature; the GGN's zero eigenvalues can round below
zero).  With lambda_min the smallest eigenvalue of a part's precision and
tol = P_part * eps * max|lambda|, a part with lambda_min < tol gets (tol - lambda_min) added to
its diagonal.  Where C's eigenvalues are not known, a Cholesky factorisation that succeeds is
taken as it is, and one that fails is retried with the jitter sized by Lambda's eigenvalues.
The amount added (the largest over the parts) is reported in ``jitter`` for the posterior's
own prior and noise, and in ``lml_jitter`` for the last
:meth:`Laplace.log_marginal_likelihood` call; 0.0 means that nothing was added.

All linear algebra is done in float64, whatever the network's dtype.
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.special

from . import kfac
from ._validate import check_curvature, check_memory, check_net, choice, integer, real
from .model import MLP

STRUCTURES = ("full", "diag", "blocks", "last-layer", "kfac")
LOSSES = ("mse", "ce", "bce", "poisson", "gaussian")
CLASSIFICATION = ("ce", "bce")
LINKS = ("probit", "mc")
FORMAT = "taylorkern.laplace/1"

# Rows of the Jacobian of new points taken per call: chunks of about this many bytes.
_CHUNK_BYTES = 16 << 20


# ----------------------------------------------------------------------------- parts
class _Part:
    """One diagonal block of the posterior precision: parameters [lo, hi) of the posterior's
    vector, the layer (prior group) of each, and the data curvature C over them: a dense
    matrix, or a vector for the diagonal structure.

    A dense C is read by its lower triangle only (eigvalsh and the Cholesky factorisation read
    no other), so it is kept as the network returned it: the cpp and numba backends' matrices
    are exactly symmetric, the reference backend's to rounding."""

    def __init__(self, lo, hi, groups, curv):
        self.lo, self.hi = lo, hi
        self.groups = groups  # (hi - lo,) int: prior group of each parameter
        self.curv = curv      # (n, n) (its lower triangle), or (n,) for a diagonal part
        self.dense = curv.ndim == 2
        self.spans_groups = len(np.unique(groups)) > 1
        self.eigvals = None   # C's eigenvalues, once computed

    @property
    def size(self):
        return self.hi - self.lo

    def eigenvalues(self):
        if self.eigvals is None:
            self.eigvals = np.linalg.eigvalsh(self.curv)
        return self.eigvals

    def factor(self, c, delta, route="chol"):
        return _Factor(self, c, delta, route)

    def arrays(self, i):
        """What :meth:`Laplace.save` writes of this part (``load`` reads it back)."""
        out = {f"curv{i}": self.curv, f"groups{i}": self.groups}
        if self.eigvals is not None:
            out[f"eigvals{i}"] = self.eigvals
        return out


class _KronPart:
    """Layer l's block as K-FAC approximates it: C = scale (A kron B), A and B the layer's
    factors in a :class:`taylorkern.kfac.KFAC` of the summed loss (shared by the layers), scale
    the NLL's (_nll_scale).  Its eigenvectors are Qa kron Qb and its eigenvalues
    scale a_i b_j, from the factors' eigendecompositions (``KFAC.eigh``); C itself is never
    formed."""

    dense = True
    spans_groups = False

    def __init__(self, lo, hi, groups, K, layer, scale):
        self.lo, self.hi = lo, hi
        self.groups = groups
        self.K, self.layer, self.scale = K, layer, float(scale)
        self.shape = K.shapes[layer]  # (Da, Db): the layer's [W; b] as a matrix
        self._g = None

    @property
    def size(self):
        return self.hi - self.lo

    def eigh(self):
        return self.K.eigh(self.layer)

    def eigenvalues(self):
        """C's eigenvalues scale a_i b_j, (Da Db,) in the order i Db + j."""
        if self._g is None:
            la, _, lb, _ = self.eigh()
            self._g = (self.scale * np.outer(la, lb)).ravel()
        return self._g

    def factor(self, c, delta, route=None):
        return _KronFactor(self, c, delta)

    def arrays(self, i):
        la, Qa, lb, Qb = self.eigh()
        return {f"A{i}": self.K.A[self.layer], f"B{i}": self.K.B[self.layer], f"groups{i}": self.groups,
                f"la{i}": la, f"Qa{i}": Qa, f"lb{i}": lb, f"Qb{i}": Qb}


def _jitter_for(lam):
    """The shift that makes eigenvalues ``lam`` at least tol (0.0 when they already are)."""
    tol = lam.size * np.finfo(np.float64).eps * max(float(np.max(np.abs(lam))), np.finfo(np.float64).tiny)
    lo = float(np.min(lam))
    return tol - lo if lo < tol else 0.0


class _Factor:
    """Lambda_part = c C + diag(delta) (+ jitter I), factorised:

    * "diag": a diagonal part, its values;
    * "eigvals": delta constant over a dense part, Lambda's eigenvalues c g + delta from C's
      eigenvalues g (enough for the log-determinant and the traces the gradient needs);
    * "chol": a Cholesky factor L L^T = Lambda (predictions, samples, covariances, and the
      marginal likelihood where delta varies within the part).
    """

    def __init__(self, part, c, delta, route="chol"):
        self.part = part
        constant = bool(np.all(delta == delta[0]))
        if not part.dense:
            lam = c * part.curv + delta
            self.jitter = _jitter_for(lam)
            self.kind, self.lam = "diag", lam + self.jitter
            return
        if route == "eigvals" and constant:
            lam = c * part.eigenvalues() + delta[0]
            self.jitter = _jitter_for(lam)
            self.kind, self.lam = "eigvals", lam + self.jitter
            return
        # the jitter from the eigenvalues where they are known (the same as the "eigvals" route);
        # else only when the factorisation fails, sized by Lambda's eigenvalues then
        self.jitter = _jitter_for(c * part.eigvals + delta[0]) if constant and part.eigvals is not None else 0.0
        Lc = _cholesky(self._precision(c, delta))
        if Lc is None:
            self.jitter += _jitter_for(np.linalg.eigvalsh(self._precision(c, delta)))
            Lc = _cholesky(self._precision(c, delta))
        self.kind, self.L = "chol", Lc

    def _precision(self, c, delta):
        """c C + diag(delta) + jitter I, a new (n, n) array."""
        A = c * self.part.curv
        A.flat[::self.part.size + 1] += delta + self.jitter
        return A

    def logdet(self):
        if self.kind == "chol":
            return 2.0 * float(np.sum(np.log(np.diag(self.L))))
        return float(np.sum(np.log(self.lam)))

    def inv_diag(self):
        """diag(Lambda^-1)."""
        if self.kind == "diag":
            return 1.0 / self.lam
        if self.kind == "eigvals":  # pragma: no cover - the callers ask the "chol" route for it
            raise AssertionError("diag(Lambda^-1) needs the eigenvectors or a Cholesky factor")
        Linv = scipy.linalg.solve_triangular(self.L, np.eye(self.part.size), lower=True, check_finite=False)
        return np.einsum("ij,ij->j", Linv, Linv)

    def inv_trace(self):
        return float(np.sum(1.0 / self.lam)) if self.kind != "chol" else float(np.sum(self.inv_diag()))

    def trace_inv_curv(self, c, delta, inv_diag=None):
        """tr(Lambda^-1 C)."""
        if self.kind == "diag":
            return float(np.sum(self.part.curv / self.lam))
        if self.kind == "eigvals":
            return float(np.sum(self.part.eigenvalues() / self.lam))
        # Lambda = c C + diag(delta) + jitter I, so tr(Lambda^-1 C) = (n - sum (delta + j) diag(Lambda^-1)) / c
        d = self.inv_diag() if inv_diag is None else inv_diag
        return (self.part.size - float(np.sum((delta + self.jitter) * d))) / c

    def sqrt_cov_T(self, M, overwrite=False):
        """M S for M of shape (m, n), S = L^-T (S S^T = Lambda^-1); ``overwrite``: M may be
        overwritten with the result (no copy when M^T is Fortran-ordered)."""
        if self.kind == "diag":
            return M / np.sqrt(self.lam)
        return scipy.linalg.solve_triangular(self.L, M.T, lower=True, check_finite=False, overwrite_b=overwrite).T

    def output_cov(self, J3, full_cov):
        """This part's share of J Sigma J^T for J3, (m, k, n) the part's columns of the
        Jacobian of m points (which it may overwrite): per point the (k, k) matrices, or their
        diagonals (m, k)."""
        m, k, n = J3.shape
        M = self.sqrt_cov_T(J3.reshape(m * k, n), overwrite=True)
        if full_cov:
            M3 = M.reshape(m, k, -1)
            return np.matmul(M3, M3.transpose(0, 2, 1))
        return np.einsum("ij,ij->i", M, M).reshape(m, k)

    def sqrt_cov(self, Z):
        """S Z for Z of shape (n, m), the same S as sqrt_cov_T."""
        if self.kind == "diag":
            return Z / np.sqrt(self.lam)[:, None]
        return scipy.linalg.solve_triangular(self.L.T, Z, lower=False, check_finite=False)

    def covariance(self):
        if self.kind == "diag":
            return 1.0 / self.lam
        # L^T is the Fortran-ordered upper factor: potrs takes it without a copy
        return scipy.linalg.cho_solve((self.L.T, False), np.eye(self.part.size), check_finite=False)


class _KronFactor(_Factor):
    """Lambda_part = c scale (A kron B) + delta I (+ jitter I) of a :class:`_KronPart` (delta
    constant over the layer), diagonal in the eigenbasis Q = Qa kron Qb:
    Lambda = Q diag(lam) Q^T, lam = c scale a_i b_j + delta.  Everything is exact in that basis:
    log det and traces from lam, diag(Lambda^-1) = (Qa o Qa) lam^-1 (Qb o Qb)^T, and the square
    root S = Q diag(lam)^-1/2 (S S^T = Lambda^-1) applied by two rotations per layer (samples);
    the predictive from the Jacobian's outer-product structure (:meth:`output_cov`)."""

    kind = "kron"

    def __init__(self, part, c, delta):  # always exact in the eigenbasis: no route to choose
        self.part = part
        lam = c * part.eigenvalues() + delta[0]
        self.jitter = _jitter_for(lam)
        self.lam = lam + self.jitter

    def _unrotated(self, W):
        """Q W for W (Da, Db, m), as (n, m)."""
        _, Qa, _, Qb = self.part.eigh()
        return self.part.K._unrotate(W, Qa, Qb).reshape(self.part.size, -1)

    def inv_diag(self):
        _, Qa, _, Qb = self.part.eigh()
        return ((Qa * Qa) @ (1.0 / self.lam).reshape(self.part.shape) @ (Qb * Qb).T).ravel()

    def inv_trace(self):
        return float(np.sum(1.0 / self.lam))

    def trace_inv_curv(self, c, delta, inv_diag=None):
        return float(np.sum(self.part.eigenvalues() / self.lam))

    def sqrt_cov_T(self, M, overwrite=False):  # pragma: no cover - output_cov does not need it
        raise AssertionError("the K-FAC predictive goes through output_cov")

    def output_cov(self, J3, full_cov):
        """The layer's share of J Sigma J^T from the structure of a dense layer's Jacobian:
        for point n and output c, the layer's block (Da, Db) is the outer product
        a~_n D_n[c]^T of the layer's augmented input and the output's derivative in the layer's
        pre-activations, so that in the eigenbasis it is (Qa^T a~_n)(Qb^T D_n[c])^T and

            (J Sigma J^T)_n[c, c'] = sum_j (Qb^T D_n[c])_j (Qb^T D_n[c'])_j w_n[j],
            w_n[j] = sum_i (Qa^T a~_n)_i^2 / lam_ij.

        D_n is the bias row of the block (a~ ends in 1); a~_n the least-squares fit of the block
        to a~ D^T, sum_cj J[c, i, j] D[c, j] / |D|^2 (exact to rounding; 0 where D = 0, where the
        block is 0).  O(k Da Db + Da^2 + k Db^2) per point, against O(k Da Db (Da + Db)) for
        rotating the block itself."""
        Da, Db = self.part.shape
        m, k, _ = J3.shape
        J4 = J3.reshape(m, k, Da, Db)
        D = J4[:, :, Da - 1, :]
        dd = np.einsum("mcj,mcj->m", D, D)
        a = np.einsum("mcij,mcj->mi", J4, D) / np.where(dd > 0, dd, 1.0)[:, None]
        _, Qa, _, Qb = self.part.eigh()
        ar = a @ Qa                                                # (m, Da): Qa^T a~ per point
        Dr = D @ Qb                                                # (m, k, Db)
        w = (ar * ar) @ (1.0 / self.lam).reshape(Da, Db)           # (m, Db)
        if full_cov:
            return np.einsum("mcj,mdj->mcd", Dr * w[:, None, :], Dr)
        return np.einsum("mcj,mcj->mc", Dr * w[:, None, :], Dr)

    def sqrt_cov(self, Z):
        return self._unrotated(Z.reshape(*self.part.shape, -1) / np.sqrt(self.lam).reshape(self.part.shape)[:, :, None])

    def covariance(self):
        _, Qa, _, Qb = self.part.eigh()
        Q = np.kron(Qa, Qb)
        return (Q / self.lam) @ Q.T


def _cholesky(A):
    """The lower Cholesky factor L of A (from its lower triangle), or None where A is not
    (numerically) positive definite.  A C-ordered A is factorised in place, as the upper factor
    of its Fortran-ordered view A^T (whose upper triangle is A's lower one): L = U^T is then a
    view of A's memory, and no copy of the matrix is made."""
    if not A.flags.c_contiguous:
        A = np.ascontiguousarray(A)
    U, info = scipy.linalg.lapack.dpotrf(A.T, lower=0, clean=1, overwrite_a=1)
    Lc = U.T
    return Lc if info == 0 and np.all(np.diag(Lc) > 0) else None


# ----------------------------------------------------------------------------- checks
def _check_prior(prior, n_groups, n_params, name="prior_precision", per_param=True):
    """(kind, values): kind "scalar" (one value), "layer" (n_groups) or "diagonal" (n_params,
    refused unless ``per_param``); values a float64 array of positive finite numbers."""
    if isinstance(prior, numbers.Real) and not isinstance(prior, bool):
        v = real(name, prior, lo=0.0, lo_open=True)
        return "scalar", np.array([v])
    arr = np.asarray(prior)
    if arr.dtype.kind not in "fiu" or arr.ndim > 1:
        raise ValueError(f"{name}: expected a positive number, {n_groups} per-layer values or "
                         f"{n_params} per-parameter values, got {prior!r:.80}")
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size == 1 and np.ndim(prior) == 0:
        kind = "scalar"
    elif arr.size == n_groups:
        kind = "layer"
    elif arr.size == n_params:
        kind = "diagonal"
    else:
        raise ValueError(f"{name}: expected a positive number, {n_groups} per-layer values or "
                         f"{n_params} per-parameter values, got {arr.size} values")
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name}: every value must be finite and > 0")
    if kind == "diagonal" and not per_param:
        raise ValueError(f"{name}: structure='kfac' takes a scalar or {n_groups} per-layer values; a "
                         f"per-parameter prior ({n_params} values) breaks the Kronecker structure "
                         "(use structure='full', 'blocks' or 'diag' for it)")
    return kind, arr


def _check_sigma(loss, sigma):
    s = real("sigma_noise", sigma, lo=0.0, lo_open=True)
    if loss != "mse" and s != 1.0:
        kind = "classification " if loss in CLASSIFICATION else ""
        raise ValueError(f"sigma_noise: {kind}({loss!r}) has no noise parameter; expected 1.0, got {sigma!r}")
    return s


def _check_structure(structure):
    return choice("structure", structure, STRUCTURES)


# ----------------------------------------------------------------------------- posterior
class Laplace:
    """A fitted Laplace posterior N(theta*, Lambda^-1); made by :func:`fit` or :func:`load`.

    Attributes
    ----------
    net : taylorkern.MLP
    theta : (P_net,) the mode theta* the posterior is centred on (the network's dtype).
    structure, curvature : as given to :func:`fit`.
    prior_precision : float or (n,) array, as given (or as :meth:`optimize_prior` set it);
        assigning it is :meth:`update`.
    sigma_noise : float (1.0 for classification); assigning it is :meth:`update`.
    n_data, n_outputs : N (the sum of the sample weights, where given) and k of the data fitted.
    n_params : P, the posterior's parameter count (the last layer's for "last-layer").
    param_slice : the slice of theta the posterior covers.
    jitter : what the jitter policy added to the precision's diagonal at the current prior and
        noise (0.0: nothing).
    lml_jitter : the same for the last :meth:`log_marginal_likelihood` call.
    kfac_kind, kfac_seed, kfac_mc_samples : for "kfac", the factors' kind ("exact" or "mc"),
        the draws' seed (None for "exact") and draws per sample; None for the other structures.
    """

    def __init__(self, net, theta, structure, curvature, parts, prior, sigma_noise, n_data, data_term):
        self.net = net
        self.theta = theta
        self.structure = structure
        self.curvature = curvature
        self._parts = parts
        n_data = float(n_data)  # the sum of the weights where the fit had them
        self.n_data = int(n_data) if n_data.is_integer() else n_data
        self.n_outputs = net.num_outputs
        self._data_term = float(data_term)  # SSE (mse), or the negative log likelihood (the others)
        L = net.num_layers
        lo = net.offsets[L - 1] if structure == "last-layer" else 0
        self.param_slice = slice(lo, net.num_params)
        self.n_params = net.num_params - lo
        self._groups = np.concatenate([p.groups for p in parts])
        self.n_groups = 1 if structure == "last-layer" else L
        self._mean = np.asarray(theta[self.param_slice], dtype=np.float64)
        self._prior_kind, self._prior = self._check_prior(prior)
        self._sigma = _check_sigma(net.loss_name, sigma_noise)
        self.lml_jitter = None
        self._factors = None

    # -------------------------------------------------------------- K-FAC's options
    def _kfac(self, attr):
        return getattr(self._parts[0].K, attr) if self.structure == "kfac" else None

    @property
    def kfac_kind(self):
        return self._kfac("kind")

    @property
    def kfac_seed(self):
        return self._kfac("seed")

    @property
    def kfac_mc_samples(self):
        return self._kfac("mc_samples")

    # -------------------------------------------------------------- prior and noise
    def _check_prior(self, prior):
        return _check_prior(prior, self.n_groups, self.n_params, per_param=self.structure != "kfac")

    @property
    def prior_precision(self):
        return float(self._prior[0]) if self._prior_kind == "scalar" else self._prior.copy()

    @prior_precision.setter
    def prior_precision(self, value):
        self.update(prior_precision=value)

    @property
    def sigma_noise(self):
        return self._sigma

    @sigma_noise.setter
    def sigma_noise(self, value):
        self.update(sigma_noise=value)

    def _delta(self, kind, values):
        """Per-parameter prior precision (P,) from a prior of ``kind``."""
        if kind == "scalar":
            return np.full(self.n_params, values[0])
        if kind == "layer":
            return values[self._groups]
        return values

    def _scale(self, sigma):
        return 1.0 / (sigma * sigma) if self.net.loss_name == "mse" else 1.0

    def _factorise(self, delta, sigma):
        c = self._scale(sigma)
        return [p.factor(c, delta[p.lo:p.hi]) for p in self._parts]

    def _lml_factors(self, kind, delta, sigma, need_diag, from_state):
        """Factors for a marginal-likelihood evaluation: C's eigenvalues wherever the prior is
        constant over a dense part and the gradient needs no per-parameter diag(Lambda^-1)
        (O(P) per evaluation once the eigenvalues are known), the posterior's own Cholesky
        factors at its own prior and noise, a fresh Cholesky factorisation otherwise."""
        c = self._scale(sigma)
        state = self._current() if from_state else None
        out = []
        for i, p in enumerate(self._parts):
            per_param = need_diag and (kind == "diagonal" or p.spans_groups)
            d = delta[p.lo:p.hi]
            if p.dense and not per_param and np.all(d == d[0]):
                out.append(p.factor(c, d, route="eigvals"))
            else:
                out.append(state[i] if state is not None else p.factor(c, d))
        return out

    def _current(self):
        if self._factors is None:
            self._factors = self._factorise(self._delta(self._prior_kind, self._prior), self.sigma_noise)
        return self._factors

    @property
    def jitter(self):
        return max(f.jitter for f in self._current())

    def update(self, prior_precision=None, sigma_noise=None):
        """Set the prior precision and/or the noise (None keeps the current one); the curvature
        and its eigendecompositions are kept.  Returns self."""
        if prior_precision is None:
            kind, values = self._prior_kind, self._prior
        else:
            kind, values = self._check_prior(prior_precision)
        sigma = self.sigma_noise if sigma_noise is None else _check_sigma(self.net.loss_name, sigma_noise)
        self._set(kind, values, sigma)
        return self

    def _set(self, kind, values, sigma):
        self._prior_kind, self._prior, self._sigma = kind, values, sigma
        self._factors = None

    # -------------------------------------------------------------- marginal likelihood
    def log_likelihood(self, sigma_noise=None):
        """log p(Y | X, theta*): for mse -SSE/(2 sigma^2) - (N k/2) log(2 pi sigma^2), for the
        other losses minus their negative log likelihood (module docstring)."""
        sigma = self.sigma_noise if sigma_noise is None else _check_sigma(self.net.loss_name, sigma_noise)
        if self.net.loss_name != "mse":
            return -self._data_term
        nk = self.n_data * self.n_outputs
        return -0.5 * self._data_term / sigma ** 2 - 0.5 * nk * math.log(2.0 * math.pi * sigma ** 2)

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None, return_grad=False):
        """The Laplace approximation of log p(Y | X) at a prior precision and noise:

            log p(Y | X, theta*) - 1/2 theta*^T diag(delta) theta* + 1/2 log det diag(delta)
                                 - 1/2 log det Lambda

        (theta* restricted to the posterior's parameters).

        Parameters
        ----------
        prior_precision : None (the posterior's), a positive number, per-layer or per-parameter
            values (as :func:`fit` takes them).
        sigma_noise : None (the posterior's) or a positive number (mse only; ce takes 1.0).
        return_grad : bool
            Also return the gradient.

        Returns
        -------
        float, or (float, grad_prior, grad_sigma) with ``return_grad``: grad_prior has the
        shape of the prior given (a float for a scalar), grad_sigma is d/d sigma_noise (0.0
        for classification).
        """
        if prior_precision is None:
            kind, values = self._prior_kind, self._prior
        else:
            kind, values = self._check_prior(prior_precision)
        sigma = self.sigma_noise if sigma_noise is None else _check_sigma(self.net.loss_name, sigma_noise)
        from_state = prior_precision is None and sigma_noise is None
        delta = self._delta(kind, values)
        if from_state and not return_grad:  # the posterior's own Cholesky factors suffice
            factors = self._current()
        else:
            factors = self._lml_factors(kind, delta, sigma, bool(return_grad) and kind != "scalar", from_state)
        self.lml_jitter = max(f.jitter for f in factors)
        th = self._mean
        value = (self.log_likelihood(sigma) - 0.5 * float(np.dot(delta * th, th))
                 + 0.5 * float(np.sum(np.log(delta))) - 0.5 * sum(f.logdet() for f in factors))
        if not return_grad:
            return value
        c = self._scale(sigma)
        g_delta = -0.5 * th * th + 0.5 / delta  # per parameter, before the log det term
        if kind == "scalar":
            g = float(np.sum(g_delta)) - 0.5 * sum(f.inv_trace() for f in factors)
            trs = [f.trace_inv_curv(c, delta[f.part.lo:f.part.hi]) for f in factors]
            grad_prior = g
        elif kind == "diagonal":
            inv = [f.inv_diag() for f in factors]
            trs = [f.trace_inv_curv(c, delta[f.part.lo:f.part.hi], d) for f, d in zip(factors, inv)]
            grad_prior = g_delta - 0.5 * np.concatenate(inv)
        else:  # per layer: a part within one layer needs only its trace
            grad_prior = np.bincount(self._groups, g_delta, self.n_groups)
            trs = []
            for f in factors:
                p, d = f.part, delta[f.part.lo:f.part.hi]
                if p.spans_groups:
                    inv = f.inv_diag()
                    grad_prior -= 0.5 * np.bincount(p.groups, inv, self.n_groups)
                    trs.append(f.trace_inv_curv(c, d, inv))
                else:
                    grad_prior[p.groups[0]] -= 0.5 * f.inv_trace()
                    trs.append(f.trace_inv_curv(c, d))
        if self.net.loss_name == "mse":
            nk = self.n_data * self.n_outputs
            # Lambda = C / sigma^2 + ...: d(-1/2 log det Lambda)/d sigma = tr(Lambda^-1 C) / sigma^3
            grad_sigma = self._data_term / sigma ** 3 - nk / sigma + sum(trs) / sigma ** 3
        else:
            grad_sigma = 0.0
        return value, grad_prior, grad_sigma

    def optimize_prior(self, prior=True, noise=True, max_iter=200):
        """Set the prior precision (and, for mse, sigma_noise) to maximise the marginal
        likelihood, over their logarithms by L-BFGS-B with the analytic gradient; the prior
        keeps its form (scalar, per layer or per parameter).

        Parameters
        ----------
        prior, noise : bool
            Which to tune (noise only for mse).
        max_iter : int

        Returns
        -------
        scipy.optimize.OptimizeResult of the minimisation of minus the log marginal likelihood.
        """
        prior = bool(prior)
        noise = bool(noise) and self.net.loss_name == "mse"
        max_iter = integer("max_iter", max_iter, 1)
        kind, p0, s0 = self._prior_kind, self._prior.copy(), self.sigma_noise
        n_p = p0.size if prior else 0

        def unpack(x):
            p = np.exp(x[:n_p]) if prior else p0
            s = float(np.exp(x[n_p])) if noise else s0
            return p, s

        def f(x):
            p, s = unpack(x)
            arg = float(p[0]) if kind == "scalar" else p
            v, gp, gs = self.log_marginal_likelihood(arg, s, return_grad=True)
            grad = []
            if prior:
                grad.append(np.atleast_1d(gp) * p)  # d/d log p
            if noise:
                grad.append([gs * s])
            return -v, -np.concatenate(grad) if grad else np.zeros(0)

        x0 = np.concatenate([np.log(p0) if prior else [], [math.log(s0)] if noise else []])
        if x0.size == 0:
            raise ValueError("optimize_prior: nothing to tune (prior=False and no noise parameter)")
        bounds = [(-40.0, 40.0)] * x0.size  # keeps exp() finite
        res = scipy.optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                      options={"maxiter": max_iter})
        p, s = unpack(res.x)
        self._set(kind, p, s)
        return res

    def effective_num_params(self):
        """MacKay's effective number of parameters, tr(c C Lambda^-1) = sum_i c g_i / (c g_i + delta)
        for a prior constant over each dense part (from C's eigenvalues g: accurate also where
        Lambda is ill-conditioned), P - sum_j delta_j (Lambda^-1)_jj otherwise."""
        delta = self._delta(self._prior_kind, self._prior)
        c = self._scale(self.sigma_noise)
        total = 0.0
        for p in self._parts:
            d = delta[p.lo:p.hi]
            if not p.dense or np.all(d == d[0]):
                g = c * (p.eigenvalues() if p.dense else p.curv)
                total += float(np.sum(g / (g + d)))
            else:
                total += p.size - float(np.sum(d * p.factor(c, d).inv_diag()))
        return total

    # -------------------------------------------------------------- posterior moments
    def variance(self):
        """diag(Sigma), shape (P,), for every structure."""
        return np.concatenate([f.inv_diag() for f in self._current()])

    def covariance(self):
        """Sigma = Lambda^-1 over the posterior's parameters, (P, P) (block diagonal for
        "blocks"); for "diag" the (P,) diagonal."""
        factors = self._current()
        if self.structure == "diag":
            return self.variance()
        check_memory("the posterior covariance", float(self.n_params) ** 2)
        out = np.zeros((self.n_params, self.n_params))
        for f in factors:
            out[f.part.lo:f.part.hi, f.part.lo:f.part.hi] = f.covariance()
        return out

    # -------------------------------------------------------------- predictions
    def _chunks(self, n):
        P = self.net.num_params
        rows = max(1, int(_CHUNK_BYTES // (8 * P * self.n_outputs * 3)))
        return [(i, min(n, i + rows)) for i in range(0, n, rows)]

    def predict_f(self, X, full_cov=True):
        """The linearised (GLM) predictive of the network's outputs at new points:
        f(x) ~ N(f(x, theta*), J(x) Sigma J(x)^T), J(x) the Jacobian of the outputs in theta.

        Returns
        -------
        mean (n, k), and the covariance (n, k, k) (``full_cov``) or variances (n, k).
        The Jacobian is taken by ``net.jacobian`` a chunk of rows at a time.
        """
        mean = np.asarray(self.net.predict(self.theta, X), dtype=np.float64)
        n, k = mean.shape
        factors = self._current()
        var = np.zeros((n, k, k)) if full_cov else np.zeros((n, k))
        Xa = np.asarray(X)
        sl = self.param_slice
        for a, b in self._chunks(n):
            J = np.asarray(self.net.jacobian(self.theta, Xa[a:b]), dtype=np.float64)[:, sl]
            for f in factors:
                var[a:b] += f.output_cov(J[:, f.part.lo:f.part.hi].reshape(b - a, k, -1), full_cov)
        return mean, var

    def predict(self, X, link=None, noise=True, full_cov=False, n_samples=100, seed=0):
        """Predictions with their uncertainty.

        Parameters
        ----------
        X : (n, d0)
        link : {None, "probit", "mc"}
            Classification only (None means "probit"): the probit approximation softmax(f / sqrt(1 + pi/8 var_c)) of the
            expected softmax (bce: sigma(f_c / sqrt(1 + pi/8 var_c)) per output), or the average
            softmax (bce: sigma per output) of ``n_samples`` draws of f from its linearised
            Gaussian (seeded by ``seed``).
        noise : bool
            Regression only: the predictive of y, with its noise (mse: sigma_noise^2; poisson: the
            count's own variance, its expected rate; gaussian: the expected noise variance
            E[e^v]), rather than of the mean alone.
        full_cov : bool
            Regression only: return the (n, k, k) covariances of the outputs instead of variances.

        Returns
        -------
        Regression (mse): mean (n, k) and variance (n, k) (or covariance (n, k, k)), where the
        variance is diag(J Sigma J^T) (+ sigma_noise^2 with ``noise``).  poisson: the mean and
        variance of the rate e^f under f's Gaussian (log-normal moments: exp(m + v/2), and
        E[e^f_i] E[e^f_j] (e^(Sigma_ij) - 1)), plus the expected rate with ``noise``.  gaussian:
        of the h means, as mse, with E[e^v] = exp(m_v + var_v / 2) the noise (n, h).  Classification: ce's
        class probabilities (n, k); bce's probability of y_c = 1 for each output (n, k).
        """
        loss = self.net.loss_name
        if loss not in CLASSIFICATION:
            if link is not None:
                raise ValueError(f"link: regression ({loss!r}) has no link; expected None, got {link!r}")
            return self._predict_regression(X, bool(noise), bool(full_cov))
        link = choice("link", "probit" if link is None else link, LINKS)
        if self.net.loss_name == "bce":  # an independent Bernoulli per output: the marginals suffice
            mean, var = self.predict_f(X, full_cov=False)
            if link == "probit":
                return scipy.special.expit(mean / np.sqrt(1.0 + math.pi / 8.0 * var))
            n_samples = integer("n_samples", n_samples, 1)
            eps = np.random.default_rng(seed).standard_normal((n_samples,) + mean.shape)
            return scipy.special.expit(mean[None] + np.sqrt(var)[None] * eps).mean(axis=0)
        if link == "probit":
            mean, var = self.predict_f(X, full_cov=False)
            z = mean / np.sqrt(1.0 + math.pi / 8.0 * var)
        else:
            n_samples = integer("n_samples", n_samples, 1)
            mean, cov = self.predict_f(X, full_cov=True)
            n, k = mean.shape
            # a Cholesky factor of each k x k covariance (eigen-clipped: J Sigma J^T is PSD
            # but may have rank < k, e.g. softmax's shift direction)
            w, V = np.linalg.eigh(cov)
            R = V * np.sqrt(np.clip(w, 0.0, None))[:, None, :]
            eps = np.random.default_rng(seed).standard_normal((n_samples, n, k))
            z = mean[None] + np.einsum("nij,snj->sni", R, eps)
        z = z - z.max(axis=-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        return p if link == "probit" else p.mean(axis=0)

    def _predict_regression(self, X, noise, full_cov):
        loss = self.net.loss_name
        if loss == "mse":
            mean, var = self.predict_f(X, full_cov=full_cov)
            s2 = self.sigma_noise ** 2 if noise else 0.0
        elif loss == "poisson":  # the rate e^f, f ~ N(m, Sigma): log-normal moments
            m, cov = self.predict_f(X, full_cov=True)
            v = np.diagonal(cov, axis1=1, axis2=2)
            mean = np.exp(m + 0.5 * v)
            var = mean[:, :, None] * mean[:, None, :] * np.expm1(cov)
            if not full_cov:
                var = np.diagonal(var, axis1=1, axis2=2).copy()
            s2 = mean if noise else 0.0  # a Poisson count's variance is its rate
        else:  # gaussian: the means' uncertainty, and the expected noise variance E[e^v]
            h = self.n_outputs // 2
            m, cov = self.predict_f(X, full_cov=True)
            mean, var = m[:, :h], cov[:, :h, :h]
            if not full_cov:
                var = np.diagonal(var, axis1=1, axis2=2).copy()
            s2 = np.exp(m[:, h:] + 0.5 * np.diagonal(cov, axis1=1, axis2=2)[:, h:]) if noise else 0.0
        s2 = np.broadcast_to(s2, mean.shape)  # the noise variance of each output
        return mean, (var + s2[:, :, None] * np.eye(mean.shape[1]) if full_cov else var + s2)

    def sample(self, n, seed=0):
        """``n`` draws of theta from the posterior, shape (n, P_net) in the network's dtype
        (parameters outside the posterior, for "last-layer", stay at theta*)."""
        n = integer("n", n, 1)
        check_memory("samples of theta", float(n) * self.net.num_params * 2)
        Z = np.random.default_rng(seed).standard_normal((self.n_params, n))
        D = np.concatenate([f.sqrt_cov(Z[f.part.lo:f.part.hi]) for f in self._current()], axis=0)
        out = np.tile(np.asarray(self.theta, dtype=np.float64), (n, 1))
        out[:, self.param_slice] += D.T
        return out.astype(self.net.dtype)

    # -------------------------------------------------------------- saving
    def save(self, path):
        """Write the posterior to ``path`` with ``numpy.savez`` (numpy's .npz; numpy appends
        ".npz" when the name lacks it): arrays and a JSON header, no pickled objects, so that
        :func:`load` reads it with ``allow_pickle=False``.  Returns the path written."""
        net = self.net
        meta = {
            "format": FORMAT, "sizes": list(net.sizes),
            "activation": net.activation if isinstance(net.activation, str) else list(net.activation),
            "loss": net.loss_name, "l2": net.l2, "dtype": net.dtype.name,
            "structure": self.structure, "curvature": self.curvature, "prior_kind": self._prior_kind,
            "sigma_noise": self.sigma_noise, "n_data": self.n_data, "data_term": self._data_term,
            "parts": [[p.lo, p.hi] for p in self._parts],
        }
        if self.structure == "kfac":
            K = self._parts[0].K
            meta.update(kfac_kind=K.kind, kfac_seed=K.seed, kfac_mc_samples=K.mc_samples)
        arrays = {"meta": np.array(json.dumps(meta)), "theta": np.asarray(self.theta),
                  "prior": self._prior}
        for i, p in enumerate(self._parts):
            arrays.update(p.arrays(i))
        path = str(path)
        np.savez(path, **arrays)
        return path if path.endswith(".npz") else path + ".npz"

    def __repr__(self):
        return (f"Laplace(structure={self.structure!r}, curvature={self.curvature!r}, n_params={self.n_params}, "
                f"prior_precision={self.prior_precision!r}, sigma_noise={self.sigma_noise:g}"
                + (f", kfac_kind={self.kfac_kind!r}" if self.structure == "kfac" else "") + ")")


def load(path):
    """A posterior written by :meth:`Laplace.save` (read with ``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        try:
            meta = json.loads(str(z["meta"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"path: {path!r} is not a saved taylorkern.laplace posterior") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"path: unknown format {meta.get('format')!r}; expected {FORMAT!r}")
        act = meta["activation"]
        net = MLP(meta["sizes"], activation=act if isinstance(act, str) else tuple(act), loss=meta["loss"],
                  l2=meta["l2"], dtype=meta["dtype"])
        parts = []
        spans = meta["parts"]
        if meta["structure"] == "kfac":
            r = range(len(spans))
            K = kfac.KFAC(net, [(z[f"A{i}"], z[f"B{i}"]) for i in r], 0.0, meta["kfac_kind"], "sum",
                          meta.get("kfac_seed"), meta.get("kfac_mc_samples", 1),
                          eighs=[[z[f"{a}{i}"] for a in ("la", "Qa", "lb", "Qb")] for i in r])
            for i, (lo, hi) in enumerate(spans):
                parts.append(_KronPart(lo, hi, z[f"groups{i}"].astype(np.intp), K, i, _nll_scale(net)))
        else:
            for i, (lo, hi) in enumerate(spans):
                p = _Part(lo, hi, z[f"groups{i}"].astype(np.intp), z[f"curv{i}"].astype(np.float64))
                if f"eigvals{i}" in z:
                    p.eigvals = z[f"eigvals{i}"]
                parts.append(p)
        prior = z["prior"]
        prior = float(prior[0]) if meta["prior_kind"] == "scalar" else prior
        return Laplace(net, z["theta"].astype(net.dtype), meta["structure"], meta["curvature"], parts, prior,
                       meta["sigma_noise"], meta["n_data"], meta["data_term"])


# ----------------------------------------------------------------------------- fit
def fit(net, theta, X, Y, structure="full", curvature="ggn", prior_precision=1.0, sigma_noise=1.0,
        kfac_kind="exact", seed=None, mc_samples=1, sample_weight=None):
    """Fit the Laplace approximation at a trained theta.

    Parameters
    ----------
    net : taylorkern.MLP with loss "mse", "poisson" or "gaussian" (regression), "ce" or "bce"
        (classification).
    theta : (P,) the trained parameters (a mode of the log posterior).
    X, Y : the training data, as for the network's other calls.
    structure : {"full", "diag", "blocks", "last-layer", "kfac"}
        Which part of the precision to keep, or K-FAC's approximation of it (module docstring).
    curvature : {"ggn", "hessian"}
        The generalized Gauss-Newton matrix (positive semi-definite) or the exact Hessian
        ("kfac" approximates the GGN only).
    prior_precision : float, or (L,) per layer, or (P,) per parameter
        Precision of the zero-mean Gaussian prior (for "last-layer": a float, 1 value, or one
        per parameter of the last layer; for "kfac" a float or per layer).
    sigma_noise : float
        Standard deviation of the Gaussian noise of mse regression; 1.0 for the other losses.
    kfac_kind : {"exact", "mc"}
        For "kfac": K-FAC's B from the exact output Hessians, or from ``mc_samples`` gradients
        per sample at targets drawn from the model (``kind`` of :func:`taylorkern.kfac.factors`).
    seed : None or int >= 0
        For kfac_kind="mc": the draws' seed.  None draws one from the operating system's
        entropy; the seed used is kept (``Laplace.kfac_seed``) and saved with the posterior.
    mc_samples : int >= 1
        For kfac_kind="mc": draws per sample.
    sample_weight : None or (N,) array
        Weights of the samples' log likelihoods (finite, >= 0, a positive sum), as frequencies:
        sample n counts w_n times in the data term, its curvature and the constants of the
        likelihood (``n_data`` is then sum w), so that integer weights give the posterior of the
        data with each row repeated w_n times.

    Returns
    -------
    Laplace
    """
    net = check_net(net)
    if net.loss_name not in LOSSES:
        raise ValueError(f"net: the Laplace posterior is implemented for the losses {LOSSES} (likelihoods), "
                         f"not {net.loss_name!r} (not a normalised likelihood)")
    structure = _check_structure(structure)
    curvature = check_curvature(curvature)
    if structure == "kfac" and curvature != "ggn":
        raise ValueError(f"curvature: structure='kfac' approximates the GGN; expected 'ggn', got {curvature!r}")
    kfac_kind, seed, mc_samples = _check_kfac_options(structure, kfac_kind, seed, mc_samples)
    L, P = net.num_layers, net.num_params
    lo = net.offsets[L - 1] if structure == "last-layer" else 0
    n_groups = 1 if structure == "last-layer" else L
    _check_prior(prior_precision, n_groups, P - lo, per_param=structure != "kfac")
    _check_sigma(net.loss_name, sigma_noise)
    if structure == "full":
        check_memory(f"a full Laplace posterior (P = {P})", 3.0 * P * P,
                     "use structure='blocks', 'diag' or 'last-layer'")
    elif structure in ("blocks", "last-layer"):
        # the blocks of every layer are computed, also for the last layer's alone
        check_memory(f"the {structure} Laplace posterior", 3.0 * sum(s * s for s in net.layer_sizes),
                     "use structure='diag'")
    # the summed data term checks theta, X, Y and the weights before any curvature is computed
    S = net.loss(theta, X, Y, reduction="sum", sample_weight=sample_weight)
    theta = np.array(theta, dtype=net.dtype)
    w = net._check_weights(sample_weight, np.shape(X)[0], "sum")  # None where all ones
    N = np.shape(X)[0] if w is None else float(w.sum())
    scale = _nll_scale(net)
    data_term = _nll(net, S, Y, w)
    layer_of = np.repeat(np.arange(L), net.layer_sizes)
    parts = []
    if structure == "full":
        fn = net.ggn if curvature == "ggn" else net.hessian
        parts.append(_Part(0, P, layer_of, _scaled(fn(theta, X, Y, reduction="sum", sample_weight=w), scale)))
    elif structure == "diag":
        fn = net.ggn_diag if curvature == "ggn" else net.hessian_diag
        d = np.asarray(fn(theta, X, Y, reduction="sum", sample_weight=w), dtype=np.float64) * scale
        for l in range(L):
            a, b = net.offsets[l], net.offsets[l + 1]
            parts.append(_Part(a, b, layer_of[a:b], d[a:b]))
    elif structure == "kfac":
        # the factors of the summed loss (no l2): A kron B approximates the GGN of reduction="sum"
        K = kfac.factors(net, theta, X, Y, kind=kfac_kind, seed=seed, mc_samples=mc_samples, reduction="sum",
                         sample_weight=w)
        for l in range(L):
            a, b = net.offsets[l], net.offsets[l + 1]
            parts.append(_KronPart(a, b, layer_of[a:b], K, l, scale))
    else:
        fn = net.ggn_blocks if curvature == "ggn" else net.hessian_blocks
        blocks = fn(theta, X, Y, reduction="sum", sample_weight=w)
        if structure == "blocks":
            for l, B in enumerate(blocks):
                a, b = net.offsets[l], net.offsets[l + 1]
                parts.append(_Part(a, b, layer_of[a:b], _scaled(B, scale)))
        else:
            parts.append(_Part(0, P - lo, np.zeros(P - lo, dtype=np.intp), _scaled(blocks[-1], scale)))
    return Laplace(net, theta, structure, curvature, parts, prior_precision, sigma_noise, N, data_term)


def _check_kfac_options(structure, kind, seed, mc_samples):
    """(kind, seed, mc_samples) for :func:`fit`: the K-FAC options are refused where they
    would be ignored (another structure; a seed or draws for kind "exact"), and a None seed of
    kind "mc" becomes one drawn from the OS's entropy, so that the posterior records its draws."""
    kind = choice("kfac_kind", kind, kfac.KINDS)
    mc_samples = integer("mc_samples", mc_samples, 1)
    if seed is not None:
        seed = integer("seed", seed, 0)  # an int, not a Generator: it is saved with the posterior
    given = [name for name, v in (("kfac_kind", kind != "exact"), ("seed", seed is not None),
                                  ("mc_samples", mc_samples != 1)) if v]
    if structure != "kfac" and given:
        raise ValueError(f"{given[0]}: kfac_kind, seed and mc_samples apply to structure='kfac' only, "
                         f"got structure={structure!r}")
    if kind == "exact" and given:
        raise ValueError(f"{given[0]}: seed and mc_samples apply to kfac_kind='mc' only; "
                         f"got kfac_kind='exact' with seed={seed!r}, mc_samples={mc_samples!r}")
    if kind == "mc" and seed is None:
        seed = int(np.random.SeedSequence().entropy)
    return kind, seed, mc_samples


def _nll_scale(net):
    """The NLL's curvature at sigma = 1 per unit of the summed loss's: k/2 for mse, 1 for ce, k
    for bce and poisson (whose losses are means over the outputs), h = k/2 for gaussian (a mean
    over the pairs)."""
    k = net.num_outputs
    return {"mse": 0.5 * k, "ce": 1.0, "bce": float(k), "poisson": float(k), "gaussian": 0.5 * k}[net.loss_name]


def _nll(net, S, Y, w=None):
    """The data term kept by the posterior from the summed (weighted) loss S: mse's SSE (its
    noise enters in log_likelihood), else the negative log likelihood with its constants, each
    sample's counted w_n times."""
    k = net.num_outputs
    if net.loss_name == "mse":
        return k * S
    if net.loss_name == "poisson":
        per_sample = np.sum(scipy.special.gammaln(np.asarray(Y, dtype=np.float64).reshape(len(Y), -1) + 1.0), axis=1)
        return k * S + float(np.sum(per_sample if w is None else w * per_sample))
    if net.loss_name == "gaussian":
        n_targets = np.size(Y) if w is None else float(w.sum()) * (k // 2)  # N h
        return 0.5 * k * S + 0.5 * n_targets * math.log(2.0 * math.pi)
    return _nll_scale(net) * S


def _scaled(M, scale):
    """A curvature the network returned, as float64 times ``scale``: in place where it is a
    writable float64 array already (a fresh result of the call, not shared), else a copy."""
    C = np.asarray(M, dtype=np.float64)
    if C is M and not C.flags.writeable:
        return C * scale
    C *= scale  # C is M itself, or asarray's new float64 copy of it
    return C
