#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (no network needed): build taylorkern with its
# CUDA backend, run the CUDA tests, then the GPU benchmarks of issue 7, and print a short
# table with the card's name.  Takes a few minutes on an H100/H200 machine.
#
#   bash bench/gpu_check.sh            # build + tests/test_cuda.py + benchmarks
#   bash bench/gpu_check.sh --full     # ... and the whole test suite (every backend)
#   bash bench/gpu_check.sh --quick    # shorter benchmarks
#   bash bench/gpu_check.sh --no-bench # build + tests only
#
# Uses `python3` as found (on the GPU machines: the PyTorch venv, which has scikit-build-core,
# pybind11, cmake, ninja, numpy, scipy, pytest, hypothesis, CuPy and the nvidia-cublas wheel
# that the backend loads cuBLAS from).  The package is installed into that Python without
# build isolation or dependencies (nothing is downloaded); tests run from outside the source
# tree so that they import the installed copy.  Results also go to $OUT/ when $OUT is set.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-$REPO/build/gpu_check}"
mkdir -p "$OUTDIR"
FULL=0
BENCH=1
BENCH_ARGS=()
for a in "$@"; do
  case "$a" in
    --full) FULL=1 ;;
    --quick) BENCH_ARGS+=(--quick) ;;
    --no-peers) BENCH_ARGS+=(--no-peers) ;;
    --no-bench) BENCH=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

# nvcc: on the PATH, or the toolkit's usual place
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
export CUDACXX="${CUDACXX:-$(command -v nvcc || true)}"
# JAX (one test hands its arrays over by DLPack) otherwise takes 75% of the GPU's memory at import
export XLA_PYTHON_CLIENT_PREALLOCATE=false

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" --version; command -v nvcc && nvcc --version | tail -2 || echo "no nvcc on PATH"

echo "== build (pip install, CUDA on)"
start=$(date +%s)
"$PY" -m pip install --no-build-isolation --no-deps --force-reinstall -q \
  -C cmake.define.TAYLORKERN_CUDA=ON -C build-dir="$REPO/build/gpu" "$REPO" 2>&1 | tail -20
echo "build: $(( $(date +%s) - start )) s"

cd "$OUTDIR"   # import the installed package, not the source tree
"$PY" - <<'PYEOF'
import taylorkern as tk
from taylorkern import _dispatch
print("backends:", tk.available_backends(), "| active:", tk.backend())
try:
    from taylorkern.backends import cuda
    print("cuda:", cuda.info())
except ImportError as exc:
    print("cuda backend UNAVAILABLE:", exc)
    raise SystemExit(1)
PYEOF

echo "== tests: tests/test_cuda.py, test_dispatch.py, and the correctness suite on cuda"
PYTEST=("$PY" -m pytest -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" -q -rfs --tb=short)
# the reference's numpy work dominates: one thread per worker, as many workers as cores
# (pytest-benchmark refuses xdist with a warning, an error under the project's settings)
if "$PY" -c "import xdist" 2>/dev/null; then PYTEST+=(-n "$(nproc)" -p no:benchmark); fi
set +e
start=$(date +%s)
# bounded, so that a hang still leaves the benchmarks their time (TEST_TIMEOUT seconds, default 400)
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout "${TEST_TIMEOUT:-400}" "${PYTEST[@]}" "$REPO/tests/test_cuda.py" \
  "$REPO/tests/test_dispatch.py" "$REPO/tests/test_backends.py" "$REPO/tests/test_errors.py" \
  "$REPO/tests/test_losses.py" "$REPO/tests/test_sample_weight.py" \
  -k "cuda or test_cuda.py or test_dispatch.py" 2>&1 | tee "$OUTDIR/test_cuda.log" | tail -40
tests_rc=${PIPESTATUS[0]}
echo "tests: $(( $(date +%s) - start )) s"
echo "== worst error per loss and backend (bench/RESULTS.md has the CPU's)"
timeout 300 "$PY" "$REPO/bench/loss_errors.py" 2>&1 | tee "$OUTDIR/loss_errors.log"
timeout 300 "$PY" "$REPO/bench/loss_errors.py" --dtype float32 2>&1 | tee -a "$OUTDIR/loss_errors.log"
if [ "$FULL" = 1 ]; then
  echo "== full suite"
  "${PYTEST[@]}" "$REPO/tests" 2>&1 | tee "$OUTDIR/tests_full.log" | tail -30
fi
set -e

if [ "$BENCH" = 1 ]; then
  echo "== benchmarks"
  "$PY" "$REPO/bench/gpu_check.py" --json "$OUTDIR/gpu_check.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} 2>&1 | tee "$OUTDIR/bench.log"
fi
echo "== done: tests exit code $tests_rc; logs in $OUTDIR"
exit "$tests_rc"
