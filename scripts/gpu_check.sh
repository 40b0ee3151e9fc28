#!/usr/bin/env bash
# The whole GPU check of the speed work in one call, from the repository root of a CUDA machine:
#   1. tests/test_fast_path.py on CUDA (fast paths compute the same function; bf16 tolerance;
#      fused Adam; CUDA-graph replay; no host sync in the sampling loop; the slow checks too) and
#      the CUDA-only training test of fp16 autocast with a loss scaler (tests/test_train_knobs.py)
#   2. benchmarks/bench.py --device cuda: ddpm vs diffusers (defaults and with our tricks),
#      bf16 and fp32, training and sampling, CUDA-graph sampling  -> cuda.json
#   2a. the CLI on the GPU: `ddpm train` (train.precision auto -> bf16 on Ampere+) and `ddpm sample`
#      with the default fast path + CUDA graph vs plain fp32: same images within bf16 rounding
#   3. benchmarks/gpu_targets.py: 8,000 img/s training at batch 128 (eager and compiled),
#      the 50k x 1000-step sampling projection, and the >= 1.5x diffusers verdicts -> gpu_targets.json
#   4. quality at a large n: the shipped digits model's Algorithm 2 and DDIM (eta 0) at 10 and 50 steps,
#      n = QUALITY_N (2,500, the largest n with a floor) -> digits_quality.{json,md}; the CPU table
#      (n = 500) cannot resolve DDIM-50 against Algorithm 2 (docs/quality.md)
#
# Usage:  bash scripts/gpu_check.sh              (all stages; not yet timed on a GPU)
#         STAGES="tests cli" bash scripts/gpu_check.sh   (a subset, e.g. to fit a 10-minute limit)
# Env:    PYTHON (default python3: the interpreter that has CUDA torch), RESULTS (default $OUT if
#         set, else benchmarks/results). diffusers: installed, or a wheel in .whl/ (scripts/gpu_wheels.sh).
# Exit status: non-zero if any stage failed; the summary at the end lists each stage.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RESULTS="${RESULTS:-${OUT:-benchmarks/results}}"
STAGES="${STAGES:-tests cli bench targets quality}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu with small BENCH_ARGS/TARGET_ARGS: a dry run of this script
BENCH_ARGS="${BENCH_ARGS:-}"
TARGET_ARGS="${TARGET_ARGS:-}"
QUALITY_N="${QUALITY_N:-2500}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$PY" -c 'import diffusers' 2>/dev/null && ls .whl/diffusers-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ddpm-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/ddpm-site"
fi

echo "== environment"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi not found"
"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
try:
    import diffusers
    print("diffusers", diffusers.__version__)
except ImportError:
    print("diffusers not importable: the benchmark runs ddpm alone (scripts/gpu_wheels.sh fixes this)")
PY
if [ "$DEVICE" = cuda ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { echo "no CUDA device: stop"; exit 2; }
fi

declare -A rc
for stage in $STAGES; do
  echo; echo "== stage: $stage"; start=$(date +%s)
  case "$stage" in
    tests)
      DDPM_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -m "slow or not slow" -rs \
        tests/test_fast_path.py tests/test_train_knobs.py::test_fp16_with_a_loss_scaler_on_cuda 2>&1 \
        | tee "$RESULTS/gpu_tests.log"
      rc[$stage]=${PIPESTATUS[0]} ;;
    cli)
      d=$(mktemp -d); graph=""; [ "$DEVICE" = cuda ] && graph="--cuda-graph"
      {
        "$PY" -m ddpm train --preset digits-tiny --run-dir "$d/run" --steps 20 --batch-size 32 \
          --device "$DEVICE" --no-progress \
        && "$PY" -m ddpm sample --ckpt "$d/run" -n 16 --batch-size 16 --steps 50 --device "$DEVICE" \
          $graph --npz "$d/fast.npz" --no-progress \
        && "$PY" -m ddpm sample --ckpt "$d/run" -n 16 --batch-size 16 --steps 50 --device "$DEVICE" \
          --precision fp32 --no-channels-last --npz "$d/plain.npz" --no-progress \
        && "$PY" - "$d" "$DEVICE" <<'PY'
import json, sys
import numpy as np
from ddpm.accel import default_precision
d, device = sys.argv[1], sys.argv[2]
precision = json.load(open(f"{d}/run/config.json"))["train"]["precision"]
fast, plain = (np.load(f"{d}/{n}.npz")["arr_0"].astype(int) for n in ("fast", "plain"))
diff = np.abs(fast - plain)
print(f"train.precision auto -> {precision} (expected {default_precision(device)}); sample fast vs plain "
      f"fp32: mean |diff| {diff.mean():.2f}, max {diff.max()} of 255 levels")
sys.exit(0 if precision == default_precision(device) and diff.mean() <= 16 else 1)
PY
      } 2>&1 | tee "$RESULTS/gpu_cli.log"
      rc[$stage]=${PIPESTATUS[0]}; rm -rf "$d" ;;
    bench)
      extra=""; "$PY" -c 'import diffusers' 2>/dev/null || extra="--no-diffusers"
      "$PY" benchmarks/bench.py --device "$DEVICE" --cuda-graph $extra $BENCH_ARGS --out "$RESULTS/cuda.json" 2>&1 \
        | tee "$RESULTS/cuda_bench.log"
      rc[$stage]=${PIPESTATUS[0]} ;;
    targets)
      "$PY" benchmarks/gpu_targets.py --device "$DEVICE" $TARGET_ARGS --bench-json "$RESULTS/cuda.json" --out "$RESULTS/gpu_targets.json" 2>&1 \
        | tee "$RESULTS/gpu_targets.log"
      rc[$stage]=${PIPESTATUS[0]} ;;
    quality)
      q() { "$PY" -m ddpm eval sweep --ckpt src/ddpm/assets/digits -n "$QUALITY_N" --device "$DEVICE" \
              --batch-size 500 --json "$RESULTS/digits_quality.json" --no-progress "$@"; }
      { q --samplers ddim:eta=0 --steps 10,50 && q --samplers ddpm --steps 1000 --markdown "$RESULTS/digits_quality.md"; } \
        2>&1 | tee "$RESULTS/digits_quality.log"
      rc[$stage]=${PIPESTATUS[0]} ;;
    *) echo "unknown stage $stage (tests, cli, bench, targets, quality)"; rc[$stage]=2 ;;
  esac
  echo "-- $stage: exit ${rc[$stage]} in $(( $(date +%s) - start )) s"
done

echo; echo "== summary (results in $RESULTS)"
status=0
for stage in $STAGES; do
  echo "  $stage: $([ "${rc[$stage]}" = 0 ] && echo ok || echo "FAILED (exit ${rc[$stage]})")"
  [ "${rc[$stage]}" = 0 ] || status=1
done
exit $status
