#!/usr/bin/env bash
# Inductor options on the 7B Jacobi iteration (issue #6's <= 5 ms target), in one GPU command:
#
#   bash scripts/gpu_inductor_sweep.sh        # writes under $OUT (default outputs/inductor_sweep)
#
# 1. the `small` VLA, every engine and decoder (its prefill, vision tower included, is one graph);
# 2. OpenVLA's Llama-2-7B shape, bf16, batch 1, compiled engine only, the raw width-22 step and the
#    prefill, under one Inductor setting per run (`ee_vla.engine.profile --inductor KEY=VALUE`):
#    the default; `freezing` (weights as constants: Inductor concatenates the q/k/v and the
#    gate/up projections that read the same input into one matmul each); freezing with coordinate
#    descent tuning of the generated kernels; max-autotune (Triton matmul templates benchmarked
#    against cuBLAS) with freezing, last, with the time left.
# Each run has its own time limit and a failed one does not stop the others; a summary is printed.
# Cold (no Inductor cache) the five runs take ~11 minutes on an H200; under a 10-minute limit per
# command run them in two parts (session 7, docs/performance.md):
#   RUNS="small 7b-inductor 7b-freezing" bash scripts/gpu_inductor_sweep.sh
#   RUNS="7b-freezing-cd 7b-autotune" bash scripts/gpu_inductor_sweep.sh
set -uo pipefail

OUT="${OUT:-outputs/inductor_sweep}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG="$OUT/sweep.log"
: >"$LOG"
BUDGET="${BUDGET:-585}"
RUNS="${RUNS:-small 7b-inductor 7b-freezing 7b-freezing-cd 7b-autotune}"
declare -a STATUS=()

run() {  # run NAME SECONDS ARGS...: one profiler run into $OUT/NAME
  local name=$1 limit=$2
  shift 2
  case " $RUNS " in *" $name "*) ;; *) return ;; esac
  local left=$((BUDGET - SECONDS))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 30 ]; then
    STATUS+=("$(printf '%-16s skipped (no time left)' "$name")")
    return
  fi
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$limit" python3 -m ee_vla.engine.profile --device cuda --dtype bfloat16 \
    --no-plots --out "$OUT/$name" "$@" 2>&1 | tee -a "$LOG"
  STATUS+=("$(printf '%-16s rc=%-3s %4ss' "$name" "${PIPESTATUS[0]}" "$((SECONDS - t0))")")
}

run small 100 --shape small --calls 30
W22=(--shape openvla-7b --engines compiled --decoders --step-widths 22 --step-iters 100 --warmup 3 --no-generate)
run 7b-inductor 90 "${W22[@]}"
run 7b-freezing 110 "${W22[@]}" --inductor freezing=True
run 7b-freezing-cd 240 "${W22[@]}" --inductor freezing=True coordinate_descent_tuning=True
run 7b-autotune 340 "${W22[@]}" --compile-mode max-autotune --inductor freezing=True

echo "=== summary" | tee -a "$LOG"
python3 -m ee_vla.engine.profile summarize "$OUT"/*/profile_*.json 2>&1 | tee -a "$LOG"
printf '%s\n' "${STATUS[@]}" | tee -a "$LOG"
