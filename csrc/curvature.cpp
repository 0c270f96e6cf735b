// Exact Hessian and GGN of an MLP from their Kronecker structure.
//
// Math (docs/curvature.md §4-6, cost §12, chunks §13; 0-based layers, a~_l = [a_l, 1] the augmented input of layer l,
// H_l = d[l+1], D_l = diag act'(z_l)).  Per sample:
//   Q_{L-1} = H_out,  Q_{l-1} = D_{l-1} W_l Q_l W_l^T D_{l-1} + diag(e_{l-1} * act''(z_{l-1}))
//   (the GGN drops the diag term: Q_l = U_l^T U_l with U backpropagated from sqrt(H_out)).
//   Block (l, m), l <= m, of the Hessian/GGN:
//     H[(l,i,j), (m,i',j')] += a~_l[i] a~_m[i'] M^{(l,m)}[j, j'],   M^{(l,m)} = B_{m,l}^T Q_m
//   and, Hessian only, for l < m (the bilinear coupling W_m * a_{m-1}; i' a true unit of a_m-input):
//     H[(l,i,j), (m,i',j')] += a~_l[i] g_m[j'] act'(z_{m-1})[i'] B_{m-1,l}[i', j]
// Summed over samples, each term is ONE matrix product over the sample index: e.g.
//   K[(i,i'), (j',j)] = sum_n (a~_l[n,i] a~_m[n,i']) (M^{(l,m)}_n[j,j'])
// costs 2 N P_l P_m, followed by an index permutation into the block.  Diagonal blocks
// use the symmetry of both factors (i <= i', j <= j'): a quarter of the products.  So the
// full G costs at most about N P^2/2 multiply-adds and H less than N P^2, whatever the number
// of outputs (docs/curvature.md §12).
//
// Parallel strategy: samples are processed in chunks (bounded workspace); per-sample
// factors come from stacked products (BLAS, N*rows x d) and per-sample loops (OpenMP over
// samples); the big Kronecker products are BLAS calls accumulating over chunks into
// per-block buffers; the final permutation writes each output element once, OpenMP over rows.
#include "curvature.hpp"

#include <algorithm>
#include <type_traits>

#include "accumulators.hpp"
#include "blas.hpp"
#include "gram.hpp"
#include "lanes.hpp"
#include "workspace.hpp"

namespace tk {

namespace {

// Packed index of (a, b), a <= b, in the row-major upper triangle of an n x n matrix.
inline idx tri(idx a, idx b, idx n) {
  return a * n - a * (a - 1) / 2 + (b - a);
}

// Per sample n < c: C_n (p x q) = A_n^T B_n, A_n (r x p), B_n (r x q).
template <class T>
void batched_AtB(idx c, idx r, idx p, idx q, const T* A, const T* B, T* C) {
  parallel_for(c, c * r * p * q, [&](idx n) {
    T* Cn = C + n * p * q;
    std::fill(Cn, Cn + p * q, T(0));
    for (idx t = 0; t < r; ++t) {
      const T* a = A + (n * r + t) * p;
      const T* b = B + (n * r + t) * q;
      for (idx i = 0; i < p; ++i) {
        const T ai = a[i];
        for (idx j = 0; j < q; ++j) Cn[i * q + j] += ai * b[j];
      }
    }
  });
}

// Per sample: X (c, rows, cols) columns scaled by s[n, col] (s has row stride cols).
template <class T>
void scale_cols(idx c, idx rows, idx cols, const T* s, T* X) {
  parallel_for(c, c * rows * cols, [&](idx n) {
    for (idx r = 0; r < rows; ++r)
      for (idx j = 0; j < cols; ++j) X[(n * rows + r) * cols + j] *= s[n * cols + j];
  });
}

// Augmented inputs of layer l for the chunk: (c, d[l]+1).
template <class T>
void augmented(const Net& net, const Tape<T>& t, idx l, idx n0, idx c, vec<T>& A) {
  const idx di = net.d[l];
  A.resize(c * (di + 1));
  const T* a = t.in(l) + n0 * di;
  for (idx n = 0; n < c; ++n) {
    std::copy(a + n * di, a + (n + 1) * di, A.data() + n * (di + 1));
    A[n * (di + 1) + di] = T(1);
  }
}

// Kd (Da(Da+1)/2, H(H+1)/2) = beta Kd + sum_n tri(a~ a~^T) tri(Q_n)^T for one layer.
template <class T>
void diag_block_product(idx c, idx Da, idx H, const T* A, const T* Q, vec<T>& Lf, vec<T>& Rf, T beta, T* Kd) {
  const idx DP = Da * (Da + 1) / 2, HP = H * (H + 1) / 2;
  Lf.resize(c * DP);
  Rf.resize(c * HP);
  parallel_for(c, c * (DP + HP), [&](idx n) {
    const T* a = A + n * Da;
    T* lf = Lf.data() + n * DP;
    for (idx i = 0; i < Da; ++i)
      for (idx i2 = i; i2 < Da; ++i2) *lf++ = a[i] * a[i2];
    const T* q = Q + n * H * H;
    T* rf = Rf.data() + n * HP;
    for (idx j = 0; j < H; ++j)
      for (idx j2 = j; j2 < H; ++j2) *rf++ = q[j * H + j2];
  });
  gemm<T>(true, false, DP, HP, c, T(1), Lf.data(), DP, Rf.data(), HP, beta, Kd, HP);
}

// Block (P_l x P_l, leading dimension ld) from its packed Kronecker sum:
// out[(i, j), (i2, j2)] = Kd[tri(i, i2)][tri(j, j2)] (each index pair taken in order).  One packed
// row of Kd (H(H+1)/2 values) at a time, written into the H rows' segments it fills: the row
// stays in cache, and within it j2 < j steps down column j (tri(j2 + 1, j) - tri(j2, j) =
// H - j2 - 1) and j2 >= j is row j's contiguous run.
template <class T>
void unpack_diag_block(idx Da, idx H, const T* Kd, T* out, idx ld) {
  const idx HP = H * (H + 1) / 2;
  parallel_for(Da, Da * Da * H * H, [&](idx i) {
    for (idx i2 = 0; i2 < Da; ++i2) {
      const T* k = Kd + tri(std::min(i, i2), std::max(i, i2), Da) * HP;
      for (idx j = 0; j < H; ++j) {
        T* seg = out + (i * H + j) * ld + i2 * H;
        idx p = j;  // tri(0, j)
        for (idx j2 = 0; j2 < j; p += H - j2 - 1, ++j2) seg[j2] = k[p];
        const T* run = k + tri(j, j, H) - j;
        for (idx j2 = j; j2 < H; ++j2) seg[j2] = run[j2];
      }
    }
  });
}

}  // namespace

idx chunk_size(const Net& net, idx N, Need need, idx room) {
  const idx budget = std::max(idx(1) << 23, room);  // values (64 MiB in float64)
  const idx foot = tape_values(net, true) + factor_values(net, need);
  return std::max<idx>(1, std::min<idx>({N, max_chunk_rows().load(), budget / std::max<idx>(foot, 1)}));
}

template <class T>
void curvature_rows(const Net& net, const T* theta, const T* X, Targets<T> tg, bool mean, bool gn, Tape<T>& ct, idx c0,
                    idx c) {
  const Targets<T> tc = rows_at(ct, net, X, tg, c0);
  forward_rows(net, theta, ct, 0, c, !gn);
  head_rows(net, ct, tc, mean, 0, c, !gn);
  if (!gn) backprop_rows(net, theta, ct, 0, c);
}

template <class T>
void gn_rows(const Net& net, const T* theta, const Tape<T>& t, bool mean, idx n0, idx c, std::vector<vec<T>>& U,
             bool gn) {
  // U_{L-1} rows: a square root R of H_out (R^T R = H_out), then backpropagated.
  //   mse: H_out = 2s/k I, R = sqrt(2s/k) I;  ce: H_out = s (diag p - p p^T), row r = sqrt(s p_r) (e_r - p).
  // Without gn, the Hessian's H_out: gaussian's rows then carry root_sign (formulas.hpp).
  const idx L = net.L(), k = net.k();
  const T s = sample_weight<T>(t.N, mean);
  const T* P = net.loss != Loss::mse ? t.p.data() + n0 * k : nullptr;
  U.resize(L);
  U[L - 1].resize(c * k * k);
  root_rows(net, c, P, t.w ? t.w + n0 : nullptr, s, gn, U[L - 1].data());
  backward_rows(net, theta, t, n0, c, k, U);
}

template <class T>
void root_rows(const Net& net, idx c, const T* p, const T* w, T s, bool gn, T* R) {
  const idx k = net.k();
  with_loss(net.loss, [&](auto loss) {
    for (idx n = 0; n < c; ++n) {
      const T* pn = p ? p + n * k : nullptr;
      const T sn = row_weight(w, s, n);
      for (idx r = 0; r < k; ++r)
        for (idx j = 0; j < k; ++j) R[(n * k + r) * k + j] = curvature_root(loss.value, k, pn, r, j, sn, gn);
    }
  });
}

namespace {

// The GGN's factors from the rows U of gn_rows (docs/curvature.md §6): Q[l] = U_l^T U_l and, for
// the full matrix, Tm[l][m] = U_m^T U_l.
template <class T>
void gn_factors(const Net& net, Need need, idx c, Factors<T>& f) {
  const idx L = net.L(), k = net.k();
  for (idx l = 0; l < L; ++l) {
    const idx H = net.d[l + 1];
    f.Q[l].resize(c * H * H);
    batched_AtB<T>(c, k, H, H, f.U[l].data(), f.U[l].data(), f.Q[l].data());
    if (need == Need::full)
      for (idx m = l + 1; m < L; ++m) {
        f.Tm[l][m].resize(c * net.d[m + 1] * H);
        batched_AtB<T>(c, k, net.d[m + 1], H, f.U[m].data(), f.U[l].data(), f.Tm[l][m].data());
      }
  }
}

// The Hessian's Q_{L-1} = H_out per sample (formulas.hpp): P the chunk's softmax (ce) or the
// outputs' l'' (elementwise heads), or null (mse).
template <class T>
void output_hessian(Loss loss, idx k, const T* P, T s0, const T* w, idx c, vec<T>& Q) {
  Q.assign(c * k * k, T(0));
  for (idx n = 0; n < c; ++n) {
    T* q = Q.data() + n * k * k;
    const T s = row_weight(w, s0, n);
    for (idx i = 0; i < k; ++i)
      for (idx j = 0; j < k; ++j)
        q[i * k + j] = out_curvature(loss, k, P ? P + n * k : nullptr, i, j, s);
  }
}

// One layer down from Tm[l][.], for the full matrix: Tm[l-1][m] = Tm[l][m] W_l^T D_{l-1} (m > l)
// and Tm[l-1][l] = y D_{l-1}, with y = Q_l W_l^T (f.y) and d1 the chunk's act'(z_{l-1}).
template <class T>
void tm_below(const Net& net, idx l, const T* W, const T* d1, idx c, Factors<T>& f) {
  const idx L = net.L(), Hl = net.d[l + 1], Hp = net.d[l];
  for (idx m = l + 1; m < L; ++m) {
    auto& Tn = f.Tm[l - 1][m];
    Tn.resize(c * net.d[m + 1] * Hp);
    gemm<T>(false, true, c * net.d[m + 1], Hp, Hl, T(1), f.Tm[l][m].data(), Hl, W, Hl, T(0), Tn.data(), Hp);
    scale_cols<T>(c, net.d[m + 1], Hp, d1, Tn.data());
  }
  f.Tm[l - 1][l].assign(f.y.begin(), f.y.end());
  scale_cols<T>(c, Hl, Hp, d1, f.Tm[l - 1][l].data());
}

// One layer down from Q_l: Q_{l-1} = yt W_l^T D_{l-1} + diag(e_{l-1} * act''(z_{l-1})), with
// yt = D_{l-1} y^T = D_{l-1} W_l Q_l (Q_l is symmetric) from y = Q_l W_l^T (f.y).
template <class T>
void q_below(const Net& net, const Tape<T>& t, idx l, const T* W, idx n0, idx c, Factors<T>& f) {
  const idx Hl = net.d[l + 1], Hp = net.d[l];
  const T* d1 = t.d1[l - 1].data() + n0 * Hp;
  f.yt.resize(c * Hp * Hl);
  parallel_for(c, c * Hl * Hp, [&](idx n) {
    for (idx i = 0; i < Hp; ++i)
      for (idx j = 0; j < Hl; ++j) f.yt[(n * Hp + i) * Hl + j] = d1[n * Hp + i] * f.y[(n * Hl + j) * Hp + i];
  });
  auto& Qp = f.Q[l - 1];
  Qp.resize(c * Hp * Hp);
  gemm<T>(false, true, c * Hp, Hp, Hl, T(1), f.yt.data(), Hl, W, Hl, T(0), Qp.data(), Hp);
  scale_cols<T>(c, Hp, Hp, d1, Qp.data());
  const T* e = t.e[l - 1].data() + n0 * Hp;
  const T* d2 = t.d2[l - 1].data() + n0 * Hp;
  for (idx n = 0; n < c; ++n)
    for (idx i = 0; i < Hp; ++i) Qp[(n * Hp + i) * Hp + i] += e[n * Hp + i] * d2[n * Hp + i];
}

// The Hessian's term-3 factors S[l][m] = B^T_{m-1,l} D_{m-1}, m >= l + 2, walking B up from
// B^T_{l+1,l} = D_l W_{l+1} by B^T_{m,l} = S[l][m] W_m.
template <class T>
void term3_factors(const Net& net, const T* theta, const Tape<T>& t, idx n0, idx c, Factors<T>& f) {
  const idx L = net.L();
  vec<T> B;
  for (idx l = 0; l + 2 < L; ++l) {
    const idx H = net.d[l + 1];
    const T* d1l = t.d1[l].data() + n0 * H;
    const T* W1 = weights(net, theta, l + 1);  // (H, d[l+2])
    const idx H1 = net.d[l + 2];
    B.resize(c * H * H1);
    for (idx n = 0; n < c; ++n)
      for (idx i = 0; i < H; ++i)
        for (idx j = 0; j < H1; ++j) B[(n * H + i) * H1 + j] = d1l[n * H + i] * W1[i * H1 + j];
    for (idx m = l + 2; m < L; ++m) {  // B holds B^T_{m-1,l}: (c, H, d[m])
      const idx Hm = net.d[m];
      auto& Sm = f.S[l][m];
      Sm.assign(B.begin(), B.end());
      scale_cols<T>(c, H, Hm, t.d1[m - 1].data() + n0 * Hm, Sm.data());
      if (m + 1 < L) {
        B.resize(c * H * net.d[m + 1]);
        gemm<T>(false, false, c * H, net.d[m + 1], Hm, T(1), Sm.data(), Hm, weights(net, theta, m), net.d[m + 1], T(0),
                B.data(), net.d[m + 1]);
      }
    }
  }
}

}  // namespace

// GGN: the rows U (gn_rows), then Q and Tm from them.  Hessian: Q_{L-1} = H_out, then down the
// layers y = Q_l W_l^T (one product over the chunk's rows), and from it Tm[l-1][.] and Q_{l-1};
// then the term-3 factors S.  Tm and S only for the full matrix.
template <class T>
void chunk_factors(const Net& net, const T* theta, const Tape<T>& t, bool mean, bool gn, Need need, idx n0, idx c,
                   Factors<T>& f) {
  const idx L = net.L(), k = net.k();
  f.Q.resize(L);
  if (need == Need::full) {
    f.Tm.resize(L);
    f.S.resize(L);
    for (idx l = 0; l < L; ++l) f.Tm[l].resize(L), f.S[l].resize(L);
  }
  if (gn) {
    gn_rows(net, theta, t, mean, n0, c, f.U);
    if (need != Need::diag) gn_factors(net, need, c, f);
    return;
  }
  const T* P = net.loss != Loss::mse ? t.p.data() + n0 * k : nullptr;
  output_hessian(net.loss, k, P, sample_weight<T>(t.N, mean), t.w ? t.w + n0 : nullptr, c, f.Q[L - 1]);
  for (idx l = L - 1; l >= 1; --l) {
    const idx Hl = net.d[l + 1], Hp = net.d[l];
    const T* W = weights(net, theta, l);  // (Hp, Hl)
    f.y.resize(c * Hl * Hp);
    gemm<T>(false, true, c * Hl, Hp, Hl, T(1), f.Q[l].data(), Hl, W, Hl, T(0), f.y.data(), Hp);
    if (need == Need::full) tm_below(net, l, W, t.d1[l - 1].data() + n0 * Hp, c, f);
    q_below(net, t, l, W, n0, c, f);
  }
  if (need == Need::full) term3_factors(net, theta, t, n0, c, f);
}

namespace {

// ---------------------------------------------------------------------------------------
// Full matrices of tiny networks, eight samples per SIMD vector (lanes.hpp), for networks of
// at most 400 parameters (split over threads by whole vectors of samples): the GGN of any depth,
// the Hessian of one hidden layer.  The seed's [2,8,1] (P = 33, N = 100) costs ~10k vector
// multiply-adds this way, where the Kronecker path below sets up ~10 small products per chunk;
// up to 400 parameters the lanes GGN beat the Kronecker and Gram routes by 1.1-4x.  The Hessian
// of two hidden layers or more carries every activation's gradient forward (term 3, JA), which
// made it 15-25x slower than the Kronecker route, so it stays there.  Both accumulate the lower
// triangle per lane, summed over lanes and mirrored at the end.
constexpr idx kLanesMaxFullParams = 400;

// Rows of a square root R of H_out, S[r * k + j] = R[r, j], per sample from formulas.hpp's
// curvature_root (lanes b < nb; zero in the others), sw the lanes' sample weights and p the head's
// H_out values (lanes_output_gradient; not read for mse); gn picks the GGN's rows, else the
// Hessian's (gaussian's, indefinite, carry root_sign).
template <class T>
void out_sqrt_rows(const Net& net, const typename Lanes<T>::type& sw, idx nb, const typename Lanes<T>::type* p,
                   bool gn, typename Lanes<T>::type* S) {
  const idx k = net.k();
  const bool mse = net.loss == Loss::mse;
  T pb[kLanesMaxWidth];
  lanes_fill<T>(S, k * k, typename Lanes<T>::type{});
  for (idx b = 0; b < nb; ++b) {
    if (!mse)
      for (idx j = 0; j < k; ++j) pb[j] = p[j][b];
    for (idx r = 0; r < k; ++r)
      for (idx j = 0; j < k; ++j) S[r * k + j][b] = curvature_root(net.loss, k, mse ? nullptr : pb, r, j, sw[b], gn);
  }
}

// Rank-one updates of a per-lane lower triangle, buffered: rows u (each `width` lanes, the
// parameters padded with zeros to a whole tile) are collected, and every kOuterRows of them are
// added at once, acc += sum_b u_b u_b^T, tile by tile with each tile's sums held in registers
// across the rows.  Adding each row on its own read and wrote all of acc (P (P + 1) / 2 lanes,
// past the first-level cache for P ~ 60) per row, and that traffic, not the multiply-adds, set
// the speed.
template <class T>
class LanesOuter {
 public:
  using Lane = typename Lanes<T>::type;
  static constexpr idx kOuterRows = 16;
  // Tiles of kTile x kTile lanes: 16 sums and 8 operands in registers where a lane is one
  // register (AVX-512 doubles, AVX floats), 2 x 2 where it is a row of them.
  static constexpr idx kTile = sizeof(Lane) <= kVectorBytes ? 4 : 2;

  static idx width(idx P) { return (P + kTile - 1) / kTile * kTile; }
  // Lanes of scratch for P parameters: the triangle, then the buffered rows.
  static idx lanes(idx P) { return tri_lanes(P) + kOuterRows * width(P); }

  // acc and the rows at `scratch` (lanes(P) lanes), zeroed.
  LanesOuter(Lane* scratch, idx P) : acc_(scratch), rows_(scratch + tri_lanes(P)), P_(P), w_(width(P)) {
    lanes_fill<T>(scratch, lanes(P), Lane{});
  }
  // The next row to fill (its first P lanes; the padding stays zero), whose u u^T push adds
  // times sign: +1, or -1 for the negative rows of an indefinite H_out (formulas.hpp's
  // root_sign).  The buffer fills with the positive rows from its start and the negative ones
  // from its end, so that the tiles add the first and subtract the second, with no sign to apply.
  Lane* row(int sign = 1) {
    neg_ = sign < 0;
    return rows_ + (neg_ ? kOuterRows - 1 - n_neg_ : n_pos_) * w_;
  }
  void push() {
    ++(neg_ ? n_neg_ : n_pos_);
    if (n_pos_ + n_neg_ == kOuterRows) flush();
  }
  void flush() {
    for (idx p0 = 0; p0 < w_; p0 += kTile)
      for (idx q0 = 0; q0 <= p0; q0 += kTile) tile(p0, q0);
    n_pos_ = n_neg_ = 0;
  }
  // The accumulated triangle (after flush), rows of the padded width's triangle: its first
  // P (P + 1) / 2 lanes are P's.
  Lane* triangle() { return acc_; }

 private:
  static idx tri_lanes(idx P) { return width(P) * (width(P) + 1) / 2; }

  void tile(idx p0, idx q0) {
    Lane c[kTile][kTile] = {};
    auto add = [&](idx b, auto sign) {
      const Lane* u = rows_ + b * w_;
      Lane up[kTile], uq[kTile];
      for (idx i = 0; i < kTile; ++i) up[i] = u[p0 + i], uq[i] = u[q0 + i];
      for (idx i = 0; i < kTile; ++i)
        for (idx j = 0; j < kTile; ++j) {
          if constexpr (decltype(sign)::value > 0)
            c[i][j] += up[i] * uq[j];
          else
            c[i][j] -= up[i] * uq[j];
        }
    };
    for (idx b = 0; b < n_pos_; ++b) add(b, std::integral_constant<int, 1>{});
    for (idx b = kOuterRows - n_neg_; b < kOuterRows; ++b) add(b, std::integral_constant<int, -1>{});
    for (idx i = 0; i < kTile; ++i) {
      Lane* row = acc_ + (p0 + i) * (p0 + i + 1) / 2;
      for (idx j = 0; j < kTile && q0 + j <= p0 + i; ++j) row[q0 + j] += c[i][j];
    }
  }

  Lane* acc_;
  Lane* rows_;
  idx P_, w_, n_pos_ = 0, n_neg_ = 0;
  bool neg_ = false;  // the row being filled has sign -1
};

// out (P, P) from the per-lane lower triangle.
template <class T>
void lanes_mirror(const typename Lanes<T>::type* acc, idx P, T* out) {
  for (idx p = 0, t = 0; p < P; ++p)
    for (idx q = 0; q <= p; ++q, ++t) {
      T v = 0;
      for (idx b = 0; b < kLanes; ++b) v += acc[t][b];
      out[p * P + q] = out[q * P + p] = v;
    }
}

// Work (vector multiply-adds per sample, roughly) of the lanes path: the outer products.
idx full_lanes_work(const Net& net, bool gn) {
  idx rank1 = net.k();
  if (!gn)
    for (idx l = 0; l + 1 < net.L(); ++l)
      if (net.act[l] != Act::relu && net.act[l] != Act::identity) rank1 += net.d[l + 1];  // act'' terms
  return rank1 * net.P() * net.P() / 2;
}

}  // namespace

bool full_lanes_apply(const Net& net, bool gn) {
  return net.P() <= kLanesMaxFullParams && lanes_fit(net) && (gn || net.L() <= 2);
}

namespace {

// The GGN: per sample the rows u_r = J^T s_r (s_r backpropagated: [a_i delta_j; delta_j] per
// layer), J^T H_out J = sum_r u_r u_r^T.  With grad, also the gradient (the output gradient
// backpropagated the same way and summed) and the returned sum of the per-sample losses:
// loss_grad_ggn's one sweep.
template <class T>
double ggn_lanes(const Net& net, const T* theta, const T* X, idx N, idx n_begin, idx n_end, Targets<T> tg, bool mean,
                 T* out, T* grad, vec<T>& scratch) {
  using Lane = typename Lanes<T>::type;
  constexpr idx B = kLanes;
  const idx L = net.L(), k = net.k(), P = net.P();
  const T s = sample_weight<T>(N, mean);
  const LaneLayout lay(net);
  const idx grad_lanes = grad ? P : 0;  // the gradient's sum
  Lane* A = lanes_scratch(scratch, 2 * lay.units + 2 * lay.width + k * k + k + grad_lanes + LanesOuter<T>::lanes(P));
  Lane* D1 = A + lay.units;
  Lane* delta = D1 + lay.units;
  Lane* next = delta + lay.width;
  Lane* S = next + lay.width;
  Lane* gout = S + k * k;
  Lane* gsum = gout + k;
  LanesOuter<T> outer(gsum + grad_lanes, P);
  const Lane zero = {};
  if (grad) lanes_fill<T>(gsum, P, zero);
  double loss = 0;
  for (idx n0 = n_begin; n0 < n_end && !lanes_interrupted(n0, n_begin); n0 += B) {
    const idx nb = lanes_load(net, X, N, n0, A);
    const Lane sw = lanes_weights(tg, s, n0, nb);
    lanes_forward(net, theta, lay, A, D1, static_cast<Lane*>(nullptr));
    const Lane* F = A + lay.at[L];
    if (grad) loss += lanes_loss_sum<T>(net, F, tg, n0, nb);
    if (grad || net.loss != Loss::mse)  // next: the head's H_out values (the softmax for ce)
      lanes_output_gradient<T>(net, F, tg, n0, nb, sw, next, gout);
    out_sqrt_rows<T>(net, sw, nb, next, true, S);  // before backprop, which takes next as scratch
    if (grad) {
      std::copy(gout, gout + k, delta);
      lanes_backprop<true, T>(net, theta, lay, A, D1, delta, next, gsum);
    }
    for (idx r = 0; r < k; ++r) {
      std::copy(S + r * k, S + (r + 1) * k, delta);
      lanes_backprop<false, T>(net, theta, lay, A, D1, delta, next, outer.row());
      outer.push();
    }
  }
  outer.flush();
  lanes_mirror<T>(outer.triangle(), P, out);
  if (grad)
    for (idx q = 0; q < P; ++q) {
      T v = 0;
      for (idx b = 0; b < B; ++b) v += gsum[q][b];
      grad[q] = v;
    }
  return loss;
}

// The Hessian, per sample, from the computational graph (adjoint times each node's second
// derivative, on the Jacobians of its inputs):
//   J_f^T H_out J_f                                     (the GGN: rows u_r = J_f^T s_r)
// + sum over hidden units j of layer l: e_l[j] act''(z_l[j]) grad z_l[j] grad z_l[j]^T
// + sum over l >= 1, i, j: g_l[j] (E_{W_l[i,j]} grad a_l[i]^T + transposed)    (z = a W is bilinear)
// with g_l = dloss/dz_l, e_l = dloss/da_{l+1}, and the output's Jacobian grad z_{L-1} carried
// forward.  relu and identity have act'' = 0: no term of that kind.  Networks of one hidden layer
// or none (full_lanes_apply): grad z_0[i] has d0 + 1 entries (x_m at W_0[m, i], 1 at b_0[i]),
// used in that form and not stored (for the seed, 8x fewer operations than dense rows), and
// grad a_1[i] = act'(z_0[i]) grad z_0[i] likewise.
template <class T>
void hessian_lanes(const Net& net, const T* theta, const T* X, idx N, idx n_begin, idx n_end, Targets<T> tg, bool mean,
                   T* out, vec<T>& scratch) {
  using Lane = typename Lanes<T>::type;
  constexpr idx B = kLanes;
  const idx L = net.L(), k = net.k(), P = net.P(), d0 = net.d[0], d1w = net.d[1];
  const T s = sample_weight<T>(N, mean);
  const LaneLayout lay(net);
  auto idx0 = [&](idx m, idx i) { return m < d0 ? m * d1w + i : d0 * d1w + i; };  // W_0[m, i], m = d0: b_0[i]
  Lane* A = lanes_scratch(scratch, 3 * lay.units + k + k * P + k * k + k + LanesOuter<T>::lanes(P));
  Lane* D1 = A + lay.units;
  Lane* D2 = D1 + lay.units;
  Lane* G = D2 + lay.units;  // the output gradient g_{L-1}: k
  Lane* JZ = G + k;  // grad z_{L-1}: k x P
  Lane* S = JZ + k * P;
  Lane* p = S + k * k;
  LanesOuter<T> outer(p + k, P);  // the GGN term's rows; the other terms go to its triangle directly
  Lane* acc = outer.triangle();
  const Lane zero = {}, one = zero + T(1);
  for (idx n0 = n_begin; n0 < n_end && !lanes_interrupted(n0, n_begin); n0 += B) {
    const idx nb = lanes_load(net, X, N, n0, A);
    lanes_forward(net, theta, lay, A, D1, D2);
    const Lane* x = A;
    auto v0 = [&](idx m) { return m < d0 ? x[m] : one; };  // entry of grad z_0[i] at idx0(m, i)
    // grad z_{L-1}: layer 0's entries through grad a_1 (L = 2), then its own layer's.
    {
      const idx l = L - 1, di = net.d[l], dn = net.d[l + 1], below = net.off[l];
      const T* W = weights(net, theta, l);
      const Lane* a = A + lay.at[l];
      for (idx j = 0; j < dn; ++j) {
        Lane* jz = JZ + j * P;
        if (l == 1)
          for (idx i = 0; i < di; ++i) {
            const Lane w = D1[lay.at[1] + i] * W[i * dn + j];
            for (idx m = 0; m <= d0; ++m) jz[idx0(m, i)] = w * v0(m);
          }
        lanes_fill<T>(jz + below, P - below, zero);
        for (idx i = 0; i < di; ++i) jz[below + i * dn + j] = a[i];
        jz[below + di * dn + j] = one;
      }
    }
    // Output gradient g_1 (zero in unused lanes), then with a hidden layer the act'' terms of
    // e_0 and the bilinear terms of g_1.
    const Lane* F = A + lay.at[L];
    const Lane sw = lanes_weights(tg, s, n0, nb);
    lanes_output_gradient<T>(net, F, tg, n0, nb, sw, p, G);  // p: the head's H_out values
    out_sqrt_rows<T>(net, sw, nb, p, false, S);
    auto at_acc = [&](idx r, idx q) -> Lane& { return acc[r * (r + 1) / 2 + q]; };  // r >= q
    if (L == 2) {
      const idx l = 1, di = net.d[l], dn = net.d[l + 1];
      const T* W = weights(net, theta, l);
      const Lane* gl = G;
      const bool curved = net.act[0] != Act::relu && net.act[0] != Act::identity;
      for (idx i = 0; i < di && curved; ++i) {
        Lane e = zero;
        for (idx j = 0; j < dn; ++j) e += gl[j] * W[i * dn + j];
        const Lane c = e * D2[lay.at[l] + i];  // e act'' grad z_0[i] grad z_0[i]^T
        for (idx m = 0; m <= d0; ++m)
          for (idx m2 = 0; m2 <= m; ++m2) at_acc(idx0(m, i), idx0(m2, i)) += c * v0(m) * v0(m2);
      }
      // g_l[j] grad a_l[i] in the rows of W_l[i, j] (columns of the layers below: lower triangle).
      for (idx i = 0; i < di; ++i)
        for (idx j = 0; j < dn; ++j) {
          const idx row = net.off[l] + i * dn + j;
          Lane* r = acc + row * (row + 1) / 2;
          const Lane w = gl[j] * D1[lay.at[1] + i];
          for (idx m = 0; m <= d0; ++m) r[idx0(m, i)] += w * v0(m);
        }
    }
    // J_f^T H_out J_f.
    const Lane* jf = JZ;
    for (idx r = 0; r < k; ++r) {
      Lane* u = outer.row(root_sign(net.loss, k, r, false));
      for (idx q = 0; q < P; ++q) {
        Lane v = zero;
        for (idx j = 0; j < k; ++j) v += S[r * k + j] * jf[j * P + q];
        u[q] = v;
      }
      outer.push();
    }
  }
  outer.flush();
  lanes_mirror<T>(acc, P, out);
}

// The full matrix by the lanes path, the samples split over threads in whole blocks of kLanes
// (a slice ends on a block's edge, so that only the batch's last block has unused lanes), each
// thread with its own accumulator (thread 0's is out, threads 1.. have P x P and then P in
// ws.parts), summed at the end.  With grad (the GGN only) also the gradient, and the loss is
// returned; otherwise 0.
template <class T>
double full_lanes(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                  T* grad, Workspace<T>& ws) {
  const idx P = net.P(), blocks = (N + kLanes - 1) / kLanes, part = P * P + P;
  const int nt = sample_threads(N, N * full_lanes_work(net, gn));
  ws.parts.resize((nt - 1) * part);
  ws.lanes.resize(nt);
  std::vector<double> losses(nt, 0.0);
  over_samples(blocks, nt, [&](int tid, idx b0, idx b1) {
    T* o = tid == 0 ? out : ws.parts.data() + (tid - 1) * part;
    T* g = !grad ? nullptr : tid == 0 ? grad : o + P * P;
    const idx n0 = b0 * kLanes, n1 = std::min(N, b1 * kLanes);
    if (gn)
      losses[tid] = ggn_lanes(net, theta, X, N, n0, n1, tg, mean, o, g, ws.lanes[tid]);
    else
      hessian_lanes(net, theta, X, N, n0, n1, tg, mean, o, ws.lanes[tid]);
#pragma omp barrier
    sum_parts(out, P * P, [&](idx q) { return ws.parts.data() + (q - 1) * part; });
    if (grad) sum_parts(grad, P, [&](idx q) { return ws.parts.data() + (q - 1) * part + P * P; });
  });
  if (!grad) return 0;
  double total = 0;
  for (double v : losses) total += v;
  return data_term(net.loss, net.k(), total, mean ? 1.0 / (double)N : 1.0);
}

}  // namespace

// Lf[(n, i), j] = a[n, i] * b[n, j] for each of c samples: a (c x da), b (c x w), Lf (c*da x w),
// the left factor of a Kronecker term summed over samples by one product.
template <class T>
static void outer_rows(idx c, idx da, const T* a, idx w, const T* b, vec<T>& Lf) {
  Lf.resize(c * da * w);
  parallel_for(c, c * da * w, [&](idx n) {
    for (idx i = 0; i < da; ++i)
      for (idx j = 0; j < w; ++j) Lf[(n * da + i) * w + j] = a[n * da + i] * b[n * w + j];
  });
}

// One chunk of c samples' share of the off-diagonal block (l, m), l < m: its Kronecker part
// into Ko[l][m] and, for the Hessian, its cross term into E3a[l] or E3[l][m] (beta 0 on the
// first chunk, 1 after).
template <class T>
static void accumulate_off_block(const Net& net, const Tape<T>& t, const Factors<T>& f, idx l, idx m, idx c, T beta,
                                 bool gn, Workspace<T>& ws) {
  auto Hd = [&](idx l) { return net.d[l + 1]; };
  const auto& A = ws.A;
  auto& Lf = ws.Lf;
  const idx da = net.d[l] + 1, dm = net.d[m] + 1;
  // Ko[(i,i'), (j',j)] += sum_n a~_l[i] a~_m[i'] Tm[l][m][j',j]
  outer_rows(c, da, A[l].data(), dm, A[m].data(), Lf);
  gemm<T>(true, false, da * dm, Hd(m) * Hd(l), c, T(1), Lf.data(), da * dm, f.Tm[l][m].data(), Hd(m) * Hd(l), beta,
          ws.Ko[l][m].data(), Hd(m) * Hd(l));
  if (gn) return;
  if (m == l + 1) {
    // E3a[(i, j), j'] += sum_n a~_l[i] act'(z_l)[j] g_m[j']
    const idx H = Hd(l);
    outer_rows(c, da, A[l].data(), H, t.d1[l].data(), Lf);
    gemm<T>(true, false, da * H, Hd(m), c, T(1), Lf.data(), da * H, t.g[m].data(), Hd(m), beta, ws.E3a[l].data(),
            Hd(m));
  } else {
    // E3[(i, j'), (j, i')] += sum_n a~_l[i] g_m[j'] S[l][m][j, i']
    const idx Hm = Hd(m);
    outer_rows(c, da, A[l].data(), Hm, t.g[m].data(), Lf);
    const idx cols = Hd(l) * net.d[m];
    gemm<T>(true, false, da * Hm, cols, c, T(1), Lf.data(), da * Hm, f.S[l][m].data(), cols, beta, ws.E3[l][m].data(),
            cols);
  }
}

// Permutes the accumulators into the upper blocks of out (P x P), adding the cross terms, then
// mirrors the upper triangle outside the diagonal blocks.
template <class T>
static void unpack_full(const Net& net, bool gn, const Workspace<T>& ws, T* out) {
  const idx L = net.L(), P = net.P();
  const auto &Kd = ws.Kd, &E3a = ws.E3a;
  const auto &Ko = ws.Ko, &E3 = ws.E3;
  for (idx l = 0; l < L; ++l) {
    const idx da = net.d[l] + 1, H = net.d[l + 1], ol = net.off[l];
    unpack_diag_block<T>(da, H, Kd[l].data(), out + ol * P + ol, P);
    for (idx m = l + 1; m < L; ++m) {
      const idx dm = net.d[m] + 1, Hm = net.d[m + 1], om = net.off[m];
      const T* K = Ko[l][m].data();
      // One (Hm x H) sub-block of K, (i, i2), at a time (it stays in cache), into its H row segments.
      parallel_for(da, da * H * dm * Hm, [&](idx i) {
        for (idx i2 = 0; i2 < dm; ++i2) {
          const T* Kb = K + (i * dm + i2) * (Hm * H);
          for (idx j = 0; j < H; ++j) {
            T* seg = out + (ol + i * H + j) * P + om + i2 * Hm;
            for (idx j2 = 0; j2 < Hm; ++j2) {
              T v = Kb[j2 * H + j];
              if (!gn && i2 < dm - 1) {
                if (m == l + 1) {
                  if (i2 == j) v += E3a[l][(i * H + j) * Hm + j2];
                } else {
                  v += E3[l][m][(i * Hm + j2) * (H * net.d[m]) + j * net.d[m] + i2];
                }
              }
              seg[j2] = v;
            }
          }
        }
      });
    }
  }
  parallel_for(
      P, P * P,
      [&](idx r) {
        // lower triangle outside the diagonal blocks: out[r][q] = out[q][r]
        idx l = 0;
        while (net.off[l + 1] <= r) ++l;
        for (idx q = 0; q < net.off[l]; ++q) out[r * P + q] = out[q * P + r];
      },
      true);
}

template <class T>
void curvature_full(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws) {
  if (gram_applies(net, N, gn)) {
    gram<T>(net, theta, X, N, tg, mean, gn, out, nullptr, ws);
    return;
  }
  if (full_lanes_apply(net, gn)) {
    full_lanes(net, theta, X, N, tg, mean, gn, out, static_cast<T*>(nullptr), ws);
    return;
  }
  const idx L = net.L(), P = net.P();
  full_accumulators(net, gn, ws);
  const idx C = chunk_size(net, N, Need::full, P * P / 2);
  Factors<T>& f = ws.f;
  ws.A.resize(L);
  if (ws.chunk_tapes.empty()) ws.chunk_tapes.resize(1);
  Tape<T>& t = chunk_tape(ws, 0, net, N, std::min(C, N), !gn);
  // An interrupted call (interrupt.hpp) returns between products: out is discarded, and the
  // accumulators are overwritten by the next call's first chunk.
  for (idx n0 = 0; n0 < N; n0 += C) {
    if (interrupted()) return;
    const idx c = std::min(C, N - n0);
    const T beta = n0 == 0 ? T(0) : T(1);
    curvature_rows(net, theta, X, tg, mean, gn, t, n0, c);
    chunk_factors(net, theta, t, mean, gn, Need::full, 0, c, f);
    for (idx l = 0; l < L; ++l) augmented(net, t, l, 0, c, ws.A[l]);
    for (idx l = 0; l < L; ++l) {
      if (interrupted()) return;
      diag_block_product<T>(c, net.d[l] + 1, net.d[l + 1], ws.A[l].data(), f.Q[l].data(), ws.Lf, ws.Rf, beta,
                            ws.Kd[l].data());
      for (idx m = l + 1; m < L; ++m) {
        if (interrupted()) return;
        accumulate_off_block(net, t, f, l, m, c, beta, gn, ws);
      }
    }
  }
  unpack_full(net, gn, ws, out);
}

template <class T>
void curvature_blocks(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn,
                      const std::vector<T*>& outs, Workspace<T>& ws) {
  const idx L = net.L();
  auto &A = ws.A, &Lf = ws.Lf, &Rf = ws.Rf, &Kd = ws.Kd;
  A.resize(L), Kd.resize(L);
  for (idx l = 0; l < L; ++l)
    Kd[l].resize((net.d[l] + 1) * (net.d[l] + 2) / 2 * (net.d[l + 1] * (net.d[l + 1] + 1) / 2));
  idx result = 0;
  for (idx l = 0; l < L; ++l) result += (net.off[l + 1] - net.off[l]) * (net.off[l + 1] - net.off[l]);
  const idx C = chunk_size(net, N, Need::blocks, result / 2);
  Factors<T>& f = ws.f;
  if (ws.chunk_tapes.empty()) ws.chunk_tapes.resize(1);
  Tape<T>& t = chunk_tape(ws, 0, net, N, std::min(C, N), !gn);
  for (idx n0 = 0; n0 < N; n0 += C) {
    if (interrupted()) return;  // as curvature_full
    const idx c = std::min(C, N - n0);
    curvature_rows(net, theta, X, tg, mean, gn, t, n0, c);
    chunk_factors(net, theta, t, mean, gn, Need::blocks, 0, c, f);
    for (idx l = 0; l < L; ++l) {
      if (interrupted()) return;
      augmented(net, t, l, 0, c, A[l]);
      diag_block_product<T>(c, net.d[l] + 1, net.d[l + 1], A[l].data(), f.Q[l].data(), Lf, Rf, n0 == 0 ? T(0) : T(1),
                            Kd[l].data());
    }
  }
  for (idx l = 0; l < L; ++l) {
    const idx Pl = (net.d[l] + 1) * net.d[l + 1];
    unpack_diag_block<T>(net.d[l] + 1, net.d[l + 1], Kd[l].data(), outs[l], Pl);
  }
}

template <class T>
double loss_grad_ggn_lanes(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad, T* G,
                           Workspace<T>& ws) {
  return full_lanes(net, theta, X, N, tg, mean, true, G, grad, ws);
}

#define TK_INST(T)                                                                                                 \
  template double loss_grad_ggn_lanes<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, T*,           \
                                         Workspace<T>&);                                                          \
  template void chunk_factors<T>(const Net&, const T*, const Tape<T>&, bool, bool, Need, idx, idx, Factors<T>&);   \
  template void gn_rows<T>(const Net&, const T*, const Tape<T>&, bool, idx, idx, std::vector<vec<T>>&, bool);      \
  template void root_rows<T>(const Net&, idx, const T*, const T*, T, bool, T*);                                    \
  template void curvature_rows<T>(const Net&, const T*, const T*, Targets<T>, bool, bool, Tape<T>&, idx, idx);     \
  template void curvature_full<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, bool, T*, Workspace<T>&); \
  template void curvature_blocks<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, bool,                   \
                                    const std::vector<T*>&, Workspace<T>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace tk
