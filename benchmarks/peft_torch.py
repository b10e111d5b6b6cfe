"""prefix_jax against Hugging Face PEFT prefix tuning on PyTorch, at equal settings.

Both sides train a model of the same family and dimensions (transformers' GPT2LMHeadModel
with n_inner = d_ff, dropout 0, tied embeddings, or LlamaForCausalLM; float32; torch's
weights random, as their values do not change a step's speed) on the same batch shape with
the loss on the second half of each row, AdamW with the same lr / betas / eps / no
weight decay and gradient clipping at the same norm. Variants:

  prefix kv                   PEFT PrefixTuningConfig(num_virtual_tokens=n), no projection
                              vs our kv prefix (learned K/V, 2 L n d numbers)
  prefix kv + reparam (512)   prefix_projection=True, encoder_hidden_size=512 vs reparam_dim=512
  full fine-tuning            plain GPT2LMHeadModel vs our full mode

Each (framework, variant) runs in its own fresh process (`isolated.py`): the same
memory method for both, and no framework's idle thread pool spinning while the
other computes. Each process is pinned to k CPUs (k = 1 and k = all of them), and
torch uses k intra-op threads, as many as XLA's CPU client sees. Passes alternate
the frameworks; medians over passes are reported. Torch is optional: `available()` says whether it is installed.
"""

import importlib.util
import os
import statistics

from benchmarks import common, isolated, train_step

VARIANTS = {  # name -> PEFT prefix settings (None: full fine-tuning, no PEFT).
    "prefix kv": {"prefix_projection": False},
    "prefix kv + reparam (512)": {"prefix_projection": True, "encoder_hidden_size": 512},
    train_step.FULL: None,
}


def available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("torch", "transformers", "peft"))


def threads() -> int:
    """The CPUs this process may use: what XLA's CPU client sizes its thread pool by."""
    return len(os.sched_getaffinity(0))


def torch_run_fn(model: dict, batch_size: int, sequence_length: int, variant: str, prefix_length: int,
                 steps: int):
    """A callable doing `steps` PyTorch train steps (forward, backward, clip, AdamW); returns the loss."""
    import peft
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads())
    train_config = train_step.variant_config(model, batch_size, {}).train
    net = _torch_model(model, prefix_length)
    if VARIANTS[variant] is not None:
        net = peft.get_peft_model(net, peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=prefix_length, **VARIANTS[variant]
        ))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model["vocab_size"], (batch_size, sequence_length), generator=generator)
    mask = torch.ones_like(tokens)
    labels = tokens.clone()
    labels[:, : sequence_length // 2] = -100  # Loss on the second half, as train_step.random_batch.
    return torch_training(net, train_config, [(tokens, mask, labels)] * steps)


def random_llama(model, max_positions: int):
    """transformers' LlamaForCausalLM, randomly initialised, of a Llama model section's (or
    preset's) dimensions."""
    import transformers

    section = common.model_section(dict(model))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=section.vocab_size, hidden_size=section.d_model, intermediate_size=section.d_ff,
        num_hidden_layers=section.num_layers, num_attention_heads=section.num_heads,
        num_key_value_heads=section.num_kv_heads, head_dim=section.head_dim, max_position_embeddings=max_positions,
        rope_theta=section.rope_theta, rms_norm_eps=section.rms_norm_epsilon, tie_word_embeddings=section.tie_embeddings,
    ))


def _torch_model(model: dict, prefix_length: int):
    """transformers' model of the preset's family and dimensions, randomly initialised
    (the speed of a step does not depend on the weights' values)."""
    import transformers

    if model.get("family") == "llama":
        return random_llama(model, model["max_len"] + prefix_length)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=model["vocab_size"], n_positions=model["max_len"] + prefix_length, n_embd=model["d_model"],
        n_layer=model["num_layers"], n_head=model["num_heads"], n_inner=model["d_ff"],
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
    ))


def torch_training(net, train_config, batches):
    """A callable doing one AdamW step (our optimizer settings, gradients clipped) per
    (input_ids, attention_mask, labels) batch; returns the last loss."""
    import torch

    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=train_config.lr, betas=(train_config.adam_b1, train_config.adam_b2), eps=train_config.adam_eps,
        weight_decay=train_config.weight_decay,
    )

    def run():
        for ids, mask, labels in batches:
            loss = net(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train_config.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return run


def benchmark(size: str, repetitions: int, steps: int, passes: int = 1, variants: tuple = tuple(VARIANTS),
              thread_counts: tuple = ()) -> dict:
    """Both frameworks at each thread count (default 1 and every CPU), in alternating fresh processes."""
    model, shape = common.MODELS[size], train_step.SHAPES[size]
    batch_size, length = shape["batch_size"], shape["sequence_length"]
    n = train_step.PREFIX_LENGTH
    common_kwargs = dict(model=model, batch_size=batch_size, sequence_length=length, steps=steps, prefix_length=n)
    measure = {
        "prefix_jax": lambda variant, cpus: isolated.run_isolated(
            "benchmarks.train_step", "run_fn", dict(common_kwargs, overrides=train_step.VARIANTS[variant]),
            repetitions=repetitions, cpus=cpus,
        ),
        "peft_torch": lambda variant, cpus: isolated.run_isolated(
            "benchmarks.peft_torch", "torch_run_fn", dict(common_kwargs, variant=variant),
            repetitions=repetitions, preload=("jax", "torch", "transformers", "peft"), cpus=cpus,
        ),
    }
    thread_counts = sorted(thread_counts or {1, threads()})
    runs = {(f, v, k): [] for f in measure for v in variants for k in thread_counts}
    for _ in range(passes):
        for k in thread_counts:
            for variant in variants:
                for framework, fn in measure.items():
                    runs[(framework, variant, k)].append(fn(variant, k))
    tokens_per_call = batch_size * length * steps
    rows = {}
    for k in thread_counts:
        for variant in variants:
            sides = {}
            for framework in measure:
                results = runs[(framework, variant, k)]
                seconds = statistics.median(r["call_seconds"] for r in results)
                sides[framework] = {
                    "step_seconds": seconds / steps,
                    "tokens_per_second": tokens_per_call / seconds,
                    "first_call_seconds": statistics.median(r["first_call_seconds"] for r in results),
                    "memory": {key: statistics.median(r["memory"][key] for r in results)
                               for key in ("baseline_bytes", "peak_bytes", "train_bytes")},
                }
            jax_side, torch_side = sides["prefix_jax"], sides["peft_torch"]
            rows.setdefault(str(k), {})[variant] = {
                **sides,
                "tokens_per_second_ratio": jax_side["tokens_per_second"] / torch_side["tokens_per_second"],
                "train_memory_ratio": jax_side["memory"]["train_bytes"] / torch_side["memory"]["train_bytes"],
                "peak_memory_ratio": jax_side["memory"]["peak_bytes"] / torch_side["memory"]["peak_bytes"],
            }
    return {
        "benchmark": "peft_torch",
        "size": size,
        "model": common.as_run(model),
        "batch_size": batch_size,
        "sequence_length": length,
        "prefix_length": n,
        "repetitions": repetitions,
        "steps_per_repetition": steps,
        "passes": passes,
        "thread_counts": thread_counts,
        "results": rows,  # threads -> variant -> row
    }


def to_markdown(results: dict) -> str:
    header = ["threads", "variant", "prefix_jax tokens/s", "PEFT torch tokens/s", "speed ratio", "prefix_jax train MiB",
              "PEFT train MiB", "train memory ratio", "prefix_jax peak MiB", "PEFT peak MiB", "peak ratio"]
    rows = [
        [k, name, f"{r['prefix_jax']['tokens_per_second']:.0f}", f"{r['peft_torch']['tokens_per_second']:.0f}",
         f"{r['tokens_per_second_ratio']:.2f}x", common.mib(r["prefix_jax"]["memory"]["train_bytes"]),
         common.mib(r["peft_torch"]["memory"]["train_bytes"]), f"{r['train_memory_ratio']:.2f}x",
         common.mib(r["prefix_jax"]["memory"]["peak_bytes"]), common.mib(r["peft_torch"]["memory"]["peak_bytes"]),
         f"{r['peak_memory_ratio']:.2f}x"]
        for k, by_variant in results["results"].items()
        for name, r in by_variant.items()
    ]
    intro = (
        f"prefix_jax vs PEFT (PyTorch), model {results['model']}, batch {results['batch_size']} x "
        f"{results['sequence_length']}, prefix length {results['prefix_length']}; "
        f"each side in a fresh process pinned to as many CPUs as it has threads, median of {results['repetitions']} rounds of {results['steps_per_repetition']} "
        f"steps, median over {results['passes']} alternating passes. Ratios are prefix_jax / PEFT. Train memory "
        f"(peak - baseline) is the fair comparison: the PEFT process's peak RSS also holds jax and prefix_jax, "
        f"which the measuring harness imports.\n\n"
    )
    return intro + common.markdown_table(header, rows)
