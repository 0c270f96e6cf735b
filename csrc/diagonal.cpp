// Diagonals of H and G (docs/curvature.md §9): only the diagonal blocks touch the diagonal, and
// there the Kronecker structure gives
//   diag[(l, i, j)] = sum_n a~_l[n, i]^2 Q_l[n, j, j]
// i.e. ONE matrix product (a~_l^2)^T q_l per layer, with q_l[n, j] = Q_l[n, j, j].
//
// Only the diagonals of the per-sample Q_l are needed, never the d x d matrices where they
// can be avoided.  Split Q_l = U_l^T U_l + S_l: the GGN part from the k backpropagated rows
// of a square root of H_out (q_l gets the column sums of U_l^2: N k d work; for the Hessian of
// gaussian, whose H_out is indefinite, some rows count with the sign -1: root_sign), and the
// activation-curvature part (Hessian only)
//   S_{L-1} = 0,   S_{l-1} = D_{l-1} W_l S_l W_l^T D_{l-1} + diag(c_{l-1}),  c = e * act''.
// While S_l is diagonal (vector s_l) the diagonal of the next one is one stacked product:
//   diag S_{l-1} = act'(z_{l-1})^2 * (s_l (W_l * W_l)^T) + c_{l-1},
// so for networks with up to two hidden layers (and for relu/identity, where c = 0, at any
// depth) the Hessian's diagonal costs about what the GGN's does: O(N (k + 1) P).  Deeper
// layers of deeper tanh-like networks need S_l as a matrix (the recursion of curvature.cpp,
// O(N d^3)), formed only from the third layer from the top down.
// Chunked over samples like the full matrices; products in BLAS, the rest OpenMP over samples.
#include "diagonal.hpp"

#include <algorithm>

#include "blas.hpp"
#include "curvature.hpp"
#include "workspace.hpp"

namespace tk {

namespace {

inline bool curved(Act f) {
  return f != Act::relu && f != Act::identity;
}

// Values per sample of a chunk of the vector-only diagonals (no S matrices): the chunk tape and
// diag_rows' U rows, S, q and a~^2.  A chunk of ~2 MB of them (common.hpp, chunk_rows; at most
// max_chunk_rows() samples) stays in the core's cache from the forward pass to the last layer's
// product.  Chunks of max_chunk_rows() samples would not stay in cache for wide outputs: U
// alone holds k rows per sample.
idx diag_row_values(const Net& net) {
  const idx k = net.k();
  idx v = tape_values(net, true) + k * k;
  for (idx l = 0; l < net.L(); ++l) v += (k + 3) * net.d[l + 1] + net.d[l] + 1;
  return v;
}

// Per sample (c of them): S (c, H, H) <- S scaled on both sides by d1 (c, H).
template <class T>
void scale_both(idx c, idx H, const T* d1, T* S) {
  parallel_for(c, c * H * H, [&](idx n) {
    const T* d = d1 + n * H;
    T* s = S + n * H * H;
    for (idx i = 0; i < H; ++i)
      for (idx j = 0; j < H; ++j) s[i * H + j] *= d[i] * d[j];
  });
}

// diag(H) or diag(G) summed over samples [n0, n1) (tape rows filled), added to dst.
template <class T>
void diag_rows(const Net& net, const T* theta, const Tape<T>& t, bool mean, bool gn, bool with_s, const vec<T>& Wsq,
               idx n0, idx n1, DiagScratch<T>& sc, T* dst) {
  const idx L = net.L(), k = net.k();
  auto &U = sc.U, &S = sc.S;
  auto &Asq = sc.Asq, &q = sc.q, &y = sc.y, &yt = sc.yt;
  auto& full = sc.full;
  S.resize(L);
  full.assign(L, 0);
  {
    const idx c0 = n0, c = n1 - n0;
    gn_rows(net, theta, t, mean, c0, c, U, gn);
    // S recursion, top down: S[L-1] = 0 (kept as an empty vector).
    if (with_s) {
      S[L - 1].clear();
      for (idx l = L - 1; l >= 1; --l) {
        const idx Hl = net.d[l + 1], Hp = net.d[l];
        const T* W = weights(net, theta, l);  // (Hp, Hl)
        const T* d1 = t.d1[l - 1].data() + c0 * Hp;
        const T* e = t.e[l - 1].data() + c0 * Hp;
        const T* d2 = t.d2[l - 1].data() + c0 * Hp;
        auto& Sp = S[l - 1];
        const bool cur = curved(net.act[l - 1]);
        if (S[l].empty()) {  // S_{l-1} = diag(c_{l-1})
          full[l - 1] = 0;
          if (!cur) {
            Sp.clear();
            continue;
          }
          Sp.resize(c * Hp);
          for (idx i = 0; i < c * Hp; ++i) Sp[i] = e[i] * d2[i];
        } else if (!full[l] && l - 1 == 0) {  // diagonal of S_0 from a diagonal S_1
          Sp.resize(c * Hp);
          gemm<T>(false, true, c, Hp, Hl, T(1), S[l].data(), Hl, Wsq.data(), Hl, T(0), Sp.data(), Hp);
          for (idx i = 0; i < c * Hp; ++i) Sp[i] = d1[i] * d1[i] * Sp[i] + (cur ? e[i] * d2[i] : T(0));
          full[0] = 0;
        } else {           // matrices: S_{l-1} = D W S_l W^T D + diag(c)
          if (!full[l]) {  // a diagonal S_l as matrices
            sc.dg.assign(S[l].begin(), S[l].end());
            S[l].assign(c * Hl * Hl, T(0));
            for (idx n = 0; n < c; ++n)
              for (idx j = 0; j < Hl; ++j) S[l][(n * Hl + j) * Hl + j] = sc.dg[n * Hl + j];
            full[l] = 1;
          }
          y.resize(c * Hl * Hp);  // y_n = S_n W^T (Hl x Hp); S_{l-1} = y_n^T W^T, as S_n is symmetric
          gemm<T>(false, true, c * Hl, Hp, Hl, T(1), S[l].data(), Hl, W, Hl, T(0), y.data(), Hp);
          yt.resize(c * Hp * Hl);
          parallel_for(c, c * Hl * Hp, [&](idx n) {
            for (idx i = 0; i < Hp; ++i)
              for (idx j = 0; j < Hl; ++j) yt[(n * Hp + i) * Hl + j] = y[(n * Hl + j) * Hp + i];
          });
          Sp.resize(c * Hp * Hp);
          gemm<T>(false, true, c * Hp, Hp, Hl, T(1), yt.data(), Hl, W, Hl, T(0), Sp.data(), Hp);
          scale_both<T>(c, Hp, d1, Sp.data());
          if (cur)
            for (idx n = 0; n < c; ++n)
              for (idx i = 0; i < Hp; ++i) Sp[(n * Hp + i) * Hp + i] += e[n * Hp + i] * d2[n * Hp + i];
          full[l - 1] = 1;
        }
      }
    }
    for (idx l = 0; l < L; ++l) {
      const idx di = net.d[l], Da = di + 1, H = net.d[l + 1];
      Asq.resize(c * Da);
      q.resize(c * H);
      const T* a = t.in(l) + c0 * di;
      const bool has_s = with_s && !S[l].empty(), mat = has_s && full[l];
      const T* s = has_s ? S[l].data() : nullptr;
      parallel_for(c, c * (H * (k + 1) + Da), [&](idx n) {
        for (idx i = 0; i < di; ++i) Asq[n * Da + i] = a[n * di + i] * a[n * di + i];
        Asq[n * Da + di] = T(1);
        T* qn = q.data() + n * H;
        for (idx j = 0; j < H; ++j) qn[j] = s ? (mat ? s[(n * H + j) * H + j] : s[n * H + j]) : T(0);
        for (idx r = 0; r < k; ++r) {
          const T* u = U[l].data() + (n * k + r) * H;
          if (root_sign(net.loss, k, r, gn) > 0)
            for (idx j = 0; j < H; ++j) qn[j] += u[j] * u[j];
          else
            for (idx j = 0; j < H; ++j) qn[j] -= u[j] * u[j];
        }
      });
      gemm<T>(true, false, Da, H, c, T(1), Asq.data(), Da, q.data(), H, T(1), dst + net.off[l], H);
    }
  }
}

}  // namespace

template <class T>
void curvature_diag(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws) {
  const idx L = net.L(), k = net.k(), P = net.P();
  // Hessian only: the deepest hidden layer whose S is still diagonal is L-2; S turns into a
  // matrix at the first curved layer l <= L-3 that has another layer below it.
  bool any_curved = false;
  for (idx l = 0; l + 1 < L; ++l) any_curved |= curved(net.act[l]);
  const bool with_s = !gn && any_curved;
  const bool matrices = with_s && L >= 4;
  vec<T>& Wsq = ws.Wsq;  // W_1 * W_1, for the diagonal of S_0
  if (with_s && L >= 2) {
    const T* W = weights(net, theta, 1);
    Wsq.resize(net.d[1] * net.d[2]);
    for (idx i = 0; i < net.d[1] * net.d[2]; ++i) Wsq[i] = W[i] * W[i];
  }
  // Per slice of samples (one per thread), a chunk of C rows at a time on a chunk tape
  // (workspace.hpp): tape, factors and products; slices' sums added.
  const int nt = sample_threads(N, N * (net.macs() * (gn ? 2 + k : 4 + k) + P));
  const idx slice = (N + nt - 1) / nt;
  const idx C = matrices ? chunk_size(net, slice, Need::blocks)
                         : std::min({slice, max_chunk_rows().load(), chunk_rows(diag_row_values(net), P, sizeof(T))});
  auto& slices = ws.diag_slices;
  slices.resize(nt);
  ws.parts.resize((nt - 1) * P);
  ws.chunk_tapes.resize(nt);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    T* dst = tid == 0 ? out : ws.parts.data() + (tid - 1) * P;
    std::fill(dst, dst + P, T(0));
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(C, n1 - n0), !gn);
    over_chunks(n0, n1, C, [&](idx c0, idx c1, bool) {
      curvature_rows(net, theta, X, tg, mean, gn, ct, c0, c1 - c0);
      diag_rows(net, theta, ct, mean, gn, with_s, Wsq, 0, c1 - c0, slices[tid], dst);
    });
#pragma omp barrier
    sum_parts(out, P, [&](idx p) { return ws.parts.data() + (p - 1) * P; });
  });
}

template void curvature_diag<float>(const Net&, const float*, const float*, idx, Targets<float>, bool, bool, float*,
                                    Workspace<float>&);
template void curvature_diag<double>(const Net&, const double*, const double*, idx, Targets<double>, bool, bool,
                                     double*, Workspace<double>&);

}  // namespace tk
