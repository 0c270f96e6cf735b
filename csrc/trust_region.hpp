// The trust-region subproblem in the eigenbasis of the model's matrix (docs/design.md, "Data
// flow").  Compiled because Newton's exact subproblem on a small network is a secular iteration
// of tens of vector operations, which as numpy calls cost several times the kernels that feed it.
#pragma once
#include "common.hpp"

namespace tk {

// min over ph of  gh.ph + 1/2 sum_i lam_i ph_i^2  subject to |ph| <= radius, for F ascending
// eigenvalues lam and gh = Q^T g (Moré & Sorensen; the hard case included).  eps is the relative
// accuracy of the matrix.  Writes ph (F) and the predicted decrease -(gh.ph + 1/2 ph.lam.ph) into
// *pred; returns whether ph is on the boundary.  taylorkern/optim/_subproblem.py holds the numpy
// form of the same steps.
bool trust_region_eigenbasis(const double* lam, const double* gh, idx F, double radius, double eps, double* ph,
                             double* pred);

}  // namespace tk
