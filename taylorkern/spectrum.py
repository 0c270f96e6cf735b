"""Curvature spectra of an MLP's loss: eigenvalues, trace, density and condition number of
the Hessian H or the Gauss-Newton matrix G, for the whole network or one layer's block.

Index letters: P parameters, n the order of the operator (P, or P_l for layer l's block),
k wanted eigenpairs, m Krylov basis size / Lanczos steps, p probe vectors, N samples.

Every function comes in two forms:

- on a network: ``f(net, theta, X, Y, curvature="hessian"|"ggn", layer=None, ...)``, using
  only the network's public calls (products ``hvp``/``ggn_vp`` for the iterative methods,
  ``hessian``/``ggn``/``*_blocks``/``*_diag`` for the exact ones).  ``layer=l`` restricts
  everything to layer l's diagonal block (``Wl`` and ``bl`` together, docs/design.md §1): the
  iterative methods then use block-restricted products (a direction that is zero outside
  the layer, the result sliced back to it), the exact ones ``hessian_blocks``/``ggn_blocks``;
- on any symmetric operator: :func:`lanczos`, :func:`hutchinson`, :func:`slq`, which take
  ``matvec(V (n, b)) -> (n, b)`` (or a dense symmetric array) and the order n.

The iterative methods are seeded (``seed``) and deterministic; all arithmetic is float64
whatever the network's dtype.

- :func:`eigenvalues`: k extreme eigenpairs ("largest", "smallest" or "both") by block
  Lanczos with full re-orthogonalisation and Rayleigh-Ritz on the Krylov basis (residuals
  computed exactly, ``|B y - lambda y|``), or exactly from the full matrix when n is small;
- :func:`exact_eigenvalues`: all n eigenvalues (``numpy.linalg.eigvalsh``);
- :func:`trace`: exact from the diagonal (``hessian_diag``/``ggn_diag``, cheap), or the
  Hutchinson estimate with Rademacher probes and its standard error; per layer as well;
- :func:`density`: the spectral density by stochastic Lanczos quadrature (SLQ), smoothed
  with a Gaussian on a grid, or the exact one;
- :func:`condition_number`: ``max|lambda| / min|lambda|``, plus the condition number over
  the numerically non-zero eigenvalues and the numerical rank;
- :func:`layer_spectra`: top eigenvalue, trace and condition number of every layer's block.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings

import numpy as np
import scipy.linalg

from ._validate import check_curvature, check_memory, check_net, choice, integer, real

WHICH = ("largest", "smallest", "both")

# Below this order, method="auto" uses the full matrix (eigvalsh of 1500 x 1500 takes about a
# second on two cores; products-based Lanczos wins above it).
EXACT_MAX_ORDER = 1500


# ----------------------------------------------------------------------------- helpers
def _check_layer(net, layer):
    """None, or a layer index in [0, L) (negative indices count from the end)."""
    if layer is None:
        return None
    L = net.num_layers
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not -L <= layer < L:
        raise ValueError(f"layer: expected None or an integer in [{-L}, {L}), got {layer!r}")
    return int(layer) % L


def _check_data(net, theta, X, Y):
    """Validate once with the network's own messages (one forward pass)."""
    net.loss(theta, X, Y)


def _span(net, layer):
    """(start, stop) of the parameters the operator acts on."""
    if layer is None:
        return 0, net.num_params
    return net.offsets[layer], net.offsets[layer + 1]


def curvature_operator(net, theta, X, Y, curvature="hessian", layer=None):
    """``(matvec, n)``: the Hessian or GGN (or layer ``layer``'s block of it) as a product.

    ``matvec(V)`` takes V of shape (n,) or (n, b) and returns B V of the same shape, float64.
    For a layer, V is embedded in a zero (P, b) direction and the product sliced back, so
    that the result is exactly the diagonal block's product.
    """
    check_net(net)
    curvature = check_curvature(curvature)
    layer = _check_layer(net, layer)
    _check_data(net, theta, X, Y)
    prod = net.hvp if curvature == "hessian" else net.ggn_vp
    lo, hi = _span(net, layer)
    P, n = net.num_params, hi - lo

    def matvec(V):
        V = np.asarray(V, dtype=np.float64)
        V2 = V.reshape(n, -1)
        if layer is None:
            full = V2.astype(net.dtype)
        else:
            full = np.zeros((P, V2.shape[1]), net.dtype)
            full[lo:hi] = V2
        out = np.asarray(prod(theta, X, Y, full), dtype=np.float64)[lo:hi]
        return out.reshape(V.shape)

    return matvec, n


def curvature_matrix(net, theta, X, Y, curvature="hessian", layer=None) -> np.ndarray:
    """The full (n, n) matrix: H or G (``layer=None``), or layer ``layer``'s block, float64."""
    check_net(net)
    curvature = check_curvature(curvature)
    layer = _check_layer(net, layer)
    if layer is None:
        B = net.hessian(theta, X, Y) if curvature == "hessian" else net.ggn(theta, X, Y)
    else:
        blocks = net.hessian_blocks(theta, X, Y) if curvature == "hessian" else net.ggn_blocks(theta, X, Y)
        B = blocks[layer]
    return np.asarray(B, dtype=np.float64)


def _as_matvec(A, n):
    """A matvec from a callable or a dense symmetric (n, n) array."""
    if callable(A):
        if n is None:
            raise ValueError("n: the operator's order is needed when A is a callable")
        return A, integer("n", n, 1)
    M = np.asarray(A, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 1:
        raise ValueError(f"A: expected a callable or a square matrix, got shape {M.shape}")
    if n is not None and n != M.shape[0]:
        raise ValueError(f"n: {n} does not match the matrix order {M.shape[0]}")
    return (lambda V: M @ V), M.shape[0]


# ----------------------------------------------------------------------------- eigenvalues
@dataclasses.dataclass
class Eigen:
    """Extreme eigenpairs of a symmetric operator of order n.

    Attributes
    ----------
    values : (k,) or (2k,) float64, ascending (``values[-1]`` is the largest found)
    vectors : (n, len(values)) float64 with orthonormal columns, or None
    residuals : (len(values),) float64, ``|B v - lambda v|_2`` of each pair (0 for exact)
    converged : (len(values),) bool, residual <= tol * |B| (estimated by the largest |Ritz value|)
    method : "lanczos" or "exact"
    n_products : int, matrix-vector products used (columns; 0 for exact)
    basis_size : int, final Krylov basis size m (n for exact)
    """

    values: np.ndarray
    vectors: np.ndarray | None
    residuals: np.ndarray
    converged: np.ndarray
    method: str
    n_products: int
    basis_size: int


def _orthonormal_complement(Q, b, rng, n):
    """b random orthonormal columns orthogonal to Q's (n, j)."""
    V = rng.standard_normal((n, b))
    for _ in range(2):
        if Q.shape[1]:
            V -= Q @ (Q.T @ V)
        V, _ = np.linalg.qr(V)
    return V


def _wanted(order, k, which):
    """Indices (into ascending Ritz values) of the wanted ones."""
    m = len(order)
    if which == "largest":
        return np.arange(max(0, m - k), m)
    if which == "smallest":
        return np.arange(0, min(k, m))
    lo = np.arange(0, min(k, m))
    hi = np.arange(max(0, m - k), m)
    return np.unique(np.concatenate([lo, hi]))


def _ritz_pairs(Q, AQ, T, k, which, tol):
    """Rayleigh-Ritz on the basis Q (n, j) with AQ = A Q and T = Q^T A Q (j, j): the wanted
    pairs as (values, vectors (n, w), residuals |A x - theta x|, converged)."""
    theta, S = np.linalg.eigh(0.5 * (T + T.T))
    idx = _wanted(theta, k, which)
    Y_ = S[:, idx]
    Xr = Q @ Y_
    res = np.linalg.norm(AQ @ Y_ - Xr * theta[idx], axis=0)
    scale = max(float(np.max(np.abs(theta))), np.finfo(float).tiny)
    return theta[idx], Xr, res, res <= tol * scale


def _next_block(W, Q, b_next, rng):
    """The next b_next basis directions: the new part of A's Krylov space, A's last block W
    (n, b) orthogonalised (twice) against the basis Q (n, j) and orthonormalised.  Where that
    leaves (almost) nothing, the basis spans an invariant subspace and the dead directions
    are replaced by random ones orthogonal to it (the restart that reaches the rest of the
    spectrum)."""
    R = W[:, :b_next] if b_next < W.shape[1] else W
    R = R - Q @ (Q.T @ R)
    R = R - Q @ (Q.T @ R)
    norms0 = np.linalg.norm(W, axis=0)[:R.shape[1]]
    Vn, Rr = np.linalg.qr(R)
    small = np.abs(np.diag(Rr)) <= 1e-10 * max(float(norms0.max(initial=0.0)), 1e-300)
    if R.shape[1] < b_next:  # pragma: no cover - W always has >= b_next columns
        small = np.ones(b_next, bool)
    if small.any():
        keep = Vn[:, ~small]
        fresh = _orthonormal_complement(np.hstack([Q, keep]), int(small.sum()), rng, Q.shape[0])
        Vn = np.hstack([keep, fresh])
    return Vn


def lanczos(A, n=None, k=1, which="largest", tol=1e-8, max_basis=None, block_size=1, seed=0,
            return_vectors=False) -> Eigen:
    """k extreme eigenpairs of a symmetric operator by block Lanczos.

    Parameters
    ----------
    A : callable ``V (n, b) -> A V (n, b)``, or a dense symmetric (n, n) array
    n : int, the order (needed when A is a callable)
    k : int, pairs wanted at each end
    which : "largest" (algebraic), "smallest" (algebraic) or "both" (k of each)
    tol : float, converged when ``|A y - theta y| <= tol * max|theta|``
    max_basis : int, largest Krylov basis m (default ``min(n, max(200, 6 k + 40))``)
    block_size : int, columns per product (the kernels batch them)
    seed : starting block, ``numpy.random.default_rng(seed)``

    Every new block is orthogonalised against the whole basis twice (full
    re-orthogonalisation), so no spurious copies of converged eigenvalues appear; the
    Ritz pairs come from Rayleigh-Ritz on the basis, ``T = Q^T A Q``, and their residuals
    are computed, not estimated.  When the basis spans an invariant subspace, it continues
    with a random block orthogonal to it, so an exhausted Krylov space (n small, repeated
    eigenvalues) still reaches every eigenvalue; with m = n the result is exact.
    A warning (RuntimeWarning) says when not every wanted pair converged in ``max_basis``.
    As with any Krylov method, an eigenvalue of multiplicity above ``block_size`` may be
    found fewer times than it occurs (e.g. the null space of a softmax GGN); use a larger
    block or the exact method where that matters.

    Memory: two (n, m) float64 arrays.
    """
    matvec, n = _as_matvec(A, n)
    k = integer("k", k, 1)
    which = choice("which", which, WHICH)
    tol = real("tol", tol, lo=0)
    b = integer("block_size", block_size, 1)
    n_want = k if which != "both" else 2 * k
    if n_want > n:
        raise ValueError(f"k: asked for {n_want} eigenvalues of an operator of order {n}")
    m_cap = min(n, max(200, 6 * k + 40)) if max_basis is None else integer("max_basis", max_basis, 1)
    m_cap = min(max(m_cap, n_want), n)
    b = min(b, m_cap)
    check_memory(f"Lanczos with a basis of {m_cap} vectors of length {n}", 2.0 * n * m_cap,
                  "lower max_basis")
    rng = np.random.default_rng(seed)

    Q = np.empty((n, m_cap))
    AQ = np.empty((n, m_cap))
    T = np.zeros((m_cap, m_cap))
    V = _orthonormal_complement(Q[:, :0], b, rng, n)
    j = 0
    n_products = 0
    last_check = 0
    while True:
        W = np.asarray(matvec(V), dtype=np.float64).reshape(n, V.shape[1])
        n_products += V.shape[1]
        jb = j + V.shape[1]
        Q[:, j:jb] = V
        AQ[:, j:jb] = W
        C = Q[:, :jb].T @ W                       # (jb, b): new columns of T = Q^T A Q
        T[:jb, j:jb] = C
        T[j:jb, :jb] = C.T
        j = jb
        done = j >= m_cap
        if j >= n_want and (done or j - last_check >= max(V.shape[1], j // 8)):
            last_check = j
            values, vecs, res, conv = _ritz_pairs(Q[:, :j], AQ[:, :j], T[:j, :j], k, which, tol)
            if conv.all() or done:
                break
        if done:  # pragma: no cover - the check above always runs when done
            break
        V = _next_block(W, Q[:, :j], min(b, m_cap - j), rng)
    if not conv.all():
        warnings.warn(f"lanczos: {int((~conv).sum())} of {len(conv)} wanted eigenpairs did not reach "
                      f"tol={tol:g} with a basis of {j} vectors (largest residual {res.max():.3g}); "
                      "raise max_basis", RuntimeWarning, stacklevel=2)
    return Eigen(values=values, vectors=vecs if return_vectors else None, residuals=res,
                 converged=conv, method="lanczos", n_products=n_products, basis_size=j)


def exact_eigenvalues(net, theta, X, Y, curvature="hessian", layer=None) -> np.ndarray:
    """All eigenvalues of H or G (or of layer ``layer``'s block), ascending, shape (n,)."""
    B = curvature_matrix(net, theta, X, Y, curvature, layer)
    return np.linalg.eigvalsh(B)


def _choose_method(method, n):
    if method not in ("auto", "exact", "lanczos"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'lanczos', got {method!r}")
    if method == "auto":
        return "exact" if n <= EXACT_MAX_ORDER else "lanczos"
    return method


def eigenvalues(net, theta, X, Y, k=1, which="largest", curvature="hessian", layer=None,
                method="auto", tol=1e-8, max_basis=None, block_size=1, seed=0,
                return_vectors=False) -> Eigen:
    """k extreme eigenvalues (and vectors) of the Hessian or GGN, or of one layer's block.

    Parameters
    ----------
    net, theta (P,), X (N, d0), Y : the network, its parameters and data
    k : pairs at each end; which : "largest", "smallest" or "both" (algebraic order)
    curvature : "hessian" (exact Hessian) or "ggn"
    layer : None (all P parameters) or a layer index (its (P_l, P_l) diagonal block)
    method : "exact" (the full matrix and ``scipy.linalg.eigh``), "lanczos" (products only,
        see :func:`lanczos`), or "auto" (exact when n <= EXACT_MAX_ORDER)
    tol, max_basis, block_size, seed : Lanczos options

    Returns an :class:`Eigen`, values ascending.
    """
    check_net(net)
    layer = _check_layer(net, layer)
    lo, hi = _span(net, layer)
    n = hi - lo
    method = _choose_method(method, n)
    k = integer("k", k, 1)
    which = choice("which", which, WHICH)
    n_want = k if which != "both" else 2 * k
    if n_want > n:
        raise ValueError(f"k: asked for {n_want} eigenvalues of an operator of order {n}")
    if method == "lanczos":
        matvec, n = curvature_operator(net, theta, X, Y, curvature, layer)
        return lanczos(matvec, n, k=k, which=which, tol=tol, max_basis=max_basis,
                       block_size=block_size, seed=seed, return_vectors=return_vectors)
    B = curvature_matrix(net, theta, X, Y, curvature, layer)
    if which == "both":
        w, U = np.linalg.eigh(B) if return_vectors else (np.linalg.eigvalsh(B), None)
        idx = np.concatenate([np.arange(k), np.arange(n - k, n)])
        idx = np.unique(idx)
        w = w[idx]
        U = None if U is None else U[:, idx]
    else:
        sel = [n - k, n - 1] if which == "largest" else [0, k - 1]
        out = scipy.linalg.eigh(B, subset_by_index=sel, eigvals_only=not return_vectors)
        w, U = (out, None) if not return_vectors else out
    return Eigen(values=np.asarray(w), vectors=U, residuals=np.zeros(len(w)),
                 converged=np.ones(len(w), bool), method="exact", n_products=0, basis_size=n)


# ----------------------------------------------------------------------------- trace
@dataclasses.dataclass
class Trace:
    """A trace of H or G, exact or estimated.

    Attributes
    ----------
    value : float, the trace (of the block when ``layer`` was given)
    stderr : float, standard error of the estimate (0 for exact): the sample standard
        deviation of the per-probe values over sqrt(n_probes); value +- 2 stderr is a ~95%
        interval for n_probes >~ 30
    per_layer : (L,) float64, each layer block's trace (the same probes; None for a layer)
    per_layer_stderr : (L,) float64, their standard errors
    samples : (n_probes,) float64, the per-probe values z^T B z (empty for exact)
    method : "exact" or "hutchinson"
    n_probes : int
    """

    value: float
    stderr: float
    per_layer: np.ndarray | None
    per_layer_stderr: np.ndarray | None
    samples: np.ndarray
    method: str
    n_probes: int


def hutchinson(A, n=None, n_probes=100, seed=0, batch=16, groups=None) -> Trace:
    """Hutchinson's estimate of trace(A) with Rademacher probes z (entries +-1).

    ``E[z^T A z] = trace(A)``; the estimate is the mean over ``n_probes`` probes and its
    standard error the sample standard deviation over sqrt(n_probes) (zero, and the
    estimate exact, for a diagonal A).  ``groups``: optional list of (start, stop) index
    ranges; for each, ``sum_{i in range} z_i (A z)_i`` estimates the trace of that diagonal
    block from the same probes (returned in ``per_layer``).  ``batch`` probes share one
    product call.
    """
    matvec, n = _as_matvec(A, n)
    n_probes = integer("n_probes", n_probes, 2)
    batch = integer("batch", batch, 1)
    rng = np.random.default_rng(seed)
    G = [] if groups is None else [(int(a), int(b)) for a, b in groups]
    samples = np.empty(n_probes)
    gsamples = np.empty((len(G), n_probes))
    done = 0
    while done < n_probes:
        bsz = min(batch, n_probes - done)
        Z = rng.integers(0, 2, size=(n, bsz)).astype(np.float64) * 2.0 - 1.0
        ZAZ = Z * np.asarray(matvec(Z), dtype=np.float64).reshape(n, bsz)
        samples[done:done + bsz] = ZAZ.sum(axis=0)
        for g, (a, b) in enumerate(G):
            gsamples[g, done:done + bsz] = ZAZ[a:b].sum(axis=0)
        done += bsz
    sq = math.sqrt(n_probes)
    return Trace(value=float(samples.mean()), stderr=float(samples.std(ddof=1) / sq),
                 per_layer=gsamples.mean(axis=1) if G else None,
                 per_layer_stderr=gsamples.std(axis=1, ddof=1) / sq if G else None,
                 samples=samples, method="hutchinson", n_probes=n_probes)


def trace(net, theta, X, Y, curvature="hessian", layer=None, method="exact", n_probes=100,
          seed=0, batch=16) -> Trace:
    """Trace of the Hessian or GGN (or of one layer's block), with per-layer traces.

    method "exact" sums ``hessian_diag``/``ggn_diag`` (no P x P matrix; stderr 0);
    "hutchinson" estimates it from ``n_probes`` Rademacher probes (see :func:`hutchinson`)
    and states the standard error.  ``per_layer`` holds every layer's block trace when
    ``layer`` is None.
    """
    check_net(net)
    curvature = check_curvature(curvature)
    layer = _check_layer(net, layer)
    L = net.num_layers
    offs = net.offsets
    if method == "exact":
        d = np.asarray(net.hessian_diag(theta, X, Y) if curvature == "hessian"
                       else net.ggn_diag(theta, X, Y), dtype=np.float64)
        per = np.array([d[offs[l]:offs[l + 1]].sum() for l in range(L)])
        if layer is not None:
            return Trace(float(per[layer]), 0.0, None, None, np.empty(0), "exact", 0)
        return Trace(float(d.sum()), 0.0, per, np.zeros(L), np.empty(0), "exact", 0)
    if method != "hutchinson":
        raise ValueError(f"method: expected 'exact' or 'hutchinson', got {method!r}")
    matvec, n = curvature_operator(net, theta, X, Y, curvature, layer)
    groups = None if layer is not None else [(offs[l], offs[l + 1]) for l in range(L)]
    return hutchinson(matvec, n, n_probes=n_probes, seed=seed, batch=batch, groups=groups)


# ----------------------------------------------------------------------------- density
@dataclasses.dataclass
class Density:
    """A spectral density: eigenvalue distribution normalised to integrate to 1.

    Attributes
    ----------
    grid : (n_grid,) eigenvalue axis
    values : (n_grid,) the Gaussian-smoothed density on the grid (n times it counts
        eigenvalues per unit length)
    nodes : (p, m) quadrature nodes (Ritz values) per probe; NaN-padded past a probe's
        Krylov-space dimension.  For method "exact": (1, n), the eigenvalues.
    weights : (p, m) their weights, each row summing to 1 (NaN-padded like nodes)
    sigma : float, the Gaussian's standard deviation
    n : int, the operator's order
    method : "slq" or "exact"
    """

    grid: np.ndarray
    values: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    n: int
    method: str

    def fraction_below(self, t=0.0, return_stderr=False):
        """Estimated fraction of eigenvalues < t (from the quadrature, not the smoothing);
        with ``return_stderr``, ``(fraction, standard error over the probes)`` (0 for exact)."""
        w = np.where(np.isfinite(self.nodes) & (self.nodes < t), self.weights, 0.0).sum(axis=1)
        frac = float(w.mean())
        if not return_stderr:
            return frac
        se = float(w.std(ddof=1) / math.sqrt(len(w))) if len(w) > 1 else 0.0
        return frac, se

    def moment(self, power=1) -> float:
        """Estimated ``mean(lambda ** power)`` over the spectrum (power 1: trace / n)."""
        v = np.where(np.isfinite(self.nodes), self.weights * np.nan_to_num(self.nodes) ** power, 0.0)
        return float(v.sum(axis=1).mean())


def slq(A, n=None, n_probes=10, n_steps=80, seed=0):
    """Stochastic Lanczos quadrature nodes and weights, ``(nodes (p, m), weights (p, m))``.

    For each Rademacher probe z (normalised), m Lanczos steps with full
    re-orthogonalisation give a tridiagonal T; its eigenvalues are the nodes and the
    squared first components of its eigenvectors the weights, so that
    ``sum_j w_j f(node_j) ~ z^T f(A) z / n``.  The p probes run together (one product
    call with p columns per step).  A probe whose Krylov space is exhausted before m steps
    stops there (its remaining entries are NaN).  Memory: p * m * n float64.
    """
    matvec, n = _as_matvec(A, n)
    p = integer("n_probes", n_probes, 1)
    m = min(integer("n_steps", n_steps, 1), n)
    check_memory(f"SLQ with {p} probes x {m} steps of length {n}", float(p) * m * n,
                  "lower n_probes or n_steps")
    rng = np.random.default_rng(seed)
    Z = rng.integers(0, 2, size=(n, p)).astype(np.float64) * 2.0 - 1.0
    q = Z / math.sqrt(n)
    Qs = np.zeros((p, m, n))
    alpha = np.zeros((p, m))
    beta = np.zeros((p, m))
    length = np.full(p, m)
    active = np.ones(p, bool)
    q_prev = np.zeros_like(q)
    b_prev = np.zeros(p)
    scale = 0.0
    for j in range(m):
        Qs[:, j] = q.T
        w = np.asarray(matvec(q), dtype=np.float64).reshape(n, p)
        a = np.einsum("np,np->p", q, w)
        alpha[:, j] = np.where(active, a, 0.0)
        w = w - q * a - q_prev * b_prev
        for _ in range(2):  # full re-orthogonalisation, each probe against its own basis
            c = np.einsum("pjn,np->pj", Qs[:, :j + 1], w)
            w -= np.einsum("pjn,pj->np", Qs[:, :j + 1], c)
        bnorm = np.linalg.norm(w, axis=0)
        scale = max(scale, float(np.max(np.abs(a), initial=0.0)), float(bnorm.max(initial=0.0)))
        if j == m - 1:
            break
        dead = active & (bnorm <= 1e-10 * max(scale, 1e-300))
        length[dead] = j + 1
        active &= ~dead
        if not active.any():
            break
        bn = np.where(active, bnorm, 1.0)
        beta[:, j] = np.where(active, bnorm, 0.0)
        q_prev, b_prev = q, beta[:, j].copy()
        q = np.where(active, w / bn, 0.0)
    nodes = np.full((p, m), np.nan)
    weights = np.full((p, m), np.nan)
    for i in range(p):
        li = int(length[i])
        d, e = alpha[i, :li], beta[i, :li - 1]
        if li == 1:
            ev, S = d.copy(), np.ones((1, 1))
        else:
            ev, S = scipy.linalg.eigh_tridiagonal(d, e)
        nodes[i, :li] = ev
        weights[i, :li] = S[0] ** 2
    return nodes, weights


def _smooth(nodes, weights, grid, sigma):
    """sum_j w_j N(grid; node_j, sigma^2), averaged over the probes."""
    ok = np.isfinite(nodes)
    x, w = nodes[ok], weights[ok]
    p = nodes.shape[0]
    out = np.zeros(len(grid))
    for s in range(0, len(x), 256):
        d = (grid[:, None] - x[None, s:s + 256]) / sigma
        out += (np.exp(-0.5 * d * d) * w[None, s:s + 256]).sum(axis=1)
    return out / (p * sigma * math.sqrt(2 * math.pi))


def density_from_eigenvalues(ev, grid, sigma) -> Density:
    """The exact density of a spectrum ``ev`` (n,), smoothed with a Gaussian of standard
    deviation ``sigma`` on ``grid``: what :func:`density` with method "exact" returns for
    eigenvalues already at hand."""
    ev = np.asarray(ev, dtype=np.float64)
    nodes, weights = ev[None, :], np.full((1, ev.size), 1.0 / ev.size)
    return Density(grid=grid, values=_smooth(nodes, weights, grid, sigma), nodes=nodes,
                   weights=weights, sigma=float(sigma), n=ev.size, method="exact")


def density(net, theta, X, Y, curvature="hessian", layer=None, method="slq", n_probes=10,
            n_steps=80, grid=None, n_grid=1000, sigma=None, seed=0) -> Density:
    """The spectral density of H or G (or of one layer's block).

    method "slq": stochastic Lanczos quadrature (see :func:`slq`), products only; "exact":
    from all eigenvalues of the full matrix.  The density is smoothed with a Gaussian of
    standard deviation ``sigma`` (default 1% of the spectrum's range) on ``grid`` (default
    ``n_grid`` points spanning the nodes +- 3 sigma) and integrates to 1 (approximately,
    over the grid).
    """
    check_net(net)
    layer = _check_layer(net, layer)
    n_grid = integer("n_grid", n_grid, 2)
    sigma = real("sigma", sigma, lo=0, lo_open=True, none=True)
    if method == "exact":
        ev = exact_eigenvalues(net, theta, X, Y, curvature, layer)
        nodes, weights = ev[None, :], np.full((1, len(ev)), 1.0 / len(ev))
        n = len(ev)
    elif method == "slq":
        matvec, n = curvature_operator(net, theta, X, Y, curvature, layer)
        nodes, weights = slq(matvec, n, n_probes=n_probes, n_steps=n_steps, seed=seed)
    else:
        raise ValueError(f"method: expected 'slq' or 'exact', got {method!r}")
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-6 * max(abs(lo), abs(hi)), 1e-12)
    if grid is None:
        grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, n_grid)
    else:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size < 2 or not np.isfinite(grid).all():
            raise ValueError(f"grid: expected a finite 1-D array of >= 2 points, got shape {grid.shape}")
    return Density(grid=grid, values=_smooth(nodes, weights, grid, sigma), nodes=nodes,
                   weights=weights, sigma=float(sigma), n=n, method=method)


# ----------------------------------------------------------------------------- condition
@dataclasses.dataclass
class Condition:
    """Condition number of a symmetric matrix.

    Attributes
    ----------
    cond : float, ``max|lambda| / min|lambda|`` (inf when numerically singular, i.e.
        ``min|lambda| <= rtol * max|lambda|``)
    cond_nonzero : float, the same over the eigenvalues with ``|lambda| > rtol * max|lambda|``
        (NaN for method "lanczos" on an indefinite matrix)
    rank : int, how many eigenvalues pass that threshold (-1 when not known: "lanczos")
    lambda_max, lambda_min : float, largest and smallest eigenvalue (algebraic)
    abs_max, abs_min : float, largest and smallest |eigenvalue| (abs_min NaN when unknown)
    rtol : float, the threshold used
    method : "exact" or "lanczos"
    converged : bool, False when Lanczos did not converge the extreme eigenvalues to ``tol``:
        lambda_min is then an upper bound of the smallest eigenvalue (a Ritz value) and, for
        a positive definite matrix, ``cond`` a lower bound
    """

    cond: float
    cond_nonzero: float
    rank: int
    lambda_max: float
    lambda_min: float
    abs_max: float
    abs_min: float
    rtol: float
    method: str
    converged: bool = True


def condition_from_eigenvalues(ev, rtol=None) -> Condition:
    """:class:`Condition` from all n eigenvalues ``ev`` (rtol default n * eps)."""
    ev = np.asarray(ev, dtype=np.float64)
    n = ev.size
    rtol = n * np.finfo(np.float64).eps if rtol is None else real("rtol", rtol, lo=0)
    a = np.abs(ev)
    amax, amin = float(a.max()), float(a.min())
    nz = a[a > rtol * amax]
    cond = amax / amin if amin > rtol * amax else math.inf
    cond_nz = float(nz.max() / nz.min()) if nz.size else math.nan
    return Condition(cond=cond, cond_nonzero=cond_nz, rank=int(nz.size), lambda_max=float(ev.max()),
                     lambda_min=float(ev.min()), abs_max=amax, abs_min=amin, rtol=rtol, method="exact")


def condition_number(net, theta, X, Y, curvature="ggn", layer=None, method="auto", rtol=None,
                     tol=1e-8, max_basis=None, seed=0) -> Condition:
    """Condition number of G (default) or H, or of one layer's block.

    method "exact" (or "auto" with n <= EXACT_MAX_ORDER): from all eigenvalues, with the
    numerical rank and the condition number over the non-zero part (a GGN has rank at most
    N * dL, so with more parameters than that it is singular and ``cond`` is inf).
    "lanczos": from the extreme eigenvalues; exact for a one-signed spectrum, but the
    smallest |lambda| of an indefinite Hessian lies inside the spectrum, out of Lanczos'
    reach (abs_min, cond then NaN).  The smallest eigenvalue of an ill-conditioned PSD
    matrix converges slowly: ``converged`` says whether it did (no warning is raised here;
    raise max_basis when it did not).
    """
    check_net(net)
    layer = _check_layer(net, layer)
    lo, hi = _span(net, layer)
    method = _choose_method(method, hi - lo)
    if method == "exact":
        return condition_from_eigenvalues(exact_eigenvalues(net, theta, X, Y, curvature, layer), rtol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported in `converged` instead
        e = eigenvalues(net, theta, X, Y, k=1, which="both", curvature=curvature, layer=layer,
                        method="lanczos", tol=tol, max_basis=max_basis, seed=seed)
    lmin, lmax = float(e.values[0]), float(e.values[-1])
    amax = max(abs(lmin), abs(lmax))
    n = hi - lo
    noise = (n * np.finfo(np.float64).eps if rtol is None else float(rtol)) * amax
    if lmin > noise or lmax < -noise:  # one-signed: the extremes give min |lambda|
        amin = min(abs(lmin), abs(lmax))
        cond = amax / amin
    elif curvature == "ggn":  # positive semi-definite by construction, and singular
        amin, cond = max(lmin, 0.0), math.inf
    else:
        amin = cond = math.nan
    return Condition(cond=cond, cond_nonzero=math.nan, rank=-1, lambda_max=lmax, lambda_min=lmin,
                     abs_max=amax, abs_min=amin, rtol=math.nan if rtol is None else float(rtol),
                     method="lanczos", converged=bool(e.converged.all()))


def layer_spectra(net, theta, X, Y, curvature="hessian", method="auto", seed=0) -> list:
    """Per-layer summary: one dict per layer with keys ``layer``, ``n`` (P_l),
    ``lambda_max``, ``lambda_min``, ``trace``, ``cond``, ``cond_nonzero``,
    ``negative_fraction`` (NaN for lanczos).  Exact blocks come from one
    ``hessian_blocks``/``ggn_blocks`` call; large blocks use Lanczos on block-restricted
    products and the exact trace from the diagonal.
    """
    check_net(net)
    curvature = check_curvature(curvature)
    L = net.num_layers
    methods = [_choose_method(method, net.layer_sizes[l]) for l in range(L)]
    blocks = None
    if "exact" in methods:
        blocks = net.hessian_blocks(theta, X, Y) if curvature == "hessian" else net.ggn_blocks(theta, X, Y)
    tr = trace(net, theta, X, Y, curvature, method="exact").per_layer
    out = []
    for l in range(L):
        if methods[l] == "exact":
            ev = np.linalg.eigvalsh(np.asarray(blocks[l], dtype=np.float64))
            c = condition_from_eigenvalues(ev)
            neg = float(np.mean(ev < -c.rtol * c.abs_max))
        else:
            c = condition_number(net, theta, X, Y, curvature, layer=l, method="lanczos", seed=seed)
            neg = math.nan
        out.append(dict(layer=l, n=net.layer_sizes[l], lambda_max=c.lambda_max, lambda_min=c.lambda_min,
                        trace=float(tr[l]), cond=c.cond, cond_nonzero=c.cond_nonzero,
                        negative_fraction=neg))
    return out
