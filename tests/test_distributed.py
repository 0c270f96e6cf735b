"""taylorkern.distributed.ShardedData on a LocalCluster of 2 worker processes (started and
stopped here, once per module): every quantity, tk.minimize step by step, a worker killed
during a run, and shards that fail.  Skipped without dask and distributed."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import compare, make_problem, reference

import taylorkern as tk
from taylorkern.data import DataError

da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'taylorkern[dask]')")
distributed = pytest.importorskip("distributed", reason="distributed is not installed")
from taylorkern.distributed import ShardedData  # noqa: E402

SAME = 1e-12
QUANTITIES = ("loss", "loss_and_grad", "loss_grad_ggn", "hvp", "ggn_vp", "hessian", "ggn",
              "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag")


@pytest.fixture(scope="module")
def client():
    """The cluster, and this process's environment as it was before: starting worker processes,
    distributed writes its thread limits (OMP_NUM_THREADS=1, ...) into os.environ of the process
    that starts them, and every process spawned later here would inherit them."""
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=":0")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()
    os.environ.clear()
    os.environ.update(environ)


def _call(p, q, data):
    fn = getattr(p.net, q)
    if q in ("hvp", "ggn_vp"):
        return fn(p.theta, data, p.V) if data is not None else fn(p.theta, p.X, p.Y, p.V)
    return fn(p.theta, data) if data is not None else fn(p.theta, p.X, p.Y)


@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.exhaustive)])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_every_quantity(client, loss, dtype):
    sizes = [4, 7, 3] if loss == "ce" else [3, 5, 4, 2]
    p = make_problem(sizes, "tanh", loss, N=37, l2=0.2 if loss == "mse" else 0.0, dtype=dtype, seed=4)
    sources = {"numpy": ShardedData(p.X, p.Y, client=client, chunk_size=10, fan_in=2),  # ragged last shard
               "dask": ShardedData(da.from_array(p.X, chunks=(15, 2)), da.from_array(p.Y, chunks=13),
                                   client=client)}
    assert sources["numpy"].num_shards == 4 and sources["dask"].num_shards == 3
    for name, data in sources.items():
        for q in QUANTITIES:
            got = _call(p, q, data)
            if dtype == np.float64:
                compare(got, _call(p, q, None), rtol=SAME, what=f"{name} {q}")
            if q == "loss_grad_ggn":
                with tk.use_backend("reference"):
                    p64 = p.astype(np.float64)
                    ref = p64.net.loss_grad_ggn(p64.theta, p64.X, p64.Y)
            else:
                ref = reference(p, {"hvp": "hvp_multi", "ggn_vp": "ggn_vp_multi"}.get(q, q))
            compare(got, ref, dtype, what=f"{name} {q} against the reference")


def test_per_row_results_refused(client):
    p = make_problem([3, 4, 2], "tanh", "mse", N=10, seed=1)
    data = ShardedData(p.X, p.Y, client=client)
    assert data.num_shards == 2  # by default one shard per worker
    with pytest.raises(TypeError, match="only P-sized"):
        p.net.predict(p.theta, data)
    with pytest.raises(TypeError, match="only P-sized"):
        p.net.jacobian(p.theta, data)


def test_minimize_same_path(client):
    p = make_problem([3, 6, 2], "tanh", "mse", N=60, l2=1e-3, seed=11)
    data = ShardedData(p.X, p.Y, client=client, chunk_size=16)
    for method in ("lm", "gauss-newton", "newton", "newton-cg", "lbfgs"):
        local = tk.minimize(p.net, p.theta, p.X, p.Y, method=method, max_iter=6)
        dist = tk.minimize(p.net, p.theta, data, method=method, max_iter=6)
        assert dist.nit == local.nit and dist.status == local.status, method
        assert np.array_equal(dist.history["accepted"], local.history["accepted"]), method
        compare(dist.history["loss"], local.history["loss"], rtol=1e-10, what=method)
        compare(dist.theta, local.theta, rtol=1e-9, what=method)


@pytest.mark.parametrize("source", ["numpy", "dask"])
def test_killed_worker_during_minimize(client, source):
    """numpy shards are sent again from the client; dask ones recomputed from their graph."""
    p = make_problem([3, 8, 2], "tanh", "ce", N=80, seed=12)
    if source == "numpy":
        data = ShardedData(p.X, p.Y, client=client, chunk_size=10)
    else:
        data = ShardedData(da.from_array(p.X, chunks=(10, 3)), da.from_array(p.Y, chunks=10),
                           client=client)
    assert data.num_shards == 8
    undisturbed = tk.minimize(p.net, p.theta, data, method="lm", max_iter=8)
    local = tk.minimize(p.net, p.theta, p.X, p.Y, method="lm", max_iter=8)
    killed = []

    def kill_one(info):
        if info.nit == 3:
            holders = [w for w, keys in client.has_what().items() if keys]
            pid = client.run(os.getpid, workers=holders[:1])[holders[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    res = tk.minimize(p.net, p.theta, data, method="lm", max_iter=8, callback=kill_one)
    assert killed, "no worker was killed"
    assert res.nit == undisturbed.nit == 8
    assert res.status == undisturbed.status
    # the shards were recomputed from their lineage: the very same iterates
    assert np.array_equal(res.theta, undisturbed.theta)
    assert np.array_equal(res.history["loss"], undisturbed.history["loss"])
    compare(res.theta, local.theta, rtol=1e-9, what="against the local run")
    client.wait_for_workers(2, timeout=120)
    assert killed[0] not in client.run(os.getpid).values()


def test_bad_sources(client):
    p = make_problem([3, 4, 2], "tanh", "mse", N=20, seed=3)
    with pytest.raises(ValueError, match="Y: 19 rows, but X has 20"):
        ShardedData(p.X, p.Y[:19], client=client)
    with pytest.raises(ValueError, match="X: the source is empty"):
        ShardedData(p.X[:0], p.Y[:0], client=client)
    with pytest.raises(ValueError, match="X: expected shape"):
        ShardedData(p.X[:, 0], p.Y, client=client)

    X = p.X.copy()
    X[13, 0] = np.inf
    with pytest.raises(ValueError, match=r"chunk 2 \(from row 10\): X: contains NaN or Inf"):
        p.net.ggn(p.theta, ShardedData(X, p.Y, client=client, chunk_size=5))
    # every chunk fails here, and the error names the first, not whichever failure came in first
    # (before, the other group's chunk in about 4 of 10 calls: repeated to catch that)
    for _ in range(5):
        with pytest.raises(ValueError, match=r"chunk 0 \(from row 0\): X: expected shape \(N, 3\)"):
            p.net.loss(p.theta, ShardedData(p.X[:, :2], p.Y, client=client))

    def unreadable(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise OSError("sensor log truncated")
        return block

    Xbad = da.from_array(p.X, chunks=(6, 3)).map_blocks(unreadable, dtype=p.X.dtype)
    with pytest.raises(DataError, match=r"chunk 2 \(from row 12\) could not be read: OSError: "
                                        "sensor log truncated"):
        p.net.loss_and_grad(p.theta, ShardedData(Xbad, p.Y, client=client))


def test_timeout(client):
    p = make_problem([3, 4, 2], "tanh", "mse", N=12, seed=3)

    def slow(block):
        time.sleep(2.0)
        return block

    Xslow = da.from_array(p.X, chunks=(6, 3)).map_blocks(slow, dtype=p.X.dtype)
    data = ShardedData(Xslow, p.Y, client=client, timeout=0.3)
    with pytest.raises(TimeoutError, match=r"within timeout = 0.3 s \(2 shards\)"):
        p.net.loss(p.theta, data)
    with pytest.raises(ValueError, match="timeout"):
        ShardedData(p.X, p.Y, client=client, timeout=0)


def test_flat_transport_round_trip():
    """Shard results travel as one flat array (a symmetric matrix by its upper triangle) and
    come back as the structure the in-memory call returns, for every quantity and dtype."""
    from taylorkern.data import ChunkSum
    from taylorkern.distributed import _Flat
    for dtype in (np.float64, np.float32):
        p = make_problem([3, 5, 4, 2], "tanh", "mse", N=9, dtype=dtype, seed=2)
        for q in QUANTITIES:
            V = p.V if q in ("hvp", "ggn_vp") else None
            f = ChunkSum(p.net, q, p.theta, V, dtype)
            flat = _Flat(*f.layout(), f.dtype)
            a, b = f(p.X[:4], p.Y[:4]), f(p.X[4:], p.Y[4:])
            packed = flat.add(None, 4, a)
            assert isinstance(packed, np.ndarray) and packed.ndim == 1 and packed.size == flat.size, q
            total = flat.combine([packed, flat.add(None, 5, b)])
            rows, got = flat.unpack(total)
            want = f(p.X, p.Y)
            assert rows == 9 and type(got) is type(want), q
            compare(got, want, rtol=1e-12 if dtype == np.float64 else 1e-5, what=q)
            # the sum of two added in place equals the combined one
            assert np.array_equal(flat.add(flat.add(None, 4, a), 5, b), total), q
            if q in ("hessian", "ggn"):
                assert np.array_equal(got, got.T) and got.flags.owndata


def test_direct_option(client):
    p = make_problem([3, 4, 2], "tanh", "mse", N=12, seed=3)
    want = p.net.loss_grad_ggn(p.theta, p.X, p.Y)
    for direct in (True, False):
        compare(p.net.loss_grad_ggn(p.theta, ShardedData(p.X, p.Y, client=client, direct=direct)), want,
                rtol=SAME, what=f"direct={direct}")
    with pytest.raises(TypeError, match="direct"):
        ShardedData(p.X, p.Y, client=client, direct="yes")


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_zarr_and_h5py_read_by_the_workers(client, tmp_path, kind):
    pytest.importorskip(kind, reason=f"{kind} is not installed (pip install {kind})")
    from test_data import _stores
    p = make_problem([3, 5, 2], "tanh", "mse", N=53, l2=0.1, seed=9)
    X, Y = _stores(tmp_path, p, rows_per_chunk=4)[kind]
    if kind == "h5py":
        import h5py
        with pytest.raises(ValueError, match=r"X: .* read-only"):
            ShardedData(X, Y, client=client)
        X.file.close()
        f = h5py.File(tmp_path / "data.h5", "r")
        X, Y = f["X"], f["Y"]
    data = ShardedData(X, Y, client=client)  # 27 rows per worker, up to 28: whole storage chunks
    assert data.num_shards == 2 and data._first_rows == [0, 28]
    for q in ("loss_and_grad", "ggn", "hvp"):
        compare(_call(p, q, data), _call(p, q, None), rtol=SAME, what=f"{kind} {q}")
    assert ShardedData(X, Y, client=client, chunk_size=10).num_shards == 5  # 12 rows each
