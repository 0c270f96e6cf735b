// Hessian- and GGN-matrix products with m directions at once (forward-over-reverse).
#pragma once
#include "common.hpp"

namespace tk {
// out (P, m) = H V (gauss_newton = false) or G V (true), data term only; V (P, m).
template <class T>
void rop(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* V, idx m, T* out,
         bool gauss_newton, Workspace<T>& ws);

// Values of memory rop() holds for N samples and m directions of `bytes`-wide values, the
// result included (MLP.hvp / ggn_vp refuse what cannot fit).
double rop_memory_values(const Net& net, idx N, idx m, idx bytes);
}  // namespace tk
