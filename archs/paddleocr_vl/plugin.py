"""PaddleOCR-VL: the text side (ERNIE-4.5-0.3B decoder), as llama.cpp's `paddleocr` architecture.

Pre-norm decoder: RMSNorm -> GQA attention (no q/k norm, no biases, M-RoPE) -> residual, RMSNorm -> SwiGLU
MLP -> residual; final RMSNorm and the LM head (tied to the embeddings or not). llama.cpp's graph
(src/models/paddleocr.cpp) is qwen2vl's: `ggml_rope_multi` with rope type MROPE (llm_arch_rope_type:
LLM_ARCH_PADDLEOCR -> LLAMA_ROPE_TYPE_MROPE), i.e. contiguous (not interleaved) sections in NeoX pairing:
rotary pair i turns by the t stream for i < s0, h for i < s0+s1, w for i < s0+s1+s2, which is exactly HF's
`PaddleOCRRotaryEmbedding.recomposition_frequencies` when s0+s1+s2 = head_dim/2.

Checkpoint layouts (`TextLayout`, `detect_text_layout`):
- "native" (the parameter names of transformers 5's `PaddleOCRVLForConditionalGeneration`):
  `model.language_model.*`, `lm_head.weight`;
- "original" (the PaddlePaddle/PaddleOCR-VL release): `model.*`, `lm_head.weight` at the top (vision under
  `visual.*`, projector `mlp_AR.*`); a flat config.json (text fields at the top level plus `vision_config`).
  ERNIE checkpoints written by Paddle may fuse `self_attn.qkv_proj` ([q; k; v] rows) and `mlp.up_gate_proj`
  ([gate; up] rows, gate first despite the name); both are split as upstream's converter does
  (conversion/ernie.py, `Ernie4_5Model.modify_tensors`).

The tensor layout and the config layout are independent: transformers 5.24's `save_pretrained` reverses its
conversion mapping and writes the ORIGINAL tensor names next to a nested (`text_config`) config.json. So
`config_layout(config)` reads the config, `detect_text_layout(tensor names)` picks the tensor names, and
`resolve_tie` settles the LM head from the checkpoint (see there: transformers misreads the released config's
tie flag).

Canonical names are the native ones; `expected_text_tensors` / `text_tensors` take the layout and return
checkpoint names of that layout. The GGUF keeps q/k/v and gate/up separate, as upstream writes them.

Only numpy is imported (no torch): the board-side tools import this too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from smt_convert.converters.plugin import EncoderOutput, TextTensor, register
from smt_convert.converters.validate import ConfigReader, board_grid_notes, read_tie, require
from smt_convert.runtime.positions import guess_grid
from smt_convert.runtime.errors import SmtError

GGUF_ARCH = "paddleocr"
HF_ARCHITECTURES = ("PaddleOCRVLForConditionalGeneration",)

TEXT_PREFIX = "model.language_model."   # native (transformers 5)
ORIGINAL_PREFIX = "model."              # original release
LM_HEAD = "lm_head.weight"

# transformers' defaults (PaddleOCRTextConfig / PaddleOCRRotaryEmbedding); the released model states all of
# them explicitly.
DEFAULT_HEAD_DIM = 128
DEFAULT_ROPE_THETA = 500000.0
DEFAULT_MROPE_SECTION = [16, 24, 24]
DEFAULT_RMS_EPS = 1e-5
DEFAULT_CONTEXT = 131072

NATIVE, ORIGINAL = "native", "original"


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
    mrope_section: list[int]          # (t, h, w) rotary pairs, sum == head_dim / 2
    max_position_embeddings: int
    tie_embeddings: bool

    gguf_arch = GGUF_ARCH

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


# ---- config -------------------------------------------------------------------------------------------


def config_layout(config: dict) -> str:
    """"native" when the config nests `text_config` (transformers 5), "original" when text fields are flat."""
    return NATIVE if isinstance(config.get("text_config"), dict) else ORIGINAL


def read_text_hparams(config: dict, path: Path) -> TextHparams:
    """Text hyperparameters from a PaddleOCR-VL config.json, either layout. Errors name the file and the
    dotted field."""
    top = ConfigReader(config, path)
    text = top.sub("text_config") if config_layout(config) == NATIVE else top
    rope_key = "rope_parameters" if isinstance(text.data.get("rope_parameters"), dict) else "rope_scaling"
    rope = text.sub(rope_key, required=False) or ConfigReader({}, path, text.field(rope_key) + ".")
    rope_type = rope.get("rope_type", str, rope.get("type", str, "default"))
    require(rope_type == "default", path, rope.field("rope_type"),
            f"'{rope_type}' scaling is not supported (llama.cpp's paddleocr uses plain M-RoPE)")
    theta = rope.get("rope_theta", float, None) or text.get("rope_theta", float, DEFAULT_ROPE_THETA)
    section = rope.data.get("mrope_section", DEFAULT_MROPE_SECTION)
    if not (isinstance(section, list) and len(section) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section)):
        raise SmtError(f"{path}: {rope.field('mrope_section')}: expected a list of 3 non-negative integers "
                       f"(t, h, w), found {section!r}")
    heads = text.get("num_attention_heads")
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
        tie_embeddings=_read_tie(top, text),
    )
    _check(hp, text, rope, path)
    return hp


def _read_tie(top: ConfigReader, text: ConfigReader) -> bool:
    """At the top or in text_config; absent means tied (PaddleOCRVLConfig's default). The released model says
    false (its lm_head is its own tensor)."""
    return read_tie([top, text] if top is not text else [top], default=True)


def _check(hp: TextHparams, text: ConfigReader, rope: ConfigReader, path: Path) -> None:
    require(hp.num_heads % hp.num_kv_heads == 0, path, text.field("num_key_value_heads"),
            f"{hp.num_kv_heads} does not divide num_attention_heads {hp.num_heads}")
    require(hp.head_dim % 2 == 0, path, text.field("head_dim"), f"{hp.head_dim} must be even (rotary pairs)")
    require(sum(hp.mrope_section) == hp.head_dim // 2, path, rope.field("mrope_section"),
            f"{hp.mrope_section} sums to {sum(hp.mrope_section)}, expected head_dim/2 = {hp.head_dim // 2} "
            "(every rotary pair must belong to a t/h/w section, in HF and in llama.cpp)")
    act = text.data.get("hidden_act", "silu")
    require(act == "silu", path, text.field("hidden_act"), f"'{act}' is not supported (llama.cpp's paddleocr uses silu)")
    require(not text.data.get("use_bias", False), path, text.field("use_bias"),
            "projection biases are not supported (llama.cpp's paddleocr has no FFN biases)")
    window = text.data.get("sliding_window")
    require(window is None, path, text.field("sliding_window"), "sliding-window attention is not supported")


# ---- checkpoint layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextLayout:
    kind: str = NATIVE            # "native" | "original"
    fused_qkv: bool = False       # self_attn.qkv_proj instead of q/k/v_proj
    fused_ffn: bool = False       # mlp.up_gate_proj instead of gate/up_proj

    @property
    def prefix(self) -> str:
        return TEXT_PREFIX if self.kind == NATIVE else ORIGINAL_PREFIX

    def to_ckpt(self, canonical: str) -> str:
        """Canonical (native) text-tensor name -> this layout's name."""
        if canonical.startswith(TEXT_PREFIX):
            return self.prefix + canonical[len(TEXT_PREFIX):]
        return canonical


NATIVE_LAYOUT = TextLayout(NATIVE)
ORIGINAL_LAYOUT = TextLayout(ORIGINAL)


def detect_text_layout(names: Iterable[str]) -> TextLayout:
    """Layout from the checkpoint's tensor names: native if any `model.language_model.*`, else original;
    fused attention / FFN if layer 0 has `qkv_proj` / `up_gate_proj` (checked per layout)."""
    names = set(names)
    kind = NATIVE if any(n.startswith(TEXT_PREFIX) for n in names) else ORIGINAL
    p = (TEXT_PREFIX if kind == NATIVE else ORIGINAL_PREFIX) + "layers.0."
    return TextLayout(kind, p + "self_attn.qkv_proj.weight" in names, p + "mlp.up_gate_proj.weight" in names)


def expected_text_tensors(hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT) -> dict[str, tuple[int, ...]]:
    """Checkpoint name (in `layout`) -> shape for every text tensor the model uses. For the native layout
    these are the canonical names (the parameters of PaddleOCRVLForConditionalGeneration's text part)."""
    H, F = hp.hidden_size, hp.intermediate_size
    p = layout.prefix
    shapes = {p + "embed_tokens.weight": (hp.vocab_size, H), p + "norm.weight": (H,)}
    for i in range(hp.num_layers):
        layer = {"input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,),
                 "self_attn.o_proj.weight": (H, hp.q_dim), "mlp.down_proj.weight": (H, F)}
        if layout.fused_qkv:
            layer["self_attn.qkv_proj.weight"] = (hp.q_dim + 2 * hp.kv_dim, H)
        else:
            layer.update({"self_attn.q_proj.weight": (hp.q_dim, H), "self_attn.k_proj.weight": (hp.kv_dim, H),
                          "self_attn.v_proj.weight": (hp.kv_dim, H)})
        if layout.fused_ffn:
            layer["mlp.up_gate_proj.weight"] = (2 * F, H)
        else:
            layer.update({"mlp.gate_proj.weight": (F, H), "mlp.up_proj.weight": (F, H)})
        shapes.update({f"{p}layers.{i}.{k}": v for k, v in layer.items()})
    if not hp.tie_embeddings:
        shapes[LM_HEAD] = (hp.vocab_size, H)
    return shapes


def resolve_tie(hp: TextHparams, names: Iterable[str], load: Callable[[str], np.ndarray]) -> TextHparams:
    """The tie setting transformers really loads, from the checkpoint: a config that says tied but a
    checkpoint whose `lm_head.weight` differs from the embedding is untied (transformers 5 then keeps both and
    only warns; upstream llama.cpp writes every tensor present, so `output.weight` too). This is the common
    case: transformers 5.24 reads the released flat config (tie_word_embeddings false) as tied (its BC rule
    copies text_config's default true) and `save_pretrained` writes tie true with the distinct lm_head.
    A config that says untied stays untied (a missing lm_head is then a missing-tensor error)."""
    from dataclasses import replace

    names = set(names)
    if not hp.tie_embeddings or LM_HEAD not in names:
        return hp
    embed = None
    for prefix in (TEXT_PREFIX, ORIGINAL_PREFIX):
        if prefix + "embed_tokens.weight" in names:
            embed = load(prefix + "embed_tokens.weight")
            break
    if embed is not None and np.array_equal(load(LM_HEAD), embed):
        return hp
    return replace(hp, tie_embeddings=False)


def ignored_text_tensors(hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT) -> dict[str, str]:
    """Text-side checkpoint tensors deliberately not converted (glob -> reason). Vision / projector tensors
    are the vision side's to list."""
    ignored = {}
    if hp.tie_embeddings:
        ignored[LM_HEAD] = "tied to the token embeddings (tie_word_embeddings)"
    return ignored


# ---- transforms (numpy, exactly as upstream) ---------------------------------------------------------------


def split_qkv(hp: TextHparams, part: str) -> Callable[[np.ndarray], np.ndarray]:
    """One of q/k/v from a fused `qkv_proj` [q_dim + 2*kv_dim, H] (rows [q; k; v], as upstream splits it)."""
    start = {"q": 0, "k": hp.q_dim, "v": hp.q_dim + hp.kv_dim}[part]
    size = hp.q_dim if part == "q" else hp.kv_dim
    return lambda w: w[start:start + size]


def split_up_gate(part: str) -> Callable[[np.ndarray], np.ndarray]:
    """gate (first half) or up (second half) of a fused `up_gate_proj` [2F, H], as upstream splits it."""
    return (lambda w: w[: w.shape[0] // 2]) if part == "gate" else (lambda w: w[w.shape[0] // 2:])


def text_tensors(
    hp: TextHparams,
    layout: TextLayout = NATIVE_LAYOUT,
    to_ckpt: Callable[[str], str] = lambda name: name,
) -> list[TextTensor]:
    """Every GGUF tensor of the paddleocr text model: name, checkpoint sources, shape, transform.
    Sources are `to_ckpt(name in layout)`; no tensor needs a numeric change, only fused ones are split.
    Tied embeddings: no `output.weight` (llama.cpp then duplicates `token_embd.weight`, as upstream relies on)."""
    H, F = hp.hidden_size, hp.intermediate_size
    p = layout.prefix
    out: list[TextTensor] = []

    def add(gguf_name, source, shape, transform=None):
        out.append(TextTensor(gguf_name, (to_ckpt(source),), tuple(shape), transform))

    add("token_embd.weight", p + "embed_tokens.weight", (hp.vocab_size, H))
    for i in range(hp.num_layers):
        s, b = f"{p}layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", s + "input_layernorm.weight", (H,))
        for part, rows in (("q", hp.q_dim), ("k", hp.kv_dim), ("v", hp.kv_dim)):
            if layout.fused_qkv:
                add(b + f"attn_{part}.weight", s + "self_attn.qkv_proj.weight", (rows, H), split_qkv(hp, part))
            else:
                add(b + f"attn_{part}.weight", s + f"self_attn.{part}_proj.weight", (rows, H))
        add(b + "attn_output.weight", s + "self_attn.o_proj.weight", (H, hp.q_dim))
        add(b + "ffn_norm.weight", s + "post_attention_layernorm.weight", (H,))
        for part in ("gate", "up"):
            if layout.fused_ffn:
                add(b + f"ffn_{part}.weight", s + "mlp.up_gate_proj.weight", (F, H), split_up_gate(part))
            else:
                add(b + f"ffn_{part}.weight", s + f"mlp.{part}_proj.weight", (F, H))
        add(b + "ffn_down.weight", s + "mlp.down_proj.weight", (H, F))
    add("output_norm.weight", p + "norm.weight", (H,))
    if not hp.tie_embeddings:
        add("output.weight", LM_HEAD, (hp.vocab_size, H))
    return out


def text_tensor_types(tensors: list[TextTensor], outtype: str) -> dict:
    """ggml type per GGUF tensor: the shared rule (`converters.text_gguf.choose_types`); nothing is forced."""
    from smt_convert.converters.text_gguf import choose_types

    return dict(choose_types(tensors, outtype))


# ---- metadata -----------------------------------------------------------------------------------------------


def write_text_metadata(writer, hp: TextHparams, name: str) -> None:
    """The paddleocr keys llama.cpp's loader reads (llama-model.cpp generic hparams + ernie4-5.cpp
    `load_arch_hparams`), with the values upstream's converter writes (TextModel.set_gguf_parameters).
    key/value_length are always written: ERNIE-4.5-0.3B's head_dim (128) is not hidden/heads (64).
    No `rope.dimension_count`: upstream writes none and llama.cpp defaults n_rot to key_length, which its
    graph asserts anyway. Tied embeddings need no key: a missing `output.weight` means tied."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    write_decoder_metadata(writer, hp, name)


# ---- the plugin ---------------------------------------------------------------------------------------

VISION = "model.visual.vision_model."
PROJECTOR = "model.projector."
PROMPT = "<|begin_of_sentence|>User: <__media__>{prompt}\nAssistant:\n"
# Canonical (GGUF) name patterns -> the HF parameter they come from, for loading the torch reference.
GGUF_TO_HF = {
    "token_embd.weight": TEXT_PREFIX + "embed_tokens.weight", "output_norm.weight": TEXT_PREFIX + "norm.weight",
    "output.weight": LM_HEAD, "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
UNUSED_VISION = {
    "*packing_position_embedding*": "position table of Paddle's packed (multi-image) training path; unused here",
    "*vision_model.head.*": "SigLIP pooling head; PaddleOCR-VL feeds the patch rows to the projector instead",
}


def hf_name(gguf_name: str) -> str:
    """HF parameter name of a GGUF text tensor (for loading the torch reference from the same TextTensors)."""
    if gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name]
    _, layer, part, _ = gguf_name.split(".")
    return f"{TEXT_PREFIX}layers.{layer}.{GGUF_TO_HF[part]}.weight"


@dataclass
class VisionHparams:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    merge_size: int
    table_side: int                   # the learned position table is table_side x table_side patches
    image_size: tuple[int, int]       # (height, width) of the static ONNX input
    preprocess: dict                  # the board's vision_preprocess block
    preprocessor_source: str

    @property
    def grid(self) -> tuple[int, int]:
        m = self.patch_size * self.merge_size
        return self.image_size[0] // m, self.image_size[1] // m


@dataclass
class Hparams:
    text: TextHparams
    vision: VisionHparams
    layout: str
    text_layout: TextLayout
    image_token_id: int

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def rope_sections(self) -> list[int]:
        return self.text.rope_sections


def _vision_shapes(v: VisionHparams, text_hidden: int) -> dict[str, tuple[int, ...]]:
    d, f, merged = v.hidden_size, v.intermediate_size, v.hidden_size * v.merge_size ** 2
    shapes = {VISION + "embeddings.patch_embedding.weight": (d, 3, v.patch_size, v.patch_size),
              VISION + "embeddings.patch_embedding.bias": (d,),
              VISION + "embeddings.position_embedding.weight": (v.table_side ** 2, d),
              VISION + "post_layernorm.weight": (d,), VISION + "post_layernorm.bias": (d,),
              PROJECTOR + "pre_norm.weight": (d,), PROJECTOR + "pre_norm.bias": (d,),
              PROJECTOR + "linear_1.weight": (merged, merged), PROJECTOR + "linear_1.bias": (merged,),
              PROJECTOR + "linear_2.weight": (text_hidden, merged), PROJECTOR + "linear_2.bias": (text_hidden,)}
    layer = {"layer_norm1.weight": (d,), "layer_norm1.bias": (d,), "layer_norm2.weight": (d,),
             "layer_norm2.bias": (d,), "mlp.fc1.weight": (f, d), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (d, f),
             "mlp.fc2.bias": (d,)}
    for proj in ("q", "k", "v", "out"):
        layer.update({f"self_attn.{proj}_proj.weight": (d, d), f"self_attn.{proj}_proj.bias": (d,)})
    for i in range(v.num_layers):
        shapes.update({f"{VISION}encoder.layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def _vision_to_ckpt(layout: str):
    """Canonical vision/projector name -> the checkpoint's (original: visual.*, mlp_AR.*)."""
    if layout == NATIVE:
        return lambda name: name

    def original(name: str) -> str:
        if name.startswith(PROJECTOR):
            return "mlp_AR." + name[len(PROJECTOR):]
        return name[len("model."):]

    return original


@register
class PaddleOCRVLPlugin:
    name = "paddleocr-vl"
    hf_architectures = HF_ARCHITECTURES
    summary = "PaddleOCR-VL (0.9B): ERNIE-4.5 text + SigLIP-style vision encoder with the mlp_AR projector"
    text_arch = GGUF_ARCH
    modality = "image"
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF paddleocr, SentencePiece vocabulary embedded)",
        "<stem>-vision-<size>.onnx (host-normalised [1,3,H,W] -> [(H/28)*(W/28), hidden])",
        "config.json (with vision_preprocess), tokenizer files, golden/, manifest.json",
    ]
    vocab_pre = None                 # SentencePiece: tokenizer model "llama", no pre-tokenizer
    eot_token = None
    eos_token = "</s>"
    bos_token = None
    chat_template = None

    @staticmethod
    def matches(config: dict) -> bool:
        return "paddleocr" in str(config.get("model_type", "")).lower()

    def default_stem(self, hp: Hparams) -> str:
        return "PaddleOCR-VL"

    # ---- checkpoint ---------------------------------------------------------------------------

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        from smt_convert.runtime.bundle import read_json

        path = ckpt.config_path
        text = read_text_hparams(ckpt.config, path)
        text = resolve_tie(text, ckpt.tensors, lambda n: ckpt.load(n).float().numpy())
        layout = config_layout(ckpt.config)
        top = ConfigReader(ckpt.config, path)
        v = top.sub("vision_config")
        patch = v.get("patch_size", int, 14)
        merge = v.get("spatial_merge_size", int, 2)
        pre_path = ckpt.root / "preprocessor_config.json"
        pre = read_json(pre_path) if pre_path.is_file() else {}
        source = pre_path.name if pre else "transformers defaults"
        vcfg = type("VisionConfig", (), {"patch_size": patch, "spatial_merge_size": merge})()
        from smt_convert.archs.paddleocr_vl.vision_torch import check_image_size, default_image_size, vision_preprocess

        size = opts.image_size if opts is not None and opts.image_size is not None else default_image_size(pre, vcfg)
        h, w = check_image_size(size, vcfg)
        vision = VisionHparams(v.get("hidden_size"), v.get("intermediate_size"), v.get("num_hidden_layers"),
                               v.get("num_attention_heads"), patch, merge,
                               v.get("image_size", int, 384) // patch, (h, w), vision_preprocess(pre), source)
        image_token = top.get("image_token_id", int, 100295)
        require(image_token < text.vocab_size, path, "image_token_id",
                f"{image_token} is outside the vocabulary ({text.vocab_size})")
        hp = Hparams(text, vision, layout, detect_text_layout(ckpt.tensors), image_token)
        proj_out = ckpt.tensors.get(_vision_to_ckpt(layout)(PROJECTOR + "linear_2.weight"))
        if proj_out is not None and proj_out.shape[0] != text.hidden_size:
            raise SmtError(f"{proj_out.file}: tensor {proj_out.name}: projector output width {proj_out.shape[0]} "
                           f"must equal the text hidden size {text.hidden_size} ({path.name}: hidden_size)")
        return hp

    def canonical_to_checkpoint(self, hp: Hparams):
        vision = _vision_to_ckpt(hp.layout)
        return lambda name: vision(name) if name.startswith(("model.visual.", PROJECTOR)) else name

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
        # text names are already in the checkpoint's layout; vision ones are canonical (mapped by convert)
        shapes = {}
        for name, shape in expected_text_tensors(hp.text, hp.text_layout).items():
            shapes[name] = shape
        shapes.update(_vision_shapes(hp.vision, hp.text.hidden_size))
        return shapes

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        return {**ignored_text_tensors(hp.text, hp.text_layout), **UNUSED_VISION}

    def check_weights(self, ckpt, hp: Hparams) -> None:
        """Tie and projector width are settled in read_hparams; vocabulary rows are checked by shape."""

    # ---- text GGUF -----------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams) -> list[TextTensor]:
        return text_tensors(hp.text, hp.text_layout)

    def text_types(self, tensors, outtype: str) -> dict:
        return text_tensor_types(tensors, outtype)

    def text_metadata(self, writer, hp: Hparams, name: str) -> None:
        write_text_metadata(writer, hp.text, name)

    # ---- encoder -------------------------------------------------------------------------------

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        v = hp.vision
        h, w = v.image_size
        ny, nx = v.grid
        size = f"{h}" if h == w else f"{h}x{w}"
        params = sum(int(np.prod(s)) for s in _vision_shapes(v, hp.text.hidden_size).values())
        return [EncoderOutput("vision", f"{stem}-vision-{size}.onnx", params,
                              [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}],
                              [{"name": "image_embeds", "shape": [ny * nx, hp.text.hidden_size], "dtype": "float32"}])]

    def hf_config(self, hp: Hparams):
        from transformers import PaddleOCRVLConfig

        t, v = hp.text, hp.vision
        text = dict(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                    num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                    head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
                    use_bias=False, hidden_act="silu", tie_word_embeddings=t.tie_embeddings,
                    rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                     "mrope_section": list(t.mrope_section)})
        vision = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
                      num_attention_heads=v.num_heads, patch_size=v.patch_size, spatial_merge_size=v.merge_size,
                      image_size=v.table_side * v.patch_size)
        return PaddleOCRVLConfig(text_config=text, vision_config=vision, tie_word_embeddings=t.tie_embeddings,
                                 image_token_id=hp.image_token_id)

    def build_torch_model(self, ckpt, hp: Hparams, parts: str = "all"):
        """PaddleOCRVLForConditionalGeneration with this checkpoint's weights (either layout, fused or split
        text tensors: the text weights come through the same TextTensors as the GGUF, so fused tensors are
        split once). Every parameter must be loaded; nothing random survives."""
        import torch
        from transformers import PaddleOCRVLForConditionalGeneration
        from transformers.initialization import no_init_weights

        with no_init_weights():
            model = PaddleOCRVLForConditionalGeneration(self.hf_config(hp))
        model.tie_weights()
        model.eval()
        params = dict(model.named_parameters())
        load = lambda name: ckpt.load(name).to(torch.float32).numpy()  # noqa: E731
        with torch.no_grad():
            for t in self.text_tensors(hp):
                params.pop(hf_name(t.name)).copy_(torch.from_numpy(np.ascontiguousarray(t.build(load))))
            to_ckpt = _vision_to_ckpt(hp.layout)
            for name in _vision_shapes(hp.vision, hp.text.hidden_size):
                params.pop(name).copy_(ckpt.load(to_ckpt(name)).to(torch.float32))
        if params:
            raise SmtError(f"{ckpt.root}: tensor {next(iter(params))}: the model needs it but it was not loaded")
        return model

    def encoder_specs(self, model, hp: Hparams):
        from smt_convert.archs.paddleocr_vl.vision_torch import vision_export_spec

        p = hp.vision.preprocess
        return [vision_export_spec(model.model.visual, model.model.projector, hp.vision.image_size,
                                   p["rescale_factor"], p["image_mean"], p["image_std"])]

    # ---- bundle --------------------------------------------------------------------------------

    def board_config(self, hp: Hparams, files: dict[str, str]) -> dict:
        h, w = hp.vision.image_size
        size = {"input_size": h} if h == w else {"input_width": w, "input_height": h}
        return {"architectures": ["PaddleOCRVLForConditionalGeneration"],
                "vision_model": {"model_path": files["vision"], **size},
                "vision_preprocess": dict(hp.vision.preprocess),
                "text_model": {"hidden_size": hp.text.hidden_size, "model_path": files["text"]}}

    def prompt_record(self, hp: Hparams) -> dict:
        return {"template": PROMPT, "template_fields": {"prompt": "OCR:"}, "media_marker": "<__media__>",
                "media_start": "<|IMAGE_START|>", "media_end": "<|IMAGE_END|>",
                "media_placeholder": "<|IMAGE_PLACEHOLDER|>", "media_placeholder_id": hp.image_token_id,
                "positions": "mrope", "stop_tokens": ["</s>", "<|end_of_sentence|>"]}

    def preprocessing(self, hp: Hparams) -> dict:
        v = hp.vision
        ny, nx = v.grid
        board_guess = guess_grid(ny * nx)
        return {"host": "decode RGB, antialiased bilinear resize to exactly HxW, x*rescale_factor, (x-mean)/std",
                "image_size": list(v.image_size), "grid": [ny, nx], "vision_preprocess": dict(v.preprocess),
                "from": v.preprocessor_source, "board_grid_guess": list(board_guess),
                "board_guess_matches": list(board_guess) == [ny, nx]}

    def plan_notes(self, hp: Hparams) -> list[str]:
        ny, nx = hp.vision.grid
        notes = []
        notes += board_grid_notes(ny, nx)
        if hp.vision.preprocessor_source != "preprocessor_config.json":
            notes.append("preprocessor_config.json not found: vision_preprocess uses transformers' defaults")
        return notes

    def golden_media(self, hp: Hparams) -> np.ndarray:
        from smt_convert.archs.paddleocr_vl.vision_torch import raw_check_images

        h, w = hp.vision.image_size
        return raw_check_images(int(h * 1.25), int(w * 1.1))["document"]

    def golden_fields(self) -> dict:
        return {"prompt": "OCR:"}

    def hparams_record(self, hp: Hparams) -> dict:
        from dataclasses import asdict

        return asdict(hp)

    # ---- reference -----------------------------------------------------------------------------

    def reference_outputs(self, model, hp: Hparams, image, pixels, placeholder_ids, max_new_tokens, stop_ids) -> dict:
        """HF on the same prompt: the image resized exactly as the runtime does (uint8 H x W), then HF's own
        PIL image processor (resize off) normalises and patchifies it."""
        import torch
        from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

        from smt_convert.runtime.image import resize_rgb

        h, w = hp.vision.image_size
        resized = resize_rgb(image, w, h)[0].transpose(1, 2, 0).astype(np.uint8)
        p = hp.vision.preprocess
        proc = PaddleOCRVLImageProcessorPil(do_resize=False, rescale_factor=p["rescale_factor"],
                                            image_mean=p["image_mean"], image_std=p["image_std"])
        batch = proc(images=[resized], return_tensors="pt")
        ids = torch.tensor([placeholder_ids])
        kwargs = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
        with torch.no_grad():
            feats = model.model.get_image_features(**kwargs)
        kwargs["mm_token_type_ids"] = (ids == hp.image_token_id).long()
        with torch.no_grad():
            feats = getattr(feats, "pooler_output", feats)
            feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
            logits = model(input_ids=ids, **kwargs).logits[0].float().numpy()
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0], **kwargs)
        tokens = gen[0, ids.shape[1]:].tolist()
        while tokens and tokens[-1] in stop_ids:
            tokens.pop()
        return {"encoder_same_features": feats.float().numpy(), "logits": logits, "tokens": tokens}

