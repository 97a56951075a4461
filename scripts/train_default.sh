#!/usr/bin/env bash
# Reproduce the session-9 default policy (docs/training.md, "Session-5", "Session-8" and "Session-9"),
# the start of the shipped session-11 default: from its stage-5 model, session 10's run 3a and the
# three DAgger rounds of session 11 (`scripts/finetune_default.sh`, commands and seeds in
# docs/training.md, "Session-10" and "Session-11") give ee_vla/checkpoints/default/:
#   1. collect scripted-expert demonstrations of every ee_vla suite task (sim_envs), 1500 per task
#      (seed SEED), and a fresh set of 2500 per task (seed SEED + 4) for the last round of stage 5
#   2. grounding pre-training of a `small` VLA on fresh scenes (where are the objects?), GPU
#   3. behaviour cloning from it, co-trained on fresh-scene grounding, noisy teacher forcing, GPU;
#      continued at a lower grounding fraction (the session's runs were two 10-minute device calls)
#   4. session 5's CEED student of that teacher (the default shipped until session 8), CPU
#   5. three more behaviour-cloning rounds from it, co-trained on fresh scenes asked about every object
#      (`--grounding-questions all`), global batch 1024 (DDP over 2 GPUs): two in session 8, the third
#      (session 9) on the fresh demonstrations at a lower learning rate: the AR model
#   6. Jacobi trajectories and CEED consistency distillation (mixed labels, threshold 0.1, the
#      vision tower frozen, no label smoothing) on 150 demonstrations per task, on the CPU, of two
#      teachers: session 8's second round ($RUNS/ceed, the ablation's student) and the last round
#      with the AR loss weighted 3 ($RUNS/ft4_ceed, session 9). The students are NOT shipped: the
#      better one (ft4_ceed) is 3 points below its teacher and saves 5% of the forward passes
#      against CEED decoding of the teacher itself
#   7. copy the last stage-5 model (bf16 safetensors, ~14 MB) to $DEST (the INIT of session 10's run 3a)
#
#   bash scripts/train_default.sh                 # the default policy
#   ABLATE=1 bash scripts/train_default.sh        # + the mixed-label ablation, reusing the trajectories
#   NPROC=2 bash scripts/train_default.sh         # torchrun DDP over 2 GPUs for stages 2-3 and 5
#
# The demonstrations of stages 1 and 5 come from the scripted experts as they were until commit
# 8cfa2a2 (they remembered their phase); since session 10 the experts read the phase off the state
# (Pick and Place demonstrations are ~3 steps shorter), so to reproduce the session-9 model exactly,
# run this script from a checkout of 8cfa2a2 (`git worktree add ../ee_vla_8cfa2a2 8cfa2a2`).
# Session 11's rounds 2-3 ran on the physics of commit e1164a9 (a gripper on top of an object is not
# driven lower); session 10 and round 1 on the physics before it.
#
# Every stage is skipped when its result exists. Seeds are fixed (SEED). The pre-training schedule is
# 3000 steps long but was stopped by the device's time limit at 2250 (--stop-after reproduces that).
set -euo pipefail
cd "$(dirname "$0")/.."

export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"

SEED="${SEED:-0}"
DATA="${DATA:-data/suite}"                      # demos.hdf5 + stats.json, 1500 per task
DATA_DISTILL="${DATA_DISTILL:-data/suite150}"   # 150 per task (the same seeds' first 150)
DATA4="${DATA4:-data/suite2500}"                # 2500 per task, seed SEED + 4 (stage 5's last round)
RUNS="${RUNS:-outputs/default}"
DEST="${DEST:-$RUNS/session9_default}"       # the shipped default grew from it (header)
TASKS="${TASKS:-ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0}"
BATCH="${BATCH:-512}"                           # per GPU
NPROC="${NPROC:-1}"
WORKERS="${WORKERS:-$((($(nproc) - 2) / NPROC))}"  # DataLoader workers per process: they render the fresh scenes
E="${E:-ee-vla}"

if [ "$NPROC" -gt 1 ]; then
  RUN=(torchrun --standalone --nproc_per_node "$NPROC" -m ee_vla.cli)
else
  read -r -a RUN <<<"$E"
fi
COMMON=(--weight-decay 0.01 --aug-shift 0.03 --val-fraction 0.05 --dtype bfloat16
  --save-dtype bfloat16 --seed "$SEED" --num-workers "$WORKERS" --log-every 50 --save-every 250 --eval-samples 256)

# ---- 1. demonstrations (all suite tasks in one demos.hdf5, 128 px = the small preset's input) ------
for spec in "$DATA:1500:$SEED" "$DATA_DISTILL:150:$SEED" "$DATA4:2500:$((SEED + 4))"; do
  IFS=: read -r dir n seed <<<"$spec"
  if [ ! -f "$dir/demos.hdf5" ]; then
    # shellcheck disable=SC2086
    $E collect --env $TASKS --episodes "$n" --out "$dir" --seed "$seed" --image-size 128 --num-workers "$(nproc)"
  fi
done

# ---- 2. grounding pre-training on fresh scenes (proprio in the prompt, sine-cosine position table) --
if [ ! -d "$RUNS/grounding/model" ]; then
  "${RUN[@]}" train --data "$DATA" --out-dir "$RUNS/grounding" --preset small --chunk-size 3 --use-proprio \
    --grounding-fraction 1 --grounding-source scenes --steps 3000 --stop-after 2250 --lr 6e-4 --warmup-steps 200 \
    --eval-every 250 --batch-size "$BATCH" "${COMMON[@]}"
fi

# ---- 3. behaviour cloning from it (the AR teacher) -------------------------------------------------
if [ ! -d "$RUNS/bc1/model" ]; then
  "${RUN[@]}" train --data "$DATA" --out-dir "$RUNS/bc1" --init-from "$RUNS/grounding/model" \
    --grounding-fraction 0.5 --grounding-source scenes --input-noise 0.5 --steps 2400 --lr 3e-4 --warmup-steps 100 \
    --eval-every 400 --batch-size "$BATCH" "${COMMON[@]}"
fi
if [ ! -d "$RUNS/bc/model" ]; then
  "${RUN[@]}" train --data "$DATA" --out-dir "$RUNS/bc" --init-from "$RUNS/bc1/model" \
    --grounding-fraction 0.3 --grounding-source scenes --input-noise 0.5 --steps 2800 --lr 3e-4 --warmup-steps 100 \
    --eval-every 400 --batch-size "$BATCH" "${COMMON[@]}"
fi

# ---- 4. session 5's CEED student (CPU: the teacher's trajectories once, then distillation) ---------
DISTILL=(--batch-size 32 --warmup-steps 20 --consistency-weight 1 --ar-weight 1
  --save-dtype bfloat16 --seed "$SEED" --log-every 20 --save-every 200 --eval-every 200 --eval-samples 32 --device cpu)
distill_from() {  # teacher, run prefix, extra flags: trajectories on the 150-per-task set, then the student
  local teacher="$1" pre="$2"
  shift 2
  if ! ls "$RUNS/${pre}trajectories/trajectories"/part-*.safetensors >/dev/null 2>&1; then
    $E distill --data "$DATA_DISTILL" --out-dir "$RUNS/${pre}trajectories" --teacher "$teacher" \
      --collect-only --inits warm prompt --collect-batch-size 256 --seed "$SEED" --device cpu
  fi
  if [ ! -d "$RUNS/${pre}ceed/model" ]; then
    $E distill --out-dir "$RUNS/${pre}ceed" --mixed-label-threshold 0.1 --data "$DATA_DISTILL" --teacher "$teacher" \
      --trajectories "$RUNS/${pre}trajectories/trajectories" --steps "${DISTILL_STEPS:-400}" "${DISTILL[@]}" "$@"
  fi
}
distill_from "$RUNS/bc/model" s5_ --lr 1e-4 --label-smoothing 0.1

# ---- 5. three BC rounds from it, every object of a fresh scene asked about (global batch 1024) -------
FT=(--grounding-source scenes --grounding-questions all --input-noise 0.5 --warmup-steps 100 --eval-every 500
  "${COMMON[@]}" --batch-size $((1024 / NPROC)))
if [ ! -d "$RUNS/ft1/model" ]; then
  "${RUN[@]}" train --data "$DATA" --out-dir "$RUNS/ft1" --init-from "$RUNS/s5_ceed/model" \
    --grounding-fraction 0.5 --steps 2000 --lr 3e-4 "${FT[@]}"
fi
if [ ! -d "$RUNS/ft2/model" ]; then
  "${RUN[@]}" train --data "$DATA" --out-dir "$RUNS/ft2" --init-from "$RUNS/ft1/model" \
    --grounding-fraction 0.6 --steps 2100 --lr 3e-4 "${FT[@]}" --seed $((SEED + 1))
fi
# session 9: fresh demonstrations, lower lr; the run was cut at step 1900 by its time budget (--max-minutes)
if [ ! -d "$RUNS/ft4/model" ]; then
  "${RUN[@]}" train --data "$DATA4" --out-dir "$RUNS/ft4" --init-from "$RUNS/ft2/model" \
    --grounding-fraction 0.5 --steps 2000 --stop-after 1900 --lr 1e-4 "${FT[@]}" --seed $((SEED + 4))
fi

# ---- 6. CEED students (CPU; reported, not shipped) ----------------------------------------------
DISTILL8=(--lr 5e-5 --label-smoothing 0 --freeze-vision)
distill_from "$RUNS/ft2/model" "" "${DISTILL8[@]}"                       # session 8
distill_from "$RUNS/ft4/model" ft4_ "${DISTILL8[@]}" --ar-weight 3       # session 9 (the later flag wins)

# ---- 7. ship it ------------------------------------------------------------------------------------
rm -rf "$DEST"
mkdir -p "$DEST"
cp "$RUNS/ft4/model/"* "$DEST/"
du -sh "$DEST"

# ---- optional: mixed-label ablation (same teacher, same trajectories, only the labels differ) -------
if [ "${ABLATE:-0}" = "1" ]; then
  for THR in 0.05 0.2 0.4; do
    [ -d "$RUNS/ablate/thr_$THR/model" ] || $E distill --out-dir "$RUNS/ablate/thr_$THR" --mixed-label-threshold "$THR" \
      --data "$DATA_DISTILL" --teacher "$RUNS/ft2/model" --trajectories "$RUNS/trajectories/trajectories" \
      --steps "${DISTILL_STEPS:-400}" "${DISTILL[@]}" "${DISTILL8[@]}"
  done
  [ -d "$RUNS/ablate/no_mixed/model" ] || $E distill --out-dir "$RUNS/ablate/no_mixed" --no-mixed-labels \
    --data "$DATA_DISTILL" --teacher "$RUNS/ft2/model" --trajectories "$RUNS/trajectories/trajectories" \
    --steps "${DISTILL_STEPS:-400}" "${DISTILL[@]}" "${DISTILL8[@]}"
  for POLICY in "$RUNS/ceed/model" "$RUNS"/ablate/*/model; do
    # shellcheck disable=SC2046,SC2086
    $E eval --policy "$POLICY" $(printf -- '--env %s ' $TASKS) --compare ar ceed --episodes 50 --num-envs 10 \
      --seed 100000 --output-dir "$(dirname "$POLICY")/eval"
  done
fi
