// A hand-written AVX-512 GEMM for the products the kernels make (blas.cpp dispatches to it).
//
// Why: on the products of the passes over the samples (forward, backward, weight gradients)
// it beat even OpenBLAS's own AVX-512 kernel end to end (the measurement is cited in blas.cpp,
// gemm_serial), besides freeing the kernels from whatever older kernel the environment may
// force OpenBLAS to (OPENBLAS_CORETYPE).
//
// This is the textbook GotoBLAS/BLIS design, written from the description in the papers
// (Goto & van de Geijn 2008; Van Zee & van de Geijn 2015): op(B) packed into column panels
// NR wide, op(A) into row panels MR high (or read in place when that is cheaper), blocked by
// KC (one B panel stays in L1), MC (the A block stays in L2) and NC, and an MR x NR
// register-blocked microkernel of broadcast FMAs.
//
// gemm_avx512.cpp is compiled with AVX-512 flags regardless of the build's -march, so it
// must only be entered after have_avx512() said yes (blas.cpp does that); elsewhere than
// x86-64 it compiles to nothing and have_avx512() is false.
#pragma once
#include <cstdint>

namespace tk {

using idx = std::int64_t;  // as in common.hpp (not included: see gemm_avx512.cpp)

// The running CPU (and OS) support AVX-512 F/DQ/BW/VL.  Cached; defined in blas.cpp, which is
// compiled without AVX-512 flags, so the check itself runs anywhere.
bool have_avx512();

// C (M x N) = alpha op(A) op(B) + beta C, row-major, single-threaded; exactly BLAS semantics
// (beta == 0: C is not read; alpha == 0 or K == 0: A and B are not read).  Safe to call from
// several threads at once on disjoint C (packing buffers are per thread).  Returns false,
// having touched nothing, only if its packing buffers could not be allocated (or AVX-512 code
// was not compiled in): the caller then computes the product another way.
template <class T>
bool gemm_avx512(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
                 idx ldc);

// The lower triangle of C (D x D) = R^T R + beta C, R (K x D) row-major, single-threaded (a
// symmetric rank-K update, BLAS's syrk): only the tiles that reach the diagonal are computed, and
// the entries above the diagonal inside them get their values too.  false as gemm_avx512.
template <class T>
bool syrk_lower_avx512(idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc);

// Test-only entry point (the _gemm binding): which = 0 the normal dispatch (tk::gemm),
// 1 the AVX-512 kernel directly (any size; false if unavailable), 2 the BLAS (one call,
// false if none), 3 gemm_serial (the single-threaded dispatch).  Defined in blas.cpp.
template <class T>
bool gemm_test(int which, bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
               T beta, T* C, idx ldc);

}  // namespace tk
