// The per-sample curvature factors of the Kronecker route, shared by the C++ kernels
// (curvature.hpp) and the CUDA ones (cuda/curvature.cuh): which of them a quantity needs, what
// each holds, and the values they take per sample (for the chunk sizes).  Host code only.
#pragma once
#include <algorithm>
#include <vector>

#include "net.hpp"

namespace tk {

// What a chunk's factors must hold: the diagonals (Q only where the GGN takes them), the
// diagonal blocks, or the full matrix.
enum class Need : int { diag = 0, blocks = 1, full = 2 };

// Per-sample curvature factors for samples [n0, n0 + c) (0-based layers, H_l = d[l+1]), each
// a buffer of Buf (host vectors or device buffers):
//   Q[l]     (c, H_l, H_l)     curvature with respect to z_l (symmetric)
//   Tm[l][m] (c, H_m, H_l)     M^{(l,m)} transposed, M^{(l,m)} = B_{m,l}^T Q_m, for l < m   (full)
//   S[l][m]  (c, H_l, d[m])    B_{m-1,l}^T act'(z_{m-1}), for m >= l + 2 (Hessian term 3, full)
//   U[l]     (c, k, H_l)       GGN only: d f/d z_l^T rows times a square root of H_out
template <class Buf>
struct FactorBuffers {
  std::vector<Buf> Q, U;
  std::vector<std::vector<Buf>> Tm, S;
};

// Values per sample of the factors `need` takes and of the widest per-chunk product scratch.
inline idx factor_values(const Net& net, Need need) {
  const idx L = net.L(), k = net.k();
  idx foot = k * k, widest = 0;
  for (idx l = 0; l < L; ++l) {
    const idx H = net.d[l + 1], Da = net.d[l] + 1;
    foot += 3 * H * H + k * H + 2 * H * net.d[l] + Da;
    widest = std::max(widest, Da * (Da + 1) / 2 + H * (H + 1) / 2);
    if (need == Need::full)
      for (idx m = l + 1; m < L; ++m) {
        foot += 2 * net.d[m + 1] * H + H * net.d[m];
        widest = std::max(widest, Da * (net.d[m] + 1) + Da * net.d[m + 1] + H * net.d[m]);
      }
  }
  return foot + widest;
}

}  // namespace tk
