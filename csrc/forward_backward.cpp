// See forward_backward.hpp for the math.
#include "forward_backward.hpp"

#include <algorithm>

#include "activations.hpp"
#include "blas.hpp"
#include "workspace.hpp"

namespace tk {

template <class T>
static void resize_tape(const Net& net, Tape<T>& t, idx N, bool second) {
  const idx L = net.L();
  t.a.resize(L);
  t.d1.resize(L);
  t.d2.resize(L);
  t.g.resize(L);
  t.e.resize(L);
  for (idx l = 1; l < L; ++l) t.a[l].resize(N * net.d[l]);
  for (idx l = 0; l + 1 < L; ++l) {
    t.d1[l].resize(N * net.d[l + 1]);
    if (second) t.d2[l].resize(N * net.d[l + 1]);
  }
  t.F.resize(N * net.k());
  t.N = N;
}

template <class T>
void forward(const Net& net, const T* theta, const T* X, idx N, Tape<T>& t, bool second) {
  resize_tape(net, t, N, second);
  t.X = X;
  const idx L = net.L();
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    T* z = (l + 1 < L) ? t.a[l + 1].data() : t.F.data();
    const T* b = bias(net, theta, l);
    for (idx n = 0; n < N; ++n) std::copy(b, b + dn, z + n * dn);
    gemm<T>(false, false, N, dn, di, T(1), t.in(l), di, weights(net, theta, l), dn, T(1), z, dn);
    if (l + 1 < L) {
      T* d1 = t.d1[l].data();
      T* d2 = second ? t.d2[l].data() : nullptr;
      const Act f = net.act[l];
      parallel_for(N, N * dn,
                   [&](idx n) { activate<T>(f, dn, z + n * dn, z + n * dn, d1 + n * dn, d2 ? d2 + n * dn : nullptr); });
    }
  }
}

template <class T>
double loss_head(const Net& net, Tape<T>& t, Targets<T> tg, bool mean, bool want_grad) {
  const idx N = t.N, k = net.k(), L = net.L();
  const T s = sample_weight<T>(N, mean);
  t.rowloss.resize(N);
  if (want_grad) t.g[L - 1].resize(N * k);
  T* G = want_grad ? t.g[L - 1].data() : nullptr;
  const T* F = t.F.data();
  if (net.loss == Loss::mse) {
    const T c = 2 * s / T(k);
    parallel_for(N, N * k, [&](idx n) {
      T acc = 0;
      for (idx j = 0; j < k; ++j) {
        const T r = F[n * k + j] - tg.y[n * k + j];
        acc += r * r;
        if (G) G[n * k + j] = c * r;
      }
      t.rowloss[n] = acc;
    });
  } else {
    t.p.resize(N * k);
    T* p = t.p.data();
    parallel_for(N, N * k, [&](idx n) {
      const T* f = F + n * k;
      T* pn = p + n * k;
      const T mx = *std::max_element(f, f + k);
      T sum = 0;
      for (idx j = 0; j < k; ++j) {
        pn[j] = std::exp(f[j] - mx);
        sum += pn[j];
      }
      const T inv = 1 / sum;
      for (idx j = 0; j < k; ++j) pn[j] *= inv;
      const idx y = (idx)tg.labels[n];
      t.rowloss[n] = mx + std::log(sum) - f[y];
      if (G) {
        for (idx j = 0; j < k; ++j) G[n * k + j] = s * pn[j];
        G[n * k + y] -= s;
      }
    });
  }
  double total = 0;  // serial, in double: deterministic and accurate in float32 too
  for (idx n = 0; n < N; ++n) total += (double)t.rowloss[n];
  return total * (double)s / (net.loss == Loss::mse ? (double)k : 1.0);
}

template <class T>
void backward(const Net& net, const T* theta, Tape<T>& t) {
  const idx N = t.N, L = net.L();
  for (idx l = L - 1; l >= 1; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    t.e[l - 1].resize(N * di);
    t.g[l - 1].resize(N * di);
    T* e = t.e[l - 1].data();
    gemm<T>(false, true, N, di, dn, T(1), t.g[l].data(), dn, weights(net, theta, l), dn, T(0), e, di);
    const T* d1 = t.d1[l - 1].data();
    T* g = t.g[l - 1].data();
    parallel_for(N * di, N * di, [&](idx i) { g[i] = e[i] * d1[i]; });
  }
}

template <class T>
void param_grad(const Net& net, const Tape<T>& t, T* grad) {
  const idx N = t.N;
  for (idx l = 0; l < net.L(); ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    T* gW = grad + net.off[l];
    gemm<T>(true, false, di, dn, N, T(1), t.in(l), di, t.g[l].data(), dn, T(0), gW, dn);
    T* gb = gW + di * dn;
    std::fill(gb, gb + dn, T(0));
    const T* g = t.g[l].data();
    for (idx n = 0; n < N; ++n)
      for (idx j = 0; j < dn; ++j) gb[j] += g[n * dn + j];
  }
}

template <class T>
void predict(const Net& net, const T* theta, const T* X, idx N, T* out, Workspace<T>& ws) {
  Tape<T>& t = ws.tape;
  forward(net, theta, X, N, t, false);
  std::copy(t.F.begin(), t.F.end(), out);
}

template <class T>
double loss(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, Workspace<T>& ws) {
  Tape<T>& t = ws.tape;
  forward(net, theta, X, N, t, false);
  return loss_head(net, t, tg, mean, false);
}

template <class T>
double loss_and_grad(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad,
                     Workspace<T>& ws) {
  Tape<T>& t = ws.tape;
  forward(net, theta, X, N, t, false);
  const double value = loss_head(net, t, tg, mean, true);
  backward(net, theta, t);
  param_grad(net, t, grad);
  return value;
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
  template void forward<T>(const Net&, const T*, const T*, idx, Tape<T>&, bool);                              \
  template double loss_head<T>(const Net&, Tape<T>&, Targets<T>, bool, bool);                                 \
  template void backward<T>(const Net&, const T*, Tape<T>&);                                                  \
  template void param_grad<T>(const Net&, const Tape<T>&, T*);                                                \
  template void predict<T>(const Net&, const T*, const T*, idx, T*, Workspace<T>&);                           \
  template double loss<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, Workspace<T>&);              \
  template double loss_and_grad<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, Workspace<T>&); \
  template void backward_rows<T>(const Net&, const T*, const Tape<T>&, idx, idx, idx, std::vector<vec<T>>&);
TK_INST(float)
TK_INST(double)
#undef TK_INST

Net::Net(std::vector<idx> widths, std::vector<int> acts, int loss_code) : d(std::move(widths)) {
  if (d.size() < 2) throw std::invalid_argument("sizes: need at least two widths");
  if ((idx)acts.size() != L() - 1) throw std::invalid_argument("activation: one per hidden layer");
  for (int a : acts) {
    if (a < 0 || a > (int)Act::sin) throw std::invalid_argument("activation: unknown code");
    act.push_back((Act)a);
  }
  if (loss_code < 0 || loss_code > 1) throw std::invalid_argument("loss: unknown code");
  loss = (Loss)loss_code;
  off.assign(1, 0);
  for (idx l = 0; l < L(); ++l) off.push_back(off.back() + (d[l] + 1) * d[l + 1]);
}

}  // namespace tk
