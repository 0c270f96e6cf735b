// Branch-free exp-family functions that the compiler vectorises (glibc's scalar tanh/exp
// cost 10-20 ns per call and dominated the elementwise work of a forward pass).
// In double and in float, accurate to a few ulp: tanh with 1 - tanh (from which every hidden
// activation with an exponential is built, activations.hpp), and 2 atanh for log1p.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tk {

// 2 atanh(s) for 0 <= s <= 1/3: log1p(u) = 2 atanh(u / (2 + u)), u in [0, 1].
inline float v_2atanh(float s) {  // to s^17: (1/9)^8 / 17 < 2e-9
  const float s2 = s * s;
  float p = 1.0f / 17;
  p = p * s2 + 1.0f / 15;
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  return 2.0f * (s + s * s2 * p);
}

inline double v_2atanh(double s) {
  const double s2 = s * s;
  double p = 1.0 / 35;
  p = p * s2 + 1.0 / 33;
  p = p * s2 + 1.0 / 31;
  p = p * s2 + 1.0 / 29;
  p = p * s2 + 1.0 / 27;
  p = p * s2 + 1.0 / 25;
  p = p * s2 + 1.0 / 23;
  p = p * s2 + 1.0 / 21;
  p = p * s2 + 1.0 / 19;
  p = p * s2 + 1.0 / 17;
  p = p * s2 + 1.0 / 15;
  p = p * s2 + 1.0 / 13;
  p = p * s2 + 1.0 / 11;
  p = p * s2 + 1.0 / 9;
  p = p * s2 + 1.0 / 7;
  p = p * s2 + 1.0 / 5;
  p = p * s2 + 1.0 / 3;
  return 2.0 * (s + s * s2 * p);
}

// tanh x and h = (1 - tanh x)/2 = 1/(e^2x + 1) for x >= 0, both to a few ulp (h too: 1 - t
// would lose every digit once x > ~10; tanh' = 4 h (1 - h), sigmoid's small tail h, gelu's
// 1 + t all come from h).  2x = n ln2 + r, |r| <= ln2/2, and e^r = (E + Q)/(E - Q), the
// [6/6] Pade form of e^r (E even, Q odd; error ~1.7e-13 r^13 < 2e-19), so with s = 2^n:
//   tanh x = ((s-1) E + (s+1) Q) / den,  h = (E - Q) / den,  den = (s+1) E + (s-1) Q,
// with no cancellation anywhere (n = 0 gives Q/E).  One division; a third fewer operations
// than expm1 + division.  x is clamped at 350, where 2^n and den would soon overflow: past it
// t = 1 and h stays at 1e-304, above its true value (zeroing it cost 8% more time).  NaN
// stays NaN.
inline double v_tanh_pos(double x, double& h) {
  x = x > 350.0 ? 350.0 : x;
  const double shifter = 6755399441055744.0;           // 1.5 * 2^52: adding it rounds to an integer
  const double kd = x * 2.8853900817779268 + shifter;  // 2 / ln2
  const double n = kd - shifter;
  // ln2/2 in two parts, the first with trailing zero bits so that n * it is exact
  const double r = 2.0 * ((x - n * 0x1.62e42feep-2) - n * 0x1.a39ef35793c76p-34);
  const double r2 = r * r;
  const double E = 2.0 + r2 * (5.0 / 22 + r2 * (1.0 / 396 + r2 * (1.0 / 332640)));
  const double Q = r * (1.0 + r2 * (1.0 / 33 + r2 * (1.0 / 7920)));
  std::uint64_t bits;
  std::memcpy(&bits, &kd, sizeof bits);
  bits = (bits << 52) + 0x3ff0000000000000ULL;  // 2^n
  double s;
  std::memcpy(&s, &bits, sizeof s);
  const double inv = 1.0 / ((s + 1.0) * E + (s - 1.0) * Q);
  h = (E - Q) * inv;
  return ((s - 1.0) * E + (s + 1.0) * Q) * inv;
}

// The same in float, for float networks: twice the values per vector.  The [3/3] Pade form
// (error ~9.9e-6 r^7 < 6e-9, a tenth of a float ulp), x clamped at 40 (2^n < 2^116; past it
// h stays at ~1e-35).
inline float v_tanh_pos(float x, float& h) {
  x = x > 40.0f ? 40.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float kd = x * 2.88539004f + shifter;
  const float n = kd - shifter;
  const float r = 2.0f * ((x - n * 0x1.62e4p-2f) - n * 0x1.7f7d1cp-21f);  // n * the first part is exact
  const float r2 = r * r;
  const float E = 2.0f + r2 * (1.0f / 5);
  const float Q = r * (1.0f + r2 * (1.0f / 60));
  std::uint32_t bits;
  std::memcpy(&bits, &kd, sizeof bits);
  bits = (bits << 23) + 0x3f800000u;  // 2^n
  float s;
  std::memcpy(&s, &bits, sizeof s);
  const float inv = 1.0f / ((s + 1.0f) * E + (s - 1.0f) * Q);
  h = (E - Q) * inv;
  return ((s - 1.0f) * E + (s + 1.0f) * Q) * inv;
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
