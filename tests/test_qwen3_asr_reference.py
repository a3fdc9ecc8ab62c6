"""The streamed Hugging Face reference (archs/qwen3_asr/reference.py) against the whole transformers model
(`Qwen3ASRForConditionalGeneration` with the same weights, run in one piece): encoder rows, logits at every
position, greedy tokens, in both checkpoint layouts and with an untied lm_head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smt_convert.archs.qwen3_asr import reference as reference_module
from smt_convert.archs.qwen3_asr.prompt import golden_audio
from smt_convert.archs.qwen3_asr.reference import zero_padded
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.plugin import ReferenceRequest, get_plugin
from smt_convert.converters.reference_stream import teacher_forced_tokens
from smt_convert.runtime.audio import log_mel, post_cnn_length
from smt_convert.runtime.errors import SmtError
from smt_convert.testing.checkpoints import make_tiny_qwen3_asr

REL_TOL = 1e-5  # max abs diff / max |full model|; measured 0.0 (the same ops in the same order) in all three cases


def rel_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


def make_request(info, hp, seconds: float = 2.6, continuation=(17, 301, 5, 44)) -> ReferenceRequest:
    wave = golden_audio(seconds)
    feats = log_mel(wave)
    ids = info["ids"]
    rows = post_cnn_length(feats.shape[1])
    prompt = [ids["<|im_start|>"], 30, 31, ids["<|audio_start|>"]] + [hp.audio_token_id] * rows + \
             [ids["<|audio_end|>"], ids["<|im_end|>"], 40]
    return ReferenceRequest(media=wave, host_input=feats, prompt_ids=prompt, continuation=list(continuation),
                            stop_ids=[ids["<|im_end|>"]])


def full_model(model, hp, request):
    """The whole HF model on the same zero-padded features and token ids."""
    feats, mask = zero_padded(request.host_input, hp)
    ids = torch.tensor([request.prompt_ids + request.continuation])
    with torch.no_grad():
        encoder = model.get_audio_features(feats, mask).pooler_output.numpy()
        logits = model(input_ids=ids, input_features=feats, input_features_mask=mask).logits[0].numpy()
    return encoder, logits


@pytest.mark.parametrize("layout,tie", [("native", True), ("original", True), ("native", False)])
def test_streamed_reference_equals_full_model(tmp_path, monkeypatch, layout, tie):
    monkeypatch.setattr(reference_module, "LM_HEAD_BLOCK", 100)  # 512-token vocabulary: 6 blocks, the last partial
    info = make_tiny_qwen3_asr(tmp_path / "hf", layout=layout, tie=tie, shards=3 if layout == "original" else 1)
    plugin = get_plugin("qwen3-asr")
    ckpt = Checkpoint.open(tmp_path / "hf")
    hp = plugin.read_hparams(ckpt)
    assert (hp.layout, hp.tie_embeddings) == (layout, tie)
    request = make_request(info, hp)
    result = plugin.reference(ckpt, hp, request)
    encoder, logits = full_model(info["model"], hp, request)
    n = len(request.prompt_ids) + len(request.continuation)
    assert result.logits.shape == logits.shape == (n, hp.vocab_size)
    print(f"{layout} tie={tie}: encoder {rel_diff(result.encoder, encoder):.2e}, "
          f"logits {rel_diff(result.logits, logits):.2e}")
    assert result.encoder.shape == encoder.shape and rel_diff(result.encoder, encoder) <= REL_TOL
    assert rel_diff(result.logits, logits) <= REL_TOL
    checks = {r.check: r for r in result.rows}
    assert set(checks) == {"features", "encoder vs HF processor"}
    assert all(r.ok for r in result.rows), [r.to_dict() for r in result.rows]
    print({k: r.value for k, r in checks.items()})


def test_teacher_forcing_equals_generate(tmp_path):
    """Greedy tokens from the streamed logits over prompt + HF's own generated tokens are HF's tokens."""
    info = make_tiny_qwen3_asr(tmp_path / "hf")
    plugin = get_plugin("qwen3-asr")
    ckpt = Checkpoint.open(tmp_path / "hf")
    hp = plugin.read_hparams(ckpt)
    request = make_request(info, hp, continuation=())
    feats, mask = zero_padded(request.host_input, hp)
    ids = torch.tensor([request.prompt_ids])
    with torch.no_grad():
        gen = info["model"].generate(input_ids=ids, input_features=feats, input_features_mask=mask,
                                     attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                     eos_token_id=[], pad_token_id=0)[0, ids.shape[1]:].tolist()
    request.continuation = gen[:-1]
    result = plugin.reference(ckpt, hp, request)
    assert teacher_forced_tokens(result.logits, len(request.prompt_ids), request.continuation) == gen


def test_missing_tensor_is_an_error(tmp_path):
    """Every parameter of every streamed module comes from the checkpoint: a missing one is named."""
    info = make_tiny_qwen3_asr(tmp_path / "hf")
    plugin = get_plugin("qwen3-asr")
    ckpt = Checkpoint.open(tmp_path / "hf")
    hp = plugin.read_hparams(ckpt)
    request = make_request(info, hp)
    real_load = ckpt.load

    def load(name):
        if name == "model.audio_tower.layers.1.fc2.weight":
            raise SmtError(f"tensor {name} missing")
        return real_load(name)

    ckpt.load = load
    with pytest.raises(SmtError, match="layers.1.fc2.weight"):
        plugin.reference(ckpt, hp, request)
