// Products H V and G V for V of shape (P, m): Pearlmutter's R-op, all m directions at once.
// The algorithm, layouts and every product are those of ../rop.cpp (read its header):
// tangents (N, m, d) so that each step is ONE cuBLAS product with N*m rows; V's layer slices
// transposed once to Vt_l[i][c][j] and Vtt_l[j][c][i]; the elementwise steps (tangent of the
// activation, output curvature, the R{g} update with the column sums that are the next bias
// row, the scatter into out) are one kernel each.  With one direction (m = 1, a Newton-CG
// step's product) V is read in place and R{grad} is written straight into out: no transposed
// copies, no scatter.  The Hessian's act''(z) Rz term is formed as in ../rop.cpp (D2Term):
// from the stored act'' and Rz, or, where act'' is linear in act (d2_form), as (k0 + k1 a) Ra,
// with neither act'' nor the hidden Rz stored; relu and identity have none.
#include <utility>

#include "activations.cuh"
#include "forward_backward.cuh"
#include "rop.cuh"
#include "tile.cuh"
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

// rz (N, m*dn) += vb (m*dn) per row, written back when `keep`; for a hidden layer,
// ra = act'(z) * rz.
template <class T>
__global__ void k_rz_finish(Tile tl, idx dn, const T* __restrict__ vb, T* __restrict__ rz, bool keep, Deriv<T> d1,
                            T* __restrict__ ra) {
  TK_TILES(tl, j, ch) {
    if (j >= tl.cols) continue;
    const idx jj = j % dn;
    const T bj = vb[j];
    TK_TILE_ROWS(tl, ch, n) {
      const idx x = n * tl.cols + j;
      const T v = rz[x] + bj;
      if (keep) rz[x] = v;
      if (ra) ra[x] = d1(n * dn + jj) * v;
    }
  }
}

template <class T>
__global__ void k_scale(idx n, T c, const T* __restrict__ x, T* __restrict__ y) {
  TK_GRID_STRIDE(i, n) y[i] = c * x[i];
}

// The output curvature kernels below scale sample n by row_weight(w, s, n) (../net.hpp; w the
// sample weights or null), as ../rop.cpp's out_curvature does.

// mse with weights: rg[n, c, :] = mse_curvature(k, s_n) rf[n, c, :] (without, k_scale).
template <class T>
__global__ void k_mse_curv(idx N, idx m, idx k, T s, const T* __restrict__ w, const T* __restrict__ rf,
                           T* __restrict__ rg) {
  TK_GRID_STRIDE(i, N * m * k) rg[i] = mse_curvature(k, row_weight(w, s, i / (m * k))) * rf[i];
}

// ce: rg[n, c, :] = H_out rf[n, c, :] for each direction c (formulas.hpp's ce_curvature_times).
template <class T>
__global__ void k_ce_curv(idx N, idx m, idx k, T s, const T* __restrict__ w, const T* __restrict__ p,
                          const T* __restrict__ rf, T* __restrict__ rg) {
  TK_GRID_STRIDE(row, N * m) {
    const T* pn = p + row / m * k;
    ce_curvature_times(k, pn, ce_top(k, pn), rf + row * k, row_weight(w, s, row / m), rg + row * k);
  }
}

// elementwise heads: rg[n, c, j] = s_n/k l''(f_nj) rf[n, c, j], l'' in p (formulas.hpp).
template <class T>
__global__ void k_diag_curv(idx N, idx m, idx k, T s, const T* __restrict__ w, const T* __restrict__ p,
                            const T* __restrict__ rf, T* __restrict__ rg) {
  TK_GRID_STRIDE(i, N * m * k) rg[i] = row_weight(w, s, i / (m * k)) / T(k) * p[i / (m * k) * k + i % k] * rf[i];
}

// gaussian: rg[n, c, :] = H_out rf[n, c, :], the Hessian's or with gn the Fisher's, from the
// pairs' (q, z) in p (formulas.hpp's gauss_curvature_times).
template <class T>
__global__ void k_gauss_curv(idx N, idx m, idx k, T s, const T* __restrict__ w, bool gn, const T* __restrict__ p,
                             const T* __restrict__ rf, T* __restrict__ rg) {
  TK_GRID_STRIDE(row, N * m) {
    gauss_curvature_times(k, p + row / m * k, rf + row * k, row_weight(w, s, row / m), gn, rg + row * k);
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

// The Hessian's act''(z_{l-1}) Rz_{l-1} term: none (GGN, relu, identity), from the stored
// act'' and Rz, or from (a_l, Ra_l) as (k0 + k1 a) Ra.
enum class D2Term : int { none, stored, linear };

// rg (N, m*di) = re * act'(z) + e * T2 (T2 = p * q stored, (k0 + k1 p) * q linear; p and e
// per sample (N, di), q per direction like re), with rg's column sums per chunk into partial.
template <class T>
__global__ void k_rg(Tile tl, idx di, const T* __restrict__ re, Deriv<T> d1, const T* __restrict__ e, D2Term kind,
                     const T* __restrict__ p, const T* __restrict__ q, T k0, T k1, T* __restrict__ rg,
                     T* __restrict__ partial) {
  TK_TILES(tl, j, ch) {
    T acc = 0;
    if (j < tl.cols) {
      const idx jj = j % di;
      TK_TILE_ROWS(tl, ch, n) {
        const idx x = n * tl.cols + j, y = n * di + jj;
        T v = re[x] * d1(y);
        if (kind == D2Term::stored)
          v += e[y] * p[y] * q[x];
        else if (kind == D2Term::linear)
          v += e[y] * (k0 + k1 * p[y]) * q[x];
        rg[x] = v;
        acc += v;
      }
    }
    tile_colsum_store(tl, ch, j, acc, partial);
  }
}

template <class T>
void rop(const Net& net, const T* theta, const T* X, idx N, Targets<T> tg, bool mean, const T* V, idx m, T* out,
         bool gn, Workspace<T>& ws) {
  const idx L = net.L(), k = net.k();
  Tape<T>& t = ws.tape;
  cudaStream_t st = ws.stream();
  const bool one = m == 1;
  auto term = [&](idx l) {  // of Rg_{l-1}, from the activation of z_{l-1}
    const D2Form f = d2_form(net.act[l - 1]);
    return gn || f.zero ? D2Term::none : f.linear ? D2Term::linear : D2Term::stored;
  };
  bool keep_e = false;  // e is read only by the act'' terms
  for (idx l = 1; l < L; ++l) keep_e = keep_e || term(l) != D2Term::none;
  forward(net, theta, X, N, ws, gn ? Derivs::first : Derivs::second, true);
  loss_head(net, ws, tg, mean, !gn, false);
  if (!gn) backward<T>(net, theta, ws, nullptr, keep_e);
  const T s = sample_weight<T>(N, mean);

  auto &Vt = ws.Vt, &Vtt = ws.Vtt, &Rz = ws.Rz, &Ra = ws.Ra;
  for (auto* v : {&Vt, &Vtt, &Rz, &Ra}) v->resize(L);
  if (!one) {
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
  }
  auto vt = [&](idx l) -> const T* { return one ? V + net.off[l] : Vt[l].data(); };  // m = 1: the same layout

  // Forward tangents: Rz_l = Ra_l W_l + a_l VW_l + Vb_l; Ra_{l+1} = act'(z_l) * Rz_l.
  for (idx l = 0; l < L; ++l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    Rz[l].resize(N * m * dn);
    T* rz = Rz[l].data();
    gemm<T>(ws.blas(), false, false, N, m * dn, di, T(1), t.in(l), di, vt(l), m * dn, T(0), rz, m * dn);
    if (l > 0)
      gemm<T>(ws.blas(), false, false, N * m, dn, di, T(1), Ra[l].data(), di, weights(net, theta, l), dn, T(1), rz, dn);
    const bool hidden = l + 1 < L;
    if (hidden) Ra[l + 1].resize(N * m * dn);
    const bool keep = !hidden || term(l + 1) == D2Term::stored;
    const Tile tl = make_tile(N, m * dn);
    k_rz_finish<T><<<tile_grid(tl), tile_block(tl), 0, st>>>(tl, dn, vt(l) + di * m * dn, rz, keep,
                                                             hidden ? deriv(net, t, l) : Deriv<T>{},
                                                             hidden ? Ra[l + 1].data() : nullptr);
    TK_CHECK_LAUNCH();
    checkpoint(ws, 2 * N * m * di * dn);
  }

  // Output curvature applied to the output tangent.
  auto &Rg = ws.Rg, &Re = ws.Re, &tmp = ws.tmp, &acc = ws.acc;
  Rg.resize(N * m * k);
  const T* w = t.w;
  if (net.loss == Loss::mse && w) {
    k_mse_curv<T><<<grid_for(N * m * k), kThreads, 0, st>>>(N, m, k, s, w, Rz[L - 1].data(), Rg.data());
  } else if (net.loss == Loss::mse) {
    k_scale<T><<<grid_for(N * m * k), kThreads, 0, st>>>(N * m * k, mse_curvature(k, s), Rz[L - 1].data(), Rg.data());
  } else if (elementwise(net.loss)) {
    k_diag_curv<T><<<grid_for(N * m * k), kThreads, 0, st>>>(N, m, k, s, w, t.p.data(), Rz[L - 1].data(), Rg.data());
  } else if (net.loss == Loss::gaussian) {
    k_gauss_curv<T><<<grid_for(N * m), kThreads, 0, st>>>(N, m, k, s, w, gn, t.p.data(), Rz[L - 1].data(), Rg.data());
  } else {
    k_ce_curv<T><<<grid_for(N * m), kThreads, 0, st>>>(N, m, k, s, w, t.p.data(), Rz[L - 1].data(), Rg.data());
  }
  TK_CHECK_LAUNCH();

  // Backward.  Rg_l's column sums (the bias row of R{grad}) come from the pass that formed Rg_l.
  Tile rg_tile;
  for (idx l = L - 1; l >= 0; --l) {
    const idx di = net.d[l], dn = net.d[l + 1];
    // R{grad}[i][c][j]: a_l^T Rg_l (+ Ra_l^T g_l), the bias row 1^T Rg_l; into out itself when
    // m = 1.
    const bool cross = !gn && l > 0;
    T* r = out + net.off[l];
    if (!one) {
      acc.resize((di + 1) * m * dn);
      r = acc.data();
    }
    if (l == L - 1)
      scale_colsum<T>(ws, N, m * k, Rg.data(), Deriv<T>{}, nullptr, r + di * m * dn);
    else
      colsum_finish<T>(ws, rg_tile, r + di * m * dn);
    gemm<T>(ws.blas(), true, false, di, m * dn, N, T(1), t.in(l), di, Rg.data(), m * dn, T(0), r, m * dn);
    if (cross && one) {  // += Ra_l^T g_l
      gemm<T>(ws.blas(), true, false, di, dn, N, T(1), Ra[l].data(), di, t.g[l].data(), dn, T(1), r, dn);
    } else if (cross && !one) {  // tmp[c][i][j] = sum_n Ra_l[n][c][i] g_l[n][j]
      tmp.resize(m * di * dn);
      gemm<T>(ws.blas(), true, false, m * di, dn, N, T(1), Ra[l].data(), m * di, t.g[l].data(), dn, T(0), tmp.data(),
              dn);
    }
    if (!one) {
      k_scatter<T><<<grid_for((di + 1) * dn * m), kThreads, 0, st>>>(
          di, dn, m, acc.data(), cross ? tmp.data() : nullptr, out + net.off[l] * m);
      TK_CHECK_LAUNCH();
    }
    if (l == 0) break;

    // Re_{l-1} = Rg_l W_l^T (+ g_l VW_l^T); Rg_{l-1} = Re * act' (+ e * act'' * Rz_{l-1}).
    Re.resize(N * m * di);
    gemm<T>(ws.blas(), false, true, N * m, di, dn, T(1), Rg.data(), dn, weights(net, theta, l), dn, T(0), Re.data(),
            di);
    if (!gn && one)
      gemm<T>(ws.blas(), false, true, N, di, dn, T(1), t.g[l].data(), dn, V + net.off[l], dn, T(1), Re.data(), di);
    else if (!gn)
      gemm<T>(ws.blas(), false, false, N, m * di, dn, T(1), t.g[l].data(), dn, Vtt[l].data(), m * di, T(1), Re.data(),
              m * di);
    Rg.resize(N * m * di);
    const D2Term kind = term(l);
    const D2Form f = d2_form(net.act[l - 1]);
    const T* p = kind == D2Term::stored ? t.d2[l - 1].data() : kind == D2Term::linear ? t.a[l].data() : nullptr;
    const T* q = kind == D2Term::stored ? Rz[l - 1].data() : kind == D2Term::linear ? Ra[l].data() : nullptr;
    rg_tile = make_tile(N, m * di);
    ws.part.resize(rg_tile.chunks * rg_tile.cols);
    k_rg<T><<<tile_grid(rg_tile), tile_block(rg_tile), 0, st>>>(
        rg_tile, di, Re.data(), deriv(net, t, l - 1), kind == D2Term::none ? nullptr : t.e[l - 1].data(), kind, p, q,
        (T)f.k0, (T)f.k1, Rg.data(), ws.part.data());
    TK_CHECK_LAUNCH();
    checkpoint(ws, 4 * N * m * di * dn);
  }
}

template void rop<float>(const Net&, const float*, const float*, idx, Targets<float>, bool, const float*, idx, float*,
                         bool, Workspace<float>&);
template void rop<double>(const Net&, const double*, const double*, idx, Targets<double>, bool, const double*, idx,
                          double*, bool, Workspace<double>&);

}  // namespace cuda
}  // namespace tk
