// Forward pass fused with the activations, the loss head, and backpropagation.
//
// Per layer l (0-based):  z_l = a_l W_l + b_l,  a_{l+1} = act(z_l) for l < L-1,  f = z_{L-1}.
// Loss head (per-sample weight s = 1/N or 1):
//   mse  loss = s/k sum (f - y)^2,         g_{L-1} = 2 s / k (f - y)
//   ce   loss = s sum (logsumexp f - f_y),  g_{L-1} = s (softmax(f) - onehot(y))
// Backward:  e_l = g_{l+1} W_{l+1}^T (adjoint of a_{l+1}),  g_l = e_l * act'(z_l);
// gradient of [W_l; b_l] = [a_l^T g_l; 1^T g_l].
// Large products go through BLAS; the elementwise work is fused per row and
// parallel over samples.  All buffers live in the Tape, reused across calls.
#pragma once
#include "common.hpp"

namespace tk {

template <class T>
struct Tape {
  idx N = 0;  // the batch's samples (a sample's weight is 1/N); a chunk tape (workspace.hpp) holds fewer rows
  const T* X = nullptr;
  std::vector<vec<T>> a;       // a[l], l = 1..L-1: (N, d[l]); a[0] is X
  std::vector<vec<T>> d1, d2;  // act'(z_l), act''(z_l) for hidden l = 0..L-2: (N, d[l+1])
  vec<T> F;                    // outputs (N, k)
  vec<T> p;                    // ce: softmax(F) (N, k)
  vec<T> rowloss;              // per-sample losses (N,), times the sample's weight w[n] where given
  const T* w = nullptr;        // the rows' sample weights (Targets::w, set by head_rows), or null
  std::vector<vec<T>> g;       // g[l] = dloss/dz_l: (N, d[l+1])
  std::vector<vec<T>> e;       // e[l] = dloss/da_{l+1} for l = 0..L-2: (N, d[l+1])

  const T* in(idx l) const { return l == 0 ? X : a[l].data(); }
};

// Sizes every array of the tape for N samples of X (d2 only when `second`).  The *_rows
// functions then fill rows [n0, n1); slices of different threads never overlap.
template <class T>
void prepare_tape(const Net& net, const T* X, idx N, Tape<T>& tape, bool second);

// Rows of a, d1 (and d2 when `second`; with `lean` too, only where act'' is not linear in act:
// activations.hpp, d2_form), F.
template <class T>
void forward_rows(const Net& net, const T* theta, Tape<T>& tape, idx n0, idx n1, bool second, bool lean = false);

// Rows of rowloss, g[L-1] (when want_grad) and p (ce).
template <class T>
void head_rows(const Net& net, Tape<T>& tape, Targets<T> tg, bool mean, idx n0, idx n1, bool want_grad);

// Rows of g[l] for l < L-1 and of e[l]; with `grad` (P,) instead, the gradient's sum over
// rows [n0, n1) (overwriting grad, or added to it with `add`), the bias sums taken in the
// passes that write g, and no e.  A one-unit
// output layer is backpropagated by one fused pass (e, g, and the output weights' gradient)
// instead of two products that are all memory traffic.  Without `full`, only what the R-op
// reads: not g[0] (unless a one-unit output layer sits on it), and under a one-unit output
// layer not e[L-2] (g_out w^T, rank one: the R-op forms it where it needs it).
template <class T>
void backprop_rows(const Net& net, const T* theta, Tape<T>& tape, idx n0, idx n1, T* grad = nullptr, bool full = true,
                   bool add = false);

// The loss from the rows' losses (double accumulation, in sample order: deterministic).
template <class T>
double total_loss(const Net& net, const Tape<T>& tape, bool mean);

// The whole batch's forward pass (each product and loop parallel by itself), for the Jacobian.
template <class T>
void forward(const Net& net, const T* theta, const T* X, idx N, Tape<T>& tape, bool second);

// Whole calls, split over samples (common.hpp: over_samples).
template <class T>
void predict(const Net& net, const T* theta, const T* X, idx N, T* out, Workspace<T>& ws);
template <class T>
double loss(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, Workspace<T>& ws);
template <class T>
double loss_and_grad(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad,
                     Workspace<T>& ws);

}  // namespace tk

namespace tk {
// Backpropagates r rows per sample through the network's Jacobian:
// U[L-1] (N, r, k) given; U[l-1] = (U[l] W_l^T) * act'(z_{l-1}) for l = L-1..1, each (N, r, d[l]).
// Samples [n0, n0+N) of the tape.  With U[L-1] = identity rows this is d f / d z_l.
template <class T>
void backward_rows(const Net& net, const T* theta, const Tape<T>& tape, idx n0, idx N, idx r, std::vector<vec<T>>& U);
}  // namespace tk
