"""PaddleOCR-VL's text side (ERNIE-4.5-0.3B decoder) as llama.cpp's `paddleocr` architecture: tensors and metadata.

Pre-norm decoder: RMSNorm -> GQA attention (no q/k norm, no biases, M-RoPE) -> residual, RMSNorm -> SwiGLU
MLP -> residual; final RMSNorm and the LM head (tied to the embeddings or not). llama.cpp's graph
(src/models/paddleocr.cpp) is qwen2vl's: `ggml_rope_multi` with rope type MROPE, i.e. contiguous (not
interleaved) sections in NeoX pairing, which is exactly HF's `PaddleOCRRotaryEmbedding.recomposition_frequencies`
when s0+s1+s2 = head_dim/2.

Layouts: "native" `model.language_model.*`, "original" `model.*` (both with `lm_head.weight` at the top).
ERNIE checkpoints written by Paddle may fuse `self_attn.qkv_proj` ([q; k; v] rows) and `mlp.up_gate_proj`
([gate; up] rows, gate first despite the name); both are split as upstream's converter does
(conversion/ernie.py, `Ernie4_5Model.modify_tensors`). The GGUF keeps q/k/v and gate/up separate.

Only numpy is imported (no torch): the board-side tools import this too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from smt_convert.archs.paddleocr_vl.config import (LM_HEAD, NATIVE_LAYOUT, TEXT_PREFIX, TextHparams,
                                                   TextLayout)
from smt_convert.converters.plugin import TextTensor

# GGUF name patterns -> the canonical (native HF) parameter they come from (the reference loads through these).
GGUF_TO_HF = {
    "token_embd.weight": TEXT_PREFIX + "embed_tokens.weight", "output_norm.weight": TEXT_PREFIX + "norm.weight",
    "output.weight": LM_HEAD, "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


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


def ignored_text_tensors(hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT) -> dict[str, str]:
    """Text-side checkpoint tensors deliberately not converted (glob -> reason)."""
    return {LM_HEAD: "tied to the token embeddings (tie_word_embeddings)"} if hp.tie_embeddings else {}


def split_qkv(hp: TextHparams, part: str) -> Callable[[np.ndarray], np.ndarray]:
    """One of q/k/v from a fused `qkv_proj` [q_dim + 2*kv_dim, H] (rows [q; k; v], as upstream splits it)."""
    start = {"q": 0, "k": hp.q_dim, "v": hp.q_dim + hp.kv_dim}[part]
    size = hp.q_dim if part == "q" else hp.kv_dim
    return lambda w: w[start:start + size]


def split_up_gate(part: str) -> Callable[[np.ndarray], np.ndarray]:
    """gate (first half) or up (second half) of a fused `up_gate_proj` [2F, H], as upstream splits it."""
    return (lambda w: w[: w.shape[0] // 2]) if part == "gate" else (lambda w: w[w.shape[0] // 2:])


def text_tensors(hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT,
                 to_ckpt: Callable[[str], str] = lambda name: name) -> list[TextTensor]:
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


def hf_name(gguf_name: str) -> str:
    """Canonical HF parameter name of a GGUF text tensor."""
    if gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name]
    _, layer, part, _ = gguf_name.split(".")
    return f"{TEXT_PREFIX}layers.{layer}.{GGUF_TO_HF[part]}.weight"


def canonical_text_sources(hp: TextHparams, layout: TextLayout) -> dict[str, TextTensor]:
    """Canonical (native HF) text parameter name -> the TextTensor that builds it from this checkpoint (fused
    tensors split exactly as for the GGUF); tied embeddings also answer `lm_head.weight`."""
    sources = {hf_name(t.name): t for t in text_tensors(hp, layout)}
    if hp.tie_embeddings:
        sources[LM_HEAD] = sources[TEXT_PREFIX + "embed_tokens.weight"]
    return sources


def write_text_metadata(writer, hp: TextHparams) -> None:
    """The paddleocr keys llama.cpp's loader reads, with the values upstream's converter writes. key/value_length
    are always written: ERNIE-4.5-0.3B's head_dim (128) is not hidden/heads (64). No `rope.dimension_count`:
    upstream writes none and llama.cpp defaults n_rot to key_length. Tied embeddings need no key."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    write_decoder_metadata(writer, hp)
