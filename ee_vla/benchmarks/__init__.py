"""Measuring tools: they time and check the decoders and engines, and are not needed to run a policy.

* `decode_bench` - `ee-vla bench`: decode latency of AR vs Jacobi vs CEED for one policy;
* `profile`      - `python -m ee_vla.benchmarks.profile`: every engine x decoder on a model of a
  real shape (random weights), raw forwards, HF `generate`, kernel tables;
* `shapes`       - the named model shapes the profiler builds (OpenVLA-7B, Qwen2-0.5B, tiny, small);
* `attn_bench`   - `python -m ee_vla.benchmarks.attn_bench`: the split-KV attention kernel alone;
* `linear_bench` - `python -m ee_vla.benchmarks.linear_bench`: the linear layers alone, bf16 and fp8
  products against the device's read speed;
* `splitk`       - a split-K Triton product for a few rows, a candidate `linear_bench` times against cuBLAS,
  with epilogues that do the rest of a decoder layer (its norms, SiLU x up, residual adds);
* `layer_bench`  - `python -m ee_vla.benchmarks.layer_bench`: whole decoder layers as the compiled engine
  runs them against `splitk`'s products with those epilogues and the engine's attention kernel;
* `cubin`        - a Triton kernel's registers and stack for a GPU architecture, without a GPU;
* `check`        - `python -m ee_vla.benchmarks.check`: the static engines' tokens against eager;
* `ablation`     - `python -m ee_vla.benchmarks.ablation`: the CEED paper's ablation ladder, a
  teacher and its students evaluated in simulation on the same seeds.

The engines they measure are in `ee_vla.engine`.
"""
