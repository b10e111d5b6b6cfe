"""Pure train/eval steps, the optimizer, and building an experiment from its config.

`train_step` and `eval_step` are pure and jit-able; static pieces (model, prefix
spec, optimizer, labels) are bound with `functools.partial` and jitted once in
`make_step_fns`. The loop that drives them is in `loop.py`.
"""

import dataclasses
import functools
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from prefix_jax import convert, sharding, trainable
from prefix_jax.errors import ConfigError
from prefix_jax import prefix as prefix_lib
from prefix_jax.models import adapters, families

# Decoder-only: tokens, attention_mask, loss_mask [batch, len] int32 / int32 / float32.
# Encoder-decoder: tokens, attention_mask [batch, m_enc]; decoder_tokens, labels,
# decoder_attention_mask [batch, m_dec] (pipeline.seq2seq_padder).
Batch = dict


@struct.dataclass
class TrainState:
    step: jax.Array
    params: dict  # {"base": ..., "prefix": ...}; frozen leaves pass through untouched.
    opt_state: optax.OptState


def learning_rate_schedule(lr: float, warmup_steps: int, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then linear decay to 0 at `num_steps` (as in the paper)."""
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    decay = optax.linear_schedule(lr, 0.0, max(num_steps - warmup_steps, 1))
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(train_config: ml_collections.ConfigDict, labels: dict):
    """AdamW with gradient clipping on trainable leaves; nothing at all on frozen ones."""
    c = train_config
    schedule = learning_rate_schedule(c.lr, c.warmup_steps, c.num_steps)
    inner = optax.chain(
        optax.clip_by_global_norm(c.grad_clip_norm),
        optax.adamw(schedule, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps, weight_decay=c.weight_decay),
    )
    return trainable.masked_optimizer(inner, labels), schedule


def _target_weights(batch: Batch) -> jax.Array:
    """[batch, len - 1] float: decoder-only position t predicts token t + 1 where loss_mask
    = 1 (targets, not the source or padding)."""
    return (batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]).astype(jnp.float32)


def _targets(logits: jax.Array, batch: Batch):
    """(logits, target ids, weights) aligned: an encoder-decoder's decoder position t predicts
    labels[t] where decoder_attention_mask = 1; decoder-only logits are either at a packed
    batch's target_positions (`pipeline.pack_lm`) or at every position (`_target_weights`)."""
    if "labels" in batch:
        return logits, batch["labels"], batch["decoder_attention_mask"].astype(jnp.float32)
    if "target_positions" in batch:
        return logits, batch["target_ids"], batch["target_weights"]
    return logits[:, :-1], batch["tokens"][:, 1:], _target_weights(batch)


def token_nll(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Summed next-token NLL over target tokens, and their count."""
    logits, targets, weights = _targets(logits, batch)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(nll * weights), jnp.sum(weights)


def forward(params, batch, rng, *, model, spec, deterministic):
    """Logits [batch, len, vocab] of the base model with the prefix in `params` (an
    encoder-decoder's: of its decoder positions)."""
    inputs = prefix_lib.model_inputs(
        spec, params.get("prefix", {}), model.config.prefix_geometry, loss_mask=batch.get("loss_mask")
    )
    return families.of(model).forward(model, params["base"], batch, inputs, rng, deterministic)


LOSS_PER = ("token", "sequence")


def loss_fn(trainable_params, frozen_params, batch, rng, *, model, spec, per="token"):
    """(objective, (mean NLL per target token, target tokens)).

    per="token" minimises the mean NLL per target token; per="sequence" the NLL summed over
    each sequence's targets, averaged over sequences: Li & Liang's code (objective_mode 1),
    whose gradients are ~target-length times larger, which matters under gradient clipping.
    """
    params = trainable.combine(trainable_params, frozen_params)
    logits = forward(params, batch, rng, model=model, spec=spec, deterministic=False)
    loss_sum, weight = token_nll(logits, batch)
    token_loss = loss_sum / jnp.maximum(weight, 1.0)
    if per == "token":
        return token_loss, (token_loss, weight)
    has_target = (batch["decoder_attention_mask"] if "labels" in batch else _target_weights(batch)) > 0
    if "segment_ids" in batch:  # Packed rows: count the sequences whose last token is a target.
        segments = batch["segment_ids"][:, 1:]
        ends = segments != jnp.pad(segments[:, 1:], ((0, 0), (0, 1)))
        sequences = jnp.sum(has_target & ends)
    else:
        sequences = jnp.sum(jnp.any(has_target, axis=1))
    return loss_sum / jnp.maximum(sequences, 1), (token_loss, weight)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model, spec, tx, labels, loss_per="token"):
    """One optimizer step. Differentiates only the trainable partition. Pure."""
    rng = jax.random.fold_in(rng, state.step)
    trainable_params, frozen_params = trainable.partition(state.params, labels)
    (_, (loss, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable_params, frozen_params, batch, rng, model=model, spec=spec, per=loss_per
    )
    updates, opt_state = tx.update(
        trainable.as_full_tree(grads, labels), state.opt_state, state.params
    )
    trainable_updates, _ = trainable.partition(updates, labels)
    params = trainable.combine(optax.apply_updates(trainable_params, trainable_updates), frozen_params)
    metrics = {"loss": loss, "target_tokens": weight, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: dict, batch: Batch, *, model, spec) -> dict:
    """Summed loss and target-token count, so batches aggregate exactly. Pure."""
    logits = forward(params, batch, None, model=model, spec=spec, deterministic=True)
    loss_sum, weight = token_nll(logits, batch)
    return {"loss_sum": loss_sum, "target_tokens": weight}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything static about a run, built from its config."""

    model: Any  # The family's flax module (models/families.py).
    spec: Optional[prefix_lib.PrefixSpec]
    loss_per: str  # "token" or "sequence" (see loss_fn)
    labels: dict
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: jax.sharding.Mesh
    state_shardings: TrainState  # A TrainState whose leaves are NamedShardings.


DTYPES = ("float32", "bfloat16", "float16")


def model_config(config: ml_collections.ConfigDict):
    """The model's frozen config, of the family config.model.family names (models/families.py)."""
    fields = config.model.to_dict()
    family = families.get(fields.pop("family"))
    known = set(family.fields)
    required = {f.name for f in dataclasses.fields(family.config_class) if f.default is dataclasses.MISSING}
    if wrong := sorted(set(fields) - known):
        raise ConfigError(
            f"config.model has fields {wrong} that a {family.name} model does not take (it takes {sorted(known)}); "
            f"start the model section from experiments/common.py's {family.name} fields."
        )
    if missing := sorted(required - set(fields)):
        raise ConfigError(f"config.model lacks {missing}, which a {family.name} model needs.")
    if "dtype" in fields:
        if fields["dtype"] not in DTYPES:
            raise ConfigError(f"Unknown model.dtype {fields['dtype']!r}; expected one of {DTYPES}.")
        fields["dtype"] = getattr(jnp, fields["dtype"])
    return family.config_class(**fields)


def prefix_spec(config: ml_collections.ConfigDict) -> Optional[prefix_lib.PrefixSpec]:
    """The run's PrefixSpec, or None for kind 'none' (fine-tuning runs)."""
    c = config.prefix
    if c.kind == "none":
        return None
    if c.kind not in prefix_lib.KINDS:
        raise ConfigError(
            f"Unknown prefix kind {c.kind!r}; expected one of {prefix_lib.KINDS + ('none',)}."
        )
    return prefix_lib.PrefixSpec(
        kind=c.kind, length=c.length, reparam_dim=c.reparam_dim, literal=c.literal
    )


def init_prefix(config, spec, model, base_params, rng) -> dict:
    if config.prefix.init == "random":
        return prefix_lib.init_random(spec, model.config.prefix_geometry, rng)
    if config.prefix.init == "words":
        return prefix_lib.init_from_tokens(
            spec, model, base_params, config.prefix.init_tokens,
            rng=rng, fit_steps=config.prefix.init_fit_steps, fit_lr=config.prefix.init_fit_lr,
        )
    raise ConfigError(
        f"Unknown prefix.init {config.prefix.init!r}; expected one of {prefix_lib.INITS}."
    )


def top_layers(family: families.Family, model_config, train_config) -> list:
    """The layers mode 'top_k' trains (Li & Liang's FT-top2), checked against the model."""
    if train_config.mode != "top_k":
        return []
    if family.top_layers is None:
        raise ConfigError(f"A {family.name} model trains in mode 'prefix' or 'full'; it offers no train.mode='top_k'.")
    num_layers = model_config.num_layers
    if not 1 <= train_config.top_k <= num_layers:
        raise ConfigError(f"top_k must be in [1, {num_layers}] for mode='top_k', got {train_config.top_k}.")
    return family.top_layers(model_config, train_config.top_k)


def create(config: ml_collections.ConfigDict, base_params: Optional[dict] = None, mesh=None):
    """Builds the Experiment and the initial TrainState, laid out on `mesh`.

    `base_params` are the frozen pre-trained weights; when None they are read from
    `config.base_weights` (a project or Hugging Face directory, see `convert.load_base`),
    or, when it is empty, initialised at random directly sharded (never materialised whole
    on one device). Loaded weights get fresh adapters when `model.adapter_dim` asks for
    them. The mesh defaults to the first device alone.
    """
    if config.train.loss_per not in LOSS_PER:
        raise ConfigError(f"Unknown train.loss_per {config.train.loss_per!r}; expected one of {LOSS_PER}.")
    mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    replicated = sharding.replicated(mesh)
    family = families.get(config.model.family)
    model = family.make(model_config(config))
    spec = prefix_spec(config)
    trained_layers = top_layers(family, model.config, config.train)
    base_rng, prefix_rng = jax.random.split(jax.random.key(config.train.seed))
    base_shardings = sharding.base_param_shardings(family.logical_axes(model), mesh, config.sharding.rules)
    if base_params is None and config.base_weights:
        base_params = convert.load_base(config.base_weights, model.config)
    if base_params is None:
        init = jax.jit(lambda key: family.init_params(model, key), out_shardings=base_shardings)
        base_params = init(base_rng)
    else:
        base_params = adapters.add(model.config, base_params, jax.random.fold_in(base_rng, 1))
        base_params = jax.device_put(base_params, base_shardings)
    params = {"base": base_params}
    if spec is not None:
        prefix_params = init_prefix(config, spec, model, base_params, prefix_rng)
        params["prefix"] = jax.device_put(prefix_params, replicated)
    labels = trainable.label_params(params, config.train.mode, top_layers=trained_layers)
    tx, schedule = make_optimizer(config.train, labels)
    params_shardings = sharding.param_shardings(params, base_shardings, mesh)
    opt_shardings = sharding.opt_state_shardings(jax.eval_shape(tx.init, params), params_shardings, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params, opt_state=opt_state)
    state_shardings = TrainState(step=replicated, params=params_shardings, opt_state=opt_shardings)
    return Experiment(model, spec, config.train.loss_per, labels, tx, schedule, mesh, state_shardings), state


def make_step_fns(exp: Experiment):
    """Jitted (train_step, eval_step) with the static pieces bound and shardings fixed.

    Batches are split over data x fsdp; the state keeps the layout it was created
    with (in = out shardings), and the train step donates it.
    """
    replicated = sharding.replicated(exp.mesh)
    batch = sharding.batch_sharding(exp.mesh)
    train = jax.jit(
        functools.partial(
            train_step, model=exp.model, spec=exp.spec, tx=exp.tx, labels=exp.labels, loss_per=exp.loss_per
        ),
        in_shardings=(exp.state_shardings, batch, replicated),
        out_shardings=(exp.state_shardings, replicated),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        functools.partial(eval_step, model=exp.model, spec=exp.spec),
        in_shardings=(exp.state_shardings.params, batch),
        out_shardings=replicated,
    )
    return train, evaluate


def evaluate_loss(eval_fn, params, batches: Iterable[Batch]) -> float:
    """Mean target-token NLL over all batches."""
    totals = [eval_fn(params, batch) for batch in batches]
    loss_sum = sum(float(t["loss_sum"]) for t in totals)
    tokens = sum(float(t["target_tokens"]) for t in totals)
    return loss_sum / max(tokens, 1.0)
