"""Plain-numpy reference backend: the oracle every other backend is tested against.

Written for clarity, not speed, and deliberately by a different route than the
compiled kernels:
  * gradient      reverse mode (backprop);
  * hvp           forward-over-reverse (Pearlmutter's R-op), all m directions at once;
  * hessian       hvp applied to the identity, column by column of I;
  * ggn           J^T H_out J from the explicit per-sample Jacobian;
  * blocks/diag   slices of the full matrices.
The compiled kernels instead assemble H and G from their Kronecker structure
(docs/curvature.md §5), so an error in that derivation cannot hide in both.

Shapes: X (N, d0); Y (N, k) float for mse and the elementwise losses, (N, k/2) for gaussian (its
outputs are k/2 means, then k/2 log-variances), (N,) int for ce; theta (P,); V (P, m).
Every function returns the data term only (the MLP adds l2), scaled by 1/N for
reduction="mean" (every loss but ce additionally by 1/k: their mean is over all N*k elements;
gaussian's by 1/(k/2), a mean over its pairs).  With
``sample_weight`` w (N,), sample n's loss is weighted by w_n / sum(w) ("mean") or w_n ("sum").
"""

from __future__ import annotations

import numpy as np

name = "reference"


# ---------------------------------------------------------------- activations
_GELU_C = float(np.sqrt(2.0 / np.pi))  # python floats: keep float32 arrays float32
_GELU_A = 0.044715


def _tail(x):
    """1 / (exp(x) + 1) for x >= 0, through exp(-x) (underflows to 0, no overflow)."""
    e = np.exp(-x)
    return e / (1 + e)


def act(name, z):
    """(sigma(z), sigma'(z), sigma''(z)) elementwise."""
    if name == "identity":
        return z, np.ones_like(z), np.zeros_like(z)
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(z.dtype), np.zeros_like(z)
    if name == "tanh":
        # 1 - t^2 = 4 h (1 - h), h = (1 - tanh|z|)/2 = e/(1 + e), e = exp(-2|z|): no tail
        # loses digits (1 - t*t is 0 past |z| ~ 19, and inexact well before)
        t = np.tanh(z)
        h = _tail(2 * np.abs(z))
        s = 4 * (h - h * h)
        return t, s, -2 * t * s
    if name in ("sigmoid", "softplus"):
        # through e = exp(-|z|) so that neither tail cancels: s(1-s) = e / (1+e)^2 and
        # 1 - 2s = -sign(z) (1-e)/(1+e), with 1 - e = -expm1(-|z|)
        e = np.exp(-np.abs(z))
        em = np.expm1(-np.abs(z))
        s = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        ds = e / (1 + e) ** 2
        if name == "sigmoid":
            return s, ds, ds * np.where(z >= 0, em, -em) / (1 + e)
        return np.logaddexp(0, z), s, ds
    if name == "gelu":
        u = _GELU_C * (z + _GELU_A * z ** 3)
        du = _GELU_C * (1 + 3 * _GELU_A * z ** 2)
        ddu = _GELU_C * 6 * _GELU_A * z
        t = np.tanh(u)
        h = _tail(2 * np.abs(u))
        s = 4 * (h - h * h)
        onep = 2 * np.where(u >= 0, 1 - h, h)  # 1 + t, exact in the left tail too
        return 0.5 * z * onep, 0.5 * onep + 0.5 * z * s * du, s * du - z * t * s * du ** 2 + 0.5 * z * s * ddu
    if name == "sin":
        return np.sin(z), np.cos(z), -np.sin(z)
    raise ValueError(name)  # pragma: no cover - MLP validates names


def layers(net, theta):
    """[(W, b)] views into theta; W (d_{l-1}, d_l)."""
    out = []
    for l, (a, b) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        o = net.offsets[l]
        out.append((theta[o:o + a * b].reshape(a, b), theta[o + a * b:o + (a + 1) * b]))
    return out


def forward(net, theta, X):
    """Returns acts [a_0 = X, a_1, ..., f], and per hidden layer (sigma', sigma'')."""
    Wb = layers(net, theta)
    acts, derivs = [X], []
    a = X
    for l, (W, b) in enumerate(Wb):
        z = a @ W + b
        if l < len(Wb) - 1:
            a, d1, d2 = act(net.activations[l], z)
            derivs.append((d1, d2))
        else:
            a = z
        acts.append(a)
    return acts, derivs


def _scale(net, n, reduction, sample_weight=None, dtype=np.float64):
    """Per-sample weight of the data term: 1/N (mean) or 1 (sum); with sample weights w, a column
    (N, 1) of w_n / sum(w) (mean) or w_n (sum) in ``dtype``."""
    if sample_weight is None:
        return 1.0 / n if reduction == "mean" else 1.0
    w = np.asarray(sample_weight, np.float64)
    if reduction == "mean":
        w = w / w.sum()
    return w.astype(dtype)[:, None]


def _total(s, per_sample):
    """The data term from the per-sample losses (N,), s as _scale returns it."""
    if np.ndim(s) == 0:
        return s * float(np.sum(per_sample))
    return float(np.sum(s[:, 0].astype(np.float64) * per_sample))


ELEMENTWISE = ("bce", "poisson", "huber", "soft_l1")


def _elementwise(net, F, Y):
    """bce and poisson, per output: (l, l', l''), each (N, k).  bce through e = exp(-|F|), so that
    saturated logits (|F| of 40 to 700) keep their tiny gradient and curvature instead of
    rounding them to 0; poisson exp(F)."""
    if net.loss_name in ("huber", "soft_l1"):  # of r = F - Y, c = loss_scale
        c, R = net.loss_scale, F - Y
        if net.loss_name == "huber":
            inside = np.abs(R) <= c
            return (np.where(inside, 0.5 * R * R, c * (np.abs(R) - 0.5 * c)), np.clip(R, -c, c),
                    inside.astype(F.dtype))
        q = np.hypot(1.0, R / c).astype(F.dtype)  # c^2 (q - 1) = R^2 / (1 + q): no cancellation
        return R * (R / (1 + q)), R / q, (1 / q) ** 3
    if net.loss_name == "bce":
        e = np.exp(-np.abs(F))
        q = e / (1 + e)  # the smaller of sigmoid(F) and 1 - sigmoid(F)
        pos = F >= 0
        value = np.where(pos, (1 - Y) * F, -Y * F) + np.log1p(e)
        return value, np.where(pos, (1 - Y) - q, q - Y), q / (1 + e)
    E = np.exp(F)
    return E - Y * F, E - Y, E


def _gaussian(F, Y):
    """gaussian per pair, each (N, h): (r, E, r E, r^2 E) with r = Y - mu, E = exp(-v) for the
    outputs F = [mu, v].  r E and r^2 E are 0 where r is 0, even where E overflows to inf."""
    h = F.shape[1] // 2
    with np.errstate(over="ignore", invalid="ignore"):  # the model's own e^-v; 0 * inf is replaced
        R, E = Y - F[:, :h], np.exp(-F[:, h:])
        zero = R == 0
        RE = np.where(zero, 0, R * E)
        return R, E, RE, np.where(zero, 0, R * RE)


def _gaussian_hess(F, Y, fisher):
    """gaussian's per-pair output Hessian blocks (N, h) of each sample: (mu-mu, mu-v, v-v), the
    exact [[E, r E], [r E, r^2 E / 2]] or (fisher) its expectation under the model diag(E, 1/2)."""
    _, E, RE, R2E = _gaussian(F, Y)
    if fisher:
        return E, np.zeros_like(E), np.full_like(E, 0.5)
    return E, RE, 0.5 * R2E


def _softmax(F):
    E = np.exp(F - F.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def _loss_grad_out(net, F, Y, reduction, sample_weight=None):
    """Loss value and dL/dF (N, k)."""
    n, k = F.shape
    s = _scale(net, n, reduction, sample_weight, F.dtype)
    if net.loss_name == "mse":
        R = F - Y
        if sample_weight is None:
            return s / k * float(np.sum(R * R)), s * 2.0 / k * R
        return _total(s, np.sum(R * R, axis=1, dtype=np.float64)) / k, s * 2.0 / k * R
    if net.loss_name in ELEMENTWISE:
        value, g, _ = _elementwise(net, F, Y)
        return _total(s, np.sum(value, axis=1, dtype=np.float64)) / k, s / k * g
    if net.loss_name == "gaussian":  # the mean over the h pairs of (v + r^2 E) / 2
        h = k // 2
        _, _, RE, R2E = _gaussian(F, Y)
        value = 0.5 * (F[:, h:] + R2E)
        g = np.concatenate([-RE, 0.5 * (1 - R2E)], axis=1)
        return _total(s, np.sum(value, axis=1, dtype=np.float64)) / h, s / h * g
    # Around the most likely class t: sum_j e^(F_j - F_t) = 1 + rest, the loss is
    # log1p(rest) + F_t - F_y, and where y = t, p_y - 1 = -rest / (1 + rest).  The plain
    # log(1 + rest) and p_t - 1 are 0 once rest is below 1's rounding (a logit gap of 37; 17 in
    # float32), though the loss and gradient are not.
    rows = np.arange(n)
    top = np.argmax(F, axis=1)
    E = np.exp(F - F[rows, top][:, None])
    E[rows, top] = 0.0
    rest = E.sum(axis=1)
    value = _total(s, np.log1p(rest) + (F[rows, top] - F[rows, Y]))
    G = E / (1.0 + rest)[:, None]
    G[rows, top] = 1.0 / (1.0 + rest)
    hit = Y == top
    G[rows[~hit], Y[~hit]] -= 1.0
    G[rows[hit], Y[hit]] = -rest[hit] / (1.0 + rest[hit])
    return value, s * G


# ce's H_out = diag(p) - p p^T is formed around each sample's most likely class m: where p_m
# is near 1, p_m (1 - p_m) and p_m (u_m - p.u) are tiny differences of numbers near p_m u_m,
# which the plain forms lose to rounding entirely (a logit gap of 40 is enough).  Since the
# p sum to 1, 1 - p_m = sum_{j != m} p_j and u_c - p.u = (u_c - u_m) - sum_j p_j (u_j - u_m),
# exactly, without the cancellation.
def _out_hess_apply(net, F, RF, reduction, sample_weight=None, Y=None, gauss_newton=False):
    """H_out @ RF per sample, for RF of shape (m, N, k): d2 loss / dF2 times tangent (with
    ``gauss_newton``, the GGN's output curvature: for gaussian the Fisher, elsewhere the same)."""
    n, k = F.shape
    s = _scale(net, n, reduction, sample_weight, F.dtype)
    if net.loss_name == "mse":
        return s * 2.0 / k * RF
    if net.loss_name == "gaussian":
        h = k // 2
        mm, mv, vv = _gaussian_hess(F, Y, gauss_newton)
        Rm, Rv = RF[..., :h], RF[..., h:]

        def times(a, x):  # a zero tangent gives 0 also against an overflowed e^-v
            with np.errstate(invalid="ignore"):
                return np.where(x == 0, 0, a * x)
        return s / h * np.concatenate([times(mm, Rm) + times(mv, Rv), times(mv, Rm) + times(vv, Rv)], axis=-1)
    if net.loss_name in ELEMENTWISE:
        return s / k * _elementwise(net, F, Y)[2] * RF
    p = _softmax(F)
    top = np.argmax(F, axis=1)
    D = RF - RF[..., np.arange(n), top][..., None]  # u_c - u_m
    return s * p * (D - np.sum(p * D, axis=-1, keepdims=True))


def _out_hess(net, F, reduction, sample_weight=None, Y=None, gauss_newton=True):
    """H_out per sample, shape (N, k, k): by default the GGN's (for gaussian the Fisher), with
    ``gauss_newton=False`` the exact output Hessian."""
    n, k = F.shape
    s = _scale(net, n, reduction, sample_weight, F.dtype)
    if np.ndim(s):
        s = s[:, :, None]  # (N, 1, 1)
    if net.loss_name == "mse":
        return np.broadcast_to(s * 2.0 / k * np.eye(k, dtype=F.dtype), (n, k, k)).copy()
    if net.loss_name == "gaussian":
        h = k // 2
        mm, mv, vv = _gaussian_hess(F, Y, gauss_newton)
        H = np.zeros((n, k, k), F.dtype)
        j = np.arange(h)
        H[:, j, j], H[:, j, h + j], H[:, h + j, j], H[:, h + j, h + j] = mm, mv, mv, vv
        return s / h * H
    if net.loss_name in ELEMENTWISE:
        h = _elementwise(net, F, Y)[2]
        H = np.zeros((n, k, k), F.dtype)
        H[:, np.arange(k), np.arange(k)] = h
        return s / k * H
    p = _softmax(F)
    rows, top = np.arange(n), np.argmax(F, axis=1)
    others = p.copy()
    others[rows, top] = 0.0
    q = 1.0 - p  # 1 - p_c, and for the most likely class the sum of the others
    q[rows, top] = others.sum(axis=1)
    H = -np.einsum("nc,nd->ncd", p, p)
    H[:, np.arange(k), np.arange(k)] = p * q
    return s * H


# ---------------------------------------------------------------- quantities
def predict(net, theta, X):
    return forward(net, theta, X)[0][-1]


def loss(net, theta, X, Y, reduction, sample_weight=None):
    return _loss_grad_out(net, predict(net, theta, X), Y, reduction, sample_weight)[0]


def loss_and_grad(net, theta, X, Y, reduction, sample_weight=None):
    acts, derivs = forward(net, theta, X)
    value, g = _loss_grad_out(net, acts[-1], Y, reduction, sample_weight)
    Wb = layers(net, theta)
    grad = np.empty_like(theta)
    for l in range(len(Wb) - 1, -1, -1):
        W, _ = Wb[l]
        gW, gb = layers(net, grad)[l]
        gW[...] = acts[l].T @ g
        gb[...] = g.sum(axis=0)
        if l > 0:
            g = (g @ W.T) * derivs[l - 1][0]
    return value, grad


def _rop(net, theta, X, Y, V, reduction, gauss_newton, sample_weight=None):
    """H @ V (or G @ V) by forward-over-reverse; V (P, m)."""
    acts, derivs = forward(net, theta, X)
    Wb = layers(net, theta)
    m = V.shape[1]
    VWb = [layers(net, V[:, c]) for c in range(m)]
    VW = [np.stack([VWb[c][l][0] for c in range(m)]) for l in range(len(Wb))]  # (m, d_{l-1}, d_l)
    Vb = [np.stack([VWb[c][l][1] for c in range(m)])[:, None, :] for l in range(len(Wb))]  # (m, 1, d_l)

    # forward tangents: Rz_l = Ra_{l-1} W_l + a_{l-1} VW_l + Vb_l ; Ra_l = sigma'(z_l) Rz_l
    Ra = np.zeros((m,) + X.shape, X.dtype)
    Rz = []
    for l, (W, _) in enumerate(Wb):
        rz = Ra @ W + acts[l] @ VW[l] + Vb[l]
        Rz.append(rz)
        if l < len(Wb) - 1:
            Ra = derivs[l][0] * rz

    # backward: g_L = dl/dF, Rg_L = H_out RF; then through each layer
    _, g = _loss_grad_out(net, acts[-1], Y, reduction, sample_weight)
    Rg = _out_hess_apply(net, acts[-1], Rz[-1], reduction, sample_weight, Y, gauss_newton)
    out = np.empty((theta.size, m), theta.dtype)
    Ra_prev = None
    for l in range(len(Wb) - 1, -1, -1):
        W, _ = Wb[l]
        # R{dL/dW_l} = R{a_{l-1}}^T g_l + a_{l-1}^T R{g_l}
        RgW = np.einsum("ni,cnj->cij", acts[l], Rg, optimize=True)
        if l > 0 and not gauss_newton:
            Ra_prev = derivs[l - 1][0] * Rz[l - 1]
            RgW = RgW + np.einsum("cni,nj->cij", Ra_prev, g, optimize=True)
        Rgb = Rg.sum(axis=1)
        o = net.offsets[l]
        a, b = W.shape
        out[o:o + a * b] = RgW.reshape(m, a * b).T
        out[o + a * b:o + (a + 1) * b] = Rgb.T
        if l > 0:
            d1, d2 = derivs[l - 1]
            e = g @ W.T
            Re = Rg @ W.T
            if not gauss_newton:
                Re = Re + np.einsum("nj,cij->cni", g, VW[l], optimize=True)
                Rg = Re * d1 + e * d2 * Rz[l - 1]
            else:
                Rg = Re * d1
            g = e * d1
    return out


def hvp(net, theta, X, Y, V, reduction, sample_weight=None):
    return _rop(net, theta, X, Y, V, reduction, False, sample_weight)


def ggn_vp(net, theta, X, Y, V, reduction, sample_weight=None):
    return _rop(net, theta, X, Y, V, reduction, True, sample_weight)


def jacobian(net, theta, X):
    """Rows n*k + c: d f_c(x_n) / d theta, by one backward pass per output c."""
    acts, derivs = forward(net, theta, X)
    Wb = layers(net, theta)
    n, k = acts[-1].shape
    J = np.empty((n, k, theta.size), theta.dtype)
    for c in range(k):
        g = np.zeros((n, k), theta.dtype)
        g[:, c] = 1.0
        for l in range(len(Wb) - 1, -1, -1):
            W, _ = Wb[l]
            o = net.offsets[l]
            a, b = W.shape
            J[:, c, o:o + a * b] = np.einsum("ni,nj->nij", acts[l], g).reshape(n, a * b)
            J[:, c, o + a * b:o + (a + 1) * b] = g
            if l > 0:
                g = (g @ W.T) * derivs[l - 1][0]
    return J.reshape(n * k, theta.size)


def ggn(net, theta, X, Y, reduction, sample_weight=None):
    n, k = X.shape[0], net.num_outputs
    J = jacobian(net, theta, X).reshape(n, k, -1)
    C = _out_hess(net, predict(net, theta, X), reduction, sample_weight, Y)
    return np.einsum("ncp,ncd,ndq->pq", J, C, J, optimize=True)


def hessian(net, theta, X, Y, reduction, sample_weight=None):
    """H I, a block of the identity's columns at a time (the tangents of 128 columns stay in
    cache; all P at once are N * P * width values per layer)."""
    eye = np.eye(theta.size, dtype=theta.dtype)
    return np.concatenate([hvp(net, theta, X, Y, eye[:, j:j + 128], reduction, sample_weight)
                           for j in range(0, theta.size, 128)], axis=1)


def _refuse_full_matrix(net, what):
    """The reference forms the whole P x P matrix even for blocks and diagonals."""
    P = net.num_params
    net._check_memory(f"{what} (the reference backend forms the full {P} x {P} matrix)", 3.0 * P * P)


def _block_slices(net):
    return [slice(net.offsets[l], net.offsets[l + 1]) for l in range(net.num_layers)]


def hessian_blocks(net, theta, X, Y, reduction, sample_weight=None):
    _refuse_full_matrix(net, "hessian_blocks")
    H = hessian(net, theta, X, Y, reduction, sample_weight)
    return [H[s, s].copy() for s in _block_slices(net)]


def ggn_blocks(net, theta, X, Y, reduction, sample_weight=None):
    _refuse_full_matrix(net, "ggn_blocks")
    G = ggn(net, theta, X, Y, reduction, sample_weight)
    return [G[s, s].copy() for s in _block_slices(net)]


def hessian_diag(net, theta, X, Y, reduction, sample_weight=None):
    _refuse_full_matrix(net, "hessian_diag")
    return np.diagonal(hessian(net, theta, X, Y, reduction, sample_weight)).copy()


def ggn_diag(net, theta, X, Y, reduction, sample_weight=None):
    _refuse_full_matrix(net, "ggn_diag")
    return np.diagonal(ggn(net, theta, X, Y, reduction, sample_weight)).copy()


# ---------------------------------------------------------------- Kronecker factors (K-FAC)
def _output_rows(net, F, Y, reduction, noise, sample_weight=None):
    """The rows S (N, r, k) whose outer products sum to each sample's output Hessian, the GGN's
    (noise None: r = k rows of its square root, R_n^T R_n = s_n H_n) or estimate it (noise: r = M
    sampled gradients; ce from uniforms (N, M), the label drawn by inverse CDF of the softmax;
    the other likelihoods the MLP's unit-weight gradient rows (N, M, k), scaled by sqrt(s_n/M)),
    s_n sample n's weight (_scale)."""
    n, k = F.shape
    s = np.broadcast_to(np.reshape(_scale(net, n, reduction, sample_weight), (-1, 1)), (n, 1))
    if noise is not None and net.loss_name != "ce":
        return (np.sqrt(s / noise.shape[1])[:, :, None] * noise).astype(F.dtype)
    if net.loss_name in (*ELEMENTWISE, "gaussian"):  # a diagonal H_out (gaussian's Fisher): its square root
        H = _out_hess(net, F, reduction, sample_weight, Y=Y)
        return np.sqrt(np.diagonal(H, axis1=1, axis2=2))[:, :, None] * np.eye(k, dtype=F.dtype)
    if net.loss_name == "mse":
        return (np.sqrt(2.0 * s / k)[:, :, None] * np.eye(k)).astype(F.dtype)
    p = _softmax(F)
    if noise is None:
        w = np.sqrt(s * p)  # row r: sqrt(s p_r) (e_r - p)
        return (w[:, :, None] * (np.eye(k)[None] - p[:, None, :])).astype(F.dtype)
    m = noise.shape[1]
    cdf = np.cumsum(p, axis=1)
    label = np.minimum((noise[:, :, None] >= cdf[:, None, :]).sum(axis=2), k - 1)  # (N, M)
    S = np.broadcast_to(p[:, None, :], (n, m, k)).copy()
    S[np.arange(n)[:, None], np.arange(m)[None, :], label] -= 1.0
    return (np.sqrt(s / m)[:, :, None] * S).astype(F.dtype)


def _kfac_vectors(net, theta, X, Y, reduction, noise, sample_weight=None):
    """Per layer (augmented inputs (N, d_{l-1} + 1), rows backpropagated to the layer's
    pre-activations (N, r, d_l))."""
    acts, derivs = forward(net, theta, X)
    Wb = layers(net, theta)
    n = X.shape[0]
    U = _output_rows(net, acts[-1], Y, reduction, noise, sample_weight)
    out = [None] * len(Wb)
    for l in range(len(Wb) - 1, -1, -1):
        a = np.concatenate([acts[l], np.ones((n, 1), X.dtype)], axis=1)
        out[l] = (a, U)
        if l > 0:
            U = (U @ Wb[l][0].T) * derivs[l - 1][0][:, None, :]
    return out


def kfac_factors(net, theta, X, Y, reduction, noise=None, bases=None, sample_weight=None, input_factor=True):
    """Per layer (A, B): A = mean over samples of a~ a~^T (the inputs with a 1 appended, as
    layer l's [Wl; bl] rows are ordered; with sample weights w, sum_n w_n a~ a~^T / sum w),
    B = sum over samples and rows of u u^T, u the rows of _output_rows backpropagated to the
    layer's pre-activations (the sample weight s_n inside).
    With ``bases`` [(Qa, Qb)] per layer, instead each layer's (d_{l-1} + 1, d_l) array of
    sum_n sum_r (Qa^T a~_n)_i^2 (Qb^T u_nr)_j^2: the exact block's diagonal in that basis, the
    eigenvalues of EKFAC.  Y is read by the heads whose GGN output Hessian depends on it (huber,
    soft_l1).  ``input_factor`` False: the first layer's A is None (not computed)."""
    vecs = _kfac_vectors(net, theta, X, Y, reduction, noise, sample_weight)
    if bases is None:
        if sample_weight is None:
            mean_outer = [a.T @ a / X.shape[0] if l or input_factor else None for l, (a, _) in enumerate(vecs)]
        else:
            w = np.asarray(sample_weight, np.float64)
            mean_outer = [((a.T * w) @ a / w.sum()).astype(theta.dtype) if l or input_factor else None
                          for l, (a, _) in enumerate(vecs)]
        return [(A, np.einsum("nrj,nrk->jk", U, U).astype(theta.dtype, copy=False))
                for A, (_, U) in zip(mean_outer, vecs)]
    out = []
    for (a, U), (Qa, Qb) in zip(vecs, bases):
        pa, pu = (a @ Qa) ** 2, (U @ Qb) ** 2
        out.append((pa.T @ pu.sum(axis=1)).astype(theta.dtype, copy=False))
    return out
