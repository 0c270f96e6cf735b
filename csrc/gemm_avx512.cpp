// See gemm_avx512.hpp.  Row-major throughout: C (M x N) = alpha op(A) op(B) + beta C, with
// op(A) M x K and op(B) K x N.  Vectors run along C's rows (N); the microkernel keeps an
// MR x NR tile of C in MR * NV zmm accumulators (NR = NV vector lanes) and, for each p of
// the K loop, loads NV vectors of the packed B panel and broadcasts MR values of op(A).
//
// Loops (outermost first), as in BLIS:
//   jc over N by NC   -> op(B)[pc:pc+kc, jc:jc+nc] packed into NR-wide panels (L3 / L2)
//   pc over K by KC   -> (C accumulates: beta applies on the first pass only)
//   ic over M by MC   -> op(A)[ic:ic+mc, pc:pc+kc] packed into MR-high panels (L2), or
//                        read in place (see below)
//   jr over nc by NR  -> one B panel, kc x NR, stays in L1
//   ir over mc by MR  -> microkernel
// Packing pads the edge panels with zeros, so the microkernel always runs full MR x NR and
// only its store is masked (columns: AVX-512 masks; rows: a count).
//
// op(A) in place: when the product has few column panels (N small: a forward or backward
// product of an MLP, N = a layer width), packing A costs as much as the arithmetic that
// reuses it, so the microkernel reads op(A) where it is: ta -> the MR values of one p are
// contiguous (stride lda between p's), !ta -> MR rows of A, each contiguous along p.  Only
// the last, partial panel of a block is packed (reading MR rows there could run past A).
//
// This file is compiled with AVX-512 flags: it includes no header with inline functions or
// templates that other files also instantiate (no <algorithm>, no common.hpp), and keeps its
// own helpers in an anonymous namespace, so that the linker can never pick an AVX-512 copy
// of a shared inline function for code that runs on a CPU without it.
#include "gemm_avx512.hpp"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>

#include <cstddef>
#include <cstdlib>

namespace tk {
namespace {

inline idx imin(idx a, idx b) {
  return a < b ? a : b;
}

template <class T>
struct Vec;

template <>
struct Vec<double> {
  using R = __m512d;
  using M = __mmask8;
  static constexpr int L = 8;
  static R zero() { return _mm512_setzero_pd(); }
  static R set1(double x) { return _mm512_set1_pd(x); }
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static R loadz(M m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(double* p, R v) { _mm512_storeu_pd(p, v); }
  static void store(double* p, M m, R v) { _mm512_mask_storeu_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static M mask(idx n) { return n >= L ? M(0xFF) : n <= 0 ? M(0) : M((1u << n) - 1); }
};

template <>
struct Vec<float> {
  using R = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R loadz(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, M m, R v) { _mm512_mask_storeu_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static M mask(idx n) { return n >= L ? M(0xFFFF) : n <= 0 ? M(0) : M((1u << n) - 1); }
};

// Tile and block sizes.  MR x NV vectors = 28 accumulators of the 32 zmm registers; per p,
// NV = 2 vector loads and MR broadcasts (folded into the FMAs as memory operands) feed 28
// FMAs.  NR = 16 doubles / 32 floats divides the layer widths that matter (32, 64, 128).
// (Against 12 x 16, 6 x 32 and 8 x 24 tiles over the MLP products: 8 x 24 was slower, the
// others no different.)
// KC = 512: a B micro-panel (KC x NR) streams from L2 rather than sitting in L1d; an L2 of
// current x86 cores keeps up, and it halves the passes over C of a smaller KC.
// MC: the A block (MC x KC) takes about two thirds of a 1 MiB L2.  NC: the packed B block
// (KC x NC) sits in L3 (also the most a thread's B buffer ever grows to).
template <class T>
struct Tile {
  static constexpr int MR = 14;
  static constexpr int NV = 2;
  static constexpr int NR = NV * Vec<T>::L;
  static constexpr idx KC = 512;
  static constexpr idx MC = MR * (96 / sizeof(T));  // 168 doubles, 336 floats
  static constexpr idx NC = NR * 128;               // 2048 doubles, 4096 floats
};

// Per-thread packing buffers, 64-byte aligned, grown as needed and kept.
struct Scratch {
  void* p = nullptr;
  std::size_t bytes = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(p); }
  template <class T>
  T* get(std::size_t n) {
    const std::size_t want = (n * sizeof(T) + 4095) / 4096 * 4096;
    if (want > bytes) {
      std::free(p);
      p = std::aligned_alloc(64, want);
      bytes = p ? want : 0;
    }
    return static_cast<T*>(p);
  }
};
thread_local Scratch t_apack, t_bpack;

// ----------------------------------------------------------------------------- microkernel
// acc (MR x NR) = sum_p a(:, p) b(p, :) over p < kc; then C[r0:mr, :nr] = alpha acc + beta C.
// b(p, :) = b[p * sb + :NR] (packed: sb = NR; op(B) = B in place: sb = ldb).
// a(r, p) = a[p * sa + r] (packed: sa = MR; op(A) = A^T in place: sa = lda) or, with RowA,
// a[r * sa + p] (op(A) = A in place: sa = lda).
template <class T, bool RowA, int MR = Tile<T>::MR>
[[gnu::noinline]] void micro(idx kc, const T* __restrict a, idx sa, const T* __restrict b, idx sb, T* __restrict c,
                             idx ldc, T alpha, T beta, idx mr, idx nr, idx r0 = 0) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int NV = Tile<T>::NV, NR = Tile<T>::NR, L = V::L;
  R acc[MR][NV];
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();

#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r) {
    if (r >= r0 && r < mr) {  // the C tile, for the end
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + NR - 1), _MM_HINT_T0);
    }
  }

  if constexpr (RowA) {
#pragma GCC unroll 2
    for (idx p = 0; p < kc; ++p) {
      R bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * L);
#pragma GCC unroll 32
      for (int r = 0; r < MR; ++r) {
        const R x = V::set1(a[r * sa + p]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(x, bv[v], acc[r][v]);
      }
      b += sb;
    }
  } else {
#pragma GCC unroll 4
    for (idx p = 0; p < kc; ++p) {
      R bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * L);
#pragma GCC unroll 32
      for (int r = 0; r < MR; ++r) {
        const R x = V::set1(a[r]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(x, bv[v], acc[r][v]);
      }
      a += sa;
      b += sb;
    }
  }

  typename V::M m[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) m[v] = V::mask(nr - v * L);
  if (alpha != T(1)) {
    const R va = V::set1(alpha);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = V::mul(acc[r][v], va);
  }
  if (beta == T(0)) {
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      if (r >= r0 && r < mr) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) V::store(c + r * ldc + v * L, m[v], acc[r][v]);
      }
    }
  } else {
    const R vb = V::set1(beta);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      if (r >= r0 && r < mr) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          T* cp = c + r * ldc + v * L;
          V::store(cp, m[v], V::fma(V::loadz(m[v], cp), vb, acc[r][v]));
        }
      }
    }
  }
}

// The last mr < MR rows of a product whose op(A) is read in place (row r of op(A) starts at
// a + r * rs; `above` rows before a may be read too): no packing, and little arithmetic on
// rows that are not stored.  A full-height microkernel would read past A's end; instead,
// 8 rows exactly, 4 exactly, or a 7-row kernel moved up over rows already computed that
// stores only its last rows (a kernel of 1 or 2 rows is bound by its loads; these are not).
// A layer width of 32 is 14 + 14 + 4 rows: packing the 4 and running them as 7 was slower.
template <class T, bool RowA>
void micro_rows(idx kc, const T* a, idx sa, idx rs, idx above, const T* b, idx sb, T* c, idx ldc, T alpha, T beta,
                idx mr, idx nr) {
  if (mr >= 8) {
    micro<T, RowA, 8>(kc, a, sa, b, sb, c, ldc, alpha, beta, 8, nr);
    a += 8 * rs, c += 8 * ldc, mr -= 8, above += 8;
  }
  if (mr == 4 || (mr > 0 && mr + above < 7)) {  // exactly (the second only when M < 7)
    if (mr >= 4) {
      micro<T, RowA, 4>(kc, a, sa, b, sb, c, ldc, alpha, beta, 4, nr);
      a += 4 * rs, c += 4 * ldc, mr -= 4;
    }
    if (mr >= 2) {
      micro<T, RowA, 2>(kc, a, sa, b, sb, c, ldc, alpha, beta, 2, nr);
      a += 2 * rs, c += 2 * ldc, mr -= 2;
    }
    if (mr >= 1) micro<T, RowA, 1>(kc, a, sa, b, sb, c, ldc, alpha, beta, 1, nr);
  } else if (mr > 0) {
    const idx up = 7 - mr;  // rows of the kernel above the ones it stores
    micro<T, RowA, 7>(kc, a - up * rs, sa, b, sb, c - up * ldc, ldc, alpha, beta, 7, nr, up);
  }
}

// ----------------------------------------------------------------------------- packing
// op(B)[0:kc, 0:nr] (nr <= NR) -> dst[p * NR + j], zero-padded to NR columns.
template <class T>
void pack_b_panel(bool tb, idx kc, idx nr, const T* B, idx ldb, T* __restrict dst) {
  using V = Vec<T>;
  constexpr int NV = Tile<T>::NV, NR = Tile<T>::NR, L = V::L;
  if (!tb) {  // rows of B: NR contiguous values per p
    typename V::M m[NV];
    for (int v = 0; v < NV; ++v) m[v] = V::mask(nr - v * L);
    if (nr == NR) {
      for (idx p = 0; p < kc; ++p, B += ldb, dst += NR)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) V::store(dst + v * L, V::load(B + v * L));
    } else {
      for (idx p = 0; p < kc; ++p, B += ldb, dst += NR)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) V::store(dst + v * L, V::loadz(m[v], B + v * L));
    }
    return;
  }
  // B is N x K: op(B)(p, j) = B[j * ldb + p].  Column j of the panel is row j of B.
  for (idx j = 0; j < nr; ++j) {
    const T* __restrict s = B + j * ldb;
    for (idx p = 0; p < kc; ++p) dst[p * NR + j] = s[p];
  }
  for (idx j = nr; j < NR; ++j)
    for (idx p = 0; p < kc; ++p) dst[p * NR + j] = T(0);
}

// op(A)[0:mr, 0:kc] (mr <= MR) -> dst[p * MR + r], zero-padded to MR rows.
template <class T>
void pack_a_panel(bool ta, idx mr, idx kc, const T* A, idx lda, T* __restrict dst) {
  using V = Vec<T>;
  constexpr int MR = Tile<T>::MR, L = V::L;
  if (ta) {  // A is K x M: the MR values of one p are contiguous
    constexpr int NVA = (MR + L - 1) / L;
    typename V::M m[NVA];
    for (int v = 0; v < NVA; ++v) m[v] = V::mask(mr - v * L);
    for (idx p = 0; p < kc; ++p, A += lda, dst += MR)
#pragma GCC unroll 4
      for (int v = 0; v < NVA; ++v) V::store(dst + v * L, V::mask(MR - v * L), V::loadz(m[v], A + v * L));
    return;
  }
  // A is M x K: row r of the panel is a row of A, contiguous along p.
  for (idx r = 0; r < mr; ++r) {
    const T* __restrict s = A + r * lda;
    for (idx p = 0; p < kc; ++p) dst[p * MR + r] = s[p];
  }
  for (idx r = mr; r < MR; ++r)
    for (idx p = 0; p < kc; ++p) dst[p * MR + r] = T(0);
}

// The whole blocks: op(B)[0:kc, 0:nc] -> panels at dst + jr * kc, op(A)[0:mc, 0:kc] ->
// panels at dst + ir * kc.  Where a panel's source is strided (B not transposed, A
// transposed: each p is a separate row of the source), the block is packed a few p's at a
// time across all panels, so that the source is read row by row, contiguously: packing a
// whole panel at once would touch kc rows a few cache lines each, in an order the hardware
// prefetchers do not follow (far slower products once A no longer fits in L3).
constexpr idx kPackRows = 16;

template <class T>
void pack_b_block(bool tb, idx kc, idx nc, const T* B, idx ldb, T* dst) {
  constexpr idx NR = Tile<T>::NR;
  const idx step = tb ? kc : kPackRows;
  for (idx p0 = 0; p0 < kc; p0 += step)
    for (idx jr = 0; jr < nc; jr += NR)
      pack_b_panel<T>(tb, imin(step, kc - p0), imin(NR, nc - jr), tb ? B + jr * ldb + p0 : B + p0 * ldb + jr, ldb,
                      dst + jr * kc + p0 * NR);
}

template <class T>
void pack_a_block(bool ta, idx mc, idx kc, const T* A, idx lda, T* dst) {
  constexpr idx MR = Tile<T>::MR;
  const idx step = ta ? kPackRows : kc;
  for (idx p0 = 0; p0 < kc; p0 += step)
    for (idx ir = 0; ir < mc; ir += MR)
      pack_a_panel<T>(ta, imin(MR, mc - ir), imin(step, kc - p0), ta ? A + p0 * lda + ir : A + ir * lda + p0, lda,
                      dst + ir * kc + p0 * MR);
}

template <class T>
void scale_c(idx M, idx N, T beta, T* C, idx ldc) {
  for (idx i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0))
      for (idx j = 0; j < N; ++j) c[j] = T(0);
    else
      for (idx j = 0; j < N; ++j) c[j] *= beta;
  }
}

// Splits n into ceil(n / cap) near-equal blocks, each a multiple of unit (but the last).
inline idx block_size(idx n, idx cap, idx unit) {
  const idx nb = (n + cap - 1) / cap;
  const idx b = (n + nb - 1) / nb;
  return imin(cap, (b + unit - 1) / unit * unit);
}

// The blocks of one M x N x K product (Tile's caps) and this thread's packing buffers for them:
// KC x NC of op(B) in NR-wide panels, MC x KC of op(A) in MR-high ones (null if the allocation
// failed).
template <class T>
struct Blocks {
  static constexpr idx MR = Tile<T>::MR, NR = Tile<T>::NR;
  idx KC, NC, MC;
  Blocks(idx M, idx N, idx K)
      : KC(block_size(K, Tile<T>::KC, 1)), NC(block_size(N, Tile<T>::NC, NR)), MC(block_size(M, Tile<T>::MC, MR)) {}
  T* b_buffer() const { return t_bpack.get<T>((std::size_t)KC * ((NC + NR - 1) / NR * NR)); }
  T* a_buffer() const { return t_apack.get<T>((std::size_t)KC * ((MC + MR - 1) / MR * MR)); }
};

// Whether op(A) is packed or read in place.  Packing costs about a load and a store per
// element of op(A) (a transposition when A is not transposed); every element then serves
// nc / NR microkernel calls.  In place, the microkernel reads MR rows of A (or MR-long
// pieces of A's rows when ta) directly.  In place was faster up to 8 column panels
// (N = 128 doubles), packing beyond (and it keeps the A block in L2 whatever lda is).
template <class T>
bool pack_a(idx N) {
  return N > 8 * Tile<T>::NR;
}

// Whether op(B) is read in place instead of packed: only when it is not transposed (its
// rows are then NR-wide runs, read at stride ldb) and N is whole panels (no panel needs
// zero padding), and the product has at most 10 row panels, so that packing's copy of
// op(B) would serve few microkernel calls: a weight gradient a^T g (M, N = layer widths,
// K = the samples) packed all of g to use it ceil(M / MR) times.  Without the limit on M,
// the large products (M, N, K in the thousands) were slower in place.
template <class T>
bool b_in_place(bool tb, idx M, idx N) {
  return !tb && N % Tile<T>::NR == 0 && M <= 10 * Tile<T>::MR;
}

}  // namespace

template <class T>
bool gemm_avx512(bool ta, bool tb, idx M, idx N, idx K, T alpha, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
                 idx ldc) {
  if (M <= 0 || N <= 0) return true;
  if (K <= 0 || alpha == T(0)) {
    if (beta != T(1)) scale_c<T>(M, N, beta, C, ldc);
    return true;
  }
  constexpr idx MR = Tile<T>::MR, NR = Tile<T>::NR;
  const Blocks<T> blk(M, N, K);
  const idx KC = blk.KC, NC = blk.NC, MC = blk.MC;
  const bool packA = pack_a<T>(N), packB = !b_in_place<T>(tb, M, N);
  T* bp = packB ? blk.b_buffer() : nullptr;
  T* ap = packA ? blk.a_buffer() : nullptr;
  if ((packB && !bp) || (packA && !ap)) return false;

  for (idx jc = 0; jc < N; jc += NC) {
    const idx nc = imin(NC, N - jc);
    for (idx pc = 0; pc < K; pc += KC) {
      const idx kc = imin(KC, K - pc);
      const T beta_p = pc == 0 ? beta : T(1);
      if (packB) pack_b_block<T>(tb, kc, nc, tb ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, bp);
      const idx sb = packB ? NR : ldb;
      for (idx ic = 0; ic < M; ic += MC) {
        const idx mc = imin(MC, M - ic);
        if (packA) pack_a_block<T>(ta, mc, kc, ta ? A + pc * lda + ic : A + ic * lda + pc, lda, ap);
        // In place, row r of op(A)'s block starts at a0 + r * rs.
        const T* a0 = ta ? A + pc * lda + ic : A + ic * lda + pc;
        const idx rs = ta ? 1 : lda, full = mc / MR * MR;
        for (idx jr = 0; jr < nc; jr += NR) {
          const idx nr = imin(NR, nc - jr);
          const T* b = packB ? bp + jr * kc : B + pc * ldb + jc + jr;
          T* c = C + ic * ldc + jc + jr;
          if (!packA) {
            for (idx ir = 0; ir < full; ir += MR) {
              if (ta)
                micro<T, false>(kc, a0 + ir, lda, b, sb, c + ir * ldc, ldc, alpha, beta_p, MR, nr);
              else
                micro<T, true>(kc, a0 + ir * lda, lda, b, sb, c + ir * ldc, ldc, alpha, beta_p, MR, nr);
            }
            if (full < mc) {
              if (ta)
                micro_rows<T, false>(kc, a0 + full, lda, rs, full, b, sb, c + full * ldc, ldc, alpha, beta_p, mc - full,
                                     nr);
              else
                micro_rows<T, true>(kc, a0 + full * lda, lda, rs, full, b, sb, c + full * ldc, ldc, alpha, beta_p,
                                    mc - full, nr);
            }
            continue;
          }
          for (idx ir = 0; ir < mc; ir += MR) {
            const idx mr = imin(MR, mc - ir);
            if (mr > MR / 2)
              micro<T, false>(kc, ap + ir * kc, MR, b, sb, c + ir * ldc, ldc, alpha, beta_p, mr, nr);
            else  // a short last panel: half the rows, half the work
              micro<T, false, MR / 2>(kc, ap + ir * kc, MR, b, sb, c + ir * ldc, ldc, alpha, beta_p, mr, nr);
          }
        }
      }
    }
  }
  return true;
}

// The symmetric rank update: the same loops with op(A) = R^T and op(B) = R, both packed (every
// element of the A block serves all the column panels of its rows), and the tiles wholly above
// the diagonal skipped: a column block's rows start at its first column.  A tile across the
// diagonal is computed whole, so the entries above the diagonal that it holds get their values.
template <class T>
bool syrk_lower_avx512(idx D, idx K, const T* R, idx ldr, T beta, T* C, idx ldc) {
  if (D <= 0) return true;
  if (K <= 0) {
    for (idx i = 0; i < D; ++i) scale_c<T>(1, i + 1, beta, C + i * ldc, ldc);
    return true;
  }
  constexpr idx MR = Tile<T>::MR, NR = Tile<T>::NR;
  const Blocks<T> blk(D, D, K);
  const idx KC = blk.KC, NC = blk.NC, MC = blk.MC;
  T* bp = blk.b_buffer();
  T* ap = blk.a_buffer();
  if (!bp || !ap) return false;

  for (idx jc = 0; jc < D; jc += NC) {
    const idx nc = imin(NC, D - jc);
    for (idx pc = 0; pc < K; pc += KC) {
      const idx kc = imin(KC, K - pc);
      const T beta_p = pc == 0 ? beta : T(1);
      pack_b_block<T>(false, kc, nc, R + pc * ldr + jc, ldr, bp);
      for (idx ic = jc; ic < D; ic += MC) {
        const idx mc = imin(MC, D - ic);
        pack_a_block<T>(true, mc, kc, R + pc * ldr + ic, ldr, ap);
        for (idx jr = 0; jr < nc; jr += NR) {
          const idx nr = imin(NR, nc - jr), col = jc + jr;
          // the first row panel that reaches the diagonal: its last row is >= col
          const idx ir0 = ic + MR > col ? 0 : (col - ic) / MR * MR;
          for (idx ir = ir0; ir < mc; ir += MR) {
            const idx mr = imin(MR, mc - ir);
            T* c = C + (ic + ir) * ldc + col;
            if (mr > MR / 2)
              micro<T, false>(kc, ap + ir * kc, MR, bp + jr * kc, NR, c, ldc, T(1), beta_p, mr, nr);
            else
              micro<T, false, MR / 2>(kc, ap + ir * kc, MR, bp + jr * kc, NR, c, ldc, T(1), beta_p, mr, nr);
          }
        }
      }
    }
  }
  return true;
}

template bool gemm_avx512<float>(bool, bool, idx, idx, idx, float, const float*, idx, const float*, idx, float, float*,
                                 idx);
template bool gemm_avx512<double>(bool, bool, idx, idx, idx, double, const double*, idx, const double*, idx, double,
                                  double*, idx);
template bool syrk_lower_avx512<float>(idx, idx, const float*, idx, float, float*, idx);
template bool syrk_lower_avx512<double>(idx, idx, const double*, idx, double, double*, idx);

}  // namespace tk

#else  // not x86-64 (have_avx512() is false), or compiled without the AVX-512 flags: a stub

namespace tk {
template <class T>
bool gemm_avx512(bool, bool, idx, idx, idx, T, const T*, idx, const T*, idx, T, T*, idx) {
  return false;
}
template <class T>
bool syrk_lower_avx512(idx, idx, const T*, idx, T, T*, idx) {
  return false;
}
template bool gemm_avx512<float>(bool, bool, idx, idx, idx, float, const float*, idx, const float*, idx, float, float*,
                                 idx);
template bool gemm_avx512<double>(bool, bool, idx, idx, idx, double, const double*, idx, const double*, idx, double,
                                  double*, idx);
template bool syrk_lower_avx512<float>(idx, idx, const float*, idx, float, float*, idx);
template bool syrk_lower_avx512<double>(idx, idx, const double*, idx, double, double*, idx);
}  // namespace tk

#endif
