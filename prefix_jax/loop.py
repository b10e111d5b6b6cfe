"""The training loop: data, resume, logging, dev evaluation, checkpoints.

`train_and_evaluate` resumes from the workdir's newest checkpoint that verifies, so
rerunning a killed or preempted command continues it; `evaluate` scores the best
checkpoint. Both refuse checkpoints made for another setup (checkpoint.py), and a
resume refuses a change to what decides the data order and the optimisation
(`RUN_FIELDS`). Every command checks its config's ranges before any work
(validation.py), and one training run at a time holds a workdir (run_lock.py).
"""

import dataclasses
import json
import os
import signal
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from prefix_jax import checkpoint, errors, preemption, report, run_lock, sharding, trainable, validation
from prefix_jax import decode as decode_lib
from prefix_jax import metrics
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import pipeline, sources
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.data.records import Example
from prefix_jax.models import adapters, families
from prefix_jax.train import Experiment, TrainState, create, evaluate_loss, make_step_fns


@dataclasses.dataclass
class Run:
    """A run's data, experiment, initial state and checkpointer, built from config + workdir."""

    config: ml_collections.ConfigDict
    exp: Experiment
    state: TrainState
    train_batches: Optional[pipeline.Batches]  # None where the command needs no training data.
    dev_batches: Optional[pipeline.Batches]
    checkpointer: checkpoint.Checkpointer
    fingerprint: dict

    @property
    def batch_sharding(self):
        return sharding.batch_sharding(self.exp.mesh)

    def sharded(self, batches):
        """Host batches as global arrays split over data x fsdp."""
        return (sharding.global_batch(batch, self.batch_sharding) for batch in batches)


def setup(config: ml_collections.ConfigDict, workdir: str, *, train_data: bool = True, dev_data: bool = True,
          decoding: bool = False) -> Run:
    """Builds a Run; only the data splits the command uses are read and encoded."""
    validation.check(config, decoding=decoding)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    if tokenizer.get_vocab_size() > config.model.vocab_size:
        raise errors.ConfigError(
            f"The tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; raise vocab_size or use a smaller tokenizer."
        )
    _check_packing(config)
    if families.get(config.model.family).encoder_decoder:
        d = config.data
        encode = lambda split: pipeline.encode_seq2seq(
            sources.read(d, split), tokenizer, d.max_source_len, d.max_target_len)
        pad = pipeline.seq2seq_padder(pipeline.bucket_width(d.max_target_len, d.bucket_size), tokenizer_lib.pad_id(tokenizer))
        max_width = d.max_source_len
    else:
        encode = lambda split: pipeline.encode_split(config.data, split, tokenizer, config.model.max_len)
        pad, max_width = pipeline.pad_lm, config.model.max_len
    make_batches = lambda sequences, shuffle: pipeline.Batches(
        sequences, config.train.batch_size, config.data.bucket_size, seed=config.train.seed, shuffle=shuffle,
        pad=pad, pack_width=config.data.pack_width, max_width=max_width,
    )
    train_batches = make_batches(encode("train"), True) if train_data else None
    dev_batches = make_batches(pipeline.spread(encode("dev"), config.train.eval_sequences), False) if dev_data else None
    mesh = sharding.make_mesh(config.mesh.to_dict())
    sharding.check_batch_size(config.train.batch_size, mesh)
    exp, state = create(config, mesh=mesh)
    checkpointer = checkpoint.Checkpointer(
        workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    return Run(config, exp, state, train_batches, dev_batches, checkpointer, fingerprint(config, exp, state))


def fingerprint(config: ml_collections.ConfigDict, exp: Experiment, state: TrainState) -> dict:
    """What this run's checkpoints must match to be restored (`checkpoint.fingerprint`)."""
    trainable_params, frozen_params = trainable.partition(state.params, exp.labels)
    return checkpoint.fingerprint(
        model_config=exp.model.config, spec=exp.spec, mode=config.train.mode,
        top_k=config.train.top_k, frozen=frozen_params, trainable=trainable_params,
    )


def _check_packing(config: ml_collections.ConfigDict) -> None:
    """Packed rows (data.pack_width > 0) need what their attention mask can express (its range
    is checked with the others, validation.py)."""
    width, kind = config.data.pack_width, config.prefix.kind
    if width == 0:
        return
    problem = (
        "an encoder-decoder" if families.get(config.model.family).encoder_decoder
        else f"prefix.kind={kind!r}" if kind in ("prompt", "infix") or (kind == "hidden" and config.prefix.literal)
        else None
    )
    if problem:
        raise errors.ConfigError(
            f"data.pack_width={width} cannot be used with {problem}; set data.pack_width=0 (length buckets) "
            f"or use a decoder-only model and a kv/hidden prefix."
        )


def _saveable(state: TrainState, exp: Experiment, rng: jax.Array) -> dict:
    """What a checkpoint holds: trainable params, optimizer state, step, RNG key."""
    trainable_params, _ = trainable.partition(state.params, exp.labels)
    return {
        "trainable": trainable_params,
        "opt_state": state.opt_state,
        "step": state.step,
        # A global (replicated) array, which every host of a multi-host run can write.
        "rng": jax.make_array_from_process_local_data(
            sharding.replicated(exp.mesh), np.asarray(jax.random.key_data(rng))
        ),
    }


# What decides a run's data order and optimisation, recorded in every checkpoint: a resume
# with another value is refused. train.num_steps may change (extending or shortening the
# run, said in the log); so may what only logs, evaluates, saves or decodes (log_every,
# eval_every, checkpoint.*, decode.*) and the mesh. Model and prefix are in the fingerprint.
RUN_FIELDS = (
    "train.batch_size", "train.lr", "train.warmup_steps", "train.seed", "train.weight_decay", "train.adam_b1",
    "train.adam_b2", "train.adam_eps", "train.grad_clip_norm", "train.loss_per", "train.eval_sequences",
    "data.name", "data.train_path", "data.dev_path", "data.num_train", "data.num_dev", "data.tokenizer",
    "data.bucket_size", "data.pack_width", "data.block_len", "data.max_source_len", "data.max_target_len",
    "data.heldout_categories",
)
ADDED_RUN_FIELDS = {"data.heldout_categories": ""}  # Fields newer than some checkpoints: the value they had.


def run_record(config: ml_collections.ConfigDict) -> dict:
    """The RUN_FIELDS values (and train.num_steps) of `config`, as a checkpoint records them."""
    fields = RUN_FIELDS + ("train.num_steps",)
    return {field: config[field.split(".")[0]][field.split(".")[1]] for field in fields}


def _compare_run(run: Run, meta: dict, step: int) -> None:
    """Refuses to resume `meta`'s checkpoint (at `step`) into a run that would continue it differently."""
    where = f"the checkpoint at step {step} in {run.checkpointer.directory}"
    saved, now = meta.get("run"), run_record(run.config)
    if saved is None:
        logging.warning("%s records no run settings (an older checkpoint); they are not compared.", where)
        return
    saved = {**ADDED_RUN_FIELDS, **saved}
    changed = [f"{field} is {now[field]!r} here but {saved.get(field)!r} in the checkpoint's run"
               for field in RUN_FIELDS if saved.get(field) != now[field]]
    if changed:
        raise checkpoint.CheckpointMismatchError(
            f"Cannot resume {where}: {'; '.join(changed)}; rerun with the checkpoint's values "
            f"(its run's config.json) or use a new workdir."
        )
    if (then := meta["data_position"]["batches_per_epoch"]) != run.train_batches.batches_per_epoch:
        raise checkpoint.CheckpointMismatchError(
            f"Cannot resume {where}: the training data gives {run.train_batches.batches_per_epoch} batches per epoch "
            f"here but gave {then} to the checkpoint's run (the data files changed?); restore them or use a new workdir."
        )
    steps = run.config.train.num_steps
    if steps < step:
        raise errors.ConfigError(
            f"train.num_steps is {steps} but {where} is already past it; use train.num_steps >= {step}."
        )
    if steps != saved["train.num_steps"]:
        logging.warning(
            "train.num_steps changed from %d to %d: %s the run; from step %d on, the learning rate follows the "
            "schedule for %d steps, so the result differs from a run started with %d.",
            saved["train.num_steps"], steps, "extending" if steps > saved["train.num_steps"] else "shortening",
            step, steps, steps,
        )


def _restore_or_start(run: Run, rng: jax.Array) -> TrainState:
    """The newest verified checkpoint's state (frozen weights from their source), or the initial state."""
    restored = run.checkpointer.restore_latest(_saveable(run.state, run.exp, rng), run.fingerprint)
    if restored is None:
        return run.state
    saved, meta = restored
    step = int(saved["step"])
    if not np.array_equal(saved["rng"].addressable_data(0), jax.random.key_data(rng)):
        raise checkpoint.CheckpointMismatchError(
            "The checkpoint's RNG key differs from this run's (train.seed changed?); use the same seed or a new workdir."
        )
    _compare_run(run, meta, step)
    _, frozen = trainable.partition(run.state.params, run.exp.labels)
    logging.info("Resuming from step %d (data position %s).", step, meta["data_position"])
    return TrainState(
        step=saved["step"], params=trainable.combine(saved["trainable"], frozen), opt_state=saved["opt_state"]
    )


class _Metrics:
    """TensorBoard scalars plus a metrics.jsonl log that tests and scripts can read.

    Each step appears once however often the run resumes: a run resumed from step s
    (0: started afresh) first drops metrics.jsonl's records after s (a killed run wrote
    them, and this one writes them again; from step 0 on when starting afresh, whose step 0
    is logged again), and TensorBoard hides earlier events from that step on (`purge_step`).
    Only process 0 writes; other hosts of a multi-host run compute the same values.
    """

    def __init__(self, workdir: str, resumed_from: int):
        self.active = jax.process_index() == 0
        if self.active:
            import tensorboardX  # Here: it imports PyTorch when installed (seconds a process), for training only.

            first_new = resumed_from + 1 if resumed_from else 0
            self.writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=first_new)
            path = os.path.join(workdir, "metrics.jsonl")
            kept = []
            if os.path.exists(path):
                with open(path) as f:
                    kept = [line for line in f if json.loads(line)["step"] < first_new]
            with open(path, "w") as f:
                f.writelines(kept)
            self.jsonl = open(path, "a")

    def write(self, step: int, scalars: dict) -> None:
        if not self.active:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.active:
            self.writer.close()
            self.jsonl.close()


def _first_non_finite(losses: list) -> Optional[tuple[int, float]]:
    """(step, loss) of the first non-finite loss among (step, device scalar) pairs."""
    for step, loss in losses:
        value = float(loss)
        if not np.isfinite(value):
            return step, value
    return None


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from workdir's newest verified checkpoint), evaluating on dev; returns a summary.

    Checks the config, then holds the workdir's run lock for the whole run. Writes
    `config.json` (the run's config) once the resume is accepted. Loss values are checked
    before every checkpoint and log line: a non-finite loss stops the run with its step,
    and nothing after the last finite stretch is ever saved. SIGTERM or SIGINT save the
    current step and end the run with `preemption.Preempted`. With
    `decode.after_training`, the best checkpoint's dev generations and scores (`decode`)
    end the run and join the summary.
    """
    validation.check(config, decoding=config.decode.after_training)
    os.makedirs(workdir, exist_ok=True)
    with run_lock.hold(workdir):
        summary = _train(config, workdir)
        if config.decode.after_training:
            summary["decode"] = decode(config, workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    run = setup(config, workdir, decoding=config.decode.after_training)
    c = config.train
    rng = jax.random.key(c.seed + 1)
    state = _restore_or_start(run, rng)
    if jax.process_index() == 0:  # What the run was, for reports (prefix_jax/report.py).
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    train_fn, eval_fn = make_step_fns(run.exp)
    trained, _ = trainable.partition(state.params, run.exp.labels)
    summary: dict[str, Any] = {
        "trainable_params": prefix_lib.num_params(trained),
        "base_params": prefix_lib.num_params(adapters.split(state.params["base"])[0]),
    }
    if run.exp.spec is not None:
        summary["prefix_params"] = prefix_lib.count_params(
            run.exp.spec, run.exp.model.config.prefix_geometry, state.params["base"])
    logging.info("Parameters: %s", summary)
    logging.info("Train: %d batches per epoch; dev: %d batches.", run.train_batches.batches_per_epoch,
                 run.dev_batches.batches_per_epoch)
    first_step = int(state.step)
    metrics_log = _Metrics(workdir, resumed_from=first_step)
    if first_step == 0:
        summary["dev_loss_before"] = evaluate_loss(eval_fn, state.params, run.sharded(run.dev_batches))
        metrics_log.write(0, {"dev/loss": summary["dev_loss_before"]})
        logging.info("dev loss before training: %.4f", summary["dev_loss_before"])
    best = run.checkpointer.best_dev_loss()
    batches = run.train_batches.from_step(first_step)
    pending, tokens_seen, start, last_dev_loss = [], 0, time.perf_counter(), None

    def intact() -> str:
        step = run.checkpointer.newest_verified(_saveable(run.state, run.exp, rng), run.fingerprint)
        where = run.checkpointer.directory
        if step is None:
            return f"No checkpoint in {where} verifies; a rerun starts from step 0."
        return f"The newest checkpoint that verifies is step {step} in {where}; rerunning resumes from it."

    try:
        with preemption.StopSignals() as signals:
            for step in range(first_step + 1, c.num_steps + 1):
                batch = next(batches)
                state, step_metrics = train_fn(state, sharding.global_batch(batch, run.batch_sharding), rng)
                pending.append((step, step_metrics["loss"]))
                run.checkpointer.seal_committed()
                tokens_seen += int(batch["attention_mask"].sum())
                last = step == c.num_steps
                stop = None if last else signals.requested()
                save_now = step % config.checkpoint.every == 0 or last or stop
                eval_now = step % c.eval_every == 0 or last
                if step % c.log_every == 0 or save_now or eval_now:
                    if bad := _first_non_finite(pending):
                        raise FloatingPointError(f"Loss is {bad[1]} at step {bad[0]}; stopping. {intact()}")
                    elapsed = time.perf_counter() - start
                    rate = tokens_seen / elapsed
                    loss, lr = float(step_metrics["loss"]), float(run.exp.schedule(step - 1))
                    logging.info(
                        "step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s  ETA %.0fs", step, c.num_steps, loss, lr,
                        rate, elapsed / (step - first_step) * (c.num_steps - step),
                    )
                    metrics_log.write(step, {"train/loss": loss, "train/lr": lr, "train/tokens_per_second": rate})
                    pending = []
                if eval_now:
                    dev_loss = last_dev_loss = evaluate_loss(eval_fn, state.params, run.sharded(run.dev_batches))
                    metrics_log.write(step, {"dev/loss": dev_loss})
                    logging.info("step %d  dev loss %.4f", step, dev_loss)
                    if best is None or dev_loss < best:
                        best = dev_loss
                        meta = {"fingerprint": run.fingerprint, "step": step, "dev_loss": dev_loss}
                        run.checkpointer.save_best(
                            step, trainable.partition(state.params, run.exp.labels)[0], meta, dev_loss)
                if save_now:
                    if not _all_finite(trainable.partition(state.params, run.exp.labels)[0]):
                        raise FloatingPointError(
                            f"Parameters became non-finite by step {step} (the loss was still finite); "
                            f"stopping. {intact()}"
                        )
                    meta = {"fingerprint": run.fingerprint, "data_position": run.train_batches.position(step),
                            "run": run_record(config)}
                    run.checkpointer.save(step, _saveable(state, run.exp, rng), meta)
                if stop:
                    run.checkpointer.wait()
                    raise preemption.Preempted(
                        f"Stopped by {signal.Signals(stop).name} after step {step}, saved in "
                        f"{run.checkpointer.directory}/{step}; rerun the same command to resume.", stop,
                    )
    finally:
        run.checkpointer.wait()
        run.checkpointer.close()
        metrics_log.close()
    elapsed = time.perf_counter() - start
    summary.update(
        train_seconds=elapsed,
        tokens_per_second=tokens_seen / elapsed if elapsed else 0.0,
        dev_loss_after=(
            last_dev_loss if last_dev_loss is not None
            else evaluate_loss(eval_fn, state.params, run.sharded(run.dev_batches))
        ),
        best_dev_loss=best,
        steps=int(state.step),
    )
    logging.info("dev loss after training: %.4f (best %.4f)", summary["dev_loss_after"], best)
    if report.diverged(summary):
        logging.warning("Training diverged: dev loss rose from %.4f to %.4f; try a lower train.lr or more "
                        "train.warmup_steps.", summary["dev_loss_before"], summary["dev_loss_after"])
    return summary


def require_trained(workdir: str) -> None:
    """Refuses, before anything is created, a workdir that holds no best checkpoint (a typo in
    --workdir would otherwise become a new empty workdir and a deeper error)."""
    if not os.path.isdir(os.path.join(workdir, "best")):
        what = "does not exist" if not os.path.exists(workdir) else "holds no best checkpoint (best/)"
        raise checkpoint.MissingCheckpointError(
            f"The workdir {workdir} {what}; check --workdir, or train there first."
        )


def restore_best(run: Run) -> tuple[dict, dict]:
    """(full params with the best checkpoint's trainable part, its metadata)."""
    try:
        trainable_params, frozen = trainable.partition(run.state.params, run.exp.labels)
        restored, meta = run.checkpointer.restore_best(trainable_params, run.fingerprint)
    finally:
        run.checkpointer.close()
    return trainable.combine(restored, frozen), meta


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Dev loss of the best checkpoint in `workdir` (refused if made for another setup)."""
    require_trained(workdir)
    run = setup(config, workdir, train_data=False)
    params, meta = restore_best(run)
    _, eval_fn = make_step_fns(run.exp)
    result = {"step": meta["step"], "dev_loss": evaluate_loss(eval_fn, params, run.sharded(run.dev_batches))}
    logging.info("Best checkpoint (step %d): dev loss %.4f", result["step"], result["dev_loss"])
    return result


def decode_options(c: ml_collections.ConfigDict, tokenizer=None) -> decode_lib.Options:
    """The `decode` config section as decoder options (bad values are errors here); the
    tokenizer says which tokens `ban_newlines` bans."""
    if c.ban_newlines and tokenizer is None:
        raise ValueError("decode.ban_newlines needs the tokenizer to find the newline tokens.")
    return decode_lib.Options(
        strategy=c.strategy, max_new_tokens=c.max_new_tokens, beam_size=c.beam_size,
        length_penalty=c.length_penalty, early_stopping=c.early_stopping,
        no_repeat_ngram_size=c.no_repeat_ngram_size, min_new_tokens=c.min_new_tokens,
        banned_tokens=tokenizer_lib.newline_ids(tokenizer) if c.ban_newlines else (), eos_penalty=c.eos_penalty,
        temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
    )


def _generate(config, exp: Experiment, params: dict, tokenizer, inputs: list[Example]) -> list[list[int]]:
    """Generated token ids (up to EOS) for every input, in batches of decode.batch_size.

    Decoder-only: the source in the training format, left-padded, continued with the KV-cache
    decoder. Encoder-decoder: the source as the encoder read it in training
    (`data.max_source_len`), right-padded, the decoder started from `pipeline.decoder_prompt`.
    """
    c = config.decode
    options, eos = decode_options(c, tokenizer), tokenizer_lib.eos_id(tokenizer)
    served = decode_lib.serve(exp.spec, params.get("prefix", {}), exp.model, params["base"])
    if families.of(exp.model).encoder_decoder:
        start_tokens, room = pipeline.decoder_prompt(tokenizer), config.data.max_source_len
        sources = [pipeline.encode_seq2seq_side(tokenizer, e.source, room)[0] for e in inputs]
    else:
        start_tokens, room = (), config.model.max_len - c.max_new_tokens
        sources = pipeline.encode_prompts(tokenizer, inputs, max_len=config.model.max_len,
                                          max_new_tokens=c.max_new_tokens, split=c.split)
    # Batches of similar source lengths: less padding, and rows that tend to finish together.
    # The short batch (the remainder) takes the shortest sources, so its filler rows are cheap.
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    generations = [None] * len(sources)
    ends = list(range(len(sources) % c.batch_size or c.batch_size, len(sources) + 1, c.batch_size))
    for start, end in zip([0] + ends, ends):
        members = order[start:end]
        chunk = [sources[i] for i in members]
        chunk += [chunk[0]] * (c.batch_size - len(chunk))  # One batch shape for every chunk.
        width = pipeline.bucket_width(max(map(len, chunk)), config.data.bucket_size, room)
        tokens, mask = decode_lib.pad_rows(chunk, width, left=not start_tokens)
        new = decode_lib.generate(params["base"], served, tokens, mask, model=exp.model, options=options, eos_id=eos,
                                  rng=jax.random.fold_in(jax.random.key(c.seed), start), start_tokens=start_tokens)
        for i, generation in zip(members, decode_lib.strip_after_eos(new, eos)):
            generations[i] = generation
        logging.info("decoded %d/%d inputs", end, len(sources))
    return generations


def distinct_inputs(data_config: ml_collections.ConfigDict, split: str) -> list[Example]:
    """The split's examples with one entry per distinct source, holding all its references
    (as the paper scores them), in order of first appearance."""
    merged: dict[str, Example] = {}
    for example in sources.read(data_config, split):
        first = merged.setdefault(example.source, example)
        if first is not example:
            merged[example.source] = dataclasses.replace(first, references=first.references + example.references)
    return list(merged.values())


def sample_inputs(inputs: list[Example], count: int) -> list[Example]:
    """At most `count` of `inputs` (0 = all), evenly spaced through the split, as many seen as
    unseen where both exist (WebNLG 2017's test set is about half each): a cheaper score that
    still reaches every category. Kept in split order."""
    if count == 0 or count >= len(inputs):
        return inputs
    seen = [i for i, e in enumerate(inputs) if e.seen]
    unseen = [i for i, e in enumerate(inputs) if not e.seen]
    groups, chosen = sorted((g for g in (seen, unseen) if g), key=len), []
    for k, group in enumerate(groups):  # The smaller group first; the other takes what it leaves.
        take = min(len(group), (count - len(chosen)) // (len(groups) - k))
        chosen += pipeline.spread(group, take) if take else []
    return [inputs[i] for i in sorted(chosen)]


def decode(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Generations of the best checkpoint for every distinct input of `config.decode.split`.

    `config.decode.strategy` picks greedy, beam search or sampling (KV-cache decoder).
    Inputs with the same source become one, with all their references (as in the paper);
    `decode.max_inputs` > 0 scores a spread sample of them (`sample_inputs`).
    Writes, under `<workdir>/generations/`, for split S: `S.jsonl` (source, references,
    generation, category, seen), `S.txt` (one generation a line, same order), `S_metrics.json` (the data
    set's metrics, `metrics.paper`) and `S_metrics.md` (them in the paper's table layout).
    Single-process only.
    """
    c = config.decode
    require_trained(workdir)
    run = setup(config, workdir, train_data=False, dev_data=False, decoding=True)  # Decoding reads inputs whole.
    params, meta = restore_best(run)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    inputs = sample_inputs(distinct_inputs(config.data, c.split), c.max_inputs)
    texts = [tokenizer.decode(ids).strip() for ids in _generate(config, run.exp, params, tokenizer, inputs)]
    out_dir = os.path.join(workdir, "generations")
    os.makedirs(out_dir, exist_ok=True)
    path = lambda suffix: os.path.join(out_dir, f"{c.split}{suffix}")
    with open(path(".jsonl"), "w") as f:
        for example, text in zip(inputs, texts):
            f.write(json.dumps({"source": example.source, "references": example.references, "generation": text,
                                "category": example.category, "seen": example.seen}) + "\n")
    with open(path(".txt"), "w") as f:
        f.writelines(text.replace("\n", " ") + "\n" for text in texts)
    result = metrics.evaluate(
        metrics.layout_name(config.data.name), texts, [e.references for e in inputs], [e.seen for e in inputs]
    )
    with open(path("_metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(path("_metrics.md"), "w") as f:
        f.write(metrics.markdown(result, row=f"{os.path.basename(os.path.normpath(workdir))} (step {meta['step']})"))
    for example, text in list(zip(inputs, texts))[:3]:
        logging.info("%s\n  -> %s", example.source, text)
    for key, reason in result["unavailable"].items():
        logging.warning("%s not computed: %s", key, reason)
    logging.info("%s metrics: %s", c.split, result["scores"])
    return {
        "step": meta["step"], "split": c.split, "inputs": len(texts), "generations": out_dir,
        "metrics": result["scores"], "samples": texts[:3],
    }
