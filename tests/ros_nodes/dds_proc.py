"""Subprocess entry points for the loopback DDS tests: `serve` with a fake policy, the sim bridge with
a tiny env. Usage: python dds_proc.py serve|sim CONFIG_JSON [FAKE_POLICY_JSON]; the last stdout line
is the JSON result."""

from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    if mode == "serve":
        from ros_fakes import FakePolicy

        from ros_nodes.serve import ServeConfig, serve

        fake = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
        policy = None if fake.get("real") else FakePolicy(**fake)
        result = serve(ServeConfig(**cfg), policy=policy)
    elif mode == "sim":
        from ros_fakes import TinyEnv

        from ros_nodes.sim_serve import SimServeConfig, run_sim_bridge

        real = cfg.pop("real_env", False)
        wrist = cfg.pop("tiny_env_wrist_camera", False)  # TinyEnv also observes wrist_pixels
        result = run_sim_bridge(SimServeConfig(**cfg), env=None if real else TinyEnv(wrist_camera=wrist))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
