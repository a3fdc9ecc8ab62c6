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

from smt_convert.converters.plugin import TextTensor
from smt_convert.converters.validate import ConfigReader, require
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
    """tie_word_embeddings at the top or in text_config; levels that disagree are refused. Absent means
    tied (PaddleOCRVLConfig's default). The released model says false (its lm_head is its own tensor)."""
    levels = {r.field("tie_word_embeddings"): r.data["tie_word_embeddings"]
              for r in ((top, text) if top is not text else (top,))
              if "tie_word_embeddings" in r.data}
    for key, value in levels.items():
        if not isinstance(value, bool):
            raise SmtError(f"{top.path}: {key}: expected true/false, found {value!r}")
    if len(set(levels.values())) > 1:
        shown = ", ".join(f"{k}={str(v).lower()}" for k, v in levels.items())
        raise SmtError(f"{top.path}: tie_word_embeddings: the config levels disagree ({shown})")
    return next(iter(levels.values()), True)


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
    writer.add_name(name)
    writer.add_context_length(hp.max_position_embeddings)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_block_count(hp.num_layers)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.num_heads)
    writer.add_head_count_kv(hp.num_kv_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_sections(hp.rope_sections)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
