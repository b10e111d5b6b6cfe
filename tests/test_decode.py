"""The reference greedy decoder; the cached greedy, beam and sampling decoders; prefix banks."""

import collections
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefix_jax import decode
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.models import gpt2, families

EOS = 36


def _step_by_step(model, base_params, spec, prefix, source, steps):
    """Argmax one token at a time on the growing, unpadded sequence, fed as in training:
    a slot for the token to predict, the loss mask on the new tokens (an infix needs it)."""
    apply = jax.jit(lambda params, tokens, inputs: model.apply({"params": params}, tokens, **inputs))
    tokens = list(source)
    for _ in range(steps):
        targets = (jnp.arange(len(tokens) + 1) >= len(source))[None]
        inputs = prefix_lib.model_inputs(spec, prefix, model.config.prefix_geometry, loss_mask=targets)
        logits = apply(base_params, jnp.array([tokens + [0]]), inputs)
        tokens.append(int(jnp.argmax(logits[0, -2])))
        if tokens[-1] == EOS:
            break
    return tokens[len(source):]


@pytest.mark.parametrize("kind", ["kv", "infix"])
def test_greedy_matches_step_by_step_decoding(config, model, base_params, kind):
    spec = prefix_lib.PrefixSpec(kind=kind, length=3)
    prefix = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(7))
    prefix = {name: 40 * value for name, value in prefix.items()}  # A prefix that matters.
    sources = [[3, 9, 4, 1, 5], [7, 2], [11, 30, 8]]
    tokens, mask = decode.left_pad([np.array(s) for s in sources])
    assert tokens[1].tolist() == [0, 0, 0, 7, 2] and mask[1].tolist() == [0, 0, 0, 1, 1]
    new = decode.greedy(
        {"base": base_params, "prefix": prefix}, tokens, mask, model=model, spec=spec,
        max_new_tokens=8, eos_id=EOS,
    )
    got = decode.strip_after_eos(new, EOS)
    for row, source in enumerate(sources):
        want = _step_by_step(model, base_params, spec, prefix, source, 8)
        assert got[row] == [t for t in want if t != EOS], row
    assert len({tuple(g) for g in got}) > 1, "rows should differ"


def test_strip_after_eos():
    assert decode.strip_after_eos(np.array([[4, 5, EOS, EOS], [6, 7, 8, 9]]), EOS) == [[4, 5], [6, 7, 8, 9]]


# --- The cached decoders (decode.generate) against the reference and exhaustive search. ---

SOURCES = [[3, 9, 4, 1, 5], [7, 2], [11, 30, 8]]
PREFIXES = {  # name -> (spec, scale): scaled so that the prefix changes the generations.
    "none": (None, 1.0),
    "hidden": (prefix_lib.PrefixSpec(kind="hidden", length=3), 1.0),
    "kv": (prefix_lib.PrefixSpec(kind="kv", length=3), 40.0),
    "kv_reparam": (prefix_lib.PrefixSpec(kind="kv", length=3, reparam_dim=8), 1.0),
    "prompt": (prefix_lib.PrefixSpec(kind="prompt", length=3), 40.0),
    "infix": (prefix_lib.PrefixSpec(kind="infix", length=3, reparam_dim=8), 1.0),
    "infix_plain": (prefix_lib.PrefixSpec(kind="infix", length=3), 40.0),
}


def _task(config, name, seed=7):
    spec, scale = PREFIXES[name]
    if spec is None:
        return None, {}
    prefix = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(seed))
    return spec, {k: scale * v if k in ("key", "value", "prompt") else v for k, v in prefix.items()}


def _padded(sources=SOURCES):
    return decode.left_pad([np.array(s) for s in sources])


@pytest.mark.parametrize("name", list(PREFIXES))
@pytest.mark.parametrize("eos", [EOS, 20])  # 20 ends some rows early in these models.
def test_cached_greedy_matches_reference(config, model, base_params, name, eos):
    spec, prefix = _task(config, name)
    tokens, mask = _padded()
    want = decode.greedy({"base": base_params, "prefix": prefix}, tokens, mask, model=model, spec=spec,
                         max_new_tokens=8, eos_id=eos)
    served = decode.serve(spec, prefix, model, base_params)
    got = decode.generate(base_params, served, tokens, mask, model=model,
                          options=decode.Options(max_new_tokens=8), eos_id=eos)
    np.testing.assert_array_equal(got, want)
    if name != "none":  # The prefix must matter, or the test could not see it ignored.
        plain = decode.generate(base_params, {}, tokens, mask, model=model,
                                options=decode.Options(max_new_tokens=8), eos_id=eos)
        assert not np.array_equal(got, plain)


def test_cached_greedy_of_literal_hidden_prefix_matches_reference(config, model, base_params):
    spec = prefix_lib.PrefixSpec(kind="hidden", length=3, literal=True)
    prefix = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(7))
    tokens, mask = _padded()
    want = decode.greedy({"base": base_params, "prefix": prefix}, tokens, mask, model=model, spec=spec,
                         max_new_tokens=6, eos_id=EOS)
    got = decode.generate(base_params, decode.serve(spec, prefix, model, base_params), tokens, mask,
                          model=model, options=decode.Options(max_new_tokens=6), eos_id=EOS)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["none", "kv", "prompt", "infix"])
def test_beam_of_one_is_greedy(config, model, base_params, name):
    spec, prefix = _task(config, name)
    served = decode.serve(spec, prefix, model, base_params)
    tokens, mask = _padded()
    run = lambda options: decode.generate(base_params, served, tokens, mask, model=model, options=options, eos_id=20)
    greedy = run(decode.Options(max_new_tokens=8))
    beam = run(decode.Options(strategy="beam", beam_size=1, max_new_tokens=8, length_penalty=0.7))
    np.testing.assert_array_equal(beam, greedy)
    assert (np.asarray(greedy) == 20).any(), "some row should end early"


def _log_probs(model, base_params, inputs, source, sequences):
    """log p(token) at each generated position, [len(sequences), steps], of source + sequence,
    all sequences in one batch (causal: a hypothesis's prefix scores as it would alone)."""
    tokens = jnp.array([list(source) + list(seq) for seq in sequences])
    logprobs = jax.nn.log_softmax(model.apply({"params": base_params}, tokens, **inputs), axis=-1)
    steps = len(sequences[0])
    positions = jnp.arange(len(source) - 1, len(source) - 1 + steps)
    return np.asarray(jnp.take_along_axis(logprobs[:, positions], tokens[:, len(source):, None], axis=-1)[..., 0])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("name", ["none", "kv"])
@pytest.mark.parametrize("min_new_tokens, banned_tokens, eos_penalty", [(0, (), 0.0), (2, (1,), 0.0), (0, (), 1.5)])
def test_wide_beam_finds_the_exhaustive_optimum(length_penalty, name, min_new_tokens, banned_tokens, eos_penalty):
    """Beam search as wide as the search space finds the best hypothesis; with bans, the best
    one that has no banned token and no EOS before min_new_tokens; an ending hypothesis pays
    eos_penalty (scored unrenormalised)."""
    config = gpt2.GPT2Config(vocab_size=5, num_layers=2, num_heads=2, d_model=16, d_ff=32, max_len=16)
    model = gpt2.GPT2(config)
    base = jax.tree.map(lambda x: 10.0 * x, families.init_params(model, jax.random.key(3)))
    spec, prefix = _task(config, name)
    eos, steps, vocab = 4, 3, config.vocab_size
    sources = [[1, 2, 3], [0, 2]]
    tokens, mask = _padded(sources)
    options = decode.Options(strategy="beam", beam_size=vocab**steps, max_new_tokens=steps,
                             length_penalty=length_penalty, early_stopping=False,
                             min_new_tokens=min_new_tokens, banned_tokens=banned_tokens, eos_penalty=eos_penalty)
    got = decode.strip_after_eos(decode.generate(base, decode.serve(spec, prefix, model, base), tokens, mask,
                                                 model=model, options=options, eos_id=eos), eos)
    inputs = prefix_lib.model_inputs(spec, prefix, config.prefix_geometry)
    sequences = list(itertools.product(range(vocab), repeat=steps))
    for row, source in enumerate(sources):
        logprobs = _log_probs(model, base, inputs, source, sequences)
        scored = {}  # Every hypothesis: ends at its first EOS or runs to `steps` tokens.
        for seq, token_logprobs in zip(sequences, logprobs):
            length = seq.index(eos) + 1 if eos in seq else steps
            if length <= min_new_tokens and eos in seq or set(seq[:length]) & set(banned_tokens):
                continue
            ended = eos_penalty if eos in seq else 0.0
            scored[seq[:length]] = (float(token_logprobs[:length].sum()) - ended) / length**length_penalty
        best = max(scored, key=scored.get)
        ranked = sorted(scored.values(), reverse=True)
        assert ranked[0] - ranked[1] > 1e-4, "the optimum should be unique"
        assert got[row] == [t for t in best if t != eos], (row, scored[tuple(got[row])], scored[best])


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_banned_tokens_min_new_tokens_and_eos_penalty(config, model, base_params, strategy):
    tokens, mask = _padded()
    run = lambda **kw: decode.strip_after_eos(decode.generate(
        base_params, {}, tokens, mask, model=model, eos_id=20, rng=jax.random.key(0),
        options=decode.Options(strategy=strategy, beam_size=3, max_new_tokens=8, temperature=0.5, **kw)), 20)
    free = run()
    assert min(map(len, free)) < 3, "some row should end early"
    frequent = collections.Counter(t for row in free for t in row).most_common(2)
    banned = tuple(t for t, _ in frequent)
    for row in run(banned_tokens=banned):
        assert not set(row) & set(banned), row
    assert all(len(row) >= 3 for row in run(min_new_tokens=3))
    assert run(min_new_tokens=0, banned_tokens=(), eos_penalty=0.0) == free
    # An EOS penalty lengthens rows; one beyond any logit gap is banning EOS.
    assert run(eos_penalty=1e9) == run(banned_tokens=(20,))
    if strategy == "greedy":
        longer = run(eos_penalty=2.0)
        assert all(len(a) >= len(b) for a, b in zip(longer, free)) and longer != free
    with pytest.raises(ValueError, match="min_new_tokens must be in"):
        decode.Options(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ValueError, match="eos_penalty must be >= 0"):
        decode.Options(eos_penalty=-1.0)


def test_newline_tokens_of_a_byte_level_vocabulary():
    tokenizer = tokenizer_lib.byte_level()
    newlines = tokenizer_lib.newline_ids(tokenizer)
    assert [tokenizer.decode([i]) for i in newlines] == ["\n"]


def test_no_repeat_ngram(config, model, base_params):
    tokens, mask = _padded()
    run = lambda options: decode.strip_after_eos(
        decode.generate(base_params, {}, tokens, mask, model=model, options=options, eos_id=EOS), EOS)
    has_repeat = lambda row, n: len({tuple(row[i : i + n]) for i in range(len(row) - n + 1)}) < len(row) - n + 1
    greedy = run(decode.Options(max_new_tokens=10))
    assert any(has_repeat(row, 2) for row in greedy)
    for strategy in ("greedy", "beam"):
        out = run(decode.Options(strategy=strategy, beam_size=3, max_new_tokens=10, no_repeat_ngram_size=2))
        assert not any(has_repeat(row, 2) for row in out), strategy
        single = run(decode.Options(strategy=strategy, beam_size=3, max_new_tokens=10, no_repeat_ngram_size=1))
        assert all(len(set(row)) == len(row) for row in single), strategy


def test_sampling(config, model, base_params):
    spec, prefix = _task(config, "kv")
    served = decode.serve(spec, prefix, model, base_params)
    tokens, mask = _padded()
    run = lambda seed, **kw: np.asarray(decode.generate(
        base_params, served, tokens, mask, model=model, eos_id=EOS, rng=jax.random.key(seed),
        options=decode.Options(max_new_tokens=8, **kw)))
    greedy = run(0)
    np.testing.assert_array_equal(run(0, strategy="sample", top_k=1), greedy)
    np.testing.assert_array_equal(run(1, strategy="sample", top_p=1e-6), greedy)
    hot = dict(strategy="sample", temperature=3.0)
    np.testing.assert_array_equal(run(5, **hot), run(5, **hot))
    assert not np.array_equal(run(5, **hot), run(6, **hot))
    assert not np.array_equal(run(5, **hot), greedy)


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda top_k=0, top_p=None: np.isfinite(np.asarray(decode.search.filter_logits(logits, 1.0, top_k, top_p)))[0].tolist()
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8.
    assert kept(top_p=0.81) == [True, True, True, False]
    assert kept(top_p=1.0) == [True] * 4
    # Per-row values (a server's requests): each row filtered by its own top_p and temperature.
    rows = decode.search.filter_logits(jnp.concatenate([logits] * 2), jnp.array([1.0, 2.0]), 0, jnp.array([0.8, 1.0]))
    assert np.isfinite(np.asarray(rows)).tolist() == [[True, True, False, False], [True] * 4]
    np.testing.assert_allclose(rows[1], logits[0] / 2, rtol=1e-6)


def test_options_reject_bad_values():
    with pytest.raises(ValueError, match="Unknown decode strategy 'nucleus'"):
        decode.Options(strategy="nucleus")
    with pytest.raises(ValueError, match="temperature"):
        decode.Options(strategy="sample", temperature=0.0)


# --- Multi-tenant serving: a bank of prefixes, one task per row. ---

@pytest.mark.parametrize("names", [("kv", "hidden", "kv_reparam"), ("prompt", "prompt"), ("infix_plain", "kv", "infix")])
def test_multi_tenant_batch_equals_single_task_runs(config, model, base_params, names):
    lengths = (2, 4, 3)
    tasks = []
    for i, name in enumerate(names):
        spec, _ = PREFIXES[name]
        spec = dataclasses.replace(spec, length=lengths[i])
        prefix = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(10 + i))
        prefix = {k: 30 * v if k in ("key", "value", "prompt") else v for k, v in prefix.items()}
        tasks.append(decode.serve(spec, prefix, model, base_params))
    bank = decode.prefix_bank(tasks)
    sources = SOURCES + [[5, 6, 7, 8]]
    task_ids = np.array([0, len(names) - 1, 1, 0])
    tokens, mask = _padded(sources)
    options = decode.Options(max_new_tokens=6)
    beam = decode.Options(strategy="beam", beam_size=3, max_new_tokens=6)
    mixed_logits = decode.forward(base_params, bank, tokens, mask, model=model, task_ids=task_ids)
    mixed = decode.generate(base_params, bank, tokens, mask, model=model, options=options, eos_id=EOS, task_ids=task_ids)
    mixed_beam = decode.generate(base_params, bank, tokens, mask, model=model, options=beam, eos_id=EOS, task_ids=task_ids)
    outputs = set()
    for row, task in enumerate(task_ids):
        single = dict(model=model, eos_id=EOS)
        alone = decode.forward(base_params, tasks[task], tokens, mask, model=model)
        real = mask[row] == 1  # Padding rows attend to nothing real (with an infix, not even the prefix).
        np.testing.assert_allclose(mixed_logits[row][real], alone[row][real], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(mixed[row], decode.generate(base_params, tasks[task], tokens, mask, options=options, **single)[row])
        np.testing.assert_array_equal(mixed_beam[row], decode.generate(base_params, tasks[task], tokens, mask, options=beam, **single)[row])
        outputs.add((task, tuple(np.asarray(decode.generate(base_params, tasks[task], tokens[:1], mask[:1], options=options, **single))[0])))
    assert len({out for _, out in outputs}) == len(names), "each task should steer the same source differently"


def test_multi_tenant_errors(config, model, base_params):
    kv = decode.serve(*_task(config, "kv"), model, base_params)
    prompt = decode.serve(*_task(config, "prompt"), model, base_params)
    bank = decode.prefix_bank([kv, kv])
    tokens, mask = _padded()
    run = lambda served, ids: decode.forward(base_params, served, tokens, mask, model=model, task_ids=ids)
    with pytest.raises(ValueError, match=r"Unknown task ids \[2, 5\]"):
        run(bank, [0, 2, 5])
    with pytest.raises(ValueError, match="one per row"):
        run(bank, [0, 1])
    with pytest.raises(ValueError, match="pass task_ids"):
        run(bank, None)
    with pytest.raises(ValueError, match="one kind"):
        decode.prefix_bank([kv, prompt])
    other = gpt2.GPT2Config(vocab_size=37, num_layers=3, num_heads=4, d_model=16, d_ff=32, max_len=32)
    foreign = decode.serve(*_task(other, "kv"), gpt2.GPT2(other), base_params)
    with pytest.raises(ValueError, match="shapes differ"):
        decode.prefix_bank([kv, foreign])
    with pytest.raises(ValueError, match=r"\(layers, kv_heads, head_dim\) = \(3, 4, 4\) but the model has \(3, 2, 8\)"):
        run(foreign, None)


def test_decode_config_section_maps_to_options():
    from experiments import tiny
    from prefix_jax import loop

    config = tiny.get_config()
    assert loop.decode_options(config.decode) == decode.Options(max_new_tokens=96, beam_size=5)
    config.decode.update(min_new_tokens=5, ban_newlines=True, eos_penalty=0.5)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    options = loop.decode_options(config.decode, tokenizer)
    assert (options.min_new_tokens, options.banned_tokens, options.eos_penalty) == (
        5, tokenizer_lib.newline_ids(tokenizer), 0.5)
    with pytest.raises(ValueError, match="ban_newlines needs the tokenizer"):
        loop.decode_options(config.decode)
    config.decode.strategy = "top_p"
    with pytest.raises(ValueError, match="Unknown decode strategy 'top_p'"):
        loop.decode_options(config.decode, tokenizer)


@pytest.mark.parametrize("kind", ["kv", "infix", "prompt"])
def test_prefill_runs_the_head_on_the_last_position_alone(config, model, base_params, kind):
    """Decoding reads the prefill's last logits only: last_only gives exactly those, and the
    compiled prefill does fewer FLOPs (the head runs on one row, not source_len)."""
    spec = prefix_lib.PrefixSpec(kind=kind, length=3)
    prefix = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(7))
    served = decode.serve(spec, prefix, model, base_params)
    tokens, mask = decode.left_pad([np.array(s) for s in SOURCES])
    family = families.of(model)
    prefill = lambda last_only: jax.jit(lambda params: family.prefill(
        model, params, served, tokens, mask, 4, last_only=last_only)[0])
    full, last = prefill(False)(base_params), prefill(True)(base_params)
    assert last.shape == (len(SOURCES), 1, config.vocab_size)
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-6, atol=1e-6)
    flops = lambda last_only: prefill(last_only).lower(base_params).compile().cost_analysis()["flops"]
    head = 2 * config.d_model * config.vocab_size
    assert flops(False) - flops(True) >= head * len(SOURCES) * (tokens.shape[1] - 1)


def test_batched_decoding_returns_each_inputs_own_generation():
    """loop._generate sorts inputs by length, batches them (the remainder batch first, padded
    with filler rows) and puts each generation back at its input: batches of 3 over 7
    inputs give what decoding each input alone gives."""
    from experiments import tiny_llama
    from prefix_jax import loop, train
    from prefix_jax.data.records import Example

    config = tiny_llama.get_config()
    config.prefix.reparam_dim = 0
    config.decode.update(max_new_tokens=6, strategy="greedy")
    exp, state = train.create(config)
    params = dict(state.params, prefix=jax.tree.map(lambda x: 40 * x, state.params["prefix"]))
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    sources = [" | a : b : c", " | Aarhus : leader : Jacob", " | x", " | long entity name : relation : object two",
               " | q : r", " | one : two : three | four : five : six", " | zz : yy"]
    inputs = [Example(source=s, references=(s,)) for s in sources]

    def generations(batch_size):
        config.decode.batch_size = batch_size
        return loop._generate(config, exp, params, tokenizer, inputs)

    alone, batched = generations(1), generations(3)
    assert batched == alone
    assert len({tuple(g) for g in alone}) > 3, "inputs should decode differently"
