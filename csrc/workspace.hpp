// The reusable scratch of every kernel: one per concurrent call on a network, kept in a
// pool by the bindings, so that repeated calls (an optimizer's iterations) allocate nothing
// and touch no fresh pages.  Buffers only grow; vec<T> never zero-fills on growth.
#pragma once
#include "common.hpp"
#include "curvature.hpp"
#include "diagonal.hpp"
#include "forward_backward.hpp"

namespace tk {

template <class T>
struct Workspace {
  Tape<T> tape;                         // forward/backward quantities of all samples
  std::vector<vec<T>> Vt, Vtt;  // rop: transposed slices of V
  struct Slice {                // rop: one thread's scratch for a chunk of its slice of samples
    std::vector<vec<T>> Rz, Ra, acc, tmp;  // tangents; per-layer sums over the slice (m > 1)
    vec<T> Rg, Re, rs;
  };
  std::vector<Slice> slices;
  vec<T> lanes;                             // rop.cpp: the one-direction path for tiny networks
  std::vector<DiagScratch<T>> diag_slices;  // diagonal.cpp: one thread's scratch
  vec<T> parts;                             // per-thread partial results, threads 1.. (common.hpp)
  std::vector<vec<T>> U, A;                 // rows backpropagated per sample; augmented inputs
  vec<T> Wsq, Lf, Rf;                       // W_1 * W_1 (diagonal.cpp); Kronecker factors (curvature.cpp)
  Factors<T> f;                             // per-chunk curvature factors
  // Sums over samples of the Kronecker terms, per block (curvature.cpp): kept, because a
  // Newton-type loop asks for the same sizes every iteration and fresh pages cost ~20%.
  std::vector<vec<T>> Kd, E3a;
  std::vector<std::vector<vec<T>>> Ko, E3;
};

}  // namespace tk
