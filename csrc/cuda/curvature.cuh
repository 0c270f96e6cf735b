// Exact Hessian and GGN from their Kronecker structure, on the GPU (mirrors ../curvature.hpp;
// the math and the algorithm are written in ../curvature.cpp's header).
#pragma once
#include "../factors.hpp"
#include "common.cuh"
#include "forward_backward.cuh"

namespace tk {
namespace cuda {

// The factors (../factors.hpp) in device buffers.
template <class T>
struct Factors : FactorBuffers<DevBuf<T>> {
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
