"""What is particular to the numba backend (the shared correctness suite runs on it through
the ``backend`` fixture): its own tanh, one compiled specialisation per dtype, the reused
workspace, threads, and concurrent calls."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import compare, compute, make_problem

import taylorkern as tk

pytestmark = pytest.mark.skipif("numba" not in tk.available_backends(), reason="numba is not installed")


def _nb():
    from taylorkern.backends import numba as nb
    return nb


def test_tanh_within_a_few_ulp_of_numpy():
    from taylorkern.backends._numba.activations import tanh_array
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-30, 30, 100_001), rng.standard_normal(10_000) * 3,
                        rng.standard_normal(1000) * 1e-6,
                        [0.0, -0.0, 0.625, -0.625, np.nextafter(0.625, 0), 19.0, 20.0, 21.0, 700.0,
                         -1e300, 1e-300, 5e-324]])
    got = np.empty_like(x)
    tanh_array(x, got)
    want = np.tanh(x)
    ulp = np.spacing(np.abs(want).clip(np.finfo(float).tiny))
    assert np.max(np.abs(got - want) / ulp) <= 4
    assert np.signbit(got[x == 0]).tolist() == np.signbit(x[x == 0]).tolist()


@pytest.mark.parametrize("act", tk.ACTIVATIONS)
def test_large_inputs_stay_finite(act):
    """Pre-activations of +-1e3: tanh saturates without overflow in its exp, and so on."""
    p = make_problem([2, 4, 3], act, "ce", N=4)
    X = p.X * 1e3
    with tk.use_backend("numba"):
        got = p.net.hessian(p.theta, X, p.Y)
    with tk.use_backend("reference"):
        want = p.net.hessian(p.theta, X, p.Y)
    compare(got, want, np.float64, what=f"hessian with large inputs ({act})")


def test_one_compiled_specialisation_per_dtype():
    """Every entry point compiles once per float dtype whatever the inputs (read-only or not,
    mse or ce, mean or sum, V with one column or several)."""
    nb = _nb()
    for dtype in (np.float64, np.float32):
        for loss in ("mse", "ce"):
            p = make_problem([3, 4, 2], "tanh", loss, N=3, dtype=dtype)
            for a in (p.theta, p.X, p.V):
                a.flags.writeable = False
            for red in ("mean", "sum"):
                with tk.use_backend("numba"):
                    net = p.net
                    net.predict(p.theta, p.X)
                    net.loss(p.theta, p.X, p.Y, reduction=red)
                    net.loss_and_grad(p.theta, p.X, p.Y, reduction=red)
                    net.hvp(p.theta, p.X, p.Y, p.V, reduction=red)
                    net.ggn_vp(p.theta, p.X, p.Y, p.V[:, 0], reduction=red)
                    net.jacobian(p.theta, p.X)
                    net.hessian(p.theta, p.X, p.Y, reduction=red)
                    net.ggn_blocks(p.theta, p.X, p.Y, reduction=red)
                    net.hessian_diag(p.theta, p.X, p.Y, reduction=red)
    k = nb._kernels()
    for fn in (k.fb.predict, k.fb.loss, k.fb.loss_and_grad, k.rop.rop, k.jac.jacobian,
               k.curv.curvature_full, k.curv.curvature_blocks, k.diag.curvature_diag):
        assert len(fn.signatures) <= 2, (fn.__name__, fn.signatures)


def test_workspace_is_reused_across_calls():
    p = make_problem([4, 6, 3], "tanh", "ce", N=40)
    with tk.use_backend("numba"):
        p.net.hessian(p.theta, p.X, p.Y)  # sizes the arena
        pool = p.net._handles["numba"][4]
        (ws, _), = pool.free
        for _ in range(3):
            p.net.hessian(p.theta, p.X, p.Y)
            p.net.loss_and_grad(p.theta, p.X, p.Y)
        (ws2, top), = pool.free
    assert ws2 is ws and top[0] <= ws.size


def test_numba_leaves_the_openmp_thread_count_alone(restore_threads):
    """numba's OpenMP threading layer sets the OpenMP thread count when it starts; the cpp
    backend shares that setting, so the backend restores it."""
    tk.set_num_threads(1)
    p = make_problem([3, 4, 2], "tanh", "mse", N=200)
    with tk.use_backend("numba"):
        p.net.hessian(p.theta, p.X, p.Y)
    assert tk.get_num_threads() == 1


def test_concurrent_calls_from_threads():
    p = make_problem([5, 8, 3], "tanh", "ce", N=300)
    with tk.use_backend("reference"):
        want = p.net.hessian(p.theta, p.X, p.Y)
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(p.net.hessian(p.theta, p.X, p.Y))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with tk.use_backend("numba"):
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(results) == 12
    for r in results:
        compare(r, want, np.float64, what="hessian from a thread")


def test_second_process_loads_every_kernel_from_the_cache():
    """cache=True works only if no kernel uses a "dynamic global" (a ctypes pointer, e.g.
    numba.get_num_threads() inside a kernel): then numba silently compiles again in every
    process.  After this session has compiled them, a fresh process must find them all."""
    for dtype in (np.float64, np.float32):  # fill the cache in this process first
        for loss in ("mse", "ce"):
            p = make_problem([3, 4, 2], "tanh", loss, N=3, dtype=dtype)
            with tk.use_backend("numba"):
                for q in ("predict", "loss", "loss_and_grad", "hvp", "jacobian", "hessian",
                          "hessian_blocks", "hessian_diag"):
                    compute(p, q)
    code = """
import numpy as np, warnings
warnings.simplefilter("error")  # a NumbaWarning "Cannot cache ..." fails the run
import taylorkern as tk
from taylorkern.backends import numba as nb
tk.set_backend("numba")
for dtype in (np.float64, np.float32):
    net = tk.MLP([3, 4, 2], dtype=dtype); theta = net.init(seed=0)
    X = np.ones((3, 3), dtype); Y = np.ones((3, 2), dtype); V = np.ones(net.num_params, dtype)
    net.predict(theta, X); net.loss(theta, X, Y); net.loss_and_grad(theta, X, Y)
    net.hvp(theta, X, Y, V); net.jacobian(theta, X); net.hessian(theta, X, Y)
    net.hessian_blocks(theta, X, Y); net.hessian_diag(theta, X, Y)
k = nb._kernels()
fns = (k.fb.predict, k.fb.loss, k.fb.loss_and_grad, k.rop.rop, k.jac.jacobian,
       k.curv.curvature_full, k.curv.curvature_blocks, k.diag.curvature_diag)
print(sum(len(f.stats.cache_misses) for f in fns), sum(sum(f.stats.cache_hits.values()) for f in fns))
"""
    root = str(Path(tk.__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0, r.stderr
    misses, hits = map(int, r.stdout.split())
    assert misses == 0 and hits == 16


def test_cached_caller_recompiles_when_a_callee_module_changes(tmp_path):
    """numba keys a cached function on its own file only, yet its cached code includes what
    it calls from other modules: an edit or an upgrade of a callee's module would leave the
    caller running the old callee.  common.cache_by_directory keys it on every module of the
    directory.  A two-module package built here: b.g calls a.f; a.f changes; a fresh process
    must see it through b.g (and the first process must have written the cache)."""
    pkg = tmp_path / "cachepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import os\n"
        "from taylorkern.backends._numba.common import cache_by_directory\n"
        "assert cache_by_directory(os.path.dirname(__file__))\n")
    (pkg / "a.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1.0\n")
    (pkg / "b.py").write_text("from numba import njit\nfrom .a import f\n\n"
                              "@njit(cache=True)\ndef g(x):\n    return 2.0 * f(x)\n")
    root = str(Path(tk.__file__).resolve().parent.parent)
    code = ("from cachepkg.b import g\n"
            "print(g(1.0), len(g.stats.cache_misses), sum(g.stats.cache_hits.values()))\n")

    def run():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])})
        assert r.returncode == 0, r.stderr
        value, misses, hits = r.stdout.split()
        return float(value), int(misses), int(hits)

    assert run() == (4.0, 1, 0)  # compiled and written
    assert run() == (4.0, 0, 1)  # loaded from the cache
    (pkg / "a.py").write_text((pkg / "a.py").read_text().replace("x + 1.0", "x + 2.0"))
    assert run() == (6.0, 1, 0)  # b.py unchanged, yet compiled again with the new f
