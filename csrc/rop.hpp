// Hessian- and GGN-matrix products with m directions at once (forward-over-reverse).
#pragma once
#include "common.hpp"

namespace tk {
// out (P, m) = H V (gauss_newton = false) or G V (true), data term only; V (P, m).
template <class T>
void rop(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* V, idx m, T* out,
         bool gauss_newton, Workspace<T>& ws);
}  // namespace tk
