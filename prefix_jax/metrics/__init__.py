"""Generation metrics over multi-reference inputs, computed by the field's own packages."""

from prefix_jax.metrics.table import coco, e2e, nist
from prefix_jax.metrics.text import bleu, rouge, score, ter

__all__ = ["bleu", "coco", "e2e", "nist", "rouge", "score", "ter"]
