"""tk.Batches: every data call and tk.minimize with a data object in place of X, Y.

A data object sums the chunks' ``reduction="sum"`` calls and divides by the row count once,
so its results must equal the in-memory call on the concatenated rows up to summation order
(float64: rel <= 1e-12 against the same backend) and the float64 reference within RTOL.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA_QUANTITIES, compare, make_problem, reference, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import taylorkern as tk
from taylorkern.data import Batches, DataError

SAME = 1e-12  # a data object against the same backend's in-memory call, float64

# (sizes, N) per loss: random-looking shapes, a single layer and a deeper one
SHAPES = {"mse": [([4, 6, 3], 23), ([3, 4, 3, 5, 1], 17)],
          "ce": [([4, 6, 3], 23), ([5, 3], 11)]}
# chunkings: one row per chunk, a ragged last chunk, one chunk holding everything (the last
# in the exhaustive run only)
CHUNKS = [1, 7, pytest.param(1000, marks=pytest.mark.exhaustive)]


def data_compute(p, q, data, reduction="mean"):
    """compute() of conftest with ``data`` in place of p.X, p.Y."""
    net = p.net
    if q == "predict":
        return net.predict(p.theta, data)
    if q == "jacobian":
        return net.jacobian(p.theta, data)
    if q in ("hvp", "ggn_vp"):
        return getattr(net, q)(p.theta, data, p.V[:, 0], reduction=reduction)
    if q in ("hvp_multi", "ggn_vp_multi"):
        return getattr(net, q[:-6])(p.theta, data, p.V, reduction=reduction)
    return getattr(net, q)(p.theta, data, reduction=reduction)


def local_compute(p, q, reduction="mean"):
    if q == "predict":
        return p.net.predict(p.theta, p.X)
    if q == "jacobian":
        return p.net.jacobian(p.theta, p.X)
    if q in ("hvp", "ggn_vp"):
        return getattr(p.net, q)(p.theta, p.X, p.Y, p.V[:, 0], reduction=reduction)
    if q in ("hvp_multi", "ggn_vp_multi"):
        return getattr(p.net, q[:-6])(p.theta, p.X, p.Y, p.V, reduction=reduction)
    return getattr(p.net, q)(p.theta, p.X, p.Y, reduction=reduction)


ALL = DATA_QUANTITIES + ("loss_grad_ggn", "predict", "jacobian")


def check_all(p, data, reduction="mean"):
    for q in ALL:
        if q in ("predict", "jacobian") and reduction == "sum":
            continue
        got = data_compute(p, q, data, reduction)
        local = local_compute(p, q, reduction)
        assert type(got) is type(local), q
        for a, b in zip(got if isinstance(got, (tuple, list)) else [got],
                        local if isinstance(local, (tuple, list)) else [local]):
            assert np.asarray(a).dtype == np.asarray(b).dtype, q
        if p.net.dtype == np.float64:
            compare(got, local, rtol=SAME, what=f"{q} against the in-memory call")
        if q == "loss_grad_ggn":
            with tk.use_backend("reference"):
                ref = local_compute(p.astype(np.float64), q, reduction)
        else:
            ref = reference(p, q, reduction)
        compare(got, ref, p.net.dtype, what=f"{q} against the reference")


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_quantity(backend, dtype, loss, chunk):
    sizes, N = SHAPES[loss][chunk % 2]
    p = make_problem(sizes, "tanh", loss, N=N, l2=0.3 if chunk == 7 else 0.0, dtype=dtype, seed=chunk)
    check_all(p, Batches(p.X, p.Y, chunk_size=chunk))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_sum_reduction(backend, loss):
    sizes, N = SHAPES[loss][0]
    p = make_problem(sizes, "softplus", loss, N=N, l2=0.5, seed=3)
    check_all(p, Batches(p.X, p.Y, chunk_size=5), reduction="sum")


def _pairs(p, bounds):
    return [(p.X[a:b], p.Y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def test_sources_list_generator_memmap(tmp_path):
    p = make_problem([3, 5, 2], "gelu", "mse", N=29, l2=0.1, seed=7)
    bounds = [0, 1, 10, 11, 28, 29]
    expected = p.net.loss_grad_ggn(p.theta, p.X, p.Y)

    def gen():
        yield from _pairs(p, bounds)

    mx = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=p.X.shape)
    mx[:] = p.X
    mx.flush()
    my = np.lib.format.open_memmap(tmp_path / "Y.npy", mode="w+", dtype=np.float64, shape=p.Y.shape)
    my[:] = p.Y
    my.flush()
    sources = {"list": Batches(_pairs(p, bounds)), "generator function": Batches(gen),
               "memmap": Batches(np.load(tmp_path / "X.npy", mmap_mode="r"),
                                 np.load(tmp_path / "Y.npy", mmap_mode="r"), chunk_size=4)}
    for name, data in sources.items():
        for _ in range(2):  # re-iterable: a second pass reads the same rows
            compare(p.net.loss_grad_ggn(p.theta, data), expected, rtol=SAME, what=name)
        assert data.num_rows == p.N, name


def test_dask_array_read_locally():
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    p = make_problem([4, 6, 3], "tanh", "ce", N=31, seed=2)
    data = Batches(da.from_array(p.X, chunks=(9, 4)), da.from_array(p.Y, chunks=9))
    assert data.chunk_size == (9, 9, 9, 4)  # the dask array's own row chunks
    compare(p.net.ggn(p.theta, data), p.net.ggn(p.theta, p.X, p.Y), rtol=SAME)
    compare(p.net.hvp(p.theta, data, p.V), p.net.hvp(p.theta, p.X, p.Y, p.V), rtol=SAME)


def test_float64_accumulation_of_float32_chunks():
    p = make_problem([4, 6, 2], "tanh", "mse", N=40, dtype=np.float32, seed=5)
    data = Batches(p.X, p.Y, chunk_size=3, accumulate=np.float64)
    got = p.net.ggn(p.theta, data)
    assert got.dtype == np.float32
    # the float32 chunk results added in float64, rounded to float32 once
    sums = sum(p.net.ggn(p.theta, p.X[a:a + 3], p.Y[a:a + 3], reduction="sum").astype(np.float64)
               for a in range(0, p.N, 3))
    assert np.array_equal(got, (sums * (1.0 / p.N)).astype(np.float32))
    compare(got, reference(p, "ggn"), np.float32)


def test_minimize_same_path():
    p = make_problem([3, 6, 2], "tanh", "mse", N=40, l2=1e-3, seed=11)
    data = Batches(p.X, p.Y, chunk_size=9)
    for method in ("lm", "gauss-newton", "newton", "newton-cg", "lbfgs", "gd"):
        local = tk.minimize(p.net, p.theta, p.X, p.Y, method=method, max_iter=8)
        streamed = tk.minimize(p.net, p.theta, data, method=method, max_iter=8)
        assert streamed.nit == local.nit and streamed.status == local.status, method
        assert np.array_equal(streamed.history["accepted"], local.history["accepted"]), method
        compare(streamed.history["loss"], local.history["loss"], rtol=1e-10, what=method)
        compare(streamed.theta, local.theta, rtol=1e-9, what=method)
        assert streamed.nfev == local.nfev, method
    # positional method after a data object
    assert tk.minimize(p.net, p.theta, data, "lm", max_iter=2).nit == 2
    # a generator function: the row count is learnt in the first pass
    pairs = _pairs(p, [0, 13, 14, 40])
    gen = tk.minimize(p.net, p.theta, Batches(lambda: iter(pairs)), method="lm", max_iter=8)
    compare(gen.history["loss"], tk.minimize(p.net, p.theta, p.X, p.Y, method="lm", max_iter=8).history["loss"],
            rtol=1e-10, what="lm on a generator function")


@st.composite
def chunked_problems(draw):
    """A random network (depth, widths, activations, loss, l2) and data cut at random rows."""
    depth = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 5), min_size=depth + 1, max_size=depth + 1))
    loss = draw(st.sampled_from(tk.LOSSES))
    if loss == "ce" and sizes[-1] < 2:
        sizes[-1] = draw(st.integers(2, 4))
    if loss == "gaussian" and sizes[-1] % 2:  # a mean and a log-variance per target
        sizes[-1] += 1
    acts = draw(st.lists(st.sampled_from(tk.ACTIVATIONS), min_size=depth - 1, max_size=depth - 1))
    N = draw(st.integers(1, 30))
    p = make_problem(sizes, acts, loss, N, l2=draw(st.sampled_from([0.0, 0.2])),
                     seed=draw(st.integers(0, 2 ** 16)))
    cuts = sorted(draw(st.sets(st.integers(1, N - 1), max_size=N - 1)) if N > 1 else [])
    return p, [0, *cuts, N]


@settings(max_examples=30, deadline=None)
@given(case=chunked_problems(), reduction=st.sampled_from(["mean", "sum"]))
def test_random_chunk_boundaries(case, reduction):
    p, bounds = case
    data = Batches(_pairs(p, bounds))
    for q in ("loss_and_grad", "ggn_vp_multi", "hessian", "ggn_diag"):
        compare(data_compute(p, q, data, reduction), local_compute(p, q, reduction), rtol=SAME,
                what=f"{q} over chunks {bounds}")


# ------------------------------------------------------------------------ bad sources
def test_bad_sources():
    p = make_problem([3, 4, 2], "tanh", "mse", N=12, seed=1)
    with pytest.raises(ValueError, match="source: empty"):
        Batches([])
    with pytest.raises(ValueError, match="source: empty"):
        p.net.loss(p.theta, Batches(lambda: iter([])))
    with pytest.raises(TypeError, match="one-shot iterator"):
        Batches(iter(_pairs(p, [0, 6, 12])))
    with pytest.raises(ValueError, match="Y: 11 rows, but X has 12"):
        Batches(p.X, p.Y[:11])
    with pytest.raises(ValueError, match="X: the source is empty"):
        Batches(p.X[:0], p.Y[:0])
    with pytest.raises(TypeError, match="chunk 1: expected an .X, Y. pair"):
        Batches([(p.X, p.Y), p.X])
    with pytest.raises(ValueError, match="chunk_size"):
        Batches(p.X, p.Y, chunk_size=0)


def test_bad_chunks_name_the_chunk():
    p = make_problem([3, 4, 2], "tanh", "mse", N=12, seed=1)
    mismatched = Batches([(p.X[:4], p.Y[:4]), (p.X[4:8], p.Y[4:7]), (p.X[8:], p.Y[8:])])
    with pytest.raises(ValueError, match=r"chunk 1 \(from row 4\): Y: 'mse' expects shape \(4, 2\)"):
        p.net.ggn(p.theta, mismatched)
    X = p.X.copy()
    X[9, 1] = np.nan
    with pytest.raises(ValueError, match=r"chunk 2 \(from row 8\): X: contains NaN"):
        p.net.loss_and_grad(p.theta, Batches(X, p.Y, chunk_size=4))
    with pytest.raises(ValueError, match=r"chunk 0 \(from row 0\): X: expected shape \(N, 3\)"):
        p.net.loss(p.theta, Batches(p.X[:, :2], p.Y))

    def failing():
        yield p.X[:5], p.Y[:5]
        raise OSError("disk gone")

    with pytest.raises(DataError, match=r"reading chunk 1 \(from row 5\) failed: OSError: disk gone"):
        p.net.hessian(p.theta, Batches(failing))


def test_bad_arguments_with_data():
    p = make_problem([3, 4, 2], "tanh", "mse", N=12, seed=1)
    data = Batches(p.X, p.Y, chunk_size=5)
    with pytest.raises(TypeError, match="V: missing"):
        p.net.hvp(p.theta, data)
    with pytest.raises(ValueError, match="V: expected shape"):
        p.net.hvp(p.theta, data, np.ones(3))
    with pytest.raises(ValueError, match="theta: expected shape"):
        p.net.loss(p.theta[:-1], data)
    with pytest.raises(TypeError, match="Y: not taken with a data object"):
        p.net.loss(p.theta, data, p.Y)
    with pytest.raises(ValueError, match="reduction"):
        p.net.loss(p.theta, data, reduction="max")
    with pytest.raises(TypeError, match="Y: missing"):
        p.net.loss(p.theta, p.X)
    with pytest.raises(TypeError, match="ggn_factor takes arrays"):
        p.net.ggn_factor(p.theta, data)
    with pytest.raises(ValueError, match="batch_size"):
        tk.minimize(p.net, p.theta, data, method="adam", batch_size=4)
    with pytest.raises(ValueError, match="space"):
        tk.minimize(p.net, p.theta, data, method="lm", space="samples")
    with pytest.raises(TypeError, match="Y: missing"):
        tk.minimize(p.net, p.theta, p.X, method="lm")


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_loss_resolution_through_data(loss):
    """The rounding floor the line searches consult is a sum over rows too."""
    from taylorkern.optim._run import Run

    sizes, N = SHAPES[loss][0]
    p = make_problem(sizes, "tanh", loss, N=N, seed=8)
    opts = dict(mask=None, max_iter=1, max_time=None, gtol=0.0, ftol=0.0, xtol=0.0, target=None,
                callback=None, progress=False)
    local = Run(p.net, p.theta, p.X, p.Y, "lbfgs", **opts)
    streamed = Run(p.net, p.theta, Batches(p.X, p.Y, chunk_size=4), None, "lbfgs", **opts)
    assert streamed.N == local.N == N
    expected = local.loss_resolution(local.z0)
    assert expected > 0
    assert abs(streamed.loss_resolution(streamed.z0) - expected) <= 1e-12 * expected


def test_oversized_refused_before_any_chunk():
    net = tk.MLP([4000, 4000, 1])  # P ~ 1.6e7: a P x P matrix needs ~2 PB
    read = []

    def chunks():
        read.append(1)
        yield np.zeros((1, 4000)), np.zeros((1, 1))

    theta = np.zeros(net.num_params)
    for call in (net.hessian, net.ggn, net.loss_grad_ggn):
        with pytest.raises(tk.TooLargeError, match="over a data object would need .* PiB"):
            call(theta, Batches(chunks))
    assert not read


def test_reduction_positional():
    p = make_problem([3, 4, 2], "relu", "mse", N=12, seed=4)
    data = Batches(p.X, p.Y, chunk_size=5)
    got = p.net.loss(p.theta, data, "sum")
    assert rel_err(got, p.net.loss(p.theta, p.X, p.Y, "sum")) <= SAME
    assert rel_err(got, p.N * p.net.loss(p.theta, data)) <= SAME
    # products: V in Y's place and the reduction in V's, positional or by name
    V = np.random.default_rng(4).standard_normal(p.net.num_params)
    want = p.net.hvp(p.theta, p.X, p.Y, V, "sum")
    for got in (p.net.hvp(p.theta, data, V, "sum"), p.net.hvp(p.theta, data, V, reduction="sum"),
                p.net.hvp(p.theta, data, V=V, reduction="sum")):
        assert rel_err(got, want) <= SAME
    assert rel_err(p.net.ggn_vp(p.theta, data, V), p.net.ggn_vp(p.theta, p.X, p.Y, V)) <= SAME
    with pytest.raises(TypeError, match="reduction: not supported"):
        p.net.hvp(p.theta, data, V, "sum", reduction="sum")
    with pytest.raises(TypeError, match="V: missing"):
        p.net.hvp(p.theta, p.X, p.Y)


def _stores(tmp_path, p, rows_per_chunk):
    """p.X, p.Y in a zarr array and in chunked h5py datasets, where installed."""
    out = {}
    try:
        import zarr
    except ImportError:
        pass
    else:
        zx = zarr.open_array(str(tmp_path / "X.zarr"), mode="w", shape=p.X.shape, dtype=p.X.dtype,
                             chunks=(rows_per_chunk, p.X.shape[1]))
        zx[:] = p.X
        zy = zarr.open_array(str(tmp_path / "Y.zarr"), mode="w", shape=p.Y.shape, dtype=p.Y.dtype,
                             chunks=(rows_per_chunk,) + p.Y.shape[1:])
        zy[:] = p.Y
        out["zarr"] = (zx, zy)
    try:
        import h5py
    except ImportError:
        pass
    else:
        f = h5py.File(tmp_path / "data.h5", "w")
        hx = f.create_dataset("X", data=p.X, chunks=(rows_per_chunk, p.X.shape[1]))
        hy = f.create_dataset("Y", data=p.Y, chunks=(rows_per_chunk,) + p.Y.shape[1:])
        out["h5py"] = (hx, hy)
    return out


class _CountingReads:
    """An array wrapper recording the row slices read from it."""

    def __init__(self, a):
        self.a, self.reads = a, []
        self.shape, self.dtype, self.chunks = a.shape, a.dtype, a.chunks

    def __getitem__(self, key):
        self.reads.append((key.start, key.stop))
        return self.a[key]


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_zarr_and_h5py_read_in_whole_storage_chunks(tmp_path, kind):
    pytest.importorskip(kind, reason=f"{kind} is not installed (pip install {kind})")
    p = make_problem([4, 6, 3], "tanh", "ce", N=47, seed=6)
    X, Y = _stores(tmp_path, p, rows_per_chunk=5)[kind]
    expected = p.net.loss_grad_ggn(p.theta, p.X, p.Y)
    for chunk_size, rows in ((None, 65535), (12, 10), (3, 5), (5, 5)):  # the default: 65,536 rounded down
        counted = _CountingReads(X)
        data = Batches(counted, Y, chunk_size=chunk_size)
        assert data.chunk_size == rows, chunk_size
        compare(p.net.loss_grad_ggn(p.theta, data), expected, rtol=SAME, what=f"{kind} {chunk_size}")
        # every read starts and ends on a storage chunk boundary (or the end)
        assert all(a % 5 == 0 and (b % 5 == 0 or b >= p.N) for a, b in counted.reads), counted.reads
        assert counted.reads[-1][1] >= p.N
