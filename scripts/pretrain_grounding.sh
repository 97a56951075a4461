#!/usr/bin/env bash
# Grounding pre-training of a `small` VLA on fresh ee_vla suite scenes (docs/training.md), the stage
# before behaviour cloning: every question ("where are the objects to <instruction>?") is asked
# about a scene no batch has shown before, so the answer (target and goal xyz) cannot be memorised.
# The demonstrations provide the action/point statistics, the instruction vocabulary and the
# held-out episode starts of the gate metric eval/start_grounding_err_m (compare it with
# eval/start_grounding_mean_err_m, the error of always answering the mean).
#
#   bash scripts/pretrain_grounding.sh                # outputs/grounding/model
#   STEPS=4000 WORKERS=14 bash scripts/pretrain_grounding.sh
#
# Then: ee-vla train --init-from outputs/grounding/model ... (behaviour cloning).
set -euo pipefail
cd "$(dirname "$0")/.."

export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
E="${E:-ee-vla}"
SEED="${SEED:-0}"
DATA="${DATA:-data/suite}"
OUT="${OUT_DIR:-outputs/grounding}"
TASKS="${TASKS:-ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0}"
EPISODES="${EPISODES:-1500}"
STEPS="${STEPS:-3000}"
BATCH="${BATCH:-512}"
LR="${LR:-6e-4}"
WORKERS="${WORKERS:-$(($(nproc) - 2))}"     # scene rendering runs in the DataLoader workers

if [ ! -f "$DATA/demos.hdf5" ]; then
  # shellcheck disable=SC2086
  $E collect --env $TASKS --episodes "$EPISODES" --out "$DATA" --seed "$SEED" --image-size 128 --num-workers "$(nproc)"
fi

# shellcheck disable=SC2086
$E train --data "$DATA" --out-dir "$OUT" --preset small --chunk-size 3 --use-proprio \
  --grounding-fraction 1 --grounding-source scenes --val-fraction 0.05 \
  --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup-steps 200 --weight-decay 0.01 --aug-shift 0.03 \
  --dtype bfloat16 --seed "$SEED" --num-workers "$WORKERS" --log-every 50 --save-every 250 --eval-every 250 \
  --eval-samples 256 ${EXTRA:-}
