// Products H V and G V for V of shape (P, m): Pearlmutter's R-op, all m directions at once.
// The algorithm, layouts and every product are those of ../rop.cpp (read its header):
// tangents (N, m, d) so that each step is ONE cuBLAS product with N*m rows; V's layer slices
// transposed once to Vt_l[i][c][j] and Vtt_l[j][c][i]; the elementwise steps (tangent of the
// activation, output curvature, the R{g} update, the scatter into out) are one kernel each.
#include "forward_backward.cuh"
#include "rop.cuh"
#include "workspace.cuh"

namespace tk {
namespace cuda {

// Vt[(i*m + c)*dn + j] = v[(i*dn + j)*m + c], i <= di (bias row last).
template <class T>
__global__ void k_vt(idx di, idx dn, idx m, const T* __restrict__ v, T* __restrict__ vt) {
  TK_GRID_STRIDE(q, (di + 1) * m * dn) {
    const idx j = q % dn, c = (q / dn) % m, i = q / (dn * m);
    vt[q] = v[(i * dn + j) * m + c];
  }
}

// Vtt[(j*m + c)*di + i] = v[(i*dn + j)*m + c], i < di.
template <class T>
__global__ void k_vtt(idx di, idx dn, idx m, const T* __restrict__ v, T* __restrict__ vtt) {
  TK_GRID_STRIDE(q, dn * m * di) {
    const idx i = q % di, c = (q / di) % m, j = q / (di * m);
    vtt[q] = v[(i * dn + j) * m + c];
  }
}

// rz (N, m*dn) += vb (m*dn) per row; then, for a hidden layer, ra = act'(z) * rz.
template <class T>
__global__ void k_rz_finish(idx N, idx m, idx dn, const T* __restrict__ vb, T* __restrict__ rz,
                            const T* __restrict__ d1, T* __restrict__ ra) {
  TK_GRID_STRIDE(q, N * m * dn) {
    const idx j = q % dn, n = q / (m * dn);
    const T v = rz[q] + vb[q % (m * dn)];
    rz[q] = v;
    if (ra) ra[q] = d1[n * dn + j] * v;
  }
}

template <class T>
__global__ void k_scale(idx n, T c, const T* __restrict__ x, T* __restrict__ y) {
  TK_GRID_STRIDE(i, n) y[i] = c * x[i];
}

// ce: rg[n, c, :] = s p_n * (r - p_n . r) for each direction c.
template <class T>
__global__ void k_ce_curv(idx N, idx m, idx k, T s, const T* __restrict__ p, const T* __restrict__ rf,
                          T* __restrict__ rg) {
  TK_GRID_STRIDE(row, N * m) {
    const idx n = row / m;
    const T* r = rf + row * k;
    const T* pn = p + n * k;
    T dot = 0;
    for (idx j = 0; j < k; ++j) dot += pn[j] * r[j];
    for (idx j = 0; j < k; ++j) rg[row * k + j] = s * pn[j] * (r[j] - dot);
  }
}

// o[(i*dn + j)*m + c] = acc[(i*m + c)*dn + j] (+ tmp[(c*di + i)*dn + j] for i < di).
template <class T>
__global__ void k_scatter(idx di, idx dn, idx m, const T* __restrict__ acc, const T* __restrict__ tmp,
                          T* __restrict__ o) {
  TK_GRID_STRIDE(q, (di + 1) * dn * m) {
    const idx c = q % m, j = (q / m) % dn, i = q / (m * dn);
    T v = acc[(i * m + c) * dn + j];
    if (tmp && i < di) v += tmp[(c * di + i) * dn + j];
    o[q] = v;
  }
}

// rg = re * d1 (GGN) or re * d1 + e * d2 * rz (Hessian), over (N, m, di).
template <class T>
__global__ void k_rg(idx N, idx m, idx di, const T* __restrict__ re, const T* __restrict__ d1,
                     const T* __restrict__ e, const T* __restrict__ d2, const T* __restrict__ rz, T* __restrict__ rg) {
  TK_GRID_STRIDE(q, N * m * di) {
    const idx i = q % di, n = q / (m * di), s = n * di + i;
    T v = re[q] * d1[s];
    if (e) v += e[s] * d2[s] * rz[q];
    rg[q] = v;
  }
}

template <class T>
void rop(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* V, idx m, T* out,
         bool gn, Workspace<T>& ws) {
  const idx L = net.L(), k = net.k();
  Tape<T>& t = ws.tape;
  cudaStream_t st = ws.stream();
  forward(net, theta, X, N, ws, !gn);
  loss_head(net, ws, tg, mean, !gn, false);
  if (!gn) backward(net, theta, ws);
  const T s = sample_weight<T>(N, mean);

  auto &Vt = ws.Vt, &Vtt = ws.Vtt, &Rz = ws.Rz, &Ra = ws.Ra;
  for (auto* v : {&Vt, &Vtt, &Rz, &Ra}) v->resize(L);
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    const T* v = V + net.off[l] * m;
    Vt[l].resize((di + 1) * m * dn);
    k_vt<T><<<grid_for((di + 1) * m * dn), kThreads, 0, st>>>(di, dn, m, v, Vt[l].data());
    TK_CHECK_LAUNCH();
    if (!gn && l > 0) {
      Vtt[l].resize(dn * m * di);
      k_vtt<T><<<grid_for(dn * m * di), kThreads, 0, st>>>(di, dn, m, v, Vtt[l].data());
      TK_CHECK_LAUNCH();
    }
  }

  // Forward tangents: Rz_l = Ra_l W_l + a_l VW_l + Vb_l; Ra_{l+1} = act'(z_l) * Rz_l.
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    Rz[l].resize(N * m * dn);
    T* rz = Rz[l].data();
    gemm<T>(ws.blas(), false, false, N, m * dn, di, T(1), t.in(l), di, Vt[l].data(), m * dn, T(0), rz, m * dn);
    if (l > 0)
      gemm<T>(ws.blas(), false, false, N * m, dn, di, T(1), Ra[l].data(), di, weights(net, theta, l), dn, T(1), rz,
              dn);
    const bool hidden = l + 1 < L;
    if (hidden) Ra[l + 1].resize(N * m * dn);
    k_rz_finish<T><<<grid_for(N * m * dn), kThreads, 0, st>>>(N, m, dn, Vt[l].data() + di * m * dn, rz,
                                                                hidden ? t.d1[l].data() : nullptr,
                                                                hidden ? Ra[l + 1].data() : nullptr);
    TK_CHECK_LAUNCH();
  }

  // Output curvature applied to the output tangent.
  auto &Rg = ws.Rg, &Re = ws.Re, &tmp = ws.tmp, &acc = ws.acc;
  Rg.resize(N * m * k);
  if (net.loss == Loss::mse) {
    k_scale<T><<<grid_for(N * m * k), kThreads, 0, st>>>(N * m * k, 2 * s / T(k), Rz[L - 1].data(), Rg.data());
  } else {
    k_ce_curv<T><<<grid_for(N * m), kThreads, 0, st>>>(N, m, k, s, t.p.data(), Rz[L - 1].data(), Rg.data());
  }
  TK_CHECK_LAUNCH();

  // Backward.
  const T* one = ones(ws, N);
  for (idx l = L - 1; l >= 0; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    // acc[i][c][j] = R{grad}: a_l^T Rg_l, and the bias row 1^T Rg_l.
    acc.resize((di + 1) * m * dn);
    gemm<T>(ws.blas(), true, false, di, m * dn, N, T(1), t.in(l), di, Rg.data(), m * dn, T(0), acc.data(), m * dn);
    gemm<T>(ws.blas(), false, false, 1, m * dn, N, T(1), one, N, Rg.data(), m * dn, T(0), acc.data() + di * m * dn,
            m * dn);
    const bool cross = !gn && l > 0;
    if (cross) {  // tmp[c][i][j] = sum_n Ra_l[n][c][i] g_l[n][j]
      tmp.resize(m * di * dn);
      gemm<T>(ws.blas(), true, false, m * di, dn, N, T(1), Ra[l].data(), m * di, t.g[l].data(), dn, T(0), tmp.data(),
              dn);
    }
    k_scatter<T><<<grid_for((di + 1) * dn * m), kThreads, 0, st>>>(di, dn, m, acc.data(),
                                                                    cross ? tmp.data() : nullptr, out + net.off[l] * m);
    TK_CHECK_LAUNCH();
    if (l == 0) break;

    // Re_{l-1} = Rg_l W_l^T (+ g_l VW_l^T); Rg_{l-1} = Re * act' (+ e * act'' * Rz_{l-1}).
    Re.resize(N * m * di);
    gemm<T>(ws.blas(), false, true, N * m, di, dn, T(1), Rg.data(), dn, weights(net, theta, l), dn, T(0), Re.data(),
            di);
    if (!gn)
      gemm<T>(ws.blas(), false, false, N, m * di, dn, T(1), t.g[l].data(), dn, Vtt[l].data(), m * di, T(1), Re.data(),
              m * di);
    Rg.resize(N * m * di);
    k_rg<T><<<grid_for(N * m * di), kThreads, 0, st>>>(N, m, di, Re.data(), t.d1[l - 1].data(),
                                                        gn ? nullptr : t.e[l - 1].data(),
                                                        gn ? nullptr : t.d2[l - 1].data(),
                                                        gn ? nullptr : Rz[l - 1].data(), Rg.data());
    TK_CHECK_LAUNCH();
  }
}

template void rop<float>(const Net&, const float*, const float*, idx, Targets<float>, bool, const float*, idx, float*,
                         bool, Workspace<float>&);
template void rop<double>(const Net&, const double*, const double*, idx, Targets<double>, bool, const double*, idx,
                          double*, bool, Workspace<double>&);

}  // namespace cuda
}  // namespace tk
