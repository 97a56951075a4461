#!/usr/bin/env bash
# Train the shipped default policy (ee_vla/checkpoints/default) from scratch on the ee_vla suite:
#
#   collect        scripted-expert demonstrations of the four suite tasks, 128 px: 1500 per task
#                  (seed 0), 150 per task (seed 0, for distillation), 2500 per task (seed 4)
#   pretrain       grounding pre-training of a new `small` VLA on fresh scenes ("where are the
#                  objects?"), proprio in the prompt; the 3000-step schedule stopped at 2250
#   bc             behaviour cloning from it, co-trained on fresh-scene grounding, noisy teacher
#                  forcing: 2400 steps at grounding fraction 0.5, then 2800 at 0.3
#   first_student  CEED distillation of that model (CPU); the next stage starts from it
#   every_object   three BC runs asking about every object of a fresh scene, global batch 1024:
#                  ft1, ft2, then ft4 on the 2500-per-task set at a lower learning rate
#   fresh_demos    BC from ft4 on 1500 fresh demonstrations per task (seed 6): ft7
#   dagger         three rounds: fresh demonstrations (seed 7, 8, 9), `ee-vla dagger` of the
#                  previous round's model (CEED, 250 episodes per task cut at 60 steps, the expert's
#                  own plans as chunk labels; one on-policy set in round 1, two in rounds 2-3), then
#                  BC on the union: dagger1, dagger2, dagger3 (the teacher)
#   distill        CEED consistency distillation of dagger3 (CPU): mixed labels at 0.1, AR loss
#                  weighted 3, lr 5e-5, no label smoothing, vision tower frozen, 400 steps at batch 32
#   paraphrase     one round on varied wording (`--instructions augmented`: the task templates and
#                  the training paraphrases, never the held-out ones): 750 fresh demonstrations per
#                  task (seed 12) and 150 (seed 0) for distillation, `ee-vla dagger` of the distilled
#                  student (250 episodes per task from seed 212000, a 2-minute budget), BC from it
#                  (1500 steps, lr 1e-4, seed 7), then the distillation above on the 150-per-task set
#                  (GPU): para_ceed
#   scenes         fresh scenes (`ee-vla collect --explore-steps 5`: 3000 Push scenes, seed 500000, and
#                  800 of each other task, seed 600000), 700 fresh Push demonstrations and 250 of each
#                  other task (seed 16), `ee-vla dagger` of para_ceed on Push (400 episodes from seed
#                  216000, cut at 60 steps, a 1.3-minute budget), all with the varied wording; BC from
#                  para_ceed on them (1000 steps, seed 16), then the distillation above on the
#                  150-per-task set (CPU): scenes_ceed
#   chunk8         chunks of 8 actions: 750 fresh demonstrations per task (seed 14, varied wording),
#                  BC from scenes_ceed with --chunk-size 8 on them and the scenes stage's fresh scenes
#                  (1500 steps, seed 14) (CEED decodes its 56-token chunks in parallel; a distilled
#                  student of it decodes no faster, docs/training.md)
#   noshift        BC from chunk8 without the random image shift and with an average of the weights
#                  (--aug-shift 0 --ema-decay 0.998): 750 fresh Push demonstrations and 400 of each
#                  other task (seed 23), fresh scenes (3000 Push from seed 520000, 800 of each other
#                  task from seed 620000), all with the varied wording; 1000 steps, seed 23
#   negated        the noshift round again, from noshift, on fresh data worded with negations too
#                  (`--instructions augmented_negated`: the varied wording and phrasings that forbid
#                  another task's action, "push the ..., do not lift it"): 750 fresh Push
#                  demonstrations and 400 of each other task (seed 25), fresh scenes (3000 Push from
#                  seed 530000, 800 of each other task from seed 630000); 1000 steps, seed 25: the
#                  shipped model
#
# The last stage that ran copies its model to $DEST.
#
#   bash scripts/reproduce_default_policy.sh                    # every stage
#   NPROC=2 bash scripts/reproduce_default_policy.sh            # DDP over 2 GPUs for every_object,
#                                                               # on-policy collection split over both
#   STAGES="distill paraphrase" bash scripts/reproduce_default_policy.sh   # some stages (earlier outputs exist)
#   DRY_RUN=1 bash scripts/reproduce_default_policy.sh          # print every command, run nothing
#
# Machines and times, as measured for the shipped model: the training stages ran on H200s (the
# `small` preset trains at about 6-8 steps/s at batch 512: each BC run takes 5-6 minutes, each DAgger
# round about 10 minutes on 2 H200s); the first two distillations ran on a 2-core CPU (about 15
# minutes each); collecting 1500 demonstrations per task takes about a minute on 32 cores. The
# paraphrase stage, all of it on one H200 with 16 cores, took about 8 minutes (BC 3.5, distillation
# 1.5 with its trajectories). The scenes stage's collection, on-policy episodes and BC took about
# 7 minutes on one H100 with 16 cores (BC 3.5), its distillation 16 minutes on a 2-core CPU; the
# chunk8 stage (its collection and BC) about 5.5 minutes on one H100 with 16 cores (BC 3.6); the
# noshift stage's collection 73 s on one H100 with 16 cores, its BC 6.5 minutes with a second BC run
# beside it on the same GPU; the negated stage's collection about a minute, its BC 3.1 minutes (one H100,
# 16 cores).
# DISTILL_DEVICE sets the device of these two distillations (by default each stage's: cuda for
# paraphrase, cpu for scenes).
#
# Every stage is skipped when its result exists, so the script can be run again after an
# interruption. Seeds are fixed. It reproduces the recipe, not the exact weights: the shipped
# model's stages up to DAgger round 1 ran on the simulator before the rule that a gripper resting on
# an object is not driven lower (commit e1164a9), the demonstrations of stages collect to
# every_object came from the scripted experts of commit 8cfa2a2, round 3's shipped run trained with
# seed 19 (this script: ROUND_SEEDS), every Push demonstration and label up to the paraphrase stage
# came from the Push expert before commit 72a867e (which lifted to go round the object), and the
# on-policy collection of the DAgger rounds ran with a time budget per round (DAGGER_MINUTES="1.75
# 1.2 1.0" on 2 H200s). The scenes stage ran on the current experts and simulator. docs/training.md
# has the recipe and its measurements.
set -euo pipefail
cd "$(dirname "$0")/.."

export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"

ALL_STAGES="collect pretrain bc first_student every_object fresh_demos dagger distill paraphrase scenes chunk8 noshift negated"
STAGES="${STAGES:-$ALL_STAGES}"
for s in $STAGES; do
  case " $ALL_STAGES " in
  *" $s "*) ;;
  *) echo "reproduce_default_policy.sh: unknown stage '$s' ($ALL_STAGES)" >&2; exit 2 ;;
  esac
done
has() { [[ " $STAGES " == *" $1 "* ]]; }

SEED="${SEED:-0}"
DATA="${DATA:-data}"                            # demonstration sets: $DATA/suite, $DATA/suite150, ...
RUNS="${RUNS:-outputs/default}"
DEST="${DEST:-$RUNS/default}"                   # the final model (never the shipped checkpoint)
TASKS="${TASKS:-ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0}"
NPROC="${NPROC:-1}"                             # GPUs for the every_object stage and for on-policy collection
WORKERS="${WORKERS:-$(($(nproc) > 2 ? $(nproc) - 2 : 1))}"  # DataLoader workers of a one-process run
NUM_ENVS="${NUM_ENVS:-15}"                      # env copies of each `ee-vla dagger` process
ROUND_SEEDS="${ROUND_SEEDS:-7 8 19}"            # training seeds of the DAgger rounds
DAGGER_MINUTES="${DAGGER_MINUTES:-}"            # per-round time budgets of the on-policy collection (empty: none)
E="${E:-ee-vla}"
DRY_RUN="${DRY_RUN:-0}"

run() {  # run a command, or print it with DRY_RUN=1
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}
done_model() { [ "$DRY_RUN" != 1 ] && [ -d "$1/model" ]; }
read -r -a EE <<<"$E"
if [ "$NPROC" -gt 1 ]; then
  DDP=(torchrun --standalone --nproc_per_node "$NPROC" -m ee_vla.cli)
else
  DDP=("${EE[@]}")
fi
read -r -a TASK_LIST <<<"$TASKS"
read -r -a DAGGER_TASKS <<<"${DAGGER_TASKS:-ee_vla/Push-v0 ee_vla/Place-v0 ee_vla/PickCube-v0 ee_vla/Reach-v0}"  # long ones first
ENVS=()
for t in "${TASK_LIST[@]}"; do ENVS+=(--env "$t"); done

BASE=(--weight-decay 0.01 --val-fraction 0.05 --dtype bfloat16 --save-dtype bfloat16 --log-every 50
  --eval-samples 256)
COMMON=(--aug-shift 0.03 "${BASE[@]}")  # every stage but the last: a random shift of up to 3% of the image side
# BC on fresh scenes with every object asked about (every_object, fresh_demos, dagger)
SCENE_Q=(--grounding-source scenes --grounding-questions all --input-noise 0.5 --warmup-steps 100)
FT=("${SCENE_Q[@]}" "${COMMON[@]}")
AUG=(--instructions augmented)  # varied wording: the templates and the training paraphrases
NEG=(--instructions augmented_negated)  # the varied wording and the phrasings with negations
OTHER="ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Place-v0"  # the suite's tasks but Push

collect_on() {  # dir, episodes per task, seed, "task ...", extra flags
  [ "$DRY_RUN" != 1 ] && [ -f "$1/demos.hdf5" ] && return
  local out="$1" n="$2" seed="$3" tasks
  read -r -a tasks <<<"$4"
  shift 4
  run "${EE[@]}" collect --env "${tasks[@]}" --episodes "$n" --out "$out" --seed "$seed" --image-size 128 \
    --num-workers "$(nproc)" "$@"
}

collect() {  # dir, demonstrations per task, seed, extra flags: every task of TASKS
  local out="$1" n="$2" seed="$3"
  shift 3
  collect_on "$out" "$n" "$seed" "$TASKS" "$@"
}

fresh_scenes() {  # the explored scenes both the scenes and the chunk8 stage train on (varied wording)
  collect_on "$DATA/push_scenes" 3000 500000 ee_vla/Push-v0 --explore-steps 5 "${AUG[@]}"
  collect_on "$DATA/other_scenes" 800 600000 "$OTHER" --explore-steps 5 "${AUG[@]}"
}

distill_from() {  # teacher, run prefix, data, device, extra flags: the teacher's trajectories, then the student
  local teacher="$1" pre="$2" data="$3" device="$4"
  shift 4
  if [ "$DRY_RUN" = 1 ] || ! ls "$RUNS/${pre}trajectories/trajectories"/part-*.safetensors >/dev/null 2>&1; then
    run "${EE[@]}" distill --data "$data" --out-dir "$RUNS/${pre}trajectories" --teacher "$teacher" \
      --collect-only --inits warm prompt --collect-batch-size 256 --seed "$SEED" --device "$device"
  fi
  done_model "$RUNS/${pre}ceed" && return
  run "${EE[@]}" distill --out-dir "$RUNS/${pre}ceed" --mixed-label-threshold 0.1 --data "$data" \
    --teacher "$teacher" --trajectories "$RUNS/${pre}trajectories/trajectories" --steps 400 --batch-size 32 \
    --warmup-steps 20 --consistency-weight 1 --save-dtype bfloat16 --seed "$SEED" --log-every 20 \
    --save-every 200 --eval-every 200 --eval-samples 32 --device "$device" "$@"
}

ship() {  # model dir: copied to $DEST
  run rm -rf "$DEST"
  run mkdir -p "$DEST"
  run cp -r "$1/." "$DEST/"
  [ "$DRY_RUN" = 1 ] || du -sh "$DEST"
}

on_policy() {  # policy, out prefix, seed, minutes, extra flags: `ee-vla dagger`, the tasks split over NPROC GPUs
  local policy="$1" out="$2" seed="$3" minutes="$4" pids=() g i
  shift 4
  for ((g = 0; g < NPROC; g++)); do
    [ "$DRY_RUN" != 1 ] && [ -f "$out-g$g/demos.hdf5" ] && continue
    local args=()
    for ((i = g; i < ${#DAGGER_TASKS[@]}; i += NPROC)); do args+=(--env "${DAGGER_TASKS[i]}"); done
    [ -n "$minutes" ] && args+=(--max-minutes "$minutes")
    run env CUDA_VISIBLE_DEVICES="$g" "${EE[@]}" dagger --policy "$policy" "${args[@]}" --episodes 250 \
      --seed "$seed" --num-envs "$NUM_ENVS" --max-episode-steps 60 --out "$out-g$g" --overwrite --no-progress "$@" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

if has collect; then
  collect "$DATA/suite" 1500 "$SEED"
  collect "$DATA/suite150" 150 "$SEED"
  collect "$DATA/suite2500" 2500 $((SEED + 4))
fi

if has pretrain && ! done_model "$RUNS/grounding"; then
  run "${EE[@]}" train --data "$DATA/suite" --out-dir "$RUNS/grounding" --preset small --chunk-size 3 --use-proprio \
    --grounding-fraction 1 --grounding-source scenes --steps 3000 --stop-after 2250 --lr 6e-4 --warmup-steps 200 \
    --save-every 250 --eval-every 250 --batch-size 512 --seed "$SEED" --num-workers "$WORKERS" "${COMMON[@]}"
fi

if has bc; then
  done_model "$RUNS/bc1" || run "${EE[@]}" train --data "$DATA/suite" --out-dir "$RUNS/bc1" \
    --init-from "$RUNS/grounding/model" --grounding-fraction 0.5 --grounding-source scenes --input-noise 0.5 \
    --steps 2400 --lr 3e-4 --warmup-steps 100 --save-every 250 --eval-every 400 --batch-size 512 --seed "$SEED" \
    --num-workers "$WORKERS" "${COMMON[@]}"
  done_model "$RUNS/bc" || run "${EE[@]}" train --data "$DATA/suite" --out-dir "$RUNS/bc" \
    --init-from "$RUNS/bc1/model" --grounding-fraction 0.3 --grounding-source scenes --input-noise 0.5 \
    --steps 2800 --lr 3e-4 --warmup-steps 100 --save-every 250 --eval-every 400 --batch-size 512 --seed "$SEED" \
    --num-workers "$WORKERS" "${COMMON[@]}"
fi

if has first_student; then
  distill_from "$RUNS/bc/model" first_ "$DATA/suite150" cpu --ar-weight 1 --lr 1e-4 --label-smoothing 0.1
fi

if has every_object; then
  EO=("${FT[@]}" --save-every 250 --eval-every 500 --batch-size $((1024 / NPROC))
    --num-workers $((WORKERS / NPROC > 0 ? WORKERS / NPROC : 1)))
  done_model "$RUNS/ft1" || run "${DDP[@]}" train --data "$DATA/suite" --out-dir "$RUNS/ft1" \
    --init-from "$RUNS/first_ceed/model" --grounding-fraction 0.5 --steps 2000 --lr 3e-4 --seed "$SEED" "${EO[@]}"
  done_model "$RUNS/ft2" || run "${DDP[@]}" train --data "$DATA/suite" --out-dir "$RUNS/ft2" \
    --init-from "$RUNS/ft1/model" --grounding-fraction 0.6 --steps 2100 --lr 3e-4 --seed $((SEED + 1)) "${EO[@]}"
  done_model "$RUNS/ft4" || run "${DDP[@]}" train --data "$DATA/suite2500" --out-dir "$RUNS/ft4" \
    --init-from "$RUNS/ft2/model" --grounding-fraction 0.5 --steps 2000 --stop-after 1900 --lr 1e-4 \
    --seed $((SEED + 4)) "${EO[@]}"
fi

# one-process BC of the later stages: 512 per step, grounding fraction 0.5, lr 1e-4; BC1 adds
# the 2000-step schedule of fresh_demos and dagger
BC_STEP=(--grounding-fraction 0.5 --lr 1e-4 --save-every 500 --eval-every 500 --batch-size 512
  --num-workers "$WORKERS")
BC=("${FT[@]}" "${BC_STEP[@]}")
BC1=("${BC[@]}" --steps 2000)

if has fresh_demos; then
  collect "$DATA/suite_s6" 1500 6
  done_model "$RUNS/ft7" || run "${EE[@]}" train --data "$DATA/suite_s6" --out-dir "$RUNS/ft7" \
    --init-from "$RUNS/ft4/model" --seed 6 "${BC1[@]}"
fi

if has dagger; then
  read -r -a round_seeds <<<"$ROUND_SEEDS"
  read -r -a minutes <<<"$DAGGER_MINUTES"
  on_policy_seeds=("207000" "208000 209000" "210000 211000")  # one on-policy set per seed
  stop=(2000 1900 1700)                                      # where each round's 2000-step schedule ended
  prev="$RUNS/ft7/model"
  for r in 1 2 3; do
    demo_seed=$((6 + r))
    collect "$DATA/suite_s$demo_seed" 1500 "$demo_seed"
    sets=("$DATA/suite_s$demo_seed")
    for dseed in ${on_policy_seeds[r - 1]}; do
      on_policy "$prev" "$DATA/dagger_r${r}_$dseed" "$dseed" "${minutes[r - 1]:-}"
      for ((g = 0; g < NPROC; g++)); do sets+=("$DATA/dagger_r${r}_$dseed-g$g"); done
    done
    done_model "$RUNS/dagger$r" || run "${EE[@]}" train --data "${sets[@]}" --out-dir "$RUNS/dagger$r" \
      --init-from "$prev" --seed "${round_seeds[r - 1]}" --stop-after "${stop[r - 1]}" "${BC1[@]}"
    prev="$RUNS/dagger$r/model"
  done
fi

# the shipped distillation settings
STUDENT=(--ar-weight 3 --lr 5e-5 --label-smoothing 0 --freeze-vision)

if has distill; then
  distill_from "$RUNS/dagger3/model" "" "$DATA/suite150" cpu "${STUDENT[@]}"
  has paraphrase || ship "$RUNS/ceed/model"
fi

if has paraphrase; then
  collect "$DATA/suite_aug12" 750 12 "${AUG[@]}"
  collect "$DATA/suite150_aug" 150 0 "${AUG[@]}"
  on_policy "$RUNS/ceed/model" "$DATA/dagger_aug_212000" 212000 "${PARAPHRASE_MINUTES:-2}" "${AUG[@]}"
  sets=("$DATA/suite_aug12")
  for ((g = 0; g < NPROC; g++)); do sets+=("$DATA/dagger_aug_212000-g$g"); done
  done_model "$RUNS/para" || run "${EE[@]}" train --data "${sets[@]}" --out-dir "$RUNS/para" \
    --init-from "$RUNS/ceed/model" --seed 7 "${BC[@]}" --steps 1500
  distill_from "$RUNS/para/model" para_ "$DATA/suite150_aug" "${DISTILL_DEVICE:-cuda}" "${STUDENT[@]}"
  has scenes || ship "$RUNS/para_ceed/model"
fi

if has scenes; then
  collect_on "$DATA/push_s16" 700 16 ee_vla/Push-v0 "${AUG[@]}"
  collect_on "$DATA/other_s16" 250 16 "$OTHER" "${AUG[@]}"
  fresh_scenes
  collect "$DATA/suite150_aug" 150 0 "${AUG[@]}"
  if [ "$DRY_RUN" = 1 ] || [ ! -f "$DATA/dagger_push_216000/demos.hdf5" ]; then
    run "${EE[@]}" dagger --policy "$RUNS/para_ceed/model" --env ee_vla/Push-v0 --episodes 400 \
      --max-minutes "${SCENES_MINUTES:-1.3}" --seed 216000 --num-envs 10 --max-episode-steps 60 \
      --out "$DATA/dagger_push_216000" --overwrite --no-progress --dtype bfloat16 "${AUG[@]}"
  fi
  done_model "$RUNS/scenes" || run "${EE[@]}" train --data "$DATA/push_s16" "$DATA/dagger_push_216000" \
    "$DATA/other_s16" "$DATA/push_scenes" "$DATA/other_scenes" --out-dir "$RUNS/scenes" \
    --init-from "$RUNS/para_ceed/model" --seed 16 "${BC[@]}" --steps 1000
  distill_from "$RUNS/scenes/model" scenes_ "$DATA/suite150_aug" "${DISTILL_DEVICE:-cpu}" "${STUDENT[@]}"
  has chunk8 || ship "$RUNS/scenes_ceed/model"
fi

if has chunk8; then
  collect "$DATA/suite_aug14" 750 14 --instructions augmented
  fresh_scenes
  done_model "$RUNS/chunk8" || run "${EE[@]}" train --data "$DATA/suite_aug14" "$DATA/push_scenes" \
    "$DATA/other_scenes" --out-dir "$RUNS/chunk8" --init-from "$RUNS/scenes_ceed/model" --chunk-size 8 \
    --seed 14 "${BC[@]}" --steps 1500
  has noshift || ship "$RUNS/chunk8/model"
fi

# The round of the last two stages, into $RUNS/NAME: 750 fresh Push demonstrations and 400 of each
# other task (seed SEED), fresh scenes (3000 Push from PUSH_SCENES, 800 of each other task from
# OTHER_SCENES), all worded by the flags given; BC from INIT on them without the random shift,
# keeping an average of the weights (1000 steps, seed SEED).
fine_tune_round() {  # name, init model dir, seed, Push scene seed, other scene seed, wording flags
  local name="$1" init="$2" seed="$3" push_scenes="$4" other_scenes="$5"
  shift 5
  local sets=("$DATA/push$seed" "$DATA/other$seed" "$DATA/push_scenes$seed" "$DATA/other_scenes$seed")
  collect_on "${sets[0]}" 750 "$seed" ee_vla/Push-v0 "$@"
  collect_on "${sets[1]}" 400 "$seed" "$OTHER" "$@"
  collect_on "${sets[2]}" 3000 "$push_scenes" ee_vla/Push-v0 --explore-steps 5 "$@"
  collect_on "${sets[3]}" 800 "$other_scenes" "$OTHER" --explore-steps 5 "$@"
  done_model "$RUNS/$name" || run "${EE[@]}" train --data "${sets[@]}" --out-dir "$RUNS/$name" \
    --init-from "$init" --chunk-size 8 --seed "$seed" "${SCENE_Q[@]}" "${BASE[@]}" "${BC_STEP[@]}" \
    --aug-shift 0 --ema-decay 0.998 --steps 1000
}

if has noshift; then
  fine_tune_round noshift "$RUNS/chunk8/model" 23 520000 620000 "${AUG[@]}"
  has negated || ship "$RUNS/noshift/model"
fi

if has negated; then
  fine_tune_round negated "$RUNS/noshift/model" 25 530000 630000 "${NEG[@]}"
  ship "$RUNS/negated/model"
fi
