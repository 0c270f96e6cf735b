// Hidden activations with their first and second derivatives, on the device: formulas.hpp's
// formulas (shared with the C++ kernels), evaluated in double precision for both dtypes (float
// converts in and out) with CUDA's tanh, exp and log1p; sin keeps the working precision, as
// on the CPU.
#pragma once
#include <type_traits>

#include "../d2_form.hpp"
#include "../formulas.hpp"
#include "common.cuh"

namespace tk {
namespace cuda {

// formulas.hpp's math class for the device: h = 1/(e^2x + 1) underflows to 0 by itself.
struct DeviceMath {
  TK_HD static double tanh_pos(double x, double& h) {
    h = 1.0 / (1.0 + ::exp(2.0 * x));
    return ::tanh(x);
  }
  TK_HD static double gelu_h(double, double h) { return h; }
  TK_HD static double log_over_1mh(double h) { return -::log1p(-h); }
  TK_HD static double exp(double x) { return ::exp(x); }
  TK_HD static double sigmoid_neg(double x, double& c) {
    const double e = ::exp(-x);
    c = 1.0 / (1.0 + e);
    return e * c;
  }
};

// a = act(z), d1 = act'(z), d2 = act''(z) (d2 skipped when want_d2 is false).
template <class T>
__device__ __forceinline__ void activate1(Act f, T z, T& a, T& d1, T& d2, bool want_d2) {
  with_act(f, [&](auto tag) {
    constexpr Act F = decltype(tag)::value;
    using W = std::conditional_t<F == Act::sin, T, double>;
    W av, g1, g2;
    activation<F, DeviceMath>((W)z, av, g1, g2);
    a = (T)av;
    d1 = (T)g1;
    if (want_d2) d2 = (T)g2;
  });
}

}  // namespace cuda
}  // namespace tk
