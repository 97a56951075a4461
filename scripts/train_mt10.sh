#!/usr/bin/env bash
# Meta-World MT10 (docs/training.md, section 6): behaviour cloning and CEED distillation of a
# `small` VLA on the ten MT10 tasks (sim_envs' Meta-World adapter, ids ee_vla/MetaWorld-<task>-v0):
#   collect      scripted-expert demonstrations of every MT10 task into $DATA, N per task, 128 px
#   train        behaviour cloning of a new `small` VLA (chunk 3, proprio in the prompt, noisy teacher
#                forcing, bf16) on them: the AR teacher, $RUNS/bc/model. GROUNDING=f co-trains on
#                grounding questions (where are the object and the goal?) from the demos' task points.
#   trajectories N_DISTILL demos per task into $DATA_DISTILL (the same seeds' first ones), then the
#                teacher's Jacobi trajectories on them, $RUNS/trajectories
#   distill      CEED consistency distillation (mixed labels, threshold 0.1): the student, $RUNS/ceed/model
#   eval         AR vs CEED decoding of the student on held-out seeds (from 100000), 50 episodes per
#                task: $RUNS/eval/<task>/compare.json (one `ee-vla eval` per task, EVAL_SPLIT=task) and
#                $RUNS/eval/summary.json, or one run over all tasks into $RUNS/eval/all (EVAL_SPLIT=all)
#   export       (not in the default STAGES) models, metrics and evaluations as .tgz files in $EXPORT
#
#   bash scripts/train_mt10.sh                                  # every stage
#   STAGES="collect" bash scripts/train_mt10.sh                 # one stage (each fits a 10-minute call)
#   STAGES="trajectories distill eval" DEVICE=cpu bash scripts/train_mt10.sh   # the last stages on a CPU
#   NPROC=4 STAGES=train bash scripts/train_mt10.sh             # DDP over 4 GPUs (global batch x4)
#   WHEELS=.whl_run bash scripts/train_mt10.sh                  # install carried wheels into $SITE first
#   CAMERAS="pixels wrist_pixels" bash scripts/train_mt10.sh    # the camera on the hand too (collect + train)
#   OBSERVE_GOAL=1 bash scripts/train_mt10.sh                   # the goal's position in agent_pos (collect + eval)
#
# Machines and times, as measured for docs/training.md's MT10 results (N=300, GROUNDING=0.3): on one
# H200, collect 2 min (16 workers), train 3500 steps at 8-10 steps/s, distill 1000 steps at batch 64
# in 69 s; eval of 20 episodes per task on a 2-core CPU 27 min (a failing episode runs 500 steps).
#
# Every stage is skipped when its result exists; an interrupted train/distill run (checkpoints, no
# model) is resumed. Seeds are fixed (SEED). Everything below is an environment-variable knob.
set -euo pipefail
cd "$(dirname "$0")/.."

export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"

MT10="ee_vla/MetaWorld-reach-v0 ee_vla/MetaWorld-push-v0 ee_vla/MetaWorld-pick-place-v0 ee_vla/MetaWorld-door-open-v0
ee_vla/MetaWorld-drawer-open-v0 ee_vla/MetaWorld-drawer-close-v0 ee_vla/MetaWorld-button-press-topdown-v0
ee_vla/MetaWorld-peg-insert-side-v0 ee_vla/MetaWorld-window-open-v0 ee_vla/MetaWorld-window-close-v0"

STAGES="${STAGES:-collect train trajectories distill eval}"
SEED="${SEED:-0}"
TASKS="${TASKS:-$MT10}"
PY="${PY:-python3}"
# data (the images are held in memory while training: ~3.7 MB per demonstration at 128 px)
N="${N:-300}"                                   # demonstrations per task for behaviour cloning
N_DISTILL="${N_DISTILL:-20}"                    # per task for trajectories + distillation
DATA="${DATA:-data/mt10}"
DATA_DISTILL="${DATA_DISTILL:-data/mt10_distill}"
IMAGE="${IMAGE:-128}"
COMPRESSION="${COMPRESSION:-0}"                 # gzip level of $DATA's images (0: fastest write and load)
CAMERAS="${CAMERAS:-pixels}"                    # the policy's cameras: "pixels wrist_pixels" adds the hand's camera
OBSERVE_GOAL="${OBSERVE_GOAL:-0}"               # 1: agent_pos ends with the goal's x, y, z (Meta-World's MT10 state has it)
COLLECT_WORKERS="${COLLECT_WORKERS:-$(nproc)}"
RUNS="${RUNS:-outputs/mt10}"
# behaviour cloning
PRESET="${PRESET:-small}"
CHUNK="${CHUNK:-3}"
BATCH="${BATCH:-512}"                           # per GPU
NPROC="${NPROC:-1}"
WORKERS="${WORKERS:-4}"                         # DataLoader workers
STEPS="${STEPS:-3500}"                          # length of the cosine schedule
STOP_AFTER="${STOP_AFTER:-}"                    # end the run at this step (a checkpoint + model), schedule unchanged
MAX_MINUTES="${MAX_MINUTES:-}"                  # ... or after this many minutes of training (a later call resumes it)
LR="${LR:-6e-4}"
WARMUP="${WARMUP:-200}"
INPUT_NOISE="${INPUT_NOISE:-0.5}"
GROUNDING="${GROUNDING:-0}"                     # fraction of grounding questions (object + goal) in BC batches
                                                # (needs privileged/task_points in the demos, as collect writes them)
VAL="${VAL:-0.05}"                              # held-out fraction of the episodes (every 20th)
DTYPE="${DTYPE:-bfloat16}"
TRAIN_DEVICE="${TRAIN_DEVICE:-auto}"
LOG_EVERY="${LOG_EVERY:-50}"
SAVE_EVERY="${SAVE_EVERY:-250}"
EVAL_EVERY="${EVAL_EVERY:-500}"
EVAL_SAMPLES="${EVAL_SAMPLES:-256}"
# trajectories, distillation, evaluation (DEVICE=cpu runs them on a CPU)
DEVICE="${DEVICE:-auto}"
COLLECT_BATCH="${COLLECT_BATCH:-256}"
DISTILL_STEPS="${DISTILL_STEPS:-400}"
DISTILL_BATCH="${DISTILL_BATCH:-32}"
DISTILL_EVERY="${DISTILL_EVERY:-200}"
EVAL_POLICY="${EVAL_POLICY:-ceed}"              # run name under $RUNS whose model is evaluated (bc = the teacher)
DECODERS="${DECODERS:-ar ceed}"
EPISODES="${EPISODES:-50}"
NUM_ENVS="${NUM_ENVS:-10}"
EVAL_SEED="${EVAL_SEED:-100000}"
VECTOR="${VECTOR:-async}"                       # async: one process per env copy (they render)
EVAL_MAX_STEPS="${EVAL_MAX_STEPS:-}"            # empty: Meta-World's 500
EVAL_SPLIT="${EVAL_SPLIT:-task}"                # task: one resumable run per task | all: one run
BUDGET_S="${BUDGET_S:-}"                        # eval: start no task after this many seconds of the script
EVAL_TASK_S="${EVAL_TASK_S:-0}"                 # ... minus this guess of one task's time (then the longest seen)
EXPORT="${EXPORT:-${OUT:-$RUNS/export}}"

for s in $STAGES; do
  case "$s" in collect | train | trajectories | distill | eval | export) ;;
  *) echo "train_mt10.sh: unknown stage '$s' (collect train trajectories distill eval export)" >&2; exit 2 ;;
  esac
done
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo "== $(date '+%F %T') train_mt10.sh: $*"; }

# Wheels carried to a machine without mujoco/gymnasium/metaworld/tyro (docs/training.md)
if [ -n "${WHEELS:-}" ]; then
  SITE="${SITE:-/tmp/site}"
  if [ ! -f "$SITE/.ee_vla_wheels" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    touch "$SITE/.ee_vla_wheels"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # collect's spawned workers import sim_envs
if [ -z "${E:-}" ]; then
  if command -v ee-vla >/dev/null; then E=ee-vla; else E="$PY -m ee_vla.cli"; fi
fi
read -r -a EE <<<"$E"
if [ "$NPROC" -gt 1 ]; then
  RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m ee_vla.cli)
else
  RUN=("${EE[@]}")
fi
read -r -a TASK_LIST <<<"$(echo "$TASKS" | tr '\n' ' ')"
has_ckpt() { compgen -G "$1/checkpoints/step_*" >/dev/null; }
ENV_KWARGS=()
if [ "$OBSERVE_GOAL" = 1 ]; then ENV_KWARGS=(--env-kwargs observe_goal true); fi

collect_demos() {  # dir, demos per task, gzip level
  if [ -f "$1/demos.hdf5" ]; then
    echo "$1/demos.hdf5 exists: skipped"
    return
  fi
  local wrist=()
  if [[ " $CAMERAS " == *" wrist_pixels "* ]]; then wrist=(--wrist-camera); fi
  "${EE[@]}" collect --env "${TASK_LIST[@]}" --episodes "$2" --out "$1" --seed "$SEED" --image-size "$IMAGE" \
    --num-workers "$COLLECT_WORKERS" --compression-level "$3" "${wrist[@]}" "${ENV_KWARGS[@]}"
  du -sh "$1/demos.hdf5"
}

# ---- 1. demonstrations of every task in one demos.hdf5 ----------------------------------------------
if has_stage collect; then
  stage "collect $N demos x ${#TASK_LIST[@]} tasks -> $DATA"
  collect_demos "$DATA" "$N" "$COMPRESSION"
fi

# ---- 2. behaviour cloning of a new small VLA (the AR teacher) ----------------------------------------
if has_stage train; then
  stage "train $RUNS/bc ($STEPS steps${STOP_AFTER:+, stop after $STOP_AFTER}, batch $BATCH x $NPROC)"
  if [ -d "$RUNS/bc/model" ]; then
    echo "$RUNS/bc/model exists: skipped"
  else
    read -r -a CAMERA_LIST <<<"$CAMERAS"
    TRAIN=(train --data "$DATA" --out-dir "$RUNS/bc" --preset "$PRESET" --chunk-size "$CHUNK" --use-proprio
      --cameras "${CAMERA_LIST[@]}"
      --steps "$STEPS" --lr "$LR" --warmup-steps "$WARMUP" --input-noise "$INPUT_NOISE" --batch-size "$BATCH"
      --weight-decay 0.01 --aug-shift 0.03 --val-fraction "$VAL" --dtype "$DTYPE" --save-dtype bfloat16
      --seed "$SEED" --num-workers "$WORKERS" --log-every "$LOG_EVERY" --save-every "$SAVE_EVERY"
      --eval-every "$EVAL_EVERY" --eval-samples "$EVAL_SAMPLES" --device "$TRAIN_DEVICE")
    if [ -n "$STOP_AFTER" ]; then TRAIN+=(--stop-after "$STOP_AFTER"); fi
    if [ -n "$MAX_MINUTES" ]; then TRAIN+=(--max-minutes "$MAX_MINUTES"); fi
    if [ "$GROUNDING" != 0 ]; then TRAIN+=(--grounding-fraction "$GROUNDING" --grounding-source demos); fi
    if has_ckpt "$RUNS/bc"; then TRAIN+=(--resume); fi   # cut by a time limit: continue it
    "${RUN[@]}" "${TRAIN[@]}"
  fi
fi

# ---- 3. the teacher's Jacobi trajectories on a smaller demonstration set ----------------------------
TRAJ="$RUNS/trajectories/trajectories"
if has_stage trajectories; then
  stage "trajectories: $N_DISTILL demos x ${#TASK_LIST[@]} tasks -> $DATA_DISTILL, then $TRAJ ($DEVICE)"
  collect_demos "$DATA_DISTILL" "$N_DISTILL" 4
  if compgen -G "$TRAJ/part-*.safetensors" >/dev/null; then
    echo "$TRAJ exists: skipped"
  else
    rm -rf "$RUNS/trajectories"   # nothing complete in it
    "${EE[@]}" distill --data "$DATA_DISTILL" --out-dir "$RUNS/trajectories" --teacher "$RUNS/bc/model" \
      --collect-only --inits warm prompt --collect-batch-size "$COLLECT_BATCH" --seed "$SEED" --device "$DEVICE"
  fi
fi

# ---- 4. CEED consistency distillation (the student) --------------------------------------------------
if has_stage distill; then
  stage "distill $RUNS/ceed ($DISTILL_STEPS steps, batch $DISTILL_BATCH, $DEVICE)"
  if [ -d "$RUNS/ceed/model" ]; then
    echo "$RUNS/ceed/model exists: skipped"
  else
    DISTILL=(distill --out-dir "$RUNS/ceed" --data "$DATA_DISTILL" --teacher "$RUNS/bc/model" --trajectories "$TRAJ"
      --mixed-label-threshold 0.1 --steps "$DISTILL_STEPS" --batch-size "$DISTILL_BATCH" --lr 1e-4 --warmup-steps 20
      --consistency-weight 1 --ar-weight 1 --label-smoothing 0.1 --save-dtype bfloat16 --seed "$SEED"
      --log-every 20 --save-every "$DISTILL_EVERY" --eval-every "$DISTILL_EVERY" --eval-samples 32 --device "$DEVICE")
    if has_ckpt "$RUNS/ceed"; then DISTILL+=(--resume); fi
    "${EE[@]}" "${DISTILL[@]}"
  fi
fi

# ---- 5. AR vs CEED on held-out seeds ------------------------------------------------------------------
if has_stage eval; then
  POLICY="$RUNS/$EVAL_POLICY/model"
  read -r -a DEC <<<"$DECODERS"
  EVAL=(eval --policy "$POLICY" --compare "${DEC[@]}" --episodes "$EPISODES" --num-envs "$NUM_ENVS"
    --seed "$EVAL_SEED" --vector "$VECTOR" --device "$DEVICE" --no-progress "${ENV_KWARGS[@]}")
  if [ -n "$EVAL_MAX_STEPS" ]; then EVAL+=(--max-episode-steps "$EVAL_MAX_STEPS"); fi
  EVAL_DIR="$RUNS/eval"
  if [ "$EVAL_POLICY" != ceed ]; then EVAL_DIR="$RUNS/eval_$EVAL_POLICY"; fi
  if [ "$EVAL_SPLIT" = all ]; then
    stage "eval $POLICY on ${#TASK_LIST[@]} tasks -> $EVAL_DIR/all"
    ENV_FLAGS=()
    for env in "${TASK_LIST[@]}"; do ENV_FLAGS+=(--env "$env"); done
    if [ -f "$EVAL_DIR/all/compare.json" ]; then
      echo "$EVAL_DIR/all/compare.json exists: skipped"
    else
      "${EE[@]}" "${EVAL[@]}" "${ENV_FLAGS[@]}" --output-dir "$EVAL_DIR/all"
    fi
  else
    longest="$EVAL_TASK_S"
    for env in "${TASK_LIST[@]}"; do
      out="$EVAL_DIR/${env#ee_vla/}"
      if [ -f "$out/compare.json" ]; then
        echo "$out/compare.json exists: skipped"
        continue
      fi
      if [ -n "$BUDGET_S" ] && [ $((SECONDS + longest)) -gt "$BUDGET_S" ]; then
        echo "BUDGET_S=$BUDGET_S: ${SECONDS}s used, a task takes up to ${longest}s: stopping before $env (run the eval stage again)"
        break
      fi
      stage "eval $POLICY on $env -> $out"
      t0=$SECONDS
      "${EE[@]}" "${EVAL[@]}" --env "$env" --output-dir "$out"
      if [ $((SECONDS - t0)) -gt "$longest" ]; then longest=$((SECONDS - t0)); fi
    done
    # all tasks together: success over every episode, per decoder (Wilson 95% interval)
    "$PY" - "$EVAL_DIR" "${TASK_LIST[@]}" <<'EOF'
import json, sys
from pathlib import Path
from ee_vla.evaluation import wilson_interval
root, envs = Path(sys.argv[1]), sys.argv[2:]
rows, total = {}, {}
for env in envs:
    f = root / env.removeprefix("ee_vla/") / "compare.json"
    if not f.exists():
        print(f"{env}: no {f}"); continue
    for dec, r in json.loads(f.read_text())["decoders"].items():
        rows.setdefault(env, {})[dec] = {k: r[k] for k in ("pc_success", "successes", "n_episodes", "forward_passes_per_call", "speedup_forward_passes", "speedup_tokens_per_s")}
        t = total.setdefault(dec, {"successes": 0, "n_episodes": 0})
        t["successes"] += r["successes"]; t["n_episodes"] += r["n_episodes"]
for dec, t in total.items():
    lo, hi = wilson_interval(t["successes"], t["n_episodes"])
    t.update(pc_success=100 * t["successes"] / t["n_episodes"], pc_success_ci95=[100 * lo, 100 * hi])
summary = {"tasks": rows, "overall": total, "complete": len(rows) == len(envs)}
(root / "summary.json").write_text(json.dumps(summary, indent=2))
for env, r in rows.items():
    print(f"{env:<40} " + "  ".join(f"{d} {v['pc_success']:5.1f}% ({v['forward_passes_per_call']:.2f} fwd/call)" for d, v in r.items()))
for dec, t in total.items():
    print(f"{'overall ' + dec:<40} {t['pc_success']:5.1f}% [{t['pc_success_ci95'][0]:.1f}, {t['pc_success_ci95'][1]:.1f}] of {t['n_episodes']} episodes")
print(f"wrote {root / 'summary.json'}" + ("" if summary["complete"] else " (incomplete: run the eval stage again)"))
EOF
  fi
fi

# ---- export: what a machine that is given back must hand over (each file < 16 MiB) -------------------
if has_stage export; then
  stage "export -> $EXPORT"
  mkdir -p "$EXPORT"
  for run in bc ceed; do
    if [ -d "$RUNS/$run/model" ]; then
      tar czf "$EXPORT/mt10_$run.tgz" -C "$RUNS" --exclude=checkpoints --exclude=trajectories "$run"
    fi
  done
  for d in "$RUNS"/eval*; do
    if [ -d "$d" ]; then tar czf "$EXPORT/mt10_$(basename "$d").tgz" -C "$RUNS" --exclude=videos "$(basename "$d")"; fi
  done
  ls -la "$EXPORT"
fi
