"""Tiny Qwen3.5 checkpoints (converters/tiny_checkpoints.py): what `save_pretrained` wrote reloads with
transformers bit for bit, the config's token ids are the tokenizer's, and archs/qwen3_5 accepts the config and
expects exactly the saved text tensors."""

import json
from pathlib import Path

import numpy as np
import pytest

from smt_convert.archs.qwen3_5 import config as C
from smt_convert.archs.qwen3_5 import text as T
from smt_convert.testing.checkpoints import (
    QWEN3_5_SPECIALS,
    QWEN3_5_TOKEN_FIELDS,
    QWEN3_5_USER_DEFINED,
    TINY_BUILDERS,
    make_tiny_qwen3_5,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")

KINDS = {  # builder name -> (moe, text_only, architecture)
    "qwen3.5": (False, False, "Qwen3_5ForConditionalGeneration"),
    "qwen3.5-moe": (True, False, "Qwen3_5MoeForConditionalGeneration"),
    "qwen3.5-text": (False, True, "Qwen3_5ForCausalLM"),
    "qwen3.5-moe-text": (True, True, "Qwen3_5MoeForCausalLM"),
}


@pytest.fixture(scope="module", params=list(KINDS))
def built(request, tmp_path_factory):
    name = request.param
    moe, text_only, _ = KINDS[name]
    out = tmp_path_factory.mktemp(name)
    if name in TINY_BUILDERS:
        result = TINY_BUILDERS[name](out)
    else:
        result = make_tiny_qwen3_5(out, moe=moe, text_only=text_only)
    return name, out, result


def saved_tensors(directory: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_builders_registered():
    for name in ("qwen3-asr", "qwen3.5", "qwen3.5-moe", "qwen3.5-text"):
        assert name in TINY_BUILDERS


def test_files_and_config(built):
    name, out, result = built
    moe, text_only, arch = KINDS[name]
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert ("preprocessor_config.json" in files) == (not text_only)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [arch]
    auto = transformers.AutoConfig.from_pretrained(out)
    assert type(auto) is type(result["config"])
    text = cfg if text_only else cfg["text_config"]
    assert text["hidden_size"] == 64 and text["vocab_size"] == 512 and text["num_hidden_layers"] == 4
    assert text["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert text["linear_num_key_heads"] == 2 and text["linear_num_value_heads"] == 4
    assert (text.get("num_experts") == 4) == moe
    if not text_only:
        v = cfg["vision_config"]
        assert (v["depth"], v["hidden_size"], v["num_heads"], v["patch_size"], v["spatial_merge_size"]) == (2, 32, 2, 16, 2)
        assert v["num_position_embeddings"] == 64 and v["out_hidden_size"] == 64
        pre = json.loads((out / "preprocessor_config.json").read_text())
        assert pre["image_mean"] == pre["image_std"] == [0.5] * 3 and pre["patch_size"] == 16
        assert pre["merge_size"] == 2 and pre["temporal_patch_size"] == 2 and pre["rescale_factor"] == 1 / 255
        proc = transformers.AutoImageProcessor.from_pretrained(out)
        assert proc.patch_size == 16 and proc.merge_size == 2 and list(proc.image_mean) == [0.5] * 3


def test_reloads_identical(built):
    name, out, result = built
    model = result["model"]
    again = type(model).from_pretrained(out).eval()
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = torch.tensor([[1, 5, 100, 300, 7, 9, 42, 250]])
    with torch.no_grad():
        logits = model(ids).logits[0]
        assert torch.equal(logits, again(ids).logits[0])
    assert logits.std() > 0.5  # scaled weights: logits far from flat


def test_token_ids_match_tokenizer(built):
    name, out, result = built
    _, text_only, _ = KINDS[name]
    ids = result["ids"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for token in [*QWEN3_5_SPECIALS, *QWEN3_5_USER_DEFINED]:
        assert tok.convert_tokens_to_ids(token) == ids[token]
        assert tok.encode(f"a{token}b", add_special_tokens=False).count(ids[token]) == 1  # one token, not split
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    assert {ids[t] for t in QWEN3_5_SPECIALS} <= special
    assert not {ids[t] for t in QWEN3_5_USER_DEFINED} & special  # <think> is not special in Qwen3.5
    assert max(ids.values()) < 512
    cfg = json.loads((out / "config.json").read_text())
    if not text_only:
        for field, token in QWEN3_5_TOKEN_FIELDS.items():
            assert cfg[field] == ids[token] == getattr(result["config"], field), field
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]


def test_arch_module_accepts(built):
    name, out, result = built
    moe, text_only, _ = KINDS[name]
    cfg = json.loads((out / "config.json").read_text())
    hp = C.read_text_hparams(cfg, out / "config.json")
    assert hp.moe == moe and hp.tie_embeddings and hp.v_per_k == 2
    assert hp.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    on_disk = saved_tensors(out)
    prefix = C.CAUSAL_PREFIX if text_only else C.TEXT_PREFIX
    layout = C.detect_expert_layout(on_disk, prefix)
    assert layout == ("per_expert" if moe else "fused")  # transformers 5 writes experts one by one
    expected = T.expected_text_tensors(hp, prefix, layout)
    text_on_disk = {k: tuple(v.shape) for k, v in on_disk.items() if not k.startswith("model.visual.")}
    assert text_on_disk == expected
    assert "lm_head.weight" not in on_disk  # tied
    if not text_only:
        visual = {k for k in on_disk if k.startswith("model.visual.")}
        assert visual == {"model.visual." + k for k in result["model"].model.visual.state_dict()}


def test_options(tmp_path):
    """bf16 on disk, untied lm_head, no preprocessor, a mismatching vision out_hidden_size."""
    r = make_tiny_qwen3_5(tmp_path / "a", dtype=torch.bfloat16, tie=False, with_preprocessor=False,
                          vision_out_hidden=48, seed=3)
    out = tmp_path / "a"
    assert not (out / "preprocessor_config.json").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vision_config"]["out_hidden_size"] == 48
    assert cfg["tie_word_embeddings"] is False and cfg["text_config"]["tie_word_embeddings"] is False
    on_disk = saved_tensors(out)
    assert all(v.dtype == torch.bfloat16 for v in on_disk.values())
    sd = r["model"].state_dict()
    assert next(iter(sd.values())).dtype == torch.float32
    for k, v in on_disk.items():
        assert torch.equal(v, sd[k].to(torch.bfloat16)), k
    hp = C.read_text_hparams(cfg, out / "config.json")
    assert not hp.tie_embeddings and on_disk["lm_head.weight"].shape == (512, 64)
    assert not torch.equal(sd["lm_head.weight"], sd["model.language_model.embed_tokens.weight"])
    # another seed, other weights
    other = make_tiny_qwen3_5(tmp_path / "b", tie=False)["model"].state_dict()
    assert not np.array_equal(other["lm_head.weight"].numpy(), sd["lm_head.weight"].numpy())
