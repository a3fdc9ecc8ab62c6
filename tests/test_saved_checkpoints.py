"""Checkpoints as users have them: written by transformers' own `save_pretrained` for every supported class
(tied and untied, sharded, float32 / bfloat16 / float16) and the original releases' layouts. Each is converted by
the CLI and its GGUF's logits are compared with the Hugging Face model loaded from the same directory by
`from_pretrained`: an independent reading of the same files, so a wrong tie decision, a wrong tensor name or a
missed rename shows up as a logit difference, not as a passing echo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.runtime.decoders import load_decoder
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.testing.checkpoints import make_tiny_paddleocr_vl, make_tiny_qwen3_5, make_tiny_qwen3_asr

pytestmark = pytest.mark.slow

# f32 GGUF from the same stored values as HF's float32 load: both compute in float32, different op order.
# Measured on these models: max |diff| <= 3e-5 with logits of std ~1-3; 1e-4 leaves room, and a wrong output
# layer (tied vs untied) or a swapped tensor moves logits by O(1).
LOGIT_ATOL = 1e-4

BF16, F16 = torch.bfloat16, torch.float16
CASES = {
    # name: (builder, kwargs, command, HF class)
    "asr-saved-tied": (make_tiny_qwen3_asr, {}, "qwen3-asr", "Qwen3ASRForConditionalGeneration"),
    "asr-saved-untied-bf16-sharded": (make_tiny_qwen3_asr, dict(tie=False, dtype=BF16, shards=3), "qwen3-asr",
                                      "Qwen3ASRForConditionalGeneration"),
    "asr-saved-tied-f16": (make_tiny_qwen3_asr, dict(dtype=F16), "qwen3-asr", "Qwen3ASRForConditionalGeneration"),
    "qwen3.5-saved-tied": (make_tiny_qwen3_5, {}, "qwen3.5", "Qwen3_5ForConditionalGeneration"),
    "qwen3.5-saved-untied-bf16-sharded": (make_tiny_qwen3_5, dict(tie=False, dtype=BF16, shards=3), "qwen3.5",
                                          "Qwen3_5ForConditionalGeneration"),
    "qwen3.5-moe-saved-untied": (make_tiny_qwen3_5, dict(moe=True, tie=False), "qwen3.5-moe",
                                 "Qwen3_5MoeForConditionalGeneration"),
    "qwen3.5-moe-released-fused-sharded": (make_tiny_qwen3_5, dict(moe=True, layout="released", shards=2),
                                           "qwen3.5-moe", "Qwen3_5MoeForConditionalGeneration"),
    "qwen3.5-text-saved-tied-f16": (make_tiny_qwen3_5, dict(text_only=True, dtype=F16), "qwen3.5",
                                    "Qwen3_5ForCausalLM"),
    "qwen3.5-moe-text-saved-untied-sharded": (make_tiny_qwen3_5, dict(moe=True, text_only=True, tie=False, shards=2),
                                              "qwen3.5-moe", "Qwen3_5MoeForCausalLM"),
    "paddle-saved-untied": (make_tiny_paddleocr_vl, {}, "paddleocr-vl", "PaddleOCRVLForConditionalGeneration"),
    "paddle-saved-tied-bf16-sharded": (make_tiny_paddleocr_vl, dict(tie=True, dtype=BF16, shards=3), "paddleocr-vl",
                                       "PaddleOCRVLForConditionalGeneration"),
    "paddle-native-names": (make_tiny_paddleocr_vl, dict(layout="native"), "paddleocr-vl",
                            "PaddleOCRVLForConditionalGeneration"),
    "paddle-original-release": (make_tiny_paddleocr_vl, dict(layout="original", shards=2), "paddleocr-vl",
                                "PaddleOCRVLForConditionalGeneration"),
}


def convert(checkpoint: Path, out: Path, command: str, *extra) -> dict:
    result = CliRunner().invoke(cli, ["-q", command, str(checkpoint), str(out), "--outtype", "f32", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads((out / "manifest.json").read_text())


def gguf_logits(bundle: Path, manifest: dict, ids: np.ndarray) -> np.ndarray:
    dec = load_decoder(GGUFModel(bundle / manifest["text"]["file"]))
    return dec.forward(dec.embed(ids), np.arange(len(ids)), dec.new_cache())


def hf_logits(checkpoint: Path, class_name: str, ids: np.ndarray) -> np.ndarray:
    model = getattr(transformers, class_name).from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)[None]).logits[0].float().numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_saved_checkpoint_converts_to_hf_logits(case, tmp_path):
    builder, kwargs, command, class_name = CASES[case]
    built = builder(tmp_path / "hf", **kwargs)
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["architectures"] == [class_name]
    if kwargs.get("shards", 1) > 1:
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    manifest = convert(tmp_path / "hf", tmp_path / "out", command, "--no-verify")
    vocab = built["config"].get_text_config().vocab_size
    ids = np.random.default_rng(0).integers(0, vocab - 1, 24)
    got, ref = gguf_logits(tmp_path / "out", manifest, ids), hf_logits(tmp_path / "hf", class_name, ids)
    assert np.abs(got - ref).max() < LOGIT_ATOL, np.abs(got - ref).max()
    tied = kwargs.get("tie", command != "paddleocr-vl")
    assert ("output.weight" not in GGUFModel(tmp_path / "out" / manifest["text"]["file"]).tensor_names()) == tied


def test_asr_tie_flags_as_transformers_writes_them(tmp_path):
    """Qwen3ASRForConditionalGeneration(Qwen3ASRConfig(...)).save_pretrained: top-level tie true,
    text_config false, no lm_head. transformers loads it tied; so do we, with the decision in the manifest."""
    make_tiny_qwen3_asr(tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True and saved["text_config"]["tie_word_embeddings"] is False
    manifest = convert(tmp_path / "hf", tmp_path / "out", "qwen3-asr")  # with verification
    assert manifest["verification"]["passed"]
    assert manifest["hparams"]["tie_embeddings"] is True
    assert manifest["hparams"]["tie_config"]["levels"] == {"tie_word_embeddings": True,
                                                           "text_config.tie_word_embeddings": False}
    assert any("config levels disagree" in n for n in manifest["notes"])


def test_tied_config_with_distinct_lm_head_converts_untied(tmp_path):
    """A config that says tied over a checkpoint whose lm_head differs: transformers keeps both (and warns);
    we convert untied and say why."""
    make_tiny_qwen3_asr(tmp_path / "hf", tie=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    manifest = convert(tmp_path / "hf", tmp_path / "out", "qwen3-asr", "--no-verify")
    assert manifest["hparams"]["tie_embeddings"] is False
    assert any("differs from the embeddings" in n for n in manifest["notes"])
    ids = np.arange(3, 27)
    got = gguf_logits(tmp_path / "out", manifest, ids)
    ref = hf_logits(tmp_path / "hf", "Qwen3ASRForConditionalGeneration", ids)
    assert np.abs(got - ref).max() < LOGIT_ATOL


def test_untied_everywhere_without_lm_head_is_refused(tmp_path):
    """Nothing settles it: every level says untied and there is no lm_head (transformers would make a random
    one). One line naming the file and the missing tensor, exit 2."""
    make_tiny_qwen3_asr(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["qwen3-asr", str(tmp_path / "hf"), str(tmp_path / "out")])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "config.json: tie_word_embeddings: false" in errors[0] and "lm_head.weight" in errors[0]
    assert not (tmp_path / "out").exists()


def test_paddleocr_saved_converts_and_verifies(tmp_path):
    """What PaddleOCRVLForConditionalGeneration.save_pretrained writes (nested config, the release's tensor
    names): converted with the default verification against the streamed Hugging Face reference."""
    make_tiny_paddleocr_vl(tmp_path / "hf")
    manifest = convert(tmp_path / "hf", tmp_path / "out", "paddleocr-vl", "--image-size", "56")
    assert manifest["verification"]["passed"]
    assert manifest["source"]["layout"] == "nested config, original tensor names"


def test_explicit_command_warns_about_an_undeclared_class(tmp_path):
    """`smt-convert qwen3-asr` on a checkpoint declaring a class it does not list converts with a one-line
    warning naming the class (shown under --quiet too); `convert`, which has only the class to go by, refuses."""
    make_tiny_qwen3_asr(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["architectures"] = ["Qwen3ASRForSpeechToText"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(tmp_path / "hf"), str(tmp_path / "out"), "--no-verify"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Qwen3ASRForSpeechToText" in warnings[0] and "config.json" in warnings[0]
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "hf"), str(tmp_path / "out2")])
    assert result.exit_code == 2 and "Qwen3ASRForSpeechToText is not supported" in result.stderr
    # a checkpoint of another family is refused, not converted with a warning
    make_tiny_paddleocr_vl(tmp_path / "paddle")
    result = CliRunner().invoke(cli, ["qwen3-asr", str(tmp_path / "paddle"), str(tmp_path / "out3")])
    assert result.exit_code == 2 and "use `smt-convert paddleocr-vl`" in result.stderr


def test_verify_reference_accepts_another_layout_of_the_same_model(tmp_path):
    """A bundle converted from what save_pretrained wrote, re-verified against the original release of the same
    weights (flat config, tie flags written differently): the same model, so it verifies; another model does not."""
    make_tiny_paddleocr_vl(tmp_path / "saved", seed=5)
    make_tiny_paddleocr_vl(tmp_path / "release", layout="original", seed=5)
    convert(tmp_path / "saved", tmp_path / "out", "paddleocr-vl", "--image-size", "56", "--no-verify")
    result = CliRunner().invoke(cli, ["-q", "verify", str(tmp_path / "out"), "--reference", str(tmp_path / "release")])
    assert result.exit_code == 0, result.output + result.stderr
    make_tiny_paddleocr_vl(tmp_path / "other", layout="original", seed=5, text_overrides={"num_hidden_layers": 3})
    result = CliRunner().invoke(cli, ["-q", "verify", str(tmp_path / "out"), "--reference", str(tmp_path / "other")])
    assert result.exit_code == 2 and "num_layers" in result.stderr
