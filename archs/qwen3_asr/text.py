"""Qwen3-ASR tensors: canonical (native) names and shapes, the original release's names, and the text GGUF
(a Qwen3 decoder written as upstream llama.cpp's `qwen3vl`)."""

from __future__ import annotations

from typing import Callable

from smt_convert.archs.qwen3_asr.config import Hparams
from smt_convert.converters.decoder_tensors import DecoderShape, expected_decoder, standard_decoder
from smt_convert.converters.plugin import TextTensor
from smt_convert.runtime.errors import SmtError

TEXT = "model.language_model."
AUDIO = "model.audio_tower."
PROJ = "model.multi_modal_projector."


def canonical_to_checkpoint(hp: Hparams) -> Callable[[str], str]:
    """Native (canonical) tensor name -> the name in this checkpoint's layout (the original release keeps the
    projector inside the tower as proj1/proj2)."""
    if hp.layout == "native":
        return lambda name: name

    def original(name: str) -> str:
        if name.startswith(PROJ):
            rest = name[len(PROJ) :].replace("linear_1", "proj1").replace("linear_2", "proj2")
            return "thinker.audio_tower." + rest
        if name.startswith(AUDIO):
            return "thinker.audio_tower." + name[len(AUDIO) :]
        if name.startswith(TEXT):
            return "thinker.model." + name[len(TEXT) :]
        return "thinker." + name

    return original


def expected_tensors(hp: Hparams) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every tensor the model uses, derived from the config."""
    return {**expected_decoder(decoder_shape(hp), TEXT), **encoder_tensors(hp)}


def decoder_shape(hp: Hparams) -> DecoderShape:
    """The text side is a standard Qwen3 decoder (q/k norms, no biases)."""
    return DecoderShape.of(hp, qk_norm=True)


def encoder_tensors(hp: Hparams) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for the audio tower and the projector."""
    d, C, ffn = hp.d_model, hp.downsample_hidden_size, hp.encoder_ffn_dim
    shapes = {
        AUDIO + "conv2d1.weight": (C, 1, 3, 3),
        AUDIO + "conv2d1.bias": (C,),
        AUDIO + "conv2d2.weight": (C, C, 3, 3),
        AUDIO + "conv2d2.bias": (C,),
        AUDIO + "conv2d3.weight": (C, C, 3, 3),
        AUDIO + "conv2d3.bias": (C,),
        AUDIO + "conv_out.weight": (d, C * hp.conv_freq_bins),
        AUDIO + "ln_post.weight": (d,),
        AUDIO + "ln_post.bias": (d,),
        PROJ + "linear_1.weight": (d, d),
        PROJ + "linear_1.bias": (d,),
        PROJ + "linear_2.weight": (hp.output_dim, d),
        PROJ + "linear_2.bias": (hp.output_dim,),
    }
    layer = {
        "self_attn.q_proj.weight": (d, d),
        "self_attn.q_proj.bias": (d,),
        "self_attn.k_proj.weight": (d, d),
        "self_attn.k_proj.bias": (d,),
        "self_attn.v_proj.weight": (d, d),
        "self_attn.v_proj.bias": (d,),
        "self_attn.out_proj.weight": (d, d),
        "self_attn.out_proj.bias": (d,),
        "self_attn_layer_norm.weight": (d,),
        "self_attn_layer_norm.bias": (d,),
        "fc1.weight": (ffn, d),
        "fc1.bias": (ffn,),
        "fc2.weight": (d, ffn),
        "fc2.bias": (d,),
        "final_layer_norm.weight": (d,),
        "final_layer_norm.bias": (d,),
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
        raise SmtError(
            f"{ckpt.config_path}: {prefix}text_config.vocab_size: {hp.vocab_size} but {embed.name} in "
            f"{embed.file.name} has {embed.shape[0]} rows"
        )


def text_tensors(hp: Hparams) -> list[TextTensor]:
    """Every GGUF tensor in write order, with its checkpoint-name source: the standard decoder as it is."""
    return standard_decoder(decoder_shape(hp), TEXT, canonical_to_checkpoint(hp))


def text_metadata(writer, hp: Hparams) -> None:
    """The qwen3vl keys upstream llama.cpp reads (no deepstack layers for an audio model)."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    write_decoder_metadata(writer, hp)
    writer.add_num_deepstack_layers(0)
