"""PaddleOCR-VL hyperparameters: read from config.json (either layout) and preprocessor_config.json, validated.

Two config layouts: the original release is flat (text fields at the top level plus `vision_config`),
transformers 5 nests `text_config`. The tensor layout is independent of the config layout (transformers 5.24's
`save_pretrained` writes the ORIGINAL tensor names next to a nested config), so `config_layout` reads the
config and `detect_text_layout` the tensor names.

Plain Python only (no numpy, no torch): the board-side tools import this too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from smt_convert.runtime.documents import finite
from smt_convert.converters.validate import (
    ConfigReader,
    TieConfig,
    image_size_hw,
    read_rope,
    read_tie,
    require,
    require_grouped_heads,
)
from smt_convert.runtime.errors import SmtError

GGUF_ARCH = "paddleocr"
HF_ARCHITECTURES = ("PaddleOCRVLForConditionalGeneration",)
NATIVE, ORIGINAL = "native", "original"

TEXT_PREFIX = "model.language_model."  # native (transformers 5)
ORIGINAL_PREFIX = "model."  # original release
LM_HEAD = "lm_head.weight"
VISION = "model.visual.vision_model."  # canonical vision / projector prefixes
PROJECTOR = "model.projector."

# transformers' defaults (PaddleOCRTextConfig / PaddleOCRVisionConfig); the released model states them.
DEFAULT_HEAD_DIM = 128
DEFAULT_ROPE_THETA = 500000.0
DEFAULT_MROPE_SECTION = [16, 24, 24]
DEFAULT_RMS_EPS = 1e-5
DEFAULT_CONTEXT = 131072
DEFAULT_VISION_ROPE_THETA = 10000.0
DEFAULT_VISION_LN_EPS = 1e-6
DEFAULT_VISION_ACT = "gelu_pytorch_tanh"
VISION_ACTS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}  # hidden_act -> onnx_graph.gelu approximation

# Released PaddlePaddle/PaddleOCR-VL preprocessor_config.json: rescale 1/255, mean = std = 0.5,
# min_pixels 147384 (= 188 * 28^2), max_pixels 2822400 (= 1680^2), patch 14, merge 2, temporal 1.
PADDLEOCR_RESCALE_FACTOR = 1.0 / 255.0
# What HF's PaddleOCRVLImageProcessor uses when preprocessor_config.json lacks a key (class defaults).
HF_DEFAULT_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN
HF_DEFAULT_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)  # OPENAI_CLIP_STD
HF_DEFAULT_MIN_PIXELS = 384 * 384
HF_DEFAULT_MAX_PIXELS = 1536 * 1536


@dataclass
class TextHparams:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]  # (t, h, w) rotary pairs, sum == head_dim / 2
    max_position_embeddings: int
    tie_embeddings: bool
    tie_config: TieConfig | None = field(default=None, compare=False)  # what config.json says
    tie_note: str | None = field(default=None, compare=False)  # why, when the weights decided it

    @property
    def rope_sections(self) -> list[int]:
        """`paddleocr.rope.dimension_sections`: the three sections plus 0 for the unused 4th stream."""
        return (list(self.mrope_section) + [0, 0, 0, 0])[:4]

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass
class VisionHparams:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    merge_size: int
    table_side: int  # the learned position table is table_side x table_side patches
    layer_norm_eps: float
    hidden_act: str  # a key of VISION_ACTS
    rope_theta: float  # the 2-D (axial) rotary base
    image_size: tuple[int, int]  # (height, width) of the static ONNX input
    preprocess: dict  # the board's vision_preprocess block
    preprocessor_source: str

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of 14x14 patches the encoder sees."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of merged tokens the decoder sees."""
        m = self.patch_size * self.merge_size
        return self.image_size[0] // m, self.image_size[1] // m

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextLayout:
    kind: str = NATIVE  # "native" | "original"
    fused_qkv: bool = False  # self_attn.qkv_proj instead of q/k/v_proj
    fused_ffn: bool = False  # mlp.up_gate_proj instead of gate/up_proj

    @property
    def prefix(self) -> str:
        return TEXT_PREFIX if self.kind == NATIVE else ORIGINAL_PREFIX


NATIVE_LAYOUT = TextLayout(NATIVE)
ORIGINAL_LAYOUT = TextLayout(ORIGINAL)


@dataclass
class Hparams:
    text: TextHparams
    vision: VisionHparams
    layout: str  # vision/projector tensor names: "native" (model.visual.*) or "original"
    text_layout: TextLayout
    image_token_id: int
    config_layout: str = NATIVE  # config.json nested (transformers 5) or flat (the release)

    @property
    def layout_description(self) -> str:
        """For the manifest: transformers' `save_pretrained` pairs a nested config with the original names."""
        if self.layout == self.text_layout.kind == self.config_layout:
            return self.layout
        config = "nested config" if self.config_layout == NATIVE else "flat config"
        if self.layout == self.text_layout.kind:
            return f"{config}, {self.layout} tensor names"
        return f"{config}, {self.text_layout.kind} text / {self.layout} vision tensor names"


# ---- text config ---------------------------------------------------------------------------------------


def config_layout(config: dict) -> str:
    """ "native" when the config nests `text_config` (transformers 5), "original" when text fields are flat."""
    return NATIVE if isinstance(config.get("text_config"), dict) else ORIGINAL


def read_text_hparams(config: dict, path: Path) -> TextHparams:
    """Text hyperparameters from a PaddleOCR-VL config.json, either layout. Errors name the file and field."""
    top = ConfigReader(config, path)
    text = top.sub("text_config") if config_layout(config) == NATIVE else top
    rope_config = read_rope(text, default_theta=DEFAULT_ROPE_THETA)
    rope = rope_config.block
    require(
        rope_config.rope_type == "default",
        path,
        rope.field("rope_type"),
        f"'{rope_config.rope_type}' scaling is not supported (llama.cpp's paddleocr uses plain M-RoPE)",
    )
    theta = rope_config.theta
    section = rope.data.get("mrope_section", DEFAULT_MROPE_SECTION)
    if not (
        isinstance(section, list)
        and len(section) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section)
    ):
        raise SmtError(
            f"{path}: {rope.field('mrope_section')}: expected a list of 3 non-negative integers "
            f"(t, h, w), found {section!r}"
        )
    heads = text.get("num_attention_heads")
    tie = read_tie([top, text] if top is not text else [top], default=True)
    hp = TextHparams(
        vocab_size=text.get("vocab_size"),
        hidden_size=text.get("hidden_size"),
        num_layers=text.get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads", int, heads),
        head_dim=text.get("head_dim", int, DEFAULT_HEAD_DIM),
        intermediate_size=text.get("intermediate_size"),
        rms_norm_eps=text.get("rms_norm_eps", float, DEFAULT_RMS_EPS),
        rope_theta=float(theta),
        mrope_section=[int(s) for s in section],
        max_position_embeddings=text.get("max_position_embeddings", int, DEFAULT_CONTEXT),
        tie_embeddings=tie.value,  # what the config says; the plugin settles it from the weights
        tie_config=tie,
    )
    _check_text(hp, text, rope, path)
    return hp


def _check_text(hp: TextHparams, text: ConfigReader, rope: ConfigReader, path: Path) -> None:
    require_grouped_heads(hp.num_heads, hp.num_kv_heads, path, text)
    require(hp.head_dim % 2 == 0, path, text.field("head_dim"), f"{hp.head_dim} must be even (rotary pairs)")
    require(
        sum(hp.mrope_section) == hp.head_dim // 2,
        path,
        rope.field("mrope_section"),
        f"{hp.mrope_section} sums to {sum(hp.mrope_section)}, expected head_dim/2 = {hp.head_dim // 2} "
        "(every rotary pair must belong to a t/h/w section, in HF and in llama.cpp)",
    )
    act = text.data.get("hidden_act", "silu")
    require(
        act == "silu", path, text.field("hidden_act"), f"'{act}' is not supported (llama.cpp's paddleocr uses silu)"
    )
    require(
        not text.data.get("use_bias", False),
        path,
        text.field("use_bias"),
        "projection biases are not supported (llama.cpp's paddleocr has no FFN biases)",
    )
    window = text.data.get("sliding_window")
    require(window is None, path, text.field("sliding_window"), "sliding-window attention is not supported")


def detect_text_layout(names: Iterable[str]) -> TextLayout:
    """Layout from the checkpoint's tensor names: native if any `model.language_model.*`, else original;
    fused attention / FFN if layer 0 has `qkv_proj` / `up_gate_proj` (checked per layout)."""
    names = set(names)
    kind = NATIVE if any(n.startswith(TEXT_PREFIX) for n in names) else ORIGINAL
    p = (TEXT_PREFIX if kind == NATIVE else ORIGINAL_PREFIX) + "layers.0."
    return TextLayout(kind, p + "self_attn.qkv_proj.weight" in names, p + "mlp.up_gate_proj.weight" in names)


def detect_vision_layout(names: Iterable[str]) -> str:
    """Vision/projector names from the tensors: native `model.visual.*` or the release's `visual.*`/`mlp_AR.*`
    (which transformers 5.24's `save_pretrained` writes back, whatever the config layout)."""
    return NATIVE if any(n.startswith("model.visual.") or n.startswith(PROJECTOR) for n in names) else ORIGINAL


def vision_to_ckpt(layout: str):
    """Canonical vision/projector name -> the checkpoint's (original: visual.*, mlp_AR.*); others unchanged."""
    if layout == NATIVE:
        return lambda name: name

    def original(name: str) -> str:
        if name.startswith(PROJECTOR):
            return "mlp_AR." + name[len(PROJECTOR) :]
        if name.startswith("model.visual."):
            return name[len("model.") :]
        return name

    return original


# ---- vision config and preprocessing -----------------------------------------------------------------------


def pixel_limits(pre: dict | None) -> tuple[int, int]:
    """(min_pixels, max_pixels) from preprocessor_config.json: top-level `min_pixels`/`max_pixels` (the released
    file), else `size.shortest_edge`/`size.longest_edge` (transformers 5 save format) or `size.min_pixels`/
    `size.max_pixels`, else HF's class defaults 384^2 / 1536^2."""
    pre = pre or {}
    size = pre.get("size") or {}
    lo = pre.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
    hi = pre.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
    lo = int(lo) if lo is not None else HF_DEFAULT_MIN_PIXELS
    hi = int(hi) if hi is not None else HF_DEFAULT_MAX_PIXELS
    if lo <= 0 or hi < lo:
        raise SmtError(f"preprocessor_config.json: min_pixels/max_pixels: expected 0 < min <= max, got {lo} / {hi}")
    return lo, hi


def vision_preprocess(pre: dict | None) -> dict:
    """The board's `vision_preprocess` block: rescale_factor, image_mean, image_std (HF class defaults if absent)."""
    pre = pre or {}
    rescale = pre.get("rescale_factor", PADDLEOCR_RESCALE_FACTOR)
    mean = pre.get("image_mean", HF_DEFAULT_IMAGE_MEAN)
    std = pre.get("image_std", HF_DEFAULT_IMAGE_STD)
    mean = [mean] * 3 if isinstance(mean, (int, float)) else mean
    std = [std] * 3 if isinstance(std, (int, float)) else std
    where = "preprocessor_config.json"
    if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
        raise SmtError(f"{where}: image_mean/image_std: expected a number or a list of 3, got {mean!r} / {std!r}")
    rescale = finite(rescale, where, "rescale_factor", 1e-6, 1.0)
    mean = [float(finite(v, where, f"image_mean[{i}]", -1e3, 1e3)) for i, v in enumerate(mean)]
    std = [float(finite(v, where, f"image_std[{i}]", -1e3, 1e3)) for i, v in enumerate(std)]
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise SmtError(
            f"preprocessor_config.json: image_mean/image_std: expected 3 values each, std != 0, got {mean} / {std}"
        )
    return {"rescale_factor": float(rescale), "image_mean": mean, "image_std": std}


def default_image_size(pre: dict | None, multiple: int) -> int:
    """Square side of the default static input: 812 for the released PaddleOCR-VL (29 x 29 = 841 image tokens).

    - square, because the board lays an image's N tokens out as the closest-to-square factor pair with
      ny <= nx: only then are the board's M-RoPE positions HF's for every image;
    - its pixel count is the geometric mean of min_pixels and max_pixels (sqrt(147384 * 2822400) = 645k px,
      side 803 -> nearest multiple of 28 = 812), the middle, on a log scale, of the pixel counts HF's
      smart_resize feeds the model: well above the ~384x384 small layout crops get, well below 1680x1680
      (14400 patches, whose S^2 attention a board cannot afford);
    - 58 x 58 = 3364 encoder patches, 841 tokens for the decoder. Other sizes: --image-size.
    Then clamped so side^2 stays within [min_pixels, max_pixels].
    """
    lo, hi = pixel_limits(pre)
    side = max(1, round(math.sqrt(math.sqrt(lo * hi)) / multiple)) * multiple
    while side * side < lo:
        side += multiple
    while side * side > hi and side > multiple:
        side -= multiple
    return side


def read_vision_hparams(config: dict, path: Path, pre: dict | None, pre_source: str, image_size=None) -> VisionHparams:
    """Vision hyperparameters, the static input size (`image_size`: N, (H, W) or None for the default) and
    the host preprocessing."""
    v = ConfigReader(config, path).sub("vision_config")
    patch = v.get("patch_size", int, 14)
    merge = v.get("spatial_merge_size", int, 2)
    size = image_size if image_size is not None else default_image_size(pre, patch * merge)
    act = v.get("hidden_act", str, DEFAULT_VISION_ACT)
    require(act in VISION_ACTS, path, v.field("hidden_act"), f"'{act}' is not supported ({', '.join(VISION_ACTS)})")
    rope = v.sub("rope_parameters", required=False) or ConfigReader({}, path, v.field("rope_parameters") + ".")
    rope_type = rope.get("rope_type", str, "axial")
    require(
        rope_type == "axial", path, rope.field("rope_type"), f"'{rope_type}': only the 2-D axial rotary is supported"
    )
    hidden, heads = v.get("hidden_size"), v.get("num_attention_heads")
    require(
        hidden % heads == 0 and (hidden // heads) % 4 == 0,
        path,
        v.field("num_attention_heads"),
        f"hidden_size {hidden} / {heads} heads must be a multiple of 4 (2-D rotary pairs)",
    )
    table = v.get("image_size", int, 384) // patch
    return VisionHparams(
        hidden,
        v.get("intermediate_size"),
        v.get("num_hidden_layers"),
        heads,
        patch,
        merge,
        table,
        v.get("layer_norm_eps", float, DEFAULT_VISION_LN_EPS),
        act,
        rope.get("rope_theta", float, v.get("rope_theta", float, DEFAULT_VISION_ROPE_THETA)),
        image_size_hw(
            size,
            patch * merge,
            patch,
            pixel_limits(pre)[1] // (patch * patch),
            "the model's processor never makes more (preprocessor_config.json max_pixels)",
        ),
        vision_preprocess(pre),
        pre_source,
    )
