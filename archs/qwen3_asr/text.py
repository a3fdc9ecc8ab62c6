"""Qwen3-ASR tensors: canonical (native) names and shapes, the original release's names, and the text GGUF
(a Qwen3 decoder written as upstream llama.cpp's `qwen3vl`)."""

from __future__ import annotations

from typing import Callable

from smt_convert.archs.qwen3_asr.config import Hparams
from smt_convert.converters.plugin import TextTensor
from smt_convert.runtime.errors import SmtError

TEXT = "model.language_model."
AUDIO = "model.audio_tower."
PROJ = "model.multi_modal_projector."

# Text tensors: canonical suffix after TEXT -> GGUF name (per layer where it has {i}).
TEXT_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def canonical_to_checkpoint(hp: Hparams) -> Callable[[str], str]:
    """Native (canonical) tensor name -> the name in this checkpoint's layout (the original release keeps the
    projector inside the tower as proj1/proj2)."""
    if hp.layout == "native":
        return lambda name: name

    def original(name: str) -> str:
        if name.startswith(PROJ):
            rest = name[len(PROJ):].replace("linear_1", "proj1").replace("linear_2", "proj2")
            return "thinker.audio_tower." + rest
        if name.startswith(AUDIO):
            return "thinker.audio_tower." + name[len(AUDIO):]
        if name.startswith(TEXT):
            return "thinker.model." + name[len(TEXT):]
        return "thinker." + name

    return original


def expected_tensors(hp: Hparams) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every tensor the model uses, derived from the config."""
    H, F, hd = hp.hidden_size, hp.intermediate_size, hp.head_dim
    shapes = {TEXT + "embed_tokens.weight": (hp.vocab_size, H), TEXT + "norm.weight": (H,)}
    per_layer = {
        "input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,),
        "self_attn.q_proj.weight": (hp.num_heads * hd, H), "self_attn.k_proj.weight": (hp.num_kv_heads * hd, H),
        "self_attn.v_proj.weight": (hp.num_kv_heads * hd, H), "self_attn.o_proj.weight": (H, hp.num_heads * hd),
        "self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,),
        "mlp.gate_proj.weight": (F, H), "mlp.up_proj.weight": (F, H), "mlp.down_proj.weight": (H, F),
    }
    for i in range(hp.num_layers):
        shapes.update({f"{TEXT}layers.{i}.{k}": v for k, v in per_layer.items()})
    if not hp.tie_embeddings:
        shapes["lm_head.weight"] = (hp.vocab_size, H)
    shapes.update(encoder_tensors(hp))
    return shapes


def encoder_tensors(hp: Hparams) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for the audio tower and the projector."""
    d, C, ffn = hp.d_model, hp.downsample_hidden_size, hp.encoder_ffn_dim
    shapes = {
        AUDIO + "conv2d1.weight": (C, 1, 3, 3), AUDIO + "conv2d1.bias": (C,),
        AUDIO + "conv2d2.weight": (C, C, 3, 3), AUDIO + "conv2d2.bias": (C,),
        AUDIO + "conv2d3.weight": (C, C, 3, 3), AUDIO + "conv2d3.bias": (C,),
        AUDIO + "conv_out.weight": (d, C * hp.conv_freq_bins),
        AUDIO + "ln_post.weight": (d,), AUDIO + "ln_post.bias": (d,),
        PROJ + "linear_1.weight": (d, d), PROJ + "linear_1.bias": (d,),
        PROJ + "linear_2.weight": (hp.output_dim, d), PROJ + "linear_2.bias": (hp.output_dim,),
    }
    layer = {
        "self_attn.q_proj.weight": (d, d), "self_attn.q_proj.bias": (d,),
        "self_attn.k_proj.weight": (d, d), "self_attn.k_proj.bias": (d,),
        "self_attn.v_proj.weight": (d, d), "self_attn.v_proj.bias": (d,),
        "self_attn.out_proj.weight": (d, d), "self_attn.out_proj.bias": (d,),
        "self_attn_layer_norm.weight": (d,), "self_attn_layer_norm.bias": (d,),
        "fc1.weight": (ffn, d), "fc1.bias": (ffn,), "fc2.weight": (d, ffn), "fc2.bias": (d,),
        "final_layer_norm.weight": (d,), "final_layer_norm.bias": (d,),
    }
    for i in range(hp.encoder_layers):
        shapes.update({f"{AUDIO}layers.{i}.{k}": v for k, v in layer.items()})
    return shapes


def ignored_tensors(hp: Hparams) -> dict[str, str]:
    """Checkpoint tensors that are deliberately not converted (glob pattern -> reason)."""
    to_ckpt = canonical_to_checkpoint(hp)
    ignored = {to_ckpt(AUDIO + "positional_embedding*"): "fixed sinusoids, recomputed inside the frontend graph"}
    if hp.tie_embeddings:
        ignored[to_ckpt("lm_head.weight")] = "tied to the token embeddings (tie_word_embeddings)"
    return ignored


def check_weights(ckpt, hp: Hparams) -> None:
    """Config-vs-weights checks that need more than shapes, with clearer messages than a shape mismatch.
    (Tied or not is decided from the weights in config.read_hparams.)"""
    to_ckpt = canonical_to_checkpoint(hp)
    prefix = "thinker_config." if hp.layout == "original" else ""
    embed = ckpt.tensors.get(to_ckpt(TEXT + "embed_tokens.weight"))
    if embed is not None and embed.shape[0] != hp.vocab_size:
        raise SmtError(f"{ckpt.config_path}: {prefix}text_config.vocab_size: {hp.vocab_size} but {embed.name} in "
                       f"{embed.file.name} has {embed.shape[0]} rows")


def text_tensors(hp: Hparams) -> list[TextTensor]:
    """Every GGUF tensor in write order, with its checkpoint-name source."""
    to_ckpt = canonical_to_checkpoint(hp)
    shapes = expected_tensors(hp)
    out = []

    def add(canonical: str, gguf_name: str) -> None:
        out.append(TextTensor(gguf_name, (to_ckpt(canonical),), shapes[canonical]))

    add(TEXT + "embed_tokens.weight", "token_embd.weight")
    for i in range(hp.num_layers):
        for suffix, gguf_name in TEXT_NAMES.items():
            if "{i}" in suffix:
                add(TEXT + suffix.format(i=i), gguf_name.format(i=i))
    add(TEXT + "norm.weight", "output_norm.weight")
    if not hp.tie_embeddings:
        add("lm_head.weight", "output.weight")
    return out


def text_metadata(writer, hp: Hparams) -> None:
    """The qwen3vl keys upstream llama.cpp reads (no deepstack layers for an audio model)."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    write_decoder_metadata(writer, hp)
    writer.add_num_deepstack_layers(0)
