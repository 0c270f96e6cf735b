#include "trust_region.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tk {
namespace {

double norm(const double* x, idx n) {
  double t = 0.0;
  for (idx i = 0; i < n; ++i) t += x[i] * x[i];
  return std::sqrt(t);
}

// |p(s)|, p(s)_i = gh_i / (lam_i + s)
double step_norm(const double* lam, const double* gh, idx F, double s) {
  double t = 0.0;
  for (idx i = 0; i < F; ++i) {
    const double p = gh[i] / (lam[i] + s);
    t += p * p;
  }
  return std::sqrt(t);
}

double predicted_decrease(const double* lam, const double* gh, const double* ph, idx F) {
  double lin = 0.0, quad = 0.0;
  for (idx i = 0; i < F; ++i) {
    lin += gh[i] * ph[i];
    quad += lam[i] * ph[i] * ph[i];
  }
  return -(lin + 0.5 * quad);
}

}  // namespace

bool trust_region_eigenbasis(const double* lam, const double* gh, idx F, double radius, double eps, double* ph,
                             double* pred) {
  const double lam1 = lam[0];
  const double scale = std::max({std::abs(lam1), std::abs(lam[F - 1]), std::numeric_limits<double>::min()});
  const double gnorm = norm(gh, F);
  auto done = [&](bool boundary) {
    *pred = predicted_decrease(lam, gh, ph, F);
    return boundary;
  };

  if (lam1 > 0) {  // the Newton step, if it is inside
    for (idx i = 0; i < F; ++i) ph[i] = -gh[i] / lam[i];
    if (norm(ph, F) <= radius) return done(false);
  }
  const double lo = std::max(0.0, -lam1);

  if (lam1 <= 0) {
    // Hard case when even just above -lam_1 the step is inside the region: the components of g
    // along the lowest eigenvector(s) (lam_i within 10 eps scale of lam_1) are numerically zero.
    const double cut = lam1 + 10 * eps * scale;
    double near2 = 0.0, far2 = 0.0;
    for (idx i = 0; i < F; ++i) {
      if (lam[i] <= cut) {
        near2 += gh[i] * gh[i];
        ph[i] = 0.0;
      } else {
        ph[i] = -gh[i] / (lam[i] - lam1);
        far2 += ph[i] * ph[i];
      }
    }
    const bool hard = std::sqrt(near2) <= 10 * eps * std::max(gnorm, scale * radius) ||
                      step_norm(lam, gh, F, lo + 10 * eps * scale) <= radius;
    if (hard && std::sqrt(far2) <= radius) {
      // to the boundary along the lowest eigenvector, in the sign that does not climb along g
      const double tau = std::sqrt(std::max(radius * radius - far2, 0.0));
      ph[0] += gh[0] > 0 ? -tau : tau;
      return done(true);
    }
  }

  // Ordinary case: s > lo with |p(s)| = radius.  |p(s)| falls from > radius at lo to 0, and is at
  // most radius for s >= |g| / radius - lam_1.  Safeguarded Newton on the nearly linear
  // 1/|p(s)| - 1/radius, bisecting the bracket [a, b] when Newton leaves it.
  double a = lo, b = std::max(lo, gnorm / radius - lam1);
  b += std::max(1e-12 * b, 1e-300);
  for (int it = 0; it < 60 && step_norm(lam, gh, F, b) > radius; ++it) b = 2 * b + 1e-300;  // rounding only
  double s = b;
  for (int it = 0; it < 200; ++it) {
    double n2 = 0.0, dn = 0.0;
    for (idx i = 0; i < F; ++i) {
      const double d = lam[i] + s, p = gh[i] / d;
      n2 += p * p;
      dn += p * p / d;
    }
    const double n = std::sqrt(n2);
    if (std::abs(n - radius) <= 1e-12 * radius) break;
    (n > radius ? a : b) = s;
    dn /= n;  // -d|p|/ds
    double s_new = dn > 0 ? s + (n - radius) / radius * n / dn : std::nan("");
    if (!(a < s_new && s_new < b)) s_new = 0.5 * (a + b);
    if (s_new == s) break;
    s = s_new;
  }
  for (idx i = 0; i < F; ++i) ph[i] = -gh[i] / (lam[i] + s);
  return done(true);
}

}  // namespace tk
