// The sums over chunks of samples that the full matrix and the blocks accumulate
// (curvature.cpp, cuda/curvature.cu): one per block and term, sized here for both the C++
// workspace (vectors) and the CUDA one (device buffers), which name them alike.
#pragma once
#include "net.hpp"

namespace tk {

// Values of diagonal block l's packed Kronecker sum: the upper triangles of a~ a~^T (d[l] + 1
// square) by those of Q_l (d[l+1] square).
inline idx packed_diag_values(const Net& net, idx l) {
  const idx Da = net.d[l] + 1, H = net.d[l + 1];
  return Da * (Da + 1) / 2 * (H * (H + 1) / 2);
}

// Sizes the full matrix's accumulators over chunks, one per block and term (each is
// overwritten by the first chunk): Kd[l] the packed diagonal block, Ko[l][m] the Kronecker part
// of block (l, m), and for the Hessian the cross terms E3a[l] (m = l + 1) and E3[l][m] (m >= l + 2).
template <class Workspace>
void full_accumulators(const Net& net, bool gn, Workspace& ws) {
  const idx L = net.L();
  auto Da = [&](idx l) { return net.d[l] + 1; };
  auto Hd = [&](idx l) { return net.d[l + 1]; };
  auto &Kd = ws.Kd, &E3a = ws.E3a;
  auto &Ko = ws.Ko, &E3 = ws.E3;
  Kd.resize(L), E3a.resize(L), Ko.resize(L), E3.resize(L);
  for (idx l = 0; l < L; ++l) {
    Kd[l].resize(packed_diag_values(net, l));
    Ko[l].resize(L), E3[l].resize(L);
    for (idx m = l + 1; m < L; ++m) {
      Ko[l][m].resize(Da(l) * Da(m) * Hd(m) * Hd(l));
      if (!gn && m == l + 1) E3a[l].resize(Da(l) * Hd(l) * Hd(m));
      if (!gn && m >= l + 2) E3[l][m].resize(Da(l) * Hd(m) * Hd(l) * net.d[m]);
    }
  }
}

}  // namespace tk
