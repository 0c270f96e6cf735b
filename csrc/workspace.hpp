// The reusable scratch of every kernel: one per concurrent call on a network, kept in a
// pool by the bindings, so that repeated calls (an optimizer's iterations) allocate nothing
// and touch no fresh pages.  Buffers only grow; vec<T> never zero-fills on growth.
#pragma once
#include "common.hpp"
#include "curvature.hpp"
#include "diagonal.hpp"
#include "forward_backward.hpp"
#include "gram.hpp"

namespace tk {

template <class T>
struct Workspace {
  Tape<T> tape;                            // all samples' (jacobian.cpp); else only rowloss
  std::vector<Tape<T>> chunk_tapes;        // per thread, a chunk of its samples (below)
  std::vector<vec<T>> Vt, Vtt;             // rop: transposed slices of V
  struct Slice {                           // rop: one thread's scratch for a chunk of its slice of samples
    std::vector<vec<T>> Rz, Ra, acc, tmp;  // tangents; per-layer sums over the slice (m > 1)
    vec<T> Rg, Re, rs;
  };
  std::vector<Slice> slices;
  std::vector<vec<T>> lanes;                // the lanes paths' scratch, per thread (rop.cpp, curvature.cpp)
  std::vector<DiagScratch<T>> diag_slices;  // diagonal.cpp: one thread's scratch
  vec<T> parts;                             // per-thread partial results, threads 1.. (common.hpp)
  std::vector<vec<T>> U, A;                 // rows backpropagated per sample; augmented inputs
  vec<T> Wsq, Lf, Rf;                       // W_1 * W_1 (diagonal.cpp); Kronecker factors (curvature.cpp)
  Factors<T> f;                             // per-chunk curvature factors
  std::vector<GramScratch<T>> gram;         // gram.cpp: one thread's scratch
  // Sums over samples of the Kronecker terms, per block (curvature.cpp): kept, because a
  // Newton-type loop asks for the same sizes every iteration and fresh pages cost page faults.
  std::vector<vec<T>> Kd, E3a;
  std::vector<std::vector<vec<T>>> Ko, E3;
};

// Calls that take each thread's slice of samples through the network a chunk of rows at a
// time (common.hpp, chunk_rows) keep those rows on a tape of the thread's own, the size of one
// chunk, so that they stay in cache from the forward pass to the call's own work and no tape
// of N rows is written; the full matrices and blocks (curvature.cpp) use tape 0 for their chunks
// of samples the same way.  chunk_tape sizes it (ws.chunk_tapes has a tape per thread) and keeps
// N as the batch's size, which sets a sample's weight 1/N; rows_at points it at the batch's
// samples from c0 on (its row r is sample c0 + r) and gives their targets.
template <class T>
Tape<T>& chunk_tape(Workspace<T>& ws, int tid, const Net& net, idx N, idx rows, bool second) {
  Tape<T>& ct = ws.chunk_tapes[tid];
  prepare_tape<T>(net, nullptr, rows, ct, second);
  ct.N = N;
  return ct;
}

template <class T>
Targets<T> rows_at(Tape<T>& ct, const Net& net, const T* X, Targets<T> tg, idx c0) {
  ct.X = X + c0 * net.d[0];
  return {tg.y ? tg.y + c0 * net.ky() : nullptr, tg.labels ? tg.labels + c0 : nullptr, tg.w ? tg.w + c0 : nullptr};
}

// Values per sample of a chunk tape: X's row, a, act' (and act'' with `second`), g, e, F, p.
inline idx tape_values(const Net& net, bool second) {
  idx units = 0;
  for (idx l = 1; l <= net.L(); ++l) units += net.d[l];
  return net.d[0] + (second ? 5 : 4) * units + 2 * net.k();
}

}  // namespace tk
