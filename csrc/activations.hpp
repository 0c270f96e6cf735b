// Hidden activations with their first and second derivatives, fused in one pass.
//
//   identity  z                    1                      0
//   relu      max(z, 0)            [z > 0]                0
//   tanh      t = tanh z           1 - t^2                -2 t (1 - t^2)
//   sigmoid   s = 1/(1+e^-z)       s (1 - s)              s (1 - s)(1 - 2s)
//   softplus  log(1 + e^z)         s                      s (1 - s)
// sigmoid and softplus go through em = expm1(-|z|), so that neither tail loses digits:
//   s = 1/(2 + em) (z >= 0) or (1 + em)/(2 + em) (z < 0);  s(1-s) = (1+em)/(2+em)^2;
//   1 - 2s = -sign(z) (-em)/(2 + em);  softplus = max(z, 0) + log1p(1 + em).
// The loops are branch-free so that they vectorise (vmath.hpp); sin keeps libm.
//   gelu      z/2 (1 + tanh u),  u = c (z + 0.044715 z^3),  c = sqrt(2/pi)   (tanh form)
//   sin       sin z                cos z                  -sin z
#pragma once
#include <cmath>

#include "common.hpp"
#include "vmath.hpp"

namespace tk {

// For n values of z: a = act(z); d1 = act'(z); d2 = act''(z) (d2 may be null).
// a may alias z.
template <class T>
inline void activate(Act f, idx n, const T* z, T* a, T* d1, T* d2) {
  switch (f) {
    case Act::identity:
      for (idx i = 0; i < n; ++i) {
        a[i] = z[i];
        d1[i] = 1;
      }
      if (d2)
        for (idx i = 0; i < n; ++i) d2[i] = 0;
      break;
    case Act::relu:
      for (idx i = 0; i < n; ++i) {
        const T v = z[i];
        a[i] = v > 0 ? v : T(0);
        d1[i] = v > 0 ? T(1) : T(0);
      }
      if (d2)
        for (idx i = 0; i < n; ++i) d2[i] = 0;
      break;
    case Act::tanh:
      for (idx i = 0; i < n; ++i) {
        const double t = v_tanh((double)z[i]), s = 1 - t * t;
        a[i] = (T)t;
        d1[i] = (T)s;
        if (d2) d2[i] = (T)(-2 * t * s);
      }
      break;
    case Act::sigmoid:
    case Act::softplus:
      for (idx i = 0; i < n; ++i) {
        const double v = (double)z[i], av = v < 0 ? -v : v;
        const double em = v_expm1(-av), den = 1.0 / (2.0 + em), e = 1.0 + em;
        const double s = v >= 0 ? den : e * den, ds = e * den * den;
        if (f == Act::sigmoid) {
          a[i] = (T)s;
          d1[i] = (T)ds;
          if (d2) d2[i] = (T)(ds * (v >= 0 ? em : -em) * den);
        } else {
          a[i] = (T)((v > 0 ? v : 0.0) + v_log1p_unit(e));
          d1[i] = (T)s;
          if (d2) d2[i] = (T)ds;
        }
      }
      break;
    case Act::gelu: {
      const double c = 0.7978845608028654, k3 = 0.044715;
      for (idx i = 0; i < n; ++i) {
        const double v = (double)z[i], u = c * (v + k3 * v * v * v), du = c * (1 + 3 * k3 * v * v);
        const double t = v_tanh(u), s = 1 - t * t;
        a[i] = (T)(0.5 * v * (1 + t));
        d1[i] = (T)(0.5 * (1 + t) + 0.5 * v * s * du);
        if (d2) d2[i] = (T)(s * du - v * t * s * du * du + 0.5 * v * s * (c * 6 * k3 * v));
      }
      break;
    }
    case Act::sin:
      for (idx i = 0; i < n; ++i) {
        const T v = z[i], sv = std::sin(v);  // read z first: a may alias z
        a[i] = sv;
        d1[i] = std::cos(v);
        if (d2) d2[i] = -sv;
      }
      break;
  }
}

}  // namespace tk
