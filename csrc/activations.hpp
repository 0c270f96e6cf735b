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
#include "d2_form.hpp"
#include "vmath.hpp"

namespace tk {

// body(i, v) for every value v = z[i] (+ b[i % cols] when b is given) of a rows x cols
// block: the forward pass adds the bias here instead of in a pass of its own.
template <class T, class Body>
inline void over_values(idx rows, idx cols, const T* z, const T* b, Body&& body) {
  if (b) {
    for (idx r = 0; r < rows; ++r)
      for (idx j = 0; j < cols; ++j) body(r * cols + j, z[r * cols + j] + b[j]);
  } else {
    for (idx i = 0; i < rows * cols; ++i) body(i, z[i]);
  }
}

// For the rows x cols values v of z (+ the row b, which may be null): a = act(v),
// d1 = act'(v), d2 = act''(v) (d2 may be null).  a may alias z.
template <class T>
inline void activate(Act f, idx rows, idx cols, const T* z, const T* b, T* a, T* d1, T* d2) {
  switch (f) {
    case Act::identity:
      over_values(rows, cols, z, b, [&](idx i, T v) {
        a[i] = v;
        d1[i] = 1;
        if (d2) d2[i] = 0;
      });
      break;
    case Act::relu:
      over_values(rows, cols, z, b, [&](idx i, T v) {
        a[i] = v > 0 ? v : T(0);
        d1[i] = v > 0 ? T(1) : T(0);
        if (d2) d2[i] = 0;
      });
      break;
    case Act::tanh:
      over_values(rows, cols, z, b, [&](idx i, T v) {
        T s;
        const T t = v_tanh(v, s);
        a[i] = t;
        d1[i] = s;
        if (d2) d2[i] = -2 * t * s;
      });
      break;
    case Act::sigmoid:
    case Act::softplus:
      over_values(rows, cols, z, b, [&](idx i, T v) {
        T h;
        const T t = v_tanh_pos(T(0.5) * std::fabs(v), h);
        const T s = v >= 0 ? 1 - h : h, ds = h - h * h;
        if (f == Act::sigmoid) {
          a[i] = s;
          d1[i] = ds;
          if (d2) d2[i] = -ds * std::copysign(t, v);
        } else {
          a[i] = (v > 0 ? v : T(0)) + v_2atanh(h / (2 - h));
          d1[i] = s;
          if (d2) d2[i] = ds;
        }
      });
      break;
    case Act::gelu: {
      const T c = T(0.7978845608028654), k3 = T(0.044715);
      over_values(rows, cols, z, b, [&](idx i, T v) {
        const T u = c * (v + k3 * v * v * v), du = c * (1 + 3 * k3 * v * v);
        T h;
        const T t = std::copysign(v_tanh_pos(std::fabs(u), h), u);
        h = std::fabs(u) > TanhForm<T>::clamp ? T(0) : h;  // h at the clamp times du^2 ~ z^4: not negligible
        const T s = 4 * (h - h * h), onep = 2 * (u >= 0 ? 1 - h : h);  // 1 - t^2, 1 + t
        a[i] = T(0.5) * v * onep;
        d1[i] = T(0.5) * onep + T(0.5) * v * s * du;
        if (d2) d2[i] = s * du - v * t * s * du * du + T(0.5) * v * s * (c * 6 * k3 * v);
      });
      break;
    }
    case Act::sin:
      over_values(rows, cols, z, b, [&](idx i, T v) {
        const T sv = std::sin(v);
        a[i] = sv;
        d1[i] = std::cos(v);
        if (d2) d2[i] = -sv;
      });
      break;
  }
}

}  // namespace tk
