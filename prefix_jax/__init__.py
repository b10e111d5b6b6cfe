"""prefix_jax: prefix fine-tuning of frozen Transformers in JAX/Flax."""

import os

__version__ = "0.1.0"

# XLA's CPU backend schedules for concurrency by default: it starts independent work early
# and keeps its results alive, so a rematerialised layer's recomputation runs long before the
# backward pass needs it and `model.remat` saves almost nothing. Its memory-minimising
# schedule kept SmolLM2-135M's prefix step at 4 x 512 tokens in 4.2 GiB of temporaries
# instead of 6.1 (1.4 GiB with model.remat="full", against 5.7) at the same step time on
# 2 cores (benchmarks/README.md, remat). Set before JAX starts its backend (on first use);
# XLA_FLAGS that already name the flag win.
_CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_SCHEDULER_FLAG}=false".strip()
