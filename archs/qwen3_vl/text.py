"""Qwen3-VL's text GGUF: the standard Qwen3 decoder (llama.cpp `qwen3vl`), or with every FFN a top-k MoE
(`qwen3vlmoe`: router + 3-D expert tensors, no shared expert), plus the DeepStack layer count.

MoE experts on disk are fused: transformers 5 holds `gate_up_proj` [E, 2F, H] and `down_proj` [E, H, F] (what its
`save_pretrained` writes); the Hub release stores both transposed, which transformers' loader and llama.cpp's
converter transpose back. Either way the GGUF gets gate = the first F rows, up = the next F, as ggml's
[E, F, H] (numpy order).
"""

from __future__ import annotations

from gguf import MODEL_TENSOR as T

from smt_convert.archs.qwen3_vl.config import TEXT, Hparams, TextHparams
from smt_convert.converters.decoder_tensors import DecoderShape, expected_decoder, gguf_name, standard_decoder
from smt_convert.converters.plugin import TextTensor

EXPERTS = TEXT + "layers.{i}.mlp."


def decoder_shape(t: TextHparams) -> DecoderShape:
    return DecoderShape.of(t, qk_norm=True)


def expert_shapes(hp: Hparams) -> dict[str, tuple[int, int, int]]:
    """On-disk shapes of one layer's fused experts in this checkpoint's layout."""
    t = hp.text
    E, F, H = t.num_experts, t.moe_intermediate_size, t.hidden_size
    if hp.experts == "released":
        return {"gate_up_proj": (E, H, 2 * F), "down_proj": (E, F, H)}
    return {"gate_up_proj": (E, 2 * F, H), "down_proj": (E, H, F)}


def expected_tensors(hp: Hparams) -> dict[str, tuple[int, ...]]:
    t = hp.text
    shapes = expected_decoder(decoder_shape(t), TEXT)
    if t.moe:
        for i in range(t.num_layers):
            m = EXPERTS.format(i=i)
            for kind in ("gate_proj", "up_proj", "down_proj"):
                del shapes[f"{m}{kind}.weight"]
            shapes[m + "gate.weight"] = (t.num_experts, t.hidden_size)
            shapes.update({m + "experts." + k: s for k, s in expert_shapes(hp).items()})
    return shapes


def text_tensors(hp: Hparams) -> list[TextTensor]:
    t = hp.text
    if not t.moe:
        return standard_decoder(decoder_shape(t), TEXT)
    E, F, H = t.num_experts, t.moe_intermediate_size, t.hidden_size
    released = hp.experts == "released"

    def gate_up(half: int):
        """[E, F, H] of gate (half 0) or up (half 1) from either on-disk layout."""
        if released:
            return lambda w: w[:, :, half * F : (half + 1) * F].transpose(0, 2, 1)
        return lambda w: w[:, half * F : (half + 1) * F, :]

    def moe(kind: T, i: int, name: str, shape) -> list[TextTensor] | None:
        m = EXPERTS.format(i=i)
        if kind == T.FFN_GATE:
            return [TextTensor(gguf_name(T.FFN_GATE_INP, i), (m + "gate.weight",), (E, H))]
        if kind == T.FFN_UP:
            return [
                TextTensor(gguf_name(T.FFN_GATE_EXP, i), (m + "experts.gate_up_proj",), (E, F, H), gate_up(0)),
                TextTensor(gguf_name(T.FFN_UP_EXP, i), (m + "experts.gate_up_proj",), (E, F, H), gate_up(1)),
            ]
        if kind == T.FFN_DOWN:
            down = (lambda w: w.transpose(0, 2, 1)) if released else None
            return [TextTensor(gguf_name(T.FFN_DOWN_EXP, i), (m + "experts.down_proj",), (E, H, F), down)]
        return None

    return standard_decoder(decoder_shape(t), TEXT, replace=moe)


def text_metadata(writer, hp: Hparams) -> None:
    """The keys llama.cpp's converter writes for Qwen3VL(Moe)TextModel."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    t = hp.text
    write_decoder_metadata(writer, t)
    if t.moe:
        writer.add_expert_count(t.num_experts)
        writer.add_expert_used_count(t.num_experts_per_tok)
        writer.add_expert_feed_forward_length(t.moe_intermediate_size)
    writer.add_num_deepstack_layers(hp.deepstack_layers)
