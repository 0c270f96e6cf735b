// diag(H) and diag(G) without forming either matrix, on the GPU (mirrors ../diagonal.hpp).
#pragma once
#include "common.cuh"

namespace tk {
namespace cuda {
// out (P,) on the device: diagonal of the data term of H (gn = false) or G (gn = true).
template <class T>
void curvature_diag(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws);
}  // namespace cuda
}  // namespace tk
