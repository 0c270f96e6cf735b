// Hidden activations with their first and second derivatives, fused in one pass over a block
// of values.  The formulas are formulas.hpp's (shared with the CUDA kernels), evaluated with
// vmath.hpp's branch-free exp family, which the compiler vectorises; sin keeps libm.
#pragma once
#include <cmath>

#include "common.hpp"
#include "d2_form.hpp"
#include "formulas.hpp"
#include "vmath.hpp"

namespace tk {

// formulas.hpp's math class for the C++ kernels.
struct VMath {
  template <class T>
  static T tanh_pos(T x, T& h) {
    return v_tanh_pos(x, h);
  }
  // v_tanh_pos clamps x and keeps h at its value there, above the true one.
  template <class T>
  static T gelu_h(T x, T h) {
    return x > TanhForm<T>::clamp ? T(0) : h;
  }
  // -log(1 - h) = log1p(u) with u = h/(1 - h), as 2 atanh(u/(2 + u)) = 2 atanh(h/(2 - h)).
  template <class T>
  static T log_over_1mh(T h) {
    return v_2atanh(h / (2 - h));
  }
  template <class T>
  static T exp(T x) {
    return v_exp(x);
  }
  template <class T>
  static T sigmoid_neg(T x, T& c) {
    return v_sigmoid_neg(x, c);
  }
};

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
  with_act(f, [&](auto tag) {
    over_values(rows, cols, z, b, [&](idx i, T v) {
      T av, g1, g2;
      activation<decltype(tag)::value, VMath>(v, av, g1, g2);
      a[i] = av;
      d1[i] = g1;
      if (d2) d2[i] = g2;
    });
  });
}

}  // namespace tk
