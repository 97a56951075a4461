"""What a Triton kernel takes of a GPU's registers, compiled for a CUDA architecture without one.

    usage(kernel_fn, signature, constants, warps=8, arch=90) -> {"registers": 168, "stack_bytes": 0}

Triton's compiler and ptxas build the kernel for `arch` (90: Hopper) and `cuobjdump -res-usage`
(shipped with Triton's CUDA wheels) reads its registers and stack bytes per thread: a stack of
more than a few bytes is registers spilled to local memory, which makes a kernel several times
slower. Where Triton's CPU interpreter is on (`TRITON_INTERPRET=1`, as in the CPU tests) its
patched language cannot compile: `in_child` runs the call in a child process without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on in this process (`splitkv.INTERPRET`: as Triton read
    TRITON_INTERPRET when first imported)."""
    from ee_vla.engine.splitkv import INTERPRET

    return INTERPRET


def in_child(module: str, call: str, what: str) -> dict:
    """`module`.`call` (a Python expression returning JSON-able data) evaluated in a child process
    without Triton's interpreter. A FileNotFoundError (no NVIDIA tools) or NotImplementedError (an
    unknown compiler API) there is raised here as such; any other failure as a RuntimeError naming
    `what`."""
    code = f"import json; from {module} import *; print(json.dumps({call}))"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        kind, _, message = last.partition(": ")
        expected = {"FileNotFoundError": FileNotFoundError, "NotImplementedError": NotImplementedError}
        if kind in expected:
            raise expected[kind](message)
        raise RuntimeError(f"compiling {what} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def usage(fn, pointers: dict[str, str], constants: dict, warps: int, arch: int = 90, scalars: dict | None = None,
          options: dict | None = None) -> dict:  # fmt: skip
    """Registers and stack bytes per thread of the `triton.jit` function `fn` compiled for sm_`arch`
    with `warps` warps: `pointers` gives each pointer argument's type (e.g. ``"*bf16"``),
    `scalars` any non-int32 scalar's (e.g. ``"fp32"``), `constants` every constexpr's value;
    `options`: more of Triton's compile options (e.g. ``launch_pdl``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):  # the NVIDIA backend's tools (ptxas beside it) ship in Triton's CUDA wheels
        raise FileNotFoundError(f"reading a kernel's resources needs Triton's cuobjdump, not found at {tool}")
    if not isinstance(fn, JITFunction):  # Triton's interpreter is on: compile the Python function itself
        fn = JITFunction(fn.fn)
    scalars = scalars or {}
    signature = {n: "constexpr" if n in constants else pointers.get(n) or scalars.get(n, "i32") for n in fn.arg_names}
    try:
        source = ASTSource(fn, signature, constants)
    except TypeError as e:  # ASTSource is Triton's internal API: its arguments have changed between releases
        raise NotImplementedError(f"reading resources: Triton {triton.__version__}'s compiler is unknown: {e}") from e
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, **(options or {})})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"(REG|STACK):(\d+)", text))
    return {"registers": int(found["REG"]), "stack_bytes": int(found["STACK"])}
