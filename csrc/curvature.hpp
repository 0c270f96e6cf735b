// Exact Hessian and GGN from their Kronecker structure (docs/curvature.md §5-7): full matrices,
// per-layer blocks, and the per-sample factors that the diagonals share.
#pragma once
#include <atomic>

#include "common.hpp"
#include "factors.hpp"
#include "forward_backward.hpp"

namespace tk {

// The factors (factors.hpp) with host scratch.
template <class T>
struct Factors : FactorBuffers<vec<T>> {
  vec<T> y, yt;  // scratch
};

// Rows 0..c of the chunk tape ct (workspace.hpp: chunk_tape) from samples [c0, c0 + c): the
// forward pass, the loss head and, for the Hessian (gn false), the backward pass.  The full
// matrices, blocks and diagonals take the batch a chunk of samples at a time this way, so that
// no tape of N rows is held.
template <class T>
void curvature_rows(const Net& net, const T* theta, const T* X, Targets<T> tg, bool mean, bool gn, Tape<T>& ct, idx c0,
                    idx c);

// The k rows of a square root of H_out (formulas.hpp, curvature_root) for c samples, (c, k, k):
// p the samples' head values (tape p; null for mse), w their weights (null for none) times s.
template <class T>
void root_rows(const Net& net, idx c, const T* p, const T* w, T s, bool gn, T* R);

// U[l] (c, k, d[l+1]) for samples [n0, n0+c): the rows of a square root of H_out backpropagated
// to z_l, so that the GGN's per-sample Q_l = U_l^T U_l.
template <class T>
void gn_rows(const Net& net, const T* theta, const Tape<T>& tape, bool mean, idx n0, idx c, std::vector<vec<T>>& U,
             bool gn = true);

template <class T>
void chunk_factors(const Net& net, const T* theta, const Tape<T>& tape, bool mean, bool gn, Need need, idx n0, idx c,
                   Factors<T>& f);

// Samples per chunk of the full matrices and blocks (need: blocks or full): at most
// max_chunk_rows(), and as many as fit per-chunk buffers of max(64 MiB in float64, `room`)
// values.  Each chunk reads and adds to the accumulators (about as many values as the result)
// once, with as many multiply-adds per value as it has samples: the full matrices and blocks
// pass half their result's size as room (their memory check counts twice the result), since
// short chunks multiply that accumulator traffic.
idx chunk_size(const Net& net, idx N, Need need, idx room = 0);

// Whether the full GGN (gn) or Hessian takes the lanes path of tiny networks (curvature.cpp).
bool full_lanes_apply(const Net& net, bool gn);

// The loss (returned), grad (P) and G (P, P), the GGN's data term, in one sweep of the lanes
// path (where full_lanes_apply(net, true)).
template <class T>
double loss_grad_ggn_lanes(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad, T* G,
                           Workspace<T>& ws);

// The most samples in a chunk of the full matrices, blocks and diagonals: 512 (the GEMM's depth
// block), or fewer where tests set it (_core._set_curvature_chunk) to see many chunks.
constexpr idx kMaxChunkRows = 512;
inline std::atomic<idx>& max_chunk_rows() {
  static std::atomic<idx> rows{kMaxChunkRows};
  return rows;
}

// out (P, P): the data term of H (gn = false) or G (gn = true).
template <class T>
void curvature_full(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws);

// outs[l] (P_l, P_l): the diagonal blocks.
template <class T>
void curvature_blocks(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn,
                      const std::vector<T*>& outs, Workspace<T>& ws);

}  // namespace tk
