// cuBLAS, loaded at run time, and row-major matrix products on top of it (mirrors ../blas.hpp).
//
// The module links no cuBLAS: the few entry points it uses are declared here with the C
// signatures and enum values of CUDA 13's cublas_api.h (unchanged since CUDA 11 for these
// calls), and resolved with dlopen/dlsym from the first library that loads among the
// candidates the Python layer passes (TAYLORKERN_CUBLAS, the nvidia-cublas wheel's lib
// folder, the toolkit, then the plain sonames).  Without a GPU or without cuBLAS the module
// still imports; load_cublas() then reports why.
//
// Row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T: the operands are
// swapped, as ../blas.cpp does for the Fortran BLAS.
#pragma once
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "common.cuh"

namespace tk {
namespace cuda {

// ---- the declared part of cublas_api.h (values as in the header) ----
extern "C" {
typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
  CUBLAS_STATUS_LICENSE_ERROR = 16
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
struct cublasContext;
typedef struct cublasContext* cublasHandle_t;

typedef cublasStatus_t (*cublasCreate_t)(cublasHandle_t* handle);
typedef cublasStatus_t (*cublasDestroy_t)(cublasHandle_t handle);
typedef cublasStatus_t (*cublasSetStream_t)(cublasHandle_t handle, cudaStream_t streamId);
typedef cublasStatus_t (*cublasSetMathMode_t)(cublasHandle_t handle, cublasMath_t mode);
typedef cublasStatus_t (*cublasGetVersion_t)(cublasHandle_t handle, int* version);
typedef const char* (*cublasGetStatusString_t)(cublasStatus_t status);
typedef cublasStatus_t (*cublasDgemm_t)(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                        int m, int n, int k, const double* alpha, const double* A, int lda,
                                        const double* B, int ldb, const double* beta, double* C, int ldc);
typedef cublasStatus_t (*cublasSgemm_t)(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                        int m, int n, int k, const float* alpha, const float* A, int lda,
                                        const float* B, int ldb, const float* beta, float* C, int ldc);
typedef cublasStatus_t (*cublasDgemmStridedBatched_t)(cublasHandle_t handle, cublasOperation_t transa,
                                                      cublasOperation_t transb, int m, int n, int k,
                                                      const double* alpha, const double* A, int lda,
                                                      long long int strideA, const double* B, int ldb,
                                                      long long int strideB, const double* beta, double* C, int ldc,
                                                      long long int strideC, int batchCount);
typedef cublasStatus_t (*cublasSgemmStridedBatched_t)(cublasHandle_t handle, cublasOperation_t transa,
                                                      cublasOperation_t transb, int m, int n, int k,
                                                      const float* alpha, const float* A, int lda,
                                                      long long int strideA, const float* B, int ldb,
                                                      long long int strideB, const float* beta, float* C, int ldc,
                                                      long long int strideC, int batchCount);
}

struct Cublas {
  cublasCreate_t create = nullptr;
  cublasDestroy_t destroy = nullptr;
  cublasSetStream_t set_stream = nullptr;
  cublasSetMathMode_t set_math_mode = nullptr;
  cublasGetVersion_t get_version = nullptr;
  cublasGetStatusString_t status_string = nullptr;  // optional
  cublasDgemm_t dgemm = nullptr;
  cublasSgemm_t sgemm = nullptr;
  cublasDgemmStridedBatched_t dgemm_batched = nullptr;
  cublasSgemmStridedBatched_t sgemm_batched = nullptr;
  std::string path;  // the library that loaded
};

// The loaded library (null until load_cublas succeeded).
const Cublas* cublas();

// Tries each candidate (a path or a soname) in order; on success returns "" and keeps the
// library, else a reason naming what was tried and why each failed.
std::string load_cublas(const std::vector<std::string>& candidates);

// Throws Error naming the cuBLAS call when status is not success.
void check_cublas(cublasStatus_t status, const char* call);

// A cuBLAS handle bound to one stream, plain IEEE arithmetic (no TF32 unless asked for).
class BlasHandle {
 public:
  explicit BlasHandle(cudaStream_t stream);
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  cublasHandle_t get() const { return h_; }
  void set_tf32(bool on);

 private:
  cublasHandle_t h_ = nullptr;
};

// C (M x N) = alpha * op(A) * op(B) + beta * C, all row-major on the device.
// op(A) is M x K (A is K x M when ta), op(B) is K x N (B is N x K when tb).
template <class T>
void gemm(cublasHandle_t h, bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
          T beta, T* C, idx ldc);

// The same for `batch` independent products, A_b = A + b*sA etc. (a stride of 0 shares one
// operand across the batch).
template <class T>
void gemm_batched(cublasHandle_t h, bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, idx sA,
                  const T* B, idx ldb, idx sB, T beta, T* C, idx ldc, idx sC, idx batch);

}  // namespace cuda
}  // namespace tk
