// Diagonals of H and G (shared/MATH.md): only the diagonal blocks touch the diagonal, and
// there the Kronecker structure gives
//   diag[(l, i, j)] = sum_n a~_l[n, i]^2 Q_l[n, j, j]
// i.e. ONE matrix product (a~_l^2)^T q_l per layer, with q_l[n, j] = Q_l[n, j, j].  For the
// GGN, Q_l = U_l^T U_l, so q_l = column sums of U_l^2 (no d x d matrix at all); for the
// Hessian the Q_l come from the backward recursion of curvature.cpp.
// Chunked over samples like the full matrices; products in BLAS, the rest OpenMP over samples.
#include "diagonal.hpp"

#include <algorithm>

#include "blas.hpp"
#include "curvature.hpp"
#include "workspace.hpp"

namespace tk {

template <class T>
void curvature_diag(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws) {
  const idx L = net.L(), k = net.k();
  Tape<T>& t = ws.tape;
  curvature_tape(net, theta, X, N, tg, mean, gn, t);
  std::fill(out, out + net.P(), T(0));
  const idx C = chunk_size(net, N, gn ? Need::diag : Need::blocks);
  Factors<T>& f = ws.f;
  auto &Asq = ws.Asq, &q = ws.q;
  for (idx n0 = 0; n0 < N; n0 += C) {
    const idx c = std::min(C, N - n0);
    chunk_factors(net, theta, t, mean, gn, gn ? Need::diag : Need::blocks, n0, c, f);
    for (idx l = 0; l < L; ++l) {
      const idx di = net.d[l], Da = di + 1, H = net.d[l + 1];
      Asq.resize(c * Da);
      const T* a = t.in(l) + n0 * di;
      for (idx n = 0; n < c; ++n) {
        for (idx i = 0; i < di; ++i) Asq[n * Da + i] = a[n * di + i] * a[n * di + i];
        Asq[n * Da + di] = T(1);
      }
      q.assign(c * H, T(0));
      parallel_for(c, c * H * k, [&](idx n) {
        T* qn = q.data() + n * H;
        if (gn) {
          for (idx r = 0; r < k; ++r) {
            const T* u = f.U[l].data() + (n * k + r) * H;
            for (idx j = 0; j < H; ++j) qn[j] += u[j] * u[j];
          }
        } else {
          for (idx j = 0; j < H; ++j) qn[j] = f.Q[l][(n * H + j) * H + j];
        }
      });
      gemm<T>(true, false, Da, H, c, T(1), Asq.data(), Da, q.data(), H, T(1), out + net.off[l], H);
    }
  }
}

template void curvature_diag<float>(const Net&, const float*, const float*, idx, Targets<float>, bool, bool, float*,
                                    Workspace<float>&);
template void curvature_diag<double>(const Net&, const double*, const double*, idx, Targets<double>, bool, bool,
                                     double*, Workspace<double>&);

}  // namespace tk
