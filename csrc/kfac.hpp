// K-FAC's Kronecker factors of each layer's GGN block, in one pass over the samples
// (docs/kfac.md): A_l = mean over samples of a~ a~^T (the layer's inputs with a 1 appended; with
// sample weights tg.w the weighted mean) and B_l = the sum over samples of u u^T over rows u
// backpropagated from the output to the layer's pre-activations (the sample weight inside).
#pragma once
#include <vector>

#include "common.hpp"

namespace tk {

// A[l] ((d[l]+1)^2) and B[l] (d[l+1]^2), full symmetric matrices, for N samples.  noise null:
// the k rows of a square root of each sample's output Hessian, the GGN's (curvature_root with
// gn, "exact"; every loss).
// Otherwise M sampled rows per sample: ce, noise (N, M) uniforms in [0, 1), the label drawn by
// inverse CDF of the softmax, row sqrt(s / M) (p - e_label); the other likelihoods, noise (N, M, k)
// the MLP's unit-weight gradient rows, row sqrt(s / M) noise.  s is sample n's weight
// (net.hpp's row_weight).
// A[l] null: that layer's A is not computed (the first layer's depends on the inputs only, and an
// optimizer that keeps it need not pay for it again).
template <class T>
void kfac_factors(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* noise, idx M,
                  const std::vector<T*>& A, const std::vector<T*>& B, Workspace<T>& ws);

// EKFAC's eigenvalues from the same pass: for each layer's orthogonal bases Qa ((d[l]+1)^2) and
// Qb (d[l+1]^2), out[l] ((d[l]+1, d[l+1])) = sum over samples n and rows u of
// ((Qa^T a~_n)_i)^2 ((Qb^T u)_j)^2: the layer's curvature (the rows' sum) in the basis Qa kron Qb,
// its diagonal.
template <class T>
void kfac_eigen_scales(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* noise,
                       idx M, const std::vector<const T*>& Qa, const std::vector<const T*>& Qb,
                       const std::vector<T*>& out, Workspace<T>& ws);

}  // namespace tk
