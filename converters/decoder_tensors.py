"""GGUF tensor names from gguf-py's own tables, and the standard decoder every Llama-like text model shares.

Names come from `gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.X]` (what llama.cpp's converter and loader use), never typed
as strings, so a family cannot misspell one. `standard_decoder` lists the text tensors of the decoder transformers
writes for Llama, Qwen2/Qwen3 and ERNIE-4.5 (`model.layers.N.self_attn.q_proj`, ...) in llama.cpp's order; a family
passes its prefix, its shapes, and replacements for the tensors it stores differently (a fused qkv, say), so a
Qwen3-like text side is a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from gguf import MODEL_TENSOR as T
from gguf import TENSOR_NAMES

from smt_convert.converters.plugin import TextTensor


def gguf_name(kind: T, bid: int | None = None, suffix: str | None = "weight") -> str:
    """`blk.3.attn_q.weight` for (ATTN_Q, 3); `suffix` None for tensors llama.cpp names without one (`ssm_a`)."""
    base = TENSOR_NAMES[kind].format(bid=bid) if bid is not None else TENSOR_NAMES[kind]
    return f"{base}.{suffix}" if suffix else base


# The standard decoder layer: GGUF tensor kind -> its name under `layers.N.` in transformers' checkpoints, in
# the order llama.cpp's converter writes a layer (q/k norms only where the model has them).
HF_LAYER: dict[T, str] = {
    T.ATTN_NORM: "input_layernorm.weight",
    T.ATTN_Q: "self_attn.q_proj.weight",
    T.ATTN_K: "self_attn.k_proj.weight",
    T.ATTN_V: "self_attn.v_proj.weight",
    T.ATTN_OUT: "self_attn.o_proj.weight",
    T.ATTN_Q_NORM: "self_attn.q_norm.weight",
    T.ATTN_K_NORM: "self_attn.k_norm.weight",
    T.FFN_NORM: "post_attention_layernorm.weight",
    T.FFN_GATE: "mlp.gate_proj.weight",
    T.FFN_UP: "mlp.up_proj.weight",
    T.FFN_DOWN: "mlp.down_proj.weight",
}
QK_NORM = (T.ATTN_Q_NORM, T.ATTN_K_NORM)


class DecoderHparams(Protocol):
    """The text hyperparameters every family's record names the same way."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_embeddings: bool


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that fix every standard decoder tensor's shape."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    q_dim: int  # heads x head_dim
    kv_dim: int  # kv heads x head_dim
    head_dim: int
    qk_norm: bool  # Qwen3: per-head RMSNorm on q and k
    tied: bool  # no lm_head: the token embedding doubles as the output

    @classmethod
    def of(cls, hp: DecoderHparams, qk_norm: bool) -> "DecoderShape":
        """From a family's text hyperparameters (no biases: none of these decoders has any)."""
        return cls(
            hp.vocab_size,
            hp.hidden_size,
            hp.intermediate_size,
            hp.num_layers,
            hp.num_heads * hp.head_dim,
            hp.num_kv_heads * hp.head_dim,
            hp.head_dim,
            qk_norm=qk_norm,
            tied=hp.tie_embeddings,
        )


def layer_shapes(s: DecoderShape) -> dict[T, tuple[int, ...]]:
    """Shape of each tensor of one standard layer (transformers' [out, in] for matrices)."""
    H, F = s.hidden_size, s.intermediate_size
    shapes = {
        T.ATTN_NORM: (H,),
        T.ATTN_Q: (s.q_dim, H),
        T.ATTN_K: (s.kv_dim, H),
        T.ATTN_V: (s.kv_dim, H),
        T.ATTN_OUT: (H, s.q_dim),
        T.ATTN_Q_NORM: (s.head_dim,),
        T.ATTN_K_NORM: (s.head_dim,),
        T.FFN_NORM: (H,),
        T.FFN_GATE: (F, H),
        T.FFN_UP: (F, H),
        T.FFN_DOWN: (H, F),
    }
    return {kind: shape for kind, shape in shapes.items() if s.qk_norm or kind not in QK_NORM}


def expected_decoder(s: DecoderShape, prefix: str, lm_head: str = "lm_head.weight") -> dict[str, tuple[int, ...]]:
    """Canonical checkpoint name -> shape for every tensor of the standard decoder under `prefix`."""
    shapes = {prefix + "embed_tokens.weight": (s.vocab_size, s.hidden_size), prefix + "norm.weight": (s.hidden_size,)}
    per_layer = layer_shapes(s)
    for i in range(s.num_layers):
        shapes.update({f"{prefix}layers.{i}.{HF_LAYER[kind]}": shape for kind, shape in per_layer.items()})
    if not s.tied:
        shapes[lm_head] = (s.vocab_size, s.hidden_size)
    return shapes


# A family's replacement for one layer tensor: (kind, layer) -> the TextTensor(s) to write instead (a MoE writes
# its router and expert tensors in place of the dense FFN's), or None to keep the standard one.
Replace = Callable[[T, int, str, tuple[int, ...]], "TextTensor | list[TextTensor] | None"]


def standard_decoder(
    s: DecoderShape,
    prefix: str,
    to_ckpt: Callable[[str], str] = lambda name: name,
    lm_head: str = "lm_head.weight",
    replace: Replace | None = None,
) -> list[TextTensor]:
    """Every text GGUF tensor of the standard decoder, in llama.cpp's write order: token_embd, each layer, then
    output_norm and (untied) output. Sources are `to_ckpt(canonical name)`; `replace(kind, layer, gguf name,
    shape)` may return a different TextTensor for a tensor the family stores otherwise."""
    out = [
        TextTensor(gguf_name(T.TOKEN_EMBD), (to_ckpt(prefix + "embed_tokens.weight"),), (s.vocab_size, s.hidden_size))
    ]
    per_layer = layer_shapes(s)
    for i in range(s.num_layers):
        for kind, shape in per_layer.items():
            name = gguf_name(kind, i)
            tensor = replace(kind, i, name, shape) if replace else None
            if tensor is None:
                tensor = TextTensor(name, (to_ckpt(f"{prefix}layers.{i}.{HF_LAYER[kind]}"),), shape)
            out.extend(tensor if isinstance(tensor, list) else [tensor])
    out.append(TextTensor(gguf_name(T.OUTPUT_NORM), (to_ckpt(prefix + "norm.weight"),), (s.hidden_size,)))
    if not s.tied:
        out.append(TextTensor(gguf_name(T.OUTPUT), (to_ckpt(lm_head),), (s.vocab_size, s.hidden_size)))
    return out


def hf_layer_name(gguf_tensor: str, prefix: str, lm_head: str = "lm_head.weight") -> str | None:
    """The canonical checkpoint name of a standard decoder's GGUF tensor (None when it is not one)."""
    globals_ = {
        gguf_name(T.TOKEN_EMBD): prefix + "embed_tokens.weight",
        gguf_name(T.OUTPUT_NORM): prefix + "norm.weight",
        gguf_name(T.OUTPUT): lm_head,
    }
    if gguf_tensor in globals_:
        return globals_[gguf_tensor]
    parts = gguf_tensor.split(".")
    if len(parts) != 4 or parts[0] != "blk" or not parts[1].isdigit():
        return None
    i = int(parts[1])
    for kind, hf in HF_LAYER.items():
        if gguf_name(kind, i) == gguf_tensor:
            return f"{prefix}layers.{i}.{hf}"
    return None
