"""Qwen3.5 text side: archs/qwen3_5/text.py (tensors, transforms, metadata) + the numpy qwen35/qwen35moe
decoder, checked against transformers and against llama.cpp (llama-cpp-python).

The references are tiny random `Qwen3_5ForCausalLM` / `Qwen3_5MoeForCausalLM` with both layer types,
more value heads than key heads (so upstream's value-head reorder is exercised), partial rotary and
M-RoPE sections; weights are scaled up so logits are far from flat. Their GGUFs are written here with the
module's `text_tensors` + `write_text_metadata` through the shared `write_text_gguf`.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smt_convert.archs.qwen3_5 import config as C
from smt_convert.archs.qwen3_5 import text as T
from smt_convert.archs.qwen3_5.plugin import Qwen35Plugin
from smt_convert.converters.text_gguf import write_text_gguf
from smt_convert.runtime.decoders import DECODERS, load_decoder
from smt_convert.runtime.decoders.qwen35 import Qwen35Decoder, delta_rule_chunked, delta_rule_recurrent
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.generate import greedy_generate, prefill
from smt_convert.runtime.gguf_model import GGUFModel

RULES = Qwen35Plugin.tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 512
LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "linear_attention"]
COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=4, layer_types=LAYER_TYPES, max_position_embeddings=4096,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
    # 32 * 0.25 = 8 rotated dims = 4 pairs; [2, 1, 1] gives them t, h, w, t exactly as HF does.
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                     "mrope_section": [2, 1, 1], "mrope_interleaved": True},
)

# Tolerances, measured on these models (logits up to ~5.5 in magnitude):
# numpy f32 vs torch f32: max |diff| 1.2e-5 (40 tokens) and 6.9e-5 (300 tokens), NMSE <= 1e-11. Against a
# float64 torch run both sides are equally far (numpy 3.3e-5, torch 5.4e-5 at 300 tokens), so this is float32
# summation order (chunked delta rule: triangular solve and chunk scan in a different order), not a bug.
F32_ATOL = 3e-4
F32_NMSE = 1e-9
# llama.cpp (F32 GGUF, F32 KV cache) vs HF: NMSE 1.4e-12 (dense) / 3.0e-12 (MoE). With llama.cpp's default
# F16 KV cache it is 4e-8 / 1e-7 (worst position 8e-7), hence the F32 cache here.
LLAMA_NMSE = 1e-6
# F16 weights (router, shared gate, conv kernel kept F32): NMSE 4.6e-6 (dense) / 1.6e-5 (MoE) on 40 tokens.
LLAMA_F16_NMSE = 1e-4


# ---- fixtures -------------------------------------------------------------------------------


def make_hf(moe: bool, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(COMMON, attn_implementation="eager")
    if moe:
        cfg = transformers.Qwen3_5MoeTextConfig(moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                                num_experts=8, num_experts_per_tok=2, **common)
        model = transformers.Qwen3_5MoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3_5TextConfig(intermediate_size=96, **common)
        model = transformers.Qwen3_5ForCausalLM(cfg)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(0.5, 4.0)))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif p.ndim == 1:  # zero-centred norms (and the gated norm): 0.2 spread around their centre
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def hparams_of(model) -> C.TextHparams:
    return C.read_text_hparams(json.loads(model.config.to_json_string()), Path("config.json"))


def write_gguf(model, path: Path, outtype: str = "f32", vocab=None) -> Path:
    hp = hparams_of(model)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    tensors = T.text_tensors(hp, prefix=C.CAUSAL_PREFIX)

    def metadata(writer):
        T.write_text_metadata(writer, hp)
        if vocab is not None:
            from smt_convert.converters.tokenizer import write_vocab

            write_vocab(writer, vocab)

    write_text_gguf(path, hp.gguf_arch, tensors, T.text_tensor_types(tensors, outtype), lambda n: state[n], metadata)
    return path


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer
    from smt_convert.converters.tokenizer import build_bpe_vocab, find_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    build_qwen_bpe_tokenizer(directory)
    return build_bpe_vocab(find_tokenizer(directory), VOCAB, RULES.pre, eot_token=RULES.eot, eos_token=RULES.eos)


@pytest.fixture(scope="module", params=["dense", "moe"])
def built(request, tmp_path_factory, vocab):
    moe = request.param == "moe"
    model = make_hf(moe)
    path = write_gguf(model, tmp_path_factory.mktemp(request.param) / "text-f32.gguf", vocab=vocab)
    return model, path, load_decoder(GGUFModel(path))


def prompt(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 400, n)


def hf_logits(model, ids, position_ids=None) -> np.ndarray:
    with torch.no_grad():
        kw = {} if position_ids is None else {"position_ids": torch.from_numpy(position_ids)}
        return model(torch.from_numpy(np.asarray(ids))[None], **kw).logits[0].float().numpy()


def nmse(a, ref) -> float:
    return float(((a - ref) ** 2).mean() / (ref ** 2).mean())


# ---- numpy decoder vs transformers ---------------------------------------------------------------


@pytest.mark.parametrize("n", [40, 300])
def test_logits_match_hf(built, n):
    """300 tokens = five 64-token chunks of the chunked delta rule (last one padded)."""
    model, _, dec = built
    ids = prompt(n)
    ref = hf_logits(model, ids)
    got = dec.forward(dec.embed(ids), np.arange(n), dec.new_cache())
    assert got.shape == (n, VOCAB)
    assert np.abs(got - ref).max() < F32_ATOL
    assert nmse(got, ref) < F32_NMSE


def test_incremental_decode_equals_full_forward(built):
    """Prefill in uneven chunks (chunked rule continuing a state), then 1- and 5-token steps (recurrent
    rule): every row equals the single full forward."""
    _, _, dec = built
    ids = prompt(330, seed=2)
    full = dec.forward(dec.embed(ids), np.arange(len(ids)), dec.new_cache())
    cache = dec.new_cache()
    rows, start = [], 0
    for size in (100, 70, 130, 1, 1, 5, 3, 20):
        end = start + size
        rows.append(dec.forward(dec.embed(ids[start:end]), np.arange(start, end), cache))
        start = end
    assert start == len(ids) and cache.length == len(ids)
    np.testing.assert_allclose(np.concatenate(rows), full, atol=1e-4, rtol=0)


def test_greedy_matches_hf_generate(built):
    model, _, dec = built
    ids = prompt(40, seed=3)
    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids)[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=10, do_sample=False)
    expected = out[0, len(ids):].tolist()
    result = greedy_generate(dec, dec.embed(ids), np.arange(len(ids)), 10, stop_ids=set())
    assert result.tokens == expected


def test_mrope_positions(built):
    """[n, 4] with equal t/h/w streams (and e = 0) is the 1-D result; distinct t/h/w streams match HF's
    interleaved M-RoPE given the same streams."""
    model, _, dec = built
    n = 24
    ids = prompt(n, seed=4)
    one_d = dec.forward(dec.embed(ids), np.arange(n), dec.new_cache())
    p = np.arange(n)
    four = dec.forward(dec.embed(ids), np.stack([p, p, p, np.zeros_like(p)], axis=1), dec.new_cache())
    np.testing.assert_array_equal(four, one_d)

    t, h, w = p, (p * 3) % 7, (p * 5) % 11
    got = dec.forward(dec.embed(ids), np.stack([t, h, w, np.zeros_like(p)], axis=1), dec.new_cache())
    # HF: position_ids [4, batch, n] = (text positions for the mask, t, h, w)
    ref = hf_logits(model, ids, np.stack([p, t, h, w])[:, None, :])
    assert np.abs(got - ref).max() < F32_ATOL
    assert np.abs(got - one_d).max() > 1e-3  # the streams really matter


def test_prefill_speed(built):
    """The chunked delta rule keeps a few thousand tokens fast (no Python loop per token)."""
    import time

    _, _, dec = built
    ids = prompt(2000, seed=5)
    t0 = time.perf_counter()
    prefill(dec, dec.embed(ids), np.arange(len(ids)), dec.new_cache())
    assert time.perf_counter() - t0 < 20  # measured ~1 s (2000 tokens/s) on 2 cores


def test_chunked_equals_recurrent_rule():
    rng = np.random.default_rng(0)
    h, n, dk, dv = 3, 150, 8, 6
    q = rng.normal(size=(h, n, dk)).astype(np.float32)
    k = rng.normal(size=(h, n, dk)).astype(np.float32)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(h, n, dv)).astype(np.float32)
    g = -rng.uniform(0, 0.5, size=(h, n)).astype(np.float32)
    beta = rng.uniform(0, 1, size=(h, n)).astype(np.float32)
    s0 = rng.normal(size=(h, dk, dv)).astype(np.float32)
    s_rec, s_chk = s0.copy(), s0.copy()
    o_rec = delta_rule_recurrent(q, k, v, g, beta, s_rec)
    o_chk = delta_rule_chunked(q, k, v, g, beta, s_chk, chunk=32)
    np.testing.assert_allclose(o_chk, o_rec, atol=2e-4)
    np.testing.assert_allclose(s_chk, s_rec, atol=2e-4)


# ---- llama.cpp -----------------------------------------------------------------------------------


def llama_logits(path: Path, ids) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, logits_all=True, verbose=False,
                          type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache (default F16 rounds K/V)
    try:
        llm.eval([int(i) for i in ids])
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.mark.parametrize("n", [40, 300])
def test_llama_cpp_matches_hf(built, n):
    model, path, _ = built
    ids = prompt(n)
    ref = hf_logits(model, ids)
    got = llama_logits(path, ids)
    assert nmse(got, ref) < LLAMA_NMSE
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_llama_cpp_loads_f16(built, tmp_path, vocab):
    """--outtype f16: router, shared-expert gate and conv kernel stay F32 (as upstream; ggml's ssm_conv
    needs an F32 kernel), the rest F16; llama.cpp runs it."""
    model, _, _ = built
    path = write_gguf(model, tmp_path / "text-f16.gguf", "f16", vocab)
    types = GGUFModel(path).tensor_types()
    assert types["blk.0.ssm_conv1d.weight"] == "F32" and types["blk.0.ssm_a"] == "F32"
    assert types["blk.0.attn_qkv.weight"] == "F16"
    if "blk.0.ffn_gate_inp.weight" in types:
        assert types["blk.0.ffn_gate_inp.weight"] == "F32" and types["blk.0.ffn_gate_inp_shexp.weight"] == "F32"
    ids = prompt(40)
    assert nmse(llama_logits(path, ids), hf_logits(model, ids)) < LLAMA_F16_NMSE


# ---- conversion module ---------------------------------------------------------------------------


def test_gguf_layout(built):
    model, path, dec = built
    g = GGUFModel(path)
    hp = hparams_of(model)
    arch = hp.gguf_arch
    assert g.arch == arch and isinstance(dec, Qwen35Decoder) and DECODERS[arch] is Qwen35Decoder
    assert g.meta("{arch}.rope.dimension_count") == 8
    assert g.meta("{arch}.rope.dimension_sections") == [2, 1, 1, 0]
    assert g.meta("{arch}.attention.recurrent_layers") == [t == "linear_attention" for t in LAYER_TYPES]
    assert g.meta("{arch}.ssm.group_count") == 2 and g.meta("{arch}.ssm.time_step_rank") == 4
    assert g.meta("{arch}.ssm.inner_size") == 64 and g.meta("{arch}.ssm.state_size") == 16
    assert g.meta("{arch}.ssm.conv_kernel") == 4
    assert g.meta("tokenizer.ggml.pre") == "qwen35"
    assert not g.has_meta("{arch}.nextn_predict_layers")
    sd = model.state_dict()
    la = "model.layers.0.linear_attn."
    # A stored as -exp(A_log), value heads tiled: new head r*n_k + g is old head g*(n_v/n_k) + r
    a_log = sd[la + "A_log"].numpy()
    np.testing.assert_allclose(g.tensor("blk.0.ssm_a"), -np.exp(a_log[[0, 2, 1, 3]]), rtol=1e-6)
    z = sd[la + "in_proj_z.weight"].numpy().reshape(4, 16, -1)
    np.testing.assert_array_equal(g.tensor("blk.0.attn_gate.weight").reshape(4, 16, -1), z[[0, 2, 1, 3]])
    np.testing.assert_array_equal(g.tensor("blk.0.ssm_norm.weight"), sd[la + "norm.weight"].numpy())  # no +1
    np.testing.assert_allclose(g.tensor("blk.1.attn_q_norm.weight"),
                               1 + sd["model.layers.1.self_attn.q_norm.weight"].numpy(), rtol=1e-6)
    assert g.tensor_shape("blk.0.ssm_conv1d.weight") == (128, 4)


def test_expected_names_match_transformers():
    """Canonical names/shapes are exactly the parameters of Qwen3_5(Moe)ForConditionalGeneration (text part)
    and, with prefix "model.", of Qwen3_5(Moe)ForCausalLM."""
    text = {k: v for k, v in COMMON.items()}
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    for moe in (False, True):
        if moe:
            text_cfg = dict(text, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=8,
                            num_experts_per_tok=2)
            cfg = transformers.Qwen3_5MoeConfig(text_config=text_cfg, vision_config=vision)
            cls = transformers.Qwen3_5MoeForConditionalGeneration
        else:
            cfg = transformers.Qwen3_5Config(text_config=dict(text, intermediate_size=96), vision_config=vision)
            cls = transformers.Qwen3_5ForConditionalGeneration
        with torch.device("meta"):
            model = cls(cfg)
        params = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("model.visual.")}
        hp = C.read_text_hparams(json.loads(cfg.to_json_string()), Path("config.json"))
        assert hp.moe == moe
        assert T.expected_text_tensors(hp, C.TEXT_PREFIX) == params
        causal = make_hf(moe)
        assert T.expected_text_tensors(hparams_of(causal), C.CAUSAL_PREFIX) == {
            k: tuple(v.shape) for k, v in causal.state_dict().items()}


def test_per_expert_layout_equals_fused(tmp_path):
    """transformers' save_pretrained writes experts one by one; both layouts give identical GGUF tensors."""
    from safetensors.numpy import load_file

    model = make_hf(moe=True)
    model.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert C.detect_expert_layout(on_disk, C.CAUSAL_PREFIX) == "per_expert"
    hp = hparams_of(model)
    assert set(on_disk) == set(T.expected_text_tensors(hp, C.CAUSAL_PREFIX, "per_expert"))
    fused = {k: v.float().numpy() for k, v in model.state_dict().items()}
    assert C.detect_expert_layout(fused, C.CAUSAL_PREFIX) == "fused"
    a = {t.name: t for t in T.text_tensors(hp, prefix=C.CAUSAL_PREFIX, experts="fused")}
    b = {t.name: t for t in T.text_tensors(hp, prefix=C.CAUSAL_PREFIX, experts="per_expert")}
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name].build(fused.__getitem__), b[name].build(on_disk.__getitem__))


def test_ignored_and_config_errors():
    hp = hparams_of(make_hf(moe=False))
    assert "mtp.*" in T.ignored_text_tensors(hp)
    base = json.loads(make_hf(moe=False).config.to_json_string())

    def err(**changes):
        cfg = json.loads(json.dumps(base))
        for k, v in changes.items():
            if k == "mrope_section":
                cfg["rope_parameters"]["mrope_section"] = v
            else:
                cfg[k] = v
        with pytest.raises(SmtError) as e:
            C.read_text_hparams(cfg, Path("/x/config.json"))
        return str(e.value)

    assert "linear_value_head_dim" in err(linear_value_head_dim=32)
    assert "linear_num_key_heads" in err(linear_num_key_heads=3)
    # ggml's sectors wrap modulo sum(sections): with [1, 0, 1] pair 1 would read stream e (HF: t), with
    # [1, 1, 0] pair 3 would read h (HF: t)
    assert "rope_parameters.mrope_section" in err(mrope_section=[1, 0, 1])
    assert "rope_parameters.mrope_section" in err(mrope_section=[1, 1, 0])
    assert "layer_types" in err(layer_types=["linear_attention"])
    assert err(vocab_size="big").startswith("/x/config.json: vocab_size:")


def test_modules_import_without_torch():
    code = ("import sys; import smt_convert.archs.qwen3_5, smt_convert.runtime.decoders.qwen35; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
