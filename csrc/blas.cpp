// See blas.hpp.  The column-major BLAS computes C^T = op(B)^T op(A)^T, which is the
// row-major C = op(A) op(B) we want, with the operands swapped.
#include "blas.hpp"

#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <mutex>

namespace tk {

static dgemm_t* g_dgemm = nullptr;
static sgemm_t* g_sgemm = nullptr;
using set_local_t = int(int);
static set_local_t* g_set_local = nullptr;  // OpenBLAS >= 0.3.27: openblas_set_num_threads_local

void set_blas(void* dgemm, void* sgemm) {
  g_dgemm = reinterpret_cast<dgemm_t*>(dgemm);
  g_sgemm = reinterpret_cast<sgemm_t*>(sgemm);
  // The library that holds dgemm: look for OpenBLAS's per-thread thread-count setter there.
  Dl_info info;
  if (dgemm && dladdr(dgemm, &info) && info.dli_fname) {
    if (void* h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {
      g_set_local = reinterpret_cast<set_local_t*>(dlsym(h, "openblas_set_num_threads_local"));
      dlclose(h);  // still loaded by scipy; NOLOAD only took a reference
    }
  }
}

bool have_blas() {
  return g_dgemm && g_sgemm;
}
bool blas_threads_controllable() {
  return g_set_local != nullptr;
}

// Process-wide: the first kernel call in flight holds BLAS to one thread, the last one out
// restores what was there.
static std::mutex g_serial_mu;
static int g_serial_depth = 0;
static int g_serial_saved = -1;

SerialBlas::SerialBlas() {
  if (!g_set_local) return;
  std::lock_guard<std::mutex> lock(g_serial_mu);
  if (g_serial_depth++ == 0) g_serial_saved = g_set_local(1);
}
SerialBlas::~SerialBlas() {
  if (!g_set_local) return;
  std::lock_guard<std::mutex> lock(g_serial_mu);
  if (--g_serial_depth == 0 && g_serial_saved > 0) g_set_local(g_serial_saved);
}

// Below this many multiply-adds a plain loop beats the cost of a BLAS call.
constexpr idx kBlasMin = 4096;

template <class T>
static void gemm_loops(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* __restrict A, idx lda,
                       const T* __restrict B, idx ldb, T beta, T* __restrict C, idx ldc) {
  // Narrow outputs (e.g. a network's single output unit): dot products in a register.
  // Wide outputs: row updates c += a * b, vectorised over the output row.
  const bool dot_form = tb || N < 8;
  for (idx i = 0; i < M; ++i) {
    T* __restrict c = C + i * ldc;
    if (dot_form) {
      for (idx j = 0; j < N; ++j) {
        T s = 0;
        for (idx p = 0; p < K; ++p)
          s += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
        c[j] = (beta == T(0) ? T(0) : beta * c[j]) + alpha * s;
      }
      continue;
    }
    if (beta == T(0))
      for (idx j = 0; j < N; ++j) c[j] = T(0);
    else if (beta != T(1))
      for (idx j = 0; j < N; ++j) c[j] *= beta;
    for (idx p = 0; p < K; ++p) {
      const T a = alpha * (ta ? A[p * lda + i] : A[i * lda + p]);
      const T* __restrict b = B + p * ldb;
      for (idx j = 0; j < N; ++j) c[j] += a * b[j];
    }
  }
}

template <class T>
static void gemm_serial(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
                        T beta, T* C, idx ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    gemm_loops<T>(ta, tb, M, N, 0, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (M * N * K < kBlasMin || !have_blas() || M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX ||
      ldb > INT_MAX || ldc > INT_MAX) {
    gemm_loops<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  const int m = (int)N, n = (int)M, kk = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  if constexpr (sizeof(T) == 8)
    g_dgemm(&opb, &opa, &m, &n, &kk, &alpha, B, &lb, A, &la, &beta, C, &lc);
  else
    g_sgemm(&opb, &opa, &m, &n, &kk, &alpha, B, &lb, A, &la, &beta, C, &lc);
}

// Above this many multiply-adds a product is split across the OpenMP threads.
// (2^20 multiply-adds: ~20 us on one core; below that a team's wake-up, and far worse a
// busy second core, costs more than the split gains.)
constexpr idx kGemmParallelMin = idx(1) << 20;

template <class T>
void gemm(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
          idx ldc) {
  if (M <= 0 || N <= 0) return;
  const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  const idx align = 16;  // slice edges on multiples of 16 rows/columns
  if (nt <= 1 || M * N * std::max<idx>(K, 1) < kGemmParallelMin || std::max(M, N) < 2 * align) {
    gemm_serial<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool by_rows = M >= N;
  const idx extent = by_rows ? M : N;
  const idx per = ((extent + nt - 1) / nt + align - 1) / align * align;
#pragma omp parallel num_threads(nt)
  {
    const idx lo = std::min(extent, per * omp_get_thread_num()), hi = std::min(extent, lo + per);
    if (hi > lo) {
      if (by_rows)
        gemm_serial<T>(ta, tb, hi - lo, N, K, alpha, ta ? A + lo : A + lo * lda, lda, B, ldb, beta, C + lo * ldc, ldc);
      else
        gemm_serial<T>(ta, tb, M, hi - lo, K, alpha, A, lda, tb ? B + lo * ldb : B + lo, ldb, beta, C + lo, ldc);
    }
  }
}

template void gemm<float>(bool, bool, idx, idx, idx, float, const float*, idx, const float*, idx, float, float*, idx);
template void gemm<double>(bool, bool, idx, idx, idx, double, const double*, idx, const double*, idx, double, double*,
                           idx);

}  // namespace tk
