// Hidden activations with their first and second derivatives, on the device.  The same
// formulas as ../activations.hpp (see its table), evaluated in double precision for both
// dtypes (float converts in and out; the CPU has float versions), with CUDA's tanh/exp/log1p in place
// of the vectorised ones of ../vmath.hpp; sin keeps the working precision, as on the CPU.
// h(x) = (1 - tanh x)/2 = 1/(e^2x + 1), x >= 0, carries every tail (underflowing to 0 exactly).
#pragma once
#include "../d2_form.hpp"
#include "common.cuh"

namespace tk {
namespace cuda {

__device__ __forceinline__ double tanh_h(double x) {
  return 1.0 / (1.0 + ::exp(2.0 * x));
}

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
      const double t = ::tanh((double)zin), h = tanh_h(::fabs((double)zin)), s = 4.0 * (h - h * h);
      a = (T)t;
      d1 = (T)s;
      if (want_d2) d2 = (T)(-2.0 * t * s);
      break;
    }
    case Act::sigmoid:
    case Act::softplus: {
      const double v = (double)zin, x = 0.5 * ::fabs(v), h = tanh_h(x);
      const double s = v >= 0 ? 1.0 - h : h, ds = h - h * h;
      if (f == Act::sigmoid) {
        a = (T)s;
        d1 = (T)ds;
        if (want_d2) d2 = (T)(-ds * ::copysign(::tanh(x), v));
      } else {
        a = (T)((v > 0 ? v : 0.0) + ::log1p(::exp(-2.0 * x)));
        d1 = (T)s;
        if (want_d2) d2 = (T)ds;
      }
      break;
    }
    case Act::gelu: {
      const double c = 0.7978845608028654, k3 = 0.044715;
      const double v = (double)zin, u = c * (v + k3 * v * v * v), du = c * (1 + 3 * k3 * v * v);
      const double t = ::tanh(u), h = tanh_h(::fabs(u)), s = 4.0 * (h - h * h);
      const double onep = 2.0 * (u >= 0 ? 1.0 - h : h);  // 1 + t
      a = (T)(0.5 * v * onep);
      d1 = (T)(0.5 * onep + 0.5 * v * s * du);
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
