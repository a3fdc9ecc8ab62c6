"""Qwen3.5 hyperparameters (dense and MoE, multimodal or text-only): read from config.json and validated before
any heavy work. Errors name the file and the dotted field.

Layouts: `Qwen3_5(Moe)ForConditionalGeneration` (text under `text_config`, vision under `vision_config`, text
tensors `model.language_model.*`) and the text-only `Qwen3_5(Moe)ForCausalLM` (flat config, tensors `model.*`).
No torch is imported here (numpy only, through the runtime's M-RoPE rule): board-side tools import this too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol
from pathlib import Path

from smt_convert.runtime.documents import finite
from smt_convert.converters.validate import (
    require_grouped_heads,
    require_silu_without_biases,
    ConfigReader,
    TieConfig,
    image_size_hw,
    read_rope,
    read_tie,
    require,
    settle_tie,
)
from smt_convert.runtime.decoders.blocks import imrope_streams
from smt_convert.runtime.errors import SmtError

TEXT_PREFIX = "model.language_model."  # Qwen3_5(Moe)ForConditionalGeneration
CAUSAL_PREFIX = "model."  # Qwen3_5(Moe)ForCausalLM
VISION = "model.visual."

HF_ARCHITECTURES_DENSE = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")
HF_ARCHITECTURES_MOE = ("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM")

# Largest image Qwen3.5's processor makes when preprocessor_config.json does not say (Qwen3-VL's
# size.longest_edge, in pixels): 65536 patches of 16 x 16.
DEFAULT_MAX_PIXELS = 16777216
# HF's default when rope_parameters has no mrope_section (Qwen3_5TextRotaryEmbedding); upstream writes the
# same default ([11, 11, 10, 0]) because llama.cpp requires qwen35*.rope.dimension_sections.
DEFAULT_MROPE_SECTION = [11, 11, 10]
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)
VISION_ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}  # HF hidden_act -> gelu approximation

LINEAR, FULL = "linear_attention", "full_attention"


@dataclass
class TextHparams:
    moe: bool
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense FFN width (0 for MoE: it has none)
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: list[int]  # 3 entries (t, h, w) from the config
    max_position_embeddings: int
    layer_types: list[str]  # "linear_attention" | "full_attention" per layer
    full_attention_interval: int
    linear_conv_kernel: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    tie_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    mtp_layers: int = 0  # MTP blocks in the checkpoint (not converted)
    tie_config: TieConfig | None = field(default=None, compare=False)  # what config.json says
    tie_note: str | None = field(default=None, compare=False)  # why, when the weights decided it

    @property
    def gguf_arch(self) -> str:
        return "qwen35moe" if self.moe else "qwen35"

    @property
    def rope_dim(self) -> int:
        """Rotated dims per head (`rope.dimension_count`), as upstream computes it."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def rope_sections(self) -> list[int]:
        return (list(self.mrope_section) + [0, 0, 0, 0])[:4]

    @property
    def key_dim(self) -> int:
        return self.linear_key_head_dim * self.linear_num_key_heads

    @property
    def value_dim(self) -> int:
        return self.linear_value_head_dim * self.linear_num_value_heads

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def v_per_k(self) -> int:
        return self.linear_num_value_heads // self.linear_num_key_heads

    def is_linear(self, layer: int) -> bool:
        return self.layer_types[layer] == LINEAR


@dataclass
class VisionHparams:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    num_position_embeddings: int
    rope_theta: float
    gelu: str  # "tanh" or "none": the blocks' MLP activation
    image_size: tuple[int, int]  # (height, width) of the static ONNX input
    image_mean: tuple[float, ...]  # three values (read_vision checks)
    image_std: tuple[float, ...]
    rescale_factor: float
    preprocessor_source: str  # file the normalisation came from, or "defaults"
    deepstack_indexes: tuple[int, ...] = ()  # blocks whose output a DeepStack merger reads (Qwen3-VL; none here)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the merged token grid the vision encoder emits."""
        m = self.patch_size * self.spatial_merge_size
        return self.image_size[0] // m, self.image_size[1] // m

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def side(self) -> int:
        """Side of the learned square position table."""
        return int(round(self.num_position_embeddings**0.5))


class ImageModel(Protocol):
    """What the image helpers shared with Qwen3-VL read (prompt.py, reference.hf_patches): Qwen3.5's Hparams or
    Qwen3-VL's."""

    @property
    def vision(self) -> VisionHparams | None: ...

    @property
    def image_token_id(self) -> int | None: ...


@dataclass
class Hparams:
    text: TextHparams
    vision: VisionHparams | None
    prefix: str  # canonical text prefix in this checkpoint
    experts: str  # MoE expert layout on disk: "fused" or "per_expert"
    hf_class: str
    image_token_id: int | None = None

    @property
    def layout(self) -> str:
        return "native" if self.prefix == TEXT_PREFIX else "native text-only"

    @property
    def default_stem(self) -> str:
        return "Qwen3.5-MoE" if self.text.moe else "Qwen3.5"


# ---- text -------------------------------------------------------------------------------------------


def _text_reader(config: dict, path: Path) -> tuple[ConfigReader, ConfigReader]:
    top = ConfigReader(config, path)
    text = top.sub("text_config") if "text_config" in config else top
    return top, text


def is_moe_config(config: dict) -> bool:
    """MoE if the model type or the architectures say so, or the text config has experts."""
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    types = {str(config.get("model_type", "")), str(text.get("model_type", ""))}
    archs = set(config.get("architectures") or [])
    return bool(
        types & {"qwen3_5_moe", "qwen3_5_moe_text"}
        or archs & set(HF_ARCHITECTURES_MOE)
        or text.get("num_experts") is not None
    )


def read_text_hparams(config: dict, path: Path, moe: bool | None = None) -> TextHparams:
    """Text hyperparameters from either layout (`text_config` inside, or a flat text-only config)."""
    top, text = _text_reader(config, path)
    if moe is None:
        moe = is_moe_config(config)
    rope_config = read_rope(text, default_theta=10000.0)
    rope = rope_config.block
    require(
        rope_config.rope_type == "default",
        path,
        rope.field("rope_type"),
        f"'{rope_config.rope_type}' scaling is not supported",
    )
    theta = rope_config.theta
    partial = rope.get("partial_rotary_factor", float, None) or text.get("partial_rotary_factor", float, 0.25)
    section = rope.data.get("mrope_section", DEFAULT_MROPE_SECTION)
    if not (
        isinstance(section, list)
        and 1 <= len(section) <= 4
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section)
    ):
        raise SmtError(
            f"{path}: {rope.field('mrope_section')}: expected a list of up to 4 non-negative integers, "
            f"found {section!r}"
        )
    num_layers = text.get("num_hidden_layers")
    interval = text.get("full_attention_interval", int, 4)
    layer_types = text.data.get("layer_types")
    if layer_types is None:
        layer_types = [LINEAR if (i + 1) % interval else FULL for i in range(num_layers)]
    if not (isinstance(layer_types, list) and all(t in (LINEAR, FULL) for t in layer_types)):
        raise SmtError(f"{path}: {text.field('layer_types')}: expected a list of '{LINEAR}'/'{FULL}'")
    hidden = text.get("hidden_size")
    heads = text.get("num_attention_heads")
    tie = read_tie([top, text] if top is not text else [top], default=False)  # Qwen3.5: untied
    hp = TextHparams(
        moe=moe,
        vocab_size=text.get("vocab_size"),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads"),
        head_dim=text.get("head_dim", int, hidden // heads),
        intermediate_size=0 if moe else text.get("intermediate_size"),
        rms_norm_eps=text.get("rms_norm_eps", float, 1e-6),
        rope_theta=float(theta),
        partial_rotary_factor=float(partial),
        mrope_section=[int(s) for s in section][:3] + [0] * max(0, 3 - len(section)),
        max_position_embeddings=text.get("max_position_embeddings", int, 32768),
        layer_types=list(layer_types),
        full_attention_interval=interval,
        linear_conv_kernel=text.get("linear_conv_kernel_dim", int, 4),
        linear_key_head_dim=text.get("linear_key_head_dim"),
        linear_value_head_dim=text.get("linear_value_head_dim"),
        linear_num_key_heads=text.get("linear_num_key_heads"),
        linear_num_value_heads=text.get("linear_num_value_heads"),
        tie_embeddings=tie.value,  # what the config says; read_hparams settles it from the weights
        tie_config=tie,
        mtp_layers=int(text.data.get("mtp_num_hidden_layers") or 0),
    )
    if moe:
        hp.num_experts = text.get("num_experts")
        hp.num_experts_per_tok = text.get("num_experts_per_tok")
        hp.moe_intermediate_size = text.get("moe_intermediate_size")
        hp.shared_expert_intermediate_size = text.get("shared_expert_intermediate_size")
    _check(hp, text, rope, path)
    return hp


def _check(hp: TextHparams, text: ConfigReader, rope: ConfigReader, path: Path) -> None:
    require(
        len(hp.layer_types) == hp.num_layers,
        path,
        text.field("layer_types"),
        f"{len(hp.layer_types)} entries, expected num_hidden_layers ({hp.num_layers})",
    )
    require_grouped_heads(hp.num_heads, hp.num_kv_heads, path, text)
    require(
        hp.linear_num_value_heads % hp.linear_num_key_heads == 0,
        path,
        text.field("linear_num_key_heads"),
        f"{hp.linear_num_key_heads} does not divide linear_num_value_heads {hp.linear_num_value_heads}",
    )
    # llama.cpp derives both head sizes from ssm.state_size (qwen35*.cpp: head_v_dim = ssm_d_state).
    require(
        hp.linear_key_head_dim == hp.linear_value_head_dim,
        path,
        text.field("linear_value_head_dim"),
        f"{hp.linear_value_head_dim} != linear_key_head_dim {hp.linear_key_head_dim}; llama.cpp's qwen35 "
        "needs equal key and value head sizes",
    )
    require_silu_without_biases(text, path, "qwen35")
    rd = hp.rope_dim
    require(
        rd % 2 == 0 and 0 < rd <= hp.head_dim,
        path,
        rope.field("partial_rotary_factor"),
        f"head_dim {hp.head_dim} x {hp.partial_rotary_factor} = {rd} rotated dims, must be even and <= head_dim",
    )
    bad = section_mismatch(rd // 2, hp.rope_sections)
    require(
        bad is None,
        path,
        rope.field("mrope_section"),
        f"{hp.mrope_section} cannot be expressed by llama.cpp's interleaved M-RoPE for {rd // 2} rotary pairs "
        f"(rotary pair {bad} would turn by a different position stream than in HF)",
    )
    if hp.moe:
        require(
            hp.num_experts_per_tok <= hp.num_experts,
            path,
            text.field("num_experts_per_tok"),
            f"{hp.num_experts_per_tok} exceeds num_experts {hp.num_experts}",
        )


def hf_rope_streams(n_pairs: int, section: list[int]) -> list[int]:
    """Position stream (0=t, 1=h, 2=w) of each rotary pair in HF's interleaved M-RoPE
    (Qwen3_5TextRotaryEmbedding.recomposition_frequencies)."""
    out = []
    for i in range(n_pairs):
        if i % 3 == 1 and i < 3 * section[1]:
            out.append(1)
        elif i % 3 == 2 and i < 3 * section[2]:
            out.append(2)
        else:
            out.append(0)
    return out


def section_mismatch(n_pairs: int, sections: list[int]) -> int | None:
    """First rotary pair that llama.cpp (the runtime's `imrope_streams`) would rotate by a different stream
    than HF, or None."""
    if sum(sections) <= 0:
        return 0
    hf, gg = hf_rope_streams(n_pairs, sections), imrope_streams(n_pairs, sections).tolist()
    return next((i for i, (a, b) in enumerate(zip(hf, gg)) if a != b), None)


# ---- vision -----------------------------------------------------------------------------------------


def read_vision(
    config: dict, path: Path, text_hidden: int, image_size=None, pre: dict | None = None, pre_path: Path | None = None
) -> VisionHparams:
    """Vision hyperparameters; `image_size` N or (H, W) (default: the learned table's size); `pre` the
    preprocessor_config.json (None: Qwen3.5's defaults)."""
    v = ConfigReader(config, path).sub("vision_config")
    patch = v.get("patch_size", int, 16)
    merge = v.get("spatial_merge_size", int, 2)
    num_pos = v.get("num_position_embeddings", int, 2304)
    side = int(round(num_pos**0.5))
    require(side * side == num_pos, path, v.field("num_position_embeddings"), f"{num_pos} is not a square")
    out_hidden = v.get("out_hidden_size")
    require(
        out_hidden == text_hidden,
        path,
        v.field("out_hidden_size"),
        f"vision output width {out_hidden} must equal the text hidden size {text_hidden}",
    )
    act = v.get("hidden_act", str, "gelu_pytorch_tanh")
    require(
        act in VISION_ACTIVATIONS,
        path,
        v.field("hidden_act"),
        f"'{act}' is not supported (expected one of {', '.join(VISION_ACTIVATIONS)})",
    )
    rope = v.sub("rope_parameters", required=False) or ConfigReader({}, path, v.field("rope_parameters") + ".")
    size = pre["size"] if isinstance(pre, dict) and isinstance(pre.get("size"), dict) else {}
    max_pixels = (
        (pre or {}).get("max_pixels") or size.get("longest_edge") or size.get("max_pixels") or DEFAULT_MAX_PIXELS
    )
    max_pixels = finite(max_pixels, pre_path, "max_pixels", 1, 1 << 40)
    h, w = image_size_hw(
        side * patch if image_size is None else image_size,
        patch * merge,
        patch,
        int(max_pixels) // (patch * patch),
        "the model's processor never makes more (preprocessor_config.json max_pixels)",
    )
    if pre is not None:
        assert pre_path is not None  # given with pre
        pr = ConfigReader(pre, pre_path)
        mean = tuple(
            float(finite(x, pre_path, f"image_mean[{i}]", -1e3, 1e3))
            for i, x in enumerate(pr.get("image_mean", list, list(DEFAULT_IMAGE_MEAN)))
        )
        std = tuple(
            float(finite(x, pre_path, f"image_std[{i}]", -1e3, 1e3))
            for i, x in enumerate(pr.get("image_std", list, list(DEFAULT_IMAGE_STD)))
        )
        rescale = pr.get("rescale_factor", float, 1 / 255)
        require(
            len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std),
            pre_path,
            "image_mean/image_std",
            "expected three values each (std positive)",
        )
        source = pre_path.name
    else:
        mean, std, rescale, source = DEFAULT_IMAGE_MEAN, DEFAULT_IMAGE_STD, 1 / 255, "defaults"
    heads = v.get("num_heads")
    hidden = v.get("hidden_size")
    require(
        hidden % heads == 0 and (hidden // heads) % 4 == 0,
        path,
        v.field("num_heads"),
        f"hidden_size {hidden} / {heads} heads must be a whole head size divisible by 4 (2-D rotary)",
    )
    depth = v.get("depth")
    deepstack = v.data.get("deepstack_visual_indexes") or []
    require(
        isinstance(deepstack, list)
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in deepstack)
        and len(set(deepstack)) == len(deepstack),
        path,
        v.field("deepstack_visual_indexes"),
        f"expected distinct block indexes in 0..{depth - 1}, found {deepstack!r}",
    )
    return VisionHparams(
        depth,
        hidden,
        heads,
        v.get("intermediate_size"),
        patch,
        v.get("temporal_patch_size", int, 2),
        merge,
        out_hidden,
        num_pos,
        rope.get("rope_theta", float, 10000.0),
        VISION_ACTIVATIONS[act],
        (h, w),
        mean,
        std,
        rescale,
        source,
        tuple(deepstack),
    )


# ---- the whole checkpoint -----------------------------------------------------------------------------


def detect_expert_layout(names, prefix: str = TEXT_PREFIX) -> str:
    """ "per_expert" if the checkpoint has `mlp.experts.0.gate_proj.weight` on layer 0 (what transformers 5
    `save_pretrained` writes), else "fused" (the release; a missing tensor is then named by the checks)."""
    return "per_expert" if f"{prefix}layers.0.mlp.experts.0.gate_proj.weight" in set(names) else "fused"


def read_hparams(ckpt, opts, moe: bool) -> Hparams:
    """Everything the plugin needs from the checkpoint's config.json (and preprocessor_config.json)."""
    from smt_convert.runtime.bundle import read_json

    archs = ckpt.config.get("architectures") or []
    hf_class = (
        archs[0] if archs else ("Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration")
    )
    text = read_text_hparams(ckpt.config, ckpt.config_path)
    if text.moe != moe:
        other = "qwen3.5-moe" if text.moe else "qwen3.5"
        raise SmtError(
            f"{ckpt.config_path}: architectures: this is a {'MoE' if text.moe else 'dense'} "
            f"Qwen3.5 checkpoint; use `smt-convert {other}`"
        )
    image_size = opts.image_size if opts is not None else None
    text_only = "ForCausalLM" in hf_class or "vision_config" not in ckpt.config
    if text_only and image_size is not None:
        raise SmtError(f"--image-size: {ckpt.config_path} is a text-only checkpoint (no vision_config)")
    prefix = CAUSAL_PREFIX if "ForCausalLM" in hf_class else TEXT_PREFIX
    vision = image_token = None
    if not text_only:
        pre_path = ckpt.root / "preprocessor_config.json"
        pre = read_json(pre_path) if pre_path.is_file() else None
        vision = read_vision(ckpt.config, ckpt.config_path, text.hidden_size, image_size, pre, pre_path)
        image_token = ConfigReader(ckpt.config, ckpt.config_path).get("image_token_id", int, 248056)
        require(
            image_token < text.vocab_size,
            ckpt.config_path,
            "image_token_id",
            f"{image_token} is outside the vocabulary ({text.vocab_size})",
        )
    experts = detect_expert_layout(ckpt.tensors, prefix) if text.moe else "fused"
    assert text.tie_config is not None  # read_text_hparams sets it
    decision = settle_tie(text.tie_config, ckpt, prefix + "embed_tokens.weight")
    text = replace(text, tie_embeddings=decision.tied, tie_note=decision.note)
    return Hparams(text, vision, prefix, experts, hf_class, image_token)
