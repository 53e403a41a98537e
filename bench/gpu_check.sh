#!/usr/bin/env bash
# The one GPU check of the fused LM-head ops (issue 5), under 8 minutes on an H100/H200:
#   1. builds effreason._C with its CUDA kernels (Hopper only, to save time),
#   2. runs tests/ops/test_fused_backends.py on the GPU (torch, triton and cuda backends),
#   3. runs the GPU benchmarks of bench/test_fused_ops.py (bf16, N=16384, H=1536/4096, V=151936),
#   4. prints a short table (bench/gpu_report.py) and leaves JSON/XML results in $RESULTS.
#
# Usage:  bash bench/gpu_check.sh
# CPU dry run (no GPU; tiny shapes, Triton interpreter, no build):
#         TRITON_INTERPRET=1 EFFREASON_BENCH_QUICK=1 bash bench/gpu_check.sh
# Results go to $EFFREASON_BENCH_RESULTS, else $OUT/fused_ops when $OUT is set, else /tmp/effreason_bench.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${EFFREASON_BENCH_RESULTS:-${OUT:+$OUT/fused_ops}}"
export EFFREASON_BENCH_RESULTS="${RESULTS:-/tmp/effreason_bench}"
mkdir -p "$EFFREASON_BENCH_RESULTS"
started=$(date +%s)

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== building effreason._C (CUDA, sm_90a)"
  if EFFREASON_CUDA_ARCHS="${EFFREASON_CUDA_ARCHS:-90a}" MAX_JOBS="${MAX_JOBS:-16}" \
      flock /tmp/effreason-build.lock python setup.py build_ext --inplace >"$EFFREASON_BENCH_RESULTS/build.log" 2>&1; then
    echo "build ok"
  else
    echo "build FAILED (cuda backend will be skipped); last lines of build.log:"
    tail -20 "$EFFREASON_BENCH_RESULTS/build.log"
  fi
else
  echo "== no CUDA device: dry run (TRITON_INTERPRET=${TRITON_INTERPRET:-0}), no build"
fi
python -c "import effreason; print('backends:', effreason.backends())"

echo "== tests"
python -m pytest tests/ops/test_fused_backends.py -q -p no:cacheprovider -rs \
  --junitxml="$EFFREASON_BENCH_RESULTS/tests.xml" 2>&1 | tail -15
echo "== benchmarks"
python -m pytest bench/test_fused_ops.py -q -s -p no:cacheprovider -k gpu_throughput 2>&1 | tail -30

echo "== report ($(( $(date +%s) - started )) s)"
python bench/gpu_report.py "$EFFREASON_BENCH_RESULTS"
