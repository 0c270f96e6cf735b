// The scalar formulas shared by the C++ kernels and the CUDA ones (csrc/cuda): the activation
// and loss codes, every hidden activation with its first and second derivatives, and the loss
// head's per-sample pieces.  One source for each formula: the C++ kernels evaluate them with
// their vectorisable exp family (vmath.hpp, through activations.hpp's VMath), the CUDA ones
// with CUDA's own tanh and exp (cuda/activations.cuh's DeviceMath).  A math class M supplies:
//   M::tanh_pos(x, h)   tanh x for x >= 0, and h = (1 - tanh x)/2 = 1/(e^2x + 1) to a few ulp
//   M::gelu_h(x, h)     h from tanh_pos(x, h) as gelu's second derivative needs it: 0 where the
//                       target clamps x (there h times du^2 ~ z^4 is not negligible)
//   M::log_over_1mh(h)  -log(1 - h) for 0 <= h <= 1/2
//   M::exp(x)           e^x, inf where it overflows
//   M::sigmoid_neg(x, c) q = 1/(1 + e^x) for x >= 0, and c = 1 - q (neither from the other)
// TK_HD marks each function __host__ __device__ under nvcc, and always inlined: the C++ loops
// over values vectorise only when the formula is inlined into them.
//
//   identity  z                    1                      0
//   relu      max(z, 0)            [z > 0]                0
//   tanh      t = tanh z           1 - t^2                -2 t (1 - t^2)
//   sigmoid   s = 1/(1+e^-z)       s (1 - s)              s (1 - s)(1 - 2s)
//   softplus  log(1 + e^z)         s                      s (1 - s)
//   gelu      z/2 (1 + tanh u),  u = c (z + 0.044715 z^3),  c = sqrt(2/pi)   (tanh form)
//   sin       sin z                cos z                  -sin z
// Every exponential goes through tanh x and h (x >= 0), so that no tail loses digits:
// 1 - t^2 = 4 h (1 - h); with x = |z|/2, sigmoid's small tail is h itself (the other 1 - h),
// s (1 - s) = h (1 - h), 1 - 2s = -sign(z) tanh x, and softplus = max(z, 0) + log1p(e^-|z|) =
// max(z, 0) - log(1 - h); gelu's 1 + tanh u is 2 (1 - h) or 2 h by the sign of u.
// docs/extending.md says how to add an activation or a loss.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TK_HD __host__ __device__ __forceinline__
#else
#define TK_HD inline __attribute__((always_inline))
#endif

namespace tk {

// The codes Python passes to Net (exported as ACTIVATION_CODES / LOSS_CODES by both modules).
enum class Act : int { identity = 0, relu, tanh, sigmoid, softplus, gelu, sin };
enum class Loss : int { mse = 0, ce, bce, poisson, huber, soft_l1, gaussian };
inline constexpr const char* kActNames[] = {"identity", "relu", "tanh", "sigmoid", "softplus", "gelu", "sin"};
inline constexpr const char* kLossNames[] = {"mse", "ce", "bce", "poisson", "huber", "soft_l1", "gaussian"};

template <Act F>
struct ActTag {
  static constexpr Act value = F;
};

// body(ActTag<f>()): the run-time code made a compile-time one, so that a loop over values
// inside body is compiled once per activation, with no switch inside it.
template <class Body>
TK_HD void with_act(Act f, Body&& body) {
  switch (f) {
    case Act::identity:
      return body(ActTag<Act::identity>());
    case Act::relu:
      return body(ActTag<Act::relu>());
    case Act::tanh:
      return body(ActTag<Act::tanh>());
    case Act::sigmoid:
      return body(ActTag<Act::sigmoid>());
    case Act::softplus:
      return body(ActTag<Act::softplus>());
    case Act::gelu:
      return body(ActTag<Act::gelu>());
    case Act::sin:
      return body(ActTag<Act::sin>());
  }
}

template <Loss L>
struct LossTag {
  static constexpr Loss value = L;
};

// body(LossTag<loss>()): as with_act, for loops over a head's entries (curvature_root), so that
// the branches on the loss fold away and what does not depend on the entry leaves the loop.
template <class Body>
TK_HD void with_loss(Loss loss, Body&& body) {
  switch (loss) {
    case Loss::mse:
      return body(LossTag<Loss::mse>());
    case Loss::ce:
      return body(LossTag<Loss::ce>());
    case Loss::bce:
      return body(LossTag<Loss::bce>());
    case Loss::poisson:
      return body(LossTag<Loss::poisson>());
    case Loss::huber:
      return body(LossTag<Loss::huber>());
    case Loss::soft_l1:
      return body(LossTag<Loss::soft_l1>());
    case Loss::gaussian:
      return body(LossTag<Loss::gaussian>());
  }
}

// a = act(v), d1 = act'(v), d2 = act''(v), branch-free (the C++ loops vectorise).
template <Act F, class M, class T>
TK_HD void activation(T v, T& a, T& d1, T& d2) {
  using std::copysign;
  using std::fabs;
  if constexpr (F == Act::identity) {
    a = v, d1 = T(1), d2 = T(0);
  } else if constexpr (F == Act::relu) {
    a = v > 0 ? v : T(0), d1 = v > 0 ? T(1) : T(0), d2 = T(0);
  } else if constexpr (F == Act::tanh) {
    T h;
    const T t = copysign(M::tanh_pos(fabs(v), h), v), s = 4 * (h - h * h);  // -0 stays -0
    a = t, d1 = s, d2 = -2 * t * s;
  } else if constexpr (F == Act::sigmoid || F == Act::softplus) {
    T h;
    const T t = M::tanh_pos(T(0.5) * fabs(v), h);
    const T s = v >= 0 ? 1 - h : h, ds = h - h * h;
    if constexpr (F == Act::sigmoid)
      a = s, d1 = ds, d2 = -ds * copysign(t, v);
    else
      a = (v > 0 ? v : T(0)) + M::log_over_1mh(h), d1 = s, d2 = ds;
  } else if constexpr (F == Act::gelu) {
    const T c = T(0.7978845608028654), k3 = T(0.044715);
    const T u = c * (v + k3 * v * v * v), du = c * (1 + 3 * k3 * v * v);
    T h;
    const T t = copysign(M::tanh_pos(fabs(u), h), u);
    h = M::gelu_h(fabs(u), h);
    const T s = 4 * (h - h * h), onep = 2 * (u >= 0 ? 1 - h : h);  // 1 - t^2, 1 + t
    a = T(0.5) * v * onep;
    d1 = T(0.5) * onep + T(0.5) * v * s * du;
    d2 = s * du - v * t * s * du * du + T(0.5) * v * s * (c * 6 * k3 * v);
  } else {
    static_assert(F == Act::sin);
    using std::cos;
    using std::sin;
    const T sv = sin(v);
    a = sv, d1 = cos(v), d2 = -sv;
  }
}

// ---- The loss head, per sample (f the k outputs; s the sample weight, 1/N or 1) ----

// mse's output curvature H_out = 2s/k I.
template <class T>
TK_HD T mse_curvature(std::int64_t k, T s) {
  return 2 * s / T(k);
}

// mse: returns sum_j (f_j - y_j)^2; g_j = 2s/k (f_j - y_j) when g is given.
template <class T>
TK_HD T mse_row(std::int64_t k, const T* f, const T* y, T s, T* g) {
  const T c = mse_curvature(k, s);
  T acc = 0;
  for (std::int64_t j = 0; j < k; ++j) {
    const T d = f[j] - y[j];
    acc += d * d;
    if (g) g[j] = c * d;
  }
  return acc;
}

// ce is formed around each sample's most likely class top: sum_j e^(f_j - f_top) = 1 + rest,
// the loss is log1p(rest) + (f_top - f_y) and, where y = top, p_y - 1 = -rest p_top.  The plain
// log(sum) and p_top - 1 are 0 once rest is below 1's rounding (a logit gap of 37, 17 in
// float32), though the loss and gradient are not.

// The first index of the largest of x[0..k): the most likely class of f or of p.
template <class T>
TK_HD std::int64_t ce_top(std::int64_t k, const T* x) {
  std::int64_t top = 0;
  for (std::int64_t j = 1; j < k; ++j) top = x[j] > x[top] ? j : top;
  return top;
}

// p holds e^(f_j - f_top) (any value at top): p becomes the softmax; returns rest.
template <class T>
TK_HD T ce_softmax(std::int64_t k, std::int64_t top, T* p) {
  p[top] = 0;
  T rest = 0;
  for (std::int64_t j = 0; j < k; ++j) rest += p[j];
  const T inv = 1 / (1 + rest);
  for (std::int64_t j = 0; j < k; ++j) p[j] *= inv;
  p[top] = inv;
  return rest;
}

// The loss at label y, from log1p(rest) (ce_softmax's rest).
template <class T>
TK_HD T ce_loss(T log1p_rest, const T* f, std::int64_t top, std::int64_t y) {
  return log1p_rest + (f[top] - f[y]);
}

// The data term from the sum of the per-sample losses (mse_row's, ce_loss's, ...) and the sample
// weight: every loss but ce is a mean over the k outputs too, gaussian over its k/2 pairs.
inline double data_term(Loss loss, std::int64_t k, double total, double s) {
  return total * s / (loss == Loss::ce ? 1.0 : loss == Loss::gaussian ? (double)(k / 2) : (double)k);
}

// The gradient g = s (p - e_y) of the loss at label y, from the softmax p and ce_softmax's rest.
template <class T>
TK_HD void ce_gradient(std::int64_t k, const T* p, std::int64_t y, std::int64_t top, T rest, T s, T* g) {
  for (std::int64_t j = 0; j < k; ++j) g[j] = s * p[j];
  if (y == top)
    g[y] = -s * (rest * p[top]);
  else
    g[y] -= s;
}

// Entry (i, j) of H_out = s (diag p - p p^T), the diagonal as s p_i (1 - p_i) with 1 - p_top
// of the most likely class the sum of the other p (where p_top is near 1, p_top - p_top^2 is
// lost to rounding).
template <class T>
TK_HD T ce_curvature(std::int64_t k, const T* p, std::int64_t i, std::int64_t j, T s) {
  if (i != j) return -s * p[i] * p[j];
  const std::int64_t top = ce_top(k, p);
  if (i != top) return s * p[i] * (1 - p[i]);
  T rest = 0;
  for (std::int64_t r = 0; r < k; ++r) rest += r == top ? T(0) : p[r];
  return s * p[i] * rest;
}

// o = H_out x = s p_j (x_j - p.x), formed around the most likely class top as
// (x_j - xt) - p.(x - xt), xt = x_top: where p_top is near 1 the plain difference is lost to
// rounding.  With xt given, T may be a vector of samples, each with its own xt (lanes.hpp).
template <class T>
TK_HD void ce_curvature_times_at(std::int64_t k, const T* p, T xt, const T* x, T s, T* o) {
  T dot{};
  for (std::int64_t j = 0; j < k; ++j) dot += p[j] * (x[j] - xt);
  for (std::int64_t j = 0; j < k; ++j) o[j] = s * p[j] * ((x[j] - xt) - dot);
}

template <class T>
TK_HD void ce_curvature_times(std::int64_t k, const T* p, std::int64_t top, const T* x, T s, T* o) {
  ce_curvature_times_at(k, p, x[top], x, s, o);
}

// ---------------------------------------------------------------- elementwise heads
// bce and poisson are means over the k outputs of a loss l(f_j, y_j) of each output alone, so
// H_out is diagonal: s/k diag(h) with h_j = l''(f_j).  The head keeps h in the tape's p (where ce
// keeps its softmax), and the curvature reads it from there.
//   bce      l = softplus(f) - y f     l' = sigma(f) - y     l'' = sigma(f) (1 - sigma(f))
//   poisson  l = e^f - y f             l' = e^f - y          l'' = e^f
// bce goes through q = 1/(1 + e^|f|), the smaller of sigma(f) and 1 - sigma(f), and c = 1 - q,
// the larger: softplus(f) = max(f, 0) - log(c), sigma - y = (1 - y) - q for f >= 0 (q - y
// below), and sigma (1 - sigma) = q c, so nothing cancels for saturated logits (|f| of 40 to
// 700): the loss keeps its e^-|f| and the curvature stays positive down to the last subnormal.
// With y = 1 and f large, (1 - y) f is exactly 0.  poisson's e^f overflows past f ~ 709 (88 in
// float32), as the loss itself does.
// The robust losses of the residual r = f - y, with c = loss_scale (torch's HuberLoss(delta=c),
// scipy's soft_l1 with f_scale = c):
//   huber    l = r^2 / 2 for |r| <= c, else c (|r| - c/2)    l' = clamp(r, -c, c)   l'' = [|r| <= c]
//   soft_l1  l = c^2 (q - 1), q = sqrt(1 + (r/c)^2)          l' = r / q             l'' = 1 / q^3
// soft_l1's q - 1 cancels for small r/c: l is formed as r (r / (1 + q)), and q as |r|/c where
// 1 + (r/c)^2 rounds to (r/c)^2 (so that it never overflows).
TK_HD constexpr bool elementwise(Loss loss) {
  return loss == Loss::bce || loss == Loss::poisson || loss == Loss::huber || loss == Loss::soft_l1;
}

template <class M, class T>
TK_HD T elem_loss(Loss loss, T f, T y, T c, T& g, T& h) {
  using std::fabs;
  using std::sqrt;
  if (loss == Loss::huber) {
    const T r = f - y, a = fabs(r);
    const bool in = a <= c;
    g = in ? r : (r > 0 ? c : -c);
    h = in ? T(1) : T(0);
    return in ? T(0.5) * r * r : c * (a - T(0.5) * c);
  }
  if (loss == Loss::soft_l1) {
    const T r = f - y, u = r / c, big = sizeof(T) == 4 ? T(4096) : T(67108864);
    const T q = fabs(u) > big ? fabs(u) : sqrt(1 + u * u);
    g = r / q;
    h = 1 / (q * q * q);
    return r * (r / (1 + q));
  }
  if (loss == Loss::bce) {
    T c;
    const T q = M::sigmoid_neg(fabs(f), c);
    h = q * c;
    const T lp = M::log_over_1mh(q);  // log1p(e^-|f|)
    if (f >= 0) {
      g = (1 - y) - q;
      return (1 - y) * f + lp;
    }
    g = q - y;
    return lp - y * f;
  }
  const T ef = M::exp(f);  // poisson
  g = ef - y;
  h = ef;
  return ef - y * f;
}

// ---------------------------------------------------------------- gaussian
// Heteroscedastic regression: the k = 2h outputs are h means and h log-variances,
// f = [mu_0..mu_{h-1}, v_0..v_{h-1}], the targets y (h per sample), and the loss is the mean over
// the h pairs of (v + (y - mu)^2 e^-v) / 2.  Per pair, with r = y - mu, q = e^(-v/2) (the square
// root of the precision E = e^-v) and z = r q (the standardised residual):
//   l = (v + z^2) / 2        dl/dmu = -z q        dl/dv = (1 - z^2) / 2
//   Hessian  [[q^2, z q], [z q, z^2/2]]  (indefinite where z != 0)
//   Fisher   diag(q^2, 1/2)              (its expectation under the model: E[z] = 0, E[z^2] = 1;
//                                         the GGN's output curvature)
// each times s/h.  The head keeps q in the tape's p[j] and z in p[h + j], and every form of the
// curvature reads them from there.  q overflows for v below about -1419 (-177 in float32) and
// underflows to 0 above as much: that is the model's own e^-v.  A zero factor wins over an
// infinite one (mul0): where r = 0 the pair's z, gradient and cross curvature are 0, not NaN.
template <class T>
TK_HD T mul0(T a, T b) {
  return a == T(0) ? T(0) : a * b;
}

// One pair: returns l; q, z as above, gm = dl/dmu, gv = dl/dv (unscaled).
template <class M, class T>
TK_HD T gauss_pair(T mu, T v, T y, T& q, T& z, T& gm, T& gv) {
  const T hv = T(0.5) * v;
  q = M::exp(-hv);
  z = mul0(y - mu, q);
  gm = -mul0(z, q);
  gv = T(0.5) * (1 - z * z);
  return T(0.5) * (v + z * z);
}

// o = H_out x for one sample (h = k/2 pairs, p the head's q and z, s the sample weight): the
// Hessian's, or with gn the Fisher's.
template <class T>
TK_HD void gauss_curvature_times(std::int64_t k, const T* p, const T* x, T s, bool gn, T* o) {
  const std::int64_t h = k / 2;
  const T c = s / T(h);
  for (std::int64_t j = 0; j < h; ++j) {
    const T q = p[j], z = p[h + j], xm = x[j], xv = x[h + j];
    if (gn) {
      o[j] = c * q * q * xm;
      o[h + j] = T(0.5) * c * xv;
    } else {
      const T zq = mul0(z, q);
      o[j] = c * (q * q * xm + zq * xv);
      o[h + j] = c * (zq * xm + T(0.5) * z * z * xv);
    }
  }
}

// ---------------------------------------------------------------- H_out, any head
// Entry (i, j) of H_out: mse 2s/k I; ce s (diag p - p p^T) (p the softmax); elementwise s/k diag(p)
// (p the l'' of the outputs); gaussian the pairs' 2 x 2 blocks above (the Hessian's, or with gn the
// Fisher's).  p is not read for mse (may be null).
template <class T>
TK_HD T out_curvature(Loss loss, std::int64_t k, const T* p, std::int64_t i, std::int64_t j, T s, bool gn = false) {
  if (loss == Loss::mse) return i == j ? mse_curvature(k, s) : T(0);
  if (loss == Loss::ce) return ce_curvature(k, p, i, j, s);
  if (loss == Loss::gaussian) {
    const std::int64_t h = k / 2, pi = i % h;
    if (pi != j % h) return T(0);  // different pairs
    const T c = s / T(h), q = p[pi], z = p[h + pi];
    if (i < h && j < h) return c * q * q;
    if (i >= h && j >= h) return gn ? T(0.5) * c : T(0.5) * c * z * z;
    return gn ? T(0) : c * mul0(z, q);
  }
  return i == j ? s / T(k) * p[i] : T(0);
}

// Row r of a square root R of H_out, R^T diag(root_sign) R = H_out: mse sqrt(2s/k) e_r; ce
// sqrt(s p_r) (e_r - p), as (I - 1 p^T)^T diag(p) (I - 1 p^T) = diag(p) - p p^T; elementwise
// sqrt(s/k p_r) e_r.  gaussian, pair j of h, c = s/h: with gn (the Fisher) the rows sqrt(c) q e_mu
// and sqrt(c/2) e_v; without (the Hessian, indefinite) the rows sqrt(c) (q e_mu + z e_v) and
// sqrt(c/2) |z| e_v, the second with sign -1: [[q^2, qz], [qz, z^2]] - [[0, 0], [0, z^2/2]].
// Every other head's rows, and the Fisher's, have sign +1 and do not depend on gn.
template <class T>
TK_HD T curvature_root(Loss loss, std::int64_t k, const T* p, std::int64_t r, std::int64_t j, T s, bool gn = true) {
  using std::fabs;
  using std::sqrt;
  if (loss == Loss::mse) return j == r ? sqrt(mse_curvature(k, s)) : T(0);
  if (loss == Loss::gaussian) {
    const std::int64_t h = k / 2, pr = r % h;
    if (pr != j % h) return T(0);
    const T c = s / T(h), q = p[pr], z = p[h + pr];
    if (r < h) return j < h ? sqrt(c) * q : (gn ? T(0) : sqrt(c) * z);
    return j < h ? T(0) : (gn ? sqrt(T(0.5) * c) : sqrt(T(0.5) * c) * fabs(z));
  }
  if (loss != Loss::ce) return j == r ? sqrt(s / T(k) * p[r]) : T(0);
  const T w = sqrt(s * p[r]);
  return (j == r ? w : T(0)) - w * p[j];
}

// The sign of curvature_root's row r: -1 only for gaussian's second rows of the Hessian.
TK_HD constexpr int root_sign(Loss loss, std::int64_t k, std::int64_t r, bool gn) {
  return loss == Loss::gaussian && !gn && r >= k / 2 ? -1 : 1;
}

}  // namespace tk
