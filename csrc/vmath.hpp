// Branch-free exp-family functions that the compiler vectorises (glibc's scalar tanh/exp
// cost 10-20 ns per call and dominated the elementwise work of a forward pass).
// All in double precision (float callers convert), accurate to a few ulp:
//   expm1: x = n ln2 + r, |r| <= ln2/2;  expm1(x) = 2^n (e^r - 1) + (2^n - 1), with
//          e^r - 1 a degree-13 Taylor polynomial (truncation < 5e-18 relative);
//          2^n built from the bits of the rounding shifter (n in [-1021, 1023]).
//   log1p(u) for u in [0, 1]: 2 atanh(s), s = u / (2 + u) <= 1/3, odd series to s^35.
#pragma once
#include <cstdint>
#include <cstring>

namespace tk {

inline double v_expm1(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double kd = x * 1.4426950408889634 + shifter;
  const double n = kd - shifter;
  const double r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  const double q = r + r * r * p;  // e^r - 1
  std::uint64_t bits;
  std::memcpy(&bits, &kd, sizeof bits);
  bits = (bits << 52) + 0x3ff0000000000000ULL;  // 2^n
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale * q + (scale - 1.0);
}

inline double v_log1p_unit(double u) {  // u in [0, 1]
  const double s = u / (2.0 + u), s2 = s * s;
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

// tanh(x) = sign(x) em / (em + 2), em = expm1(2|x|) >= 0: no cancellation anywhere.
inline double v_tanh(double x) {
  const double ax = x < 0 ? -x : x;
  const double em = v_expm1(2.0 * ax);
  const double t = em / (em + 2.0);
  return x < 0 ? -t : t;
}

}  // namespace tk
