#!/usr/bin/env bash
# The one GPU check of the project, under 8 minutes on an H100/H200:
#   1. installs the package (editable, so effreason.kernels resolves) and builds effreason._C with its
#      CUDA kernels (sm_90 and its PTX only, to save time),
#   2. measures the card's ceilings (bf16 matmul TFLOP/s, device copy bandwidth: bench/ceilings.py),
#   3. runs the GPU tests: fused ops (torch, triton and cuda backends), the native segment op, the
#      sampler (greedy equality with HF generate(), log-probs, preemption, Triton attention with and
#      without split-K, the Triton layer and sampling kernels, CUDA graphs),
#   4. runs the GPU benchmarks: bench/test_fused_ops.py (bf16, N=16384, H=1536/4096, V=151936),
#      bench/test_decode_kernels.py (the sampler's Triton kernels vs their torch references, split-K at
#      4 x 16k context) and bench/test_sampler_throughput.py (Qwen2.5-0.5B shape, 64 prompts x 8 samples
#      x 512 tokens),
#   5. breaks a sampler decode step down (bench/profile_sampler.py: each attention backend, the
#      parts alone, host and device profiles),
#   6. runs the training tests on CUDA (tests/train/test_precision_and_memory.py: bf16 compute with float32
#      master weights, checkpointing, the packed forward, a 32k-token micro-batch),
#   7. benchmarks one whole RL step (bench/test_rl_step.py: Qwen2.5-1.5B shape, 32 prompts x 8 samples,
#      responses forced to 512-2,048 tokens here, EFFREASON_STEP_LENGTHS to change; the issue's 1k-8k is the
#      file's default) and the Qwen2.5-7B-shape memory of one 16k-token micro-batch,
#   8. runs python -m effreason.train end to end on a random Qwen2.5-1.5B-shape folder in bf16: one step,
#      its checkpoint, then --resume to step 2,
#   9. prints a short table (bench/gpu_report.py).
# Every stage has its own time limit, so one hang cannot eat the others. Results (build.log,
# ceilings.json, tests.xml, tests.log, tests_train.xml, tests_train.log, bench.log, fused_ops_gpu_*.json,
# decode_kernels_gpu.json, profile_sampler.txt, rl_step_gpu.json, memory_7b_gpu.json, train.log,
# train_summary.json, train_metrics.jsonl: 18 files) go to $EFFREASON_BENCH_RESULTS, else $OUT/gpu when
# $OUT is set, else /tmp/effreason_bench.
#
# Usage:  bash bench/gpu_check.sh          (PYTHON=... to pick the interpreter; python3 by default)
# CPU dry run (no GPU; tiny shapes, Triton interpreter, no build):
#         TRITON_INTERPRET=1 EFFREASON_BENCH_QUICK=1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RESULTS="${EFFREASON_BENCH_RESULTS:-${OUT:+$OUT/gpu}}"
export EFFREASON_BENCH_RESULTS="${RESULTS:-/tmp/effreason_bench}" PYTHONUNBUFFERED=1
mkdir -p "$EFFREASON_BENCH_RESULTS"
started=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - started )) s)"; }

if ! "$PY" -c "import effreason.kernels" 2>/dev/null; then
  stage "installing effreason (editable, no dependencies)"
  EFFREASON_SKIP_NATIVE=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
fi
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  "$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  stage "building effreason._C (CUDA, sm_${EFFREASON_CUDA_ARCHS:-90})"
  if EFFREASON_CUDA_ARCHS="${EFFREASON_CUDA_ARCHS:-90}" MAX_JOBS="${MAX_JOBS:-16}" timeout 240 \
      "$PY" setup.py build_ext --inplace >"$EFFREASON_BENCH_RESULTS/build.log" 2>&1; then
    echo "build ok"
  else
    echo "build FAILED (cuda backend will be skipped); last lines of build.log:"
    tail -20 "$EFFREASON_BENCH_RESULTS/build.log"
  fi
else
  echo "== no CUDA device: dry run (TRITON_INTERPRET=${TRITON_INTERPRET:-0}), no build"
fi
"$PY" -c "import effreason; print('backends:', effreason.backends())"

stage "ceilings"
timeout 60 "$PY" bench/ceilings.py "$EFFREASON_BENCH_RESULTS"
if [ -f "$EFFREASON_BENCH_RESULTS/ceilings.json" ]; then
  export EFFREASON_HBM_BYTES_PER_S=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['copy_bytes_per_s'])" "$EFFREASON_BENCH_RESULTS/ceilings.json")
fi

stage "tests"
timeout 300 "$PY" -m pytest tests/ops/test_fused_backends.py tests/rl/test_segment_native.py tests/sampler -q \
  -p no:cacheprovider -rfEs --tb=short --junitxml="$EFFREASON_BENCH_RESULTS/tests.xml" \
  >"$EFFREASON_BENCH_RESULTS/tests.log" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$EFFREASON_BENCH_RESULTS/tests.log" | tail -25

stage "benchmarks"
: >"$EFFREASON_BENCH_RESULTS/bench.log"
timeout 120 "$PY" -m pytest bench/test_fused_ops.py -q -s -p no:cacheprovider -k gpu_throughput 2>&1 \
  | tee -a "$EFFREASON_BENCH_RESULTS/bench.log" | tail -12
timeout 90 "$PY" -m pytest bench/test_decode_kernels.py -q -s -p no:cacheprovider 2>&1 \
  | tee -a "$EFFREASON_BENCH_RESULTS/bench.log" | tail -14
timeout 180 "$PY" -m pytest bench/test_sampler_throughput.py -q -s -p no:cacheprovider -k gpu 2>&1 \
  | tee -a "$EFFREASON_BENCH_RESULTS/bench.log" | tail -15

stage "sampler decode-step breakdown (bench/profile_sampler.py)"
if [ "${EFFREASON_BENCH_QUICK:-0}" = "1" ]; then profile_size="--prompts 2 --samples 2 --tokens 4"; else profile_size=""; fi
timeout 120 "$PY" bench/profile_sampler.py $profile_size --top 15 --out "$EFFREASON_BENCH_RESULTS" 2>&1 \
  | grep -E "tokens/s|ms$" | head -12

stage "training tests on CUDA (tests/train/test_precision_and_memory.py, test_rollout.py)"
timeout 150 "$PY" -m pytest tests/train/test_precision_and_memory.py tests/train/test_rollout.py -q -p no:cacheprovider \
  -rfEs --tb=short --junitxml="$EFFREASON_BENCH_RESULTS/tests_train.xml" >"$EFFREASON_BENCH_RESULTS/tests_train.log" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$EFFREASON_BENCH_RESULTS/tests_train.log" | tail -10

stage "one whole RL step (bench/test_rl_step.py) and the 7B micro-batch memory"
if [ "${EFFREASON_BENCH_QUICK:-0}" = "1" ]; then step_lengths="${EFFREASON_STEP_LENGTHS:-}"; else step_lengths="${EFFREASON_STEP_LENGTHS:-512-2048}"; fi
EFFREASON_STEP_LENGTHS="$step_lengths" timeout 300 "$PY" -m pytest bench/test_rl_step.py -q -s -p no:cacheprovider -k gpu 2>&1 \
  | tee -a "$EFFREASON_BENCH_RESULTS/bench.log" | grep -vE "^(Loading|Writing)" | tail -20

stage "python -m effreason.train end to end (random model, bf16, step 1, checkpoint, --resume to step 2)"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then train_shape=qwen2.5-1.5b; else train_shape=tiny; fi
train_dir=$(mktemp -d)
train_flags=(--dtype bfloat16 --prompts-per-step 8 --group-size 4 --max-new-tokens 256 --eval-problems 0 --quiet)
{
  timeout 120 "$PY" bench/random_models.py "$train_shape" "$train_dir/model" \
    && timeout 240 "$PY" -m effreason.train --model "$train_dir/model" --steps 1 "${train_flags[@]}" --out "$train_dir/run" \
    && timeout 240 "$PY" -m effreason.train --resume "$train_dir/run" --steps 2 --quiet \
    && cp "$train_dir/run/summary.json" "$EFFREASON_BENCH_RESULTS/train_summary.json" \
    && cp "$train_dir/run/metrics.jsonl" "$EFFREASON_BENCH_RESULTS/train_metrics.jsonl" \
    && echo "train ok ($train_shape)" || echo "train FAILED ($train_shape)"
} >"$EFFREASON_BENCH_RESULTS/train.log" 2>&1
grep -E "^(step|error|train (ok|FAILED))|Error" "$EFFREASON_BENCH_RESULTS/train.log" | tail -8
rm -rf "$train_dir"

stage "report"
"$PY" bench/gpu_report.py "$EFFREASON_BENCH_RESULTS"
