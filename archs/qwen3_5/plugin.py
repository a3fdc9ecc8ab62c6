"""Qwen3.5 (dense and MoE; multimodal or text-only): the hybrid Gated-DeltaNet text decoder as llama.cpp's
`qwen35` / `qwen35moe` GGUF, and the vision tower + merger as one static ONNX graph taking raw pixels.

This class ties the family's modules together: `config` (hyperparameters), `text` (tensor names, transforms,
GGUF types and metadata), `vision_graph` (the ONNX graph), `prompt` (prompt, preprocessing, golden image),
`reference` (the Hugging Face reference, streamed).
"""

from __future__ import annotations


from smt_convert.archs.qwen3_5 import config, prompt, text
from smt_convert.archs.qwen3_5.config import Hparams
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

__all__ = ["Hparams", "Qwen35MoePlugin", "Qwen35Plugin"]


@register
class Qwen35Plugin(ArchPlugin):
    name = "qwen3.5"
    hf_architectures = config.HF_ARCHITECTURES_DENSE
    summary = "Qwen3.5 dense (0.8B-27B): hybrid Gated-DeltaNet text + vision encoder"
    text_arch = "qwen35"
    moe = False
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF qwen35 / qwen35moe, tokenizer embedded)",
        "<stem>-vision-<size>.onnx (raw 0..255 [1,3,H,W] -> [(H/32)*(W/32), hidden]); none for text-only",
        "config.json, tokenizer files, golden/, manifest.json",
    ]
    # As upstream writes Qwen3.5: byte-level BPE with llama.cpp's `qwen35` pre-tokenizer (a different split regex
    # from qwen2); <|im_end|> ends an assistant turn. No bos (add_bos_token false). The checkpoint's own chat
    # template (it handles thinking and images).
    tokens = TokenRules(pre="qwen35", eos="<|im_end|>", eot="<|im_end|>", bos=None, chat_template=None)
    precision_rules = text.PRECISION_RULES
    board_flags = ()  # ChatML template: llama.cpp's built-in chatml gives the prompt the runtime verified

    @classmethod
    def matches(cls, config: dict) -> bool:
        return str(config.get("model_type", "")).startswith("qwen3_5")

    # ---- checkpoint -------------------------------------------------------------------------------------

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        return config.read_hparams(ckpt, opts, self.moe)

    def facts(self, hp: Hparams) -> ModelFacts:
        return ModelFacts(
            layout=hp.layout,
            vocab_size=hp.text.vocab_size,
            text_arch=hp.text.gguf_arch,
            modality="image" if hp.vision is not None else "text",
            rope_sections=hp.text.rope_sections,
            default_stem=hp.default_stem,
            tie_note=hp.text.tie_note,
        )

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
        shapes = text.expected_text_tensors(hp.text, hp.prefix, hp.experts)
        if hp.vision is not None:
            from smt_convert.archs.qwen3_5 import vision_graph  # graph code: conversion only

            shapes.update(vision_graph.vision_shapes(hp.vision))
        return shapes

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        return text.ignored_text_tensors(hp.text, hp.prefix)

    def check_weights(self, ckpt, hp: Hparams) -> None:
        text.check_weights(ckpt, hp)

    # ---- text GGUF --------------------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams) -> list[TextTensor]:
        return text.text_tensors(hp.text, prefix=hp.prefix, experts=hp.experts)

    def text_types(self, tensors: list[TextTensor], outtype: str) -> dict:
        return text.text_tensor_types(tensors, outtype)

    def text_metadata(self, writer, hp: Hparams) -> None:
        text.write_text_metadata(writer, hp.text)

    # ---- encoder ----------------------------------------------------------------------------------------

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        from smt_convert.archs.qwen3_5 import vision_graph

        return [] if hp.vision is None else [vision_graph.encoder_output(hp.vision, stem)]

    def build_encoders(self, weights, hp: Hparams, precision: str):
        from smt_convert.archs.qwen3_5 import vision_graph

        return vision_graph.build_encoders(weights, hp, precision)

    # ---- bundle -----------------------------------------------------------------------------------------

    def board_config(self, hp: Hparams, files: dict[str, str]) -> dict:
        """config.json for --smt-config-dir. Element 0 of `architectures` selects the board's behaviour: the
        board knows `Qwen3_5ForConditionalGeneration` (Qwen3-VL family), so MoE bundles list it first and
        their own class second (the vision side is identical)."""
        archs = ["Qwen3_5ForConditionalGeneration"]
        if hp.hf_class not in archs and "ForConditionalGeneration" in hp.hf_class:
            archs.append(hp.hf_class)
        board = {
            "architectures": archs,
            "text_model": {"hidden_size": hp.text.hidden_size, "model_path": files["text"]},
        }
        if hp.vision is not None:
            board["vision_model"] = prompt.vision_model_block(hp.vision, files["vision"])
        return board

    def prompt_record(self, hp: Hparams) -> dict:
        return prompt.prompt_record(hp)

    def preprocessing(self, hp: Hparams) -> dict:
        return prompt.preprocessing(hp)

    def golden_fields(self) -> dict:
        return {"prompt": "Describe the image."}

    def plan_notes(self, hp: Hparams) -> list[str]:
        notes = prompt.vision_notes(hp.vision) if hp.vision is not None else []
        if hp.text.mtp_layers:
            notes.append(f"{hp.text.mtp_layers} MTP layer(s) not converted (speculative decoding only)")
        return notes

    # ---- reference --------------------------------------------------------------------------------------

    def reference(self, ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
        from smt_convert.archs.qwen3_5 import reference  # torch: conversion only

        return reference.reference(ckpt, hp, request)


@register
class Qwen35MoePlugin(Qwen35Plugin):
    name = "qwen3.5-moe"
    hf_architectures = config.HF_ARCHITECTURES_MOE
    summary = "Qwen3.5 MoE (35B-A3B and larger): hybrid Gated-DeltaNet MoE text + vision encoder"
    text_arch = "qwen35moe"
    moe = True
    # Rounding can flip an expert choice, which moves logits far more than in a dense model: tiny MoE
    # measured q8_0 NMSE 1.3e-2 where the dense model gives ~1e-4; bounds for lossy types are 5x wider.
    lossy_nmse_scale = 5.0
