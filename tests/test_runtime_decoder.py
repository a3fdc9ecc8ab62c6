"""Runtime GGUF access + numpy qwen3vl decoder + greedy generation, checked against transformers.

The reference is an independent tiny random `Qwen3ForCausalLM`; its weights are written into a
`qwen3vl` GGUF here (names/keys as upstream llama.cpp writes them) and read back by the runtime.
"""

import math

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from smt_convert.runtime.decoders import DECODERS, load_decoder
from smt_convert.runtime.decoders.blocks import apply_rope, imrope_streams, rope_angles
from smt_convert.runtime.decoders.qwen3vl import KVCache, Qwen3VLDecoder
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.generate import greedy_generate, prefill
from smt_convert.runtime.gguf_model import GGUFModel

transformers = pytest.importorskip("transformers")

TINY = dict(hidden=64, n_layer=2, n_head=4, n_kv=2, head_dim=16, ff=128, vocab=300, rope_base=1e6, eps=1e-6)

# Tolerances, measured on these tiny models (logits up to ~6 in magnitude):
# f32 numpy vs torch eager differs only by float32 summation order: max |diff| 4.5e-6 (4x margin).
F32_ATOL = 2e-5
# Storage rounding vs the f32 reference, as logits NMSE: F16 measured 0.9-1.0e-6, Q8_0 4.7-7.8e-4.
# These random weights (std 0.2) amplify errors far more than a trained model does.
F16_NMSE = 1e-5
Q8_0_NMSE = 3e-3


# ---- helpers --------------------------------------------------------------------------------


def make_hf(tied: bool, seed: int = 0):
    """Tiny random Qwen3 with weights scaled up so attention and logits are far from uniform."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(
        vocab_size=TINY["vocab"],
        hidden_size=TINY["hidden"],
        intermediate_size=TINY["ff"],
        num_hidden_layers=TINY["n_layer"],
        num_attention_heads=TINY["n_head"],
        num_key_value_heads=TINY["n_kv"],
        head_dim=TINY["head_dim"],
        rms_norm_eps=TINY["eps"],
        rope_parameters={"rope_type": "default", "rope_theta": TINY["rope_base"]},
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norm weights
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def sections_for(head_dim: int) -> list[int]:
    """Sections that give every pair to t/h/w, so 1-D positions equal standard rope."""
    n = head_dim // 2
    return [math.ceil(n / 3), math.ceil((n - 1) / 3), math.ceil((n - 2) / 3), 0]


def hf_to_gguf_name(name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # model.layers.{i}.{module...}.weight
    i, module = parts[2], ".".join(parts[3:-1])
    short = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }[module]
    return f"blk.{i}.{short}.weight"


def add_tensor(writer, name: str, data: np.ndarray, qtype: Q):
    """Store `data` as `qtype` the way convert_hf_to_gguf does (vectors always F32)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 1 or qtype == Q.F32:
        writer.add_tensor(name, data)
    elif qtype == Q.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def write_qwen3vl_gguf(path, hf_model, qtype=Q.F32, sections=None):
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), "qwen3vl")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(TINY["rope_base"])
    w.add_rope_dimension_sections(sections or sections_for(c.head_dim))
    w.add_uint32("qwen3vl.n_deepstack_layers", 0)
    state = hf_model.state_dict()
    for name, t in state.items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # tied: llama.cpp writes no output.weight
        add_tensor(w, hf_to_gguf_name(name), t.detach().numpy(), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def nmse(a, ref) -> float:
    return float(np.sum((a - ref) ** 2) / np.sum(ref**2))


def run_forward(decoder, ids) -> np.ndarray:
    cache = decoder.new_cache()
    return decoder.forward(decoder.embed(ids), np.arange(len(ids)), cache)


@pytest.fixture(scope="module")
def hf_untied():
    return make_hf(tied=False, seed=0)


@pytest.fixture(scope="module")
def gguf_f32(tmp_path_factory, hf_untied):
    return write_qwen3vl_gguf(tmp_path_factory.mktemp("g") / "tiny-f32.gguf", hf_untied)


@pytest.fixture(scope="module")
def decoder_f32(gguf_f32):
    return load_decoder(GGUFModel(gguf_f32))


PROMPT = [int(i) for i in np.random.default_rng(1).integers(0, TINY["vocab"], size=13)]


# ---- GGUFModel --------------------------------------------------------------------------------


def test_gguf_model_metadata_round_trip(tmp_path):
    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "testarch")
    w.add_block_count(7)
    w.add_rope_freq_base(12.5)
    w.add_token_list(["<a>", "b", "ç"])
    w.add_token_types([1, 1, 3])
    w.add_array("testarch.ints", [1, 2, 3])
    w.add_bool("testarch.flag", True)
    w.add_string("general.name", "tiny")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    m = GGUFModel(path)
    assert m.arch == "testarch"
    assert m.meta("{arch}.block_count") == 7 and isinstance(m.meta("{arch}.block_count"), int)
    assert m.meta("testarch.rope.freq_base") == pytest.approx(12.5)
    assert m.meta("general.name") == "tiny"
    assert m.meta("testarch.ints") == [1, 2, 3]
    assert m.meta("testarch.flag") is True
    assert m.tokens == ["<a>", "b", "ç"]
    assert m.token_types == [1, 1, 3]
    assert m.meta("nope", default=None) is None
    with pytest.raises(SmtError, match=r"meta\.gguf: testarch\.nope"):
        m.meta("{arch}.nope")
    with pytest.raises(SmtError, match="meta.gguf: y: tensor not found"):
        m.tensor("y")


def test_gguf_model_bad_files(tmp_path):
    with pytest.raises(SmtError, match="missing.gguf"):
        GGUFModel(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(SmtError, match="junk.gguf"):
        GGUFModel(junk)


# (type, max |err| relative to max |x|) for values ~N(0,1); the F32 round trip must be exact.
ROUND_TRIP = [(Q.F32, 0.0), (Q.F16, 1e-3), (Q.BF16, 1e-2), (Q.Q8_0, 1e-2), (Q.Q4_0, 0.2), (Q.Q4_1, 0.2), (Q.Q5_0, 0.1)]


def test_gguf_model_tensor_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 256)).astype(np.float32)  # non-square: catches a shape reversal
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "testarch")
    for qtype, _ in ROUND_TRIP:
        if qtype == Q.F32:
            w.add_tensor(qtype.name, x)
        elif qtype == Q.F16:
            w.add_tensor(qtype.name, x.astype(np.float16))
        else:
            w.add_tensor(qtype.name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    m = GGUFModel(path, cache_tensors=True)
    assert m.tensor_types() == {q.name: q.name for q, _ in ROUND_TRIP}
    for qtype, tol in ROUND_TRIP:
        got = m.tensor(qtype.name)
        assert got.dtype == np.float32 and got.shape == (3, 256), qtype
        assert m.tensor_shape(qtype.name) == (3, 256)
        err = np.abs(got - x).max() / np.abs(x).max()
        assert err <= tol, (qtype, err)
    assert m.tensor("Q8_0") is m.tensor("Q8_0")  # cached when asked


# ---- decoder vs transformers ----------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_forward_matches_transformers(tmp_path, tied, hf_untied, decoder_f32):
    hf = hf_untied if not tied else make_hf(tied=True, seed=3)
    dec = decoder_f32 if not tied else load_decoder(GGUFModel(write_qwen3vl_gguf(tmp_path / "t.gguf", hf)))
    assert (dec.output is dec.token_embd) == tied
    ref = hf_logits(hf, PROMPT)
    got = run_forward(dec, PROMPT)
    assert got.shape == ref.shape == (len(PROMPT), TINY["vocab"]) and got.dtype == np.float32
    diff = np.abs(got - ref).max()
    assert diff < F32_ATOL, f"max |diff| {diff:.2e} (logit scale {np.abs(ref).max():.1f})"
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def test_config_from_gguf(decoder_f32):
    c = decoder_f32.config
    assert (c.n_layer, c.hidden, c.n_head, c.n_kv, c.head_dim, c.ff, c.vocab) == (2, 64, 4, 2, 16, 128, 300)
    assert c.sections == [3, 3, 2, 0] and c.rope_base == 1e6 and c.n_rot == 16
    assert c.eps == pytest.approx(1e-6)


def test_greedy_matches_transformers_generate(hf_untied, decoder_f32):
    with torch.no_grad():
        out = hf_untied.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=10, min_new_tokens=10)
    ref = out[0, len(PROMPT) :].tolist()
    embeds = decoder_f32.embed(PROMPT)
    res = greedy_generate(decoder_f32, embeds, np.arange(len(PROMPT)), max_new_tokens=10, stop_ids=set())
    assert res.tokens == ref
    assert res.stopped is False
    np.testing.assert_allclose(res.first_logits, hf_logits(hf_untied, PROMPT)[-1], atol=F32_ATOL)

    # A stop id ends generation and is excluded from tokens.
    k = next(i for i in range(1, 10) if ref[i] not in ref[:i])
    res = greedy_generate(decoder_f32, embeds, np.arange(len(PROMPT)), max_new_tokens=10, stop_ids={ref[k]})
    assert res.tokens == ref[:k] and res.stopped is True


def test_kv_cache_incremental_equals_full(decoder_f32):
    full = run_forward(decoder_f32, PROMPT)
    cache = KVCache.empty(decoder_f32.config, capacity=2)  # forces buffer growth
    parts, start = [], 0
    for size in [5, 1, 1, 4, 2]:
        ids = PROMPT[start : start + size]
        parts.append(decoder_f32.forward(decoder_f32.embed(ids), np.arange(start, start + size), cache))
        start += size
    assert cache.length == len(PROMPT)
    np.testing.assert_allclose(np.concatenate(parts), full, atol=1e-5, rtol=0)

    # Chunked prefill returns the last row; logits="last" equals the last row of "all".
    last = prefill(decoder_f32, decoder_f32.embed(PROMPT), np.arange(len(PROMPT)), decoder_f32.new_cache(), chunk=4)
    np.testing.assert_allclose(last, full[-1], atol=1e-5, rtol=0)


def test_mrope_positions_for_text_equal_1d(decoder_f32):
    pos = np.arange(len(PROMPT))
    pos4 = np.stack([pos, pos, pos, np.zeros_like(pos)], axis=1)
    a = decoder_f32.forward(decoder_f32.embed(PROMPT), pos, decoder_f32.new_cache())
    b = decoder_f32.forward(decoder_f32.embed(PROMPT), pos4, decoder_f32.new_cache())
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("qtype,limit", [(Q.F16, F16_NMSE), (Q.Q8_0, Q8_0_NMSE)])
def test_quantised_storage_is_close(tmp_path, hf_untied, qtype, limit):
    path = write_qwen3vl_gguf(tmp_path / f"tiny-{qtype.name}.gguf", hf_untied, qtype=qtype)
    model = GGUFModel(path)
    assert model.tensor_types()["blk.0.attn_q.weight"] == qtype.name
    assert model.tensor_types()["blk.0.attn_norm.weight"] == "F32"
    got = run_forward(Qwen3VLDecoder(model), PROMPT)
    err = nmse(got, hf_logits(hf_untied, PROMPT))
    assert err < limit, f"{qtype.name} logits NMSE {err:.2e}"

    # All of that error must come from the storage: transformers running the same rounded weights agrees to f32 precision.
    rounded = make_hf(tied=False, seed=0)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.ndim == 2:
                data = p.numpy()
                q = data.astype(np.float16) if qtype == Q.F16 else gguf.quants.quantize(data, qtype)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype).reshape(data.shape)))
    diff = np.abs(got - hf_logits(rounded, PROMPT)).max()
    assert diff < F32_ATOL, f"{qtype.name}: max |diff| vs transformers on rounded weights {diff:.2e}"


# ---- interleaved M-RoPE rule -------------------------------------------------------------------


def test_imrope_streams_qwen3_asr_sections():
    # [24, 20, 20, 0] over 64 pairs: pairs 61 and 62 are past the h/w sections, so they use stream e.
    s = imrope_streams(64, [24, 20, 20, 0])
    assert s[61] == 3 and s[62] == 3
    assert s[60] == 0 and s[63] == 0 and s[58] == 1 and s[59] == 2
    assert set(np.flatnonzero(s == 3)) == {61, 62}


def test_imrope_partial_sections_hand_derived():
    # head_dim 16 -> 8 pairs, sections [3, 1, 1, 0] (sum 5). Worked by hand from ggml's rule
    # sector = i % 5; h if sector%3==1 and sector<3; w if sector%3==2 and sector<3; t if sector%3==0 and sector<9:
    #   i:       0  1  2  3  4  5  6  7
    #   sector:  0  1  2  3  4  0  1  2
    #   stream:  t  h  w  t  e  t  h  w
    hand_streams = "thwtethw"
    pos = {"t": 5, "h": 7, "w": 11, "e": 2}
    base, d = 100.0, 16
    cfg = Qwen3VLDecoderConfigStub(n_rot=d, rope_base=base, sections=[3, 1, 1, 0])
    assert "".join("thwe"[k] for k in imrope_streams(8, cfg.sections)) == hand_streams

    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    expected = x.astype(np.float64).copy()
    for i, stream in enumerate(hand_streams):
        angle = pos[stream] * base ** (-2 * i / d)
        a, b = x[i], x[i + d // 2]  # NeoX: pair (i, i + d/2)
        expected[i] = a * math.cos(angle) - b * math.sin(angle)
        expected[i + d // 2] = a * math.sin(angle) + b * math.cos(angle)

    cos, sin = rope_angles(np.array([[5, 7, 11, 2]]), cfg)
    got = apply_rope(x[None, None, :], cos, sin)[0, 0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


class Qwen3VLDecoderConfigStub:
    """Just the fields rope_angles reads."""

    def __init__(self, n_rot, rope_base, sections):
        self.n_rot, self.rope_base, self.sections = n_rot, rope_base, sections


# ---- registry ------------------------------------------------------------------------------


def test_load_decoder_unknown_arch(tmp_path):
    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert DECODERS["qwen3vl"] is Qwen3VLDecoder
    with pytest.raises(SmtError, match=r"other\.gguf: general\.architecture: unsupported 'mamba'"):
        load_decoder(GGUFModel(path))
