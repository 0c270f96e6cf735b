"""What a fresh process pays before its first result: ``import taylorkern`` and the first and
second call of each quantity on the small problem, per compiled backend (numba's on-disk
cache warm: it compiles once per machine, ~40 s per dtype, which a warm-up process pays
here untimed).  extra_info has the seconds; the benchmark's time is the whole process."""

import json
import os
import subprocess
import sys

import pytest

import taylorkern as tk

QUANTITIES = ("loss_and_grad", "hvp", "ggn_vp", "ggn", "hessian")
SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import taylorkern as tk
from taylorkern.benchmarks.problems import Problem
out = {"import_s": time.perf_counter() - t0}
tk.set_backend(sys.argv[1])
p = Problem("small")
for q in sys.argv[2:]:
    call = p.call(q)
    t0 = time.perf_counter(); call(); t1 = time.perf_counter(); call(); t2 = time.perf_counter()
    out[q] = {"first_call_s": t1 - t0, "second_call_s": t2 - t1}
print(json.dumps(out))
"""


def fresh_process(backend):
    r = subprocess.run([sys.executable, "-c", SCRIPT, backend, *QUANTITIES], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", [b for b in ("cpp", "numba") if b in tk.available_backends()])
def test_first_call(benchmark, backend):
    fresh_process(backend)  # fills numba's cache (untimed)
    result = benchmark.pedantic(fresh_process, args=(backend,), rounds=1, iterations=1)
    benchmark.group = "fresh process: import + first calls (small)"
    benchmark.extra_info.update(result)
