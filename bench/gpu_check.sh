#!/usr/bin/env bash
# The one GPU check of the project, under 8 minutes on an H100/H200:
#   1. builds effreason._C with its CUDA kernels (Hopper only, to save time),
#   2. measures the card's ceilings (bf16 matmul TFLOP/s, device copy bandwidth: bench/ceilings.py),
#   3. runs the GPU tests: fused ops (torch, triton and cuda backends), the native segment op, the
#      sampler (greedy equality with HF generate(), log-probs, preemption, Triton/CUDA attention),
#   4. runs the GPU benchmarks: bench/test_fused_ops.py (bf16, N=16384, H=1536/4096, V=151936) and
#      bench/test_sampler_throughput.py (Qwen2.5-0.5B shape, 64 prompts x 8 samples x 512 tokens),
#   5. prints a short table (bench/gpu_report.py) and leaves JSON/XML results in $RESULTS.
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

echo "== ceilings"
python bench/ceilings.py "$EFFREASON_BENCH_RESULTS"
if [ -f "$EFFREASON_BENCH_RESULTS/ceilings.json" ]; then
  export EFFREASON_HBM_BYTES_PER_S=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['copy_bytes_per_s'])" "$EFFREASON_BENCH_RESULTS/ceilings.json")
fi

echo "== tests"
python -m pytest tests/ops/test_fused_backends.py tests/rl/test_segment_native.py tests/sampler -q -p no:cacheprovider -rs \
  --junitxml="$EFFREASON_BENCH_RESULTS/tests.xml" 2>&1 | tail -15
echo "== benchmarks"
python -m pytest bench/test_fused_ops.py -q -s -p no:cacheprovider -k gpu_throughput 2>&1 | tail -30
python -m pytest bench/test_sampler_throughput.py -q -s -p no:cacheprovider -k gpu 2>&1 | tee "$EFFREASON_BENCH_RESULTS/sampler.txt" | tail -15

echo "== report ($(( $(date +%s) - started )) s)"
python bench/gpu_report.py "$EFFREASON_BENCH_RESULTS"
