#!/usr/bin/env bash
# The GPU job of the decode engine, in one command (run from the repository root on a CUDA machine):
#
#   bash scripts/gpu_bench.sh            # writes under $OUT (default outputs/gpu_bench)
#
# 1. exactness: the engine tests (tests/engine: CPU static-vs-eager, GPU graph- and compiled-vs-eager
#    in float64);
# 2. the profiler: OpenVLA's Llama-2-7B shape (276-token prefix, vision excluded) at batch 1 in bf16
#    (eager, graph and compiled engines; compiled with Inductor's freezing, the fastest mode measured)
#    and in float32 (eager vs graph tokens), and the `small` VLA preset (vision in the prefill);
# 3. `python -m ee_vla.benchmarks.check --compiled` (exactness.json, with the bf16 agreement report),
#    with the time left;
# 4. a summary table of every profile (printed last).
# Batch 4 and Qwen2-0.5B: run the profiler by hand (docs/performance.md gives the lines).
#
# Not in the default steps: the Inductor sweep of the 7B iteration. Each sweep-* step
# times only the compiled engine's width-22 step and prefill under one Inductor setting
# (`ee_vla.benchmarks.profile --inductor KEY=VALUE`), in its own process, into $OUT/sweep/<name>:
#   STEPS="sweep-inductor sweep-freezing sweep-freezing-cd" bash scripts/gpu_bench.sh
#   STEPS="sweep-autotune" bash scripts/gpu_bench.sh          # max-autotune: minutes to compile
# and `kernels-7b`: the frozen engine's width-1 and width-22 steps recorded under torch.profiler,
# their 30 costliest kernels per forward beside the measured latency (<stem>_kernels.txt):
#   STEPS="kernels-7b" bash scripts/gpu_bench.sh
# The split-KV attention (`ee_vla.engine.splitkv`): its tests, the attention alone
# against SDPA over a sweep of the kernel's settings (attn/attn_bench.json), and the frozen 7B engine
# with `--attn-implementation ee_splitkv` and with SDPA, same flags, kernel tables included:
#   STEPS="env pytest-splitkv profile-7b-splitkv" bash scripts/gpu_bench.sh
#   STEPS="profile-7b-sdpa attn-bench" bash scripts/gpu_bench.sh       # (e.g. on a second GPU)
# and `profile-7b-fast`: the same with the decode steps' output layer on the action rows only
# (`--action-logits`); `pytest-gpu`: the GPU engine tests alone (test_gpu.py, test_splitkv.py).
# These ee_splitkv steps run transformers' attention layers (`--attn-layer transformers`), as the
# tables of docs/performance.md's "The 7B step on an H200" were measured.
# The fused attention layers (`ee_vla.engine.attention`, the engines' default): the attention layers
# alone (attn/attn_bench.json), then the calibrated fp8 7B step's width 22 with transformers' layers
# and with the fused ones (both merges), kernel tables included (`fp8-fused`: 31 s on a fresh H200):
#   STEPS="pytest-splitkv attn-fused fp8-transformers fp8-fused fp8-fused-torch-merge" bash scripts/gpu_bench.sh
# The 7B step's bounds in bf16: the linear products alone (stacked as the engines run them) as a share of
# the device's read speed, and the frozen bf16 step with the fused layers, its kernel table included;
# with `fp8-fused`, the two targets of docs/performance.md (about 80 s in all on a fresh H200):
#   STEPS="env linear-stacked bf16-fused fp8-fused" bash scripts/gpu_bench.sh
# `linear-splitk`: the split-K Triton product (`ee_vla.benchmarks.splitk`) against cuBLAS, both bf16
# (docs/performance.md, "A Triton product for a few rows against cuBLAS"; about 3 minutes):
#   STEPS="env linear-splitk bf16-fused" bash scripts/gpu_bench.sh
# `layer-fused`: the 7B's 32 decoder layers as the frozen engine runs them against split-K products whose
# epilogues do the norms, SiLU x up and residual adds (`ee_vla.benchmarks.layer_bench`), without and with
# programmatic dependent launch and L2 prefetches, and with the launch plans swept, at 22 rows, kernel
# tables; with the whole step beside it to compare:
#   STEPS="env pytest-splitk layer-fused" bash scripts/gpu_bench.sh; STEPS="env bf16-fused" bash scripts/gpu_bench.sh
#
# `bench-default`: where a call of the shipped policy goes (inputs, prefill, iteration, other), AR
# against ceed_2pass, graph and compiled engines, batch 10 and 1 (docs/performance.md, "The shipped
# policy on a GPU"; about 3 minutes):
#   STEPS="bench-default" bash scripts/gpu_bench.sh
#
# Needs python3 with torch (CUDA), transformers 5.17+, numpy, matplotlib, tokenizers, pytest
# (+ hypothesis, pytest-timeout); ee_vla is used from the working tree (PYTHONPATH), no install.
# Each step has its own time limit and a failed step does not stop the others; the exit status is
# the number of failed steps. The outputs are kept to a few files in $OUT (logs, JSON, kernel tables).
# All steps take ~11 minutes on an H200; to run them as two shorter jobs:
#   STEPS="env pytest-engine profile-7b" bash scripts/gpu_bench.sh
#   STEPS="profile-7b-fp32 profile-small check" bash scripts/gpu_bench.sh
set -uo pipefail

OUT="${OUT:-outputs/gpu_bench}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG="$OUT/gpu_bench.log"
: >"$LOG"
FAILED=0
declare -a STATUS=()

STEPS="${STEPS:-env pytest-engine profile-7b profile-7b-fp32 profile-small check}"

step() {  # step NAME SECONDS CMD...: run with a time limit, log everything, remember the outcome
  local name=$1 limit=$2
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  STATUS+=("$(printf '%-22s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
}

step env 20 python3 -c "
import torch, transformers, triton, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'triton', triton.__version__)
print('device', torch.cuda.get_device_name(0), '%.1f GiB' % (torch.cuda.get_device_properties(0).total_memory / 2**30))
"
step pytest-engine 360 python3 -m pytest tests/engine -q -p no:cacheprovider

PROFILE=(python3 -m ee_vla.benchmarks.profile --device cuda --dtype bfloat16 --out "$OUT")
# eager, graph and compiled (Inductor with freezing + CUDA graphs); each compiled shape costs a
# compilation (~3 minutes for the three widths and the prompt bucket)
step profile-7b 360 "${PROFILE[@]}" --shape openvla-7b --calls 30 --decoders ar ceed --step-widths 1 22 \
  --compile-mode frozen
# the random 7B's bf16 tokens differ between engines: compare them in float32 (same engine code)
step profile-7b-fp32 90 python3 -m ee_vla.benchmarks.profile --device cuda --dtype float32 --out "$OUT/fp32" \
  --shape openvla-7b --engines eager graph --decoders ar ceed --calls 3 --step-iters 10 --step-widths 22 \
  --no-generate --no-plots
step profile-small 90 "${PROFILE[@]}" --shape small --calls 30 --no-plots
step check 240 python3 -m ee_vla.benchmarks.check --device cuda --compiled --out "$OUT"

W22=(--shape openvla-7b --engines compiled --decoders --step-widths 22 --step-iters 100 --warmup 3 --no-generate
  --no-plots)
step sweep-inductor 120 "${PROFILE[@]}" "${W22[@]}" --out "$OUT/sweep/inductor"
step sweep-freezing 150 "${PROFILE[@]}" "${W22[@]}" --out "$OUT/sweep/freezing" --inductor freezing=True
step sweep-freezing-cd 240 "${PROFILE[@]}" "${W22[@]}" --out "$OUT/sweep/freezing-cd" \
  --inductor freezing=True coordinate_descent_tuning=True
step sweep-autotune 400 "${PROFILE[@]}" "${W22[@]}" --out "$OUT/sweep/autotune" --compile-mode max-autotune \
  --inductor freezing=True
step kernels-7b 300 "${PROFILE[@]}" --shape openvla-7b --engines compiled --compile-mode frozen --decoders \
  --step-widths 1 22 --step-iters 100 --warmup 3 --no-generate --no-plots --kernels 30 --out "$OUT/kernels"

step pytest-splitkv 360 python3 -m pytest tests/engine/test_splitkv.py -q -p no:cacheprovider
step attn-bench 240 python3 -m ee_vla.benchmarks.attn_bench --device cuda --queries 1 22 --block-n 16 32 64 \
  --splits 0 2 8 --warps 2 4 --out "$OUT/attn"
F7B=(--shape openvla-7b --engines compiled --compile-mode frozen --decoders ar ceed --calls 30 --step-widths 1 22
  --step-iters 100 --warmup 3 --no-generate --no-plots --kernels 12)
step profile-7b-splitkv 420 "${PROFILE[@]}" "${F7B[@]}" --attn-implementation ee_splitkv --attn-layer transformers \
  --out "$OUT/splitkv"
step profile-7b-sdpa 420 "${PROFILE[@]}" "${F7B[@]}" --out "$OUT/sdpa"
# the split-KV attention and the output layer's action rows only (docs/performance.md's 7B step)
step profile-7b-fast 420 "${PROFILE[@]}" "${F7B[@]}" --attn-implementation ee_splitkv --attn-layer transformers \
  --action-logits --out "$OUT/fast"
step bench-default 400 bash -c 'for e in graph compiled; do for b in 10 1; do
  python3 -m ee_vla.cli bench --model ee_vla/checkpoints/default --decoders ar ceed_2pass --device cuda \
    --dtype bfloat16 --calls 200 --warmup 5 --engine $e --batch-size $b --no-plots --out "$0/bench_default/${e}_b$b" \
    || exit 1; done; done' "$OUT"
step pytest-gpu 360 python3 -m pytest tests/engine/test_gpu.py tests/engine/test_splitkv.py -q -p no:cacheprovider
step attn-fused 120 python3 -m ee_vla.benchmarks.attn_bench --device cuda --fused --queries 1 22 --warps 4 8 \
  --out "$OUT/attn"
FP8=(--shape openvla-7b --engines compiled --compile-mode inductor --steps-only --step-widths 22 --step-iters 100
  --action-logits --attn-implementation ee_splitkv --quantize fp8_tensor --calibrate --kernels 30 --no-plots)
step fp8-transformers 420 "${PROFILE[@]}" "${FP8[@]}" --attn-layer transformers --out "$OUT/fp8/transformers"
step fp8-fused 420 "${PROFILE[@]}" "${FP8[@]}" --attn-layer fused --out "$OUT/fp8/fused"
step fp8-fused-torch-merge 420 "${PROFILE[@]}" "${FP8[@]}" --attn-layer fused_torch_merge --out "$OUT/fp8/torch_merge"
# the bf16 step's two bounds: the products alone against the device's read speed, and the frozen step
# with the fused layers (the engines' default) and its kernel table
step linear-stacked 120 python3 -m ee_vla.benchmarks.linear_bench --shape openvla-7b --rows 1 22 --stacked \
  --out "$OUT/linear/stacked"
# the split-K Triton product against cuBLAS: both kinds, then every plan of its sweep at 22 rows
step linear-splitk 420 bash -c 'python3 -m ee_vla.benchmarks.linear_bench --shape openvla-7b --rows 1 22 --stacked \
  --kinds bf16 splitk --out "$0/linear/splitk" && python3 -m ee_vla.benchmarks.linear_bench --shape openvla-7b \
  --rows 22 --stacked --kinds bf16 --splitk-sweep --out "$0/linear/splitk_sweep"' "$OUT"
step pytest-splitk 120 python3 -m pytest tests/engine/test_splitk.py tests/engine/test_layer_bench.py -q -p no:cacheprovider
step layer-fused 540 python3 -m ee_vla.benchmarks.layer_bench --shape openvla-7b --rows 22 --prefetch 0 256 1024 \
  --sweep --kernels 12 --out "$OUT/layer"
step bf16-fused 300 "${PROFILE[@]}" --shape openvla-7b --engines compiled --compile-mode frozen --steps-only \
  --step-widths 22 --step-iters 100 --action-logits --attn-implementation ee_splitkv --attn-layer fused --kernels 30 \
  --no-plots --out "$OUT/bf16/fused"

echo "=== summary" | tee -a "$LOG"
shopt -s nullglob
python3 -m ee_vla.benchmarks.profile summarize "$OUT"/profile_*.json "$OUT"/fp32/profile_*.json "$OUT"/sweep/*/profile_*.json \
  "$OUT"/kernels/profile_*.json "$OUT"/splitkv/profile_*.json "$OUT"/sdpa/profile_*.json "$OUT"/fast/profile_*.json \
  "$OUT"/fp8/*/profile_*.json "$OUT"/bf16/*/profile_*.json 2>&1 | tee -a "$LOG"
printf '%s\n' "${STATUS[@]}" | tee -a "$LOG"
echo "failed steps: $FAILED; files in $OUT: $(find "$OUT" -type f | tr "\n" " ")" | tee -a "$LOG"
exit "$FAILED"
