#!/usr/bin/env bash
# Reproduce the shipped default policy, ee_vla/checkpoints/default/, on a GPU machine:
#   1. collect scripted-expert demonstrations of every ee_vla suite task (sim_envs)
#   2. behaviour-clone the `small` VLA teacher (bf16 autocast)
#   3. collect the teacher's Jacobi trajectories once
#   4. CEED consistency distillation of the student (mixed labels, threshold 0.1)
#   5. copy the student (bf16 safetensors, ~14 MB) to ee_vla/checkpoints/default/
#
#   bash scripts/train_default.sh                 # the default policy
#   ABLATE=1 bash scripts/train_default.sh        # + the mixed-label ablation, reusing the trajectories
#   NPROC=4 bash scripts/train_default.sh         # torchrun DDP over 4 GPUs (global batch x4)
#
# Every stage is re-runnable: collection is skipped when its output exists, and a training run whose
# out dir holds checkpoints is resumed (--resume). Seeds are fixed (SEED). Knobs below are
# environment variables so the lead can size the run to the GPU time available.
set -euo pipefail
cd "$(dirname "$0")/.."

export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"

SEED="${SEED:-0}"
DATA="${DATA:-data/suite}"                      # demos.hdf5 + stats.json
RUNS="${RUNS:-outputs/default}"                 # bc/, trajectories/, ceed/, ablate/
DEST="${DEST:-ee_vla/checkpoints/default}"
TASKS="${TASKS:-ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0}"
EPISODES="${EPISODES:-200}"                     # successful demonstrations per task
BC_STEPS="${BC_STEPS:-10000}"
DISTILL_STEPS="${DISTILL_STEPS:-3000}"
ABLATE_STEPS="${ABLATE_STEPS:-$DISTILL_STEPS}"
BATCH="${BATCH:-128}"                           # per GPU
NPROC="${NPROC:-1}"
WORKERS="${WORKERS:-$(nproc)}"

if [ "$NPROC" -gt 1 ]; then
  RUN=(torchrun --standalone --nproc_per_node "$NPROC" -m ee_vla.cli)
else
  RUN=(ee-vla)
fi
resume() { if [ -d "$1/checkpoints" ]; then echo --resume; fi; }

# ---- 1. demonstrations (all suite tasks in one demos.hdf5, 128 px = the small preset's input) ------
if [ ! -f "$DATA/demos.hdf5" ]; then
  # shellcheck disable=SC2086
  ee-vla collect --env $TASKS --episodes "$EPISODES" --out "$DATA" --seed "$SEED" --image-size 128 \
    --num-workers "$WORKERS"
fi

# ---- 2. AR teacher: behaviour cloning, chunks of 3 actions, proprio in the prompt -----------------
# (random vision position table: the shipped checkpoint predates the sincos default)
# shellcheck disable=SC2046
"${RUN[@]}" train --data "$DATA" --out-dir "$RUNS/bc" --preset small --chunk-size 3 --use-proprio --vision-pos-init random \
  --steps "$BC_STEPS" --batch-size "$BATCH" --lr 3e-4 --warmup-steps 500 --weight-decay 0.01 \
  --dtype bfloat16 --seed "$SEED" --log-every 50 --save-every 2000 --eval-every 1000 $(resume "$RUNS/bc")

# ---- 3. the teacher's Jacobi trajectories (warm + prompt initial guesses), collected once ---------
if ! ls "$RUNS/trajectories/trajectories"/part-*.safetensors >/dev/null 2>&1; then
  "${RUN[@]}" distill --data "$DATA" --out-dir "$RUNS/trajectories" --teacher "$RUNS/bc/model" \
    --collect-only --inits warm prompt --collect-batch-size 256 --dtype bfloat16 --seed "$SEED"
fi
TRAJ="$RUNS/trajectories/trajectories"

# ---- 4. CEED student -------------------------------------------------------------------------------
# shellcheck disable=SC2046
"${RUN[@]}" distill --data "$DATA" --out-dir "$RUNS/ceed" --teacher "$RUNS/bc/model" --trajectories "$TRAJ" \
  --steps "$DISTILL_STEPS" --batch-size "$BATCH" --lr 1e-4 --warmup-steps 100 \
  --mixed-label-threshold 0.1 --consistency-weight 1 --ar-weight 1 --label-smoothing 0.1 \
  --dtype bfloat16 --save-dtype bfloat16 --seed "$SEED" --log-every 50 --save-every 1000 --eval-every 250 \
  $(resume "$RUNS/ceed")

# ---- 5. ship it ------------------------------------------------------------------------------------
rm -rf "$DEST"
mkdir -p "$DEST"
cp "$RUNS/ceed/model/"* "$DEST/"
du -sh "$DEST"

# ---- optional: mixed-label ablation (same teacher, same trajectories, only the labels differ) -------
if [ "${ABLATE:-0}" = "1" ]; then
  for THR in 0.05 0.2 0.4; do
    # shellcheck disable=SC2046
    "${RUN[@]}" distill --data "$DATA" --out-dir "$RUNS/ablate/thr_$THR" --teacher "$RUNS/bc/model" \
      --trajectories "$TRAJ" --steps "$ABLATE_STEPS" --batch-size "$BATCH" --lr 1e-4 --warmup-steps 100 \
      --mixed-label-threshold "$THR" --dtype bfloat16 --save-dtype bfloat16 --seed "$SEED" \
      $(resume "$RUNS/ablate/thr_$THR")
  done
  # shellcheck disable=SC2046
  "${RUN[@]}" distill --data "$DATA" --out-dir "$RUNS/ablate/no_mixed" --teacher "$RUNS/bc/model" \
    --trajectories "$TRAJ" --steps "$ABLATE_STEPS" --batch-size "$BATCH" --lr 1e-4 --warmup-steps 100 \
    --no-mixed-labels --dtype bfloat16 --save-dtype bfloat16 --seed "$SEED" $(resume "$RUNS/ablate/no_mixed")
  for POLICY in "$RUNS/ceed/model" "$RUNS"/ablate/*/model; do
    ee-vla eval --policy "$POLICY" --compare ar ceed --episodes 50 --num-envs 8 --seed 1000 \
      --output-dir "$(dirname "$POLICY")/eval"
  done
fi
