// Exact Hessian and GGN of an MLP from their Kronecker structure, on the GPU.
//
// The math, the factors and the order of the work are those of ../curvature.cpp (read its
// header): per-sample factors Q_l, M^{(l,m)} (kept transposed as Tm), the term-3 factors S;
// the sums over samples of Kronecker products as matrix products over the sample index
// (packed symmetric for the diagonal blocks); then one index permutation into the result.
// What changes on the device:
//   - the per-sample small products are strided-batched cuBLAS calls: Q_l = U_l^T U_l and
//     Tm = U_m^T U_l for the GGN, and Q_{l-1} = (Q_l W_l^T)^T W_l^T with W_l shared across the
//     batch (stride 0) for the Hessian; the products whose right factor is a weight matrix
//     stay single products over c*rows rows, as on the CPU;
//   - the per-sample loops (scalings, packing, outer products) are grid-stride kernels;
//   - the permutation of an off-diagonal block is a shared-memory tiled transpose of each
//     (i, i') slab (both sides coalesced), with the Hessian's term 3 added on the way; the
//     lower triangle is the tiled transpose of the upper blocks;
//   - chunks of samples are sized from the device's free memory (chunk_budget), not 512.
#include <atomic>

#include "../accumulators.hpp"
#include "curvature.cuh"
#include "workspace.cuh"

namespace tk {
namespace cuda {

namespace {

// Packed index of (a, b), a <= b, in the row-major upper triangle of an n x n matrix.
__host__ __device__ __forceinline__ idx tri(idx a, idx b, idx n) {
  return a * n - a * (a - 1) / 2 + (b - a);
}

// dst[n, r, j] = src[n, r, j] * s[n, j] for a chunk of c samples (rows x cols each; s has
// row stride cols).  dst may be src.
template <class T>
__global__ void k_scale_cols(idx c, idx rows, idx cols, const T* __restrict__ s, const T* src, T* dst) {
  TK_GRID_STRIDE(q, c * rows * cols) {
    const idx j = q % cols, n = q / (rows * cols);
    dst[q] = src[q] * s[n * cols + j];
  }
}

// A (c, di+1) = [a, 1] per sample.
template <class T>
__global__ void k_augmented(idx c, idx di, const T* __restrict__ a, T* __restrict__ A) {
  TK_GRID_STRIDE(q, c * (di + 1)) {
    const idx i = q % (di + 1), n = q / (di + 1);
    A[q] = i < di ? a[n * di + i] : T(1);
  }
}

// Lf[n, tri(i, i2)] = a[n, i] a[n, i2] for i <= i2 < Da.
template <class T>
__global__ void k_pack_outer(idx c, idx Da, const T* __restrict__ A, T* __restrict__ Lf) {
  const idx DP = Da * (Da + 1) / 2;
  TK_GRID_STRIDE(q, c * Da * Da) {
    const idx i2 = q % Da, i = (q / Da) % Da, n = q / (Da * Da);
    if (i2 >= i) Lf[n * DP + tri(i, i2, Da)] = A[n * Da + i] * A[n * Da + i2];
  }
}

// Rf[n, tri(j, j2)] = Q[n, j, j2] for j <= j2 < H.
template <class T>
__global__ void k_pack_sym(idx c, idx H, const T* __restrict__ Q, T* __restrict__ Rf) {
  const idx HP = H * (H + 1) / 2;
  TK_GRID_STRIDE(q, c * H * H) {
    const idx j2 = q % H, j = (q / H) % H, n = q / (H * H);
    if (j2 >= j) Rf[n * HP + tri(j, j2, H)] = Q[q];
  }
}

// Lf[n, i, j] = A[n*lda + i] * B[n*ldb + j], i < p, j < q.
template <class T>
__global__ void k_outer(idx c, idx p, idx q, const T* __restrict__ A, idx lda, const T* __restrict__ B, idx ldb,
                        T* __restrict__ Lf) {
  TK_GRID_STRIDE(x, c * p * q) {
    const idx j = x % q, i = (x / q) % p, n = x / (p * q);
    Lf[x] = A[n * lda + i] * B[n * ldb + j];
  }
}

// Diagonal block (Da*H square, leading dimension ld) from its packed Kronecker sum.
template <class T>
__global__ void k_unpack_diag(idx Da, idx H, const T* __restrict__ Kd, T* __restrict__ out, idx ld) {
  const idx R = Da * H, HP = H * (H + 1) / 2;
  TK_GRID_STRIDE(q, R * R) {
    const idx r = q / R, col = q % R;
    const idx i = r / H, j = r % H, i2 = col / H, j2 = col % H;
    const idx a = i < i2 ? i : i2, b = i < i2 ? i2 : i, u = j < j2 ? j : j2, v = j < j2 ? j2 : j;
    out[r * ld + col] = Kd[tri(a, b, Da) * HP + tri(u, v, H)];
  }
}

constexpr int kTile = 32, kTileRows = 8;
inline unsigned tile_grid(idx blocks) {
  return (unsigned)std::max<idx>(1, std::min<idx>(blocks, idx(1) << 20));
}

// Off-diagonal block (l, m): out[(i*H + j)*P + i2*Hm + j2] = K[(i*dm + i2)*(Hm*H) + j2*H + j]
// (out already at the block's corner), plus the Hessian's term 3 for true units i2 < dm - 1:
//   mode 1 (m == l+1): + E3a[(i*H + j)*Hm + j2] where i2 == j;
//   mode 2 (m >= l+2): + E3[(i*Hm + j2)*(H*dmm) + j*dmm + i2].
// Each (i, i2) slab is an Hm x H matrix transposed through a shared-memory tile.
template <class T>
__global__ void k_ko_unpack(idx da, idx H, idx dm, idx Hm, const T* __restrict__ K, T* __restrict__ out, idx P,
                            int mode, const T* __restrict__ E3a, const T* __restrict__ E3, idx dmm) {
  __shared__ T tile[kTile][kTile + 1];
  const idx tj = (H + kTile - 1) / kTile, tj2 = (Hm + kTile - 1) / kTile, tiles = tj * tj2;
  const idx total = da * dm * tiles;
  for (idx b = blockIdx.x; b < total; b += gridDim.x) {
    const idx pair = b / tiles, t = b % tiles, i = pair / dm, i2 = pair % dm;
    const idx j0 = (t % tj) * kTile, j20 = (t / tj) * kTile;
    const T* S = K + pair * Hm * H;
    for (int y = threadIdx.y; y < kTile; y += kTileRows) {
      const idx j2 = j20 + y, j = j0 + threadIdx.x;
      if (j2 < Hm && j < H) tile[y][threadIdx.x] = S[j2 * H + j];
    }
    __syncthreads();
    for (int y = threadIdx.y; y < kTile; y += kTileRows) {
      const idx j = j0 + y, j2 = j20 + threadIdx.x;
      if (j < H && j2 < Hm) {
        T v = tile[threadIdx.x][y];
        if (mode != 0 && i2 < dm - 1) {
          if (mode == 1) {
            if (i2 == j) v += E3a[(i * H + j) * Hm + j2];
          } else {
            v += E3[(i * Hm + j2) * (H * dmm) + j * dmm + i2];
          }
        }
        out[(i * H + j) * P + i2 * Hm + j2] = v;
      }
    }
    __syncthreads();
  }
}

// dst (rows x cols, ld ldd)[r][q] = src (cols x rows, ld lds)[q][r], through shared tiles.
template <class T>
__global__ void k_transpose(idx rows, idx cols, const T* __restrict__ src, idx lds, T* __restrict__ dst, idx ldd) {
  __shared__ T tile[kTile][kTile + 1];
  const idx tr = (rows + kTile - 1) / kTile, tq = (cols + kTile - 1) / kTile, total = tr * tq;
  for (idx b = blockIdx.x; b < total; b += gridDim.x) {
    const idx r0 = (b % tr) * kTile, q0 = (b / tr) * kTile;
    for (int y = threadIdx.y; y < kTile; y += kTileRows) {
      const idx q = q0 + y, r = r0 + threadIdx.x;
      if (q < cols && r < rows) tile[y][threadIdx.x] = src[q * lds + r];
    }
    __syncthreads();
    for (int y = threadIdx.y; y < kTile; y += kTileRows) {
      const idx r = r0 + y, q = q0 + threadIdx.x;
      if (r < rows && q < cols) dst[r * ldd + q] = tile[threadIdx.x][y];
    }
    __syncthreads();
  }
}

// GGN: U (c, k, k), rows of a square root R of H_out (R^T R = H_out; formulas.hpp's
// curvature_root); p null for mse.  Sample n's scale is row_weight(w, s, n) (../net.hpp; w the
// chunk's weights or null).
template <class T>
__global__ void k_ggn_u_init(idx c, idx k, Loss loss, T s, const T* __restrict__ w, const T* __restrict__ p,
                             T* __restrict__ U) {
  TK_GRID_STRIDE(q, c * k * k) {
    const idx j = q % k, r = (q / k) % k, n = q / (k * k);
    U[q] = curvature_root(loss, k, p ? p + n * k : nullptr, r, j, row_weight(w, s, n));
  }
}

// Hessian: Q_{L-1} (c, k, k) = H_out (formulas.hpp's out_curvature); p null for mse; scales as
// k_ggn_u_init's.
template <class T>
__global__ void k_hess_q_init(idx c, idx k, Loss loss, T s, const T* __restrict__ w, const T* __restrict__ p,
                              T* __restrict__ Q) {
  TK_GRID_STRIDE(q, c * k * k) {
    const idx j = q % k, i = (q / k) % k, n = q / (k * k);
    Q[q] = out_curvature(loss, k, p ? p + n * k : nullptr, i, j, row_weight(w, s, n));
  }
}

// Q_{l-1}[n, i, i2] = d1[n, i] Q[n, i, i2] d1[n, i2] + [i == i2] e[n, i] act''[n, i].
template <class T>
__global__ void k_q_finish(idx c, idx H, const T* __restrict__ d1, const T* __restrict__ e, const T* __restrict__ d2,
                           T* __restrict__ Q) {
  TK_GRID_STRIDE(q, c * H * H) {
    const idx i2 = q % H, i = (q / H) % H, n = q / (H * H);
    T v = d1[n * H + i] * Q[q] * d1[n * H + i2];
    if (i == i2) v += e[n * H + i] * d2[n * H + i];
    Q[q] = v;
  }
}

// B (c, H, H1) = D_l W_{l+1} per sample: B[n, i, j] = d1[n, i] W1[i, j].
template <class T>
__global__ void k_b_init(idx c, idx H, idx H1, const T* __restrict__ d1, const T* __restrict__ W1, T* __restrict__ B) {
  TK_GRID_STRIDE(q, c * H * H1) {
    const idx j = q % H1, i = (q / H1) % H, n = q / (H * H1);
    B[q] = d1[n * H + i] * W1[i * H1 + j];
  }
}

// Kd (Da(Da+1)/2, H(H+1)/2) = beta Kd + sum_n tri(a~ a~^T) tri(Q_n)^T for one layer.
template <class T>
void diag_block_product(Workspace<T>& ws, idx c, idx Da, idx H, const T* A, const T* Q, T beta, T* Kd) {
  const idx DP = Da * (Da + 1) / 2, HP = H * (H + 1) / 2;
  ws.Lf.resize(c * DP);
  ws.Rf.resize(c * HP);
  k_pack_outer<T><<<grid_for(c * Da * Da), kThreads, 0, ws.stream()>>>(c, Da, A, ws.Lf.data());
  TK_CHECK_LAUNCH();
  k_pack_sym<T><<<grid_for(c * H * H), kThreads, 0, ws.stream()>>>(c, H, Q, ws.Rf.data());
  TK_CHECK_LAUNCH();
  gemm<T>(ws.blas(), true, false, DP, HP, c, T(1), ws.Lf.data(), DP, ws.Rf.data(), HP, beta, Kd, HP);
}

template <class T>
void unpack_diag_block(Workspace<T>& ws, idx Da, idx H, const T* Kd, T* out, idx ld) {
  const idx R = Da * H;
  k_unpack_diag<T><<<grid_for(R * R), kThreads, 0, ws.stream()>>>(Da, H, Kd, out, ld);
  TK_CHECK_LAUNCH();
}

template <class T>
void augmented(const Net& net, Workspace<T>& ws, idx l, idx n0, idx c, DevBuf<T>& A) {
  const idx di = net.d[l];
  A.resize(c * (di + 1));
  k_augmented<T><<<grid_for(c * (di + 1)), kThreads, 0, ws.stream()>>>(c, di, ws.tape.in(l) + n0 * di, A.data());
  TK_CHECK_LAUNCH();
}

template <class T>
void scale_cols(Workspace<T>& ws, idx c, idx rows, idx cols, const T* s, const T* src, T* dst) {
  k_scale_cols<T><<<grid_for(c * rows * cols), kThreads, 0, ws.stream()>>>(c, rows, cols, s, src, dst);
  TK_CHECK_LAUNCH();
}

}  // namespace

idx factor_work(const Net& net) {
  idx w = 0;
  for (idx l = 0; l < net.L(); ++l) w += net.d[l + 1] * net.d[l + 1] * (net.d[l] + net.d[l + 1]);
  return w;
}

idx chunk_size(const Net& net, idx N, Need need, idx budget) {
  return std::max<idx>(1, std::min<idx>(N, budget / std::max<idx>(factor_values(net, need), 1)));
}

static std::atomic<idx> g_budget_override{0};
void set_chunk_budget(idx values) {
  g_budget_override = values > 0 ? values : 0;
}

idx chunk_budget(size_t value_bytes) {
  if (const idx forced = g_budget_override.load()) return forced;
  size_t free_b = 0, total_b = 0;
  TK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  const idx values = (idx)(free_b / 4 / value_bytes);
  return std::max<idx>(idx(1) << 22, std::min<idx>(values, idx(1) << 28));
}

template <class T>
void curvature_tape(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn,
                    Workspace<T>& ws) {
  forward(net, theta, X, N, ws, gn ? Derivs::first : Derivs::second);
  loss_head(net, ws, tg, mean, !gn, false);
  if (!gn) backward(net, theta, ws);
}

template <class T>
void chunk_factors(const Net& net, const T* theta, Workspace<T>& ws, bool mean, bool gn, Need need, idx n0, idx c) {
  const idx L = net.L(), k = net.k();
  const Tape<T>& t = ws.tape;
  Factors<T>& f = ws.f;
  cudaStream_t st = ws.stream();
  const T s = sample_weight<T>(t.N, mean);
  f.Q.resize(L);
  if (need == Need::full) {
    f.Tm.resize(L);
    f.S.resize(L);
    for (idx l = 0; l < L; ++l) f.Tm[l].resize(L), f.S[l].resize(L);
  }
  const T* P = net.loss != Loss::mse ? t.p.data() + n0 * k : nullptr;
  const T* w = t.w ? t.w + n0 : nullptr;  // the chunk's sample weights

  if (gn) {
    f.U.resize(L);
    f.U[L - 1].resize(c * k * k);
    k_ggn_u_init<T><<<grid_for(c * k * k), kThreads, 0, st>>>(c, k, net.loss, s, w, P, f.U[L - 1].data());
    TK_CHECK_LAUNCH();
    backward_rows(net, theta, ws, n0, c, k, f.U);
    if (need == Need::diag) return;
    for (idx l = 0; l < L; ++l) {
      const idx H = net.d[l + 1];
      f.Q[l].resize(c * H * H);
      // Q_n = U_n^T U_n, U_n (k x H)
      gemm_batched<T>(ws.blas(), true, false, H, H, k, T(1), f.U[l].data(), H, k * H, f.U[l].data(), H, k * H, T(0),
                      f.Q[l].data(), H, H * H, c);
      if (need == Need::full)
        for (idx m = l + 1; m < L; ++m) {
          const idx Hm = net.d[m + 1];
          f.Tm[l][m].resize(c * Hm * H);
          // Tm_n = U_m,n^T U_l,n  (Hm x H)
          gemm_batched<T>(ws.blas(), true, false, Hm, H, k, T(1), f.U[m].data(), Hm, k * Hm, f.U[l].data(), H, k * H,
                          T(0), f.Tm[l][m].data(), H, Hm * H, c);
        }
    }
    return;
  }

  // Hessian: Q_{L-1} = H_out, then the backward recursion.
  f.Q[L - 1].resize(c * k * k);
  k_hess_q_init<T><<<grid_for(c * k * k), kThreads, 0, st>>>(c, k, net.loss, s, w, P, f.Q[L - 1].data());
  TK_CHECK_LAUNCH();
  for (idx l = L - 1; l >= 1; --l) {
    const idx Hl = net.d[l + 1], Hp = net.d[l];
    const T* W = weights(net, theta, l);  // (Hp, Hl)
    const T* d1 = t.d1[l - 1].data() + n0 * Hp;
    // y_n = Q_l W_l^T (Hl x Hp): one product over c*Hl rows
    f.y.resize(c * Hl * Hp);
    gemm<T>(ws.blas(), false, true, c * Hl, Hp, Hl, T(1), f.Q[l].data(), Hl, W, Hl, T(0), f.y.data(), Hp);
    if (need == Need::full) {
      for (idx m = l + 1; m < L; ++m) {  // Tm[l-1][m] = Tm[l][m] W_l^T D_{l-1}
        const idx Hm = net.d[m + 1];
        auto& Tn = f.Tm[l - 1][m];
        Tn.resize(c * Hm * Hp);
        gemm<T>(ws.blas(), false, true, c * Hm, Hp, Hl, T(1), f.Tm[l][m].data(), Hl, W, Hl, T(0), Tn.data(), Hp);
        scale_cols<T>(ws, c, Hm, Hp, d1, Tn.data(), Tn.data());
      }
      f.Tm[l - 1][l].resize(c * Hl * Hp);
      scale_cols<T>(ws, c, Hl, Hp, d1, f.y.data(), f.Tm[l - 1][l].data());
    }
    // Q_{l-1,n} = D (y_n^T W_l^T) D + diag(e * act''): a batched product, W_l shared (stride 0).
    auto& Qp = f.Q[l - 1];
    Qp.resize(c * Hp * Hp);
    gemm_batched<T>(ws.blas(), true, true, Hp, Hp, Hl, T(1), f.y.data(), Hp, Hl * Hp, W, Hl, 0, T(0), Qp.data(), Hp,
                    Hp * Hp, c);
    k_q_finish<T><<<grid_for(c * Hp * Hp), kThreads, 0, st>>>(c, Hp, d1, t.e[l - 1].data() + n0 * Hp,
                                                              t.d2[l - 1].data() + n0 * Hp, Qp.data());
    TK_CHECK_LAUNCH();
  }
  if (need != Need::full) return;

  // Term-3 factors: B^T_{l+1,l} = D_l W_{l+1}; S[l][m] = B^T_{m-1,l} D_{m-1}; B^T_{m,l} = S[l][m] W_m.
  for (idx l = 0; l + 2 < L; ++l) {
    const idx H = net.d[l + 1], H1 = net.d[l + 2];
    f.B.resize(c * H * H1);
    k_b_init<T><<<grid_for(c * H * H1), kThreads, 0, st>>>(c, H, H1, t.d1[l].data() + n0 * H,
                                                           weights(net, theta, l + 1), f.B.data());
    TK_CHECK_LAUNCH();
    for (idx m = l + 2; m < L; ++m) {  // B holds B^T_{m-1,l}: (c, H, d[m])
      const idx Hm = net.d[m];
      auto& Sm = f.S[l][m];
      Sm.resize(c * H * Hm);
      scale_cols<T>(ws, c, H, Hm, t.d1[m - 1].data() + n0 * Hm, f.B.data(), Sm.data());
      if (m + 1 < L) {
        f.B.resize(c * H * net.d[m + 1]);
        gemm<T>(ws.blas(), false, false, c * H, net.d[m + 1], Hm, T(1), Sm.data(), Hm, weights(net, theta, m),
                net.d[m + 1], T(0), f.B.data(), net.d[m + 1]);
      }
    }
  }
}

template <class T>
void curvature_full(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws) {
  const idx L = net.L(), P = net.P();
  curvature_tape(net, theta, X, N, tg, mean, gn, ws);
  const Tape<T>& t = ws.tape;
  auto Da = [&](idx l) { return net.d[l] + 1; };
  auto Hd = [&](idx l) { return net.d[l + 1]; };

  full_accumulators(net, gn, ws);  // ../accumulators.hpp
  auto &Kd = ws.Kd, &E3a = ws.E3a;
  auto &Ko = ws.Ko, &E3 = ws.E3;

  const idx C = chunk_size(net, N, Need::full, chunk_budget(sizeof(T)));
  Factors<T>& f = ws.f;
  auto& A = ws.A;
  auto& Lf = ws.Lf;
  cudaStream_t st = ws.stream();
  A.resize(L);
  for (idx n0 = 0; n0 < N; n0 += C) {
    const idx c = std::min(C, N - n0);
    const T beta = n0 == 0 ? T(0) : T(1);
    chunk_factors(net, theta, ws, mean, gn, Need::full, n0, c);
    for (idx l = 0; l < L; ++l) augmented(net, ws, l, n0, c, A[l]);
    checkpoint(ws, c * factor_work(net));
    for (idx l = 0; l < L; ++l) {
      diag_block_product<T>(ws, c, Da(l), Hd(l), A[l].data(), f.Q[l].data(), beta, Kd[l].data());
      for (idx m = l + 1; m < L; ++m) {
        // Ko[(i,i'), (j',j)] += sum_n a~_l[i] a~_m[i'] Tm[l][m][j',j]
        const idx da = Da(l), dm = Da(m);
        Lf.resize(c * da * dm);
        k_outer<T><<<grid_for(c * da * dm), kThreads, 0, st>>>(c, da, dm, A[l].data(), da, A[m].data(), dm, Lf.data());
        TK_CHECK_LAUNCH();
        gemm<T>(ws.blas(), true, false, da * dm, Hd(m) * Hd(l), c, T(1), Lf.data(), da * dm, f.Tm[l][m].data(),
                Hd(m) * Hd(l), beta, Ko[l][m].data(), Hd(m) * Hd(l));
        if (gn) continue;
        if (m == l + 1) {
          // E3a[(i, j), j'] += sum_n a~_l[i] act'(z_l)[j] g_m[j']
          const idx H = Hd(l);
          Lf.resize(c * da * H);
          k_outer<T><<<grid_for(c * da * H), kThreads, 0, st>>>(c, da, H, A[l].data(), da, t.d1[l].data() + n0 * H, H,
                                                                Lf.data());
          TK_CHECK_LAUNCH();
          gemm<T>(ws.blas(), true, false, da * H, Hd(m), c, T(1), Lf.data(), da * H, t.g[m].data() + n0 * Hd(m), Hd(m),
                  beta, E3a[l].data(), Hd(m));
        } else {
          // E3[(i, j'), (j, i')] += sum_n a~_l[i] g_m[j'] S[l][m][j, i']
          const idx Hm = Hd(m);
          Lf.resize(c * da * Hm);
          k_outer<T><<<grid_for(c * da * Hm), kThreads, 0, st>>>(c, da, Hm, A[l].data(), da, t.g[m].data() + n0 * Hm,
                                                                 Hm, Lf.data());
          TK_CHECK_LAUNCH();
          const idx cols = Hd(l) * net.d[m];
          gemm<T>(ws.blas(), true, false, da * Hm, cols, c, T(1), Lf.data(), da * Hm, f.S[l][m].data(), cols, beta,
                  E3[l][m].data(), cols);
        }
      }
      checkpoint(ws, c * Da(l) * Hd(l) * (P - net.off[l]));  // block row l: its P_l by the rest
    }
  }

  // Permute the accumulators into the upper blocks of out, then mirror.
  const dim3 tb(kTile, kTileRows);
  for (idx l = 0; l < L; ++l) {
    const idx da = Da(l), H = Hd(l), ol = net.off[l];
    unpack_diag_block<T>(ws, da, H, Kd[l].data(), out + ol * P + ol, P);
    for (idx m = l + 1; m < L; ++m) {
      const idx dm = Da(m), Hm = Hd(m), om = net.off[m];
      const int mode = gn ? 0 : (m == l + 1 ? 1 : 2);
      const idx blocks = da * dm * ((H + kTile - 1) / kTile) * ((Hm + kTile - 1) / kTile);
      k_ko_unpack<T><<<tile_grid(blocks), tb, 0, st>>>(da, H, dm, Hm, Ko[l][m].data(), out + ol * P + om, P, mode,
                                                       mode == 1 ? E3a[l].data() : nullptr,
                                                       mode == 2 ? E3[l][m].data() : nullptr, net.d[m]);
      TK_CHECK_LAUNCH();
    }
    checkpoint(ws, 0);
  }
  // lower blocks: out[m-block rows][l-block cols] = transpose of the upper block (l, m)
  for (idx l = 0; l < L; ++l)
    for (idx m = l + 1; m < L; ++m) {
      const idx Pl = net.off[l + 1] - net.off[l], Pm = net.off[m + 1] - net.off[m];
      const idx blocks = ((Pm + kTile - 1) / kTile) * ((Pl + kTile - 1) / kTile);
      k_transpose<T><<<tile_grid(blocks), tb, 0, st>>>(Pm, Pl, out + net.off[l] * P + net.off[m], P,
                                                       out + net.off[m] * P + net.off[l], P);
      TK_CHECK_LAUNCH();
    }
}

template <class T>
void curvature_blocks(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn,
                      const std::vector<T*>& outs, Workspace<T>& ws) {
  const idx L = net.L();
  curvature_tape(net, theta, X, N, tg, mean, gn, ws);
  auto &A = ws.A, &Kd = ws.Kd;
  A.resize(L), Kd.resize(L);
  for (idx l = 0; l < L; ++l) Kd[l].resize(packed_diag_values(net, l));
  const idx C = chunk_size(net, N, Need::blocks, chunk_budget(sizeof(T)));
  Factors<T>& f = ws.f;
  for (idx n0 = 0; n0 < N; n0 += C) {
    const idx c = std::min(C, N - n0);
    chunk_factors(net, theta, ws, mean, gn, Need::blocks, n0, c);
    checkpoint(ws, c * factor_work(net));
    for (idx l = 0; l < L; ++l) {
      augmented(net, ws, l, n0, c, A[l]);
      diag_block_product<T>(ws, c, net.d[l] + 1, net.d[l + 1], A[l].data(), f.Q[l].data(), n0 == 0 ? T(0) : T(1),
                            Kd[l].data());
      checkpoint(ws, c * packed_diag_values(net, l));
    }
  }
  for (idx l = 0; l < L; ++l) {
    const idx Pl = (net.d[l] + 1) * net.d[l + 1];
    unpack_diag_block<T>(ws, net.d[l] + 1, net.d[l + 1], Kd[l].data(), outs[l], Pl);
  }
}

#define TK_INST(T)                                                                                                 \
  template void curvature_tape<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, bool, Workspace<T>&);     \
  template void chunk_factors<T>(const Net&, const T*, Workspace<T>&, bool, bool, Need, idx, idx);                 \
  template void curvature_full<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, bool, T*, Workspace<T>&); \
  template void curvature_blocks<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, bool,                   \
                                    const std::vector<T*>&, Workspace<T>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace cuda
}  // namespace tk
