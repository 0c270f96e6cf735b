"""The machine's GEMM ceiling in this run: scipy's dgemm/sgemm (the OpenBLAS the kernels call)
on 2048 x 2048 matrices with this run's thread pins, and the same in a subprocess without
OPENBLAS_CORETYPE.  Every other case's fraction_of_ceiling divides by these."""

import numpy as np
import pytest
from scipy.linalg import blas

from taylorkern.benchmarks import flops


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gemm_ceiling(benchmark, dtype):
    info = flops.ceilings((dtype,))[dtype]
    n, gemm = info["n"], getattr(blas, info["kernel"])
    A = np.asfortranarray(np.random.default_rng(0).standard_normal((n, n)).astype(dtype))
    C = np.zeros((n, n), dtype, order="F")
    benchmark.group = "GEMM ceiling"
    benchmark.extra_info.update(info)
    benchmark.pedantic(gemm, args=(1.0, A, A, 0.0, C), kwargs={"overwrite_c": 1}, rounds=3, warmup_rounds=1)
