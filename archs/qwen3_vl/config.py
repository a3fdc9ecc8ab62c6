"""Qwen3-VL hyperparameters (dense and MoE): a Qwen3 text decoder under `text_config`, Qwen3.5's vision tower
plus DeepStack under `vision_config` (read by Qwen3.5's own `read_vision`). Errors name the file and field.

Rope sections: llama.cpp's interleaved M-RoPE picks a pair's position stream from `rope.dimension_sections`; HF
picks it from `mrope_section` with a slightly different rule. Where the config's sections give every pair the same
stream in both (the tiny test models), they are written as upstream writes them. Where they do not (the released
[24, 20, 20] over 64 pairs: pairs 61 and 62 read llama.cpp's fourth stream, which is 0), the sections that make
text positions exact are written instead (as Qwen3-ASR), and the plan says which pairs still differ on image
rows (the two lowest frequencies: under 1e-3 rad at any position a prompt reaches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from smt_convert.archs.qwen3_5.config import VisionHparams, read_vision, section_mismatch
from smt_convert.converters.validate import (
    ConfigReader,
    TieConfig,
    read_rope,
    read_tie,
    require,
    settle_tie,
    require_grouped_heads,
    require_silu_without_biases,
)
from smt_convert.runtime.errors import SmtError

TEXT = "model.language_model."
VISION = "model.visual."

HF_ARCHITECTURES_DENSE = ("Qwen3VLForConditionalGeneration",)
HF_ARCHITECTURES_MOE = ("Qwen3VLMoeForConditionalGeneration",)


@dataclass
class TextHparams:
    moe: bool
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense FFN width (MoE checkpoints carry one too; llama.cpp writes it)
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]  # as the config gives it
    max_position_embeddings: int
    tie_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    tie_config: TieConfig | None = field(default=None, compare=False)
    tie_note: str | None = field(default=None, compare=False)

    @property
    def gguf_arch(self) -> str:
        return "qwen3vlmoe" if self.moe else "qwen3vl"

    @property
    def config_sections(self) -> list[int]:
        return (list(self.mrope_section) + [0, 0, 0, 0])[:4]

    @property
    def rope_sections(self) -> list[int]:
        """The config's sections when llama.cpp reads them as HF does; else those exact for text positions."""
        if section_mismatch(self.head_dim // 2, self.config_sections) is None:
            return self.config_sections
        n = self.head_dim // 2
        return [math.ceil(n / 3), math.ceil((n - 1) / 3), math.ceil((n - 2) / 3), 0]


@dataclass
class Hparams:
    text: TextHparams
    vision: VisionHparams
    hf_class: str
    image_token_id: int
    experts: str = "native"  # MoE expert tensors on disk: "native" ([E, 2F, H]) or "released" ([E, H, 2F])
    layout: str = "native"
    prefix: str = TEXT

    @property
    def deepstack_layers(self) -> int:
        return len(self.vision.deepstack_indexes)

    @property
    def default_stem(self) -> str:
        return "Qwen3-VL-MoE" if self.text.moe else "Qwen3-VL"


def read_text(config: dict, path, moe: bool) -> TextHparams:
    top = ConfigReader(config, path)
    text = top.sub("text_config")
    rope = read_rope(text, default_theta=5000000.0)
    require(rope.rope_type == "default", path, rope.block.field("rope_type"), f"'{rope.rope_type}' is not supported")
    section = rope.block.data.get("mrope_section", [24, 20, 20])
    require(
        isinstance(section, list)
        and len(section) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section),
        path,
        rope.block.field("mrope_section"),
        f"expected three non-negative integers, found {section!r}",
    )
    hidden, heads = text.get("hidden_size"), text.get("num_attention_heads")
    hp = TextHparams(
        moe=moe,
        vocab_size=text.get("vocab_size"),
        hidden_size=hidden,
        intermediate_size=text.get("intermediate_size"),
        num_layers=text.get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads"),
        head_dim=text.get("head_dim", int, hidden // heads),
        rms_norm_eps=text.get("rms_norm_eps", float, 1e-6),
        rope_theta=rope.theta,
        mrope_section=list(section),
        max_position_embeddings=text.get("max_position_embeddings", int, 128000),
        tie_embeddings=False,
        tie_config=read_tie([top, text], default=False),
    )
    if moe:
        hp.num_experts = text.get("num_experts", int, None) or text.get("num_local_experts")
        hp.num_experts_per_tok = text.get("num_experts_per_tok")
        hp.moe_intermediate_size = text.get("moe_intermediate_size")
        require(
            0 < hp.num_experts_per_tok <= hp.num_experts,
            path,
            text.field("num_experts_per_tok"),
            f"{hp.num_experts_per_tok} not in 1..{hp.num_experts} experts",
        )
        sparse = text.get("decoder_sparse_step", int, 1)
        dense_layers = text.data.get("mlp_only_layers") or []
        require(
            sparse == 1 and not dense_layers,
            path,
            text.field("mlp_only_layers"),
            "dense layers inside a MoE model are not supported (llama.cpp's qwen3vlmoe has experts in every layer)",
        )
    require_grouped_heads(hp.num_heads, hp.num_kv_heads, path, text)
    require(hp.head_dim % 2 == 0, path, text.field("head_dim"), "must be even for rotary embeddings")
    require(
        sum(section) <= hp.head_dim // 2,
        path,
        rope.block.field("mrope_section"),
        f"{section} has more pairs than head_dim {hp.head_dim} rotates ({hp.head_dim // 2})",
    )
    require_silu_without_biases(text, path, "qwen3vl")
    return hp


def expert_layout(ckpt, hp: TextHparams) -> str:
    """'native' when layer 0's fused experts have transformers' in-memory shape, 'released' when transposed
    (the Hub release): decided by shape, as transformers' own loader does (a square tensor counts as native)."""
    gate_up = ckpt.tensors.get(TEXT + "layers.0.mlp.experts.gate_up_proj")
    if gate_up is None:
        return "native"  # the tensor-set check names what is missing
    H, F = hp.hidden_size, hp.moe_intermediate_size
    if tuple(gate_up.shape) == (hp.num_experts, 2 * F, H):
        return "native"
    if tuple(gate_up.shape) == (hp.num_experts, H, 2 * F):
        return "released"
    return "native"


def read_hparams(ckpt, opts, moe: bool) -> Hparams:
    from smt_convert.runtime.bundle import read_json

    config, path = ckpt.config, ckpt.config_path
    archs = config.get("architectures") or []
    hf_class = archs[0] if archs else (HF_ARCHITECTURES_MOE if moe else HF_ARCHITECTURES_DENSE)[0]
    text = read_text(config, path, moe)
    pre_path = ckpt.root / "preprocessor_config.json"
    pre = read_json(pre_path) if pre_path.is_file() else None
    image_size = opts.image_size if opts is not None else None
    if "vision_config" not in config:
        raise SmtError(f"{path}: vision_config: required block is missing")
    vision = read_vision(config, path, text.hidden_size, image_size, pre, pre_path)
    image_token = ConfigReader(config, path).get("image_token_id", int, 151655)
    require(0 <= image_token < text.vocab_size, path, "image_token_id", f"{image_token} is outside the vocabulary")
    assert text.tie_config is not None  # read_text always reads it
    decision = settle_tie(text.tie_config, ckpt, TEXT + "embed_tokens.weight")
    text = replace(text, tie_embeddings=decision.tied, tie_note=decision.note)
    experts = expert_layout(ckpt, text) if moe else "native"
    return Hparams(text, vision, hf_class, image_token, experts)


def sections_note(hp: Hparams) -> str | None:
    """Which rotary pairs rotate differently from HF on image rows, when the written sections are not the config's."""
    t = hp.text
    if t.rope_sections == t.config_sections:
        return None
    n = t.head_dim // 2
    from smt_convert.archs.qwen3_5.config import hf_rope_streams
    from smt_convert.runtime.decoders.blocks import imrope_streams

    hf, ours = hf_rope_streams(n, t.config_sections), imrope_streams(n, t.rope_sections).tolist()
    pairs = [i for i, (a, b) in enumerate(zip(hf, ours)) if a != b]
    return (
        f"rope sections {t.rope_sections} instead of the config's {t.mrope_section}: text positions exact; on image "
        f"rows rotary pair(s) {pairs} of {n} take the row/column position where HF takes the temporal one "
        "(README: Rope sections)"
    )
