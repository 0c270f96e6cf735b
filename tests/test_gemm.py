"""The row-major GEMM under the C++ kernels: the AVX-512 kernel (csrc/gemm_avx512.cpp) alone and
the dispatch that chooses it (csrc/blas.cpp), through the test-only binding ``_core._gemm``.

Every (ta, tb), float64 and float32, sizes at and around the kernel's tiles and blocks
(MR = 14 rows and its half, NR = 16 doubles / 32 floats, KC = 512, MC = 168 doubles / 336
floats, the in-place / packed switch at N = 8 NR, NC = 2048 doubles / 4096 floats), leading dimensions wider
than the matrices
(sub-matrix views inside NaN-filled buffers: a read outside the view shows up as NaN, a
write outside it as a changed pad), alpha in {1, -0.5, 0} and beta in {0 (with NaN in C
beforehand), 1, 0.3}.  Expected values are computed in float64 from the same inputs; the
tolerance is the standard error bound of a length-K dot product, elementwise:
|err| <= c K u (|alpha| |op(A)| |op(B)| + |beta| |C0|).

The symmetric rank update under K-FAC's factors and the Gram route (``_core._syrk_lower``: C's
lower triangle = beta C + R^T R) is checked the same way, on the AVX-512 kernel, the BLAS's syrk,
the column panels that run without either, and the dispatch; above the diagonal an entry may
keep its old value or get its value in the full product, nothing else.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

core = pytest.importorskip("taylorkern._core")

AVX512, DISPATCH, BLAS, SERIAL = 1, 0, 2, 3
PANELS, SYRK_BLAS = 2, 3  # _syrk_lower's which: 0 the dispatch, 1 the AVX-512 kernel, 2 the panels, 3 the BLAS
DTYPES = [np.float64, np.float32]
TRANS = [(False, False), (False, True), (True, False), (True, True)]
PAD = 12345.0  # the buffers' contents outside the views: must never change


def _has_avx512() -> bool:
    C = np.zeros((1, 1))
    return bool(core._gemm(AVX512, False, False, 1, 1, 1, 1.0, np.ones(1), 0, 1, np.ones(1), 0, 1, 0.0, C, 0, 1))


needs_avx512 = pytest.mark.skipif(not _has_avx512(), reason="the CPU has no AVX-512 (or it was not compiled in)")


class View:
    """A rows x cols matrix inside a flat buffer: offset off, row stride ld, PAD elsewhere."""

    def __init__(self, rng, dtype, rows, cols, extra_ld=0, off=0, fill="random"):
        self.rows, self.cols, self.off = rows, cols, off
        self.ld = max(cols, 1) + extra_ld
        self.buf = np.full(off + rows * self.ld + 3, PAD, dtype=dtype)
        if fill == "nan":
            vals = np.full((rows, cols), np.nan)
        else:  # values exactly representable in float32, so float32 and float64 see the same
            vals = rng.uniform(-1, 1, (rows, cols)).astype(np.float32).astype(np.float64)
        self.mat[...] = vals
        self.pad = self.buf.copy()

    @property
    def mat(self) -> np.ndarray:
        return np.lib.stride_tricks.as_strided(self.buf[self.off:], (self.rows, self.cols),
                                               (self.ld * self.buf.itemsize, self.buf.itemsize))

    def outside_unchanged(self) -> bool:
        mask = np.ones(self.buf.size, bool)
        idx = self.off + np.arange(self.rows)[:, None] * self.ld + np.arange(self.cols)[None, :]
        mask[idx.ravel()] = False
        return np.array_equal(self.buf[mask], self.pad[mask])


def check_gemm(which, dtype, ta, tb, M, N, K, alpha=1.0, beta=0.0, pads=(0, 0, 0), offs=(0, 0, 0), seed=0,
               nan_a=False):
    rng = np.random.default_rng([seed, M, N, K, ta, tb])
    A = View(rng, dtype, K if ta else M, M if ta else K, pads[0], offs[0], "nan" if nan_a else "random")
    B = View(rng, dtype, N if tb else K, K if tb else N, pads[1], offs[1])
    C = View(rng, dtype, M, N, pads[2], offs[2], "nan" if beta == 0 else "random")
    a = A.mat.astype(np.float64)
    b = B.mat.astype(np.float64)
    c0 = C.mat.astype(np.float64)
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    if alpha == 0:
        expected = np.zeros((M, N)) if beta == 0 else beta * c0
        bound = np.abs(expected) * np.finfo(dtype).eps
    else:
        expected = alpha * (opa @ opb) + (beta * c0 if beta != 0 else 0.0)
        mag = abs(alpha) * (np.abs(opa) @ np.abs(opb)) + (abs(beta) * np.abs(c0) if beta != 0 else 0.0)
        bound = 2.0 * (K + 2) * np.finfo(dtype).eps * mag
    ok = core._gemm(which, ta, tb, M, N, K, alpha, A.buf, A.off, A.ld, B.buf, B.off, B.ld, beta, C.buf, C.off,
                    C.ld)
    if not ok:
        pytest.skip("path unavailable")
    got = C.mat.astype(np.float64)
    where = f"{np.dtype(dtype).name} ta={ta} tb={tb} M={M} N={N} K={K} alpha={alpha} beta={beta} pads={pads}"
    assert np.isfinite(got).all(), f"non-finite result: {where}"
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert (err <= bound + np.finfo(dtype).tiny).all(), \
        f"{where}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
    assert C.outside_unchanged(), f"C written outside the view: {where}"
    assert A.outside_unchanged() and B.outside_unchanged(), f"inputs modified: {where}"


# Sizes at and around the tiles and blocks (see the module docstring).
M_EDGES = [1, 2, 6, 7, 8, 13, 14, 15, 21, 27, 28, 29, 167, 168, 169, 335, 336, 337]
N_EDGES = [1, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 47, 48, 49, 127, 128, 129, 255, 256, 257]
K_EDGES = [1, 2, 15, 16, 17, 255, 511, 512, 513, 1031]


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "NT", "TN", "TT"])
def test_edges(dtype, ta, tb):
    for i, M in enumerate(M_EDGES):
        N = N_EDGES[(3 * i) % len(N_EDGES)]
        K = K_EDGES[(5 * i) % len(K_EDGES)]
        check_gemm(AVX512, dtype, ta, tb, M, N, K, seed=i)
    for j, N in enumerate(N_EDGES):
        M = M_EDGES[(7 * j) % len(M_EDGES)] % 40 + 1
        K = K_EDGES[(2 * j) % len(K_EDGES)]
        check_gemm(AVX512, dtype, ta, tb, M, N, K, 0.3, 1.0, pads=(1, 3, 2), offs=(2, 1, 5), seed=j)


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.5, 1.0), (1.0, 0.3), (0.0, 0.3), (0.0, 0.0), (-0.5, 0.0)])
def test_alpha_beta(dtype, ta, tb, alpha, beta):
    # alpha = 0: A is not read (NaN there must not reach C), as in BLAS.
    check_gemm(AVX512, dtype, ta, tb, 37, 45, 29, alpha, beta, pads=(3, 0, 7), nan_a=alpha == 0)
    check_gemm(AVX512, dtype, ta, tb, 300, 130, 260, alpha, beta, pads=(0, 5, 1), nan_a=alpha == 0)


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "NT", "TN", "TT"])
def test_large(dtype, ta, tb):
    # several MC and KC blocks, packed A (N > 8 NR), a partial last block everywhere
    check_gemm(AVX512, dtype, ta, tb, 700, 300, 600, 1.0, 0.3, pads=(5, 0, 3))
    check_gemm(AVX512, dtype, ta, tb, 341, 129, 1100, -0.5, 0.0, pads=(0, 1, 0))


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("M", [3, 4, 5, 10, 18, 20, 22, 32, 64, 140, 141])
def test_in_place_rows(dtype, ta, tb, M):
    # op(A) read in place (N <= 8 NR) with every way of covering the last M mod 14 rows
    # (8, 4, 2, 1 rows exactly, or 7 rows moved up over computed ones); op(B) in place for
    # N whole panels and M <= 140.  Reading a padding value (PAD) into a stored row would
    # show as a non-finite or wrong result.
    for j, N in enumerate([32, 64, 48]):
        K = [500, 37, 1030][j]
        check_gemm(AVX512, dtype, ta, tb, M, N, K, 1.0, 0.5 * j, pads=(2 * j, j, 0), seed=M + j)


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_wide_nc_blocks(dtype):
    # N beyond NC (2048 doubles, 4096 floats): more than one column block
    check_gemm(AVX512, dtype, True, False, 5, 4099, 20, -0.5, 1.0)
    check_gemm(AVX512, dtype, False, True, 3, 8197, 9, 1.0, 0.0, pads=(0, 2, 1))
    check_gemm(AVX512, dtype, False, False, 30, 2049, 530, 1.0, 0.3, pads=(1, 0, 2))


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_zero_k(dtype):
    check_gemm(AVX512, dtype, False, False, 20, 17, 0, 1.0, 0.3)
    check_gemm(AVX512, dtype, True, True, 20, 17, 0, 1.0, 0.0)


@needs_avx512
@given(st.sampled_from(DTYPES), st.sampled_from(TRANS), st.integers(1, 80), st.integers(1, 90),
       st.integers(1, 300), st.sampled_from([(1.0, 0.0), (-0.5, 1.0), (1.0, 0.3), (0.0, 0.3)]),
       st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)))
def test_random(dtype, trans, M, N, K, ab, pads):
    check_gemm(AVX512, dtype, trans[0], trans[1], M, N, K, ab[0], ab[1], pads=pads, offs=pads[::-1],
               nan_a=ab[0] == 0)


# ----------------------------------------------------------------------------- the dispatch
# tk::gemm routes tiny products to plain loops, N < 4 to dot products / axpys, the rest to
# the AVX-512 kernel where the CPU has it, else the BLAS, and splits large products across
# OpenMP threads.  Both with the AVX-512 kernel allowed and with it switched off (everything
# above the loops to the BLAS, as on a CPU without AVX-512).
@pytest.fixture(params=[True, False], ids=["blocked", "blas"])
def blocked(request):
    before = core._set_gemm_avx512(request.param)
    yield request.param
    core._set_gemm_avx512(before)


@pytest.mark.parametrize("which", [DISPATCH, SERIAL], ids=["gemm", "serial"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "NT", "TN", "TT"])
def test_dispatch(blocked, which, dtype, ta, tb):
    for i, (M, N, K) in enumerate([(1000, 32, 10), (2, 1, 7), (100, 8, 2), (50, 3, 200), (31, 47, 64),
                                   (2000, 64, 20), (20, 64, 600), (515, 130, 300),
                                   # one output column, four rows at a time (M % 4, K % 8 remainders)
                                   (513, 1, 37), (300, 1, 5), (32, 1, 500),
                                   # outer products (K = 1), and long K in the loops' four partial sums
                                   (500, 32, 1), (7, 40, 1), (2, 5, 400), (3, 9, 150)]):
        check_gemm(which, dtype, ta, tb, M, N, K, 1.0, [0.0, 1.0, 0.3][i % 3], pads=(i % 3, 0, 1), seed=i)


def test_blas_path_agrees():
    # the BLAS alone, on the same checks (it stays the fallback without AVX-512)
    check_gemm(BLAS, np.float64, True, False, 70, 33, 90, -0.5, 0.3, pads=(1, 2, 3))
    check_gemm(BLAS, np.float32, False, True, 70, 33, 90, 1.0, 0.0, pads=(1, 2, 3))


@needs_avx512
def test_concurrent_callers():
    # per-thread packing buffers: several threads at once (the binding releases the GIL),
    # each with its own shapes, repeatedly.
    errors = []

    def work(t):
        try:
            for r in range(3):
                check_gemm(AVX512, DTYPES[t % 2], t % 2 == 0, t % 3 == 0, 150 + 37 * t, 140 + 11 * t, 270 + t,
                           1.0, 0.3, seed=r)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


def test_binding_checks_bounds():
    A = np.zeros(10)
    C = np.zeros(10)
    with pytest.raises(ValueError):  # A would need 4 x 4 = 16 values
        core._gemm(DISPATCH, False, False, 4, 2, 4, 1.0, A, 0, 4, A, 0, 2, 0.0, C, 0, 2)
    with pytest.raises(ValueError):  # ld smaller than the row
        core._gemm(DISPATCH, False, False, 2, 2, 2, 1.0, A, 0, 1, A, 0, 2, 0.0, C, 0, 2)
    with pytest.raises(TypeError):  # mixed dtypes
        core._gemm(DISPATCH, False, False, 2, 2, 2, 1.0, A.astype(np.float32), 0, 2, A, 0, 2, 0.0, C, 0, 2)


# ----------------------------------------------------------------------------- the rank update
def check_syrk(which, dtype, D, K, beta=0.0, pads=(0, 0), offs=(0, 0), seed=0):
    rng = np.random.default_rng([seed, D, K, which])
    R = View(rng, dtype, K, D, pads[0], offs[0])
    C = View(rng, dtype, D, D, pads[1], offs[1], "nan" if beta == 0 else "random")
    r = R.mat.astype(np.float64)
    c0 = C.mat.astype(np.float64)
    full = r.T @ r + (beta * c0 if beta != 0 else 0.0)
    bound = 2.0 * (K + 2) * np.finfo(dtype).eps * (np.abs(r).T @ np.abs(r) + (abs(beta) * np.abs(c0) if beta else 0))
    if not core._syrk_lower(which, D, K, R.buf, R.off, R.ld, beta, C.buf, C.off, C.ld):
        pytest.skip("path unavailable")
    got = C.mat.astype(np.float64)
    where = f"{np.dtype(dtype).name} which={which} D={D} K={K} beta={beta} pads={pads}"
    lower = np.tril(np.ones((D, D), bool))
    err = np.abs(got - full)
    close = err <= bound + np.finfo(dtype).tiny
    assert close[lower].all(), f"{where}: lower-triangle error {err[lower & ~close].max():.3g}"
    kept = (got == c0) | (np.isnan(got) & np.isnan(c0))
    assert (close | kept)[~lower].all(), f"{where}: an entry above the diagonal is neither kept nor its value"
    assert C.outside_unchanged(), f"C written outside the view: {where}"
    assert R.outside_unchanged(), f"R modified: {where}"


# D around the tiles (MR = 14, NR = 16 doubles / 32 floats) and blocks (MC = 168 / 336, KC = 512)
SYRK_D = [1, 2, 13, 14, 15, 16, 17, 29, 33, 64, 65, 129, 167, 169, 200, 337, 400]
SYRK_K = [1, 3, 16, 100, 511, 512, 513, 1100]


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3])
def test_syrk_edges(dtype, beta):
    for i, D in enumerate(SYRK_D):
        check_syrk(AVX512, dtype, D, SYRK_K[(3 * i) % len(SYRK_K)], beta, pads=(i % 3, i % 4), offs=(i % 2, 1),
                   seed=i)


@needs_avx512
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_syrk_blocks(dtype):
    # several KC blocks and MC blocks at once, and D beyond NC (2048 doubles, 4096 floats)
    check_syrk(AVX512, dtype, 700, 1300, 1.0, pads=(3, 1))
    check_syrk(AVX512, dtype, 4100 if dtype == np.float32 else 2100, 5, 0.3, pads=(0, 2))
    check_syrk(AVX512, dtype, 30, 0, 0.3)
    check_syrk(AVX512, dtype, 30, 0, 0.0)


@pytest.mark.parametrize("which", [DISPATCH, PANELS, SYRK_BLAS], ids=["dispatch", "panels", "blas"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_syrk_dispatch(blocked, which, dtype):
    for i, (D, K) in enumerate([(1, 5), (3, 2), (40, 7), (33, 300), (129, 64), (300, 520), (785, 40)]):
        check_syrk(which, dtype, D, K, [0.0, 1.0, 0.3][i % 3], pads=(i % 2, 1), seed=i)


@needs_avx512
@given(st.sampled_from(DTYPES), st.integers(1, 200), st.integers(0, 600), st.sampled_from([0.0, 1.0, 0.3]),
       st.tuples(st.integers(0, 9), st.integers(0, 9)))
def test_syrk_random(dtype, D, K, beta, pads):
    check_syrk(AVX512, dtype, D, K, beta, pads=pads, offs=pads[::-1])


def test_syrk_binding_checks_bounds():
    R, C = np.zeros(10), np.zeros(16)
    with pytest.raises(ValueError):  # R would need 3 x 4 values
        core._syrk_lower(DISPATCH, 4, 3, R, 0, 4, 0.0, C, 0, 4)
    with pytest.raises(ValueError):  # C's row stride below D
        core._syrk_lower(DISPATCH, 2, 2, R, 0, 2, 0.0, C, 0, 1)
    with pytest.raises(TypeError):  # mixed dtypes
        core._syrk_lower(DISPATCH, 2, 2, R.astype(np.float32), 0, 2, 0.0, C, 0, 2)
