// The GGN as the Gram matrix of the rows of J^T R^T (R^T R = H_out): the route for networks of
// few parameters on many samples, and the one-pass loss, gradient and GGN of a Gauss-Newton or
// Levenberg-Marquardt iteration (docs/curvature.md, "The Gram route").
#pragma once
#include "common.hpp"

namespace tk {

// One thread's scratch: R_n's rows backpropagated to each layer (U[l], (c, k, d[l+1])) and the
// chunk's Jacobian rows R (c k, P).
template <class T>
struct GramScratch {
  std::vector<vec<T>> U;
  vec<T> R;
};

// The Gram route's range (gram.cpp, gram_route): per-thread accumulators of (P, P) each.
constexpr idx kGramMaxParams = 2048;

// Whether the full GGN of N samples goes the Gram route (gram.cpp: the cost model).
bool gram_route(const Net& net, idx N);
// Tests: 1 forces the Gram route, -1 the other, 0 lets gram_route choose.
std::atomic<int>& gram_mode();

// G (P, P) = the GGN's data term by the Gram route; with grad (P,) also the gradient, and the
// loss is returned (it is computed either way).
template <class T>
double ggn_gram(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* G, T* grad,
                Workspace<T>& ws);

// The loss (returned), gradient (P,) and GGN (P, P) of one call: the Gram route in one sweep
// over the samples where it applies, else loss_and_grad and curvature_full.
template <class T>
double loss_grad_ggn(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad, T* G,
                     Workspace<T>& ws);

}  // namespace tk
