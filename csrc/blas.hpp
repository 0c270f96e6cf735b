// Row-major matrix products on top of the Fortran BLAS that scipy ships.
//
// The function pointers come from scipy.linalg.cython_blas at import (bindings.cpp),
// so the module links against no BLAS of its own and uses the optimized OpenBLAS
// that scipy installs from PyPI.  Products too small for a BLAS call to pay off run
// as plain loops.
//
// Threads: ONE pool, OpenMP's.  A large product is split into row (or column) slices, one per
// kernel thread, each a single-threaded product.  Two pools spinning on the same cores starve
// each other (bench/RESULTS.md, "Threads and fork").  Where the CPU has AVX-512 the kernels'
// own GEMM (gemm_avx512.hpp) runs every product and the BLAS is never called, so its thread
// count is never touched.  Elsewhere the products go to the BLAS, which must then run on one
// thread: OpenBLAS's openblas_set_num_threads_local is NOT thread-local in the pthreads
// builds that scipy ships (it sets the global count as well: checked), and a multi-threaded
// OpenBLAS called inside a parallel region starts its own threads there.  So while a kernel
// call runs, the BLAS is held to one thread for the whole process (SerialBlas:
// reference-counted over concurrent calls, changed only from a calling thread outside
// parallel regions, restored by the last call out); a product that finds it not held runs as
// plain loops instead.  That hold is visible to other users of scipy's OpenBLAS in the
// process (scipy.linalg in another thread); numpy's matmul uses numpy's own OpenBLAS and is
// never affected (docs/threading.md).
#pragma once
#include "common.hpp"

namespace tk {

using dgemm_t = void(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                     const int*, const double*, const int*, const double*, double*, const int*);
using sgemm_t = void(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                     const int*, const float*, const int*, const float*, float*, const int*);

using dsyrk_t = void(const char*, const char*, const int*, const int*, const double*, const double*, const int*,
                     const double*, double*, const int*);
using ssyrk_t = void(const char*, const char*, const int*, const int*, const float*, const float*, const int*,
                     const float*, float*, const int*);

void set_blas(void* dgemm, void* sgemm, void* dsyrk, void* ssyrk);
bool have_blas();

// While any is alive, BLAS runs single-threaded: a no-op where the kernels do not call the
// BLAS (kernels_call_blas) or the BLAS has no such setting.  Construct outside parallel
// regions only.
class SerialBlas {
 public:
  SerialBlas();
  ~SerialBlas();
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  bool held_;
};
bool blas_threads_controllable();
// Whether the kernels' products may go to the BLAS: there is one and the AVX-512 GEMM is not
// in use (no AVX-512, or switched off by set_gemm_avx512(false)).
bool kernels_call_blas();
// Tests: false makes the kernels use the BLAS as on a CPU without AVX-512.  Returns the previous
// setting.
bool set_gemm_avx512(bool on);

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major.
// op(A) is M x K (A is K x M when ta), op(B) is K x N (B is N x K when tb).
template <class T>
void gemm(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
          idx ldc);

// The lower triangle of C (D x D, row stride ldc) = beta C + R^T R, R (K x D, row stride ldr):
// single-threaded, for kernels that accumulate per thread (K-FAC's factors, the Gram route's
// GGN).  Entries above the diagonal are either left as they were or set to their value (that of
// the full product), never anything else.
template <class T>
void syrk_lower(idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc);

// Test-only (the _syrk_lower binding): which = 0 syrk_lower, 1 the AVX-512 kernel directly
// (false if unavailable), 2 the column panels of products, 3 the BLAS's syrk (false if none).
template <class T>
bool syrk_test(int which, idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc);

}  // namespace tk
