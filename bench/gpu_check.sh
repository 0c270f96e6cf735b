#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (no network needed): build taylorkern with its
# CUDA backend, run the CUDA tests, then the GPU benchmarks of issue 7, and print a short
# table with the card's name.  Takes a few minutes on an H100/H200 machine.
#
#   bash bench/gpu_check.sh            # build + tests/test_cuda.py + benchmarks
#   bash bench/gpu_check.sh --full     # ... and the whole test suite (every backend)
#   bash bench/gpu_check.sh --quick    # shorter benchmarks
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
BENCH_ARGS=()
for a in "$@"; do
  case "$a" in
    --full) FULL=1 ;;
    --quick) BENCH_ARGS+=(--quick) ;;
    --no-peers) BENCH_ARGS+=(--no-peers) ;;
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

echo "== tests/test_cuda.py"
PYTEST=("$PY" -m pytest -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" -q -rs)
set +e
"${PYTEST[@]}" "$REPO/tests/test_cuda.py" 2>&1 | tee "$OUTDIR/test_cuda.log" | tail -40
tests_rc=${PIPESTATUS[0]}
if [ "$FULL" = 1 ]; then
  echo "== full suite"
  "${PYTEST[@]}" "$REPO/tests" 2>&1 | tee "$OUTDIR/tests_full.log" | tail -30
fi
set -e

echo "== benchmarks"
"$PY" "$REPO/bench/gpu_check.py" --json "$OUTDIR/gpu_check.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} 2>&1 | tee "$OUTDIR/bench.log"
echo "== done: tests exit code $tests_rc; logs in $OUTDIR"
exit "$tests_rc"
