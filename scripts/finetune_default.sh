#!/usr/bin/env bash
# Continue training a suite policy (by default the shipped one) inside one time-boxed GPU command:
# behaviour cloning co-trained with grounding questions on fresh scenes, then a closed-loop check.
# docs/training.md ("Session-8") has the runs made with it.
#
#   BUDGET_S=560 NPROC=2 bash scripts/finetune_default.sh          # all stages, DDP over 2 GPUs
#   STAGES="train eval" INIT=outputs/ft1/model bash scripts/finetune_default.sh
#   STAGES="collect dagger train export" DAGGER_EPISODES=500 ... bash scripts/finetune_default.sh
#   STAGES="train" EXTRA_DATA="data/suite-dagger0 data/suite-dagger1" ... bash scripts/finetune_default.sh
# Session 11's DAgger rounds (docs/training.md "Session-11"): INIT = the previous round's model,
#   DAGGER_EPISODES=250 DAGGER_ARGS="--max-episode-steps 60" NPROC=2 STAGES="collect dagger" ..., a second
#   on-policy set with DATA=data/s2 STAGES=dagger, then STAGES="train eval export" EXTRA_DATA="<all four sets>"
#
# 1. collect: DEMOS scripted-expert demonstrations per suite task (skipped when $DATA exists);
#    dagger:  (only when named in STAGES) `ee-vla dagger`: $INIT acts (CEED) in DAGGER_EPISODES
#             episodes per task from seed DAGGER_SEED, the expert labels the states it visits; the
#             tasks are split over the NPROC GPUs, DAGGER_MIN minutes at most; the training below
#             then learns from the expert demonstrations and these labels together;
# 2. train:   `ee-vla train --init-from $INIT` (grounding fraction FRACTION on fresh scenes, asking
#             QUESTIONS=all of them about every object of a scene), STEPS long, cut by --max-minutes
#             so that the evaluation still fits in BUDGET_S (the whole script's wall clock);
# 3. eval:    greedy Jacobi (= the AR output) of the result, EPISODES per task from seed 100000;
# 4. export:  the model (bf16, ~14 MB), metrics.jsonl, loss.png and eval_info.json into $EXPORT.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}" PYTHONUNBUFFERED=1

STAGES="${STAGES:-collect train eval export}"
BUDGET_S="${BUDGET_S:-560}"
EVAL_S="${EVAL_S:-110}"                           # kept back for eval + export
INIT="${INIT:-ee_vla/checkpoints/default}"
DATA="${DATA:-data/suite}"
DEMOS="${DEMOS:-1500}"
RUN="${RUN:-outputs/finetune}"
STEPS="${STEPS:-2500}"
LR="${LR:-3e-4}"
FRACTION="${FRACTION:-0.5}"
QUESTIONS="${QUESTIONS:-all}"
BATCH="${BATCH:-512}"                             # per GPU
NPROC="${NPROC:-1}"
SEED="${SEED:-0}"
EPISODES="${EPISODES:-50}"
EXPORT="${EXPORT:-}"
TASKS="ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0"
E="${E:-ee-vla}"
DAGGER_EPISODES="${DAGGER_EPISODES:-300}"
DAGGER_SEED="${DAGGER_SEED:-$(( 200000 + 1000 * SEED ))}"
DAGGER_MIN="${DAGGER_MIN:-3}"
DAGGER_ARGS="${DAGGER_ARGS:-}"                    # more `ee-vla dagger` flags, e.g. "--max-episode-steps 60"
read -r -a DAGGER_DATA <<<"${EXTRA_DATA:-}"        # more data dirs to train on (e.g. an earlier dagger stage's)
WORKERS="${WORKERS:-$(( ($(nproc) - 2) / NPROC ))}"  # DataLoader workers per process: they render the scenes
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has collect && [ ! -f "$DATA/demos.hdf5" ]; then
  # shellcheck disable=SC2086
  $E collect --env $TASKS --episodes "$DEMOS" --out "$DATA" --seed "$SEED" --image-size 128 --num-workers "$(nproc)"
fi

if has dagger; then
  echo "=== dagger (t=${SECONDS}s)"
  read -r -a tasks <<<"ee_vla/Push-v0 ee_vla/Place-v0 ee_vla/PickCube-v0 ee_vla/Reach-v0"  # long ones first
  envs=$(( ($(nproc) - 2) / NPROC )); envs=$(( envs < 1 ? 1 : (envs > 16 ? 16 : envs) ))  # async env copies per GPU
  pids=()
  for ((g = 0; g < NPROC; g++)); do
    args=()
    for ((i = g; i < ${#tasks[@]}; i += NPROC)); do args+=(--env "${tasks[i]}"); done
    DAGGER_DATA+=("$DATA-dagger$g")
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$g $E dagger --policy "$INIT" "${args[@]}" --episodes "$DAGGER_EPISODES" \
      --seed "$DAGGER_SEED" --num-envs "$envs" --max-minutes "$DAGGER_MIN" --out "$DATA-dagger$g" --overwrite \
      --no-progress $DAGGER_ARGS >"$DATA-dagger$g.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { tail -n 20 "$DATA"-dagger*.log; exit 1; }; done
  grep -h "policy success\|wrote" "$DATA"-dagger*.log
fi

if has train; then
  minutes=$(python3 -c "print(round(max(1, $BUDGET_S - $EVAL_S - 45 - $SECONDS) / 60, 2))")  # 45 s: setup
  echo "=== train: at most $minutes min of steps (t=${SECONDS}s)"
  if [ "$NPROC" -gt 1 ]; then
    TRAIN=(torchrun --standalone --nproc_per_node "$NPROC" -m ee_vla.cli train)
  else
    read -r -a TRAIN <<<"$E train"
  fi
  "${TRAIN[@]}" --data "$DATA" "${DAGGER_DATA[@]}" --out-dir "$RUN" --init-from "$INIT" --grounding-fraction "$FRACTION" \
    --grounding-source scenes --grounding-questions "$QUESTIONS" --input-noise 0.5 --steps "$STEPS" --lr "$LR" \
    --warmup-steps 100 --max-minutes "$minutes" --batch-size "$BATCH" --weight-decay 0.01 --aug-shift 0.03 \
    --val-fraction 0.05 --dtype bfloat16 --save-dtype bfloat16 --seed "$SEED" --num-workers "$WORKERS" \
    --log-every 50 --save-every 500 --eval-every 500 --eval-samples 256
fi

if has eval; then
  echo "=== eval (t=${SECONDS}s)"
  # shellcheck disable=SC2046,SC2086
  $E eval --policy "$RUN/model" $(printf -- '--env %s ' $TASKS) --decoder jacobi --episodes "$EPISODES" \
    --num-envs 10 --vector async --seed 100000 --output-dir "$RUN/eval"
fi

if has export && [ -n "$EXPORT" ]; then
  mkdir -p "$EXPORT"
  tar -czf "$EXPORT/model.tgz" -C "$RUN" model
  for f in metrics.jsonl loss.png eval/eval_info.json; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$EXPORT/"; done
  for d in "${DAGGER_DATA[@]}"; do cp "$d/dagger_info.json" "$EXPORT/$(basename "$d")_info.json" || true; done
  echo "=== exported to $EXPORT (t=${SECONDS}s)"
fi
