"""Benchmark setup: pin every library's thread count before anything numeric is imported.

TAYLORKERN_BENCH_THREADS (default 2) sets OpenMP's, OpenBLAS's and MKL's thread counts;
run ``pytest bench --benchmark-only`` once per setting to compare 1 and 2 threads.
"""

import os

THREADS = os.environ.get("TAYLORKERN_BENCH_THREADS", "2")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = THREADS

import numpy as np  # noqa: E402  (after the thread pins, deliberately)
import pytest  # noqa: E402

import taylorkern as tk  # noqa: E402

# name: (sizes, activation, loss, N) -- the configurations of the benchmark issue
CONFIGS = {
    "seed": ([2, 8, 1], "relu", "mse", 100),
    "small": ([10, 32, 32, 1], "tanh", "mse", 1000),
    "medium": ([20, 64, 64, 1], "tanh", "mse", 2000),
    "classif": ([64, 64, 10], "tanh", "ce", 1000),
    "wide": ([784, 128, 10], "relu", "ce", 512),
}


class Problem:
    def __init__(self, name, dtype=np.float64):
        sizes, act, loss, N = CONFIGS[name]
        rng = np.random.default_rng(0)
        self.name = name
        self.net = tk.MLP(sizes, activation=act, loss=loss, dtype=dtype)
        self.theta = self.net.init(seed=0)
        self.X = rng.standard_normal((N, sizes[0])).astype(dtype)
        self.Y = (rng.standard_normal((N, sizes[-1])).astype(dtype) if loss == "mse"
                  else rng.integers(0, sizes[-1], N))
        self.v = rng.standard_normal(self.net.num_params).astype(dtype)
        self.V = rng.standard_normal((self.net.num_params, 32)).astype(dtype)
        self.data = (self.theta, self.X, self.Y)


@pytest.fixture(scope="session")
def problems():
    cache = {}

    def get(name, dtype=np.float64):
        key = (name, np.dtype(dtype).name)
        if key not in cache:
            cache[key] = Problem(name, dtype)
        return cache[key]

    return get


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["taylorkern"] = {"threads": THREADS, "backends": tk.available_backends()}
