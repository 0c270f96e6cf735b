// The Jacobian of the outputs with respect to the parameters, on the GPU (mirrors ../jacobian.hpp).
#pragma once
#include "common.cuh"

namespace tk {
namespace cuda {
// J (N*k, P) on the device: row n*k + c is d f_c(x_n) / d theta.
template <class T>
void jacobian(const Net& net, const T* theta, const T* X, idx N, T* J, Workspace<T>& ws);
}  // namespace cuda
}  // namespace tk
