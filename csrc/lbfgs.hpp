// L-BFGS's search direction from its stored pairs: the two-loop recursion (docs/design.md,
// "Data flow").  Compiled because on small networks the optimizer's own arithmetic, done as a
// few dozen numpy calls, cost more than the loss and gradient it steers.
#pragma once
#include "common.hpp"

namespace tk {

// out = -H g, H the inverse-Hessian approximation of the k newest pairs (s_i, y_i) with initial
// scaling gamma.  S and Y hold m rows of F values used as a ring: the j-th oldest pair is row
// (head + j) % m, j = 0 .. k-1; rho[i] = 1 / (s_i . y_i).  alpha (m) is scratch.  k = 0 gives
// -gamma g.  out may not alias g.
void lbfgs_direction(const double* S, const double* Y, const double* rho, idx m, idx F, idx head, idx k,
                     double gamma, const double* g, double* alpha, double* out);

}  // namespace tk
