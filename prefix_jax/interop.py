"""The `export` and `import` commands: a workdir's prefix <-> a PEFT adapter directory.

`export_best` writes the workdir's best checkpoint as a PEFT prefix-tuning adapter
(kv as is, hidden compiled to K/V, a reparameterisation folded); prompts (EMB-n) and
infixes, which PEFT's prefix tuning cannot hold, go to the project's own format
(prefix_file.py). `import_adapter` turns either into the best checkpoint of a new
workdir, scored on dev, so `eval` and `decode` run on it. Both refuse checkpoints made
for another setup.
Positions: see peft_adapter.py (PEFT shifts the inputs by n; this project does not).
"""

import jax
import ml_collections
from absl import logging

from prefix_jax import loop, peft_adapter, prefix_file, sharding, trainable
from prefix_jax.train import evaluate_loss, make_step_fns


OWN_FORMAT = ("prompt", "infix")  # Kinds PEFT's prefix tuning cannot express.


def _prefix_run(run: loop.Run) -> None:
    if run.exp.spec is None or run.config.train.mode != "prefix":
        raise ValueError(
            f"Only prefix runs have a prefix to export or import (prefix.kind={run.config.prefix.kind!r}, "
            f"train.mode={run.config.train.mode!r}); use a prefix kind and train.mode='prefix'."
        )


def export_best(config: ml_collections.ConfigDict, workdir: str, out: str) -> dict:
    """Writes the best checkpoint's prefix in `workdir` to `out` as a PEFT adapter."""
    loop.require_trained(workdir)
    run = loop.setup(config, workdir, train_data=False, dev_data=False)
    _prefix_run(run)
    params, meta = loop.restore_best(run)
    own_format = run.exp.spec.kind in OWN_FORMAT
    if own_format:
        prefix_file.save(out, run.exp.spec, params["prefix"], run.exp.model.config, config.base_weights)
    else:
        peft_adapter.save(
            out, run.exp.spec, params["prefix"], run.exp.model, params["base"],
            base_model_name_or_path=config.base_weights,
        )
    logging.info("Exported the prefix of step %d to %s.", meta["step"], out)
    return {"step": meta["step"], "adapter": out, "num_virtual_tokens": run.exp.spec.length,
            "format": "prefix_jax" if own_format else "peft"}


def import_adapter(config: ml_collections.ConfigDict, workdir: str, adapter: str) -> dict:
    """Makes the prefix in `adapter` (a PEFT prefix adapter or prefix_file's format) the best
    checkpoint of the new `workdir`."""
    run = loop.setup(config, workdir, train_data=False)
    try:
        _prefix_run(run)
        reader = prefix_file if prefix_file.is_prefix_dir(adapter) else peft_adapter
        spec, kv = reader.load(adapter, run.exp.model.config)
        if run.exp.spec != spec:
            raise ValueError(
                f"The adapter is a {spec}, the config asks for a {run.exp.spec}; run with "
                f"--config.prefix.kind={spec.kind} --config.prefix.length={spec.length} --config.prefix.reparam_dim=0."
            )
        if run.checkpointer.best.latest_step() is not None or run.checkpointer.latest.latest_step() is not None:
            raise FileExistsError(f"{workdir} already holds checkpoints; import into a new workdir.")
        params = {**run.state.params, "prefix": jax.device_put(kv, sharding.replicated(run.exp.mesh))}
        _, eval_fn = make_step_fns(run.exp)
        dev_loss = evaluate_loss(eval_fn, params, run.sharded(run.dev_batches))
        meta = {"fingerprint": run.fingerprint, "step": 0, "dev_loss": dev_loss, "imported_from": adapter}
        run.checkpointer.save_best(0, trainable.partition(params, run.exp.labels)[0], meta, dev_loss)
        run.checkpointer.wait()
    finally:
        run.checkpointer.close()
    logging.info("Imported %s: dev loss %.4f.", adapter, dev_loss)
    return {"adapter": adapter, "dev_loss": dev_loss, "num_virtual_tokens": spec.length}
