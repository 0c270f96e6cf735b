// Forward pass fused with the activations, the loss head, and backpropagation, on the GPU
// (mirrors ../forward_backward.hpp; the math is written there).
//
// Products through cuBLAS (N rows at once); the bias, the activation and its derivatives are
// one fused row pass after each product (common.cuh, Tile), as are backpropagation's product
// with act' and the bias rows of the gradient (column sums, deterministic); the loss head is
// one thread per sample; the loss total is summed in double by one block (deterministic), as
// the CPU sums serially.
#pragma once
#include "blas.hpp"
#include "common.cuh"

namespace tk {
namespace cuda {

template <class T>
struct Tape {
  idx N = 0;
  const T* X = nullptr;
  std::vector<DevBuf<T>> a;       // a[l], l = 1..L-1: (N, d[l]); a[0] is X
  std::vector<DevBuf<T>> d1, d2;  // act'(z_l), act''(z_l) for hidden l = 0..L-2: (N, d[l+1])
  bool lean = false;              // d1 not stored for relu layers (see deriv)
  DevBuf<T> F;                    // outputs (N, k)
  DevBuf<T> p;                    // ce: softmax(F) (N, k)
  DevBuf<T> rowloss;              // per-sample losses (N,), each times its weight w[n] where weighted
  const T* w = nullptr;           // the call's sample weights (N,) on the device, or null (../net.hpp, Targets)
  std::vector<DevBuf<T>> g;       // g[l] = dloss/dz_l: (N, d[l+1])
  std::vector<DevBuf<T>> e;       // e[l] = dloss/da_{l+1} for l = 0..L-2: (N, d[l+1])
  DevBuf<double> total;           // the loss sum (1,)

  const T* in(idx l) const { return l == 0 ? X : a[l].data(); }
};

// act'(z_l) of hidden layer l as the row passes read it: the stored d1, or, for relu after a
// lean forward pass, 1 where a_{l+1} > 0 (exact: a > 0 exactly where z > 0), which saves the
// forward pass a store stream.  Both null: no factor (the pass reads e as it is).
template <class T>
struct Deriv {
  const T* d1 = nullptr;
  const T* a = nullptr;
  __host__ __device__ bool on() const { return d1 || a; }
  __host__ __device__ T operator()(idx i) const { return d1 ? d1[i] : (a[i] > T(0) ? T(1) : T(0)); }
};
template <class T>
inline Deriv<T> deriv(const Net& net, const Tape<T>& t, idx l) {
  if (t.lean && net.act[l] == Act::relu) return {nullptr, t.a[l + 1].data()};
  return {t.d1[l].data(), nullptr};
}

// All functions below queue work on ws.stream (through ws.blas) and do not synchronise,
// except those returning a host value; between layers they pass a checkpoint (workspace.cuh),
// which throws Interrupted once the call is interrupted.

// Which derivatives of the activations a forward pass stores: none (predict, loss), act'
// (tape.d1), act' and act'' (tape.d2).
enum class Derivs { none, first, second };

// Fills tape.a, tape.F and the derivatives asked for.  theta, X on the device.  `lean` skips
// act'' where it is linear in act (d2_form: the R-op forms that term from a), and relu's act'
// (deriv): for the calls whose passes read act' through deriv only.
template <class T>
void forward(const Net& net, const T* theta, const T* X, idx N, Workspace<T>& ws, Derivs need, bool lean = false);

// g[L-1] and the per-sample losses (tape.p for ce); with want_value, their sum in double is
// queued too, for read_loss.  Sample n's scale is row_weight(tg.w, s, n) (../net.hpp); tape.w
// keeps tg.w for the curvature kernels.
template <class T>
void loss_head(const Net& net, Workspace<T>& ws, Targets<T> tg, bool mean, bool want_grad, bool want_value);

// The loss value of the last loss_head(want_value): waits for all the work queued so far.
template <class T>
double read_loss(const Net& net, Workspace<T>& ws, bool mean);

// g[l] for l < L-1, and e[l] when keep_e; with grad (P,) on the device, the gradient too.
template <class T>
void backward(const Net& net, const T* theta, Workspace<T>& ws, T* grad = nullptr, bool keep_e = true);

template <class T>
void predict(const Net& net, const T* theta, const T* X, idx N, T* out, Workspace<T>& ws);
template <class T>
double loss(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, Workspace<T>& ws);
template <class T>
double loss_and_grad(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad,
                     Workspace<T>& ws);

// Backpropagates r rows per sample through the network's Jacobian:
// U[L-1] (c, r, k) given; U[l-1] = (U[l] W_l^T) * act'(z_{l-1}) for l = L-1..1, each (c, r, d[l]).
// Samples [n0, n0+c) of the tape.
template <class T>
void backward_rows(const Net& net, const T* theta, Workspace<T>& ws, idx n0, idx c, idx r, std::vector<DevBuf<T>>& U);

// g (rows, cols) = e * d1 (d1 off: g is e, not written), and with `sums` the column sums of g
// into sums (cols,), through ws.part.  e may be g.
template <class T>
void scale_colsum(Workspace<T>& ws, idx rows, idx cols, const T* e, Deriv<T> d1, T* g, T* sums);

// The column sums of a tiled pass that stored its per-chunk sums in ws.part, into out (cols,).
template <class T>
void colsum_finish(Workspace<T>& ws, const Tile& tl, T* out);

}  // namespace cuda
}  // namespace tk
