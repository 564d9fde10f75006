#!/usr/bin/env bash
# CI step: compile and link the CUDA sources of cascade_rt._C on a machine with no GPU.
#
# Uses a separate venv (.venv-cuda) holding a CUDA build of torch and the machine's nvcc;
# builds into a temporary directory (the in-place CPU build in .venv is left alone), then
# loads the library into that torch and checks that every op has a CUDA kernel registered.
# Nothing here needs or probes a GPU.
#
# Environment: PYTHON (default python3), TORCH_CUDA_VERSION (default 2.14.1), CUDA_HOME
# (default: the toolkit of the nvcc on PATH), MAX_JOBS (default 2), TORCH_CUDA_ARCH_LIST
# (default "8.0;9.0"), KEEP_BUILD=1 to keep the build directory, CUDA_COMPILE_MIN_FREE_GB
# (default 10: with less free disk and no CUDA torch installed yet, the step is skipped, saying
# so, rather than failing half way through pip).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PY="${PYTHON:-python3}"
VENV=.venv-cuda
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  # A CUDA build of torch with its nvidia-* wheels takes about 5.5 GB in the venv, and pip
  # holds the downloaded wheels (about 3 GB) beside it while it installs. On a machine without
  # that much free disk the install dies half way with ENOSPC; say so and skip this check
  # instead (the CPU build and the test suite do not depend on it).
  need_gb="${CUDA_COMPILE_MIN_FREE_GB:-10}"
  free_gb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1048576 ))
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "ci_cuda_compile: SKIPPED: $free_gb GB free on $(df -P . | awk 'NR==2 {print $6}'), the CUDA build of torch needs about $need_gb GB (CUDA_COMPILE_MIN_FREE_GB); the CUDA sources were not compiled" >&2
    rm -rf "$VENV"
    exit 0
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir "torch==${TORCH_CUDA_VERSION:-2.14.1}"
fi
"$VENV/bin/python" -c "import setuptools, ninja" 2>/dev/null ||
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check setuptools wheel ninja

if [ -z "${CUDA_HOME:-}" ]; then
  NVCC=$(command -v nvcc || true)
  [ -n "$NVCC" ] || { echo "ci_cuda_compile: nvcc not found; set CUDA_HOME" >&2; exit 1; }
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
  if [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ]; then
    # nvcc on PATH is a wrapper script (exec <root>/bin/nvcc "$@"): take the root it calls
    CUDA_HOME=$(sed -n 's|^exec \(.*\)/bin/nvcc.*|\1|p' "$NVCC" | head -1)
  fi
  [ -f "$CUDA_HOME/include/cuda_runtime.h" ] || { echo "ci_cuda_compile: no CUDA toolkit found; set CUDA_HOME" >&2; exit 1; }
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
# the CUDA math-library headers (cuBLAS, cuSPARSE, ...) torch includes come with its pip wheels
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
EXTRA_INC=""
for d in "$SITE"/nvidia/cu*/include; do [ -d "$d" ] && EXTRA_INC="$d"; done
echo "ci_cuda_compile: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), CUDA_HOME=$CUDA_HOME, nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"

BUILD=$(mktemp -d "${TMPDIR:-/tmp}/cascade_rt_cuda.XXXXXX")
[ "${KEEP_BUILD:-0}" = 1 ] || trap 'rm -rf "$BUILD"' EXIT
export CASCADE_RT_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
unset CASCADE_RT_NO_NATIVE
"$VENV/bin/python" setup.py -q build_ext --build-temp "$BUILD/temp" --build-lib "$BUILD/lib" \
  ${EXTRA_INC:+--include-dirs "$EXTRA_INC"} > "$BUILD/build.log" 2>&1 || {
  grep -v -E "^WARNING: Location|BuildBackendWarning|^\s*$" "$BUILD/build.log" | tail -60 >&2
  echo "ci_cuda_compile: FAILED to build the CUDA extension" >&2
  exit 1
}
SO=$(find "$BUILD/lib" -name "_C*.so" | head -1)
[ -n "$SO" ] || { echo "ci_cuda_compile: no cascade_rt/_C*.so was produced" >&2; exit 1; }

# Load it into the CUDA torch (no GPU needed) and check every op has a CUDA kernel.
"$VENV/bin/python" - "$SO" <<'PY'
import sys
import warnings

warnings.filterwarnings("ignore")
import torch

torch.ops.load_library(sys.argv[1])
cuda_ops = ["add_layer_norm", "exit_head", "compact", "scatter_exits", "pack", "unpack"]
cpu_ops = cuda_ops + ["varlen_attention"]
missing = [f"{op} (CPU)" for op in cpu_ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cascade_rt::{op}", "CPU")]
missing += [f"{op} (CUDA)" for op in cuda_ops
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cascade_rt::{op}", "CUDA")]
if missing:
    sys.exit("ci_cuda_compile: kernels not registered: " + ", ".join(missing))
print(f"ci_cuda_compile: {sys.argv[1].rsplit('/', 1)[-1]} loads; CUDA kernels registered: {', '.join(cuda_ops)}")
PY
echo "ci_cuda_compile: OK in $(( $(date +%s) - start )) s (MAX_JOBS=$MAX_JOBS, archs $TORCH_CUDA_ARCH_LIST)"
