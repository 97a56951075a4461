"""Instruction sets of the tabletop tasks: the training templates, paraphrases for training, and
held-out paraphrases.

Each task draws its instruction from five templates (`PICK_TEMPLATES`, ...); collection, DAgger and
training see those by default. `HELD_OUT` holds five other phrasings per task, with the same
meaning and the same object (and plate) names, that no training data contains (a test checks it):
an env made with `instructions="held_out"` asks for the same task in words the policy has not
seen, for measuring how well it follows paraphrases:

    ee-vla eval --policy P --env ee_vla/PickCube-v0 --env-kwargs instructions held_out

`HELD_OUT_2` (`instructions="held_out_2"`) is a second such set, five more phrasings per task that
lean on constraints and negations ("don't grab it", "without pushing it", "never raising it").

`AUGMENT` holds twenty more phrasings per task for training with paraphrases, disjoint from both
held-out sets and avoiding their distinctive wording (a test checks both): an env made with
`instructions="augmented"` draws uniformly from the training templates and these, so data
collected with it teaches other words while the held-out set stays a fair test:

    ee-vla collect --env ee_vla/PickCube-v0 --instructions augmented ...

`NEGATED` holds ten phrasings per task that add a constraint or a negation of another task's action
("push the {obj} to the white circle, do not lift it", "reach the {obj}, do not grasp it"), under the
same rules and one more: no word that a held-out phrasing of any task uses and no training template
does ("without", "don't", "never" among them), so the held-out sets' negations stay unseen words.
`instructions="augmented_negated"` draws uniformly from the templates, `AUGMENT` and these:

    ee-vla collect --env ee_vla/Push-v0 --instructions augmented_negated ...

The held-out template is chosen by the same random draw as the training one, and the augmented
choice by a draw that leaves the scene's random stream untouched, so a seed gives the same scene
under every set and only the words differ.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

HELD_OUT: dict[str, tuple[str, ...]] = {
    "reach": (
        "bring the gripper over to the {obj}",
        "touch the {obj} with the gripper",
        "position the gripper at the {obj}",
        "head for the {obj}",
        "get the gripper next to the {obj}",
    ),
    "pick_cube": (
        "take the {obj} off the table",
        "get hold of the {obj} and raise it",
        "hold the {obj} up in the air",
        "lift up the {obj} from the table",
        "grab the {obj} and hold it up",
    ),
    "place": (
        "transfer the {obj} to the {plate}",
        "drop the {obj} onto the {plate}",
        "carry the {obj} over to the {plate}",
        "stack the {obj} on top of the {plate}",
        "rest the {obj} on the {plate}",
    ),
    "push": (
        "nudge the {obj} into the white circle",
        "push the {obj} until it is inside the circle",
        "get the {obj} onto the white circle without lifting it",
        "drive the {obj} over to the circle",
        "slide the {obj} to the target circle",
    ),
}
"""Per task, phrasings that training never uses (same placeholders as its templates)."""


HELD_OUT_2: dict[str, tuple[str, ...]] = {
    "reach": (
        "hover near the {obj}",
        "don't grab the {obj}, just go to the {obj}",
        "aim for the {obj}",
        "reach the {obj} but leave the {obj} in place",
        "line the gripper up with the {obj}",
    ),
    "pick_cube": (
        "hoist the {obj}",
        "pick up the {obj} and don't let it fall",
        "the {obj} needs to come up off the table",
        "lift the {obj} without pushing it away",
        "raise the {obj} into the air",
    ),
    "place": (
        "load the {obj} onto the {plate}",
        "put the {obj} on the {plate} and don't drop it on the table",
        "the {plate} is where the {obj} should end up",
        "set the {obj} down on the {plate} without pushing it",
        "relocate the {obj} to the {plate}",
    ),
    "push": (
        "bump the {obj} forward until it reaches the white circle",
        "push the {obj} to the white circle but don't grab it",
        "hold the gripper low while pushing the {obj} onto the circle",
        "move the {obj} to the white circle, never raising it",
        "press the {obj} over to the circle",
    ),
}
"""A second held-out set per task, written with constraints and negations ("don't", "without",
"never") as well as new verbs; like `HELD_OUT`, no training data contains its phrasings or the words
only it uses (a test checks both)."""


AUGMENT: dict[str, tuple[str, ...]] = {
    "reach": (
        "move to the {obj}",
        "approach the {obj}",
        "travel to the {obj}",
        "reach toward the {obj}",
        "steer the gripper to the {obj}",
        "find the {obj} and reach it",
        "move your gripper close to the {obj}",
        "reach out to the {obj}",
        "please reach the {obj}",
        "go reach the {obj} now",
        "move the gripper toward the {obj}",
        "the gripper should go to the {obj}",
        "could you reach for the {obj}",
        "put the gripper by the {obj}",
        "guide the gripper to the {obj}",
        "go to where the {obj} sits",
        "your goal is the {obj}, reach it",
        "carefully approach the {obj}",
        "I want the gripper beside the {obj}",
        "make your way to the {obj}",
    ),
    "pick_cube": (
        "lift the {obj} up",
        "grasp the {obj} and raise it",
        "seize the {obj} and lift it",
        "elevate the {obj}",
        "collect the {obj} and lift it",
        "grip the {obj} and pull it upward",
        "lift the {obj} high",
        "pick the {obj} up and keep it raised",
        "please pick up the {obj}",
        "lift the {obj} off the table",
        "pick up the {obj} now",
        "could you lift the {obj}",
        "the {obj} should be lifted up",
        "grasp the {obj} then lift it up",
        "raise the {obj} up high",
        "pick the {obj} up off the table",
        "clutch the {obj} and raise it",
        "carefully lift the {obj}",
        "I want the {obj} lifted",
        "go pick up the {obj}",
    ),
    "place": (
        "put the {obj} onto the {plate}",
        "lay the {obj} on the {plate}",
        "deliver the {obj} to the {plate}",
        "set the {obj} on the {plate}",
        "move the {obj} onto the {plate}",
        "bring the {obj} to the {plate}",
        "pick the {obj} up and set it on the {plate}",
        "position the {obj} on the {plate}",
        "please put the {obj} on the {plate}",
        "place the {obj} on the {plate}",
        "the {obj} goes on the {plate}",
        "could you move the {obj} to the {plate}",
        "set the {obj} onto the {plate}",
        "the {obj} belongs on the {plate}, put it there",
        "lift the {obj} and set it down on the {plate}",
        "place the {obj} so it sits on the {plate}",
        "make sure the {obj} ends up on the {plate}",
        "carefully put the {obj} on the {plate}",
        "I want the {obj} on the {plate}",
        "pick the {obj} up and lay it on the {plate}",
    ),
    "push": (
        "push the {obj} to the circle",
        "slide the {obj} to the white circle",
        "shove the {obj} to the white target",
        "push the {obj} across to the white circle",
        "move the {obj} onto the circle by pushing",
        "slide the {obj} along the table to the circle",
        "glide the {obj} onto the white circle",
        "push the {obj} so it ends on the white circle",
        "please push the {obj} to the white circle",
        "push the {obj} along the table to the circle",
        "the {obj} should end up on the white circle, push it there",
        "could you slide the {obj} to the circle",
        "shove the {obj} across the table onto the white circle",
        "keep the {obj} on the table and push it to the circle",
        "slide the {obj} toward the white circle",
        "push the {obj} toward the target",
        "carefully push the {obj} onto the circle",
        "I want the {obj} pushed onto the white circle",
        "scoot the {obj} to the white circle",
        "make sure the {obj} ends up on the circle by pushing it",
    ),
}
"""Per task, phrasings for training with paraphrases (`instructions="augmented"`); none is held out."""


NEGATED: dict[str, tuple[str, ...]] = {
    "reach": (
        "reach the {obj}, do not grasp it",
        "move the gripper to the {obj}, do not lift it",
        "reach the {obj} and do not push it",
        "go to the {obj}, no pushing",
        "approach the {obj}, do not move it",
        "reach for the {obj}, no grasping",
        "go to the {obj} and do not close the gripper",
        "do not lift the {obj}, only reach it",
        "move to the {obj} and do not grasp it",
        "reach the {obj}, not any other object",
    ),
    "pick_cube": (
        "pick up the {obj} and do not push it",
        "lift the {obj}, do not slide it",
        "grasp the {obj} and lift it, do not shove it",
        "pick the {obj} up, do not only reach it",
        "lift the {obj}, do not only slide it",
        "do not keep the {obj} on the table, lift it",
        "raise the {obj} off the table and do not release it",
        "pick up the {obj} rather than sliding it",
        "lift the {obj}, no sliding",
        "do not push the {obj}, pick it up",
    ),
    "place": (
        "put the {obj} on the {plate}, do not push it there",
        "place the {obj} onto the {plate} and do not slide it",
        "set the {obj} down on the {plate}, not beside it",
        "move the {obj} to the {plate} by picking it up, not by sliding it",
        "do not only lift the {obj}, put it on the {plate}",
        "put the {obj} on the {plate} rather than sliding it",
        "pick up the {obj} and put it on the {plate}, do not shove it",
        "place the {obj} onto the {plate}, no sliding",
        "do not slide the {obj}, set it down on the {plate}",
        "put the {obj} on the {plate} and not on any other plate",
    ),
    "push": (
        "push the {obj} to the white circle, do not lift it",
        "slide the {obj} onto the white circle and do not pick it up",
        "do not grasp the {obj}, push it onto the target",
        "shove the {obj} onto the circle, no grasping",
        "push the {obj} onto the target rather than picking it up",
        "move the {obj} to the white circle by pushing it, not by picking it up",
        "do not pick up the {obj}, slide it to the white circle",
        "slide the {obj} to the white circle, do not raise it",
        "push the {obj} to the white circle and do not close the fingers",
        "keep the {obj} down and push it to the circle",
    ),
}
"""Per task, training phrasings that add a constraint or a negation ("do not lift it", "no
pushing", "rather than sliding it"), for teaching a policy (`instructions="augmented_negated"`)
that a negated verb names what not to do. None is held out, and none uses a word of a held-out
phrasing of any task that no training template uses (a test checks both)."""


HELD_OUT_SETS = {"held_out": HELD_OUT, "held_out_2": HELD_OUT_2}
"""The held-out instruction sets by name: evaluation only."""

AUGMENTED_SETS = {"augmented": (AUGMENT,), "augmented_negated": (AUGMENT, NEGATED)}
"""The training sets that draw from the templates and paraphrases, by name: the paraphrase lists each adds."""

TRAINING_SETS = ("train", *AUGMENTED_SETS)
"""The instruction sets training data may be recorded with (collection, DAgger): never held_out."""

INSTRUCTION_SETS = ("train", *HELD_OUT_SETS, *AUGMENTED_SETS)
"""`instructions` of the tabletop envs: the training templates | the held-out paraphrases | the second
held-out set | the training templates and `AUGMENT`'s paraphrases | those and `NEGATED`'s."""


def check_training_set(which: str, owner: str, env_ids: Sequence[str] = ()) -> str:
    """`which` if training data of `env_ids` may use it (`TRAINING_SETS`; another set than train
    only for the ee_vla suite, whose tasks have instruction sets); else a ValueError naming `owner`."""
    if which not in TRAINING_SETS:
        why = " (held-out paraphrases never go into training data)" if which in HELD_OUT_SETS else ""
        raise ValueError(f"{owner} must be one of {', '.join(TRAINING_SETS)}{why}, got {which!r}")
    if which != "train" and any(e.startswith("ee_vla/MetaWorld") for e in env_ids):
        raise ValueError(f"{owner} is only supported by the ee_vla suite, not Meta-World envs")
    return which


def choose_template(
    train: tuple[str, ...], task: str, index: int, which: str, rng: np.random.Generator | None = None
) -> str:
    """The template of draw `index` from `train` (`which="train"`), from the task's held-out set, or
    (`which="augmented"`, `"augmented_negated"`) one of `train` and the task's paraphrases of that
    set (`AUGMENTED_SETS`) chosen uniformly by a draw from a copy of `rng`, so that `rng` itself,
    which places the scene, is not advanced."""
    if which == "train":
        return train[index]
    if which in HELD_OUT_SETS:
        held = HELD_OUT_SETS[which][task]
        return held[index % len(held)]
    if which in AUGMENTED_SETS:
        if rng is None:
            raise ValueError(f"instructions={which!r} needs the episode's random generator")
        options = (*train, *(t for extra in AUGMENTED_SETS[which] for t in extra[task]))
        seed = int(copy.deepcopy(rng).integers(2**62)) + index
        return options[int(np.random.default_rng(seed).integers(len(options)))]
    raise ValueError(f"instructions must be one of {', '.join(INSTRUCTION_SETS)}, got {which!r}")
