#!/usr/bin/env bash
# Build taylorkern._core with AddressSanitizer and UBSan and run the test suite on the cpp
# backend against it (about 3 min for the build and 3-5 min for the tests on the 2-core
# machine).  A development check, not run by CI.
#
#   bash csrc/sanitize.sh [extra pytest args]          # from anywhere; TK_SAN_OUT=/tmp/... to move
#
# The build goes to $TK_SAN_OUT/build, a copy of the package with the instrumented _core to
# $TK_SAN_OUT/pkg.  Python is not instrumented, so libasan is preloaded, with libstdc++ beside
# it (without it ASan cannot intercept the first C++ exception and the process dies).  pytest
# captures only Python's sys.stdout/stderr (--capture=sys): with its default capture of file
# descriptor 2, a dying process's report would vanish with the capture.  UBSan stops at its
# first finding.  The log is $TK_SAN_OUT/pytest.log; the script fails on a report.  The host
# emulation of the CUDA kernels has the same check: TK_EMU_SANITIZE=1 python3 csrc/cuda/emulate/run.py.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${TK_SAN_OUT:-/tmp/taylorkern-sanitize}"
PY="${PYTHON:-python3}"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

cmake -S "$REPO" -B "$OUT/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTAYLORKERN_CUDA=OFF \
  -DTAYLORKERN_ISA_VARIANTS=OFF \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_MODULE_LINKER_FLAGS="$SAN" >/dev/null
cmake --build "$OUT/build" -j "$(nproc)"

rm -rf "$OUT/pkg"
mkdir -p "$OUT/pkg"
cp -r "$REPO/taylorkern" "$OUT/pkg/"
find "$OUT/pkg" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$OUT"/pkg/taylorkern/_core*.so "$OUT"/pkg/taylorkern/_cuda*.so
cp "$OUT"/build/taylorkern/_core*.so "$OUT/pkg/taylorkern/"  # the baseline module only (no ISA variants)

preload="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libstdc++.so.6)"
set +e
(cd "$OUT/pkg" && LD_PRELOAD="$preload" PYTHONPATH="$OUT/pkg" PYTHONDONTWRITEBYTECODE=1 TAYLORKERN_BACKEND=cpp \
  ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1" UBSAN_OPTIONS="print_stacktrace=1" \
  "$PY" -m pytest -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" -q --capture=sys \
  --ignore="$REPO/tests/test_cuda.py" "$REPO/tests" "$@" 2>&1 | tee "$OUT/pytest.log")
rc=${PIPESTATUS[0]}
set -e
if grep -qE "runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer" "$OUT/pytest.log"; then
  echo "sanitizer report(s) above; the log: $OUT/pytest.log"
  exit 1
fi
exit "$rc"
