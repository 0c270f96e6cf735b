// J[(n, c), (l, i, j)] = a~_l[n, i] * U_l[n, c, j], where a~_l = [a_l, 1] is layer l's
// augmented input and U_l = d f / d z_l is backpropagated from U_{L-1} = I (k rows per
// sample, one matrix product per layer: backward_rows).  The fill is parallel over samples,
// each thread writing its own rows of J.
#include "jacobian.hpp"

#include <algorithm>

#include "forward_backward.hpp"
#include "workspace.hpp"

namespace tk {

template <class T>
void jacobian(const Net& net, const T* theta, const T* X, idx N, T* J, Workspace<T>& ws) {
  const idx L = net.L(), k = net.k(), P = net.P();
  Tape<T>& t = ws.tape;
  forward(net, theta, X, N, t, false);
  auto& U = ws.U;
  U.resize(L);
  U[L - 1].assign(N * k * k, T(0));
  for (idx n = 0; n < N; ++n)
    for (idx c = 0; c < k; ++c) U[L - 1][(n * k + c) * k + c] = T(1);
  backward_rows(net, theta, t, 0, N, k, U);
  // The fill, a block of about kFillValues values of J at a time, so that an interrupted call
  // (interrupt.hpp) stops between blocks.
  constexpr idx kFillValues = idx(1) << 22;
  const idx block = std::max<idx>(1, kFillValues / std::max<idx>(1, k * P));
  for (idx b0 = 0; b0 < N && !interrupted(); b0 += block)
    parallel_for(std::min(block, N - b0), std::min(block, N - b0) * k * P, [&](idx i) {
      const idx n = b0 + i;
      for (idx c = 0; c < k; ++c) {
        T* row = J + (n * k + c) * P;
        for (idx l = 0; l < L; ++l) {
          const idx di = net.d[l], dn = net.d[l + 1];
          const T* a = t.in(l) + n * di;
          const T* u = U[l].data() + (n * k + c) * dn;
          T* r = row + net.off[l];
          for (idx i = 0; i < di; ++i)
            for (idx j = 0; j < dn; ++j) r[i * dn + j] = a[i] * u[j];
          std::copy(u, u + dn, r + di * dn);
        }
      }
    });
}

template void jacobian<float>(const Net&, const float*, const float*, idx, float*, Workspace<float>&);
template void jacobian<double>(const Net&, const double*, const double*, idx, double*, Workspace<double>&);

}  // namespace tk
