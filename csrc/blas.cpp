// See blas.hpp.  The column-major BLAS computes C^T = op(B)^T op(A)^T, which is the
// row-major C = op(A) op(B) we want, with the operands swapped.
#include "blas.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <mutex>

#include "gemm_avx512.hpp"
#include "omp_compat.hpp"
#include "simd.hpp"

namespace tk {

static dgemm_t* g_dgemm = nullptr;
static sgemm_t* g_sgemm = nullptr;
static dsyrk_t* g_dsyrk = nullptr;
static ssyrk_t* g_ssyrk = nullptr;
using set_local_t = int(int);
using get_threads_t = int();
static set_local_t* g_set_local = nullptr;      // OpenBLAS >= 0.3.27: openblas_set_num_threads_local
static get_threads_t* g_get_threads = nullptr;  // openblas_get_num_threads
static std::atomic<bool> g_avx512_off{false};   // set_gemm_avx512(false), for tests

void set_blas(void* dgemm, void* sgemm, void* dsyrk, void* ssyrk) {
  g_dgemm = reinterpret_cast<dgemm_t*>(dgemm);
  g_sgemm = reinterpret_cast<sgemm_t*>(sgemm);
  g_dsyrk = reinterpret_cast<dsyrk_t*>(dsyrk);
  g_ssyrk = reinterpret_cast<ssyrk_t*>(ssyrk);
  // The library that holds dgemm: look for OpenBLAS's thread-count functions there.
  Dl_info info;
  if (dgemm && dladdr(dgemm, &info) && info.dli_fname) {
    if (void* h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {
      g_set_local = reinterpret_cast<set_local_t*>(dlsym(h, "openblas_set_num_threads_local"));
      g_get_threads = reinterpret_cast<get_threads_t*>(dlsym(h, "openblas_get_num_threads"));
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

static bool use_avx512() {
  return have_avx512() && !g_avx512_off.load(std::memory_order_relaxed);
}
bool set_gemm_avx512(bool on) {
  return !g_avx512_off.exchange(!on);
}
bool kernels_call_blas() {
  return have_blas() && !use_avx512();
}

// Process-wide: the first kernel call in flight that may call BLAS holds it to one thread, the
// last one out restores what was there (unless someone else changed it meanwhile).
static std::mutex g_serial_mu;
static std::atomic<int> g_serial_depth{0};
static int g_serial_saved = -1;

SerialBlas::SerialBlas() : held_(g_set_local && kernels_call_blas()) {
  if (!held_) return;
  std::lock_guard<std::mutex> lock(g_serial_mu);
  if (g_serial_depth.fetch_add(1) == 0) g_serial_saved = g_set_local(1);
}
SerialBlas::~SerialBlas() {
  if (!held_) return;
  std::lock_guard<std::mutex> lock(g_serial_mu);
  if (g_serial_depth.fetch_sub(1) == 1 && g_serial_saved > 1 && (!g_get_threads || g_get_threads() == 1))
    g_set_local(g_serial_saved);
}

// Whether a product may go to the BLAS: held to one thread, or a BLAS whose count cannot be
// set (then there is no better choice).  Otherwise a multi-threaded OpenBLAS would start its
// own threads inside the kernels' (pthreads builds print a warning when called in a region).
static bool blas_is_serial() {
  return !g_set_local || g_serial_depth.load(std::memory_order_relaxed) > 0;
}

// Below this many multiply-adds a plain loop beats the cost of a BLAS call.
constexpr idx kBlasMin = 4096;

// Small products as plain loops.  The one inner kernel is a row update
//   C[i, :] = beta C[i, :] + alpha sum_p a(i, p) B[p, :]
// over contiguous rows of B, vectorised along the row in register blocks of 8; a(i, p) is
// read with strides (sai, sap), so either orientation of A costs the same.  Every case is
// brought to that form with at most one small copy (all operands here hold < kBlasMin
// values): a transposed B is copied into rows; a narrow C (fewer than 8 columns) is
// computed transposed, C^T = op(B)^T op(A)^T, so that its long side is the row.
// A register block of 64 bytes of T (simd.hpp: one AVX-512 register where the build targets
// them, a row of narrower ones otherwise), loaded and stored at any alignment (vec_load).
template <class T>
struct Simd {
  static constexpr idx W = 64 / sizeof(T);
  using type = typename Vec<T, W>::type;
};

// Sum of a register's lanes, halving (log2 W adds instead of W).
template <class T>
inline T hsum(typename Simd<T>::type v) {
  typedef T H __attribute__((vector_size(32)));
  typedef T Q __attribute__((vector_size(16)));
  H lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  lo += hi;
  Q l2, h2;
  std::memcpy(&l2, &lo, sizeof l2);
  std::memcpy(&h2, reinterpret_cast<const char*>(&lo) + sizeof l2, sizeof h2);
  l2 += h2;
  T sum = 0;
  for (idx q = 0; q < (idx)(16 / sizeof(T)); ++q) sum += l2[q];
  return sum;
}

template <class T>
static void row_updates(idx M, idx N, idx K, T alpha, const T* __restrict A, idx sai, idx sap, const T* __restrict B,
                        idx ldb, T beta, T* __restrict C, idx ldc) {
  using V = typename Simd<T>::type;
  constexpr idx W = Simd<T>::W;
  for (idx i = 0; i < M; ++i) {
    T* __restrict c = C + i * ldc;
    const T* a = A + i * sai;
    idx j0 = 0;
    for (; j0 + W <= N; j0 += W) {
      // four partial sums: one chain of dependent multiply-adds over a long K is latency-bound
      V acc = {}, acc1 = {}, acc2 = {}, acc3 = {}, b, b1, b2, b3, ci;
      idx p = 0;
      for (; p + 4 <= K; p += 4) {
        b = vec_load<V>(B + p * ldb + j0);
        b1 = vec_load<V>(B + (p + 1) * ldb + j0);
        b2 = vec_load<V>(B + (p + 2) * ldb + j0);
        b3 = vec_load<V>(B + (p + 3) * ldb + j0);
        acc += a[p * sap] * b;
        acc1 += a[(p + 1) * sap] * b1;
        acc2 += a[(p + 2) * sap] * b2;
        acc3 += a[(p + 3) * sap] * b3;
      }
      for (; p < K; ++p) {
        b = vec_load<V>(B + p * ldb + j0);
        acc += a[p * sap] * b;
      }
      acc += (acc1 + acc2) + acc3;
      if (beta == T(0)) {
        ci = alpha * acc;
      } else {
        ci = vec_load<V>(c + j0);
        ci = beta * ci + alpha * acc;
      }
      vec_store(c + j0, ci);
    }
    for (idx j = j0; j < N; ++j) {
      T acc = 0;
      for (idx p = 0; p < K; ++p) acc += a[p * sap] * B[p * ldb + j];
      c[j] = (beta == T(0) ? T(0) : beta * c[j]) + alpha * acc;
    }
  }
}

// Without a BLAS (or beyond its 32-bit sizes): the same row updates, no copies.
template <class T>
static void gemm_plain(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
                       T beta, T* C, idx ldc) {
  for (idx i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    for (idx j = 0; j < N; ++j) c[j] = beta == T(0) ? T(0) : beta * c[j];
    for (idx p = 0; p < K; ++p) {
      const T a = alpha * (ta ? A[p * lda + i] : A[i * lda + p]);
      for (idx j = 0; j < N; ++j) c[j] += a * (tb ? B[j * ldb + p] : B[p * ldb + j]);
    }
  }
}

// Outputs with fewer than kNarrow columns at any size (e.g. a regression network's single
// output unit): dot products and axpys, which a BLAS call with n = 1 runs several times slower.
constexpr idx kNarrow = 4;

template <class T>
static void gemm_narrow(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* __restrict A, idx lda,
                        const T* __restrict B, idx ldb, T beta, T* __restrict C, idx ldc) {
  auto b = [&](idx p, idx j) { return tb ? B[j * ldb + p] : B[p * ldb + j]; };
  if (ta && N == 1 && ldc == 1) {  // C^T (1 x M) = op(B)^T A: one row update along A's rows
    row_updates<T>(1, M, K, alpha, B, 0, tb ? 1 : ldb, A, lda, beta, C, M);
    return;
  }
  if (ta) {  // C[:, j] += A[p, :] b(p, j): axpys along A's rows
    for (idx i = 0; i < M; ++i)
      for (idx j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    for (idx p = 0; p < K; ++p) {
      const T* __restrict a = A + p * lda;
      for (idx j = 0; j < N; ++j) {
        const T bj = alpha * b(p, j);
        T* __restrict c = C + j;
        for (idx i = 0; i < M; ++i) c[i * ldc] += a[i] * bj;
      }
    }
    return;
  }
  using V = typename Simd<T>::type;  // dot products along A's rows, in SIMD partial sums
  constexpr idx W = Simd<T>::W;
  idx i0 = 0;
  if (N == 1 && (tb || ldb == 1)) {  // y = A b: four rows at a time share b's loads
    const T* __restrict bc = B;
    for (; i0 + 4 <= M; i0 += 4) {
      const T* __restrict a0 = A + i0 * lda;
      V s0 = {}, s1 = {}, s2 = {}, s3 = {}, x, y;
      idx p = 0;
      for (; p + W <= K; p += W) {
        y = vec_load<V>(bc + p);
        x = vec_load<V>(a0 + p);
        s0 += x * y;
        x = vec_load<V>(a0 + lda + p);
        s1 += x * y;
        x = vec_load<V>(a0 + 2 * lda + p);
        s2 += x * y;
        x = vec_load<V>(a0 + 3 * lda + p);
        s3 += x * y;
      }
      T r[4] = {hsum<T>(s0), hsum<T>(s1), hsum<T>(s2), hsum<T>(s3)};
      for (idx q = 0; q < 4; ++q) {
        for (idx pp = p; pp < K; ++pp) r[q] += a0[q * lda + pp] * bc[pp];
        T* cq = C + (i0 + q) * ldc;
        *cq = (beta == T(0) ? T(0) : beta * *cq) + alpha * r[q];
      }
    }
  }
  for (idx i = i0; i < M; ++i) {
    const T* __restrict a = A + i * lda;
    for (idx j = 0; j < N; ++j) {
      V acc = {}, x, y;
      idx p = 0;
      if (tb || ldb == 1) {
        const T* __restrict bc = tb ? B + j * ldb : B + j;
        for (; p + W <= K; p += W) {
          x = vec_load<V>(a + p);
          y = vec_load<V>(bc + p);
          acc += x * y;
        }
      }
      T sum = 0;
      for (; p < K; ++p) sum += a[p] * b(p, j);
      for (idx q = 0; q < W; ++q) sum += acc[q];
      C[i * ldc + j] = (beta == T(0) ? T(0) : beta * C[i * ldc + j]) + alpha * sum;
    }
  }
}

// Products with M N K < kBlasMin.
template <class T>
static void gemm_loops(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
                       T beta, T* C, idx ldc) {
  T buf[kBlasMin], cbuf[kBlasMin];  // K N, K M and N M are all < kBlasMin here
  if (N >= 8 || N >= M) {
    if (tb) {  // rows of op(B) = columns of B
      for (idx p = 0; p < K; ++p)
        for (idx j = 0; j < N; ++j) buf[p * N + j] = B[j * ldb + p];
      B = buf, ldb = N;
    }
    row_updates<T>(M, N, K, alpha, A, ta ? 1 : lda, ta ? lda : 1, B, ldb, beta, C, ldc);
    return;
  }
  // Narrow C: Ct (N x M) = op(B)^T op(A)^T; rows of op(A)^T are the columns of op(A).
  if (!ta) {
    for (idx p = 0; p < K; ++p)
      for (idx i = 0; i < M; ++i) buf[p * M + i] = A[i * lda + p];
    A = buf, lda = M;
  }
  row_updates<T>(N, M, K, alpha, B, tb ? ldb : 1, tb ? 1 : ldb, A, lda, T(0), cbuf, M);
  for (idx i = 0; i < M; ++i)
    for (idx j = 0; j < N; ++j) C[i * ldc + j] = (beta == T(0) ? T(0) : beta * C[i * ldc + j]) + cbuf[j * M + i];
}

// The Fortran BLAS (column-major: C^T = op(B)^T op(A)^T); false where it cannot take the call.
template <class T>
static bool gemm_blas(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta,
                      T* C, idx ldc) {
  if (K <= 0 || !have_blas() || M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
      ldc > INT_MAX)
    return false;
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  const int m = (int)N, n = (int)M, kk = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  if constexpr (sizeof(T) == 8)
    g_dgemm(&opb, &opa, &m, &n, &kk, &alpha, B, &lb, A, &la, &beta, C, &lc);
  else
    g_sgemm(&opb, &opa, &m, &n, &kk, &alpha, B, &lb, A, &la, &beta, C, &lc);
  return true;
}

template <class T>
static void gemm_serial(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
                        T beta, T* C, idx ldc) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && N < kNarrow) {
    gemm_narrow<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (K == 1 && (!tb || ldb == 1)) {  // an outer product (op(B) one contiguous row): no packing
    row_updates<T>(M, N, 1, alpha, A, ta ? 1 : lda, 1, B, 0, beta, C, ldc);
    return;
  }
  if (K > 0 && M * N * K < kBlasMin) {
    gemm_loops<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Above the loops' range: the blocked AVX-512 kernel (gemm_avx512.cpp) where the CPU has it,
  // else the BLAS (held to one thread by the call's SerialBlas; plain loops if it is not).  End
  // to end the kernel beat OpenBLAS's own AVX-512 kernel on the passes over the samples
  // (gradients, products, diagonals) by more than the margin that keeping a kernel of our own
  // requires, and taking only the weight-gradient shapes lost part of that; see
  // bench/RESULTS.md, "The blocked AVX-512 GEMM against OpenBLAS".
  if (K > 0 && use_avx512() && gemm_avx512<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
  if (!blas_is_serial() || !gemm_blas<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
    gemm_plain<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

bool have_avx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the zmm state (XCR0).
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  return ok;
#else
  return false;
#endif
}

// Above this many multiply-adds a product is split across the OpenMP threads.
// (Below that, waking a team costs more than the split gains, far more on a busy machine.)
constexpr idx kGemmParallelMin = idx(1) << 20;

template <class T>
void gemm(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
          idx ldc) {
  if (M <= 0 || N <= 0) return;
  const int nt = kernel_threads();
  const idx align = 16;  // slice edges on multiples of 16 rows/columns
  if (nt <= 1 || M * N * std::max<idx>(K, 1) < kGemmParallelMin || std::max(M, N) < 2 * align) {
    gemm_serial<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool by_rows = M >= N;
  const idx extent = by_rows ? M : N;
  const idx per = ((extent + nt - 1) / nt + align - 1) / align * align;
  omp_team(nt, [&] {
    const idx lo = std::min(extent, per * omp_get_thread_num()), hi = std::min(extent, lo + per);
    if (hi > lo) {
      if (by_rows)
        gemm_serial<T>(ta, tb, hi - lo, N, K, alpha, ta ? A + lo : A + lo * lda, lda, B, ldb, beta, C + lo * ldc, ldc);
      else
        gemm_serial<T>(ta, tb, M, hi - lo, K, alpha, A, lda, tb ? B + lo * ldb : B + lo, ldb, beta, C + lo, ldc);
    }
  });
}

// Row-major C's lower triangle is the column-major BLAS's upper one, and R (K x D row-major) is
// column-major R^T: C = R^T R is syrk('U', 'N') of it.  false where the BLAS cannot take the call.
template <class T>
static bool syrk_blas(idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc) {
  if (K <= 0 || !g_dsyrk || !g_ssyrk || D > INT_MAX || K > INT_MAX || ldr > INT_MAX || ldc > INT_MAX) return false;
  const char uplo = 'U', trans = 'N';
  const int n = (int)D, k = (int)K, lr = (int)ldr, lc = (int)ldc;
  const T one = 1;
  if constexpr (sizeof(T) == 8)
    g_dsyrk(&uplo, &trans, &n, &k, &one, R, &lr, &beta, C, &lc);
  else
    g_ssyrk(&uplo, &trans, &n, &k, &one, R, &lr, &beta, C, &lc);
  return true;
}

// Without the AVX-512 kernel or a BLAS held to one thread: column panels of products, each
// starting at its diagonal, so that little more than the lower triangle is computed.
constexpr idx kSyrkPanel = 64;

template <class T>
static void syrk_panels(idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc) {
  for (idx b0 = 0; b0 < D; b0 += kSyrkPanel) {
    const idx w = std::min(kSyrkPanel, D - b0);
    gemm_serial<T>(true, false, D - b0, w, K, T(1), R + b0, ldr, R + b0, ldr, beta, C + b0 * ldc + b0, ldc);
  }
}

// The AVX-512 kernel where the CPU has it (it ran at or above OpenBLAS's own AVX-512 syrk,
// bench/KFAC.md), else the BLAS's syrk (held to one thread), else the panels.
template <class T>
void syrk_lower(idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc) {
  if (use_avx512() && syrk_lower_avx512<T>(D, K, R, ldr, beta, C, ldc)) return;
  if (D * D * K >= kBlasMin && blas_is_serial() && syrk_blas<T>(D, K, R, ldr, beta, C, ldc)) return;
  syrk_panels<T>(D, K, R, ldr, beta, C, ldc);
}

template <class T>
bool syrk_test(int which, idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc) {
  switch (which) {
    case 0:
      syrk_lower<T>(D, K, R, ldr, beta, C, ldc);
      return true;
    case 1:
      return have_avx512() && syrk_lower_avx512<T>(D, K, R, ldr, beta, C, ldc);
    case 2:
      syrk_panels<T>(D, K, R, ldr, beta, C, ldc);
      return true;
    case 3:
      return D > 0 && syrk_blas<T>(D, K, R, ldr, beta, C, ldc);
  }
  return false;
}
template void syrk_lower<float>(idx, idx, const float*, idx, float, float*, idx);
template void syrk_lower<double>(idx, idx, const double*, idx, double, double*, idx);
template bool syrk_test<float>(int, idx, idx, const float*, idx, float, float*, idx);
template bool syrk_test<double>(int, idx, idx, const double*, idx, double, double*, idx);

template <class T>
bool gemm_test(int which, bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb,
               T beta, T* C, idx ldc) {
  switch (which) {
    case 0:
      gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return true;
    case 1:
      return have_avx512() && gemm_avx512<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    case 2:
      return M > 0 && N > 0 && gemm_blas<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    case 3:
      gemm_serial<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return true;
  }
  return false;
}
template bool gemm_test<float>(int, bool, bool, idx, idx, idx, float, const float*, idx, const float*, idx, float,
                               float*, idx);
template bool gemm_test<double>(int, bool, bool, idx, idx, idx, double, const double*, idx, const double*, idx, double,
                                double*, idx);

template void gemm<float>(bool, bool, idx, idx, idx, float, const float*, idx, const float*, idx, float, float*, idx);
template void gemm<double>(bool, bool, idx, idx, idx, double, const double*, idx, const double*, idx, double, double*,
                           idx);

}  // namespace tk
