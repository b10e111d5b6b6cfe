"""Li & Liang's table rows (Tables 1, 4; section 7) as config overrides, for every scale.

A method says what trains and which prefix. Learning rates, epochs and adapter widths
belong to a scale: webnlg_small_row.py (the embedded model) and gpt2_medium_common.py
(the paper's setting) apply a method with `apply` and then their own numbers.
  ft           full fine-tuning
  ft-top2      fine-tune the top 2 layers (FT-top2)
  adapter-0.1  Houlsby adapters sized to ~0.1% of the base model (the width is the scale's)
  adapter-3    Houlsby adapters sized to ~3%
  prefix-kv    the scale's K/V prefix, reparameterised as it sets (Li & Liang's method)
  prefix-hidden  hidden-state prefix, learned directly
  emb-1, emb-10  EMB-n: n soft tokens at the embedding layer only (= prompt tuning)
  infix        [x; INFIX; y], K/V as prefix-kv
"""

METHODS = {
    "ft": dict(prefix=dict(kind="none"), train=dict(mode="full")),
    "ft-top2": dict(prefix=dict(kind="none"), train=dict(mode="top_k", top_k=2)),
    "adapter-0.1": dict(prefix=dict(kind="none"), train=dict(mode="adapter")),
    "adapter-3": dict(prefix=dict(kind="none"), train=dict(mode="adapter")),
    "prefix-kv": {},
    "prefix-hidden": dict(prefix=dict(kind="hidden", reparam_dim=0)),
    "emb-1": dict(prefix=dict(kind="prompt", length=1, reparam_dim=0)),
    "emb-10": dict(prefix=dict(kind="prompt", length=10, reparam_dim=0)),
    "infix": dict(prefix=dict(kind="infix")),
}
ADAPTERS = ("adapter-0.1", "adapter-3")
SWEEP_KEYS = ("length", "size", "seed")  # A row's sweep point: prefix length, training inputs, seed.
WHOLE_LAYERS = ("ft", "ft-top2")  # Methods that train whole pre-trained layers.


def check(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; give one of {sorted(METHODS)}.")
    return method


def parse_row(arg: str, keys: tuple = SWEEP_KEYS) -> tuple[str, dict]:
    """A row config's argument "METHOD[,key=value]..." -> (method, {key: int}); unknown methods or
    keys (those not in `keys`) are errors."""
    method, *pairs = (arg or "").split(",")
    check(method)
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in keys or not value.isdigit():
            raise ValueError(f"Bad option {pair!r} in {arg!r}; expected one of {keys} as key=<integer>.")
        options[key] = int(value)
    if "length" in options and not has_prefix(method):
        raise ValueError(f"Method {method!r} has no prefix; length= does not apply.")
    return method, options


def has_prefix(method: str) -> bool:
    return METHODS[check(method)].get("prefix", {}).get("kind") != "none"


def apply(config, method: str, adapter_dims: dict) -> None:
    """Sets `method`'s fields in `config`; adapter_dims: {adapter method: width} for this scale."""
    for section, values in METHODS[check(method)].items():
        config[section].update(values)
    if method in ADAPTERS:
        config.model.adapter_dim = adapter_dims[method]
