// Tiny networks, eight samples at a time: the forward pass of a block of kLanes samples with
// every quantity held as one SIMD vector per unit ([unit][lane]), so that each step is a
// whole-vector operation.  For networks whose layers are all narrow (the seed's [2,8,1]),
// where the layered kernels spend their time setting up products of a few hundred
// multiply-adds; used by forward_backward.cpp (the loss and gradient), rop.cpp (one-direction
// products) and curvature.cpp (the full GGN and Hessian).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "activations.hpp"
#include "common.hpp"
#include "formulas.hpp"
#include "forward_backward.hpp"
#include "simd.hpp"

namespace tk {

constexpr idx kLanes = 8;
constexpr idx kLanesMaxWidth = 32;  // widest layer taken this way

// One value per lane (simd.hpp: one vector, or a row of the target's vectors).
template <class T>
struct Lanes {
  using type = typename Vec<T, kLanes>::type;
};

// `n` lanes of scratch, the first on a 64-byte boundary (a vector that straddles two cache
// lines costs two accesses).
template <class T>
typename Lanes<T>::type* lanes_scratch(vec<T>& scratch, idx n) {
  constexpr idx slack = 64 / sizeof(T);
  scratch.resize(n * kLanes + slack);
  const auto addr = reinterpret_cast<std::uintptr_t>(scratch.data());
  const idx skip = (idx)(((64 - addr % 64) % 64) / sizeof(T));
  return reinterpret_cast<typename Lanes<T>::type*>(scratch.data() + skip);
}

// Sets n lanes to v.  Not std::fill: a template argument loses Lanes<T>::type's element
// alignment, and std::fill's `const value&` of the plain (64-byte aligned) vector type would
// bind to a Lane on the stack, which need not be 64-byte aligned (undefined; UBSan saw it).
template <class T>
void lanes_fill(typename Lanes<T>::type* p, idx n, typename Lanes<T>::type v) {
  for (idx i = 0; i < n; ++i) p[i] = v;
}

// Between blocks of a lanes loop over samples [n_begin, ...): true, every 1024 blocks, once the
// call is interrupted (interrupt.hpp); the loop then stops and the call's result is discarded.
inline bool lanes_interrupted(idx n0, idx n_begin) {
  return (n0 - n_begin) % (1024 * kLanes) == 0 && interrupted();
}

inline bool lanes_fit(const Net& net) {
  for (idx w : net.d)
    if (w > kLanesMaxWidth) return false;
  return true;
}

// Unit offsets of the layers in [unit][lane] buffers: layer l's units start at at[l] (layer 0
// the inputs, layer L the outputs); `units` is their total.
struct LaneLayout {
  std::vector<idx> at;
  idx units = 0, width = 0;
  explicit LaneLayout(const Net& net) : at(net.L() + 1) {
    for (idx l = 0; l <= net.L(); ++l) at[l] = units, units += net.d[l], width = std::max(width, net.d[l]);
  }
};

// Loads samples [n0, n0 + nb) of X into A's layer 0 (zero in the other lanes); returns nb.
template <class T>
idx lanes_load(const Net& net, const T* X, idx N, idx n0, typename Lanes<T>::type* A) {
  const idx nb = std::min(kLanes, N - n0), d0 = net.d[0];
  for (idx i = 0; i < d0; ++i) {
    A[i] = typename Lanes<T>::type{};
    for (idx b = 0; b < nb; ++b) A[i][b] = X[(n0 + b) * d0 + i];
  }
  return nb;
}

// Forward pass of the block: A's later layers (activations; the outputs at at[L]), D1 (and D2
// unless null) the derivatives of the hidden layers' outputs.  With V (one direction, theta's
// layout), also the tangents: RZ of every layer's outputs (RF at at[L]) and RA = act' * RZ of
// the hidden ones.
template <class T>
void lanes_forward(const Net& net, const T* theta, const LaneLayout& lay, typename Lanes<T>::type* A,
                   typename Lanes<T>::type* D1, typename Lanes<T>::type* D2, const T* V = nullptr,
                   typename Lanes<T>::type* RA = nullptr, typename Lanes<T>::type* RZ = nullptr) {
  using Lane = typename Lanes<T>::type;
  const Lane zero = {};
  const idx L = net.L();
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    const T *W = weights(net, theta, l), *bias = W + di * dn;
    const Lane* a = A + lay.at[l];
    Lane* z = A + lay.at[l + 1];
    if (V) {
      const T *VW = V + net.off[l], *Vb = VW + di * dn;
      const Lane* ra = RA + lay.at[l];
      Lane* rz = RZ + lay.at[l + 1];
      for (idx j = 0; j < dn; ++j) {
        Lane zz = zero + bias[j], rr = zero + Vb[j];
        for (idx i = 0; i < di; ++i) {
          zz += a[i] * W[i * dn + j];
          rr += a[i] * VW[i * dn + j];
          if (l > 0) rr += ra[i] * W[i * dn + j];
        }
        z[j] = zz;
        rz[j] = rr;
      }
    } else {
      for (idx j = 0; j < dn; ++j) {
        Lane zz = zero + bias[j];
        for (idx i = 0; i < di; ++i) zz += a[i] * W[i * dn + j];
        z[j] = zz;
      }
    }
    if (l + 1 == L) break;
    Lane* d1 = D1 + lay.at[l + 1];
    activate<T>(net.act[l], 1, dn * kLanes, reinterpret_cast<T*>(z), nullptr, reinterpret_cast<T*>(z),
                reinterpret_cast<T*>(d1), D2 ? reinterpret_cast<T*>(D2 + lay.at[l + 1]) : nullptr);
    if (V)
      for (idx j = 0; j < dn; ++j) RA[lay.at[l + 1] + j] = d1[j] * RZ[lay.at[l + 1] + j];
  }
}

// The block's output adjoint held in delta (k lanes) taken back through the layers, into U
// (P lanes, theta's layout): a_i delta_j at W_l[i, j] and delta_j at b_l[j] for every layer,
// assigned (Add false: a per-sample row of J^T or of the gradient) or added (Add true: summed
// over blocks).  delta and next are scratch of lay.width lanes each, both overwritten.
template <bool Add, class T>
void lanes_backprop(const Net& net, const T* theta, const LaneLayout& lay, const typename Lanes<T>::type* A,
                    const typename Lanes<T>::type* D1, typename Lanes<T>::type* delta,
                    typename Lanes<T>::type* next, typename Lanes<T>::type* U) {
  using Lane = typename Lanes<T>::type;
  for (idx l = net.L() - 1; l >= 0; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    const Lane* a = A + lay.at[l];
    Lane* u = U + net.off[l];
    for (idx i = 0; i < di; ++i)
      for (idx j = 0; j < dn; ++j) {
        if constexpr (Add)
          u[i * dn + j] += a[i] * delta[j];
        else
          u[i * dn + j] = a[i] * delta[j];
      }
    for (idx j = 0; j < dn; ++j) {
      if constexpr (Add)
        u[di * dn + j] += delta[j];
      else
        u[di * dn + j] = delta[j];
    }
    if (l == 0) break;
    const T* W = weights(net, theta, l);
    const Lane* d1 = D1 + lay.at[l];
    for (idx i = 0; i < di; ++i) {
      Lane e = {};
      for (idx j = 0; j < dn; ++j) e += delta[j] * W[i * dn + j];
      next[i] = e * d1[i];
    }
    std::copy(next, next + di, delta);
  }
}

// p = softmax of the block's outputs F (k lanes), lane by lane.
template <class T>
void lanes_softmax(idx k, const typename Lanes<T>::type* F, typename Lanes<T>::type* p) {
  using Lane = typename Lanes<T>::type;
  Lane mx = F[0], sum = {};
  for (idx j = 1; j < k; ++j) mx = where_greater(F[j], mx, F[j], mx);
  for (idx j = 0; j < k; ++j) {
    for (idx b = 0; b < kLanes; ++b) p[j][b] = v_exp(F[j][b] - mx[b]);
    sum += p[j];
  }
  for (idx j = 0; j < k; ++j) p[j] /= sum;
}

// Each lane's sample weight (net.hpp's row_weight: s, or s w[n] with weights), zero in the lanes
// past the block's nb samples, so that those contribute nothing.
template <class T>
typename Lanes<T>::type lanes_weights(Targets<T> tg, T s, idx n0, idx nb) {
  typename Lanes<T>::type sw = {};
  for (idx b = 0; b < nb; ++b) sw[b] = row_weight(tg.w, s, n0 + b);
  return sw;
}

// g = dloss/df for the block's outputs F (k lanes; sw the lanes' sample weights, lanes_weights);
// p receives what the head keeps for H_out (k lanes): ce's softmax, an elementwise loss's l''
// (formulas.hpp).  Lane-wise forms of formulas.hpp's mse_row, ce_gradient and elem_loss, which
// the scalar kernels (and the CUDA ones) use: ce's formulas pick the most likely class by index,
// different in each lane, and calling them sample by sample (with lanes_softmax in ce_softmax's
// form) made the one-direction products of tiny ce networks markedly slower (bench/RESULTS.md).
template <class T>
void lanes_output_gradient(const Net& net, const typename Lanes<T>::type* F, Targets<T> tg, idx n0, idx nb,
                           const typename Lanes<T>::type& sw, typename Lanes<T>::type* p,
                           typename Lanes<T>::type* g) {
  using Lane = typename Lanes<T>::type;
  const idx k = net.k();
  if (net.loss == Loss::mse) {
    Lane c;
    for (idx b = 0; b < kLanes; ++b) c[b] = mse_curvature(k, sw[b]);
    for (idx j = 0; j < k; ++j) {
      Lane y = {};
      for (idx b = 0; b < nb; ++b) y[b] = tg.y[(n0 + b) * k + j];
      g[j] = c * (F[j] - y);
    }
    return;
  }
  if (elementwise(net.loss)) {  // as head_rows: g_j = (sw / k) l'(f_j), p_j = l''(f_j)
    const T c_scale = (T)net.loss_scale;
    const Lane c = sw / T(k);
    for (idx j = 0; j < k; ++j) {
      // every lane (y = 0 past nb, where sw = 0): a loop of fixed length the compiler vectorises
      Lane y = {}, gj, h;
      for (idx b = 0; b < nb; ++b) y[b] = tg.y[(n0 + b) * k + j];
      with_loss(net.loss, [&](auto tag) {  // no branch on the loss left in the loop
        // simd: inlined into the R-op, huber's and soft_l1's loops stayed scalar, with branches
#pragma omp simd
        for (idx b = 0; b < kLanes; ++b) elem_loss<VMath>(tag.value, F[j][b], y[b], c_scale, gj[b], h[b]);
      });
      g[j] = c * gj;
      p[j] = h;
    }
    return;
  }
  if (net.loss == Loss::gaussian) {  // as head_rows: per pair g = (sw / h) (dl/dmu, dl/dv), p = (q, z)
    const idx h = k / 2;
    const Lane c = sw / T(h);
    for (idx j = 0; j < h; ++j) {
      Lane y = {}, q, z, gm, gv;
      for (idx b = 0; b < nb; ++b) y[b] = tg.y[(n0 + b) * h + j];
#pragma omp simd
      for (idx b = 0; b < kLanes; ++b) gauss_pair<VMath>(F[j][b], F[h + j][b], y[b], q[b], z[b], gm[b], gv[b]);
      g[j] = c * gm, g[h + j] = c * gv;
      p[j] = q, p[h + j] = z;
    }
    return;
  }
  lanes_softmax<T>(k, F, p);
  for (idx j = 0; j < k; ++j) g[j] = sw * p[j];
  for (idx b = 0; b < nb; ++b) {  // p_y - 1 as minus the other p: exact where p_y is near 1
    const idx y = (idx)tg.labels[n0 + b];
    T rest = 0;
    for (idx j = 0; j < k; ++j) rest += j == y ? T(0) : p[j][b];
    g[y][b] = -sw[b] * rest;
  }
}

// The sum, in double, of the block's per-sample losses over its nb samples, each times its own
// weight where weights are given: formulas.hpp's mse_row, ce and elem_loss pieces applied sample
// by sample, the values head_rows computes.  With rows, each sample's loss is also stored there
// (rows[b] for the block's sample b).
template <class T>
double lanes_loss_sum(const Net& net, const typename Lanes<T>::type* F, Targets<T> tg, idx n0, idx nb,
                      T* rows = nullptr) {
  const idx k = net.k();
  T f[kLanesMaxWidth], e[kLanesMaxWidth];
  double total = 0;
  for (idx b = 0; b < nb; ++b) {
    const idx n = n0 + b;
    for (idx j = 0; j < k; ++j) f[j] = F[j][b];
    T v;
    if (net.loss == Loss::mse) {
      v = mse_row<T>(k, f, tg.y + n * k, T(0), nullptr);
    } else if (elementwise(net.loss)) {
      v = 0;
      for (idx j = 0; j < k; ++j) {
        T gj, h;
        v += elem_loss<VMath>(net.loss, f[j], tg.y[n * k + j], (T)net.loss_scale, gj, h);
      }
    } else if (net.loss == Loss::gaussian) {
      const idx h = k / 2;
      v = 0;
      for (idx j = 0; j < h; ++j) {
        T q, z, gm, gv;
        v += gauss_pair<VMath>(f[j], f[h + j], tg.y[n * h + j], q, z, gm, gv);
      }
    } else {
      const idx top = ce_top(k, f);
      for (idx j = 0; j < k; ++j) e[j] = v_exp(f[j] - f[top]);
      const T rest = ce_softmax(k, top, e);
      v = ce_loss(v_log1p(rest), f, top, (idx)tg.labels[n]);
    }
    if (tg.w) v *= tg.w[n];
    if (rows) rows[b] = v;
    total += (double)v;
  }
  return total;
}

}  // namespace tk
