"""Core kernels, cpp vs reference: loss_and_grad, hvp, ggn_vp, ggn, hessian on the medium
problem ([20,64,64,1] tanh mse, N=2000, P=5569).  Every benchmark checks the backend
against the reference before it times.

The reference cannot form a 5569 x 5569 Hessian the way it does in the tests (P R-op
passes at once need ~6 GB), so its full-matrix baselines are what a numpy user would do:
the GGN as J^T (2/N) J from the reference Jacobian; the Hessian as reference hvp products
with columns of the identity, timed on a 256-column slab (the whole matrix takes ~140 s
here: 22 such slabs; extra_info records the extrapolation).  The compiled full matrices
are checked against reference products H v, G v.

Run: pytest bench --benchmark-only   (TAYLORKERN_BENCH_THREADS=1 for one thread)
"""

import numpy as np
import pytest

import taylorkern as tk
from conftest import relerr

BACKENDS = [b for b in tk.available_backends()]
TOL = 1e-10  # float64, as in the tests


SLAB = 256  # Hessian columns per reference hvp call


def _ggn_from_jacobian(net, theta, X, Y):
    J = net.jacobian(theta, X)
    return J.T @ J * (2.0 / J.shape[0])  # mse, one output: H_out = 2/(N k) per row


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quantity", ["loss_and_grad", "hvp", "ggn_vp", "hvp_V32"])
def test_products(benchmark, problems, backend, quantity):
    p = problems("medium")
    net, (theta, X, Y) = p.net, p.data
    call = {
        "loss_and_grad": lambda: net.loss_and_grad(theta, X, Y)[1],
        "hvp": lambda: net.hvp(theta, X, Y, p.v),
        "ggn_vp": lambda: net.ggn_vp(theta, X, Y, p.v),
        "hvp_V32": lambda: net.hvp(theta, X, Y, p.V),
    }[quantity]
    with tk.use_backend("reference"):
        want = call()
    with tk.use_backend(backend):
        assert relerr(call(), want) < TOL
        benchmark.group = f"medium {quantity}"
        benchmark(call)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quantity", ["ggn", "hessian"])
def test_full(benchmark, problems, backend, quantity):
    p = problems("medium")
    net, (theta, X, Y) = p.net, p.data
    benchmark.group = f"medium {quantity}" + ("" if quantity == "ggn" else f" (reference row: {SLAB} columns)")
    product = net.ggn_vp if quantity == "ggn" else net.hvp
    with tk.use_backend("reference"):
        want = product(theta, X, Y, p.V[:, :4])
    with tk.use_backend(backend):
        if backend == "reference" and quantity == "ggn":
            M = benchmark.pedantic(_ggn_from_jacobian, args=(net, theta, X, Y), rounds=1, iterations=1)
        elif backend == "reference":
            P = net.num_params
            E = np.eye(P, SLAB)
            slab = benchmark.pedantic(net.hvp, args=(theta, X, Y, E), rounds=1, iterations=1)
            benchmark.extra_info["columns_timed"] = SLAB
            benchmark.extra_info["whole_matrix_estimate_s"] = benchmark.stats.stats.median * P / SLAB
            # H[:, :SLAB] checked against products with the first SLAB unit vectors
            assert relerr(slab.T @ p.V[:, :4], want[:SLAB]) < TOL
            return
        else:
            M = benchmark.pedantic(getattr(net, quantity), args=(theta, X, Y), rounds=5, iterations=1,
                                   warmup_rounds=1)
    assert relerr(M @ p.V[:, :4], want) < TOL
