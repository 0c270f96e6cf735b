// The GGN as the Gram matrix of the rows of J^T R^T (R^T R = H_out): the route for networks of
// few parameters on many samples, and the one-pass loss, gradient and GGN of a Gauss-Newton or
// Levenberg-Marquardt iteration (docs/curvature.md, "The Gram route").
#pragma once
#include "common.hpp"

namespace tk {

// One thread's scratch: R_n's rows backpropagated to each layer (U[l], (c, k, d[l+1])), the
// chunk's Jacobian rows R (c k, P), and for the Hessian the sums T2, T3 of its other terms with
// their per-chunk factors (gram.cpp, extra_terms_chunk).
template <class T>
struct GramScratch {
  std::vector<vec<T>> U;
  vec<T> R, T2, T3, A2, At, M, w;
};

// The Gram route's range (gram.cpp, gram_route): per-thread accumulators of (P, P) each.
constexpr idx kGramMaxParams = 2048;

// Whether the full GGN of N samples goes the Gram route (gram.cpp: the cost model).
bool gram_route(const Net& net, idx N);
// Tests: 1 forces the Gram route, -1 the other, 0 lets gram_route choose.
std::atomic<int>& gram_mode();

// Whether the full Hessian (gn false) or GGN of N samples goes the Gram route: the GGN where
// gram_route says, the Hessian too on networks of at most one hidden layer, whose terms beyond
// the GGN are a few small products (gram.cpp), except gaussian's: its Hessian's output curvature
// is indefinite, not a Gram matrix R^T R (formulas.hpp, curvature_root), and takes the Kronecker
// route.
inline bool gram_applies(const Net& net, idx N, bool gn) {
  return gram_route(net, N) && (gn || (net.L() <= 2 && net.loss != Loss::gaussian));
}

// G (P, P) = the GGN's data term (gn) or the Hessian's (gram_applies) by the Gram route; with
// grad (P,) also the gradient, and the loss is returned (it is computed either way).
template <class T>
double gram(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* G, T* grad,
            Workspace<T>& ws);

// The loss (returned), gradient (P,) and GGN (P, P) of one call: the Gram route in one sweep
// over the samples where it applies, else loss_and_grad and curvature_full.
template <class T>
double loss_grad_ggn(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, T* grad, T* G,
                     Workspace<T>& ws);

}  // namespace tk
