"""Kronecker-factored curvature (K-FAC, EKFAC), and how far it is from the exact GGN.

K-FAC replaces each layer's GGN block by one Kronecker product. Layer l's block is
(docs/kfac.md)

    G_l = sum_n  (a~_n a~_n^T)  kron  (sum_r u_nr u_nr^T),

a~_n the layer's inputs with a 1 appended (the order of [Wl; bl]'s rows in theta) and u_nr the
rows of a square root of sample n's output Hessian backpropagated to the layer's
pre-activations. K-FAC takes the expectation of each factor apart:

    G_l  ~  A_l kron B_l,   A_l = mean_n a~_n a~_n^T,   B_l = sum_n sum_r u_nr u_nr^T,

exact for one sample through one layer. ``kind="exact"`` uses the dL rows of the square root
(K-FAC's "KFLR"), ``kind="mc"`` gradients at targets drawn from the model (seeded). l2 (with
reduction="mean") is added as ``l2 I`` to every block, as the MLP adds it to ``ggn_blocks``.

    K = kfac.factors(net, theta, X, Y)          # KFAC: K.A[l], K.B[l]
    K.mv(v); K.inverse_mv(v, damping); K.logdet(damping); K.blocks(); K.matrix()
    E = K.ekfac(net, theta, X, Y)               # EKFAC: K's eigenbasis, exact eigenvalues
    q = kfac.quality(net, theta, X, Y)          # per-layer error, step cosine
    print(q)

``inverse_mv`` and ``logdet`` with ``method="eigen"`` (the default) are exact for the damped
matrix ``A kron B + (l2 + damping) I``, from the factors' eigendecompositions:
``(Qa kron Qb) (la lb^T + lambda) (Qa kron Qb)^T``. ``method="factored"`` is Martens and
Grosse's factored Tikhonov damping, ``(A + pi sqrt(lambda) I) kron (B + sqrt(lambda)/pi I)``
with ``pi = sqrt((tr A / dim A) / (tr B / dim B))``, solved by two Cholesky factorisations: an
approximation of the damped matrix (it adds the cross terms pi sqrt(lambda) I kron B and
A kron sqrt(lambda)/pi I), cheaper to refresh and the one the literature's optimizers use.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ._validate import check_memory, check_net, choice, real

KINDS = ("exact", "mc")
METHODS = ("eigen", "factored")

__all__ = ["EKFAC", "KFAC", "Quality", "ekfac", "factors", "quality"]


def _layer_shapes(net):
    return [(a + 1, b) for a, b in zip(net.sizes[:-1], net.sizes[1:])]


class _Kronecker:
    """What K-FAC and EKFAC share: per layer an eigenbasis (Qa, Qb) and eigenvalues S
    (Da, Db) of the data term, block l = (Qa kron Qb) diag(vec S) (Qa kron Qb)^T + l2 I."""

    def __init__(self, net, l2):
        self.sizes = tuple(net.sizes)
        self.shapes = _layer_shapes(net)
        self.offsets = tuple(net.offsets)
        self.num_params = net.num_params
        self.dtype = net.dtype
        self.l2 = float(l2)

    # -- subclasses provide _eig(l) -> (Qa, Qb, S) and may override _data_mv
    def _layer_view(self, V, l):
        Da, Db = self.shapes[l]
        return V[self.offsets[l]:self.offsets[l + 1]].reshape(Da, Db, -1)

    def _check_v(self, v, name="v"):
        arr = np.asarray(v)
        P = self.num_params
        if arr.ndim not in (1, 2) or arr.shape[0] != P or (arr.ndim == 2 and arr.shape[1] < 1):
            raise ValueError(f"{name}: expected shape ({P},) or ({P}, m) with m >= 1, got {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: contains NaN or Inf")
        return arr

    @staticmethod
    def _check_damping(damping, method=None):
        d = real("damping", damping, lo=0)
        if method is not None:
            choice("method", method, METHODS)
        return d

    def _out(self, res, v):
        return res.reshape(np.shape(v)).astype(self.dtype, copy=False)

    @staticmethod
    def _sandwich(L, Vl, R):
        """L V R for each of the m columns of Vl (Da, Db, m): two matrix products."""
        Da, Db, m = Vl.shape
        T = (L @ Vl.reshape(Da, Db * m)).reshape(L.shape[0], Db, m)
        return np.matmul(T.transpose(0, 2, 1), R).transpose(0, 2, 1)

    def _rotate(self, Vl, Qa, Qb):
        return self._sandwich(Qa.T, Vl, Qb)

    def _unrotate(self, Wl, Qa, Qb):
        return self._sandwich(Qa, Wl, Qb.T)

    def _data_mv(self, Vl, l):
        Qa, Qb, S = self._eig(l)
        return self._unrotate(S[:, :, None] * self._rotate(Vl, Qa, Qb), Qa, Qb)

    # -- public operations
    def mv(self, v):
        """The approximation times v, (P,) or (P, m), l2 included."""
        V = self._check_v(v)
        V2 = V.reshape(self.num_params, -1)
        out = np.empty_like(V2)
        for l in range(len(self.shapes)):
            Vl = self._layer_view(V2, l)
            out[self.offsets[l]:self.offsets[l + 1]] = (self._data_mv(Vl, l) + self.l2 * Vl).reshape(-1, V2.shape[1])
        return self._out(out, v)

    def inverse_mv(self, v, damping=0.0, method="eigen"):
        """(approximation + damping I)^-1 v for v (P,) or (P, m).

        ``method="eigen"``: exact for the damped matrix (l2 + damping added to every eigenvalue;
        eigenvalues the factors' rounding pushed below 0 count as 0). ``method="factored"``
        (K-FAC only): the factored Tikhonov damping of the module docstring with
        lambda = l2 + damping, by Cholesky. A singular approximation with no damping raises.
        """
        lam = self._check_damping(damping, method) + self.l2
        V = self._check_v(v)
        V2 = V.reshape(self.num_params, -1)
        out = np.empty_like(V2)
        for l in range(len(self.shapes)):
            Vl = self._layer_view(V2, l)
            if method == "factored":
                res = self._factored_solve(Vl, l, lam)
            else:
                Qa, Qb, S = self._eig(l)
                den = np.maximum(S, 0.0) + lam
                if not (den > 0).all():
                    raise np.linalg.LinAlgError(
                        f"inverse_mv: layer {l + 1}'s approximation is singular; pass damping > 0")
                res = self._unrotate(self._rotate(Vl, Qa, Qb) / den[:, :, None], Qa, Qb)
            out[self.offsets[l]:self.offsets[l + 1]] = res.reshape(-1, V2.shape[1])
        return self._out(out, v)

    def _factored_solve(self, Vl, l, lam):  # pragma: no cover - KFAC overrides
        raise ValueError("method: 'factored' applies to K-FAC's factors only; use 'eigen'")

    def logdet(self, damping=0.0):
        """log det(approximation + damping I), l2 included: sum over layers of
        sum_ij log(S_ij + l2 + damping) (S clipped at 0). -inf when singular."""
        lam = self._check_damping(damping) + self.l2
        total = 0.0
        for l in range(len(self.shapes)):
            S = np.maximum(self._eig(l)[2], 0.0) + lam
            if not (S > 0).all():
                return -math.inf
            total += float(np.sum(np.log(S)))
        return total

    def blocks(self):
        """Dense per-layer blocks, (P_l, P_l) each, l2 included (as MLP.ggn_blocks)."""
        out = []
        for l in range(len(self.shapes)):
            M = self._dense_data_block(l)
            M.flat[::M.shape[0] + 1] += self.l2
            out.append(M.astype(self.dtype, copy=False))
        return out

    def _dense_data_block(self, l):
        Qa, Qb, S = self._eig(l)
        Q = np.kron(Qa, Qb)
        return (Q * S.ravel()) @ Q.T

    def matrix(self):
        """The block-diagonal (P, P) matrix of :meth:`blocks` (zero between layers)."""
        P = self.num_params
        _check_dense(P)
        return scipy.linalg.block_diag(*self.blocks()).astype(self.dtype, copy=False)


def _check_dense(P):
    check_memory(f"the dense ({P}, {P}) approximation", 2.0 * P * P, "use mv / inverse_mv instead")


class KFAC(_Kronecker):
    """K-FAC's per-layer Kronecker factors: ``A[l]`` ((d_{l-1} + 1)-square, the mean of the
    augmented inputs' outer products) and ``B[l]`` (d_l-square), with block l ~ A[l] kron B[l]
    + l2 I in theta's order. Made by :func:`factors`."""

    def __init__(self, net, pairs, l2, kind, reduction, seed, mc_samples, eighs=None, sample_weight=None):
        super().__init__(net, l2)
        self.A = [np.asarray(A, dtype=np.float64) for A, _ in pairs]
        self.B = [np.asarray(B, dtype=np.float64) for _, B in pairs]
        self.kind, self.reduction, self.seed, self.mc_samples = kind, reduction, seed, mc_samples
        self.sample_weight = sample_weight  # for ekfac's second pass over the same data
        # eighs: the (la, Qa, lb, Qb) of every layer when known (a saved Laplace posterior)
        self._eigs = [None] * len(pairs) if eighs is None else [tuple(e) for e in eighs]
        self._a_eigs = [None] * len(pairs)  # (la, Qa) taken from other factors (reuse_eigh_of_A)

    def __repr__(self):
        return f"KFAC(sizes={list(self.sizes)}, kind={self.kind!r}, l2={self.l2})"

    def eigh(self, l):
        """(la, Qa, lb, Qb): the eigendecompositions of A[l] and B[l] (cached), eigenvalues
        ascending; those rounding pushed below 0 are kept as computed."""
        if self._eigs[l] is None:
            la, Qa = self._a_eigs[l] if self._a_eigs[l] is not None else np.linalg.eigh(self.A[l])
            lb, Qb = np.linalg.eigh(self.B[l])
            self._eigs[l] = (la, Qa, lb, Qb)
        return self._eigs[l]

    def reuse_eigh_of_A(self, other):
        """Take ``other``'s eigendecomposition of A[l] for every layer whose A[l] equals
        other's bit for bit; returns those layers.  The first layer's A depends on the inputs
        (and weights) only, so successive factors of one data set share it: an optimizer that
        refreshes the factors every iteration then decomposes the widest factor once."""
        shared = []
        for l, (mine, theirs) in enumerate(zip(self.A, other.A)):
            if self._eigs[l] is None and mine.shape == theirs.shape and np.array_equal(mine, theirs):
                self._a_eigs[l] = other.eigh(l)[:2]
                shared.append(l)
        return shared

    def _eig(self, l):
        la, Qa, lb, Qb = self.eigh(l)
        return Qa, Qb, np.outer(la, lb)

    def _data_mv(self, Vl, l):
        # (A kron B) vec(V) = vec(A V B^T), V = layer l's slice as (Da, Db) row-major
        return self._sandwich(self.A[l], Vl, self.B[l].T)

    def _dense_data_block(self, l):
        return np.kron(self.A[l], self.B[l])

    def _factored_solve(self, Vl, l, lam):
        A, B = self.A[l], self.B[l]
        if lam <= 0:
            raise ValueError("damping: method='factored' needs l2 + damping > 0")
        ta, tb = np.trace(A) / A.shape[0], np.trace(B) / B.shape[0]
        pi = math.sqrt(ta / tb) if ta > 0 and tb > 0 else 1.0
        r = math.sqrt(lam)
        ca = scipy.linalg.cho_factor(A + pi * r * np.eye(A.shape[0]))
        cb = scipy.linalg.cho_factor(B + r / pi * np.eye(B.shape[0]))
        # (A' kron B')^-1 vec(V) = vec(A'^-1 V B'^-1)
        Da, Db, m = Vl.shape
        X = scipy.linalg.cho_solve(ca, Vl.reshape(Da, Db * m)).reshape(Da, Db, m)
        X = scipy.linalg.cho_solve(cb, X.transpose(1, 0, 2).reshape(Db, Da * m)).reshape(Db, Da, m)
        return X.transpose(1, 0, 2)

    def ekfac(self, net, theta, X, Y):
        """EKFAC: this approximation's eigenbasis Qa[l] kron Qb[l], with the eigenvalues
        la lb^T replaced by the diagonal of the layer's GGN in that basis, from the same
        per-sample vectors (the same kind and, for "mc", the same draws). That diagonal is the
        best one in the basis (it minimises the Frobenius error to the layer's exact block when
        kind="exact"), so EKFAC is never further from G_l than K-FAC is."""
        check_net(net)
        if tuple(net.sizes) != self.sizes:
            raise ValueError(f"net: these factors are of a network of sizes {list(self.sizes)}, "
                             f"got {list(net.sizes)}")
        bases = [(self.eigh(l)[1], self.eigh(l)[3]) for l in range(len(self.shapes))]
        scales = net.kfac_eigen_scales(theta, X, Y, bases, kind=self.kind, seed=self.seed,
                                       mc_samples=self.mc_samples, reduction=self.reduction,
                                       sample_weight=self.sample_weight)
        return EKFAC(net, bases, scales, self.l2, self.kind)


class EKFAC(_Kronecker):
    """Eigenvalue-corrected K-FAC: per layer the basis ``Q[l] = (Qa, Qb)`` of K-FAC's factors
    and eigenvalues ``S[l]`` (Da, Db), block l = (Qa kron Qb) diag(vec S) (Qa kron Qb)^T + l2 I.
    Made by :meth:`KFAC.ekfac` or :func:`ekfac`."""

    def __init__(self, net, bases, scales, l2, kind):
        super().__init__(net, l2)
        self.Q = [(np.asarray(Qa, np.float64), np.asarray(Qb, np.float64)) for Qa, Qb in bases]
        self.S = [np.asarray(S, dtype=np.float64) for S in scales]
        self.kind = kind

    def __repr__(self):
        return f"EKFAC(sizes={list(self.sizes)}, kind={self.kind!r}, l2={self.l2})"

    def _eig(self, l):
        return self.Q[l][0], self.Q[l][1], self.S[l]


def _l2_of(net, reduction):
    return net.l2 if (net.l2 > 0 and reduction == "mean") else 0.0


def factors(net, theta, X, Y, kind="exact", seed=None, mc_samples=1, reduction="mean", sample_weight=None):
    """K-FAC's factors of ``net``'s GGN at theta on (X, Y): a :class:`KFAC`.

    Parameters
    ----------
    net : taylorkern.MLP
    theta, X, Y : as for ``net.ggn_blocks``.
    kind : {"exact", "mc"}
        B from the exact output Hessians (dL backpropagated rows per sample) or from
        ``mc_samples`` gradients per sample at targets drawn from the model, seeded by ``seed``.
    seed : None, int or numpy Generator
        For kind="mc".
    mc_samples : int
        Draws per sample for kind="mc".
    reduction : {"mean", "sum"}
        As for the MLP's calls; l2 is included with "mean" only.
    sample_weight : None or array (N,)
        As for the MLP's calls: B's rows carry each sample's weight, A is the weighted mean.

    Returns
    -------
    KFAC
        ``A[l]``, ``B[l]`` and the operations of the module docstring.
    """
    check_net(net)
    choice("kind", kind, KINDS)
    pairs = net.kfac_factors(theta, X, Y, kind=kind, seed=seed, mc_samples=mc_samples, reduction=reduction,
                             sample_weight=sample_weight)
    return KFAC(net, pairs, _l2_of(net, reduction), kind, reduction, seed, mc_samples, sample_weight=sample_weight)


def _factors_keeping_inputs(old, net, theta, X, Y, seed=None):
    """:func:`factors` at another theta on the data ``old`` was taken on (the same X and weights,
    which the caller vouches for), with old's kind and reduction: the first layer's A, which
    depends on the data only, is taken from ``old`` with its eigendecomposition, not recomputed."""
    pairs = net.kfac_factors(theta, X, Y, kind=old.kind, seed=seed, mc_samples=old.mc_samples,
                             reduction=old.reduction, sample_weight=old.sample_weight, input_factor=False)
    pairs[0] = (old.A[0], pairs[0][1])
    K = KFAC(net, pairs, _l2_of(net, old.reduction), old.kind, old.reduction, seed, old.mc_samples,
             sample_weight=old.sample_weight)
    K.reuse_eigh_of_A(old)
    return K


def ekfac(net, theta, X, Y, kind="exact", seed=None, mc_samples=1, reduction="mean", sample_weight=None):
    """EKFAC of ``net``'s GGN: :func:`factors` then :meth:`KFAC.ekfac` (two passes over the
    data). Returns an :class:`EKFAC`."""
    return factors(net, theta, X, Y, kind, seed, mc_samples, reduction, sample_weight).ekfac(net, theta, X, Y)


class Quality:
    """How far K-FAC (and EKFAC) is from the exact GGN on one problem.

    Attributes
    ----------
    errors : list of float
        Per layer ||K_l - G_l||_F / ||G_l||_F, G_l the exact GGN block (net.ggn_blocks).
    ekfac_errors : list of float
        The same for EKFAC.
    cosine : float
        Cosine between the K-FAC step -(K + damping I)^-1 g and the exact Gauss-Newton step
        -(G + damping I)^-1 g (G the full GGN, off-diagonal blocks included).
    ekfac_cosine : float
        The same for EKFAC.
    damping : float
        The damping of both steps.
    """

    def __init__(self, errors, ekfac_errors, cosine, ekfac_cosine, damping, sizes, kind):
        self.errors, self.ekfac_errors = errors, ekfac_errors
        self.cosine, self.ekfac_cosine = cosine, ekfac_cosine
        self.damping, self.sizes, self.kind = damping, sizes, kind

    def __repr__(self):
        return (f"Quality(errors={[round(e, 6) for e in self.errors]}, cosine={self.cosine:.6f}, "
                f"ekfac_errors={[round(e, 6) for e in self.ekfac_errors]}, ekfac_cosine={self.ekfac_cosine:.6f})")

    def table(self):
        """A plain-text table: one row per layer, then the step cosines."""
        lines = [f"K-FAC ({self.kind}) against the exact GGN",
                 f"{'layer':>5} {'shape':>12} {'K-FAC rel. error':>17} {'EKFAC rel. error':>17}"]
        for l, (e, f) in enumerate(zip(self.errors, self.ekfac_errors)):
            shape = f"{self.sizes[l] + 1}x{self.sizes[l + 1]}"
            lines.append(f"{l + 1:>5} {shape:>12} {e:>17.4g} {f:>17.4g}")
        lines.append(f"step cosine with the Gauss-Newton step (damping {self.damping:.3g}): "
                     f"K-FAC {self.cosine:.6f}, EKFAC {self.ekfac_cosine:.6f}")
        return "\n".join(lines)

    __str__ = table


def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def quality(net, theta, X, Y, kind="exact", damping=None, seed=None, mc_samples=1, sample_weight=None):
    """K-FAC's and EKFAC's distance from the exact GGN at theta on (X, Y): a :class:`Quality`
    (with ``sample_weight``, of the weighted loss's GGN and gradient).

    Forms the full (P, P) GGN (refused with the memory it needs when it would not fit).
    ``damping`` (>= 0) damps both steps; None takes 1e-6 times the GGN's mean diagonal
    (on top of the network's l2), enough to make a singular G invertible without moving a
    well-conditioned step.
    """
    check_net(net)
    choice("kind", kind, KINDS)
    if damping is not None:
        damping = real("damping", damping, lo=0)
    K = factors(net, theta, X, Y, kind=kind, seed=seed, mc_samples=mc_samples, sample_weight=sample_weight)
    E = K.ekfac(net, theta, X, Y)
    G = np.asarray(net.ggn(theta, X, Y, sample_weight=sample_weight), dtype=np.float64)
    _, g = net.loss_and_grad(theta, X, Y, sample_weight=sample_weight)
    g = np.asarray(g, dtype=np.float64)
    if damping is None:
        damping = 1e-6 * float(np.trace(G)) / G.shape[0]
    errs, eerrs = [], []
    for l, (Kb, Eb) in enumerate(zip(K.blocks(), E.blocks())):
        s = slice(net.offsets[l], net.offsets[l + 1])
        Gb = G[s, s]
        nrm = np.linalg.norm(Gb)
        errs.append(float(np.linalg.norm(Kb - Gb) / nrm) if nrm > 0 else float(np.linalg.norm(Kb)))
        eerrs.append(float(np.linalg.norm(Eb - Gb) / nrm) if nrm > 0 else float(np.linalg.norm(Eb)))
    Gd = G.copy()
    Gd.flat[::G.shape[0] + 1] += damping
    exact = -scipy.linalg.solve(Gd, g, assume_a="sym")
    cos = _cos(-K.inverse_mv(g, damping).astype(np.float64), exact)
    ecos = _cos(-E.inverse_mv(g, damping).astype(np.float64), exact)
    return Quality(errs, eerrs, cos, ecos, damping, tuple(net.sizes), kind)
