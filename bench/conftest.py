"""Benchmark suite setup: thread pins first, then one parametrized case per
configuration x quantity x dtype x implementation.

Run (2 threads by default; TAYLORKERN_BENCH_THREADS=1 for one, a separate run each):

    pytest bench --benchmark-only --benchmark-json=bench.json        # everything, ~30 min
    pytest bench --benchmark-only -k "medium"                         # one configuration
    pytest bench --benchmark-only -k "not reference and not wide"     # subsets by test id
    pytest bench/test_full.py --benchmark-only -k "classif and float64" --case-budget=0.5
    pytest bench --benchmark-only --no-peers                          # taylorkern's backends only

Test ids read ``config-quantity-dtype-implementation`` (implementations: taylorkern-cpp,
taylorkern-numba, taylorkern-reference, then the peers installed: torch, torch.func, jax.jit,
backpack, curvlinops), and each case's benchmark group is "config quantity dtype", so
pytest-benchmark's table puts the implementations of one group side by side.

Every case checks its result against the float64 reference before it is timed
(taylorkern.benchmarks.harness), then runs rounds chosen from one timed call so that it
takes about --case-budget seconds (default 1).  A call longer than that is timed by the
checked call alone (rounds = 1), except taylorkern's compiled backends, whose second call is
timed; so are the reference's full matrices past 256 parameters, estimated from 64 identity
columns and scaled to the whole matrix (extra_info's note says so).
extra_info holds the model FLOPs, GFLOP/s, the fractions of the machine's dgemm/sgemm
ceiling (measured in this run, with and without OPENBLAS_CORETYPE, at the first case), the
check's error and how the implementation computes the quantity.  --benchmark-json adds a
"taylorkern" entry: threads, the ceilings (again at the end too: on a shared machine they
move with the load) and the machine's description.
"""

import importlib.util
import os
import pathlib
import time

# Thread pins before anything numeric is imported.  pinning.py is loaded by path because
# importing the taylorkern package would import numpy (and start OpenBLAS) first.
_spec = importlib.util.spec_from_file_location(
    "_taylorkern_pinning", pathlib.Path(__file__).resolve().parents[1] / "taylorkern" / "benchmarks" / "pinning.py")
pinning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pinning)
THREADS = int(os.environ.get("TAYLORKERN_BENCH_THREADS", "2"))
os.environ.update(pinning.thread_env(THREADS))
pinning.limit_affinity(THREADS)

import warnings  # noqa: E402

import pytest  # noqa: E402  (after the thread pins, deliberately)

with warnings.catch_warnings():  # dispatch warns once when it falls back from cpp: that is no error here
    warnings.simplefilter("ignore", RuntimeWarning)
    import taylorkern  # noqa: E402, F401
from taylorkern.benchmarks import flops, harness  # noqa: E402
from taylorkern.benchmarks.problems import CONFIGS  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("taylorkern", "taylorkern benchmarks")
    group.addoption("--case-budget", type=float, default=1.0,
                    help="seconds of timed rounds per case (default 1); slower calls run once")
    group.addoption("--no-peers", action="store_true", help="time taylorkern's backends only")


def pytest_configure(config):
    # pyproject turns warnings into errors for the tests; here results are checked explicitly and
    # the peers' own deprecation notices (torch.jit.script inside torch.func, ...) are no failure
    config.addinivalue_line("filterwarnings", "default")
    if not config.getoption("--no-peers"):
        pinning.pin_torch(THREADS)


def pytest_generate_tests(metafunc):
    """``case`` = (config, quantity, dtype, implementation) for the module's QUANTITIES."""
    if "case" in metafunc.fixturenames:
        impls = harness.implementations(with_peers=not metafunc.config.getoption("--no-peers"))
        params = [(c, q, dt, impl) for c in CONFIGS for q in metafunc.module.QUANTITIES
                  for dt in harness.DTYPES for impl in impls]
        metafunc.parametrize("case", params, ids=["-".join(p) for p in params])


@pytest.fixture(scope="session")
def cases():
    return harness.Cases()


@pytest.fixture
def bench(benchmark, cases, request):
    """bench((config, quantity, dtype, impl)): check against the reference, then time."""
    budget = request.config.getoption("--case-budget")

    def run(params):
        config, quantity, dtype, impl = params
        try:
            c = cases.case(config, dtype, impl, quantity)
        except harness.Skip as why:
            pytest.skip(str(why))
        benchmark.group = c.group
        first, err = harness.first_call(c)
        once = harness.timed_once(c, first, budget)
        with c.context():
            if once:  # the checked call is the measurement (put in below)
                rounds, iterations = 1, 1
                benchmark.pedantic(lambda: None)
            else:  # calibrate on a warm call
                harness.settle()
                t0 = time.perf_counter()
                c.fn()
                rounds, iterations = harness.plan(time.perf_counter() - t0, budget)
                benchmark.pedantic(c.fn, rounds=rounds, iterations=iterations)
        info = benchmark.extra_info
        info.update(threads=THREADS, check_error=err, tolerance=c.tolerance, first_call_s=first * c.scale,
                    rounds=rounds, iterations=iterations,
                    note="; ".join(filter(None, [c.note, "timed once: the checked call" if once else ""])))
        stats = getattr(benchmark.stats, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            if once:
                stats.data[:] = [first * c.scale]  # (scaled: the reference's estimate of the whole)
            info.update(harness.rates(c, stats.median))

    return run


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["taylorkern"] = {"threads": THREADS, "case_budget_s": config.getoption("--case-budget"),
                                 "ceilings": flops.ceilings(), "ceilings_at_end": flops.ceilings(fresh=True),
                                 "machine": harness.machine(with_peers=not config.getoption("--no-peers"))}
