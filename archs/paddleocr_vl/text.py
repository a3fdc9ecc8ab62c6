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
from gguf import MODEL_TENSOR as T

from smt_convert.archs.paddleocr_vl.config import LM_HEAD, NATIVE_LAYOUT, TEXT_PREFIX, TextHparams, TextLayout
from smt_convert.converters.decoder_tensors import DecoderShape, expected_decoder, hf_layer_name, standard_decoder
from smt_convert.converters.plugin import TextTensor


def expected_text_tensors(hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT) -> dict[str, tuple[int, ...]]:
    """Checkpoint name (in `layout`) -> shape for every text tensor the model uses. For the native layout
    these are the canonical names (the parameters of PaddleOCRVLForConditionalGeneration's text part)."""
    H, F, p = hp.hidden_size, hp.intermediate_size, layout.prefix
    shapes = expected_decoder(decoder_shape(hp), p, LM_HEAD)
    for i in range(hp.num_layers):
        layer = f"{p}layers.{i}."
        if layout.fused_qkv:
            for part in ("q", "k", "v"):
                del shapes[f"{layer}self_attn.{part}_proj.weight"]
            shapes[layer + "self_attn.qkv_proj.weight"] = (hp.q_dim + 2 * hp.kv_dim, H)
        if layout.fused_ffn:
            for part in ("gate", "up"):
                del shapes[f"{layer}mlp.{part}_proj.weight"]
            shapes[layer + "mlp.up_gate_proj.weight"] = (2 * F, H)
    return shapes


def decoder_shape(hp: TextHparams) -> DecoderShape:
    """ERNIE-4.5's text side is the standard decoder (no q/k norm, no biases)."""
    return DecoderShape.of(hp, qk_norm=False)


def ignored_text_tensors(hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT) -> dict[str, str]:
    """Text-side checkpoint tensors deliberately not converted (glob -> reason)."""
    return {LM_HEAD: "tied to the token embeddings (tie_word_embeddings)"} if hp.tie_embeddings else {}


def split_qkv(hp: TextHparams, part: str) -> Callable[[np.ndarray], np.ndarray]:
    """One of q/k/v from a fused `qkv_proj` [q_dim + 2*kv_dim, H] (rows [q; k; v], as upstream splits it)."""
    start = {"q": 0, "k": hp.q_dim, "v": hp.q_dim + hp.kv_dim}[part]
    size = hp.q_dim if part == "q" else hp.kv_dim
    return lambda w: w[start : start + size]


def split_up_gate(part: str) -> Callable[[np.ndarray], np.ndarray]:
    """gate (first half) or up (second half) of a fused `up_gate_proj` [2F, H], as upstream splits it."""
    return (lambda w: w[: w.shape[0] // 2]) if part == "gate" else (lambda w: w[w.shape[0] // 2 :])


def text_tensors(
    hp: TextHparams, layout: TextLayout = NATIVE_LAYOUT, to_ckpt: Callable[[str], str] = lambda name: name
) -> list[TextTensor]:
    """Every GGUF tensor of the paddleocr text model: name, checkpoint sources, shape, transform.
    Sources are `to_ckpt(name in layout)`; no tensor needs a numeric change, only fused ones are split.
    Tied embeddings: no `output.weight` (llama.cpp then duplicates `token_embd.weight`, as upstream relies on)."""
    fused = {T.ATTN_Q: "q", T.ATTN_K: "k", T.ATTN_V: "v"} if layout.fused_qkv else {}
    fused_ffn = {T.FFN_GATE: "gate", T.FFN_UP: "up"} if layout.fused_ffn else {}

    def replace(kind, i, name, shape):
        layer = f"{layout.prefix}layers.{i}."
        if kind in fused:
            return TextTensor(name, (to_ckpt(layer + "self_attn.qkv_proj.weight"),), shape, split_qkv(hp, fused[kind]))
        if kind in fused_ffn:
            return TextTensor(
                name, (to_ckpt(layer + "mlp.up_gate_proj.weight"),), shape, split_up_gate(fused_ffn[kind])
            )
        return None

    return standard_decoder(decoder_shape(hp), layout.prefix, to_ckpt, LM_HEAD, replace)


def text_tensor_types(tensors: list[TextTensor], outtype: str) -> dict:
    """ggml type per GGUF tensor: the shared rule (`converters.text_gguf.choose_types`); nothing is forced."""
    from smt_convert.converters.text_gguf import choose_types

    return dict(choose_types(tensors, outtype))


def hf_name(gguf_name: str) -> str:
    """Canonical HF parameter name of a GGUF text tensor."""
    name = hf_layer_name(gguf_name, TEXT_PREFIX, LM_HEAD)
    if name is None:
        raise KeyError(gguf_name)
    return name


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
