// Small device helpers for the bindings: input checks of device-resident data (finiteness,
// label range), the l2 terms on device results, and the start-up probe.  Each runs on the
// calling thread's default stream (cudaStreamPerThread) and synchronises it.
#pragma once
#include "common.cuh"

namespace tk {
namespace cuda {

// Launches a trivial kernel and waits for it: throws when this build's kernels cannot run
// on the current device (no compatible machine code or PTX, driver too old, ...).
void probe();

template <class T>
bool all_finite(const T* x, idx n);

// Whether every label lies in [0, k).
bool labels_in_range(const std::int64_t* y, idx n, idx k);

// p[i*(ld+1)] += v for i < n (the diagonal of a square matrix).
template <class T>
void add_diagonal(T* p, idx n, idx ld, T v);

// y += a x.
template <class T>
void axpy(idx n, T a, const T* x, T* y);

}  // namespace cuda
}  // namespace tk
