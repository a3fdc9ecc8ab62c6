"""PaddleOCR-VL text side: archs/paddleocr_vl/config.py + text.py (config, layouts, tensors, metadata) + the
numpy `paddleocr` decoder, checked against transformers and against llama.cpp (llama-cpp-python).

The reference is a tiny random `PaddleOCRVLForConditionalGeneration` (3 text layers, GQA 4/2, head_dim 32 =
2 x hidden/heads so `key_length` matters, M-RoPE sections [6, 5, 5] so t/h/w each own a distinct range of
rotary pairs), untied LM head, weights scaled so logits are far from flat. Its GGUF is written with the
module's `text_tensors` + `write_text_metadata` through the shared `write_text_gguf`; a tiny byte-level BPE
vocab is embedded only so llama.cpp can load the file (the real vocab is SentencePiece, converted elsewhere).
"""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from smt_convert.archs.paddleocr_vl import config as C
from smt_convert.archs.paddleocr_vl import text as T
from smt_convert.converters.text_gguf import write_text_gguf
from smt_convert.runtime.decoders import DECODERS, load_decoder
from smt_convert.runtime.decoders.paddleocr import PaddleOCRDecoder, mrope_streams
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.generate import greedy_generate
from smt_convert.runtime.gguf_model import GGUFModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 600
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 590, 591, 592, 593
TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-5, use_bias=False,
    hidden_act="silu",
)
THETA = 500000.0
SECTION = [6, 5, 5]  # 16 pairs = head_dim / 2
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56,
              patch_size=14, spatial_merge_size=2)
TOKEN_IDS = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                 vision_end_token_id=VISION_END)

# Tolerances, measured on this model (logits up to ~5.7 in magnitude, std 1.2):
# numpy f32 vs torch f32: max |diff| 4.3e-6 / NMSE 4.0e-13 (40 text tokens), 1.3e-5 / 8.8e-13 (200 tokens),
# 3.3e-6 / 3.4e-13 (image prompt with M-RoPE positions; feeding 1-D positions instead gives NMSE 0.2).
F32_ATOL = 1e-4
F32_NMSE = 1e-10
# llama.cpp (F32 GGUF, F32 KV cache) vs HF: NMSE 5.1e-13 (40 tokens), 1.2e-12 (200), 3.5e-13 for the embedding
# batch with M-RoPE positions. With llama.cpp's default F16 KV cache: 2.5e-7. F16 weights: 1.0e-6 (numpy
# 6.5e-7); Q8_0: 7.4e-4 (numpy 4.3e-4).
LLAMA_NMSE = 1e-6


# ---- fixtures -------------------------------------------------------------------------------


def native_config(tie: bool = False):
    text = dict(TEXT, tie_word_embeddings=tie,
                rope_parameters={"rope_type": "default", "rope_theta": THETA, "mrope_section": list(SECTION)})
    return transformers.PaddleOCRVLConfig(text_config=text, vision_config=dict(VISION), tie_word_embeddings=tie,
                                          **TOKEN_IDS)


def flat_config(tie: bool = False) -> dict:
    """config.json as the original PaddlePaddle/PaddleOCR-VL release writes it: text fields flat,
    `rope_scaling` + top-level `rope_theta`, `vision_config` nested."""
    return dict(
        architectures=["PaddleOCRVLForConditionalGeneration"], model_type="paddleocr_vl", **TEXT,
        rope_scaling={"mrope_section": list(SECTION), "rope_type": "default", "type": "default"},
        rope_theta=THETA, tie_word_embeddings=tie, torch_dtype="float32",
        vision_config=dict(VISION, model_type="paddleocr_vl", architectures=["PaddleOCRVisionModel"]),
        **TOKEN_IDS,
    )


def make_hf(tie: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    cfg = native_config(tie)
    cfg._attn_implementation = "eager"
    model = transformers.PaddleOCRVLForConditionalGeneration(cfg)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.15)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def hparams_of(model) -> C.TextHparams:
    return C.read_text_hparams(json.loads(model.config.to_json_string()), Path("config.json"))


def text_state(model) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def write_gguf(hp, state, path: Path, layout=C.NATIVE_LAYOUT, vocab=None, outtype="f32") -> Path:
    tensors = T.text_tensors(hp, layout)

    def metadata(writer):
        T.write_text_metadata(writer, hp)
        if vocab is not None:
            from smt_convert.converters.tokenizer import write_vocab

            write_vocab(writer, vocab)

    write_text_gguf(path, C.GGUF_ARCH, tensors, T.text_tensor_types(tensors, outtype), state.__getitem__, metadata)
    return path


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer
    from smt_convert.converters.tokenizer import build_bpe_vocab, find_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    build_qwen_bpe_tokenizer(directory)
    return build_bpe_vocab(find_tokenizer(directory), VOCAB, "qwen2", eot_token="<|im_end|>", eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def built(tmp_path_factory, vocab):
    model = make_hf()
    path = write_gguf(hparams_of(model), text_state(model), tmp_path_factory.mktemp("pocr") / "text-f32.gguf",
                      vocab=vocab)
    return model, path, load_decoder(GGUFModel(path))


def prompt(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 400, n)


def hf_logits(model, ids=None, embeds=None, position_ids=None) -> np.ndarray:
    kw = {}
    if position_ids is not None:
        kw["position_ids"] = torch.from_numpy(np.asarray(position_ids))
    with torch.no_grad():
        if embeds is not None:
            out = model(inputs_embeds=torch.from_numpy(np.asarray(embeds, np.float32))[None], **kw)
        else:
            out = model(torch.from_numpy(np.asarray(ids))[None], **kw)
    return out.logits[0].float().numpy()


def nmse(a, ref) -> float:
    return float(((a - ref) ** 2).mean() / (ref ** 2).mean())


def image_prompt(model, grid_hw=(3, 4), seed: int = 7):
    """An image prompt: text, <vision_start>, gh*gw image rows, <vision_end>, text. Returns (ids, embeds with
    random rows standing in for the vision encoder's output, M-RoPE positions [n, 4] from HF's
    get_rope_index)."""
    gh, gw = grid_hw
    rng = np.random.default_rng(seed)
    ids = np.concatenate([prompt(5, seed), [VISION_START], [IMAGE_TOKEN] * (gh * gw), [VISION_END], prompt(6, seed + 1)])
    types = (ids == IMAGE_TOKEN).astype(np.int64)
    m = VISION["spatial_merge_size"]
    with torch.no_grad():
        pos, _ = model.model.get_rope_index(torch.from_numpy(ids)[None], torch.from_numpy(types)[None],
                                            image_grid_thw=torch.tensor([[1, gh * m, gw * m]]))
    pos = pos[:, 0].numpy().T  # [n, 3] (t, h, w)
    positions = np.concatenate([pos, np.zeros((len(ids), 1), pos.dtype)], axis=1)
    table = model.model.language_model.embed_tokens.weight.detach().numpy()
    embeds = table[ids].copy()
    embeds[ids == IMAGE_TOKEN] = rng.normal(0, 1, size=(gh * gw, table.shape[1])).astype(np.float32)
    return ids, embeds, positions


# ---- numpy decoder vs transformers ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 40])
def test_logits_match_hf(built, n):
    model, _, dec = built
    ids = prompt(n)
    ref = hf_logits(model, ids)
    got = dec.forward(dec.embed(ids), np.arange(n), dec.new_cache())
    assert got.shape == (n, VOCAB)
    assert np.abs(ref).max() > 2  # not flat
    assert np.abs(got - ref).max() < F32_ATOL
    assert nmse(got, ref) < F32_NMSE


def test_mrope_image_prompt_matches_hf(built):
    """Positions from HF's get_rope_index for a 3x4 image (h and w streams differ from t), same embeddings:
    the numpy decoder equals HF; and the positions are the board's (n, n+y, n+x), text continuing at
    n + max(nx, ny)."""
    model, _, dec = built
    ids, embeds, positions = image_prompt(model)
    n0 = 6  # 5 text tokens + <vision_start>
    img = positions[ids == IMAGE_TOKEN]
    ys, xs = np.divmod(np.arange(12), 4)
    np.testing.assert_array_equal(img, np.stack([np.full(12, n0), n0 + ys, n0 + xs, np.zeros(12)], axis=1))
    assert positions[ids == VISION_END][0, 0] == n0 + 4
    ref = hf_logits(model, embeds=embeds, position_ids=positions[:, :3].T[:, None, :])
    got = dec.forward(embeds, positions, dec.new_cache())
    assert np.abs(got - ref).max() < F32_ATOL
    assert nmse(got, ref) < F32_NMSE
    # 1-D positions are (p, p, p, 0)
    p = np.arange(len(ids))
    np.testing.assert_array_equal(dec.forward(embeds, p, dec.new_cache()),
                                  dec.forward(embeds, np.stack([p, p, p, 0 * p], axis=1), dec.new_cache()))


def test_incremental_decode_equals_full_forward(built):
    _, _, dec = built
    ids = prompt(60, seed=2)
    full = dec.forward(dec.embed(ids), np.arange(len(ids)), dec.new_cache())
    cache, rows, start = dec.new_cache(), [], 0
    for size in (20, 1, 1, 30, 8):
        rows.append(dec.forward(dec.embed(ids[start:start + size]), np.arange(start, start + size), cache))
        start += size
    assert cache.length == len(ids)
    np.testing.assert_allclose(np.concatenate(rows), full, atol=1e-4, rtol=0)


def test_greedy_matches_hf_generate(built):
    model, _, dec = built
    ids = prompt(30, seed=3)
    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids)[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=12, do_sample=False)
    expected = out[0, len(ids):].tolist()
    result = greedy_generate(dec, dec.embed(ids), np.arange(len(ids)), 12, stop_ids=set())
    assert result.tokens == expected


def test_mrope_streams_follow_sections():
    """Contiguous sections (llama.cpp MROPE), not qwen3vl's interleaving: [6, 5, 5] = pairs 0-5 t, 6-10 h, 11-15 w."""
    np.testing.assert_array_equal(mrope_streams(16, [6, 5, 5, 0]), [0] * 6 + [1] * 5 + [2] * 5)


# ---- llama.cpp -----------------------------------------------------------------------------------


def _llama(path: Path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    # GGML_TYPE_F32 KV cache (the default F16 rounds K/V)
    return llama_cpp, llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, type_k=0, type_v=0)


def llama_logits(path: Path, ids) -> np.ndarray:
    _, llm = _llama(path)
    try:
        llm.eval([int(i) for i in ids])
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_embd_logits(path: Path, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from smt_convert.testing.llama_cpp_decode import embd_logits

    return embd_logits(path, embeds, positions)


def test_llama_cpp_matches_hf(built):
    model, path, _ = built
    ids = prompt(40)
    ref = hf_logits(model, ids)
    got = llama_logits(path, ids)
    assert nmse(got, ref) < LLAMA_NMSE
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_llama_cpp_mrope_image_prompt_matches_hf(built):
    """llama.cpp's MROPE with our `rope.dimension_sections` turns every pair by the same stream as HF."""
    model, path, _ = built
    ids, embeds, positions = image_prompt(model)
    ref = hf_logits(model, embeds=embeds, position_ids=positions[:, :3].T[:, None, :])
    got = llama_embd_logits(path, embeds, positions)
    assert nmse(got, ref) < LLAMA_NMSE
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_llama_cpp_tied(tmp_path, vocab):
    """Tied embeddings: no output.weight in the GGUF; llama.cpp and the numpy decoder reuse token_embd."""
    model = make_hf(tie=True, seed=4)
    hp = hparams_of(model)
    assert hp.tie_embeddings
    path = write_gguf(hp, text_state(model), tmp_path / "tied.gguf", vocab=vocab)
    assert not GGUFModel(path).has("output.weight")
    ids = prompt(20, seed=5)
    ref = hf_logits(model, ids)
    assert nmse(llama_logits(path, ids), ref) < LLAMA_NMSE
    dec = load_decoder(GGUFModel(path))
    assert nmse(dec.forward(dec.embed(ids), np.arange(len(ids)), dec.new_cache()), ref) < F32_NMSE


# ---- conversion module ---------------------------------------------------------------------------


def test_gguf_layout(built):
    model, path, dec = built
    g = GGUFModel(path)
    assert g.arch == "paddleocr" and isinstance(dec, PaddleOCRDecoder) and DECODERS["paddleocr"] is PaddleOCRDecoder
    assert g.meta("{arch}.rope.dimension_sections") == [6, 5, 5, 0]
    assert g.meta("{arch}.attention.key_length") == 32 and g.meta("{arch}.attention.value_length") == 32
    assert g.meta("{arch}.rope.freq_base") == THETA
    assert g.meta("{arch}.attention.head_count_kv") == 2 and g.meta("{arch}.feed_forward_length") == 96
    assert not g.has_meta("{arch}.rope.dimension_count")
    names = set(g.tensor_names())
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.2.attn_q.weight",
            "blk.2.ffn_gate.weight", "blk.2.ffn_norm.weight"} <= names
    assert len(names) == 3 + 3 * 9
    sd = model.state_dict()
    np.testing.assert_array_equal(g.tensor("blk.1.attn_k.weight"),
                                  sd["model.language_model.layers.1.self_attn.k_proj.weight"].numpy())


def test_expected_names_match_transformers():
    for tie in (False, True):
        with torch.device("meta"):
            model = transformers.PaddleOCRVLForConditionalGeneration(native_config(tie))
        params = {k: tuple(v.shape) for k, v in model.state_dict().items()
                  if not k.startswith(("model.visual.", "model.projector."))}
        hp = C.read_text_hparams(json.loads(model.config.to_json_string()), Path("config.json"))
        assert hp.tie_embeddings == tie
        expected = T.expected_text_tensors(hp, C.NATIVE_LAYOUT)
        if tie:  # transformers lists the tied lm_head; we ignore it by name
            assert params.pop("lm_head.weight") and "lm_head.weight" in T.ignored_text_tensors(hp)
        assert expected == params


def to_original(state: dict, fused: bool = False) -> dict:
    """The native state dict renamed to the original release's layout (as transformers' conversion mapping
    reverses it: model.* / visual.* / mlp_AR.*), optionally with Paddle's fused qkv_proj / up_gate_proj."""
    out = {}
    for k, v in state.items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.visual."):
            out[k[len("model."):]] = v
        elif k.startswith("model.projector."):
            out["mlp_AR." + k[len("model.projector."):]] = v
        else:
            out[k] = v
    if fused:
        for i in range(TEXT["num_hidden_layers"]):
            a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            out[a + "qkv_proj.weight"] = np.concatenate([out.pop(a + f"{x}_proj.weight") for x in "qkv"], axis=0)
            out[m + "up_gate_proj.weight"] = np.concatenate(
                [out.pop(m + "gate_proj.weight"), out.pop(m + "up_proj.weight")], axis=0)
    return out


@pytest.mark.parametrize("fused", [False, True])
def test_original_layout_gives_identical_gguf(built, tmp_path, fused):
    """The original flat config + original names (and Paddle's fused q/k/v, gate/up) give exactly the native
    GGUF's hyperparameters, metadata and tensors."""
    model, native_path, _ = built
    hp_native = hparams_of(model)
    hp_flat = C.read_text_hparams(flat_config(), Path("config.json"))
    assert C.config_layout(flat_config()) == C.ORIGINAL and hp_flat == hp_native
    state = to_original(text_state(model), fused)
    layout = C.detect_text_layout(state)
    assert layout == C.TextLayout(C.ORIGINAL, fused, fused)
    assert C.detect_text_layout(text_state(model)) == C.NATIVE_LAYOUT
    text_names = {k for k in state if not k.startswith(("visual.", "mlp_AR."))}
    assert set(T.expected_text_tensors(hp_flat, layout)) == text_names
    assert all(state[k].shape == s for k, s in T.expected_text_tensors(hp_flat, layout).items())
    path = write_gguf(hp_flat, state, tmp_path / "orig.gguf", layout)
    a, b = GGUFModel(native_path), GGUFModel(path)
    assert a.tensor_names() == b.tensor_names()
    for name in a.tensor_names():
        np.testing.assert_array_equal(a.tensor(name), b.tensor(name))
    for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "attention.key_length", "rope.freq_base", "rope.dimension_sections",
                "attention.layer_norm_rms_epsilon", "context_length"):
        assert a.meta("{arch}." + key) == b.meta("{arch}." + key), key


def test_transformers_loads_original_layout_as_we_read_it(built, tmp_path):
    """transformers reads the flat config and original names (conversion mapping) into the same model: our
    reading of the original layout (theta, sections, lm_head) is transformers'."""
    from safetensors.numpy import save_file

    model, _, _ = built
    (tmp_path / "config.json").write_text(json.dumps(flat_config()))
    save_file({k: np.ascontiguousarray(v) for k, v in to_original(text_state(model)).items()},
              str(tmp_path / "model.safetensors"))
    loaded = transformers.PaddleOCRVLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    loaded.eval()
    ids = prompt(20, seed=6)
    np.testing.assert_allclose(hf_logits(loaded, ids), hf_logits(model, ids), atol=1e-5, rtol=0)
    # Surprise worth knowing: transformers 5.24 reports tie_word_embeddings=True for this flat config (its BC
    # rule copies text_config's default True), yet loads the distinct lm_head from the checkpoint.
    assert not C.read_text_hparams(flat_config(), Path("config.json")).tie_embeddings


def test_save_pretrained_roundtrip(built, tmp_path):
    """The released checkpoint loaded and re-saved by transformers 5.24: nested config that says tied, the
    ORIGINAL tensor names, and the distinct lm_head. detect_text_layout + settle_tie give the right GGUF
    (equal to HF's logits); the config flag alone would have dropped the LM head."""
    from safetensors.numpy import load_file, save_file

    from smt_convert.converters.checkpoint import Checkpoint
    from smt_convert.converters.validate import settle_tie

    model, native_path, _ = built
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(flat_config()))
    save_file({k: np.ascontiguousarray(v) for k, v in to_original(text_state(model)).items()},
              str(src / "model.safetensors"))
    transformers.PaddleOCRVLForConditionalGeneration.from_pretrained(src).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    state = load_file(str(out / "model.safetensors"))
    assert C.config_layout(config) == C.NATIVE and config["tie_word_embeddings"] is True
    layout = C.detect_text_layout(state)
    assert layout == C.ORIGINAL_LAYOUT
    hp = C.read_text_hparams(config, out / "config.json")
    assert hp.tie_embeddings and "lm_head.weight" in state
    decision = settle_tie(hp.tie_config, Checkpoint.open(out), "model.embed_tokens.weight")
    assert not decision.tied and "differs from the embeddings" in decision.note
    hp = replace(hp, tie_embeddings=False, tie_config=None)
    assert hp == replace(hparams_of(model), tie_config=None)
    path = write_gguf(hp, state, tmp_path / "resaved.gguf", layout)
    a, b = GGUFModel(native_path), GGUFModel(path)
    assert a.tensor_names() == b.tensor_names()
    for name in a.tensor_names():
        np.testing.assert_array_equal(a.tensor(name), b.tensor(name))
    # a truly tied checkpoint stays tied
    save_file(dict(state, **{"lm_head.weight": state["model.embed_tokens.weight"]}), str(out / "model.safetensors"))
    assert settle_tie(hp.tie_config or C.read_text_hparams(config, out / "config.json").tie_config,
                      Checkpoint.open(out), "model.embed_tokens.weight").tied


def test_config_errors():
    base = flat_config()

    def err(rope=None, **changes):
        cfg = json.loads(json.dumps(base))
        cfg.update(changes)
        if rope is not None:
            cfg["rope_scaling"].update(rope)
        with pytest.raises(SmtError) as e:
            C.read_text_hparams(cfg, Path("/x/config.json"))
        return str(e.value)

    assert err(rope={"mrope_section": [6, 5, 4]}).startswith("/x/config.json: rope_scaling.mrope_section:")
    assert "rope_scaling.mrope_section" in err(rope={"mrope_section": [8, 8]})
    assert "rope_scaling.rope_type" in err(rope={"rope_type": "yarn"})
    assert "num_key_value_heads" in err(num_key_value_heads=3)
    assert "use_bias" in err(use_bias=True)
    assert "hidden_act" in err(hidden_act="gelu")
    assert err(vocab_size="big").startswith("/x/config.json: vocab_size:")
    native = json.loads(native_config().to_json_string())
    native["text_config"]["tie_word_embeddings"] = True  # levels that disagree: read, the weights settle it
    assert C.read_text_hparams(native, Path("/x/config.json")).tie_config.disagree
    native["text_config"]["tie_word_embeddings"] = "yes"
    with pytest.raises(SmtError, match="text_config.tie_word_embeddings"):
        C.read_text_hparams(native, Path("/x/config.json"))
    native["text_config"]["tie_word_embeddings"] = True
    native["text_config"]["hidden_size"] = None
    with pytest.raises(SmtError, match="text_config.hidden_size"):
        C.read_text_hparams(native, Path("/x/config.json"))


def test_modules_import_without_torch():
    code = ("import sys; import smt_convert.archs.paddleocr_vl, smt_convert.runtime.decoders.paddleocr; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
