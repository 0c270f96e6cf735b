// See blas.hpp.  Also home of the error path shared by every file (fail()).
#include "blas.hpp"

#include <dlfcn.h>

#include <climits>
#include <mutex>
#include <cstdio>
#include <type_traits>

namespace tk {
namespace cuda {

void fail(const char* call, cudaError_t err, const char* file, int line) {
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  (void)cudaGetLastError();  // reported here: not again by the next, unrelated launch check
  throw Error(std::string("CUDA error in ") + call + " (" + base + ":" + std::to_string(line) +
              "): " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// The device's stream-ordered pool, set (once) to keep what is freed into it: results handed
// to Python are allocated and freed there, so that an optimizer's calls reuse the same blocks
// instead of mapping and unmapping pages per call (cudaMalloc/cudaFree; the latter also
// synchronises the device).
static cudaMemPool_t result_pool() {
  static cudaMemPool_t pool = [] {
    int dev = 0;
    cudaMemPool_t p = nullptr;
    TK_CUDA(cudaGetDevice(&dev));
    TK_CUDA(cudaDeviceGetDefaultMemPool(&p, dev));
    unsigned long long keep = ~0ULL;
    TK_CUDA(cudaMemPoolSetAttribute(p, cudaMemPoolAttrReleaseThreshold, &keep));
    return p;
  }();
  return pool;
}

// Runs alloc(&p); when the device refuses, gives the pool's idle blocks back and tries once
// more; a second refusal is OutOfDeviceMemory naming the size and the free memory.
template <class Alloc>
static void* allocate(size_t bytes, const char* call, Alloc&& alloc) {
  void* p = nullptr;
  cudaError_t err = alloc(&p);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    (void)cudaDeviceSynchronize();
    (void)cudaMemPoolTrimTo(result_pool(), 0);
    err = alloc(&p);
  }
  if (err == cudaSuccess) return p;
  (void)cudaGetLastError();
  if (err != cudaErrorMemoryAllocation) fail(call, err, __FILE__, __LINE__);
  size_t free_b = 0, total_b = 0;
  (void)cudaMemGetInfo(&free_b, &total_b);
  (void)cudaGetLastError();
  auto gib = [](size_t b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1 << 30));
    return std::string(buf);
  };
  throw OutOfDeviceMemory("GPU out of memory: this call needs a further " + gib(bytes) + " block but the GPU has " +
                          gib(free_b) + " free of " + gib(total_b) +
                          "; use products (hvp/ggn_vp), blocks or diagonals, fewer samples per call, or a CPU "
                          "backend");
}

void* device_malloc(size_t bytes) {
  bytes = std::max<size_t>(bytes, 1);
  return allocate(bytes, "cudaMalloc", [&](void** p) { return cudaMalloc(p, bytes); });
}

void* result_malloc(size_t bytes) {
  bytes = std::max<size_t>(bytes, 1);
  cudaMemPool_t pool = result_pool();
  // on the legacy stream: ordered before the work of every blocking stream (the lanes') after it
  return allocate(bytes, "cudaMallocFromPoolAsync",
                  [&](void** p) { return cudaMallocFromPoolAsync(p, bytes, pool, cudaStream_t(0)); });
}

void result_free(void* p) noexcept {
  if (p) (void)cudaFreeAsync(p, cudaStream_t(0));  // after the work of every blocking stream
}

static Cublas g_cublas;
static bool g_loaded = false;
static std::mutex g_load_mu;

const Cublas* cublas() {
  return g_loaded ? &g_cublas : nullptr;
}

std::string load_cublas(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_load_mu);
  if (g_loaded) return "";
  std::string why;
  for (const std::string& path : candidates) {
    // cuBLAS needs cuBLASLt from its own folder: load it first when it sits beside.
    const auto slash = path.rfind('/');
    if (slash != std::string::npos) {
      const std::string lt = path.substr(0, slash + 1) + "libcublasLt.so" +
                             (path.find(".so.") != std::string::npos ? path.substr(path.find(".so.") + 3) : "");
      dlopen(lt.c_str(), RTLD_NOW | RTLD_GLOBAL);  // best effort: libcublas' own RUNPATH may suffice
    }
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      why += "\n  " + path + ": " + (e ? e : "dlopen failed");
      continue;
    }
    Cublas c;
    bool ok = true;
    auto sym = [&](auto& fn, const char* name, bool required) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn && required) {
        ok = false;
        why += "\n  " + path + ": no symbol " + name;
      }
    };
    sym(c.create, "cublasCreate_v2", true);
    sym(c.destroy, "cublasDestroy_v2", true);
    sym(c.set_stream, "cublasSetStream_v2", true);
    sym(c.set_math_mode, "cublasSetMathMode", true);
    sym(c.get_version, "cublasGetVersion_v2", true);
    sym(c.status_string, "cublasGetStatusString", false);
    sym(c.dgemm, "cublasDgemm_v2", true);
    sym(c.sgemm, "cublasSgemm_v2", true);
    sym(c.dgemm_batched, "cublasDgemmStridedBatched", true);
    sym(c.sgemm_batched, "cublasSgemmStridedBatched", true);
    if (!ok) {
      dlclose(h);
      continue;
    }
    c.path = path;
    g_cublas = c;
    g_loaded = true;
    return "";
  }
  return "cuBLAS could not be loaded (set TAYLORKERN_CUBLAS to libcublas.so.13, or pip install nvidia-cublas); "
         "tried:" +
         (why.empty() ? std::string(" nothing") : why);
}

static const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cuBLAS status";
}

void check_cublas(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  std::string msg = std::string("cuBLAS error in ") + call + ": " + status_name(status) + " (" +
                    std::to_string((int)status) + ")";
  if (g_loaded && g_cublas.status_string) msg += ": " + std::string(g_cublas.status_string(status));
  throw Error(msg);
}

static const Cublas& lib() {
  if (!g_loaded) throw Error("cuBLAS is not loaded (taylorkern._cuda.init() did not succeed)");
  return g_cublas;
}

BlasHandle::BlasHandle(cudaStream_t stream) {
  const Cublas& c = lib();
  check_cublas(c.create(&h_), "cublasCreate_v2");
  try {
    check_cublas(c.set_stream(h_, stream), "cublasSetStream_v2");
    check_cublas(c.set_math_mode(h_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  } catch (...) {
    c.destroy(h_);
    throw;
  }
}

BlasHandle::~BlasHandle() {
  if (h_ && g_loaded) g_cublas.destroy(h_);
}

void BlasHandle::set_tf32(bool on) {
  check_cublas(lib().set_math_mode(h_, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

static int to_int(idx v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw Error(std::string("matrix product too large for cuBLAS's 32-bit sizes (") + what + " = " +
                std::to_string(v) + ")");
  return (int)v;
}

static cublasOperation_t op(bool t) {
  return t ? CUBLAS_OP_T : CUBLAS_OP_N;
}

template <class T>
void gemm(cublasHandle_t h, bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
          T beta, T* C, idx ldc) {
  if (M <= 0 || N <= 0) return;
  const int m = to_int(N, "N"), n = to_int(M, "M"), k = to_int(K, "K");
  const int la = to_int(std::max<idx>(lda, 1), "lda"), lb = to_int(std::max<idx>(ldb, 1), "ldb"),
            lc = to_int(std::max<idx>(ldc, 1), "ldc");
  const Cublas& c = lib();
  if constexpr (sizeof(T) == 8)
    check_cublas(c.dgemm(h, op(tb), op(ta), m, n, k, &alpha, B, lb, A, la, &beta, C, lc), "cublasDgemm_v2");
  else
    check_cublas(c.sgemm(h, op(tb), op(ta), m, n, k, &alpha, B, lb, A, la, &beta, C, lc), "cublasSgemm_v2");
}

template <class T>
void gemm_batched(cublasHandle_t h, bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, idx sA,
                  const T* B, idx ldb, idx sB, T beta, T* C, idx ldc, idx sC, idx batch) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  const int m = to_int(N, "N"), n = to_int(M, "M"), k = to_int(K, "K");
  const int la = to_int(std::max<idx>(lda, 1), "lda"), lb = to_int(std::max<idx>(ldb, 1), "ldb"),
            lc = to_int(std::max<idx>(ldc, 1), "ldc");
  const Cublas& c = lib();
  // Batches of at most 65535 products: the grid limit some cuBLAS kernels put on the batch.
  constexpr idx kMaxBatch = 65535;
  for (idx b0 = 0; b0 < batch; b0 += kMaxBatch) {
    const int nb = (int)std::min(kMaxBatch, batch - b0);
    const T* a = A + b0 * sA;
    const T* bb = B + b0 * sB;
    T* cc = C + b0 * sC;
    if constexpr (sizeof(T) == 8)
      check_cublas(c.dgemm_batched(h, op(tb), op(ta), m, n, k, &alpha, bb, lb, sB, a, la, sA, &beta, cc, lc, sC, nb),
                   "cublasDgemmStridedBatched");
    else
      check_cublas(c.sgemm_batched(h, op(tb), op(ta), m, n, k, &alpha, bb, lb, sB, a, la, sA, &beta, cc, lc, sC, nb),
                   "cublasSgemmStridedBatched");
  }
}

#define TK_INST(T)                                                                                               \
  template void gemm<T>(cublasHandle_t, bool, bool, idx, idx, idx, T, const T*, idx, const T*, idx, T, T*, idx); \
  template void gemm_batched<T>(cublasHandle_t, bool, bool, idx, idx, idx, T, const T*, idx, idx, const T*, idx,  \
                                idx, T, T*, idx, idx, idx);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace cuda
}  // namespace tk
