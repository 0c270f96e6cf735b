// Products H V and G V for V of shape (P, m): Pearlmutter's R-op, all m directions at once.
//
// Forward tangents (direction c; V_l = [VW_l; Vb_l] is layer l's slice of V):
//   Rz_l = Ra_l W_l + a_l VW_l + Vb_l,      Ra_{l+1} = act'(z_l) * Rz_l      (Ra_0 = 0)
// Backward, starting from Rg_{L-1} = H_out Rz_{L-1} (mse: 2s/k Rf; ce: s (p*r - p (p.r))):
//   R{grad [W_l; b_l]} = [a_l^T Rg_l + Ra_l^T g_l ; 1^T Rg_l]
//   Re_{l-1} = Rg_l W_l^T + g_l VW_l^T,   Rg_{l-1} = Re_{l-1} * act'(z_{l-1}) + e_{l-1} * act''(z_{l-1}) * Rz_{l-1}
// The GGN product G V = J^T H_out J V keeps only the first term of each line.  Where act'' is
// linear in act (tanh, sigmoid, relu, identity: activations.hpp, d2_form), act''(z) Rz is
// formed as (k0 + k1 a) Ra, and neither act'' nor the hidden Rz is kept (d2_term).
//
// Layout: tangents are (N, m, d) so that every product above is ONE matrix product with N*m
// rows; V's layer slices are transposed once to Vt_l[i][c][j] (and Vtt_l[j][c][i]; with m = 1,
// V is used as it is) so that a_l VW_l and g_l VW_l^T are single products too.  All the
// reshuffling is O(P m) or O(N m d); the work is O(N m P) in BLAS.
#include "rop.hpp"

#include <algorithm>
#include <type_traits>

#include "activations.hpp"
#include "blas.hpp"
#include "forward_backward.hpp"
#include "lanes.hpp"
#include "workspace.hpp"

namespace tk {

namespace {

// The Hessian's second-derivative term of Rg below layer l (rg = re * act' + e * T2):
//   T2 = act''(z_{l-1}) Rz_{l-1}, from the stored act'' and Rz (kStored), or, where act'' is
//   linear in act (activations.hpp, d2_form), (k0 + k1 a_l) Ra_l (kLinear), or none (kNone:
//   the Gauss-Newton product, and act'' = 0).
enum D2Term { kNone, kStored, kLinear };

struct D2Source {
  D2Term kind = kNone;
  double k0 = 0, k1 = 0;
};

inline D2Source d2_source(const Net& net, idx l, bool gn) {  // for the output of layer l - 1
  const D2Form f = d2_form(net.act[l - 1]);
  if (gn || f.zero) return {};
  return f.linear ? D2Source{kLinear, f.k0, f.k1} : D2Source{kStored};
}

// T2 at one value: p, q = (d2, rz) for kStored, (a, ra) for kLinear.
template <int K, class T>
inline T d2_term(T p, T q, T k0, T k1) {
  if constexpr (K == kStored) return p * q;
  if constexpr (K == kLinear) return (k0 + k1 * p) * q;
  return T(0);
}

// Calls body(std::integral_constant<int, kind>) for src.kind: the loops compiled per kind.
template <class Body>
void with_d2_term(const D2Source& src, Body&& body) {
  switch (src.kind) {
    case kNone:
      return body(std::integral_constant<int, kNone>{});
    case kStored:
      return body(std::integral_constant<int, kStored>{});
    case kLinear:
      return body(std::integral_constant<int, kLinear>{});
  }
}

// Ra = act'(z) (Rz + Vb) for the rows [r][c][j] of a hidden layer's tangents; Rz + Vb written
// back only when `keep` (a stored act'' term reads it again).
template <class T>
void next_ra(idx n, idx m, idx dn, const T* __restrict vb, const T* __restrict d1, T* __restrict rz, T* __restrict ra,
             bool keep) {
  for (idx r = 0; r < n; ++r)
    for (idx c = 0; c < m; ++c) {
      const idx x = (r * m + c) * dn, y = r * dn;
      const T* __restrict b = vb + c * dn;
      if (keep) {
#pragma omp simd
        for (idx j = 0; j < dn; ++j) {
          const T v = rz[x + j] + b[j];
          rz[x + j] = v;
          ra[x + j] = d1[y + j] * v;
        }
      } else {
#pragma omp simd
        for (idx j = 0; j < dn; ++j) ra[x + j] = d1[y + j] * (rz[x + j] + b[j]);
      }
    }
}

// The backward step of the R-op below through layer l = L-1 when it has one unit and there is
// one direction: Rg (n,) is a scalar per sample, so R{grad} (the layer's slice of dst) and the
// next Rg (written to rg_next, (n, di)) come out of one pass over the rows, where the general
// path issues four products with a dimension of 1 (all memory traffic) and a pass.
// e = g_out w^T is rank one: formed here, not read.
template <class T>
void output_unit_backward(const Net& net, const T* theta, const Tape<T>& t, bool gn, idx l, idx n0, idx n, const T* vw,
                          const T* ra, const T* rz, const T* rg, vec<T>& rg_next, T* rs, T* o, bool add) {
  const idx di = net.d[l];
  rg_next.resize(n * di);
  const T* __restrict a = t.in(l) + n0 * di;
  const T* __restrict w = weights(net, theta, l);
  const T* __restrict d1 = t.d1[l - 1].data() + n0 * di;
  const T* __restrict gl = t.g[l].data() + n0;
  T* __restrict next = rg_next.data();
  T* __restrict ow = o;
  ow[di] = (add ? ow[di] : T(0)) + rs[0];  // the bias: rg's sum (rs is overwritten below)
  T* __restrict sum = rs;                  // column sums of rg_next: the next layer's bias term
  if (!add) std::fill(ow, ow + di, T(0));
  std::fill(sum, sum + di, T(0));
  const D2Source src = d2_source(net, l, gn);
  const T k0 = T(src.k0), k1 = T(src.k1);
  const T* __restrict p = src.kind == kStored ? t.d2[l - 1].data() + n0 * di : a;  // see d2_term
  const T* __restrict q = src.kind == kStored ? rz : ra;
  auto rows = [&](auto kind) {
    constexpr int K = decltype(kind)::value;
    for (idx r = 0; r < n; ++r) {
      const T c = rg[r], g = gn ? T(0) : gl[r];
      const idx x = r * di;
#pragma omp simd  // the captured pointers' __restrict is lost in the lambda: without this, scalar code
      for (idx i = 0; i < di; ++i) {
        T v = ow[i] + a[x + i] * c, re = c * w[i];
        if (!gn) {  // the Hessian's cross terms (with kNone too: relu's act'' = 0)
          v += ra[x + i] * g;
          re += g * vw[i];
        }
        ow[i] = v;
        T y = re * d1[x + i];
        if (K != kNone) y += g * w[i] * d2_term<K>(p[x + i], q[x + i], k0, k1);
        next[x + i] = y;
        sum[i] += y;
      }
    }
  };
  with_d2_term(src, rows);
}

// Rg of the layer below, rows [r][c][i] of n samples and m directions:
//   rg = re * d1 (+ e * T2 for the Hessian, T2 from p, q: see d2_term),
// and rg's column sums (the next bias term, [c][i]) into rs, in the same pass.  p is per
// sample (d2 or a, [r][i]), q per direction (rz or ra, [r][c][i]).
template <int K, class T>
void next_rg(idx n, idx m, idx di, const T* __restrict re, const T* __restrict d1, const T* __restrict e,
             const T* __restrict p, const T* __restrict q, T k0, T k1, T* __restrict rg, T* __restrict rs) {
  std::fill(rs, rs + m * di, T(0));
  for (idx r = 0; r < n; ++r)
    for (idx c = 0; c < m; ++c) {
      const idx x = (r * m + c) * di, y = r * di;
      T* __restrict sum = rs + c * di;
#pragma omp simd
      for (idx i = 0; i < di; ++i) {
        T v = re[x + i] * d1[y + i];
        if (K != kNone) v += e[y + i] * d2_term<K>(p[y + i], q[x + i], k0, k1);
        rg[x + i] = v;
        sum[i] += v;
      }
    }
}

// Layer l's slice of the directions as Vt[l][i][c][j]; with one direction V's own slice, which
// has that layout already (rop).
template <class T>
const T* direction_slice(const Net& net, const T* V, idx m, const Workspace<T>& ws, idx l) {
  return m == 1 ? V + net.off[l] : ws.Vt[l].data();
}

// Rz of a one-unit output layer for one direction, vb its Vb: two dot products a row, one pass.
template <class T>
void output_unit_forward(idx n, idx di, const T* __restrict a, const T* __restrict ra, const T* __restrict vw,
                         const T* __restrict w, T vb, T* __restrict rz) {
  for (idx r = 0; r < n; ++r) {
    T sum = vb;
#pragma omp simd reduction(+ : sum)
    for (idx i = 0; i < di; ++i) sum += a[r * di + i] * vw[i] + ra[r * di + i] * w[i];
    rz[r] = sum;
  }
}

// The forward tangents of the chunk's n rows: Rz_l = Ra_l W_l + a_l VW_l + Vb_l and
// Ra_{l+1} = act'(z_l) Rz_l, a hidden layer's Vb added in the pass that forms Ra.  With many
// directions a chunk is long: an interrupted call (interrupt.hpp) returns between layers, false.
template <class T>
bool forward_tangents(const Net& net, const T* theta, const Tape<T>& t, const T* V, idx m, bool gn,
                      const Workspace<T>& ws, idx n0, idx n, typename Workspace<T>::Slice& sc) {
  const idx L = net.L();
  for (idx l = 0; l < L; ++l) {
    if (interrupted()) return false;
    const idx di = net.d[l], dn = net.d[l + 1];
    const bool hidden = l + 1 < L;
    const T* vt = direction_slice(net, V, m, ws, l);
    T* rz = sc.Rz[l].data();
    const T* vb = vt + di * m * dn;
    if (!hidden && dn == 1 && m == 1 && l > 0) {
      output_unit_forward(n, di, t.in(l) + n0 * di, sc.Ra[l].data(), vt, weights(net, theta, l), vb[0], rz);
      continue;
    }
    if (!hidden)
      for (idx r = 0; r < n; ++r) std::copy(vb, vb + m * dn, rz + r * m * dn);
    gemm<T>(false, false, n, m * dn, di, T(1), t.in(l) + n0 * di, di, vt, m * dn, T(hidden ? 0 : 1), rz, m * dn);
    if (l > 0)
      gemm<T>(false, false, n * m, dn, di, T(1), sc.Ra[l].data(), di, weights(net, theta, l), dn, T(1), rz, dn);
    if (hidden)
      next_ra(n, m, dn, vb, t.d1[l].data() + n0 * dn, rz, sc.Ra[l + 1].data(),
              d2_source(net, l + 1, gn).kind == kStored);
  }
  return true;
}

// Rg_{L-1} = H_out Rz_{L-1} (formulas.hpp) for the chunk's n rows and m directions, and Rg's
// column sums into rs.
template <class T>
void out_curvature(const Net& net, const Tape<T>& t, bool mean, bool gn, idx m, idx n0, idx n,
                   typename Workspace<T>::Slice& sc) {
  const idx L = net.L(), k = net.k();
  const T s = sample_weight<T>(t.N, mean);
  sc.Rg.resize(n * m * k);
  const T* rf = sc.Rz[L - 1].data();
  T* rg = sc.Rg.data();
  if (net.loss == Loss::mse && t.w) {
    for (idx r = 0; r < n; ++r) {
      const T c2 = mse_curvature(k, row_weight(t.w, s, n0 + r));
      for (idx i = r * m * k; i < (r + 1) * m * k; ++i) rg[i] = c2 * rf[i];
    }
  } else if (net.loss == Loss::mse) {
    const T c2 = mse_curvature(k, s);
    for (idx i = 0; i < n * m * k; ++i) rg[i] = c2 * rf[i];
  } else if (elementwise(net.loss)) {  // s/k diag(l'')
    const T* p = t.p.data() + n0 * k;
    for (idx r = 0; r < n; ++r) {
      const T sr = row_weight(t.w, s, n0 + r) / T(k);
      for (idx c = 0; c < m; ++c)
        for (idx j = 0; j < k; ++j) rg[(r * m + c) * k + j] = sr * p[r * k + j] * rf[(r * m + c) * k + j];
    }
  } else if (net.loss == Loss::gaussian) {  // the Hessian's or (gn) the Fisher's 2 x 2 per pair
    const T* p = t.p.data() + n0 * k;
    for (idx r = 0; r < n; ++r) {
      const T sr = row_weight(t.w, s, n0 + r);
      for (idx c = 0; c < m; ++c)
        gauss_curvature_times(k, p + r * k, rf + (r * m + c) * k, sr, gn, rg + (r * m + c) * k);
    }
  } else {
    const T* p = t.p.data() + n0 * k;
    for (idx r = 0; r < n; ++r) {
      const T* pn = p + r * k;
      const idx top = ce_top(k, pn);
      const T sr = row_weight(t.w, s, n0 + r);
      for (idx c = 0; c < m; ++c) ce_curvature_times(k, pn, top, rf + (r * m + c) * k, sr, rg + (r * m + c) * k);
    }
  }
  for (idx q = 0; q < m * k; ++q) {  // a running sum in a register, not a chain through memory
    T sum = 0;
    for (idx r = 0; r < n; ++r) sum += rg[r * m * k + q];
    sc.rs[q] = sum;
  }
}

// R{grad} of layer l, [a_l^T Rg_l + Ra_l^T g_l ; 1^T Rg_l] (the cross term Ra_l^T g_l for the
// Hessian, l > 0), summed over the slice's chunks (the `first` to the `last`) into dst's layer l
// in out's layout [(off_l + i dn + j) m + c]: with m > 1 in acc[l][i][c][j] and tmp[l][c][i][j],
// scattered after the last chunk; with one direction both layouts are [i][j], and the products
// accumulate into dst directly.
template <class T>
void layer_rgrad(const Net& net, const Tape<T>& t, idx m, bool gn, idx l, idx n0, idx n,
                 typename Workspace<T>::Slice& sc, T* dst, bool first, bool last) {
  const idx di = net.d[l], dn = net.d[l + 1];
  T* o = dst + net.off[l] * m;
  const bool cross = !gn && l > 0;
  T* ac = o;
  T* tm = o;
  if (m > 1) {
    sc.acc[l].resize((di + 1) * m * dn);
    ac = sc.acc[l].data();
    if (cross) sc.tmp[l].resize(m * di * dn);
    tm = sc.tmp[l].data();
  }
  const T beta = first ? 0 : 1;
  gemm<T>(true, false, di, m * dn, n, T(1), t.in(l) + n0 * di, di, sc.Rg.data(), m * dn, beta, ac, m * dn);
  for (idx q = 0; q < m * dn; ++q)
    ac[di * m * dn + q] = (first ? T(0) : ac[di * m * dn + q]) + sc.rs[q];  // not 0 * stale
  if (cross)
    gemm<T>(true, false, m * di, dn, n, T(1), sc.Ra[l].data(), m * di, t.g[l].data() + n0 * dn, dn,
            m == 1 ? T(1) : beta, tm, dn);
  if (m > 1 && last) {
    if (cross)
      for (idx c = 0; c < m; ++c)
        for (idx i = 0; i < di; ++i)
          for (idx j = 0; j < dn; ++j) ac[(i * m + c) * dn + j] += tm[(c * di + i) * dn + j];
    for (idx i = 0; i <= di; ++i)
      for (idx j = 0; j < dn; ++j)
        for (idx c = 0; c < m; ++c) o[(i * dn + j) * m + c] = ac[(i * m + c) * dn + j];
  }
}

// One layer down from Rg_l, l > 0: Re_{l-1} = Rg_l W_l^T (+ g_l VW_l^T for the Hessian), then
// Rg_{l-1} and its column sums rs by next_rg.
template <class T>
void rg_below(const Net& net, const T* theta, const Tape<T>& t, const T* V, idx m, bool gn, const Workspace<T>& ws,
              idx l, idx n0, idx n, typename Workspace<T>::Slice& sc) {
  const idx di = net.d[l], dn = net.d[l + 1];
  auto &Rg = sc.Rg, &Re = sc.Re;
  Re.resize(n * m * di);
  gemm<T>(false, true, n * m, di, dn, T(1), Rg.data(), dn, weights(net, theta, l), dn, T(0), Re.data(), di);
  if (!gn && m == 1)
    gemm<T>(false, true, n, di, dn, T(1), t.g[l].data() + n0 * dn, dn, direction_slice(net, V, m, ws, l), dn, T(1),
            Re.data(), di);
  else if (!gn)
    gemm<T>(false, false, n, m * di, dn, T(1), t.g[l].data() + n0 * dn, dn, ws.Vtt[l].data(), m * di, T(1), Re.data(),
            m * di);
  Rg.resize(n * m * di);
  const idx h = n0 * di;  // the chunk's first row of layer l-1's tape arrays
  const D2Source src = d2_source(net, l, gn);
  const bool stored = src.kind == kStored;
  const T* p = stored ? t.d2[l - 1].data() + h : t.a[l].data() + h;
  const T* q = stored ? sc.Rz[l - 1].data() : sc.Ra[l].data();
  with_d2_term(src, [&](auto kind) {
    next_rg<decltype(kind)::value, T>(n, m, di, Re.data(), t.d1[l - 1].data() + h, t.e[l - 1].data() + h, p, q,
                                      T(src.k0), T(src.k1), Rg.data(), sc.rs.data());
  });
}

// The R-op for samples [n0, n1) (tape rows already filled), one chunk of a thread's slice of
// samples: the slice's share of the result, in out's layout [(off_l + i dn + j) m + c], is
// summed over its chunks (the `first` to the `last`) and written to dst.  With one
// direction, V's slices are in the layout of Vt already, and VW_l^T is a transposed operand:
// V is used where it is, and ws.Vt, ws.Vtt are not filled.  The tangents (sc.Rz, sc.Ra) hold
// the chunk's rows only: row r of them is sample n0 + r.
template <class T>
void rop_rows(const Net& net, const T* theta, Tape<T>& t, bool mean, const T* V, idx m, bool gn, Workspace<T>& ws,
              idx n0, idx n1, typename Workspace<T>::Slice& sc, T* dst, bool first, bool last) {
  const idx L = net.L(), n = n1 - n0;
  sc.rs.resize(m * *std::max_element(net.d.begin(), net.d.end()));  // Rg's column sums ([c][j]): bias terms
  for (auto* v : {&sc.Rz, &sc.Ra, &sc.acc, &sc.tmp}) v->resize(L);
  for (idx l = 0; l < L; ++l) {
    sc.Rz[l].resize(n * m * net.d[l + 1]);
    if (l + 1 < L) sc.Ra[l + 1].resize(n * m * net.d[l + 1]);
  }
  if (!forward_tangents(net, theta, t, V, m, gn, ws, n0, n, sc)) return;
  out_curvature(net, t, mean, gn, m, n0, n, sc);
  for (idx l = L - 1; l >= 0; --l) {  // backward: R{grad} of layer l, then Rg one layer down
    if (interrupted()) return;
    if (m == 1 && net.d[l + 1] == 1 && l > 0) {  // one direction through a one-unit output layer
      output_unit_backward(net, theta, t, gn, l, n0, n, direction_slice(net, V, m, ws, l), sc.Ra[l].data(),
                           sc.Rz[l - 1].data(), sc.Rg.data(), sc.Re, sc.rs.data(), dst + net.off[l], !first);
      std::swap(sc.Rg, sc.Re);
      continue;
    }
    layer_rgrad(net, t, m, gn, l, n0, n, sc, dst, first, last);
    if (l > 0) rg_below(net, theta, t, V, m, gn, ws, l, n0, n, sc);
  }
}

// ---------------------------------------------------------------------------------------
// One direction on a tiny network (the seed's [2,8,1], N = 100: ~20k multiply-adds, where the
// layered path above spends most of its time in per-layer passes and small-product set-up):
// the whole R-op of a block of kLanes samples in one pass (lanes.hpp); per-lane accumulators
// for the result, summed across lanes once at the end.  Lanes past N carry zero weight.  Same
// algebra, term for term, as the header comment.
// Up to kLanesMaxParams parameters the lanes path wins at any N; above it the layered products
// do (bench/RESULTS.md).  Threads split the samples in whole blocks of kLanes (rop).
constexpr idx kLanesMaxParams = 512;

bool lanes_apply(const Net& net, idx m) {
  return m == 1 && net.P() <= kLanesMaxParams && lanes_fit(net);
}

// out (P) = the R-op's sum over samples [n_begin, n_end) (n_begin a multiple of kLanes).
template <class T>
void rop_lanes(const Net& net, const T* theta, const T* X, idx N, idx n_begin, idx n_end, Targets<T> tg, bool mean,
               const T* V, T* out, bool gn, vec<T>& scratch) {
  using Lane = typename Lanes<T>::type;
  constexpr idx B = kLanes;
  const idx L = net.L(), k = net.k(), P = net.P();
  const T s = sample_weight<T>(N, mean);
  // Scratch, in lanes: activations A, tangents RA, act', act'', RZ (per unit of every layer);
  // gradients G, RG and their next values (widest layer each); per-lane accumulators (P).
  const LaneLayout lay(net);
  const idx units = lay.units, width = lay.width;
  const std::vector<idx>& at = lay.at;
  Lane* A = lanes_scratch(scratch, 5 * units + 4 * width + P);
  Lane* RA = A + units;
  Lane* D1 = RA + units;
  Lane* D2 = D1 + units;
  Lane* RZ = D2 + units;
  Lane* G = RZ + units;
  Lane* RG = G + width;
  Lane* G2 = RG + width;
  Lane* RG2 = G2 + width;
  Lane* acc = RG2 + width;
  const Lane zero = {};
  lanes_fill<T>(acc, P, zero);

  for (idx n0 = n_begin; n0 < n_end && !lanes_interrupted(n0, n_begin); n0 += B) {
    const idx nb = lanes_load(net, X, N, n0, A);
    const Lane sw = lanes_weights(tg, s, n0, nb);
    lanes_forward(net, theta, lay, A, D1, gn ? nullptr : D2, V, RA, RZ);
    // Output gradient and its tangent (H_out RF), zero in unused lanes.
    const Lane *F = A + at[L], *RF = RZ + at[L];
    Lane* p = G2;  // the head's H_out values: G2 is free until the backward pass
    lanes_output_gradient<T>(net, F, tg, n0, nb, sw, p, G);
    if (net.loss == Loss::mse) {
      Lane c;
      for (idx b = 0; b < B; ++b) c[b] = mse_curvature(k, sw[b]);
      for (idx j = 0; j < k; ++j) RG[j] = c * RF[j];
    } else if (elementwise(net.loss)) {  // out_curvature's s/k diag(p)
      for (idx j = 0; j < k; ++j) RG[j] = sw / T(k) * p[j] * RF[j];
    } else if (net.loss == Loss::gaussian) {  // gauss_curvature_times, lane by lane
      T pb[kLanesMaxWidth], xb[kLanesMaxWidth], ob[kLanesMaxWidth];
      for (idx b = 0; b < B; ++b) {
        for (idx j = 0; j < k; ++j) pb[j] = p[j][b], xb[j] = RF[j][b];
        gauss_curvature_times(k, pb, xb, sw[b], gn, ob);
        for (idx j = 0; j < k; ++j) RG[j][b] = ob[j];
      }
    } else {
      Lane best = p[0], rt = RF[0];  // RF at each lane's ce_top(p), as rop_rows
      for (idx j = 1; j < k; ++j) {
        rt = where_greater(p[j], best, RF[j], rt);
        best = where_greater(p[j], best, p[j], best);
      }
      ce_curvature_times_at<Lane>(k, p, rt, RF, sw, RG);
    }
    // Backward: R{grad} of layer l, then the gradient and its tangent one layer down.
    Lane *g = G, *rg = RG, *g2 = G2, *rg2 = RG2;
    for (idx l = L - 1; l >= 0; --l) {
      const idx di = net.d[l], dn = net.d[l + 1];
      const Lane *a = A + at[l], *ra = RA + at[l];
      Lane* o = acc + net.off[l];
      const bool cross = !gn && l > 0;
      for (idx i = 0; i < di; ++i)
        for (idx j = 0; j < dn; ++j) {
          Lane v = o[i * dn + j] + a[i] * rg[j];
          if (cross) v += ra[i] * g[j];
          o[i * dn + j] = v;
        }
      for (idx j = 0; j < dn; ++j) o[di * dn + j] += rg[j];
      if (l == 0) break;
      const T *W = weights(net, theta, l), *VW = V + net.off[l];
      const Lane *d1 = D1 + at[l], *d2 = D2 + at[l], *rz = RZ + at[l];
      for (idx i = 0; i < di; ++i) {
        Lane e = zero, re = zero;
        for (idx j = 0; j < dn; ++j) {
          re += rg[j] * W[i * dn + j];
          if (!gn) {
            e += g[j] * W[i * dn + j];
            re += g[j] * VW[i * dn + j];
          }
        }
        rg2[i] = gn ? re * d1[i] : re * d1[i] + e * d2[i] * rz[i];
        if (!gn) g2[i] = e * d1[i];
      }
      std::swap(g, g2);
      std::swap(rg, rg2);
    }
  }
  for (idx p = 0; p < P; ++p) {
    T sum = 0;
    for (idx b = 0; b < B; ++b) sum += acc[p][b];
    out[p] = sum;
  }
}

// Values per sample of a chunk of the R-op (common.hpp, chunk_rows): its chunk tape and its
// tangents (Rz, Ra, Rg, Re: m values per sample and unit of every layer).  Every chunk adds
// to the slice's per-layer sums (acc, tmp: P m values).  Chunks from 256 KB to 2 MB perform
// alike (bench/RESULTS.md).
idx rop_row_values(const Net& net, idx m, bool gn) {
  idx units = 0, widest = 0;
  for (idx l = 1; l <= net.L(); ++l) {
    units += net.d[l];
    widest = std::max(widest, net.d[l]);
  }
  return tape_values(net, !gn) + m * (2 * units + 2 * widest);
}

}  // namespace

template <class T>
void rop(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* V, idx m, T* out,
         bool gn, Workspace<T>& ws) {
  const idx L = net.L(), P = net.P();
  const int nt = sample_threads(N, N * net.macs() * (3 + 6 * m));
  if (lanes_apply(net, m)) {  // each thread's whole blocks of samples, its sum in out or ws.parts
    ws.lanes.resize(nt);
    ws.parts.resize((nt - 1) * P);
    over_samples((N + kLanes - 1) / kLanes, nt, [&](int tid, idx b0, idx b1) {
      T* dst = tid == 0 ? out : ws.parts.data() + (tid - 1) * P;
      rop_lanes(net, theta, X, N, b0 * kLanes, std::min(N, b1 * kLanes), tg, mean, V, dst, gn, ws.lanes[tid]);
#pragma omp barrier
      sum_parts(out, P, [&](idx p) { return ws.parts.data() + (p - 1) * P; });
    });
    return;
  }

  // Transposed slices of V: Vt[l][i][c][j] (i <= din, bias row last); Vtt[l][j][c][i] (i < din).
  auto &Vt = ws.Vt, &Vtt = ws.Vtt;
  Vt.resize(L);
  Vtt.resize(L);
  for (idx l = 0; l < L && m > 1; ++l) {  // one direction: V is used in place (rop_rows)
    const idx di = net.d[l], dn = net.d[l + 1];
    const T* v = V + net.off[l] * m;
    Vt[l].resize((di + 1) * m * dn);
    for (idx i = 0; i <= di; ++i)
      for (idx j = 0; j < dn; ++j)
        for (idx c = 0; c < m; ++c) Vt[l][(i * m + c) * dn + j] = v[(i * dn + j) * m + c];
    if (!gn && l > 0) {
      Vtt[l].resize(dn * m * di);
      for (idx i = 0; i < di; ++i)
        for (idx j = 0; j < dn; ++j)
          for (idx c = 0; c < m; ++c) Vtt[l][(j * m + c) * di + i] = v[(i * dn + j) * m + c];
    }
  }

  // Each slice of samples through the network a chunk of rows at a time, on a per-thread chunk
  // tape (workspace.hpp): forward, loss head, backward, then the R-op; slices' results summed.
  const idx rows = chunk_rows(rop_row_values(net, m, gn), P * m, sizeof(T));
  ws.slices.resize(nt);
  ws.chunk_tapes.resize(nt);
  ws.parts.resize((nt - 1) * P * m);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    T* dst = tid == 0 ? out : ws.parts.data() + (tid - 1) * P * m;
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), !gn);
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool first) {
      const Targets<T> tc = rows_at(ct, net, X, tg, c0);
      const idx c = c1 - c0;
      forward_rows(net, theta, ct, 0, c, !gn, true);  // act'' only where d2_term reads it
      head_rows(net, ct, tc, mean, 0, c, !gn);
      if (!gn) backprop_rows<T>(net, theta, ct, 0, c, nullptr, m > 1);  // one direction: output_unit_backward
      rop_rows(net, theta, ct, mean, V, m, gn, ws, 0, c, ws.slices[tid], dst, first, c1 == n1);
    });
#pragma omp barrier
    sum_parts(out, P * m, [&](idx p) { return ws.parts.data() + (p - 1) * P * m; });
  });
}

double rop_memory_values(const Net& net, idx N, idx m, idx bytes) {
  const double nt = kernel_threads(), P = double(net.P());
  const idx per_row = rop_row_values(net, m, false);
  const double rows = double(std::min(N, chunk_rows(per_row, net.P() * m, bytes)));
  const double slices = nt * (rows * per_row + 2 * P * m);  // chunk tape and tangents; acc, tmp
  return slices + 2 * P * m /* Vt, Vtt */ + (nt - 1) * P * m /* parts */ + P * m /* result */;
}

template void rop<float>(const Net&, const float*, const float*, idx, Targets<float>, bool, const float*, idx, float*,
                         bool, Workspace<float>&);
template void rop<double>(const Net&, const double*, const double*, idx, Targets<double>, bool, const double*, idx,
                          double*, bool, Workspace<double>&);

}  // namespace tk
