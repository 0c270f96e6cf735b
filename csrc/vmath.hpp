// Branch-free exp-family functions that the compiler vectorises (glibc's scalar tanh/exp
// do not vectorise and dominated the elementwise work of a forward pass).
// In double and in float, accurate to a few ulp: tanh with 1 - tanh (from which every hidden
// activation with an exponential is built, activations.hpp), 2 atanh for log1p, e^x (a
// softmax's, the poisson and gaussian heads'), the logistic (bce's) and log1p (the ce head's).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tk {

// 2 atanh(s) for 0 <= s <= 1/3: log1p(u) = 2 atanh(u / (2 + u)), u in [0, 1].  The odd series
// to s^35 in double, s^17 in float (the first term left out, (1/9)^k / (2k + 1), is below an ulp).
template <class T>
inline T v_2atanh(T s) {
  constexpr int top = sizeof(T) == 4 ? 17 : 35;
  const T s2 = s * s;
  T p = T(1) / top;
  for (int k = top - 2; k >= 3; k -= 2) p = p * s2 + T(1) / k;
  return 2 * (s + s * s2 * p);
}

// tanh x and h = (1 - tanh x)/2 = 1/(e^2x + 1) for x >= 0, both to a few ulp (h too: 1 - t
// would lose every digit once x > ~10; tanh' = 4 h (1 - h), sigmoid's small tail h, gelu's
// 1 + t all come from h).  2x = n ln2 + r, |r| <= ln2/2, and e^r = (E + Q)/(E - Q), a Pade
// form of e^r (E even, Q odd), so with s = 2^n:
//   tanh x = ((s-1) E + (s+1) Q) / den,  h = (E - Q) / den,  den = (s+1) E + (s-1) Q,
// with no cancellation anywhere (n = 0 gives Q/E).  One division; a third fewer operations
// than expm1 + division.  x is clamped where 2^n and den would soon overflow: past it t = 1
// and h stays at its value there, above its true one (zeroing it costs a select per value).  NaN
// stays NaN.  The forms and constants per type:
template <class T>
struct TanhForm;
template <>
struct TanhForm<double> {  // [6/6]: error ~1.7e-13 r^13 < 2e-19; h >= 1e-304 at the clamp
  using Bits = std::uint64_t;
  static constexpr double clamp = 350, shifter = 6755399441055744.0, two_over_ln2 = 2.8853900817779268;
  static constexpr double ln2_hi = 0x1.62e42feep-2, ln2_lo = 0x1.a39ef35793c76p-34;  // ln2/2
  static constexpr int mantissa = 52;
  static constexpr Bits one = 0x3ff0000000000000ULL;
  static double E(double r2) { return 2.0 + r2 * (5.0 / 22 + r2 * (1.0 / 396 + r2 * (1.0 / 332640))); }
  static double Q(double r, double r2) { return r * (1.0 + r2 * (1.0 / 33 + r2 * (1.0 / 7920))); }
};
template <>
struct TanhForm<float> {  // [3/3]: error ~9.9e-6 r^7 < 6e-9, a tenth of a float ulp; h ~1e-35 at the clamp
  using Bits = std::uint32_t;
  static constexpr float clamp = 40, shifter = 12582912.0f, two_over_ln2 = 2.88539004f;
  static constexpr float ln2_hi = 0x1.62e4p-2f, ln2_lo = 0x1.7f7d1cp-21f;
  static constexpr int mantissa = 23;
  static constexpr Bits one = 0x3f800000u;
  static float E(float r2) { return 2.0f + r2 * (1.0f / 5); }
  static float Q(float r, float r2) { return r * (1.0f + r2 * (1.0f / 60)); }
};

// 2^n for an integer n within the normal exponents, from its bits.
template <class T>
inline T v_pow2(T n) {
  using F = TanhForm<T>;
  const T kd = n + F::shifter;  // adding 1.5 * 2^mantissa puts n in the low bits
  typename F::Bits bits;
  std::memcpy(&bits, &kd, sizeof bits);
  bits = (bits << F::mantissa) + F::one;
  T s;
  std::memcpy(&s, &bits, sizeof s);
  return s;
}

template <class T>
inline T v_tanh_pos(T x, T& h) {
  using F = TanhForm<T>;
  x = x > F::clamp ? F::clamp : x;
  const T kd = x * F::two_over_ln2 + F::shifter;  // adding 1.5 * 2^mantissa rounds to an integer
  const T n = kd - F::shifter;
  // ln2/2 in two parts, the first with trailing zero bits so that n * it is exact
  const T r = 2 * ((x - n * F::ln2_hi) - n * F::ln2_lo);
  const T r2 = r * r;
  const T E = F::E(r2), Q = F::Q(r, r2);
  const T s = v_pow2(n);
  const T inv = 1 / ((s + 1) * E + (s - 1) * Q);
  h = (E - Q) * inv;
  return ((s - 1) * E + (s + 1) * Q) * inv;
}

// e^x = (E + Q)/(E - Q) s1 s2: the reduction and Pade form of v_tanh_pos for 2 (x/2),
// x = n ln2 + r, e^r = (E + Q)/(E - Q), and 2^n as two halves s1 s2, each a normal number, so
// that a result below the smallest normal rounds once, as std::exp's do.  x is clamped where
// e^x rounds to 0 or overflows (to inf); NaN stays NaN.
template <class T>
struct ExpParts {
  T E, Q, s1, s2;
};

template <class T>
inline ExpParts<T> v_exp_parts(T x) {
  using F = TanhForm<T>;
  constexpr T lo = sizeof(T) == 4 ? T(-104) : T(-746), hi = sizeof(T) == 4 ? T(89) : T(710);
  x = x < lo ? lo : x > hi ? hi : x;
  const T y = x * T(0.5);
  const T kd = y * F::two_over_ln2 + F::shifter;
  const T n = kd - F::shifter;
  const T r = 2 * ((y - n * F::ln2_hi) - n * F::ln2_lo);
  const T r2 = r * r;
  const T n1 = (n * T(0.5) + F::shifter) - F::shifter;  // |n1|, |n - n1| <= 539 (float: 75)
  return {F::E(r2), F::Q(r, r2), v_pow2(n1), v_pow2(n - n1)};
}

// e^x to a few ulp, from the last subnormal to the overflow, with one division.
template <class T>
inline T v_exp(T x) {
  const ExpParts<T> e = v_exp_parts(x);
  return (e.E + e.Q) / (e.E - e.Q) * e.s1 * e.s2;
}

// q = 1/(1 + e^x) for x >= 0 (the logistic of -x, the smaller of sigma and 1 - sigma), and
// c = 1 - q, both to a few ulp with one division and nothing cancelling: with e^-x = a / b,
// q = a / (a + b) and c = b / (a + b).  q keeps its e^-x size down to the last subnormal.
template <class T>
inline T v_sigmoid_neg(T x, T& c) {
  const ExpParts<T> e = v_exp_parts(-x);
  const T a = (e.E + e.Q) * e.s1 * e.s2, b = e.E - e.Q;  // a <= 2.4 (x >= 0)
  const T inv = 1 / (a + b);
  c = b * inv;
  return a * inv;
}

// log1p(u) for u >= 0 (a softmax's log of 1 + the other classes' e^(f_j - max f)), to a few
// ulp: 2 atanh(t / (2 + t)) + e ln2 with t = u, e = 0 where u <= 1, else 1 + u = 2^e (1 + t),
// t in [0, 1) exact (rounding 1 + u moves the result by at most half an ulp of 1 + u's log,
// which is at least ln 2 there).  NaN stays NaN.
template <class T>
inline T v_log1p(T u) {
  using F = TanhForm<T>;
  using Bits = typename F::Bits;
  const T w = 1 + u;
  Bits bits;
  std::memcpy(&bits, &w, sizeof bits);
  const Bits mbits = (bits & ((Bits(1) << F::mantissa) - 1)) | F::one;  // w's mantissa in [1, 2)
  T m;
  std::memcpy(&m, &mbits, sizeof m);
  const bool small = u <= 1;
  const T t = small ? u : m - 1;
  const T e2 = small ? T(0) : T(2) * T(std::int64_t(bits >> F::mantissa) - std::int64_t(F::one >> F::mantissa));
  const T log_m = v_2atanh(t / (2 + t));
  return e2 * F::ln2_hi + (e2 * F::ln2_lo + log_m) + (u - u);  // ln2 = 2 (ln2_hi + ln2_lo)
}

// tanh z, and d1 = 1 - tanh^2 z; -0 stays -0.
template <class T>
inline T v_tanh(T z, T& d1) {
  T h;
  const T t = v_tanh_pos(std::fabs(z), h);
  d1 = T(4) * (h - h * h);
  return std::copysign(t, z);
}

}  // namespace tk
