// See blas.hpp.  The column-major BLAS computes C^T = op(B)^T op(A)^T, which is the
// row-major C = op(A) op(B) we want, with the operands swapped.
#include "blas.hpp"

#include <climits>

namespace tk {

static dgemm_t* g_dgemm = nullptr;
static sgemm_t* g_sgemm = nullptr;

void set_blas(void* dgemm, void* sgemm) {
  g_dgemm = reinterpret_cast<dgemm_t*>(dgemm);
  g_sgemm = reinterpret_cast<sgemm_t*>(sgemm);
}

bool have_blas() { return g_dgemm && g_sgemm; }

// Below this many multiply-adds a plain loop beats the cost of a BLAS call.
constexpr idx kBlasMin = 4096;

template <class T>
static void gemm_loops(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda,
                       const T* B, idx ldb, T beta, T* C, idx ldc) {
  for (idx i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0))
      for (idx j = 0; j < N; ++j) c[j] = T(0);
    else if (beta != T(1))
      for (idx j = 0; j < N; ++j) c[j] *= beta;
    if (!tb) {
      for (idx p = 0; p < K; ++p) {
        const T a = alpha * (ta ? A[p * lda + i] : A[i * lda + p]);
        const T* b = B + p * ldb;
        for (idx j = 0; j < N; ++j) c[j] += a * b[j];
      }
    } else {
      for (idx j = 0; j < N; ++j) {
        const T* b = B + j * ldb;
        T s = 0;
        if (!ta)
          for (idx p = 0; p < K; ++p) s += A[i * lda + p] * b[p];
        else
          for (idx p = 0; p < K; ++p) s += A[p * lda + i] * b[p];
        c[j] += alpha * s;
      }
    }
  }
}

template <class T>
void gemm(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
          T beta, T* C, idx ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    gemm_loops<T>(ta, tb, M, N, 0, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (M * N * K < kBlasMin || !have_blas() || M > INT_MAX || N > INT_MAX || K > INT_MAX ||
      lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX) {
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

template void gemm<float>(bool, bool, idx, idx, idx, float, const float*, idx, const float*, idx,
                          float, float*, idx);
template void gemm<double>(bool, bool, idx, idx, idx, double, const double*, idx, const double*,
                           idx, double, double*, idx);

}  // namespace tk
