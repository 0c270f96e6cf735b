// Exact Hessian and GGN from their Kronecker structure, on the GPU (mirrors ../curvature.hpp;
// the math and the algorithm are written in ../curvature.cpp's header).
#pragma once
#include "common.cuh"
#include "forward_backward.cuh"

namespace tk {
namespace cuda {

enum class Need : int { diag = 0, blocks = 1, full = 2 };

// Per-sample curvature factors for samples [n0, n0 + c) (0-based layers, H_l = d[l+1]):
//   Q[l]     (c, H_l, H_l)     curvature with respect to z_l
//   Tm[l][m] (c, H_m, H_l)     M^{(l,m)} transposed, for l < m                      (full)
//   S[l][m]  (c, H_l, d[m])    B_{m-1,l}^T act'(z_{m-1}), for m >= l + 2 (Hessian term 3, full)
//   U[l]     (c, k, H_l)       GGN only: d f/d z_l^T rows times a square root of H_out
template <class T>
struct Factors {
  std::vector<DevBuf<T>> Q, U;
  std::vector<std::vector<DevBuf<T>>> Tm, S;
  DevBuf<T> y, B;  // scratch
};

template <class T>
void curvature_tape(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn,
                    Workspace<T>& ws);

template <class T>
void chunk_factors(const Net& net, const T* theta, Workspace<T>& ws, bool mean, bool gn, Need need, idx n0, idx c);

// Multiply-adds of one sample's factors (the Q_l recursion or the GGN's U_l^T U_l, about
// H_l^2 (d_l + H_l) per layer), for the checkpoints' pace (workspace.cuh).
idx factor_work(const Net& net);

// Samples per chunk so that the per-chunk buffers stay near `budget` values.
idx chunk_size(const Net& net, idx N, Need need, idx budget);

// Values of per-chunk scratch the device can spare now (a quarter of its free memory, within
// [2^22, 2^28] values).
idx chunk_budget(size_t value_bytes);
// Forces chunk_budget to `values` (tests use it to exercise several chunks); 0 restores auto.
void set_chunk_budget(idx values);

// out (P, P) on the device: the data term of H (gn = false) or G (gn = true).
template <class T>
void curvature_full(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws);

// outs[l] (P_l, P_l) on the device: the diagonal blocks.
template <class T>
void curvature_blocks(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn,
                      const std::vector<T*>& outs, Workspace<T>& ws);

}  // namespace cuda
}  // namespace tk
