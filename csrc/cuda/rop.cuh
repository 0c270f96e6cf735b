// Hessian- and GGN-matrix products with m directions at once, on the GPU (mirrors ../rop.hpp).
#pragma once
#include "common.cuh"

namespace tk {
namespace cuda {
// out (P, m) on the device = H V (gauss_newton = false) or G V (true), data term only; V (P, m).
template <class T>
void rop(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* V, idx m, T* out,
         bool gauss_newton, Workspace<T>& ws);
}  // namespace cuda
}  // namespace tk
