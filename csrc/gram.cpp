// The GGN as a Gram matrix (docs/curvature.md, "The Gram route").
//
// G = sum_n J_n^T H_n J_n = sum_n (R_n J_n)^T (R_n J_n), R_n^T R_n = H_n (formulas.hpp,
// curvature_root).  Per chunk of samples the k rows of R_n J_n of every sample are formed
// (backward_rows from R_n, then layer l's entries a~_l[i] U_l[r, j]: the Jacobian's fill) and
// added to G by one matrix product of the chunk's rows with themselves.  That costs k P^2 / 2
// multiply-adds per sample, k times the Kronecker route's (curvature.cpp), but in one long
// product of the shape the GEMM runs best, against a dozen thin products per chunk there: for
// networks of few outputs and parameters it is the faster route (gram_route).
//
// Threads split the samples, each with a (P, P) accumulator of its own (thread 0 writes into
// the result), summed once at the end.  The same sweep can take the loss and the gradient
// (the chunk's forward pass and loss head are shared): Gauss-Newton and Levenberg-Marquardt
// need all three at each trial point (loss_grad_ggn).
#include "gram.hpp"

#include <algorithm>

#include "blas.hpp"
#include "curvature.hpp"
#include "forward_backward.hpp"
#include "workspace.hpp"

namespace tk {

namespace {

// Samples per chunk: the chunk's rows (k P values per sample) and tape in about chunk_bytes().
idx gram_chunk_rows(const Net& net, idx bytes) {
  return chunk_rows(tape_values(net, false) + net.k() * (net.P() + 2 * net.d[1]), 0, bytes);
}

}  // namespace

std::atomic<int>& gram_mode() {
  static std::atomic<int> mode{0};
  return mode;
}

// The cost model, measured (bench/RESULTS.md, "The Gram route"): the Gram route costs k P^2 / 2
// multiply-adds per sample in one well-shaped product; the Kronecker route fewer, but its
// products for a layer with few inputs (layer 0's d0 + 1 rows) or few units (the output layer's
// k) are thin, and on a network of one hidden layer those are all it has.  There the Gram route
// won by 1.5-3x while k (d0 + 1) <= 8 and lost beyond; with two hidden layers or more the
// Kronecker route's middle blocks are well shaped and it tied or won.  Since its update runs as
// one symmetric rank update (blas.hpp: syrk_lower) it also wins up to k (d0 + 1) = 16 with one
// output or a hidden layer of 48 units or more (bench/RESULTS.md, "The Gram route with
// syrk_lower").  The lanes path of tiny networks (curvature.cpp, full_lanes: eight samples per
// vector, threads over samples) beat it by 1.1-2x on every network it takes, so the Gram route
// keeps the larger ones.
bool gram_route(const Net& net, idx N) {
  const int mode = gram_mode().load();
  if (mode != 0) return mode > 0;
  (void)N;
  if (full_lanes_apply(net, true)) return false;
  const idx bound = net.L() == 2 && (net.k() == 1 || net.d[1] >= 48) ? 16 : 8;
  return net.L() <= 2 && net.k() * (net.d[0] + 1) <= bound && net.P() <= kGramMaxParams;
}

// The Hessian of a network of one hidden layer (L = 2) less its GGN: per sample, with ã the
// augmented input, w = e_0 * act''(z_0) and g_1 the output layer's gradient (docs/curvature.md
// section 5, terms 2 and 3),
//   term 2: H[(0,i,j), (0,i',j)] += ã[i] ã[i'] w[j]
//   term 3: H[(1,j,c), (0,i,j)]  += g_1[c] act'(z_0[j]) ã[i]      (and its mirror)
// summed over the chunk as two products: T2 (Da^2, d1) = (ã ⊗ ã)^T w and T3 (Da, d1 k) =
// ã^T (act'(z_0) ⊗ g_1).  Few values (Da = d0 + 1 is small on this route): they are added
// to the accumulator's lower triangle by extra_terms_add once, after the threads' sum.
template <class T>
void extra_terms_chunk(const Net& net, const T* theta, const Tape<T>& ct, idx c, bool first, GramScratch<T>& sc) {
  const idx d0 = net.d[0], d1 = net.d[1], k = net.k(), Da = d0 + 1;
  const T* W1 = weights(net, theta, 1);
  const T* g1 = ct.g[1].data();
  sc.A2.resize(c * Da * Da), sc.M.resize(c * d1 * k), sc.w.resize(c * d1);
  for (idx n = 0; n < c; ++n) {
    const T* x = ct.X + n * d0;
    T* a2 = sc.A2.data() + n * Da * Da;
    for (idx i = 0; i < Da; ++i)
      for (idx i2 = 0; i2 < Da; ++i2) a2[i * Da + i2] = (i < d0 ? x[i] : T(1)) * (i2 < d0 ? x[i2] : T(1));
    const T* g = g1 + n * k;
    const T* dd1 = ct.d1[0].data() + n * d1;
    const T* dd2 = ct.d2[0].data() + n * d1;
    for (idx j = 0; j < d1; ++j) {
      T e = 0;  // e_0[j] = (g_1 W_1^T)[j]
      for (idx q = 0; q < k; ++q) {
        e += g[q] * W1[j * k + q];
        sc.M[(n * d1 + j) * k + q] = dd1[j] * g[q];
      }
      sc.w[n * d1 + j] = e * dd2[j];
    }
  }
  const T beta = first ? T(0) : T(1);
  sc.T2.resize(Da * Da * d1), sc.T3.resize(Da * d1 * k), sc.At.resize(c * Da);
  gemm<T>(true, false, Da * Da, d1, c, T(1), sc.A2.data(), Da * Da, sc.w.data(), d1, beta, sc.T2.data(), d1);
  for (idx n = 0; n < c; ++n) {
    for (idx i = 0; i < d0; ++i) sc.At[n * Da + i] = ct.X[n * d0 + i];
    sc.At[n * Da + d0] = T(1);
  }
  gemm<T>(true, false, Da, d1 * k, c, T(1), sc.At.data(), Da, sc.M.data(), d1 * k, beta, sc.T3.data(), d1 * k);
}

// H's lower triangle += the summed T2, T3 (extra_terms_chunk), in layer-major parameter order.
template <class T>
void extra_terms_add(const Net& net, const T* T2, const T* T3, T* H) {
  const idx d0 = net.d[0], d1 = net.d[1], k = net.k(), Da = d0 + 1, P = net.P(), o1 = net.off[1];
  for (idx i = 0; i < Da; ++i)
    for (idx i2 = 0; i2 <= i; ++i2)
      for (idx j = 0; j < d1; ++j) H[(i * d1 + j) * P + i2 * d1 + j] += T2[(i * Da + i2) * d1 + j];
  for (idx i = 0; i < Da; ++i)
    for (idx j = 0; j < d1; ++j)
      for (idx c = 0; c < k; ++c) H[(o1 + j * k + c) * P + i * d1 + j] += T3[i * d1 * k + j * k + c];
}

template <class T>
double gram(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* G, T* grad,
            Workspace<T>& ws) {
  const idx L = net.L(), k = net.k(), P = net.P();
  const bool extra = !gn && L == 2;  // L == 1: the Hessian is the GGN
  Tape<T>& t = ws.tape;  // only its rowloss, for all N
  t.N = N;
  t.rowloss.resize(N);
  const T s = sample_weight<T>(N, mean);
  const int nt = sample_threads(N, N * k * P * P / 2);
  const idx rows = gram_chunk_rows(net, sizeof(T));
  ws.parts.resize((nt - 1) * (P * P + (grad ? P : 0)));
  ws.chunk_tapes.resize(nt);
  ws.gram.resize(nt);
  over_samples(N, nt, [&](int tid, idx n0, idx n1) {
    T* acc = tid == 0 ? G : ws.parts.data() + (tid - 1) * P * P;
    T* g = tid == 0 ? grad : grad ? ws.parts.data() + (nt - 1) * P * P + (tid - 1) * P : nullptr;
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), extra);
    GramScratch<T>& sc = ws.gram[tid];
    sc.U.resize(L);
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool first) {
      const idx c = c1 - c0;
      const Targets<T> tc = rows_at(ct, net, X, tg, c0);
      forward_rows(net, theta, ct, 0, c, extra);
      head_rows(net, ct, tc, mean, 0, c, g != nullptr || extra);
      if (extra) extra_terms_chunk(net, theta, ct, c, first, sc);
      if (g) backprop_rows(net, theta, ct, 0, c, g, true, !first);
      std::copy(ct.rowloss.begin(), ct.rowloss.begin() + c, t.rowloss.begin() + c0);
      // R_n's rows, backpropagated to every layer's z
      vec<T>& top = sc.U[L - 1];
      top.resize(c * k * k);
      root_rows(net, c, net.loss != Loss::mse ? ct.p.data() : nullptr, tc.w, s, true, top.data());
      backward_rows(net, theta, ct, 0, c, k, sc.U);
      // their Jacobian rows, (c k, P)
      sc.R.resize(c * k * P);
      for (idx n = 0; n < c; ++n)
        for (idx l = 0; l < L; ++l) {
          const idx di = net.d[l], dn = net.d[l + 1];
          const T* a = ct.in(l) + n * di;
          for (idx q = 0; q < k; ++q) {
            const T* u = sc.U[l].data() + (n * k + q) * dn;
            T* r = sc.R.data() + (n * k + q) * P + net.off[l];
            for (idx i = 0; i < di; ++i)
              for (idx j = 0; j < dn; ++j) r[i * dn + j] = a[i] * u[j];
            std::copy(u, u + dn, r + di * dn);
          }
        }
      // acc's lower triangle += R^T R (blas.hpp: syrk_lower)
      const T beta = first ? T(0) : T(1);
      syrk_lower<T>(P, c * k, sc.R.data(), P, beta, acc, P);
    });
#pragma omp barrier
    sum_parts(G, P * P, [&](idx q) { return ws.parts.data() + (q - 1) * P * P; });
    if (grad) sum_parts(grad, P, [&](idx q) { return ws.parts.data() + (nt - 1) * P * P + (q - 1) * P; });
  });
  if (extra)
    for (int q = 0; q < nt && !interrupted(); ++q) extra_terms_add(net, ws.gram[q].T2.data(), ws.gram[q].T3.data(), G);
  // the upper triangle from the lower
  parallel_for(P, P * P, [&](idx r) {
    for (idx q = r + 1; q < P; ++q) G[r * P + q] = G[q * P + r];
  });
  return total_loss(net, t, mean);
}

template <class T>
double loss_grad_ggn(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad, T* G,
                     Workspace<T>& ws) {
  if (gram_route(net, N)) return gram(net, theta, X, N, tg, mean, true, G, grad, ws);
  if (!tg.w && full_lanes_apply(net, true)) return loss_grad_ggn_lanes(net, theta, X, N, tg, mean, grad, G, ws);
  const double value = loss_and_grad(net, theta, X, N, tg, mean, grad, ws);
  if (!interrupted()) curvature_full(net, theta, X, N, tg, mean, true, G, ws);
  return value;
}

#define TK_INST(T)                                                                                               \
  template double gram<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, bool, T*, T*, Workspace<T>&); \
  template double loss_grad_ggn<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, T*, Workspace<T>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace tk
