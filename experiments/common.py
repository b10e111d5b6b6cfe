"""Defaults every experiment starts from; each experiment file overrides what it changes.

Every field any experiment uses is declared here, so that a mistyped
`--config.x.y=...` or override is an error rather than a new field.
"""

import ml_collections

from prefix_jax import sharding


def base_lm_model() -> ml_collections.ConfigDict:
    """The embedded pre-trained model's architecture (data/base_lm/base_model.json)."""
    return ml_collections.ConfigDict(
        dict(family="gpt2", vocab_size=4096, num_layers=4, num_heads=4, d_model=256, d_ff=1024, max_len=512,
             dropout_rate=0.0, tie_embeddings=True, adapter_dim=0, dtype="float32", remat="none")
    )


def bart_model(**dims) -> ml_collections.ConfigDict:
    """An encoder-decoder's model section (models/bart.py). Each family has its own fields, so a
    field of another family (`--config.model.num_layers` on BART) is an unknown-field error."""
    fields = dict(family="bart", vocab_size=257, encoder_layers=2, decoder_layers=2, num_heads=4, d_model=64,
                  d_ff=256, max_len=1024, scale_embedding=False, dtype="float32")
    unknown = set(dims) - set(fields)
    if unknown:
        raise ValueError(f"bart_model got unknown fields {sorted(unknown)}; expected some of {sorted(fields)}.")
    return ml_collections.ConfigDict(fields | dims)


def llama_model(**dims) -> ml_collections.ConfigDict:
    """A Llama-style decoder's model section (models/llama.py: RoPE, RMSNorm, SwiGLU, grouped-query
    attention). The defaults are a random tiny GQA model for smoke runs."""
    fields = dict(family="llama", vocab_size=257, num_layers=2, num_heads=4, num_kv_heads=2, d_model=64, d_ff=128,
                  max_len=1024, head_dim=16, rope_theta=10000.0, rms_norm_epsilon=1e-5, tie_embeddings=False,
                  adapter_dim=0, dtype="float32", remat="none")
    unknown = set(dims) - set(fields)
    if unknown:
        raise ValueError(f"llama_model got unknown fields {sorted(unknown)}; expected some of {sorted(fields)}.")
    return ml_collections.ConfigDict(fields | dims)


def smollm2_135m_model() -> ml_collections.ConfigDict:
    """SmolLM2-135M-Instruct's architecture, as its GGUF file (base_weights="smollm2-135m") records it."""
    return llama_model(vocab_size=49152, num_layers=30, num_heads=9, num_kv_heads=3, d_model=576, d_ff=1536,
                       max_len=8192, head_dim=64, rope_theta=100000.0, rms_norm_epsilon=1e-5, tie_embeddings=True)


def base_config(arg=None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"This experiment takes no config argument, got {arg!r}.")
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(
        dict(
            family="gpt2",  # gpt2 (these fields) | llama (llama_model()) | bart (encoder-decoder: bart_model())
            vocab_size=257,  # The byte tokenizer: 256 bytes + <|endoftext|>.
            num_layers=2,
            num_heads=4,
            d_model=64,
            d_ff=256,
            max_len=1024,  # Byte-level WebNLG pairs reach ~1000 tokens.
            dropout_rate=0.0,
            tie_embeddings=True,
            adapter_dim=0,  # Houlsby adapters' width, for train.mode="adapter"; 0 = none
            dtype="float32",  # activations: float32 | bfloat16 | float16 (parameters stay float32)
            remat="none",  # activation checkpointing per layer: none | full | dots (models/decoder.py)
        )
    )
    # Pre-trained base weights: a project base-model directory (base_model.json + base_model.safetensors;
    # models/weights.py) or a Hugging Face one (config.json + model.safetensors; convert.py), told apart
    # by their files (convert.load_base); "" = random init from train.seed.
    config.base_weights = ""
    config.prefix = ml_collections.ConfigDict(
        dict(
            kind="hidden",  # hidden | kv | prompt (= EMB-n) | infix | none
            length=10,
            reparam_dim=0,  # kv / infix only: Li & Liang's MLP width (512 in the paper)
            literal=False,  # hidden only: reference path (concatenate, run, slice)
            init="random",  # random | words
            init_tokens=(116, 97, 98, 108, 101),  # token ids for init="words" ("table" in bytes)
            init_fit_steps=500,  # init="words" with reparam_dim > 0: Adam steps fitting the MLP to the words
            init_fit_lr=1e-4,  # ... and their learning rate (the official code's 500 and 1e-4)
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            mode="prefix",  # prefix | full | top_k | adapter
            top_k=0,
            lr=5e-3,
            warmup_steps=20,
            num_steps=400,
            batch_size=16,
            weight_decay=0.0,
            adam_b1=0.9,
            adam_b2=0.999,
            adam_eps=1e-8,
            grad_clip_norm=1.0,
            loss_per="token",  # token | sequence (Li & Liang's code: NLL summed per sequence)
            seed=0,
            log_every=25,
            eval_every=200,
            eval_sequences=0,  # dev loss on this many dev sequences, evenly spaced (0 = all read)
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(
            name="webnlg",  # webnlg | e2e | dart | xsum | copy | text | tfds:{web_nlg,e2e_cleaned,dart,xsum}
            train_path="data/webnlg2017_train_dev.tar.xz",
            dev_path="data/webnlg2017_train_dev.tar.xz",
            test_path="",  # decode.split=test reads it (WebNLG 2017 test: webnlg2017/test/**/*.xml)
            tfds_data_dir="",  # for tfds:*; "" = TFDS's default
            tokenizer="byte",  # "byte", a tokenizer.json path, a GGUF file or a known name (smollm2-135m)
            bucket_size=64,
            pack_width=0,  # > 0: several sequences per row of this many tokens (decoder-only; kv/hidden prefix)
            block_len=256,  # text only: tokens per pre-training block
            max_source_len=512,  # encoder-decoder only: source tokens kept (with BOS/EOS)
            max_target_len=60,  # encoder-decoder only: target tokens kept (with BOS/EOS) for train and dev loss
            num_train=0,  # 0 = all examples (inputs, not pairs; blocks for text)
            num_dev=0,
            num_test=0,
            # webnlg: categories held out of training, evaluated as unseen ("Airport,Food"; sources.hold_out)
            heldout_categories="",
        )
    )
    config.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
    # Decoding with a KV cache (prefix compiled to K/V once). strategy: greedy | beam | sample;
    # Li & Liang decode table-to-text with beam search: --config.decode.strategy=beam.
    # after_training: `train` ends by decoding dev with the best checkpoint (`decode` command).
    config.decode = ml_collections.ConfigDict(
        dict(
            max_new_tokens=96,
            batch_size=16,
            after_training=False,
            split="dev",  # dev | test: which split's distinct inputs to decode and score
            max_inputs=0,  # 0 = all; else this many, evenly spaced, half seen and half unseen (loop.sample_inputs)
            strategy="greedy",
            beam_size=5,  # beam only
            length_penalty=1.0,  # beam only: score = sum(log p) / length**length_penalty
            early_stopping=True,  # beam only: stop a row at beam_size finished hypotheses
            no_repeat_ngram_size=0,  # 0 = off; n-grams of the generated tokens only
            min_new_tokens=0,  # EOS is banned before this many new tokens (Li & Liang: 5)
            eos_penalty=0.0,  # subtracted from EOS's logit each step: longer outputs (search.Options)
            ban_newlines=False,  # never generate a token whose text holds a newline (Li & Liang do so)
            temperature=1.0,  # sample only
            top_k=0,  # sample only; 0 = off
            top_p=1.0,  # sample only; 1.0 = off
            seed=0,  # sample only
        )
    )
    # `serve` (prefix_jax/server.py): one frozen model, many tasks' prefixes, continuous batching.
    config.serve = ml_collections.ConfigDict(
        dict(
            max_len=512,  # positions a request may use, prompt + new tokens (each KV-cache row; <= model.max_len)
            rows=16,  # requests decoded together (KV-cache rows); more wait in the queue
            max_queue=256,  # waiting requests beyond this are refused (429)
            max_tokens=256,  # the most new tokens one request may ask for
            task_slots=8,  # prefix bank size; loading a task into a free slot compiles nothing
            grace_seconds=30.0,  # on SIGTERM/SIGINT, in-flight requests get this long to finish
        )
    )
    # Device mesh (-1: all remaining devices) and the logical-axis -> mesh-axis rules.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.sharding = ml_collections.ConfigDict(dict(rules=sharding.DEFAULT_RULES))
    return config
