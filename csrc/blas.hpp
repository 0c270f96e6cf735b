// Row-major matrix products on top of the Fortran BLAS that scipy ships.
//
// The function pointers come from scipy.linalg.cython_blas at import (bindings.cpp),
// so the module links against no BLAS of its own and uses the optimized OpenBLAS
// that scipy installs from PyPI.  Products too small for a BLAS call to pay off run
// as plain loops.
//
// Threads: ONE pool, OpenMP's.  A large product is split into row (or column) slices,
// one per OpenMP thread, each a single-threaded BLAS call; while kernels run, BLAS is held
// to one thread (SerialBlas) and restored afterwards.  Two pools spinning on two cores
// starve each other: measured here, a loss_and_grad went from 1.5 ms to 30 ms when
// OpenBLAS's and OpenMP's threads competed.
// OpenBLAS's openblas_set_num_threads_local is NOT thread-local in the pthreads builds
// that scipy ships (it sets the global count: checked), and changing the count while
// another thread is inside a BLAS call can crash OpenBLAS.  So it is only ever changed from
// the calling thread, outside any parallel region, once for all concurrent kernel calls
// (reference-counted), never from an OpenMP worker.
#pragma once
#include "common.hpp"

namespace tk {

using dgemm_t = void(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                     const int*, const double*, const int*, const double*, double*, const int*);
using sgemm_t = void(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                     const int*, const float*, const int*, const float*, float*, const int*);

void set_blas(void* dgemm, void* sgemm);
bool have_blas();

// While any is alive, BLAS runs single-threaded (no-op if the BLAS has no such setting).
// Construct outside parallel regions only.
class SerialBlas {
 public:
  SerialBlas();
  ~SerialBlas();
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
};
bool blas_threads_controllable();

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major.
// op(A) is M x K (A is K x M when ta), op(B) is K x N (B is N x K when tb).
template <class T>
void gemm(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
          idx ldc);

}  // namespace tk
