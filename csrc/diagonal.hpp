// diag(H) and diag(G) without forming either matrix.
#pragma once
#include "common.hpp"

namespace tk {

// One thread's scratch of curvature_diag: U_l rows, S_l (diagonal (c, H) or matrices
// (c, H, H)), products.
template <class T>
struct DiagScratch {
  std::vector<vec<T>> U, S;
  std::vector<char> full;  // whether S[l] holds matrices
  vec<T> Asq, q, y, yt, dg;
};

// out (P,): diagonal of the data term of H (gn = false) or G (gn = true).
template <class T>
void curvature_diag(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws);
}  // namespace tk
