"""Decoding latency on the default job's model: the KV-cache decoder against Hugging Face.

Greedy decoding of the first dev inputs of the default job (`experiments/webnlg_smollm2.py`,
SmolLM2-135M; preset toy: experiments/tiny_llama.py, random weights) in the job's source
format, left-padded, at batch 1 and batch 32, with the job's kv prefix (randomly
initialised: latency does not depend on what a prefix learned) and without one:

  prefix_jax             `decode.generate`: the prefix folded to K/V once (`decode.serve`),
                         a static KV cache, the whole loop one compiled XLA program
  Hugging Face + PEFT    transformers' `generate` on the same GGUF file (its own loader) with
                         a PEFT PrefixTuningConfig of the job's length and MLP

Every row runs every step (an EOS no token has; Hugging Face: min_new_tokens), and the
per-token latency is the slope between two generation lengths, so the prompt's prefill
drops out. prefix_jax is timed first, then torch, in one process (torch with as many
threads as the process has CPUs); medians of interleaved rounds; the first call of each
prefix_jax variant compiles and is left out.
"""

import jax
import numpy as np

from benchmarks import common, default_job, peft_torch
from prefix_jax import decode, loop, train
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib

BATCH_SIZES = (1, 32)
NEW_TOKENS = {"toy": (4, 36), "smollm2": (16, 48)}  # toy: 32 steps apart, above timing noise.
NEVER = -1  # An EOS id no token has.
OURS, OURS_BASE, HF, HF_BASE = "prefix_jax, prefix", "prefix_jax, base model", "Hugging Face + PEFT, prefix", \
    "Hugging Face, base model"


def sources(config, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `rows` distinct dev inputs in the job's format, left-padded to the longest."""
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    inputs = loop.distinct_inputs(config.data, "dev")[:rows]
    prompts = pipeline.encode_prompts(tokenizer, inputs, max_len=config.model.max_len,
                                      max_new_tokens=max(NEW_TOKENS["smollm2"]), split="dev")
    return decode.pad_rows(prompts)


def _jax_runners(exp, params, tokens, mask, new_tokens) -> tuple[dict, float]:
    """The timed decoders, and the seconds one pass over the base's weights takes (read and
    summed): a lower bound on a batch-1 step, which reads every weight once."""
    read = jax.jit(lambda base: sum(jax.numpy.sum(x) for x in jax.tree.leaves(base)))
    jax.block_until_ready(read(params["base"]))
    weights_read = common.interleaved_medians({"read": lambda: read(params["base"])}, 5)["read"]
    served = {OURS: decode.serve(exp.spec, params["prefix"], exp.model, params["base"]), OURS_BASE: {}}
    runners = {}
    for name, prefix in served.items():
        for n in new_tokens:
            options = decode.Options(max_new_tokens=n)
            runners[(name, n)] = lambda p=prefix, o=options: decode.generate(
                params["base"], p, tokens, mask, model=exp.model, options=o, eos_id=NEVER)
    for run in runners.values():
        jax.block_until_ready(run())  # Compile.
    return runners, weights_read


def _hf_peft_model(config):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(peft_torch.threads())
    return default_job.peft_model(config).eval()


def _torch_runners(with_prefix, tokens, mask, new_tokens) -> tuple[dict, bool]:
    """The timed Hugging Face decoders, and whether PEFT's generate applies the prefix."""
    import torch

    ids, attention = torch.tensor(np.asarray(tokens, np.int64)), torch.tensor(np.asarray(mask, np.int64))

    def generate(net, n):
        with torch.no_grad():
            return net.generate(input_ids=ids, attention_mask=attention, max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=0)

    runners = {}
    for n in new_tokens:
        runners[(HF, n)] = lambda n=n: generate(with_prefix, n)
        # The base alone: PEFT's context manager switches the prefix off.
        runners[(HF_BASE, n)] = lambda n=n: _without_adapter(with_prefix, generate, n)
    for run in runners.values():
        run()  # Warm up.
    return runners, _generate_applies_prefix(with_prefix, ids, attention)


def _generate_applies_prefix(net, ids, attention) -> bool:
    """Whether PEFT's `generate` reads the prefix: its first-step scores against a forward
    pass with the prefix (transformers 5.25 with peft 0.21 drops it, scoring as the base)."""
    import torch

    with torch.no_grad():
        scores = net.generate(input_ids=ids, attention_mask=attention, max_new_tokens=1, do_sample=False,
                              pad_token_id=0, output_scores=True, return_dict_in_generate=True).scores[0]
        forward = net(input_ids=ids, attention_mask=attention).logits[:, -1]
    return bool(torch.allclose(scores, forward, atol=1e-3, rtol=1e-3))


def _without_adapter(net, generate, n):
    with net.disable_adapter():
        return generate(net, n)


def benchmark(size: str, repetitions: int, batch_sizes: tuple = BATCH_SIZES) -> dict:
    config = default_job.job_config(size)
    short, long = NEW_TOKENS["toy" if common.is_toy(size) else "smollm2"]
    exp, state = train.create(config)  # Both models loaded once, for every batch size.
    with_prefix = _hf_peft_model(config)
    rows = {}
    for batch in batch_sizes:
        tokens, mask = sources(config, batch)
        jax_runners, weights_read = _jax_runners(exp, state.params, tokens, mask, (short, long))
        seconds = common.interleaved_medians(jax_runners, repetitions)
        torch_runners, applied = _torch_runners(with_prefix, tokens, mask, (short, long))
        seconds.update(common.interleaved_medians(torch_runners, repetitions))
        latency = {name: common.per_token_seconds(seconds[(name, short)], seconds[(name, long)], short, long)
                   for name in (OURS, OURS_BASE, HF, HF_BASE)}
        rows[str(batch)] = {name: {
            "per_token_seconds": latency[name], "tokens_per_second": batch / latency[name],
            "latency_vs_hf_peft": latency[name] / latency[HF],
            "call_seconds": {str(n): seconds[(name, n)] for n in (short, long)},
        } for name in latency}
        rows[str(batch)]["source_width"] = int(tokens.shape[1])
        rows[str(batch)]["peft_generate_applies_prefix"] = applied
        rows[str(batch)]["weights_read_seconds"] = weights_read
    return {
        "benchmark": "hf_decode", "size": size, "base_weights": config.base_weights or "random",
        "prefix_length": config.prefix.length, "reparam_dim": config.prefix.reparam_dim,
        "new_tokens": [short, long], "threads": peft_torch.threads(), "repetitions": repetitions, "results": rows,
    }


def to_markdown(results: dict) -> str:
    header = ["batch", "source width", "decoder", "per-token latency (ms)", "tokens/s", "latency vs HF + PEFT"]
    rows = [[batch, by_name["source_width"], name, f"{1000 * r['per_token_seconds']:.1f}", f"{r['tokens_per_second']:.0f}",
             f"{r['latency_vs_hf_peft']:.3f}x"]
            for batch, by_name in results["results"].items() for name, r in by_name.items() if isinstance(r, dict)]
    short, long = results["new_tokens"]
    intro = (
        f"Greedy decoding of the default job's dev inputs, base {results['base_weights']}, kv prefix of length "
        f"{results['prefix_length']} (Hugging Face: PEFT with a {results['reparam_dim']}-wide MLP), "
        f"{results['threads']} threads. Per-token latency: (t({long} tokens) - t({short} tokens)) / {long - short}, "
        f"median of {results['repetitions']} interleaved rounds.\n\n"
    )
    floor = min(by_name["weights_read_seconds"] for by_name in results["results"].values())
    intro += (f"Reading the base's float32 weights once (a jitted sum over them) takes {1000 * floor:.1f} ms: the "
              f"floor of a batch-1 step, which reads every weight.\n\n")
    if not all(by_name["peft_generate_applies_prefix"] for by_name in results["results"].values()):
        intro += ("**PEFT's `generate` dropped the prefix in this run**: its first-step scores differ from a forward "
                  "pass with the prefix (they are the base model's), so its row times PEFT's prefix overhead on "
                  "a base-model decode, not prefix decoding.\n\n")
    return intro + common.markdown_table(header, rows)
