// Diagonals of H and G (../diagonal.cpp):  diag[(l, i, j)] = sum_n a~_l[n, i]^2 Q_l[n, j, j],
// ONE cuBLAS product (a~_l^2)^T q_l per layer and chunk.  For the GGN q_l[n, j] is the column
// sum of U_l[n]^2 (no d x d matrix); for the Hessian the diagonal of the Q_l of curvature.cu.
#include "curvature.cuh"
#include "diagonal.cuh"
#include "workspace.cuh"

namespace tk {
namespace cuda {

// Asq (c, di+1) = [a^2, 1].
template <class T>
__global__ void k_asq(idx c, idx di, const T* __restrict__ a, T* __restrict__ Asq) {
  TK_GRID_STRIDE(q, c * (di + 1)) {
    const idx i = q % (di + 1), n = q / (di + 1);
    if (i < di) {
      const T v = a[n * di + i];
      Asq[q] = v * v;
    } else {
      Asq[q] = T(1);
    }
  }
}

// q[n, j] = sum_r U[n, r, j]^2 (GGN) or Q[n, j, j] (Hessian).
template <class T>
__global__ void k_q_diag(idx c, idx H, idx k, const T* __restrict__ U, const T* __restrict__ Q, T* __restrict__ q) {
  TK_GRID_STRIDE(x, c * H) {
    const idx j = x % H, n = x / H;
    if (U) {
      T acc = 0;
      for (idx r = 0; r < k; ++r) {
        const T u = U[(n * k + r) * H + j];
        acc += u * u;
      }
      q[x] = acc;
    } else {
      q[x] = Q[(n * H + j) * H + j];
    }
  }
}

template <class T>
void curvature_diag(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, bool gn, T* out,
                    Workspace<T>& ws) {
  const idx L = net.L(), k = net.k();
  cudaStream_t st = ws.stream();
  curvature_tape(net, theta, X, N, tg, mean, gn, ws);
  TK_CUDA(cudaMemsetAsync(out, 0, sizeof(T) * net.P(), st));
  const Need need = gn ? Need::diag : Need::blocks;
  const idx C = chunk_size(net, N, need, chunk_budget(sizeof(T)));
  Factors<T>& f = ws.f;
  auto &Asq = ws.Asq, &q = ws.q;
  for (idx n0 = 0; n0 < N; n0 += C) {
    const idx c = std::min(C, N - n0);
    chunk_factors(net, theta, ws, mean, gn, need, n0, c);
    for (idx l = 0; l < L; ++l) {
      const idx di = net.d[l], Da = di + 1, H = net.d[l + 1];
      Asq.resize(c * Da);
      k_asq<T><<<grid_for(c * Da), kThreads, 0, st>>>(c, di, ws.tape.in(l) + n0 * di, Asq.data());
      TK_CHECK_LAUNCH();
      q.resize(c * H);
      k_q_diag<T><<<grid_for(c * H), kThreads, 0, st>>>(c, H, k, gn ? f.U[l].data() : nullptr,
                                                         gn ? nullptr : f.Q[l].data(), q.data());
      TK_CHECK_LAUNCH();
      gemm<T>(ws.blas(), true, false, Da, H, c, T(1), Asq.data(), Da, q.data(), H, T(1), out + net.off[l], H);
    }
    checkpoint(ws, c * factor_work(net));
  }
}

template void curvature_diag<float>(const Net&, const float*, const float*, idx, Targets<float>, bool, bool, float*,
                                    Workspace<float>&);
template void curvature_diag<double>(const Net&, const double*, const double*, idx, Targets<double>, bool, bool,
                                     double*, Workspace<double>&);

}  // namespace cuda
}  // namespace tk
