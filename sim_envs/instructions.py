"""Instruction sets of the tabletop tasks: the training templates and held-out paraphrases.

Each task draws its instruction from five templates (`PICK_TEMPLATES`, ...); collection, DAgger and
training only ever see those. `HELD_OUT` holds five other phrasings per task, with the same
meaning and the same object (and plate) names, that no training data contains (a test checks it):
an env made with `instructions="held_out"` asks for the same task in words the policy has not
seen, for measuring how well it follows paraphrases:

    ee-vla eval --policy P --env ee_vla/PickCube-v0 --env-kwargs instructions held_out

The held-out template is chosen by the same random draw as the training one, so a seed gives the
same scene under both sets and only the words differ.
"""

from __future__ import annotations

INSTRUCTION_SETS = ("train", "held_out")
"""`instructions` of the tabletop envs: the training templates | the held-out paraphrases."""

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


def choose_template(train: tuple[str, ...], task: str, index: int, which: str) -> str:
    """The template of draw `index` from `train` (`which="train"`) or from the task's held-out set."""
    if which == "train":
        return train[index]
    if which == "held_out":
        held = HELD_OUT[task]
        return held[index % len(held)]
    raise ValueError(f"instructions must be one of {', '.join(INSTRUCTION_SETS)}, got {which!r}")
