"""Tiny, randomly initialised checkpoints written from the real transformers classes, in every layout we
accept. Used by the tests, the `tiny:` recipe sources and examples/make_tiny_example.py (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from smt_convert.converters.tiny_tokenizers import build_qwen_bpe_tokenizer

TINY_VOCAB = 512
TINY_BUILDERS = {}  # recipe source "tiny:<name>" -> builder(out_dir); filled below


def tiny_builder(name: str):
    def register(fn):
        TINY_BUILDERS[name] = fn
        return fn

    return register


def tiny_qwen3_asr_config(audio_token_id: int, tie: bool = True, **text_overrides):
    from transformers import Qwen3ASRConfig

    audio = dict(num_mel_bins=128, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                 downsample_hidden_size=32, output_dim=64, n_window=50, n_window_infer=400, initializer_range=0.1)
    text = dict(model_type="qwen3", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                tie_word_embeddings=tie, initializer_range=0.1)
    text.update(text_overrides)
    audio["output_dim"] = text["hidden_size"]
    return Qwen3ASRConfig(audio_config=audio, text_config=text, audio_token_id=audio_token_id,
                          tie_word_embeddings=tie, initializer_range=0.1)


def _original_name(name: str) -> str:
    """Native transformers name -> the original Qwen release name."""
    if name.startswith("model.multi_modal_projector."):
        rest = name[len("model.multi_modal_projector."):].replace("linear_1", "proj1").replace("linear_2", "proj2")
        return "thinker.audio_tower." + rest
    if name.startswith("model.audio_tower."):
        return "thinker.audio_tower." + name[len("model.audio_tower."):]
    if name.startswith("model.language_model."):
        return "thinker.model." + name[len("model.language_model."):]
    return "thinker." + name


def _write_safetensors(out_dir: Path, tensors: dict, shards: int) -> None:
    names = sorted(tensors)
    if shards <= 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


@tiny_builder("qwen3-asr")
def make_tiny_qwen3_asr(out_dir: Path, layout: str = "native", dtype=torch.float32, shards: int = 1,
                        tie: bool = True, tokenizer_layout: str = "tokenizer.json", seed: int = 0) -> dict:
    """Write a tiny Qwen3-ASR checkpoint; returns {"config", "ids", "model"} (model in float32)."""
    from transformers import Qwen3ASRForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = build_qwen_bpe_tokenizer(out_dir, layout=tokenizer_layout)
    config = tiny_qwen3_asr_config(ids["<|audio_pad|>"], tie=tie)
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config).eval()
    state = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
    if tie:
        state.pop("lm_head.weight", None)
    cfg = config.to_dict()
    cfg["architectures"] = ["Qwen3ASRForConditionalGeneration"]
    if layout == "original":
        state = {_original_name(k): v for k, v in state.items()}
        thinker = {"audio_config": cfg["audio_config"], "text_config": cfg["text_config"],
                   "audio_token_id": cfg["audio_token_id"], "model_type": "qwen3_asr_thinker",
                   "tie_word_embeddings": tie}
        thinker["text_config"]["rope_scaling"] = {"mrope_section": [3, 3, 2], "interleaved": True,
                                                   "rope_type": "default"}
        cfg = {"architectures": ["Qwen3ASRForConditionalGeneration"], "model_type": "qwen3_asr",
               "thinker_config": thinker, "support_languages": ["Chinese", "English"]}
    elif layout != "native":
        raise ValueError(layout)
    _write_safetensors(out_dir, state, shards)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    return {"config": config, "ids": ids, "model": model}
