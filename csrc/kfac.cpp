// K-FAC's factors (kfac.hpp) in one pass over the samples.
//
// Each thread takes its slice of samples a chunk of rows at a time (common.hpp: over_samples,
// over_chunks) through the forward pass and the loss head, forms the rows of the output's
// square root (or the sampled gradients), backpropagates them to every layer (backward_rows),
// and adds to its accumulators, per layer, the chunk's a~^T a~ and U^T U: symmetric rank-c
// updates, of which only the lower triangle is computed (blas.hpp: syrk_lower, as gram.cpp
// does), mirrored once at the end; the inputs' column of ones is never formed (its row of A is
// the inputs' column sums).  The per-thread accumulators are summed after one barrier
// (sum_parts).  The backpropagated rows live in the thread's GramScratch (U),
// the same kind of scratch as the Gram route's.
#include "kfac.hpp"

#include <algorithm>
#include <cmath>

#include "blas.hpp"
#include "curvature.hpp"
#include "forward_backward.hpp"
#include "workspace.hpp"

namespace tk {

namespace {

// acc (D, D, row stride ldc)'s lower triangle = beta acc + R^T R, R (rows, D) row-major.
template <class T>
void lower_rank_update(idx D, idx rows, const T* R, T beta, T* acc, idx ldc) {
  syrk_lower<T>(D, rows, R, D, beta, acc, ldc);
}

// The same for the augmented inputs [a 1] (rows, d + 1) without forming them: a^T a into the
// leading (d, d) block, and the last row (the bias row) beta acc + (1^T a, rows).  With weights w
// (rows), sum_n w_n [a_n 1]^T [a_n 1]: the rows scaled by sqrt(w_n) into `scaled` first.
template <class T>
void augmented_rank_update(idx d, idx rows, const T* a, const T* w, T beta, T* acc, vec<T>& scaled) {
  const idx Da = d + 1;
  if (w) {
    scaled.resize(rows * d);
    for (idx n = 0; n < rows; ++n) {
      const T r = std::sqrt(w[n]);
      for (idx i = 0; i < d; ++i) scaled[n * d + i] = r * a[n * d + i];
    }
  }
  lower_rank_update<T>(d, rows, w ? scaled.data() : a, beta, acc, Da);
  T* last = acc + d * Da;
  for (idx i = 0; i <= d; ++i) last[i] = beta == T(0) ? T(0) : beta * last[i];  // never 0 * (NaN left there)
  for (idx n = 0; n < rows; ++n) {
    const T wn = w ? w[n] : T(1);
    for (idx i = 0; i < d; ++i) last[i] += wn * a[n * d + i];
    last[d] += wn;
  }
}

// out = scale * acc with the upper triangle from the lower, in tiles (a column of out written
// element by element would miss the cache on every write for wide layers).
template <class T>
void mirror_scaled(idx D, const T* acc, T scale, T* out) {
  constexpr idx kTile = 32;
  for (idx i0 = 0; i0 < D; i0 += kTile)
    for (idx j0 = 0; j0 <= i0; j0 += kTile) {
      const idx i1 = std::min(D, i0 + kTile), j1 = std::min(D, j0 + kTile);
      for (idx i = i0; i < i1; ++i)
        for (idx j = j0; j < std::min(j1, i + 1); ++j) out[i * D + j] = scale * acc[i * D + j];
      for (idx j = j0; j < j1; ++j)
        for (idx i = std::max(i0, j + 1); i < i1; ++i) out[j * D + i] = out[i * D + j];
    }
}

// The chunk's top rows (c, r, k) at the output (kfac.hpp); p the head's H_out values (the
// softmax for ce; null for mse), sw the chunk's sample weights or null.  Exact: the rows of the
// GGN's H_out square root, any loss.  Sampled: for ce the label drawn here from each uniform by
// the softmax's inverse CDF; for the other likelihoods the MLP's unit-weight gradient rows
// (drawn from the outputs' predictive distribution); each scaled by sqrt(s_n / M).
template <class T>
void top_rows(const Net& net, idx c, const T* p, const T* sw, T s, const T* noise, idx M, T* top) {
  const idx k = net.k();
  if (!noise) {  // without weights through the constant null (the row loop then has no weight loads)
    if (sw)
      root_rows(net, c, p, sw, s, true, top);
    else
      root_rows(net, c, p, static_cast<const T*>(nullptr), s, true, top);
    return;
  }
  for (idx n = 0; n < c; ++n) {
    const T w = std::sqrt(row_weight(sw, s, n) / T(M));
    if (net.loss != Loss::ce) {
      for (idx q = n * M * k; q < (n + 1) * M * k; ++q) top[q] = w * noise[q];
      continue;
    }
    const T* pn = p + n * k;
    for (idx m = 0; m < M; ++m) {
      const T u = noise[n * M + m];
      idx label = 0;  // the number of cumulative sums <= u, at most k - 1
      T cdf = 0;
      for (idx j = 0; j < k; ++j) {
        cdf += pn[j];
        if (u >= cdf) label = j + 1;
      }
      label = std::min(label, k - 1);
      T* row = top + (n * M + m) * k;
      for (idx j = 0; j < k; ++j) row[j] = w * (pn[j] - (j == label ? T(1) : T(0)));
    }
  }
}

}  // namespace

// The pass both calls share: each thread's chunks through the forward pass, the loss head and
// the backward pass of the rows (r per sample), then take(l, c, a, w, U, acc, beta) per layer with
// the chunk's inputs a (c, d[l]), weights w (c, or null), rows U (c r, d[l+1]) and the thread's
// accumulator of S values
// (beta 0 on its first chunk); the threads' accumulators are summed into ws.parts[0, S).
// `work` is the multiply-adds per sample of the consumer, for the thread count.
template <class T, class Take>
void kfac_pass(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* noise, idx M,
               idx S, idx work, Workspace<T>& ws, Take&& take) {
  const idx L = net.L(), k = net.k(), r = noise ? M : k;
  idx per_row = 0;
  for (idx l = 0; l < L; ++l) per_row += net.d[l] + 1 + 2 * r * net.d[l + 1];
  const T s = sample_weight<T>(N, mean);
  const int nt = sample_threads(N, N * (work + net.macs() * (1 + r)));
  const idx rows = chunk_rows(tape_values(net, false) + per_row, S, sizeof(T));
  ws.parts.resize(nt * S);
  ws.chunk_tapes.resize(nt);
  ws.gram.resize(nt);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    T* acc = ws.parts.data() + tid * S;
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), false);
    GramScratch<T>& sc = ws.gram[tid];
    sc.U.resize(L);
    if (n1 == n0) std::fill(acc, acc + S, T(0));
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool first) {
      const idx c = c1 - c0;
      const Targets<T> tc = rows_at(ct, net, X, tg, c0);
      forward_rows(net, theta, ct, 0, c, false);
      head_rows(net, ct, tc, mean, 0, c, false);
      const T* p = net.loss != Loss::mse ? ct.p.data() : nullptr;
      sc.U[L - 1].resize(c * r * k);
      top_rows(net, c, p, tc.w, s, noise ? noise + c0 * M * (net.loss == Loss::ce ? 1 : k) : nullptr, M,
               sc.U[L - 1].data());
      backward_rows(net, theta, ct, 0, c, r, sc.U);
      const T beta = first ? T(0) : T(1);
      for (idx l = 0; l < L; ++l) take(l, c, ct.in(l), tc.w, sc.U[l].data(), acc, beta, sc);
    });
#pragma omp barrier
    sum_parts(ws.parts.data(), S, [&](idx q) { return ws.parts.data() + q * S; });
  });
}

template <class T>
void kfac_factors(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* noise, idx M,
                  const std::vector<T*>& A, const std::vector<T*>& B, Workspace<T>& ws) {
  const idx L = net.L(), r = noise ? M : net.k();
  // accumulator layout: per layer A_l (Da^2) then B_l (Db^2).  Where A[l] is null its space and
  // work are counted all the same, so that the chunks and threads, hence B's bits, do not change.
  std::vector<idx> offA(L), offB(L);
  idx S = 0, work = 0;
  for (idx l = 0; l < L; ++l) {
    const idx Da = net.d[l] + 1, Db = net.d[l + 1];
    offA[l] = S, S += Da * Da;
    offB[l] = S, S += Db * Db;
    work += Da * Da / 2 + r * Db * Db / 2;
  }
  kfac_pass<T>(net, theta, X, N, tg, mean, noise, M, S, work, ws,
               [&](idx l, idx c, const T* a, const T* w, const T* U, T* acc, T beta, GramScratch<T>& sc) {
                 const idx Db = net.d[l + 1];
                 if (A[l]) augmented_rank_update<T>(net.d[l], c, a, w, beta, acc + offA[l], sc.A2);
                 lower_rank_update<T>(Db, c * r, U, beta, acc + offB[l], Db);
               });
  if (interrupted()) return;
  double total = double(N);  // A's divisor: the samples, or the sum of their weights
  if (tg.w) {
    total = 0;
    for (idx n = 0; n < N; ++n) total += tg.w[n];
  }
  for (idx l = 0; l < L; ++l) {
    const idx Da = net.d[l] + 1, Db = net.d[l + 1];
    if (A[l]) mirror_scaled<T>(Da, ws.parts.data() + offA[l], T(1.0 / total), A[l]);
    mirror_scaled<T>(Db, ws.parts.data() + offB[l], T(1), B[l]);
  }
}

template <class T>
void kfac_eigen_scales(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* noise,
                       idx M, const std::vector<const T*>& Qa, const std::vector<const T*>& Qb,
                       const std::vector<T*>& out, Workspace<T>& ws) {
  const idx L = net.L(), r = noise ? M : net.k();
  std::vector<idx> off(L);
  idx S = 0, work = 0;
  for (idx l = 0; l < L; ++l) {
    const idx Da = net.d[l] + 1, Db = net.d[l + 1];
    off[l] = S, S += Da * Db;
    work += Da * Da + r * Db * Db + Da * Db;
  }
  kfac_pass<T>(net, theta, X, N, tg, mean, noise, M, S, work, ws,
               [&](idx l, idx c, const T* a, const T*, const T* U, T* acc, T beta, GramScratch<T>& sc) {
                 const idx d = net.d[l], Da = d + 1, Db = net.d[l + 1];
                 // pa = ([a 1] Qa)^2: a Qa's first d rows, plus Qa's last row
                 sc.A2.resize(c * Da);
                 T* pa = sc.A2.data();
                 gemm<T>(false, false, c, Da, d, T(1), a, d, Qa[l], Da, T(0), pa, Da);
                 const T* qlast = Qa[l] + d * Da;
                 for (idx n = 0; n < c; ++n)
                   for (idx i = 0; i < Da; ++i) {
                     const T v = pa[n * Da + i] + qlast[i];
                     pa[n * Da + i] = v * v;
                   }
                 // pu = sum over the r rows of each sample of (U Qb)^2
                 sc.M.resize(c * r * Db), sc.w.resize(c * Db);
                 gemm<T>(false, false, c * r, Db, Db, T(1), U, Db, Qb[l], Db, T(0), sc.M.data(), Db);
                 T* pu = sc.w.data();
                 for (idx n = 0; n < c; ++n) {
                   T* row = pu + n * Db;
                   std::fill(row, row + Db, T(0));
                   for (idx q = 0; q < r; ++q) {
                     const T* m = sc.M.data() + (n * r + q) * Db;
                     for (idx j = 0; j < Db; ++j) row[j] += m[j] * m[j];
                   }
                 }
                 gemm<T>(true, false, Da, Db, c, T(1), pa, Da, pu, Db, beta, acc + off[l], Db);
               });
  if (interrupted()) return;
  for (idx l = 0; l < L; ++l) {
    const idx n = (net.d[l] + 1) * net.d[l + 1];
    std::copy(ws.parts.data() + off[l], ws.parts.data() + off[l] + n, out[l]);
  }
}

#define TK_INST(T)                                                                                           \
  template void kfac_factors<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, const T*, idx,    \
                                const std::vector<T*>&, const std::vector<T*>&, Workspace<T>&);          \
  template void kfac_eigen_scales<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, const T*, idx, \
                                     const std::vector<const T*>&, const std::vector<const T*>&,          \
                                     const std::vector<T*>&, Workspace<T>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace tk
