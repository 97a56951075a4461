"""Can a from-scratch ee_vla network learn to localise? A synthetic check, no simulator needed.

Each sample is a grey image with one red 8 px square at a random place; the prompt asks for it and
the answer is two action-block tokens, the square's x and y binned over the image. With
`--distractors K` the image holds K + 1 squares of different colours, the prompt names one
("find the green square"), and only that one is the answer: the binding of a word to one object
among several, which the suite's tasks need. Every batch is
fresh, so the training loss is already a held-out loss. Printed every `--every` steps: the loss, the
mean |bin error| of the greedy answer, and the mean probability of the right bin and of the argmax
bin. A network that finds the square but not *which patch* it is in puts similar mass on a few
bins one patch apart: p(target) and p(argmax) stay close while the bin error stays near chance
(that is what session 2 measured, docs/training.md).

    python scripts/localization_probe.py --preset tiny --steps 3000 --lr 1e-3
    python scripts/localization_probe.py --distractors 2 --stem conv      # the convolutional vision stem
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ee_vla.models.vla import VLA
from ee_vla.training.losses import WindowLM, ar_loss

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 220, 0),
    "magenta": (230, 0, 230),
    "cyan": (0, 220, 220),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=None)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pos-init", default="sincos", choices=["sincos", "random"])
    ap.add_argument("--stem", default="patch", choices=["patch", "conv"], help="vision stem (VLASpec.vision_stem)")
    ap.add_argument("--distractors", type=int, default=0, help="other coloured squares in each image")
    ap.add_argument(
        "--colours", type=int, default=len(COLOURS), help="colours drawn from (1: always red, session 3's task)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    if not 1 <= args.colours <= len(COLOURS):
        ap.error(f"--colours must be in 1..{len(COLOURS)}")
    if not 0 <= args.distractors < args.colours:
        ap.error(f"--distractors must be in 0..{args.colours - 1} (one colour per square)")
    torch.manual_seed(args.seed)
    prompts = [f"find the {name} square" for name in COLOURS]
    vla = VLA.create(
        args.preset,
        chunk_size=1,
        corpus=prompts,
        patch_size=args.patch_size,
        seed=args.seed,
        vision_pos_init=args.pos_init,
        vision_stem=args.stem,
    )
    vla.model.to(args.device)
    S, side = vla.image_size, 8
    net = WindowLM(vla.model).train()
    lo, hi = vla.action_range
    rng = np.random.default_rng(args.seed)

    names = list(COLOURS)[: args.colours]

    def batch(n: int):
        img = np.full((n, S, S, 3), 180, np.uint8)
        xy = np.zeros((n, 2), np.int64)
        asked = []
        for i in range(n):
            colours = rng.choice(len(names), args.distractors + 1, replace=False)  # colours[0] is asked for
            placed: list[np.ndarray] = []
            while len(placed) < len(colours):  # squares do not overlap
                p = rng.integers(0, S - side, 2)
                if all(np.abs(p - q).max() >= side for q in placed):
                    placed.append(p)
            for c, (x, y) in zip(colours, placed, strict=True):
                img[i, y : y + side, x : x + side] = COLOURS[names[c]]
            xy[i] = placed[0]
            asked.append(prompts[colours[0]])
        target = torch.as_tensor(lo + xy * 255 // (S - side - 1), device=args.device)
        return vla.build_inputs(img, asked), target

    def forward(inputs, target):
        return net(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], target[:, :-1])

    opt = torch.optim.AdamW(vla.model.parameters(), lr=args.lr, weight_decay=0.01)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs, target = batch(args.batch_size)
        loss = ar_loss(forward(inputs, target), target, vla.action_range)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vla.model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                inputs, target = batch(256)
                p = forward(inputs, target)[..., lo : hi + 1].float().softmax(-1)
                err = (p.argmax(-1) + lo - target).abs().float().mean(0)
                p_tgt = p.gather(-1, (target - lo)[..., None]).mean()
            print(
                f"step {step:5d}  loss {loss.item():.3f}  |bin err| x {err[0]:.1f} y {err[1]:.1f} "
                f"(chance ~85)  p(target) {p_tgt:.3f}  p(argmax) {p.max(-1).values.mean():.3f}  "
                f"{time.perf_counter() - t0:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
