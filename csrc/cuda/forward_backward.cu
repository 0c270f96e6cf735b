// See forward_backward.cuh (and ../forward_backward.hpp for the math).
#include "activations.cuh"
#include "forward_backward.cuh"
#include "tile.cuh"
#include "workspace.cuh"

namespace tk {
namespace cuda {

// Working-precision exp/log on the device (float stays float, as std::exp on the CPU).
__device__ __forceinline__ float t_exp(float x) {
  return expf(x);
}
__device__ __forceinline__ double t_exp(double x) {
  return exp(x);
}
__device__ __forceinline__ float t_log1p(float x) {
  return log1pf(x);
}
__device__ __forceinline__ double t_log1p(double x) {
  return log1p(x);
}

// z (N, dn) += b; then, for a hidden layer, z = act(z) in place with d1 (and d2 when given).
template <class T>
__global__ void k_bias_act(Tile tl, const T* __restrict__ b, T* __restrict__ z, T* __restrict__ d1, T* __restrict__ d2,
                           Act f, bool hidden) {
  TK_TILES(tl, j, ch) {
    if (j >= tl.cols) continue;
    const T bj = b[j];
    TK_TILE_ROWS(tl, ch, n) {
      const idx i = n * tl.cols + j;
      const T v = z[i] + bj;
      if (!hidden) {
        z[i] = v;
        continue;
      }
      T a = 0, g1 = 0, g2 = 0;
      activate1<T>(f, v, a, g1, g2, d2 != nullptr);
      z[i] = a;
      if (d1) d1[i] = g1;
      if (d2) d2[i] = g2;
    }
  }
}

// The loss head per sample (formulas.hpp): rowloss, G = dloss/df (when G is given) and, for
// ce, the softmax p.  Sample n's scale is row_weight(tg.w, s, n) (../net.hpp), and its rowloss
// is times w[n] where weighted, as in ../forward_backward.cpp (head_rows).
template <class T>
__global__ void k_loss_head(idx N, idx k, Loss loss, double scale, const T* __restrict__ F, Targets<T> tg, T s,
                            T* __restrict__ G,
                            T* __restrict__ p, T* __restrict__ rowloss) {
  const T* w = tg.w;
  TK_GRID_STRIDE(n, N) {
    const T* f = F + n * k;
    T* g = G ? G + n * k : nullptr;
    const T sn = row_weight(w, s, n);
    if (loss == Loss::mse) {
      rowloss[n] = mse_row(k, f, tg.y + n * k, sn, g);
      if (w) rowloss[n] *= w[n];
      continue;
    }
    T* pn = p + n * k;
    if (elementwise(loss)) {  // bce, poisson: in double, as the activations (activations.cuh)
      double acc = 0;
      for (idx j = 0; j < k; ++j) {
        double gj, hj;
        acc += elem_loss<DeviceMath>(loss, (double)f[j], (double)tg.y[n * k + j], scale, gj, hj);
        pn[j] = (T)hj;
        if (g) g[j] = sn / T(k) * (T)gj;
      }
      rowloss[n] = w ? (T)acc * w[n] : (T)acc;
      continue;
    }
    if (loss == Loss::gaussian) {  // p = (q, z) of each pair, in double as above
      const idx h = k / 2;
      double acc = 0;
      for (idx j = 0; j < h; ++j) {
        double q, z, gm, gv;
        acc += gauss_pair<DeviceMath>((double)f[j], (double)f[h + j], (double)tg.y[n * h + j], q, z, gm, gv);
        pn[j] = (T)q, pn[h + j] = (T)z;
        if (g) g[j] = sn / T(h) * (T)gm, g[h + j] = sn / T(h) * (T)gv;
      }
      rowloss[n] = w ? (T)acc * w[n] : (T)acc;
      continue;
    }
    const idx top = ce_top(k, f);
    for (idx j = 0; j < k; ++j) pn[j] = t_exp(f[j] - f[top]);
    const T rest = ce_softmax(k, top, pn);
    const idx y = (idx)tg.labels[n];
    if (y < 0 || y >= k) {  // checked before any kernel runs; never read out of bounds
      rowloss[n] = T(NAN);
      if (g)
        for (idx j = 0; j < k; ++j) g[j] = T(NAN);
      continue;
    }
    rowloss[n] = ce_loss(t_log1p(rest), f, top, y);
    if (w) rowloss[n] *= w[n];
    if (g) ce_gradient(k, pn, y, top, rest, sn, g);
  }
}

// total = sum of x in double, by ONE block in a fixed order (deterministic).
template <class T>
__global__ void k_sum(idx n, const T* __restrict__ x, double* __restrict__ total) {
  __shared__ double part[kThreads];
  double acc = 0;
  for (idx i = threadIdx.x; i < n; i += blockDim.x) acc += (double)x[i];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = part[0];
}

// g (rows, cols) = e * d1; d1 null: g is e, not written.  g's column sums per chunk into
// partial (when given).  e may be g.
template <class T>
__global__ void k_backprop(Tile tl, const T* e, Deriv<T> d1, T* g, T* __restrict__ partial) {
  TK_TILES(tl, j, ch) {
    T acc = 0;
    if (j < tl.cols) {
      TK_TILE_ROWS(tl, ch, n) {
        const idx i = n * tl.cols + j;
        T v = e[i];
        if (d1.on()) {
          v *= d1(i);
          g[i] = v;
        }
        acc += v;
      }
    }
    if (partial) tile_colsum_store(tl, ch, j, acc, partial);
  }
}

// out[j] = the sum over chunks of partial[c, j], in chunk order.  The partial sums were just
// written (in L2): the loads are independent, so unrolled they are in flight together, and
// blocks of kColsumThreads spread a layer's columns over many SMs.
constexpr int kColsumThreads = 64;
template <class T>
__global__ void k_colsum_finish(idx chunks, idx cols, const T* __restrict__ partial, T* __restrict__ out) {
  TK_GRID_STRIDE(j, cols) {
    T s = 0;
#pragma unroll 8
    for (idx c = 0; c < chunks; ++c) s += partial[c * cols + j];
    out[j] = s;
  }
}

template <class T>
void colsum_finish(Workspace<T>& ws, const Tile& tl, T* out) {
  const unsigned blocks = (unsigned)std::min<idx>((tl.cols + kColsumThreads - 1) / kColsumThreads, idx(1) << 16);
  k_colsum_finish<T><<<blocks, kColsumThreads, 0, ws.stream()>>>(tl.chunks, tl.cols, ws.part.data(), out);
  TK_CHECK_LAUNCH();
}

template <class T>
void scale_colsum(Workspace<T>& ws, idx rows, idx cols, const T* e, Deriv<T> d1, T* g, T* sums) {
  const Tile tl = make_tile(rows, cols);
  if (sums) ws.part.resize(tl.chunks * tl.cols);
  k_backprop<T><<<tile_grid(tl), tile_block(tl), 0, ws.stream()>>>(tl, e, d1, g, sums ? ws.part.data() : nullptr);
  TK_CHECK_LAUNCH();
  if (sums) colsum_finish(ws, tl, sums);
}

// u (c, r, di) rows of sample n scaled by d1[n, :] (d1 already offset to the chunk).
template <class T>
__global__ void k_scale_rows_per_sample(idx c, idx r, idx di, const T* __restrict__ d1, T* __restrict__ u) {
  TK_GRID_STRIDE(q, c * r * di) {
    const idx i = q % di, n = q / (r * di);
    u[q] *= d1[n * di + i];
  }
}

template <class T>
static void resize_tape(const Net& net, Tape<T>& t, idx N, Derivs need) {
  const idx L = net.L();
  t.a.resize(L);
  t.d1.resize(L);
  t.d2.resize(L);
  t.g.resize(L);
  t.e.resize(L);
  for (idx l = 1; l < L; ++l) t.a[l].resize(N * net.d[l]);
  for (idx l = 0; l + 1 < L; ++l) {
    if (need != Derivs::none) t.d1[l].resize(N * net.d[l + 1]);
    if (need == Derivs::second) t.d2[l].resize(N * net.d[l + 1]);
  }
  t.F.resize(N * net.k());
  t.N = N;
}

template <class T>
void forward(const Net& net, const T* theta, const T* X, idx N, Workspace<T>& ws, Derivs need, bool lean) {
  Tape<T>& t = ws.tape;
  resize_tape(net, t, N, need);
  t.lean = lean || need == Derivs::none;  // so that nothing reads d1 unwritten (backward_rows refuses)
  t.X = X;
  const idx L = net.L();
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    const bool hidden = l + 1 < L;
    T* z = hidden ? t.a[l + 1].data() : t.F.data();
    gemm<T>(ws.blas(), false, false, N, dn, di, T(1), t.in(l), di, weights(net, theta, l), dn, T(0), z, dn);
    const bool want_d1 = hidden && need != Derivs::none && deriv(net, t, l).d1;
    const bool want_d2 = hidden && need == Derivs::second && !(lean && d2_form(net.act[l]).linear);
    const Tile tl = make_tile(N, dn);
    k_bias_act<T><<<tile_grid(tl), tile_block(tl), 0, ws.stream()>>>(
        tl, bias(net, theta, l), z, want_d1 ? t.d1[l].data() : nullptr, want_d2 ? t.d2[l].data() : nullptr,
        hidden ? net.act[l] : Act::identity, hidden);
    TK_CHECK_LAUNCH();
    checkpoint(ws, N * di * dn);
  }
}

template <class T>
void loss_head(const Net& net, Workspace<T>& ws, Targets<T> tg, bool mean, bool want_grad, bool want_value) {
  Tape<T>& t = ws.tape;
  const idx N = t.N, k = net.k(), L = net.L();
  const T s = sample_weight<T>(N, mean);
  t.w = tg.w;
  t.rowloss.resize(N);
  if (want_grad) t.g[L - 1].resize(N * k);
  if (net.loss != Loss::mse) t.p.resize(N * k);
  k_loss_head<T><<<grid_for(N), kThreads, 0, ws.stream()>>>(
      N, k, net.loss, net.loss_scale, t.F.data(), tg, s, want_grad ? t.g[L - 1].data() : nullptr, t.p.data(), t.rowloss.data());
  TK_CHECK_LAUNCH();
  if (!want_value) return;
  t.total.resize(1);
  k_sum<T><<<1, kThreads, 0, ws.stream()>>>(N, t.rowloss.data(), t.total.data());
  TK_CHECK_LAUNCH();
  // into page-locked memory: asynchronous, the call goes on queuing its work
  TK_CUDA(cudaMemcpyAsync(ws.lane->host.p, t.total.data(), sizeof(double), cudaMemcpyDeviceToHost, ws.stream()));
}

template <class T>
double read_loss(const Net& net, Workspace<T>& ws, bool mean) {
  await_stream(ws.stream());
  const T s = sample_weight<T>(ws.tape.N, mean);
  return data_term(net.loss, net.k(), ws.lane->host.p[0], (double)s);
}

template <class T>
void backward(const Net& net, const T* theta, Workspace<T>& ws, T* grad, bool keep_e) {
  Tape<T>& t = ws.tape;
  const idx N = t.N, L = net.L();
  if (grad)  // the output layer's bias row: the column sums of g
    scale_colsum<T>(ws, N, net.k(), t.g[L - 1].data(), Deriv<T>{}, nullptr,
                    grad + net.off[L - 1] + net.d[L - 1] * net.k());
  for (idx l = L - 1; l >= 0; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    if (grad)
      gemm<T>(ws.blas(), true, false, di, dn, N, T(1), t.in(l), di, t.g[l].data(), dn, T(0), grad + net.off[l], dn);
    if (l == 0) break;
    // g_{l-1} = e * act'(z_{l-1}), e = g_l W_l^T (written over g_{l-1} unless e is kept); its
    // column sums are layer l-1's bias row.
    t.g[l - 1].resize(N * di);
    T* e = t.g[l - 1].data();
    if (keep_e) {
      t.e[l - 1].resize(N * di);
      e = t.e[l - 1].data();
    }
    gemm<T>(ws.blas(), false, true, N, di, dn, T(1), t.g[l].data(), dn, weights(net, theta, l), dn, T(0), e, di);
    scale_colsum<T>(ws, N, di, e, deriv(net, t, l - 1), t.g[l - 1].data(),
                    grad ? grad + net.off[l - 1] + net.d[l - 1] * di : nullptr);
    checkpoint(ws, 2 * N * di * dn);
  }
}

template <class T>
void predict(const Net& net, const T* theta, const T* X, idx N, T* out, Workspace<T>& ws) {
  forward(net, theta, X, N, ws, Derivs::none);
  TK_CUDA(cudaMemcpyAsync(out, ws.tape.F.data(), sizeof(T) * N * net.k(), cudaMemcpyDeviceToDevice, ws.stream()));
}

template <class T>
double loss(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, Workspace<T>& ws) {
  forward(net, theta, X, N, ws, Derivs::none);
  loss_head(net, ws, tg, mean, false, true);
  return read_loss(net, ws, mean);
}

template <class T>
double loss_and_grad(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad,
                     Workspace<T>& ws) {
  forward(net, theta, X, N, ws, Derivs::first, true);
  loss_head(net, ws, tg, mean, true, true);
  backward(net, theta, ws, grad, false);
  return read_loss(net, ws, mean);
}

template <class T>
void backward_rows(const Net& net, const T* theta, Workspace<T>& ws, idx n0, idx c, idx r, std::vector<DevBuf<T>>& U) {
  if (ws.tape.lean) throw Error("backward_rows: needs the stored act' of a forward pass that is not lean");
  U.resize(net.L());
  for (idx l = net.L() - 1; l >= 1; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    U[l - 1].resize(c * r * di);
    gemm<T>(ws.blas(), false, true, c * r, di, dn, T(1), U[l].data(), dn, weights(net, theta, l), dn, T(0),
            U[l - 1].data(), di);
    k_scale_rows_per_sample<T><<<grid_for(c * r * di), kThreads, 0, ws.stream()>>>(
        c, r, di, ws.tape.d1[l - 1].data() + n0 * di, U[l - 1].data());
    TK_CHECK_LAUNCH();
    checkpoint(ws, c * r * di * dn);
  }
}

#define TK_INST(T)                                                                                             \
  template void forward<T>(const Net&, const T*, const T*, idx, Workspace<T>&, Derivs, bool);                  \
  template void loss_head<T>(const Net&, Workspace<T>&, Targets<T>, bool, bool, bool);                         \
  template double read_loss<T>(const Net&, Workspace<T>&, bool);                                               \
  template void backward<T>(const Net&, const T*, Workspace<T>&, T*, bool);                                    \
  template void predict<T>(const Net&, const T*, const T*, idx, T*, Workspace<T>&);                            \
  template double loss<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, Workspace<T>&);               \
  template double loss_and_grad<T>(const Net&, const T*, const T*, idx, Targets<T>, bool, T*, Workspace<T>&);  \
  template void backward_rows<T>(const Net&, const T*, Workspace<T>&, idx, idx, idx, std::vector<DevBuf<T>>&); \
  template void colsum_finish<T>(Workspace<T>&, const Tile&, T*);                                              \
  template void scale_colsum<T>(Workspace<T>&, idx, idx, const T*, Deriv<T>, T*, T*);
TK_INST(float)
TK_INST(double)
#undef TK_INST

}  // namespace cuda
}  // namespace tk
