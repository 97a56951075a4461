#!/usr/bin/env bash
# Compare behaviour-cloning recipes on the ee_vla suite in one GPU command, all variants trained in
# parallel on one GPU for the same wall-clock budget (small models leave a GPU mostly idle: one
# process per variant fills it), then evaluated closed loop on the same seeds.
#
#   BUDGET_S=330 bash scripts/bc_sweep.sh            # the variants below, outputs under $RUNS
#
# 1. demonstrations of every suite task (skipped when $DATA/demos.hdf5 exists);
# 2. a 40-step probe of each variant measures its steps/s with all of them running; each variant
#    then trains for round(steps/s x BUDGET_S) steps (so every variant gets the same GPU time and a
#    complete cosine schedule);
# 3. `ee-vla eval --decoder jacobi` (greedy Jacobi = the AR output, faster) of each final model,
#    EPISODES per task, seeds from 1000, and a summary line per variant (held-out greedy token
#    accuracy from metrics.jsonl, success rate).
# A variant is NAME:ARGS (ARGS = extra `ee-vla train` flags, commas for spaces).
set -uo pipefail
cd "$(dirname "$0")/.." || exit

export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}" PYTHONUNBUFFERED=1
E="${E:-ee-vla}"
DATA="${DATA:-data/suite}"
RUNS="${RUNS:-outputs/sweep}"
BUDGET_S="${BUDGET_S:-330}"
EPISODES="${EPISODES:-20}"
DEMOS="${DEMOS:-1500}"
BATCH="${BATCH:-512}"
LR="${LR:-6e-4}"
TASKS="ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0"
VARIANTS="${VARIANTS:-proprio_ground:--use-proprio,--grounding-fraction,0.25 vision_ground:--grounding-fraction,0.25 proprio_ground_p8:--use-proprio,--grounding-fraction,0.25,--patch-size,8 proprio:--use-proprio}"
COMMON=(--preset small --chunk-size 3 --batch-size "$BATCH" --lr "$LR" --weight-decay 0.01 --aug-shift 0.03
  --val-fraction 0.05 --dtype bfloat16 --save-dtype bfloat16 --seed 0 --num-workers 0 --eval-samples 256)

mkdir -p "$RUNS"
if [ ! -f "$DATA/demos.hdf5" ]; then
  # shellcheck disable=SC2086
  $E collect --env $TASKS --episodes "$DEMOS" --out "$DATA" --seed 0 --image-size 128 --num-workers "$(nproc)" \
    2>&1 | tail -3
fi

names=()
for v in $VARIANTS; do names+=("${v%%:*}"); done
args_of() { for v in $VARIANTS; do [ "${v%%:*}" = "$1" ] && echo "${v#*:}" | tr ',' ' '; done; }

echo "=== probe (40 steps each, all in parallel)"
for n in "${names[@]}"; do
  rm -rf "$RUNS/probe_$n"
  # shellcheck disable=SC2046
  $E train --data "$DATA" --out-dir "$RUNS/probe_$n" "${COMMON[@]}" $(args_of "$n") --steps 40 --warmup-steps 10 \
    --log-every 20 --eval-every 0 --save-every 1000 >"$RUNS/probe_$n.log" 2>&1 &
done
wait
declare -A STEPS
for n in "${names[@]}"; do
  rate=$(python3 -c "import json;print(json.loads(open('$RUNS/probe_$n/metrics.jsonl').readlines()[-1])['steps_per_s'])" 2>/dev/null || echo 0)
  STEPS[$n]=$(python3 -c "print(max(100, round($rate * $BUDGET_S)))")
  echo "$n: $rate steps/s -> ${STEPS[$n]} steps"
  rm -rf "$RUNS/probe_$n"
done

echo "=== train (${BUDGET_S}s each, in parallel)"
for n in "${names[@]}"; do
  s=${STEPS[$n]}
  # shellcheck disable=SC2046,SC2086
  timeout $((BUDGET_S * 2 + 150)) $E train --data "$DATA" --out-dir "$RUNS/$n" "${COMMON[@]}" $(args_of "$n") --steps "$s" \
    --warmup-steps $((s / 20)) --log-every 50 --eval-every $((s / 8 > 0 ? s / 8 : 1)) --save-every "$s" \
    >"$RUNS/$n.train.log" 2>&1 &
done
wait

echo "=== evaluate ($EPISODES episodes per task, greedy Jacobi = AR output)"
for n in "${names[@]}"; do
  # shellcheck disable=SC2086
  [ -d "$RUNS/$n/model" ] && $E eval --policy "$RUNS/$n/model" --env "${TASKS// /,}" --decoder jacobi --episodes "$EPISODES" \
    --num-envs "$EPISODES" --seed 1000 --device cuda --output-dir "$RUNS/$n/eval" >"$RUNS/$n.eval.log" 2>&1 &
done
wait

echo "=== summary"
for n in "${names[@]}"; do
  python3 - "$RUNS/$n" "$n" <<'EOF'
import json, sys
from pathlib import Path
run, name = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
ev = [r for r in rows if "eval/token_acc" in r]
last = ev[-1] if ev else {}
info = run / "eval" / "eval_info.json"
succ = json.loads(info.read_text())["aggregated"]["pc_success"] if info.exists() else float("nan")
per = {}
if info.exists():
    for t, d in json.loads(info.read_text())["per_env"].items():
        per[t.split("/")[-1]] = d["aggregated"]["pc_success"]
print(f"{name:22s} steps {rows[-1]['step'] if rows else 0:6d}  loss {rows[-1]['loss'] if rows else float('nan'):.3f}  "
      f"val greedy acc {last.get('eval/token_acc', float('nan')):.3f}  val l1 {last.get('eval/action_l1', float('nan')):.3f}  "
      f"first token {last.get('eval/first_token_acc', float('nan')):.3f}  first action l1 {last.get('eval/first_action_l1', float('nan')):.3f}  "
      f"success {succ:.1f}%  {per}")
EOF
done
