// act'' = act' (k0 + k1 act) for identity and relu (k = 0, 0), tanh (0, -2) and sigmoid
// (1, -2): the R-op then forms act''(z) Rz = (k0 + k1 a) Ra from a and Ra, so that neither
// act'' nor the hidden tangent Rz is stored.  `linear` is false for softplus, gelu and sin.
// Shared by the CPU kernels and the CUDA ones.
#pragma once
#include "formulas.hpp"

namespace tk {

struct D2Form {
  bool linear = false, zero = false;  // zero: act'' = 0
  double k0 = 0, k1 = 0;
};

inline D2Form d2_form(Act f) {
  switch (f) {
    case Act::identity:
    case Act::relu:
      return {true, true, 0, 0};
    case Act::tanh:
      return {true, false, 0, -2};
    case Act::sigmoid:
      return {true, false, 1, -2};
    default:
      return {};
  }
}

}  // namespace tk
