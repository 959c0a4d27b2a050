#!/usr/bin/env bash
# The one-command GPU check: on a machine with a CUDA GPU, nvcc and the Python packages of the
# project (torch, cupy, pytest, pybind11, scikit-build-core, cmake, ninja; no registry needed),
#
#     bench/gpu_check.sh OUTDIR
#
# 1. builds and installs fusedopt with the CUDA kernels (FUSEDOPT_CUDA=ON), and checks that the
#    module holds machine code for sm_80 and sm_90 and PTX for every algorithm (cuobjdump);
# 2. runs the host emulation of the CUDA driver (tests/test_cuda_emulation.py), as CI does: a
#    failure here is the launcher's, whatever the device does;
# 3. runs the tests that need the device (tests/test_cuda.py, the classes and EMA on CuPy and
#    PyTorch CUDA arrays, the reductions);
# 4. times the GPU benchmarks (bench/gpu_adam.py; bench/run.py --device cuda on the model-sized
#    workloads), each under a time limit.
#
# It writes at most 8 files into OUTDIR: build.log, info.json, emulation.log, tests.log, bench.log,
# gpu_adam.json and bench/run.py's <machine>-cuda.json and .md; and prints a summary last. The
# whole run is sized for about 8 minutes on an H100 or H200. Exit status: 0 when every step passed.
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
started=$(date +%s)
status=0
summary=()
elapsed() { echo $(( $(date +%s) - started ))s; }
step() {  # step NAME LOG COMMAND...: runs COMMAND, its output into LOG, and records the outcome
  local name=$1 log=$2
  shift 2
  echo "== $name ($(elapsed))"
  if "$@" > "$log" 2>&1; then
    summary+=("$name: ok")
  else
    summary+=("$name: FAILED (exit $?; see $(basename "$log"))")
    status=1
  fi
  tail -n 3 "$log"
}

# 1. Build and install (a failed build ends the check).
if ! $PY -m pip install --no-build-isolation --no-deps -C cmake.define.FUSEDOPT_CUDA=ON \
     -C build-dir=build/gpu-check . > "$OUT/build.log" 2>&1; then
  tail -n 40 "$OUT/build.log"
  echo "gpu_check: the build failed (see build.log)"
  exit 1
fi
so=$(cd /tmp && $PY -c "import fusedopt._core as c; print(c.__file__)")
{
  echo "== cuobjdump --list-elf"; cuobjdump --list-elf "$so"
  echo "== cuobjdump --list-ptx"; cuobjdump --list-ptx "$so"
} >> "$OUT/build.log" 2>&1
(cd /tmp && $PY - "$so" <<'PY' > "$OUT/info.json"
import json, subprocess, sys
import fusedopt
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"build": fusedopt.build_info(), "cuda": fusedopt._core.cuda.info(),
                  "cuda_available": fusedopt.cuda_available(), "gpu": gpu, "module": sys.argv[1]},
                 indent=1))
PY
)
summary+=("build: ok ($(elapsed))")

# 2. The host emulation of the CUDA driver: the launcher alone.
step "emulation" "$OUT/emulation.log" \
  $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda_emulation.py

# 3. The device: the CUDA tests, the classes on device arrays, the reductions.
step "device tests" "$OUT/tests.log" \
  timeout 300 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
  tests/test_optim_device.py tests/test_torch_interop.py tests/test_reduce.py
step "sharded state over NCCL" "$OUT/zero.log" \
  timeout 200 $PY -m pytest -q -p no:cacheprovider -rs tests/test_zero.py -k nccl

# 4. The GPU benchmarks, each under a limit.
{
  echo "== bench/gpu_adam.py ($(elapsed))"
  timeout 120 $PY bench/gpu_adam.py --json "$OUT/gpu_adam.json"
  echo "== bench/run.py --device cuda ($(elapsed))"
  timeout 200 $PY bench/run.py --device cuda --workloads model200,small4096,flat16M \
    --no-chart --out "$OUT"
} > "$OUT/bench.log" 2>&1 || { summary+=("benchmarks: FAILED (see bench.log)"); status=1; }
tail -n 25 "$OUT/bench.log"

echo
echo "== gpu_check summary ($(elapsed)): $(sed -n 's/.*"gpu": "\(.*\)",/\1/p' "$OUT/info.json")"
printf '%s\n' "${summary[@]}"
exit $status
