// See forward_backward.hpp for the math.
#include "forward_backward.hpp"

#include <algorithm>

#include "activations.hpp"
#include "blas.hpp"
#include "lanes.hpp"
#include "workspace.hpp"

namespace tk {

template <class T>
void prepare_tape(const Net& net, const T* X, idx N, Tape<T>& t, bool second) {
  const idx L = net.L(), k = net.k();
  t.a.resize(L);
  t.d1.resize(L);
  t.d2.resize(L);
  t.g.resize(L);
  t.e.resize(L);
  for (idx l = 0; l < L; ++l) {
    if (l > 0) t.a[l].resize(N * net.d[l]);
    t.g[l].resize(N * net.d[l + 1]);
    if (l + 1 < L) {
      t.d1[l].resize(N * net.d[l + 1]);
      t.e[l].resize(N * net.d[l + 1]);
      if (second) t.d2[l].resize(N * net.d[l + 1]);
    }
  }
  t.F.resize(N * k);
  t.rowloss.resize(N);
  if (net.loss != Loss::mse) t.p.resize(N * k);
  t.N = N;
  t.X = X;
}

template <class T>
void forward_rows(const Net& net, const T* theta, Tape<T>& t, idx n0, idx n1, bool second, bool lean) {
  const idx L = net.L(), n = n1 - n0;
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    T* z = ((l + 1 < L) ? t.a[l + 1].data() : t.F.data()) + n0 * dn;
    const T* b = bias(net, theta, l);
    const bool hidden = l + 1 < L;  // hidden layers add the bias in the activation pass
    if (!hidden)
      for (idx r = 0; r < n; ++r) std::copy(b, b + dn, z + r * dn);
    gemm<T>(false, false, n, dn, di, T(1), t.in(l) + n0 * di, di, weights(net, theta, l), dn, T(hidden ? 0 : 1), z, dn);
    if (hidden) {  // elementwise over the slice's contiguous block, in blocks of rows
      T* d1 = t.d1[l].data() + n0 * dn;
      T* d2 = second && !(lean && d2_form(net.act[l]).linear) ? t.d2[l].data() + n0 * dn : nullptr;
      const idx rows = std::max<idx>(1, 4096 / dn), blocks = (n + rows - 1) / rows;
      parallel_for(blocks, n * dn, [&](idx blk) {
        const idx r0 = blk * rows, o = r0 * dn;
        activate<T>(net.act[l], std::min(n, r0 + rows) - r0, dn, z + o, b, z + o, d1 + o, d2 ? d2 + o : nullptr);
      });
    }
  }
}

// Rows per block of the heads with transcendental pieces (ce, the elementwise heads, gaussian),
// which run as flat loops over a block's values.
constexpr idx kHeadRows = 64;

template <class T>
void head_rows(const Net& net, Tape<T>& t, Targets<T> tg, bool mean, idx n0, idx n1, bool want_grad) {
  const idx k = net.k(), L = net.L();
  const T s = sample_weight<T>(t.N, mean);
  T* G = want_grad ? t.g[L - 1].data() : nullptr;
  const T* F = t.F.data();
  const T* w = t.w = tg.w;
  if (net.loss == Loss::mse) {
    parallel_for(n1 - n0, (n1 - n0) * k, [&](idx r) {
      const idx n = n0 + r;
      t.rowloss[n] = mse_row(k, F + n * k, tg.y + n * k, row_weight(w, s, n), G ? G + n * k : nullptr);
      if (w) t.rowloss[n] *= w[n];
    });
  } else if (elementwise(net.loss)) {  // bce, poisson, huber, soft_l1 (formulas.hpp): rowloss, G, p = l''
    // Output by output over blocks of rows, each output's values gathered, so that elem_loss runs
    // as a flat loop the compiler vectorises (sample by sample it stayed scalar, and bce's
    // exponential made the diagonals of tiny networks ~25% slower than mse's).
    T* p = t.p.data();
    const T c_scale = (T)net.loss_scale;
    with_loss(net.loss, [&](auto tag) {
      parallel_for((n1 - n0 + kHeadRows - 1) / kHeadRows, (n1 - n0) * k, [&](idx blk) {
        const idx b0 = n0 + blk * kHeadRows, nb = std::min(kHeadRows, n1 - b0);
        T acc[kHeadRows] = {}, f[kHeadRows], y[kHeadRows], g[kHeadRows], h[kHeadRows];
        for (idx j = 0; j < k; ++j) {
          for (idx r = 0; r < nb; ++r) f[r] = F[(b0 + r) * k + j], y[r] = tg.y[(b0 + r) * k + j];
          for (idx r = 0; r < nb; ++r) acc[r] += elem_loss<VMath>(tag.value, f[r], y[r], c_scale, g[r], h[r]);
          for (idx r = 0; r < nb; ++r) p[(b0 + r) * k + j] = h[r];
          if (G)
            for (idx r = 0; r < nb; ++r) G[(b0 + r) * k + j] = row_weight(w, s, b0 + r) / T(k) * g[r];
        }
        for (idx r = 0; r < nb; ++r) t.rowloss[b0 + r] = w ? acc[r] * w[b0 + r] : acc[r];
      });
    });
  } else if (net.loss == Loss::gaussian) {  // formulas.hpp: rowloss, G, p = (q, z) of each pair
    // Pair by pair over blocks of rows, as the elementwise heads above.
    T* p = t.p.data();
    const idx h = k / 2;
    parallel_for((n1 - n0 + kHeadRows - 1) / kHeadRows, (n1 - n0) * k, [&](idx blk) {
      const idx b0 = n0 + blk * kHeadRows, nb = std::min(kHeadRows, n1 - b0);
      T acc[kHeadRows] = {}, mu[kHeadRows], v[kHeadRows], y[kHeadRows], q[kHeadRows], z[kHeadRows],
        gm[kHeadRows], gv[kHeadRows];
      for (idx j = 0; j < h; ++j) {
        for (idx r = 0; r < nb; ++r) {
          const idx o = (b0 + r) * k;
          mu[r] = F[o + j], v[r] = F[o + h + j], y[r] = tg.y[(b0 + r) * h + j];
        }
        for (idx r = 0; r < nb; ++r) acc[r] += gauss_pair<VMath>(mu[r], v[r], y[r], q[r], z[r], gm[r], gv[r]);
        for (idx r = 0; r < nb; ++r) p[(b0 + r) * k + j] = q[r], p[(b0 + r) * k + h + j] = z[r];
        if (G)
          for (idx r = 0; r < nb; ++r) {
            const T c = row_weight(w, s, b0 + r) / T(h);
            G[(b0 + r) * k + j] = c * gm[r], G[(b0 + r) * k + h + j] = c * gv[r];
          }
      }
      for (idx r = 0; r < nb; ++r) t.rowloss[b0 + r] = w ? acc[r] * w[b0 + r] : acc[r];
    });
  } else {
    // ce's formulas.hpp pieces, in blocks of rows, so that e^x and log1p run as flat loops the
    // compiler vectorises (vmath.hpp; libm's scalar exp does not vectorise).
    parallel_for((n1 - n0 + kHeadRows - 1) / kHeadRows, (n1 - n0) * k, [&](idx blk) {
      const idx b0 = n0 + blk * kHeadRows, nb = std::min(kHeadRows, n1 - b0);
      const T* Fb = F + b0 * k;
      T* P = t.p.data() + b0 * k;
      idx top[kHeadRows];
      T rest[kHeadRows], lg[kHeadRows];
      for (idx r = 0; r < nb; ++r) {
        const T* f = Fb + r * k;
        top[r] = ce_top(k, f);
        for (idx j = 0; j < k; ++j) P[r * k + j] = f[j] - f[top[r]];
      }
      for (idx i = 0; i < nb * k; ++i) P[i] = v_exp(P[i]);
      for (idx r = 0; r < nb; ++r) rest[r] = ce_softmax(k, top[r], P + r * k);
      for (idx r = 0; r < nb; ++r) lg[r] = v_log1p(rest[r]);
      for (idx r = 0; r < nb; ++r) {
        const idx y = (idx)tg.labels[b0 + r];
        t.rowloss[b0 + r] = ce_loss(lg[r], Fb + r * k, top[r], y);
        if (w) t.rowloss[b0 + r] *= w[b0 + r];
        if (G) ce_gradient(k, P + r * k, y, top[r], rest[r], row_weight(w, s, b0 + r), G + (b0 + r) * k);
      }
    });
  }
}

template <class T>
double total_loss(const Net& net, const Tape<T>& t, bool mean) {
  double total = 0;  // serial, in double: deterministic and accurate in float32 too
  for (idx n = 0; n < t.N; ++n) total += (double)t.rowloss[n];
  const double s = mean ? 1.0 / (double)t.N : 1.0;
  return data_term(net.loss, net.k(), total, s);
}

template <class T>
void backprop_rows(const Net& net, const T* theta, Tape<T>& t, idx n0, idx n1, T* grad, bool full, bool add) {
  const idx n = n1 - n0, L = net.L(), k = net.k();
  const bool narrow = k == 1 && L >= 2;  // the output layer's backward without products
  if (grad) {  // the output layer's bias gradient (and its weights' when narrow: summed below)
    T* __restrict gb = grad + net.off[L - 1] + net.d[L - 1] * k;
    const T* gk = t.g[L - 1].data() + n0 * k;
    if (!add) std::fill(gb, gb + k, T(0));
    for (idx r = 0; r < n; ++r)
      for (idx c = 0; c < k; ++c) gb[c] += gk[r * k + c];
    if (narrow && !add) std::fill(grad + net.off[L - 1], gb, T(0));
  }
  for (idx l = L - 1; l >= 1; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    const T* gl = t.g[l].data() + n0 * dn;
    const T* __restrict d1 = t.d1[l - 1].data() + n0 * di;
    T* __restrict e = t.e[l - 1].data() + n0 * di;
    T* __restrict g = t.g[l - 1].data() + n0 * di;
    T* __restrict gb = grad ? grad + net.off[l - 1] + net.d[l - 1] * di : nullptr;  // bias of layer l-1
    if (gb && !add) std::fill(gb, gb + di, T(0));
    if (l == L - 1 && narrow) {  // e = g_out w^T, g = e * act', and the output weights' gradient
      const T* __restrict w = weights(net, theta, l);
      const T* __restrict a = t.a[l].data() + n0 * di;
      T* __restrict gW = grad ? grad + net.off[l] : nullptr;
      for (idx r = 0; r < n; ++r) {
        const T go = gl[r];
        T* __restrict er = e + r * di;
        T* __restrict gr = g + r * di;
        const T* __restrict dr = d1 + r * di;
        if (gW || !full) {
          for (idx j = 0; j < di; ++j) gr[j] = go * w[j] * dr[j];
        } else {
          for (idx j = 0; j < di; ++j) {
            er[j] = go * w[j];
            gr[j] = er[j] * dr[j];
          }
        }
        if (gW)  // a loop of its own, so that both loops vectorise
          for (idx j = 0; j < di; ++j) {
            gb[j] += gr[j];
            gW[j] += a[r * di + j] * go;
          }
      }
      continue;
    }
    if (gb) {  // inside a slice of samples: serial, with the bias sums; e is not kept
      gemm<T>(false, true, n, di, dn, T(1), gl, dn, weights(net, theta, l), dn, T(0), g, di);
      for (idx r = 0; r < n; ++r)
        for (idx j = 0; j < di; ++j) {
          const T v = g[r * di + j] * d1[r * di + j];
          g[r * di + j] = v;
          gb[j] += v;
        }
    } else {
      gemm<T>(false, true, n, di, dn, T(1), gl, dn, weights(net, theta, l), dn, T(0), e, di);
      if (full || l > 1) parallel_for(n * di, n * di, [&](idx i) { g[i] = e[i] * d1[i]; });
    }
  }
  if (grad)
    for (idx l = 0; l < L - (narrow ? 1 : 0); ++l) {
      const idx di = net.d[l], dn = net.d[l + 1];
      gemm<T>(true, false, di, dn, n, T(1), t.in(l) + n0 * di, di, t.g[l].data() + n0 * dn, dn, T(add ? 1 : 0),
              grad + net.off[l], dn);
    }
}

template <class T>
void forward(const Net& net, const T* theta, const T* X, idx N, Tape<T>& t, bool second) {
  prepare_tape(net, X, N, t, second);
  forward_rows(net, theta, t, 0, N, second);
}

template <class T>
void predict(const Net& net, const T* theta, const T* X, idx N, T* out, Workspace<T>& ws) {
  const int nt = sample_threads(N, N * net.macs());
  const idx rows = chunk_rows(tape_values(net, false), 0, sizeof(T)), k = net.k();
  ws.chunk_tapes.resize(nt);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), false);
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool) {
      rows_at<T>(ct, net, X, {}, c0);
      forward_rows(net, theta, ct, 0, c1 - c0, false);
      std::copy(ct.F.begin(), ct.F.begin() + (c1 - c0) * k, out + c0 * k);
    });
  });
}

// The per-sample losses of all N samples (for total_loss), from the thread's chunk tapes.
template <class T>
void rowloss_rows(Tape<T>& t, const Tape<T>& ct, idx c0, idx c) {
  std::copy(ct.rowloss.begin(), ct.rowloss.begin() + c, t.rowloss.begin() + c0);
}

template <class T>
double loss(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, Workspace<T>& ws) {
  Tape<T>& t = ws.tape;  // only its rowloss, for all N
  t.N = N;
  t.rowloss.resize(N);
  const int nt = sample_threads(N, N * net.macs());
  const idx rows = chunk_rows(tape_values(net, false), 0, sizeof(T));
  ws.chunk_tapes.resize(nt);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), false);
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool) {
      const Targets<T> tc = rows_at(ct, net, X, tg, c0);
      forward_rows(net, theta, ct, 0, c1 - c0, false);
      head_rows(net, ct, tc, mean, 0, c1 - c0, false);
      rowloss_rows(t, ct, c0, c1 - c0);
    });
  });
  return total_loss(net, t, mean);
}

// The loss and gradient of a tiny network, kLanes samples per SIMD vector (lanes.hpp): forward,
// output gradient and backpropagation of a block in one pass, the gradient summed per lane and
// across lanes once at the end.  Samples past N carry a zero weight.  Where the
// layered kernels spend their time setting up products of a few hundred multiply-adds, this
// is 1.3-1.9x faster up to kLanesGradMaxParams parameters; above, the per-lane gradient (P
// vectors read and written per block) costs more than the layered products (bench/RESULTS.md).
constexpr idx kLanesGradMaxParams = 160;

template <class T>
double loss_and_grad_lanes(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad,
                           Workspace<T>& ws) {
  using Lane = typename Lanes<T>::type;
  const idx P = net.P(), k = net.k(), blocks = (N + kLanes - 1) / kLanes;
  const T s = sample_weight<T>(N, mean);
  const LaneLayout lay(net);
  const int nt = sample_threads(N, 3 * N * net.macs());
  Tape<T>& t = ws.tape;  // only its rowloss, for all N: the loss is summed as the other paths sum it
  t.N = N;
  t.rowloss.resize(N);
  ws.parts.resize((nt - 1) * P);
  ws.lanes.resize(nt);
  over_samples(blocks, nt, [&](int tid, idx b0, idx b1) {
    T* g = tid == 0 ? grad : ws.parts.data() + (tid - 1) * P;
    Lane* A = lanes_scratch(ws.lanes[tid], 2 * lay.units + 2 * lay.width + k + P);
    Lane* D1 = A + lay.units;
    Lane* delta = D1 + lay.units;
    Lane* next = delta + lay.width;
    Lane* gout = next + lay.width;
    Lane* gsum = gout + k;
    lanes_fill<T>(gsum, P, Lane{});
    const idx n_begin = b0 * kLanes, n_end = std::min(N, b1 * kLanes);
    for (idx n0 = n_begin; n0 < n_end && !lanes_interrupted(n0, n_begin); n0 += kLanes) {
      const idx nb = lanes_load(net, X, N, n0, A);
      lanes_forward(net, theta, lay, A, D1, static_cast<Lane*>(nullptr));
      const Lane* F = A + lay.at[net.L()];
      lanes_loss_sum<T>(net, F, tg, n0, nb, t.rowloss.data() + n0);
      lanes_output_gradient<T>(net, F, tg, n0, nb, lanes_weights(tg, s, n0, nb), next, gout);
      std::copy(gout, gout + k, delta);
      lanes_backprop<true, T>(net, theta, lay, A, D1, delta, next, gsum);
    }
    for (idx q = 0; q < P; ++q) {
      T v = 0;
      for (idx i = 0; i < kLanes; ++i) v += gsum[q][i];
      g[q] = v;
    }
#pragma omp barrier
    sum_parts(grad, P, [&](idx q) { return ws.parts.data() + (q - 1) * P; });
  });
  return total_loss(net, t, mean);
}

template <class T>
double loss_and_grad(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad,
                     Workspace<T>& ws) {
  if (net.P() <= kLanesGradMaxParams && lanes_fit(net))
    return loss_and_grad_lanes(net, theta, X, N, tg, mean, grad, ws);
  Tape<T>& t = ws.tape;  // only its rowloss, for all N
  t.N = N;
  t.rowloss.resize(N);
  const idx P = net.P();
  const int nt = sample_threads(N, 3 * N * net.macs());
  const idx rows = chunk_rows(tape_values(net, false), P, sizeof(T));
  ws.parts.resize((nt - 1) * P);
  ws.chunk_tapes.resize(nt);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    T* g = tid == 0 ? grad : ws.parts.data() + (tid - 1) * P;
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), false);
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool first) {
      const Targets<T> tc = rows_at(ct, net, X, tg, c0);
      forward_rows(net, theta, ct, 0, c1 - c0, false);
      head_rows(net, ct, tc, mean, 0, c1 - c0, true);
      backprop_rows(net, theta, ct, 0, c1 - c0, g, true, !first);
      rowloss_rows(t, ct, c0, c1 - c0);
    });
#pragma omp barrier
    sum_parts(grad, P, [&](idx p) { return ws.parts.data() + (p - 1) * P; });
  });
  return total_loss(net, t, mean);
}

template <class T>
void backward_rows(const Net& net, const T* theta, const Tape<T>& t, idx n0, idx N, idx r, std::vector<vec<T>>& U) {
  U.resize(net.L());
  for (idx l = net.L() - 1; l >= 1; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    U[l - 1].resize(N * r * di);
    T* u = U[l - 1].data();
    gemm<T>(false, true, N * r, di, dn, T(1), U[l].data(), dn, weights(net, theta, l), dn, T(0), u, di);
    const T* d1 = t.d1[l - 1].data() + n0 * di;
    parallel_for(N, N * r * di, [&](idx n) {
      for (idx q = 0; q < r; ++q)
        for (idx i = 0; i < di; ++i) u[(n * r + q) * di + i] *= d1[n * di + i];
    });
  }
}

#define TK_INST(T)                                                                                            \
  template void prepare_tape<T>(const Net&, const T*, idx, Tape<T>&, bool);                                   \
  template void forward_rows<T>(const Net&, const T*, Tape<T>&, idx, idx, bool, bool);                        \
  template void head_rows<T>(const Net&, Tape<T>&, Targets<T>, bool, idx, idx, bool);                         \
  template double total_loss<T>(const Net&, const Tape<T>&, bool);                                            \
  template void backprop_rows<T>(const Net&, const T*, Tape<T>&, idx, idx, T*, bool, bool);                   \
  template void forward<T>(const Net&, const T*, const T*, idx, Tape<T>&, bool);                              \
  template void predict<T>(const Net&, const T*, const T*, idx, T*, Workspace<T>&);                           \
  template double loss<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, Workspace<T>&);              \
  template double loss_and_grad<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, Workspace<T>&); \
  template void backward_rows<T>(const Net&, const T*, const Tape<T>&, idx, idx, idx, std::vector<vec<T>>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace tk
