// The Jacobian of the outputs with respect to the parameters.
#pragma once
#include "common.hpp"

namespace tk {
// J (N*k, P): row n*k + c is d f_c(x_n) / d theta.
template <class T>
void jacobian(const Net& net, const T* theta, const T* X, idx N, T* J, Workspace<T>& ws);
}  // namespace tk
