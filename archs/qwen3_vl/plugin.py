"""Qwen3-VL (dense and MoE): a Qwen3 text decoder as llama.cpp's `qwen3vl` / `qwen3vlmoe` GGUF, and Qwen3.5's vision
tower with DeepStack as one static ONNX graph taking raw pixels (main rows + one output per DeepStack layer).

Most of it is shared: the vision graph, its config reader, the prompt and the preprocessing record are Qwen3.5's
(the towers are the same but for DeepStack); the text side is the standard decoder (converters/decoder_tensors.py).
"""

from __future__ import annotations


from smt_convert.archs.qwen3_5 import prompt
from smt_convert.archs.qwen3_vl import config, text
from smt_convert.archs.qwen3_vl.config import Hparams
from smt_convert.converters.plugin import (
    ArchPlugin,
    EncoderOutput,
    ModelFacts,
    ReferenceRequest,
    ReferenceResult,
    TextTensor,
    TokenRules,
    register,
)

__all__ = ["Hparams", "Qwen3VLMoePlugin", "Qwen3VLPlugin"]

# The name the board's vision wrapper must see to concatenate DeepStack outputs (it compares the canonical name with
# "Qwen3VL" exactly and maps only Qwen3_5ForConditionalGeneration to it); it also selects M-RoPE and the
# <|vision_start|>/<|vision_end|> boundary tokens (matched case-insensitively on "qwen3vl"). SMT-CONTRACT.md.
BOARD_ARCHITECTURE = "Qwen3VL"


@register
class Qwen3VLPlugin(ArchPlugin):
    name = "qwen3-vl"
    hf_architectures = config.HF_ARCHITECTURES_DENSE
    summary = "Qwen3-VL dense (2B-32B): Qwen3 text + vision encoder with DeepStack"
    text_arch = "qwen3vl"
    moe = False
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF qwen3vl / qwen3vlmoe with n_deepstack_layers, tokenizer embedded)",
        "<stem>-vision-<size>.onnx (raw 0..255 [1,3,H,W] -> image_embeds + deepstack_0..k-1, each [N, hidden])",
        "config.json, tokenizer files, golden/, manifest.json",
    ]
    # As upstream writes Qwen3-VL: qwen2 pre-tokenizer, <|im_end|> ends a turn, no bos; the checkpoint's template.
    tokens = TokenRules(pre="qwen2", eos="<|im_end|>", eot="<|im_end|>", bos=None, chat_template=None)
    board_flags = ()

    @classmethod
    def matches(cls, cfg: dict) -> bool:
        return str(cfg.get("model_type", "")) == ("qwen3_vl_moe" if cls.moe else "qwen3_vl")

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        return config.read_hparams(ckpt, opts, self.moe)

    def facts(self, hp: Hparams) -> ModelFacts:
        return ModelFacts(
            layout=hp.layout if hp.experts == "native" else "released (transposed experts)",
            vocab_size=hp.text.vocab_size,
            text_arch=hp.text.gguf_arch,
            modality="image",
            rope_sections=hp.text.rope_sections,
            default_stem=hp.default_stem,
            tie_note=hp.text.tie_note,
        )

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
        from smt_convert.archs.qwen3_5 import vision_graph

        return {**text.expected_tensors(hp), **vision_graph.vision_shapes(hp.vision)}

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        if hp.text.tie_embeddings:
            return {"lm_head.weight": "tied to the token embeddings (tie_word_embeddings)"}
        return {}

    # ---- text GGUF --------------------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams) -> list[TextTensor]:
        return text.text_tensors(hp)

    def text_metadata(self, writer, hp: Hparams) -> None:
        text.text_metadata(writer, hp)

    # ---- encoder ----------------------------------------------------------------------------------------

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        from smt_convert.archs.qwen3_5 import vision_graph

        return [vision_graph.encoder_output(hp.vision, stem)]

    def build_encoders(self, weights, hp: Hparams, precision: str):
        from smt_convert.archs.qwen3_5.vision_graph import build_vision
        from smt_convert.converters.onnx_graph import EncoderGraph, GraphContext

        ctx = GraphContext("qwen3_vl_vision", weights, precision)
        build_vision(ctx, hp.vision)
        return [EncoderGraph("vision", ctx.model())]

    # ---- bundle -----------------------------------------------------------------------------------------

    def board_config(self, hp: Hparams, files: dict[str, str]) -> dict:
        """`architectures[0]` is the board's own name for the family (see BOARD_ARCHITECTURE), the class second."""
        return {
            "architectures": [BOARD_ARCHITECTURE, hp.hf_class],
            "text_model": {"hidden_size": hp.text.hidden_size, "model_path": files["text"]},
            "vision_model": prompt.vision_model_block(hp.vision, files["vision"]),
        }

    def prompt_record(self, hp: Hparams) -> dict:
        record = prompt.prompt_record(hp)
        record["deepstack_layers"] = hp.deepstack_layers
        return record

    def preprocessing(self, hp: Hparams) -> dict:
        return prompt.preprocessing(hp)

    def plan_notes(self, hp: Hparams) -> list[str]:
        notes = prompt.vision_notes(hp.vision)
        sections = config.sections_note(hp)
        if sections:
            notes.append(sections)
        if hp.deepstack_layers:
            notes.append(
                f"DeepStack: the vision graph has {1 + hp.deepstack_layers} outputs, which the board's wrapper "
                f"concatenates into rows of {hp.text.hidden_size} x {1 + hp.deepstack_layers}; llama.cpp takes them "
                "at that width (n_embd_inp), but the SMT CLI read in SpacemiT's fork decodes them at n_embd and "
                "answers wrongly without smt-convert's examples/board/mtmd-cli-smt-deepstack.patch "
                "(README: Qwen3-VL on the board)"
            )
        return notes

    # ---- reference --------------------------------------------------------------------------------------

    def reference(self, ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
        from smt_convert.archs.qwen3_vl import reference  # torch: conversion only

        return reference.reference(ckpt, hp, request)


@register
class Qwen3VLMoePlugin(Qwen3VLPlugin):
    name = "qwen3-vl-moe"
    hf_architectures = config.HF_ARCHITECTURES_MOE
    summary = "Qwen3-VL MoE (30B-A3B, 235B-A22B): Qwen3 MoE text + vision encoder with DeepStack"
    text_arch = "qwen3vlmoe"
    moe = True
    lossy_nmse_scale = 5.0  # routing flips, as Qwen3.5-MoE (measured there)
