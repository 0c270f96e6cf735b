// HOST EMULATION of the cuBLAS entry points csrc/cuda/blas.cpp resolves: column-major GEMM
// exactly as the BLAS/cuBLAS documentation defines it, with cuBLAS's argument checks
// (CUBLAS_STATUS_INVALID_VALUE for bad sizes or leading dimensions) and beta == 0 never
// reading C.  Built as a shared library and passed to taylorkern._cuda.init() by path.
#include <cstdio>

extern "C" {
typedef int cublasStatus_t;
typedef int cublasOperation_t;
typedef int cublasMath_t;
struct cublasContext {
  void* stream;
  int mode;
};
typedef cublasContext* cublasHandle_t;
typedef void* cudaStream_t;

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  *h = new cublasContext{nullptr, 0};
  return 0;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete h;
  return 0;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  h->stream = s;
  return 0;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  h->mode = m;
  return 0;
}
cublasStatus_t cublasGetVersion_v2(cublasHandle_t, int* v) {
  *v = 130000;
  return 0;
}
const char* cublasGetStatusString(cublasStatus_t) { return "emulated cuBLAS status"; }
}

static int max1(long long v) { return v < 1 ? 1 : (int)v; }

template <class T>
static cublasStatus_t gemm(int ta, int tb, int m, int n, int k, const T* alpha, const T* A, int lda, const T* B,
                           int ldb, const T* beta, T* C, int ldc) {
  if (m < 0 || n < 0 || k < 0 || (ta != 0 && ta != 1) || (tb != 0 && tb != 1)) return 7;
  if (lda < max1(ta ? k : m) || ldb < max1(tb ? n : k) || ldc < max1(m)) {
    std::fprintf(stderr, "fake cuBLAS: invalid leading dimension (ta %d tb %d m %d n %d k %d lda %d ldb %d ldc %d)\n",
                 ta, tb, m, n, k, lda, ldb, ldc);
    return 7;
  }
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      T s = 0;
      for (int p = 0; p < k; ++p) {
        const T a = ta ? A[p + (long long)i * lda] : A[i + (long long)p * lda];
        const T b = tb ? B[j + (long long)p * ldb] : B[p + (long long)j * ldb];
        s += a * b;
      }
      T& c = C[i + (long long)j * ldc];
      c = *beta == T(0) ? *alpha * s : *alpha * s + *beta * c;
    }
  return 0;
}

extern "C" {
cublasStatus_t cublasDgemm_v2(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const double* alpha, const double* A, int lda, const double* B, int ldb,
                              const double* beta, double* C, int ldc) {
  return gemm<double>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t cublasSgemm_v2(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
  return gemm<float>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const double* alpha, const double* A, int lda, long long sA,
                                         const double* B, int ldb, long long sB, const double* beta, double* C,
                                         int ldc, long long sC, int batch) {
  if (batch < 0) return 7;
  for (int b = 0; b < batch; ++b) {
    const cublasStatus_t s = gemm<double>(ta, tb, m, n, k, alpha, A + b * sA, lda, B + b * sB, ldb, beta, C + b * sC,
                                          ldc);
    if (s) return s;
  }
  return 0;
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float* alpha, const float* A, int lda, long long sA,
                                         const float* B, int ldb, long long sB, const float* beta, float* C, int ldc,
                                         long long sC, int batch) {
  if (batch < 0) return 7;
  for (int b = 0; b < batch; ++b) {
    const cublasStatus_t s = gemm<float>(ta, tb, m, n, k, alpha, A + b * sA, lda, B + b * sB, ldb, beta, C + b * sC,
                                         ldc);
    if (s) return s;
  }
  return 0;
}
}
