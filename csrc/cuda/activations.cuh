// Hidden activations with their first and second derivatives, on the device.  The same
// formulas as ../activations.hpp (see its table), evaluated in double precision for both
// dtypes (float converts in and out, as on the CPU), with CUDA's tanh/expm1/log1p in place
// of the vectorised ones of ../vmath.hpp; sin keeps the working precision, as on the CPU.
#pragma once
#include "common.cuh"

namespace tk {
namespace cuda {

// a = act(z), d1 = act'(z), d2 = act''(z) (d2 skipped when want_d2 is false).
template <class T>
__device__ __forceinline__ void activate1(Act f, T zin, T& a, T& d1, T& d2, bool want_d2) {
  switch (f) {
    case Act::identity:
      a = zin;
      d1 = T(1);
      d2 = T(0);
      break;
    case Act::relu:
      a = zin > T(0) ? zin : T(0);
      d1 = zin > T(0) ? T(1) : T(0);
      d2 = T(0);
      break;
    case Act::tanh: {
      const double t = ::tanh((double)zin), s = 1.0 - t * t;
      a = (T)t;
      d1 = (T)s;
      if (want_d2) d2 = (T)(-2.0 * t * s);
      break;
    }
    case Act::sigmoid:
    case Act::softplus: {
      const double v = (double)zin, av = v < 0 ? -v : v;
      const double em = ::expm1(-av), den = 1.0 / (2.0 + em), e = 1.0 + em;
      const double s = v >= 0 ? den : e * den, ds = e * den * den;
      if (f == Act::sigmoid) {
        a = (T)s;
        d1 = (T)ds;
        if (want_d2) d2 = (T)(ds * (v >= 0 ? em : -em) * den);
      } else {
        a = (T)((v > 0 ? v : 0.0) + ::log1p(e));
        d1 = (T)s;
        if (want_d2) d2 = (T)ds;
      }
      break;
    }
    case Act::gelu: {
      const double c = 0.7978845608028654, k3 = 0.044715;
      const double v = (double)zin, u = c * (v + k3 * v * v * v), du = c * (1 + 3 * k3 * v * v);
      const double t = ::tanh(u), s = 1 - t * t;
      a = (T)(0.5 * v * (1 + t));
      d1 = (T)(0.5 * (1 + t) + 0.5 * v * s * du);
      if (want_d2) d2 = (T)(s * du - v * t * s * du * du + 0.5 * v * s * (c * 6 * k3 * v));
      break;
    }
    case Act::sin: {
      const T sv = sin(zin);
      a = sv;
      d1 = cos(zin);
      d2 = -sv;
      break;
    }
  }
}

}  // namespace cuda
}  // namespace tk
