"""Generation metrics over multi-reference inputs, computed by the field's own packages."""

from prefix_jax.metrics.paper import evaluate, layout_name, markdown
from prefix_jax.metrics.table import coco, nist
from prefix_jax.metrics.text import bleu, rouge, score, ter

__all__ = ["bleu", "coco", "evaluate", "layout_name", "markdown", "nist", "rouge", "score", "ter"]
