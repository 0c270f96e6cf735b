#include "lbfgs.hpp"

namespace tk {
namespace {

// Four independent partial sums let these loops vectorise without reassociating one running sum.

// r += c x, then (when z is given) the dot product z . r of the updated r, in one pass over r.
double axpy_dot(idx n, double c, const double* x, double* r, const double* z) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  idx i = 0;
  if (z) {
    for (; i + 4 <= n; i += 4)
      for (idx j = 0; j < 4; ++j) {
        r[i + j] += c * x[i + j];
        acc[j] += z[i + j] * r[i + j];
      }
    for (; i < n; ++i) {
      r[i] += c * x[i];
      acc[0] += z[i] * r[i];
    }
  } else {
    for (; i < n; ++i) r[i] += c * x[i];
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

double dot(idx n, const double* x, const double* y) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  idx i = 0;
  for (; i + 4 <= n; i += 4)
    for (idx j = 0; j < 4; ++j) acc[j] += x[i + j] * y[i + j];
  for (; i < n; ++i) acc[0] += x[i] * y[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace

void lbfgs_direction(const double* S, const double* Y, const double* rho, idx m, idx F, idx head, idx k,
                     double gamma, const double* g, double* alpha, double* out) {
  auto row = [&](const double* M, idx j) { return M + ((head + j) % m) * F; };
  auto slot = [&](idx j) { return (head + j) % m; };
  for (idx i = 0; i < F; ++i) out[i] = g[i];
  if (k == 0) {
    for (idx i = 0; i < F; ++i) out[i] *= -gamma;
    return;
  }
  // newest to oldest: alpha_j = rho_j s_j . q, q -= alpha_j y_j (each update fused with the next
  // pair's dot product)
  double d = dot(F, row(S, k - 1), out);
  for (idx j = k - 1; j >= 0; --j) {
    alpha[slot(j)] = rho[slot(j)] * d;
    d = axpy_dot(F, -alpha[slot(j)], row(Y, j), out, j > 0 ? row(S, j - 1) : nullptr);
  }
  // r = gamma q, then oldest to newest: beta_j = rho_j y_j . r, r += (alpha_j - beta_j) s_j
  for (idx i = 0; i < F; ++i) out[i] *= gamma;
  d = dot(F, row(Y, 0), out);
  for (idx j = 0; j < k; ++j) {
    const double beta = rho[slot(j)] * d;
    d = axpy_dot(F, alpha[slot(j)] - beta, row(S, j), out, j + 1 < k ? row(Y, j + 1) : nullptr);
  }
  for (idx i = 0; i < F; ++i) out[i] = -out[i];
}

}  // namespace tk
