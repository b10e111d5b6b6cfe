"""Decoding: search strategies over a family's cached step, serving and prefix banks, and the
recomputation oracle the fast paths are tested against.

  search.py    greedy, sampling and beam search over any `step(rows, token, t)`
  cached.py    the KV-cache decoders: the family's prefill and step, driven by a search
  serving.py   a task's prefix in serving form, prefix banks, per-row routing, padding
  engine.py    continuous batching: requests of many tasks join one running batch (the server's)
  oracle.py    greedy decoding by full recomputation (the reference)
"""

from prefix_jax.decode.cached import forward, generate
from prefix_jax.decode.oracle import greedy
from prefix_jax.decode.search import STRATEGIES, Options, strip_after_eos
from prefix_jax.decode.serving import left_pad, num_tasks, pad_rows, prefix_bank, serve

__all__ = ["forward", "generate", "greedy", "STRATEGIES", "Options", "strip_after_eos", "left_pad", "num_tasks",
           "pad_rows", "prefix_bank", "serve"]
