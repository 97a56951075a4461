"""Subprocess entry for the policy-process lifetime tests: this process is the parent of a
`ProcessPolicy` child whose fake policy takes `delay_s` per action.

    python policy_proc.py DELAY_S CHUNK_SIZE [exit]

prints `child <pid>` once the child is decoding, then consumes the chunk (SIGINT only sets a flag,
as in `serve`) and prints a JSON line with what it got; with `exit`, exits right away instead,
without closing the policy.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def slow_policy(params):
    """The child's policy: a FakePolicy whose timing comes from the environment."""
    from ros_fakes import FakePolicy

    return FakePolicy(chunk_size=int(os.environ["FAKE_CHUNK"]), delay_s=float(os.environ["FAKE_DELAY_S"]))


def rejecting_policy(params):
    """The child's policy: rejects every observation as `ee_vla.policy.ObservationError` does."""
    from ros_fakes import FakePolicy

    from ee_vla.policy import ObservationError

    return FakePolicy(chunk_size=2, fail=ObservationError("'instruction' has 900 tokens, over the cap of 256"))


def shift_policy(params):
    """The child's policy: each action's first value is the `warm_start_shift` its call had (-1: None)."""
    import numpy as np
    from ros_fakes import FakePolicy

    pol = FakePolicy(chunk_size=2)
    pol.values = lambda c, i: np.full(7, -1.0 if pol.shifts[-1] is None else float(pol.shifts[-1]))
    return pol


_KEEP: list = []


def main() -> None:
    import numpy as np
    import policy_proc

    from ros_nodes.params import PolicyParams
    from ros_nodes.policy_process import PolicyProcessError, ProcessPolicy

    os.environ["FAKE_DELAY_S"], os.environ["FAKE_CHUNK"] = sys.argv[1], sys.argv[2]
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    policy = ProcessPolicy(PolicyParams(model_path="fake", control_hz=10.0), factory=policy_proc.slow_policy)
    result: dict = {"actions": 0, "error": ""}
    it = policy.stream_action_chunk({"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "go"})
    if sys.argv[3:] == ["exit"]:
        _KEEP.append(policy)  # alive until interpreter exit, never closed here
        threading.Thread(target=lambda: next(it, None), daemon=True).start()  # sends the decode request
        print(f"child {policy.pid}", flush=True)
        time.sleep(0.5)
        sys.exit(0)
    print(f"child {policy.pid}", flush=True)
    try:
        try:
            for _ in it:
                result["actions"] += 1
        except PolicyProcessError as e:
            result["error"] = str(e)
    finally:
        policy.close()
    result["interrupted"] = bool(interrupted)
    result["child_exitcode"] = policy._proc.exitcode
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
