// J[(n, c), (l, i, j)] = a~_l[n, i] * U_l[n, c, j] (../jacobian.cpp): U_{L-1} = identity rows,
// backpropagated by backward_rows (one cuBLAS product per layer), then one fill kernel per
// layer writing its columns of J, coalesced along j.
#include "forward_backward.cuh"
#include "jacobian.cuh"
#include "workspace.cuh"

namespace tk {
namespace cuda {

// U (N, k, k) = identity rows per sample.
template <class T>
__global__ void k_identity_rows(idx N, idx k, T* __restrict__ U) {
  TK_GRID_STRIDE(q, N * k * k) {
    const idx j = q % k, c = (q / k) % k;
    U[q] = c == j ? T(1) : T(0);
  }
}

// J[r*P + off + i*dn + j] = a[n, i] * u[r, j] (i < di), u[r, j] (i == di); r = n*k + c.
template <class T>
__global__ void k_jac_fill(idx N, idx k, idx di, idx dn, idx P, idx off, const T* __restrict__ a,
                           const T* __restrict__ u, T* __restrict__ J) {
  TK_GRID_STRIDE(q, N * k * (di + 1) * dn) {
    const idx j = q % dn, i = (q / dn) % (di + 1), r = q / ((di + 1) * dn), n = r / k;
    const T uj = u[r * dn + j];
    J[r * P + off + i * dn + j] = i < di ? a[n * di + i] * uj : uj;
  }
}

template <class T>
void jacobian(const Net& net, const T* theta, const T* X, idx N, T* J, Workspace<T>& ws) {
  const idx L = net.L(), k = net.k(), P = net.P();
  forward(net, theta, X, N, ws, Derivs::first);
  auto& U = ws.U;
  U.resize(L);
  U[L - 1].resize(N * k * k);
  k_identity_rows<T><<<grid_for(N * k * k), kThreads, 0, ws.stream()>>>(N, k, U[L - 1].data());
  TK_CHECK_LAUNCH();
  backward_rows(net, theta, ws, 0, N, k, U);
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    k_jac_fill<T><<<grid_for(N * k * (di + 1) * dn), kThreads, 0, ws.stream()>>>(
        N, k, di, dn, P, net.off[l], ws.tape.in(l), U[l].data(), J);
    TK_CHECK_LAUNCH();
    checkpoint(ws, N * k * (di + 1) * dn);
  }
}

template void jacobian<float>(const Net&, const float*, const float*, idx, float*, Workspace<float>&);
template void jacobian<double>(const Net&, const double*, const double*, idx, double*, Workspace<double>&);

}  // namespace cuda
}  // namespace tk
