#!/usr/bin/env bash
# Everything GPU-only in cascade_rt, in one go, on a machine with a CUDA device:
#
#   1. build cascade_rt._C with its CUDA kernels for this GPU's architecture (when nvcc is
#      there and the extension is missing or CPU-only; CASCADE_RT_GPU_CHECK_NO_BUILD=1 skips)
#   2. the GPU-marked tests (pytest -m gpu)                 -> bench/results/gpu_tests_gpu.xml
#   3. op microbenchmarks vs torch baselines (attention vs SDPA flash/cuDNN/efficient/math,
#      linear vs cuBLAS, add+LayerNorm, exit head native vs Triton)
#                                                            -> bench/results/micro_ops_gpu.{json,png}
#   4. cascade-rt bench --device cuda (one tier vs HF sdpa padded; 2- and 3-tier cascades),
#      and the 2-tier cascade again on the sync-free path  -> bench/results/e2e_*_cuda.{json,png}
#   5. sync-debug check, CUDA-graph replay, and the issue's goals beside the figures
#                                                            -> bench/results/gpu_check_gpu.json
#
# Each step gets a share of an overall budget (GPU_CHECK_BUDGET seconds, default 465, so the
# whole run stays under 8 minutes); a step that runs out is stopped and recorded, and the
# next one runs. Every JSON carries the device, the torch/triton/CUDA versions and the commit.
# Refuses (exit 2) when no CUDA device is visible. Environment: PYTHON (default: the first of
# .venv/bin/python, python3 that sees a CUDA device), GPU_CHECK_OUT (default bench/results),
# GPU_CHECK_QUICK=1 (smaller runs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${GPU_CHECK_OUT:-$ROOT/bench/results}
BUDGET=${GPU_CHECK_BUDGET:-465}
QUICK=${GPU_CHECK_QUICK:-0}
START=$(date +%s)

PY=""
tried=""
for cand in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
  [ -n "$cand" ] || continue
  command -v "$cand" >/dev/null 2>&1 || continue
  real=$(realpath -s "$(command -v "$cand")")
  case " $tried " in *" $real "*) continue ;; esac
  tried="$tried $real"
  # one torch import per interpreter: prints "cuda" or what this torch is
  probe=$("$cand" -c "import torch; print('cuda' if torch.cuda.is_available() else f'torch {torch.__version__}, CUDA {torch.version.cuda}')" 2>/dev/null || echo "no torch")
  if [ "$probe" = "cuda" ]; then
    PY=$cand
    break
  fi
  seen="${seen:+$seen; }$cand: $probe"
done
if [ -z "$PY" ]; then
  echo "gpu_check: refusing to run: no CUDA device is visible (${seen:-no python found}). This script" \
       "runs the GPU-only checks and must run on a machine with an NVIDIA GPU and a CUDA build of torch." >&2
  exit 2
fi

mkdir -p "$OUT"
STEPS="$OUT/gpu_check_steps.jsonl"
: > "$STEPS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
CLEANUP=()
cleanup() { for p in "${CLEANUP[@]}"; do rm -f "$p"; done; }
trap cleanup EXIT

# a source tree that was not pip-installed: cascade_rt.kernels is the top-level kernels/
if ! "$PY" -c "import cascade_rt.kernels.linear" >/dev/null 2>&1; then
  if [ ! -e cascade_rt/kernels ]; then
    ln -s ../kernels cascade_rt/kernels
    CLEANUP+=("$ROOT/cascade_rt/kernels")
  fi
fi

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME MAX_SECONDS RESERVE_SECONDS CMD...: run CMD with a timeout of at most MAX_SECONDS
# that leaves RESERVE_SECONDS of the budget for the steps after it; log rc and time.
step() {
  local name=$1 max=$2 reserve=$3
  shift 3
  local left=$(( $(remaining) - reserve ))
  local limit=$(( left < max ? left : max ))
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped (budget spent)"
    printf '{"step": "%s", "rc": null, "seconds": 0, "timeout": 0, "note": "skipped: budget spent"}\n' "$name" >> "$STEPS"
    return 0
  fi
  echo "== $name (at most ${limit}s)"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  [ "$rc" -eq 124 ] && echo "== $name: stopped after ${limit}s"
  printf '{"step": "%s", "rc": %d, "seconds": %d, "timeout": %d}\n' "$name" "$rc" "$dt" "$limit" >> "$STEPS"
  return 0
}

echo "gpu_check: $("$PY" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)")"

# 1. native extension with CUDA kernels
if [ "${CASCADE_RT_GPU_CHECK_NO_BUILD:-0}" != "1" ] &&
   ! "$PY" -c "import sys; from cascade_rt import _C; sys.exit(0 if _C.with_cuda() else 1)" >/dev/null 2>&1; then
  if command -v nvcc >/dev/null 2>&1 || [ -n "${CUDA_HOME:-}" ]; then
    ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
    step build_native 110 320 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-16}" \
      CASCADE_RT_CUDA=1 "$PY" setup.py -q build_ext --inplace
  else
    printf '{"step": "build_native", "rc": null, "seconds": 0, "timeout": 0, "note": "no nvcc: native CUDA ops not built"}\n' >> "$STEPS"
  fi
fi
"$PY" -m cascade_rt.info || true

# 2. GPU-marked tests
step gpu_tests 150 170 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider --maxfail=20 \
  --continue-on-collection-errors --junitxml "$OUT/gpu_tests_gpu.xml" -o addopts="" -rfE 2>&1 | tail -40

# 3. op microbenchmarks
MICRO_ARGS=(--out-dir "$OUT")
[ "$QUICK" = "1" ] && MICRO_ARGS+=(--quick)
step micro_ops 60 100 "$PY" bench/gpu_micro.py "${MICRO_ARGS[@]}"

# 4. end-to-end benchmarks
BENCH_ARGS=(bench --device cuda --out-dir "$OUT")
[ "$QUICK" = "1" ] && BENCH_ARGS+=(--quick)
step e2e_bench 130 85 "$PY" -m cascade_rt.cli "${BENCH_ARGS[@]}"
# the same 2-tier cascade on the sync-free path (upper-bound shapes, no host reads)
SF_ARGS=(--device cuda --sync-free --out-dir "$OUT")
[ "$QUICK" = "1" ] && SF_ARGS+=(--quick)
step e2e_cascade_sync_free 45 40 "$PY" bench/e2e_cascade.py "${SF_ARGS[@]}"

# 5. sync-debug, CUDA-graph replay, goals
CHECK_ARGS=(--out-dir "$OUT" --steps "$STEPS")
[ "$QUICK" = "1" ] && CHECK_ARGS+=(--quick)
step sync_graph_goals 40 0 "$PY" bench/gpu_check.py "${CHECK_ARGS[@]}"

echo "== steps (rc, seconds):"
cat "$STEPS"
echo "gpu_check: done in $(( $(date +%s) - START )) s; results in $OUT"
if grep -q '"rc": [1-9]' "$STEPS"; then
  exit 1
fi
exit 0
