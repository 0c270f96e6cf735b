// The network description and the loss targets, shared by the C++ kernels (common.hpp) and the
// CUDA ones (cuda/common.cuh): host code only, no CUDA needed to compile it.
//
// Index letters (as in the Python docstrings): N samples, L layers (0-based l = 0..L-1),
// layer l maps a_l (width d[l]) to z_l (width d[l+1]); k = d[L] outputs; P parameters;
// m directions.  Layer l's parameters are the augmented matrix [W_l; b_l] of shape
// (d[l]+1, d[l+1]) raveled row-major at theta[off[l]:off[l+1]] (docs/design.md §1).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "formulas.hpp"  // Act, Loss

namespace tk {

using idx = std::int64_t;

// The network description: built once per MLP, shared by every call.
struct Net {
  std::vector<idx> d;    // widths d[0..L]
  std::vector<Act> act;  // activation of hidden layer outputs z_0..z_{L-2}
  Loss loss = Loss::mse;
  double loss_scale = 1.0;  // huber's delta, soft_l1's c (formulas.hpp, elem_loss)
  std::vector<idx> off;  // off[l] = start of layer l in theta, off[L] = P

  // Codes as kActNames / kLossNames number them; refuses what no MLP can have.
  Net(std::vector<idx> widths, std::vector<int> acts, int loss_code, double scale = 1.0)
      : d(std::move(widths)), loss_scale(scale) {
    if (!(scale > 0) || !std::isfinite(scale)) throw std::invalid_argument("loss_scale: must be finite and > 0");
    if (d.size() < 2) throw std::invalid_argument("sizes: need at least two widths");
    for (idx w : d)
      if (w < 1) throw std::invalid_argument("sizes: every width must be >= 1");
    if ((idx)acts.size() != L() - 1) throw std::invalid_argument("activation: one per hidden layer");
    for (int a : acts) {
      if (a < 0 || a > (int)Act::sin) throw std::invalid_argument("activation: unknown code");
      act.push_back((Act)a);
    }
    if (loss_code < 0 || loss_code > (int)Loss::gaussian) throw std::invalid_argument("loss: unknown code");
    loss = (Loss)loss_code;
    if (loss == Loss::gaussian && k() % 2) throw std::invalid_argument("sizes: 'gaussian' needs an even last width");
    off.assign(1, 0);
    for (idx l = 0; l < L(); ++l) off.push_back(off.back() + (d[l] + 1) * d[l + 1]);
  }
  idx L() const { return (idx)d.size() - 1; }
  idx P() const { return off.back(); }
  idx k() const { return d.back(); }
  // Values per sample of float targets Y: k, but one per (mean, log-variance) pair for gaussian.
  idx ky() const { return loss == Loss::gaussian ? k() / 2 : k(); }
  idx macs() const {  // multiply-adds of one sample's forward pass
    idx s = 0;
    for (idx l = 0; l < L(); ++l) s += d[l] * d[l + 1];
    return s;
  }
  idx din(idx l) const { return d[l]; }
  idx dout(idx l) const { return d[l + 1]; }
};

// Layer l's weights W_l (d[l], d[l+1]) and bias b_l (d[l+1]) within theta (host or device).
template <class T>
inline const T* weights(const Net& net, const T* theta, idx l) {
  return theta + net.off[l];
}
template <class T>
inline const T* bias(const Net& net, const T* theta, idx l) {
  return theta + net.off[l] + net.d[l] * net.d[l + 1];
}

// The loss targets (host or device pointers): float Y (N, ky) for the regression heads (ky = k, or
// k/2 for gaussian), int64 labels (N,) for ce.
template <class T>
struct Targets {
  const T* y = nullptr;
  const std::int64_t* labels = nullptr;
  // Per-sample weights (N,), null for none.  When given, the adaptor has folded the reduction in
  // (mean: w_n / sum w, and mean = false), so that sample n's weight is w[n] instead of 1/N or 1.
  const T* w = nullptr;
};

// Weight of each sample's loss in the data term: 1/N for reduction="mean", 1 for "sum".
template <class T>
inline T sample_weight(idx N, bool mean) {
  return mean ? T(1) / T(N) : T(1);
}

// Sample n's weight: s (sample_weight) times its own weight w[n] where weights are given.
// Host and device (the CUDA kernels read it too: cuda/forward_backward.cu, curvature.cu, rop.cu).
template <class T>
TK_HD T row_weight(const T* w, T s, idx n) {
  return w ? s * w[n] : s;
}

}  // namespace tk
