"""Which part of ee_vla/Push-v0 a policy fails at: the scripted expert takes over one part at a time.

    python scripts/push_diagnosis.py --policy ee_vla/checkpoints/default
    python scripts/push_diagnosis.py --policy P --episodes 80 --modes policy expert-approach --json push.json
    python scripts/push_diagnosis.py --policy P --trace 100047      # one episode, step by step

Every mode runs the same seeds. The push expert's branch names the part of the task each state is in
(`PushExpert.phase`: "push" while the pusher is low behind the object and near the object-to-circle
line, else approaching, going round or backing off). Modes:

    policy               the policy alone
    expert               the expert alone (the reference)
    expert-approach      the expert until the state first reaches "push", the policy from then on
    expert-recovery      the policy until the first "push"; after it, the expert outside "push"
    expert-outside-push  the expert in every state outside "push" (the policy only pushes)
    expert-push          the expert in "push" (the policy everywhere else)
    expert-yaw           the policy, with the expert's rotation about the vertical axis (dyaw) in
                         place of its own in every state

Per mode: success with its 95% interval, the failed episodes' outcomes (`info["outcome"]`), and how
often a push was left (a "push" state followed by another). For the `policy` mode, where the pusher
first came down near the table (the TCP below `LANDING_Z`), measured from the object along the push
line ("behind") and across it: success by that distance, beside the distance the expert descends to
(`PushExpert.BEHIND`); and success by how far the gripper's yaw was from the push direction (modulo a
half turn: the closed fingers push with either flat side) when it came down; and, for the episodes
that succeeded and those that failed, how far from the expert's descend point the pusher came down
along the scene camera's view on the table ("depth") and across it ("lateral"); and how far the
policy's moves on the table while pushing point from the expert's for the same states (the angle
between the two (dx, dy)), and from the object-to-circle line, beside the expert's, which steers the
pusher back onto the line; and the share of the policy's steps in each of the expert's phases, for
succeeded and failed episodes. docs/training.md,
"Where Push fails" and "Chunks of 8 actions", reads these tables.

`--trace SEED` prints one episode instead, a line per step: the expert's phase for the state, who
acted, where the TCP is against the object (behind it along the push line, across the line, height),
the gripper's yaw error, the executed action and the expert's action for the same state.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path

import numpy as np

ENV_ID = "ee_vla/Push-v0"
MODES = ("policy", "expert", "expert-approach", "expert-recovery", "expert-outside-push", "expert-push", "expert-yaw")
LANDING_Z = 0.055
"""The pusher has come down once its TCP is below this height (m): the object's top is at 0.04."""
OFF_LINE_CM = 3.0
OFF_LINE = f"off the line (>= {OFF_LINE_CM:g} cm across)"
BEHIND_BINS_CM = (3.0, 4.0, 5.0, 6.0)
MIN_MOVE = 0.05
"""An action's (dx, dy) shorter than this (normalised units) has no heading."""
HEADING_OFF_DEG = 15.0
YAW_BINS_DEG = (10.0, 20.0)


def expert_acts(mode: str, phase: str, pushed: bool) -> bool:
    """Whether the expert, not the policy, acts in a state of `phase` under `mode`; `pushed`: the
    episode has been in "push" before this step."""
    if mode == "policy":
        return False
    if mode == "expert":
        return True
    if mode == "expert-approach":
        return not pushed and phase != "push"
    if mode == "expert-recovery":
        return pushed and phase != "push"
    if mode == "expert-outside-push":
        return phase != "push"
    if mode == "expert-push":
        return phase == "push"
    if mode == "expert-yaw":
        return False  # the policy acts; `run_episode` swaps in the expert's rotation
    raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")


def push_direction(state: dict) -> np.ndarray:
    """(2,): the unit vector from the object to the circle's centre on the table."""
    d = state["goal_xy"] - state["target_pos"][:2]
    return d / max(float(np.linalg.norm(d)), 1e-9)


def push_frame(state: dict) -> tuple[float, float]:
    """(behind, across) in m: the TCP's position relative to the object, along the object-to-circle
    line (positive behind the object, on the side away from the circle) and across it."""
    d = push_direction(state)
    rel = state["tcp_pos"][:2] - state["target_pos"][:2]
    return -float(rel @ d), float(rel @ np.array([-d[1], d[0]]))


def camera_axes(env) -> np.ndarray:
    """(2, 2): the scene camera's viewing direction projected on the table (unit; "depth") and the
    horizontal direction across it ("lateral"), as rows, in world x, y."""
    import mujoco

    base = env.unwrapped
    cam = mujoco.mj_name2id(base.model, mujoco.mjtObj.mjOBJ_CAMERA, base._camera.camera)
    view = -base.data.cam_xmat[cam].reshape(3, 3)[:2, 2]  # a camera looks along its -z axis
    view = view / max(float(np.linalg.norm(view)), 1e-9)
    return np.stack([view, np.array([-view[1], view[0]])])


def landing_offset(state: dict, axes: np.ndarray, behind: float) -> tuple[float, float]:
    """(depth, lateral) in m: where the TCP is against the point the expert descends to (`behind`
    m behind the object on the object-to-circle line), along the scene camera's `axes`."""
    aim = state["target_pos"][:2] - behind * push_direction(state)
    depth, lateral = axes @ (state["tcp_pos"][:2] - aim)
    return float(depth), float(lateral)


def yaw_error(state: dict) -> float:
    """|gripper yaw - push direction| in radians, modulo a half turn (in [0, pi/2])."""
    from sim_envs.tabletop import wrap_half_turn

    d = push_direction(state)
    return abs(wrap_half_turn(math.atan2(d[1], d[0]) - float(state["gripper_euler"][2])))


def heading_error(action: np.ndarray, reference: np.ndarray) -> float | None:
    """Degrees between two actions' moves on the table (dx, dy), or None when either is shorter than
    `MIN_MOVE` (a pause has no heading)."""
    a, b = np.asarray(action[:2], dtype=np.float64), np.asarray(reference[:2], dtype=np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < MIN_MOVE or nb < MIN_MOVE:
        return None
    return math.degrees(math.acos(float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))))


def run_episode(env, policy, expert, mode: str, seed: int, trace: list | None = None) -> dict:
    """One episode of `mode` from `seed`: success, outcome, pushes left, where the pusher came down,
    and for each step the policy pushed (state in "push"): the angles (deg) between its move on the
    table and the expert's, between its move and the object-to-circle line, between the expert's and
    the line, and the pusher's offset across the line (cm). `trace`, a list, receives one row per
    step (`TRACE_FIELDS`)."""
    from sim_envs.common import ACTION_NAMES
    from sim_envs.experts import PushExpert

    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    axes = camera_axes(env)
    info: dict = {}
    policy.reset()
    expert.reset()
    pushed = by_expert = False
    previous, exits, landing, landing_yaw, offset = None, 0, None, None, None
    pushes: list[list[float]] = []
    phases: collections.Counter = collections.Counter()
    yaw = ACTION_NAMES.index("dyaw")
    while True:
        state = base.privileged_state()
        behind, across = push_frame(state)
        phase, expert_action = expert.plan(state)
        if landing is None and state["tcp_pos"][2] < LANDING_Z:
            landing, landing_yaw = (behind, across), yaw_error(state)
            offset = landing_offset(state, axes, PushExpert.BEHIND)
        if expert_acts(mode, phase, pushed):
            action, by_expert = expert_action, True
        else:
            if by_expert:  # the policy takes over: a fresh chunk from this state
                policy.reset()
            action, by_expert = policy.select_action({**obs, "instruction": base.task_description}), False
            phases[phase] += 1
            if mode == "expert-yaw":
                action = np.array(action, dtype=np.float32)
                action[yaw] = expert_action[yaw]
            if phase == "push" and (deg := heading_error(action, expert_action)) is not None:
                line = push_direction(state)
                pushes.append([deg, heading_error(action, line), heading_error(expert_action, line), 100.0 * across])
        if trace is not None:
            trace.append(
                {
                    "step": len(trace),
                    "phase": phase,
                    "actor": "expert" if by_expert else "policy",
                    "behind_cm": 100.0 * behind,
                    "across_cm": 100.0 * across,
                    "z_cm": 100.0 * float(state["tcp_pos"][2]),
                    "yaw_error_deg": math.degrees(yaw_error(state)),
                    "action": [float(v) for v in action],
                    "expert_action": [float(v) for v in expert_action],
                }
            )
        exits += previous == "push" and phase != "push"
        previous, pushed = phase, pushed or phase == "push"
        obs, _, terminated, truncated, info = env.step(np.clip(action, -1.0, 1.0))
        if terminated or truncated:
            break
    return {
        "seed": seed,
        "success": bool(info.get("is_success")),
        "outcome": info.get("outcome"),
        "pushes_left": exits,
        "landing_cm": None if landing is None else [100.0 * v for v in landing],
        "landing_yaw_deg": None if landing_yaw is None else math.degrees(landing_yaw),
        "landing_camera_cm": None if offset is None else [100.0 * v for v in offset],
        "push_steps": pushes,
        "policy_phases": dict(phases),
    }


def landing_groups() -> list[str]:
    """The names of `landing_table`'s groups, in order: the bins of the distance behind the object
    (`BEHIND_BINS_CM`), then pushers that came down off the line, then those that never came down."""
    b = BEHIND_BINS_CM
    bins = [f"behind {lo:g}-{hi:g} cm" for lo, hi in zip(b[:-1], b[1:], strict=True)]
    return [f"behind < {b[0]:g} cm", *bins, f"behind >= {b[-1]:g} cm", OFF_LINE, "never came down"]


def landing_table(episodes: list[dict]) -> list[dict]:
    """Success of `episodes` grouped by where the pusher came down (see the module's doc)."""
    names = landing_groups()

    def group(ep: dict) -> str:
        if ep["landing_cm"] is None:
            return names[-1]
        if abs(ep["landing_cm"][1]) >= OFF_LINE_CM:
            return OFF_LINE
        return names[int(np.searchsorted(BEHIND_BINS_CM, ep["landing_cm"][0], side="right"))]

    return success_by(episodes, names, group)


def success_by(episodes: list[dict], names: list[str], group) -> list[dict]:
    """Episodes and successes per group, in the order of `names`; `group(episode)` names its group."""
    groups: dict[str, list[bool]] = {name: [] for name in names}
    for ep in episodes:
        groups[group(ep)].append(ep["success"])
    return [{"group": k, "episodes": len(v), "successes": int(sum(v))} for k, v in groups.items()]


def yaw_groups() -> list[str]:
    """The names of `yaw_table`'s groups, in order: bins of the yaw error (`YAW_BINS_DEG`), then
    pushers that never came down."""
    b = YAW_BINS_DEG
    bins = [f"yaw {lo:g}-{hi:g} deg off" for lo, hi in zip(b[:-1], b[1:], strict=True)]
    return [f"yaw < {b[0]:g} deg off", *bins, f"yaw >= {b[-1]:g} deg off", "never came down"]


def yaw_table(episodes: list[dict]) -> list[dict]:
    """Success of `episodes` grouped by the gripper's yaw error when the pusher came down."""
    names = yaw_groups()

    def group(ep: dict) -> str:
        deg = ep["landing_yaw_deg"]
        return names[-1] if deg is None else names[int(np.searchsorted(YAW_BINS_DEG, deg, side="right"))]

    return success_by(episodes, names, group)


def camera_error_table(episodes: list[dict]) -> list[dict]:
    """Succeeded and failed episodes whose pusher came down: how far from the expert's descend point
    it came down along the scene camera's view ("depth") and across it ("lateral"), mean |cm|."""
    rows = []
    for name, ok in (("succeeded", True), ("failed", False)):
        off = np.array([e["landing_camera_cm"] for e in episodes if e["success"] == ok and e["landing_camera_cm"]])
        off = off.reshape(-1, 2)
        mean = np.abs(off).mean(0) if len(off) else [float("nan")] * 2
        rows.append({"group": name, "episodes": len(off), "depth_cm": float(mean[0]), "lateral_cm": float(mean[1])})
    return rows


def heading_table(episodes: list[dict]) -> list[dict]:
    """Succeeded and failed episodes in which the policy pushed, over all their push steps: the
    median angle between the policy's move on the table and the expert's, the share of steps more
    than `HEADING_OFF_DEG` apart, the median angles of each move to the object-to-circle line (the
    expert's steers the pusher back onto it), and the median offset across the line."""
    rows = []
    for name, ok in (("succeeded", True), ("failed", False)):
        eps = [e for e in episodes if e["success"] == ok and e["push_steps"]]
        steps = np.array([p for e in eps for p in e["push_steps"]], dtype=np.float64).reshape(-1, 4)
        med = np.median(np.abs(steps), 0) if len(steps) else [float("nan")] * 4
        rows.append(
            {
                "group": name,
                "episodes": len(eps),
                "push_steps": len(steps),
                "median_deg": float(med[0]),
                "share_off": float((steps[:, 0] > HEADING_OFF_DEG).mean()) if len(steps) else float("nan"),
                "policy_to_line_deg": float(med[1]),
                "expert_to_line_deg": float(med[2]),
                "across_cm": float(med[3]),
            }
        )
    return rows


def phase_table(episodes: list[dict]) -> list[dict]:
    """Succeeded and failed episodes: the share of the steps the policy acted in that were in each
    of the expert's phases (`PushExpert.PHASES`), which says where a failed episode spent its time."""
    from sim_envs.experts import PushExpert

    rows = []
    for name, ok in (("succeeded", True), ("failed", False)):
        eps = [e for e in episodes if e["success"] == ok]
        counts = collections.Counter()
        for e in eps:
            counts.update(e["policy_phases"])
        total = sum(counts.values())
        share = {p: counts[p] / total if total else float("nan") for p in PushExpert.PHASES}
        rows.append({"group": name, "episodes": len(eps), "steps": total, "share": share})
    return rows


TRACE_FIELDS = ("step", "phase", "actor", "behind_cm", "across_cm", "z_cm", "yaw_error_deg", "action", "expert_action")
"""A `trace` row: the state before the step (the push expert's phase, the TCP in the push frame and
its height, the yaw error), who acted, the executed action and the expert's action for that state."""


def trace_table(rows: list[dict]) -> str:
    """`run_episode`'s trace as text: one line per step; actions as (dx, dy, dz, dyaw, gripper)."""
    from sim_envs.common import ACTION_NAMES

    cols = [ACTION_NAMES.index(k) for k in ("dx", "dy", "dz", "dyaw")] + [len(ACTION_NAMES) - 1]

    def act(a: list[float]) -> str:
        return " ".join(f"{a[i]:+.2f}" for i in cols)

    head = f"{'step':>4} {'phase':<9} {'actor':<6} {'behind':>7} {'across':>7} {'z':>5} {'yaw':>5}"
    units = f"{'':>27}{'cm':>5}{'cm':>8}{'cm':>6}{'deg':>6}"
    lines = [f"{head}  {'action (dx dy dz dyaw grip)':<34} expert's action", units]
    for r in rows:
        lines.append(
            f"{r['step']:>4} {r['phase']:<9} {r['actor']:<6} {r['behind_cm']:>7.1f} {r['across_cm']:>7.1f} "
            f"{r['z_cm']:>5.1f} {r['yaw_error_deg']:>5.0f}  {act(r['action']):<34} {act(r['expert_action'])}"
        )
    return "\n".join(lines)


def summarise(episodes: list[dict]) -> dict:
    from ee_vla.evaluation.report import wilson_interval

    n, k = len(episodes), sum(e["success"] for e in episodes)
    lo, hi = wilson_interval(k, n)
    outcomes = collections.Counter(e["outcome"] for e in episodes if not e["success"])
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "ci95": [lo, hi],
        "pushes_left_per_episode": float(np.mean([e["pushes_left"] for e in episodes])),
        "failed_outcomes": dict(outcomes.most_common()),
    }


def _load(policy_dir: Path, decoder: str, modes: list[str]):
    """The policy, a Push env rendering what it reads, and the env's expert; an unknown mode of
    `modes` fails first, before the model loads."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the env ids)
    from ee_vla.evaluation.config import EvalConfig
    from ee_vla.evaluation.rollout import env_kwargs_for
    from ee_vla.policy import VLAPolicy
    from sim_envs.experts import make_expert

    for mode in modes:
        expert_acts(mode, "push", False)
    policy = VLAPolicy.from_pretrained(policy_dir, decoder=decoder)
    env = gym.make(ENV_ID, **env_kwargs_for(ENV_ID, EvalConfig(policy=policy_dir, env=[ENV_ID]), policy))
    return policy, env, make_expert(env)


def trace_episode(policy_dir: Path, mode: str, seed: int, decoder: str = "ar") -> tuple[list[dict], dict]:
    """One episode of `mode` from `seed`, step by step: (`trace` rows, the episode's result)."""
    policy, env, expert = _load(policy_dir, decoder, [mode])
    rows: list[dict] = []
    try:
        episode = run_episode(env, policy, expert, mode, seed, trace=rows)
    finally:
        env.close()
    return rows, episode


def diagnose(
    policy_dir: Path,
    modes: list[str],
    episodes: int,
    seed: int,
    decoder: str = "ar",
    progress: bool = True,
) -> dict:
    from tqdm.auto import tqdm

    from sim_envs.experts import PushExpert

    policy, env, expert = _load(policy_dir, decoder, modes)
    results: dict = {"policy": str(policy_dir), "decoder": decoder, "seed": seed, "modes": {}}
    try:
        with tqdm(total=len(modes) * episodes, desc="push diagnosis", disable=not progress) as bar:
            for mode in modes:
                eps = []
                for i in range(episodes):
                    eps.append(run_episode(env, policy, expert, mode, seed + i))
                    bar.update()
                results["modes"][mode] = {**summarise(eps), "per_episode": eps}
                if mode == "policy":
                    results["landing"] = landing_table(eps)
                    results["landing_yaw"] = yaw_table(eps)
                    results["landing_camera"] = camera_error_table(eps)
                    results["push_heading"] = heading_table(eps)
                    results["policy_phases"] = phase_table(eps)
    finally:
        env.close()
    results["expert_descends_cm"] = 100.0 * PushExpert.BEHIND
    return results


def table(results: dict) -> str:
    lines = [f"{results['policy']} on {ENV_ID}, {results['decoder']}, seeds from {results['seed']}", ""]
    lines.append(f"{'mode':<20} {'success':>8} {'95% CI':>12} {'pushes left':>12}  failed episodes")
    for mode, r in results["modes"].items():
        ci = "[{:.0f}, {:.0f}]".format(*(100 * v for v in r["ci95"]))
        fails = ", ".join(f"{k} {v}" for k, v in r["failed_outcomes"].items()) or "-"
        lines.append(
            f"{mode:<20} {100 * r['success_rate']:>7.1f}% {ci:>12} {r['pushes_left_per_episode']:>12.2f}  {fails}"
        )
    if "landing" in results:
        behind = results["expert_descends_cm"]
        lines += ["", f"where the policy's pusher came down (the expert descends {behind:.1f} cm behind the object)"]
        lines += _rates(results["landing"])
        lines += ["", "the gripper's yaw against the push direction when the pusher came down"]
        lines += _rates(results["landing_yaw"])
        lines += ["", "where it came down against the expert's descend point, along the scene camera's view and across"]
        for row in results["landing_camera"]:
            lines.append(
                f"  {row['group']:<10} {row['episodes']:>4} episodes: depth {row['depth_cm']:.2f} cm, "
                f"lateral {row['lateral_cm']:.2f} cm (mean |offset|)"
            )
        lines += [
            "",
            f"the policy's moves while pushing against the expert's (> {HEADING_OFF_DEG:g} deg: off) and the"
            " object-to-circle line (medians)",
        ]
        for row in results["push_heading"]:
            if not row["push_steps"]:
                lines.append(f"  {row['group']:<10} no push steps")
                continue
            lines.append(
                f"  {row['group']:<10} {row['episodes']:>4} episodes, {row['push_steps']:>5} push steps: "
                f"{row['median_deg']:.1f} deg from the expert's, {100 * row['share_off']:.0f}% off; to the line: "
                f"policy {row['policy_to_line_deg']:.1f} deg, expert {row['expert_to_line_deg']:.1f} deg; "
                f"{row['across_cm']:.2f} cm off the line"
            )
        lines += ["", "where the policy acted: the share of its steps in each of the expert's phases"]
        for row in results["policy_phases"]:
            shares = ", ".join(f"{p} {100 * v:.0f}%" for p, v in row["share"].items() if v > 0)
            lines.append(
                f"  {row['group']:<10} {row['episodes']:>4} episodes, {row['steps']:>5} steps: {shares or '-'}"
            )
    return "\n".join(lines)


def _rates(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        rate = f"{100 * row['successes'] / row['episodes']:.0f}%" if row["episodes"] else "-"
        out.append(f"  {row['group']:<32} {row['episodes']:>4} episodes, success {rate}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", type=Path, required=True, help="model directory (VLA.save_pretrained)")
    ap.add_argument(
        "--modes", nargs="+", default=None, help=f"of: {', '.join(MODES)} (default: all; with --trace: policy)"
    )
    ap.add_argument("--episodes", type=int, default=40, help="episodes per mode (default: 40)")
    ap.add_argument("--seed", type=int, default=100000, help="seed of the first episode (default: 100000)")
    ap.add_argument("--decoder", default="ar", help="the policy's decoder (default: ar)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results (every episode) here")
    ap.add_argument(
        "--trace",
        type=int,
        default=None,
        metavar="SEED",
        help="print every step of one episode from SEED instead (the first of --modes; default: policy)",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if args.threads:
        from ee_vla.threads import configure_threads

        configure_threads(args.threads)
    from ee_vla.models.files import ModelLoadError

    if args.trace is not None:
        mode = args.modes[0] if args.modes else "policy"
        try:
            rows, episode = trace_episode(args.policy, mode, args.trace, args.decoder)
        except (ModelLoadError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.policy} on {ENV_ID}, {args.decoder}, mode {mode}, seed {args.trace}")
        print(trace_table(rows))
        print(f"{'success' if episode['success'] else episode['outcome']} after {len(rows)} steps")
        if args.json:
            args.json.write_text(json.dumps({"episode": episode, "trace": rows}, indent=2))
        return 0
    try:
        modes = args.modes or list(MODES)
        results = diagnose(args.policy, modes, args.episodes, args.seed, args.decoder, not args.no_progress)
    except (ModelLoadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
