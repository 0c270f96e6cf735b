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

// Columns per product of the accumulation: G's lower triangle, in column panels of this width,
// each panel's product starting at its diagonal (a triangle less than half the full product's
// work above this width).
constexpr idx kGramPanel = 96;

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
// Kronecker route's middle blocks are well shaped and it tied or won.
bool gram_route(const Net& net, idx N) {
  const int mode = gram_mode().load();
  if (mode != 0) return mode > 0;
  (void)N;
  return net.L() <= 2 && net.k() * (net.d[0] + 1) <= 8 && net.P() <= kGramMaxParams;
}

template <class T>
double ggn_gram(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* G, T* grad,
                Workspace<T>& ws) {
  const idx L = net.L(), k = net.k(), P = net.P();
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
    Tape<T>& ct = chunk_tape(ws, tid, net, N, std::min(rows, n1 - n0), false);
    GramScratch<T>& sc = ws.gram[tid];
    sc.U.resize(L);
    over_chunks(n0, n1, rows, [&](idx c0, idx c1, bool first) {
      const idx c = c1 - c0;
      const Targets<T> tc = rows_at(ct, net, X, tg, c0);
      forward_rows(net, theta, ct, 0, c, false);
      head_rows(net, ct, tc, mean, 0, c, g != nullptr);
      if (g) backprop_rows(net, theta, ct, 0, c, g, true, !first);
      std::copy(ct.rowloss.begin(), ct.rowloss.begin() + c, t.rowloss.begin() + c0);
      // R_n's rows, backpropagated to every layer's z
      vec<T>& top = sc.U[L - 1];
      top.resize(c * k * k);
      const T* p = net.loss == Loss::ce ? ct.p.data() : nullptr;
      for (idx n = 0; n < c; ++n)
        for (idx r = 0; r < k; ++r)
          for (idx j = 0; j < k; ++j) top[(n * k + r) * k + j] = curvature_root(k, p ? p + n * k : p, r, j, s);
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
      // acc's lower triangle (and the upper part of its diagonal panels) += R^T R
      const T beta = first ? T(0) : T(1);
      for (idx b0 = 0; b0 < P; b0 += kGramPanel) {
        const idx w = std::min(kGramPanel, P - b0);
        gemm<T>(true, false, P - b0, w, c * k, T(1), sc.R.data() + b0, P, sc.R.data() + b0, P, beta,
                acc + b0 * P + b0, P);
      }
    });
#pragma omp barrier
    sum_parts(G, P * P, [&](idx q) { return ws.parts.data() + (q - 1) * P * P; });
    if (grad) sum_parts(grad, P, [&](idx q) { return ws.parts.data() + (nt - 1) * P * P + (q - 1) * P; });
  });
  // the upper triangle from the lower
  parallel_for(P, P * P, [&](idx r) {
    for (idx q = r + 1; q < P; ++q) G[r * P + q] = G[q * P + r];
  });
  return total_loss(net, t, mean);
}

template <class T>
double loss_grad_ggn(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad, T* G,
                     Workspace<T>& ws) {
  if (gram_route(net, N)) return ggn_gram(net, theta, X, N, tg, mean, G, grad, ws);
  const double value = loss_and_grad(net, theta, X, N, tg, mean, grad, ws);
  if (!interrupted()) curvature_full(net, theta, X, N, tg, mean, true, G, ws);
  return value;
}

#define TK_INST(T)                                                                                               \
  template double ggn_gram<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, T*, Workspace<T>&); \
  template double loss_grad_ggn<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, T*, Workspace<T>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace tk
