// Hidden activations with their first and second derivatives, fused in one pass.
//
//   identity  z                    1                      0
//   relu      max(z, 0)            [z > 0]                0
//   tanh      t = tanh z           1 - t^2                -2 t (1 - t^2)
//   sigmoid   s = 1/(1+e^-z)       s (1 - s)              s (1 - s)(1 - 2s)
//   softplus  log(1 + e^z)         s                      s (1 - s)
//   gelu      z/2 (1 + tanh u),  u = c (z + 0.044715 z^3),  c = sqrt(2/pi)   (tanh form)
//   sin       sin z                cos z                  -sin z
// Every exponential goes through tanh x and h = (1 - tanh x)/2 = 1/(e^2x + 1), x >= 0
// (vmath.hpp), so that no tail loses digits: 1 - t^2 = 4 h (1 - h); with x = |z|/2,
// sigmoid's small tail is h itself (the other 1 - h), s (1 - s) = h (1 - h), 1 - 2s =
// -sign(z) tanh x, e^-|z| = h/(1 - h) and softplus = max(z, 0) + log1p(e^-|z|) =
// max(z, 0) + 2 atanh(h/(2 - h)); gelu's 1 + tanh u is 2 (1 - h) or 2 h by the sign of u.
// The loops are branch-free so that they vectorise; sin keeps libm.
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
        double s;
        const double t = v_tanh((double)z[i], s);
        a[i] = (T)t;
        d1[i] = (T)s;
        if (d2) d2[i] = (T)(-2 * t * s);
      }
      break;
    case Act::sigmoid:
    case Act::softplus:
      for (idx i = 0; i < n; ++i) {
        const double v = (double)z[i];
        double h;
        const double t = v_tanh_pos(0.5 * std::fabs(v), h);
        const double s = v >= 0 ? 1.0 - h : h, ds = h - h * h;
        if (f == Act::sigmoid) {
          a[i] = (T)s;
          d1[i] = (T)ds;
          if (d2) d2[i] = (T)(-ds * std::copysign(t, v));
        } else {
          a[i] = (T)((v > 0 ? v : 0.0) + v_2atanh(h / (2.0 - h)));
          d1[i] = (T)s;
          if (d2) d2[i] = (T)ds;
        }
      }
      break;
    case Act::gelu: {
      const double c = 0.7978845608028654, k3 = 0.044715;
      for (idx i = 0; i < n; ++i) {
        const double v = (double)z[i], u = c * (v + k3 * v * v * v), du = c * (1 + 3 * k3 * v * v);
        double h;
        const double t = std::copysign(v_tanh_pos(std::fabs(u), h), u);
        h = std::fabs(u) > 350.0 ? 0.0 : h;  // 1e-304 there, times du^2 ~ z^4: not negligible
        const double s = 4.0 * (h - h * h), onep = 2.0 * (u >= 0 ? 1.0 - h : h);  // 1 - t^2, 1 + t
        a[i] = (T)(0.5 * v * onep);
        d1[i] = (T)(0.5 * onep + 0.5 * v * s * du);
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
