"""Tiny, randomly initialised checkpoints written from the real transformers classes, in every layout we
accept. Used by the tests, the `tiny:` recipe sources and examples/make_tiny_example.py (no download).

Models are written the way users' checkpoints are: by transformers' own `save_pretrained` (which reverses its
load-time renames and writes the tie flags it writes); the original releases' layouts, which transformers does not
write, by hand.

Builders (recipe `source.tiny = "<name>"`): "qwen3-asr", "qwen3.5", "qwen3.5-moe", "qwen3.5-text", "qwen3-vl",
"qwen3-vl-moe", "paddleocr-vl".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from smt_convert.testing.tokenizers import CHATML_TEMPLATE, build_qwen_bpe_tokenizer

TINY_VOCAB = 512
TINY_BUILDERS: dict[str, Callable] = {}  # recipe source "tiny:<name>" -> builder(out_dir); filled below


def tiny_builder(name: str):
    def register(fn):
        TINY_BUILDERS[name] = fn
        return fn

    return register


def tiny_qwen3_asr_config(audio_token_id: int, tie: bool = True, **text_overrides):
    """A tiny Qwen3ASRConfig. Tied is transformers' default (the top level); untied sets the top level false.
    text_config keeps its own default (false), so a tied model saved by transformers has config levels that
    disagree (top true, text_config false), as users' checkpoints do."""
    from transformers import Qwen3ASRConfig

    audio: dict[str, Any] = dict(
        num_mel_bins=128,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        downsample_hidden_size=32,
        output_dim=64,
        n_window=50,
        n_window_infer=400,
        initializer_range=0.1,
    )
    text: dict[str, Any] = dict(
        model_type="qwen3",
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        initializer_range=0.1,
    )
    text.update(text_overrides)
    audio["output_dim"] = text["hidden_size"]
    return Qwen3ASRConfig(
        audio_config=audio,
        text_config=text,
        audio_token_id=audio_token_id,
        initializer_range=0.1,
        **({} if tie else {"tie_word_embeddings": False}),  # type: ignore[arg-type]  # the one key is a bool field
    )


def qwen3_asr_original_name(name: str) -> str:
    """Native transformers name -> the original Qwen release name."""
    if name.startswith("model.multi_modal_projector."):
        rest = name[len("model.multi_modal_projector.") :].replace("linear_1", "proj1").replace("linear_2", "proj2")
        return "thinker.audio_tower." + rest
    if name.startswith("model.audio_tower."):
        return "thinker.audio_tower." + name[len("model.audio_tower.") :]
    if name.startswith("model.language_model."):
        return "thinker.model." + name[len("model.language_model.") :]
    return "thinker." + name


def _quiet_save(model, out_dir: Path, dtype=None, max_shard_size: int | None = None) -> None:
    """transformers' own `save_pretrained` (as users' checkpoints are written), without its progress bar
    (recipes run these under --quiet). `dtype` converts a copy; `max_shard_size` (bytes) writes shards and
    model.safetensors.index.json."""
    import copy

    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if dtype is not None and dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype)
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(out_dir, **kwargs)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def shard_size(model, shards: int, dtype=torch.float32) -> int | None:
    """A `max_shard_size` (bytes) that splits `model` into about `shards` files (None: one file)."""
    if shards <= 1:
        return None
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in model.parameters()) * itemsize // shards + 1


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
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": weight_map,
    }
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


@tiny_builder("qwen3-asr")
def make_tiny_qwen3_asr(
    out_dir: Path,
    layout: str = "native",
    dtype=torch.float32,
    shards: int = 1,
    tie: bool = True,
    tokenizer_layout: str = "tokenizer.json",
    seed: int = 0,
    text_overrides: dict | None = None,
) -> dict:
    """Write a tiny Qwen3-ASR checkpoint; returns {"config", "ids", "model"} (model in float32).

    layout "native": written by transformers' `save_pretrained` (tied: top-level tie true, text_config false,
    no lm_head); "original": the Qwen release (`thinker_config`, `thinker.*` names), written by hand."""
    from transformers import Qwen3ASRForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = build_qwen_bpe_tokenizer(out_dir, layout=tokenizer_layout)
    config = tiny_qwen3_asr_config(ids["<|audio_pad|>"], tie=tie, **(text_overrides or {}))
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config).eval()
    if layout == "native":
        _quiet_save(model, out_dir, dtype, shard_size(model, shards, dtype))
        return {"config": config, "ids": ids, "model": model}
    if layout != "original":
        raise ValueError(layout)
    state = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
    if tie:
        state.pop("lm_head.weight", None)
    cfg = config.to_dict()
    state = {qwen3_asr_original_name(k): v for k, v in state.items()}
    cfg["text_config"]["tie_word_embeddings"] = tie
    thinker = {
        "audio_config": cfg["audio_config"],
        "text_config": cfg["text_config"],
        "audio_token_id": cfg["audio_token_id"],
        "model_type": "qwen3_asr_thinker",
        "tie_word_embeddings": tie,
    }
    thinker["text_config"]["rope_scaling"] = {"mrope_section": [3, 3, 2], "interleaved": True, "rope_type": "default"}
    cfg = {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "thinker_config": thinker,
        "support_languages": ["Chinese", "English"],
    }
    _write_safetensors(out_dir, state, shards)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    return {"config": config, "ids": ids, "model": model}


# ---- Qwen3.5 (dense / MoE, multimodal / text-only) -------------------------------------------------

# Special tokens of the real Qwen3.5 tokenizer we need, in its order (real ids: <|endoftext|> 248044,
# <|im_start|> 248045, <|im_end|> 248046, <|vision_start|> 248053, <|vision_end|> 248054, <|vision_pad|> 248055,
# <|image_pad|> 248056 = config.image_token_id, <|video_pad|> 248057 = config.video_token_id).
QWEN3_5_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added as single tokens but NOT special (as in Qwen3 / Qwen3.5: `"special": false`, ids 248068/248069), so
# decoding with skip_special_tokens keeps them.
QWEN3_5_USER_DEFINED = ["<think>", "</think>"]

# The config fields that name a token, and the token string.
QWEN3_5_TOKEN_FIELDS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}

# Real Qwen3.5 ships the Qwen3-VL preprocessor_config.json (the Qwen2-VL image processor, patch 16, mean/std 0.5).
QWEN3_5_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}

TINY_QWEN3_5_HIDDEN = 64
TINY_QWEN3_5_LAYER_TYPES = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]


def tiny_qwen3_5_text_config(moe: bool = False, tie: bool = True, **overrides) -> dict:
    """Text config kwargs: both layer kinds (full attention every 4th layer), more linear value heads than key
    heads (exercises the value-head reorder), partial rotary with M-RoPE sections llama.cpp can express."""
    text = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=TINY_QWEN3_5_HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        layer_types=list(TINY_QWEN3_5_LAYER_TYPES),
        full_attention_interval=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        # 32 * 0.25 = 8 rotated dims = 4 pairs; [2, 1, 1] gives them t, h, w, t (as HF does)
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    )
    if moe:
        text.update(moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2)
    else:
        text.update(intermediate_size=128)
    text.update(overrides)
    return text


def tiny_qwen3_5_vision_config(out_hidden: int = TINY_QWEN3_5_HIDDEN) -> dict:
    """8x8 learned position grid with patch 16: the default image is 128x128."""
    return dict(
        depth=2,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=out_hidden,
        num_position_embeddings=64,
    )


def tiny_qwen3_5_config(
    ids: dict,
    moe: bool = False,
    text_only: bool = False,
    tie: bool = True,
    vision_out_hidden: int | None = None,
    text_overrides: dict | None = None,
):
    import transformers

    text = tiny_qwen3_5_text_config(moe, tie, **(text_overrides or {}))
    text.update(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if text_only:
        cls = transformers.Qwen3_5MoeTextConfig if moe else transformers.Qwen3_5TextConfig
        return cls(**text)
    full_cls = transformers.Qwen3_5MoeConfig if moe else transformers.Qwen3_5Config
    vision = tiny_qwen3_5_vision_config(TINY_QWEN3_5_HIDDEN if vision_out_hidden is None else vision_out_hidden)
    return full_cls(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=tie,
        **{field: ids[token] for field, token in QWEN3_5_TOKEN_FIELDS.items()},
    )


def qwen3_5_model_class(moe: bool, text_only: bool):
    import transformers

    name = {
        (False, False): "Qwen3_5ForConditionalGeneration",
        (True, False): "Qwen3_5MoeForConditionalGeneration",
        (False, True): "Qwen3_5ForCausalLM",
        (True, True): "Qwen3_5MoeForCausalLM",
    }[(moe, text_only)]
    return getattr(transformers, name)


@torch.no_grad()
def scale_qwen3_5_weights(model, seed: int = 0, fan_in: bool = False) -> None:
    """Redraw every parameter larger than HF's init (deterministically) so logits and image features are far
    from flat: text as tests/test_qwen3_5_text.py, vision as tests/test_qwen3_5_vision.py. `fan_in`: text matrices
    get 0.15 x sqrt(64 / fan-in) instead of 0.15 (the same at the tiny width, and a stable signal at real widths,
    where a fixed 0.15 makes a chaotic network that no quantisation survives)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(p):
        return torch.randn(p.shape, generator=gen)

    for name, p in model.named_parameters():
        if ".visual." in f".{name}":
            if "norm" in name:
                p.copy_(1.0 + 0.1 * randn(p) if name.endswith("weight") else 0.1 * randn(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * randn(p))
            elif "pos_embed" in name:
                p.copy_(randn(p))
            else:
                p.copy_(randn(p) * 1.5 / p[0].numel() ** 0.5)
        elif name.endswith("A_log"):
            p.copy_(torch.log(0.5 + 3.5 * torch.rand(p.shape, generator=gen)))  # A in [0.5, 4]
        elif name.endswith("dt_bias"):
            p.copy_(0.5 * randn(p))
        elif p.ndim == 1:  # zero-centred norms (HF applies 1 + w) and the gated norm: 0.2 spread
            p.copy_(0.2 * randn(p))
        else:
            p.copy_(0.15 * randn(p) * ((64 / p.shape[-1]) ** 0.5 if fan_in else 1.0))


@tiny_builder("qwen3.5")
def make_tiny_qwen3_5(
    out_dir: Path,
    moe: bool = False,
    text_only: bool = False,
    dtype=torch.float32,
    tie: bool = True,
    seed: int = 0,
    with_preprocessor: bool = True,
    vision_out_hidden: int | None = None,
    shards: int = 1,
    layout: str = "saved",
    text_overrides: dict | None = None,
    fan_in_scale: bool = False,
) -> dict:
    """Write a tiny Qwen3.5 checkpoint with transformers' own `save_pretrained` (config.json with
    `architectures`, model.safetensors, generation_config.json; MoE experts come out per expert), plus the
    tokenizer files and, for the multimodal models, a preprocessor_config.json like the real one.

    text: hidden 64, 4 layers [linear x3, full], linear key heads 2 / value heads 4, vocab 512 (MoE: 4 experts,
    top-2, expert ffn 32, shared expert 48); vision: depth 2, hidden 32, heads 2, patch 16, merge 2, 8x8
    position table (default image 128x128), out_hidden_size = text hidden unless `vision_out_hidden`.
    layout "saved": as `save_pretrained` writes it (MoE experts one tensor per expert); "released": the Hub
    release's weights (the in-memory names, MoE experts fused into `experts.gate_up_proj` / `down_proj`).
    `text_overrides` change text config fields (wider models for quantisation measurements: K-quants need rows
    of 256). Returns {"config", "ids" (added token -> id), "model" (float32, eval)}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = build_qwen_bpe_tokenizer(
        out_dir, specials=QWEN3_5_SPECIALS, user_defined=QWEN3_5_USER_DEFINED, chat_template=CHATML_TEMPLATE
    )
    config = tiny_qwen3_5_config(
        ids, moe=moe, text_only=text_only, tie=tie, vision_out_hidden=vision_out_hidden, text_overrides=text_overrides
    )
    cls = qwen3_5_model_class(moe, text_only)
    torch.manual_seed(seed)
    model = cls(config).eval()
    scale_qwen3_5_weights(model, seed, fan_in=fan_in_scale)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    _quiet_save(model, out_dir, dtype, shard_size(model, shards, dtype))
    if layout == "released":  # the Hub release: transformers' in-memory names, MoE experts fused
        for old_file in [*out_dir.glob("model*.safetensors"), out_dir / "model.safetensors.index.json"]:
            old_file.unlink(missing_ok=True)
        state = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
        if tie:
            state.pop("lm_head.weight", None)
        _write_safetensors(out_dir, state, shards)
    elif layout != "saved":
        raise ValueError(layout)
    if not text_only and with_preprocessor:
        (out_dir / "preprocessor_config.json").write_text(json.dumps(QWEN3_5_PREPROCESSOR, indent=2) + "\n")
    return {"config": config, "ids": ids, "model": model}


@tiny_builder("qwen3.5-moe")
def make_tiny_qwen3_5_moe(out_dir: Path, **kwargs) -> dict:
    return make_tiny_qwen3_5(out_dir, moe=True, **kwargs)


@tiny_builder("qwen3.5-text")
def make_tiny_qwen3_5_text(out_dir: Path, **kwargs) -> dict:
    return make_tiny_qwen3_5(out_dir, text_only=True, **kwargs)


# ---- Qwen3-VL ------------------------------------------------------------------------------------------


def tiny_qwen3_vl_config(ids: dict, moe: bool = False, tie: bool = False, text_overrides: dict | None = None):
    """Qwen3 text (hidden 64, 3 layers, head_dim 16: 8 rotary pairs, sections [3, 3, 2] that llama.cpp reads as HF
    does; MoE: 4 experts, top 2, expert ffn 48) and Qwen3.5's tiny vision tower with 3 blocks, DeepStack after
    blocks 0 and 1 (the released models take 3 of 24-27 blocks)."""
    import transformers

    text = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=TINY_QWEN3_5_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [3, 3, 2]},
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if moe:
        text.update(moe_intermediate_size=48, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)
    text.update(text_overrides or {})
    vision = {**tiny_qwen3_5_vision_config(), "depth": 3, "deepstack_visual_indexes": [0, 1]}
    cls = transformers.Qwen3VLMoeConfig if moe else transformers.Qwen3VLConfig
    return cls(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=tie,
        **{field: ids[token] for field, token in QWEN3_5_TOKEN_FIELDS.items()},
    )


@tiny_builder("qwen3-vl")
def make_tiny_qwen3_vl(
    out_dir: Path,
    moe: bool = False,
    dtype=torch.float32,
    tie: bool = False,
    seed: int = 0,
    layout: str = "saved",
    text_overrides: dict | None = None,
    fan_in_scale: bool = False,
) -> dict:
    """Write a tiny Qwen3-VL (or Qwen3-VL-MoE) checkpoint with transformers' own `save_pretrained`, plus the
    tokenizer files and Qwen3-VL's preprocessor_config.json. layout "saved": as transformers 5 writes it (MoE experts
    [E, 2F, H] / [E, H, F]); "released": the Hub release's transposed experts ([E, H, 2F] / [E, F, H]), which
    transformers' loader transposes back by shape. Returns {"config", "ids", "model" (float32, eval)}."""
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = build_qwen_bpe_tokenizer(
        out_dir, specials=QWEN3_5_SPECIALS, user_defined=QWEN3_5_USER_DEFINED, chat_template=CHATML_TEMPLATE
    )
    config = tiny_qwen3_vl_config(ids, moe=moe, tie=tie, text_overrides=text_overrides)
    cls = transformers.Qwen3VLMoeForConditionalGeneration if moe else transformers.Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config).eval()
    scale_qwen3_5_weights(model, seed, fan_in=fan_in_scale)
    with torch.no_grad():  # Qwen3's norms multiply by w (Qwen3.5's by 1 + w): centre them on 1
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and ".visual." not in f".{name}":
                p.add_(1.0)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    _quiet_save(model, out_dir, dtype)
    if layout == "released":
        from safetensors.torch import load_file

        (file,) = out_dir.glob("model*.safetensors")
        state = load_file(file)
        for name in [n for n in state if n.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))]:
            state[name] = state[name].transpose(1, 2).contiguous()
        save_file(state, file, metadata={"format": "pt"})
    elif layout != "saved":
        raise ValueError(layout)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(QWEN3_5_PREPROCESSOR, indent=2) + "\n")
    return {"config": config, "ids": ids, "model": model}


@tiny_builder("qwen3-vl-moe")
def make_tiny_qwen3_vl_moe(out_dir: Path, **kwargs) -> dict:
    return make_tiny_qwen3_vl(out_dir, moe=True, **kwargs)


# ---- PaddleOCR-VL ------------------------------------------------------------------------------------

PADDLEOCR_PREPROCESSOR = {
    "image_processor_type": "PaddleOCRVLImageProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "min_pixels": 147384,
    "max_pixels": 2822400,
    "patch_size": 14,
    "temporal_patch_size": 1,
    "merge_size": 2,
}


def paddleocr_original_name(name: str) -> str:
    """Native (in-memory transformers) name -> the original release's name."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.projector."):
        return "mlp_AR." + name[len("model.projector.") :]
    return name


@tiny_builder("paddleocr-vl")
def make_tiny_paddleocr_vl(
    out_dir: Path,
    layout: str = "saved",
    tokenizer_layout: str = "both",
    seed: int = 0,
    text_overrides: dict | None = None,
    auto_map: bool = False,
    tie: bool = False,
    dtype=torch.float32,
    shards: int = 1,
) -> dict:
    """A tiny PaddleOCR-VL (ERNIE-4.5 text with M-RoPE, SigLIP-style vision, mlp_AR projector) with a
    SentencePiece tokenizer trained in-process. layout:
    - "saved": transformers' own `save_pretrained` (nested config, the release's tensor names written back);
    - "native": nested config with transformers' in-memory names (`model.language_model.*`, `model.visual.*`,
      `model.projector.*`), written by hand;
    - "original": the release (flat config, `model.*` / `visual.*` / `mlp_AR.*`; `auto_map` like the release's
      custom-code entries, which must never run), written by hand."""
    from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration

    from smt_convert.testing.tokenizers import build_spm_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = build_spm_tokenizer(out_dir, layout=tokenizer_layout)
    vocab = max(ids.values()) + 1 + 16
    text: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        use_bias=False,
        hidden_act="silu",
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [6, 5, 5]},
    )
    text.update(text_overrides or {})
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        spatial_merge_size=2,
    )
    tokens: dict[str, Any] = dict(
        image_token_id=ids["<|IMAGE_PLACEHOLDER|>"],
        vision_start_token_id=ids["<|IMAGE_START|>"],
        vision_end_token_id=ids["<|IMAGE_END|>"],
        video_token_id=ids["<|IMAGE_PLACEHOLDER|>"],
    )
    config = PaddleOCRVLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **tokens)
    torch.manual_seed(seed)
    model = PaddleOCRVLForConditionalGeneration(config).eval()
    with torch.no_grad():  # scaled so logits and image features are far from flat
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p)) if "norm" in name else p.normal_(0.0, 0.05)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.15)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(PADDLEOCR_PREPROCESSOR, indent=2) + "\n")
    if layout == "saved":
        _quiet_save(model, out_dir, dtype, shard_size(model, shards, dtype))
        return {"config": config, "ids": ids, "model": model}
    state = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
    if tie:
        state.pop("lm_head.weight", None)
    if layout == "original":
        state = {paddleocr_original_name(k): v for k, v in state.items()}
        rope = text.pop("rope_parameters")
        cfg = {
            "architectures": ["PaddleOCRVLForConditionalGeneration"],
            "model_type": "paddleocr_vl",
            **text,
            "rope_scaling": {"mrope_section": rope["mrope_section"], "rope_type": "default", "type": "default"},
            "rope_theta": rope["rope_theta"],
            "torch_dtype": "float32",
            "vision_config": {**vision, "model_type": "paddleocr_vl", "architectures": ["PaddleOCRVisionModel"]},
            **tokens,
        }
        if auto_map:
            cfg["auto_map"] = {
                "AutoConfig": "configuration_paddleocr_vl.PaddleOCRVLConfig",
                "AutoModelForCausalLM": "modeling_paddleocr_vl.PaddleOCRVLForConditionalGeneration",
            }
            (out_dir / "modeling_paddleocr_vl.py").write_text("raise SystemExit('checkpoint code must never run')\n")
    elif layout == "native":
        cfg = config.to_dict()
        cfg["architectures"] = ["PaddleOCRVLForConditionalGeneration"]
    else:
        raise ValueError(layout)
    _write_safetensors(out_dir, state, shards)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    return {"config": config, "ids": ids, "model": model}
