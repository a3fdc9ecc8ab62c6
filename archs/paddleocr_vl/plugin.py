"""PaddleOCR-VL (0.9B): the plugin class tying the family's modules together for shared code.

config.py reads and checks the hyperparameters, text.py maps the ERNIE-4.5 decoder to the GGUF, vision_graph.py
writes the vision encoder + projector ONNX, prompt.py holds the prompt / preprocessing rules and reference.py
the streamed Hugging Face reference.

Checkpoints: the original release (flat config, `visual.*`, `mlp_AR.*`, `model.*`; custom-code `auto_map`
entries are never executed), what transformers 5's `save_pretrained` writes (nested config, the release's tensor
names) and the in-memory transformers names (`model.visual.*`, `model.projector.*`, `model.language_model.*`):
tensor names are detected from the tensors, never from the config's layout.
"""

from __future__ import annotations

import numpy as np

from smt_convert.archs.paddleocr_vl import prompt
from dataclasses import replace

from smt_convert.archs.paddleocr_vl.config import (
    GGUF_ARCH,
    HF_ARCHITECTURES,
    LM_HEAD,
    PROJECTOR,
    Hparams,
    config_layout,
    detect_text_layout,
    detect_vision_layout,
    read_text_hparams,
    read_vision_hparams,
    vision_to_ckpt,
)
from smt_convert.archs.paddleocr_vl.text import (
    expected_text_tensors,
    ignored_text_tensors,
    text_tensor_types,
    text_tensors,
    write_text_metadata,
)
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
from smt_convert.converters.validate import ConfigReader, require, settle_tie
from smt_convert.runtime.errors import SmtError

UNUSED_VISION = {
    "*packing_position_embedding*": "position table of Paddle's packed (multi-image) training path; unused here",
    "*vision_model.head.*": "SigLIP pooling head; PaddleOCR-VL feeds the patch rows to the projector instead",
}


@register
class PaddleOCRVLPlugin(ArchPlugin):
    name = "paddleocr-vl"
    hf_architectures = HF_ARCHITECTURES
    summary = "PaddleOCR-VL (0.9B): ERNIE-4.5 text + SigLIP-style vision encoder with the mlp_AR projector"
    text_arch = GGUF_ARCH
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF paddleocr, SentencePiece vocabulary embedded)",
        "<stem>-vision-<size>.onnx (host-normalised [1,3,H,W] -> [(H/28)*(W/28), hidden])",
        "config.json (with vision_preprocess), tokenizer files, golden/, manifest.json",
    ]
    tokens = TokenRules(pre=None, eos="</s>")  # SentencePiece: tokenizer model "llama", no pre-tokenizer
    board_flags = ("--jinja",)  # the ERNIE chat template is not one of llama.cpp's built-in (non-jinja) templates

    @classmethod
    def matches(cls, config: dict) -> bool:
        return "paddleocr" in str(config.get("model_type", "")).lower()

    # ---- checkpoint ---------------------------------------------------------------------------

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        from smt_convert.runtime.bundle import read_json

        path = ckpt.config_path
        text = read_text_hparams(ckpt.config, path)
        text_layout = detect_text_layout(ckpt.tensors)
        assert text.tie_config is not None  # read_text_hparams sets it
        decision = settle_tie(text.tie_config, ckpt, text_layout.prefix + "embed_tokens.weight", LM_HEAD)
        text = replace(text, tie_embeddings=decision.tied, tie_note=decision.note)
        layout = detect_vision_layout(ckpt.tensors)
        pre_path = ckpt.root / "preprocessor_config.json"
        pre = read_json(pre_path) if pre_path.is_file() else {}
        vision = read_vision_hparams(
            ckpt.config,
            path,
            pre,
            pre_path.name if pre else "transformers defaults",
            opts.image_size if opts is not None else None,
        )
        image_token = ConfigReader(ckpt.config, path).get("image_token_id", int, 100295)
        require(
            image_token < text.vocab_size,
            path,
            "image_token_id",
            f"{image_token} is outside the vocabulary ({text.vocab_size})",
        )
        hp = Hparams(text, vision, layout, text_layout, image_token, config_layout(ckpt.config))
        proj_out = ckpt.tensors.get(vision_to_ckpt(layout)(PROJECTOR + "linear_2.weight"))
        if proj_out is not None and proj_out.shape[0] != text.hidden_size:
            raise SmtError(
                f"{proj_out.file}: tensor {proj_out.name}: projector output width {proj_out.shape[0]} "
                f"must equal the text hidden size {text.hidden_size} ({path.name}: hidden_size)"
            )
        return hp

    def facts(self, hp: Hparams) -> ModelFacts:
        return ModelFacts(
            layout=hp.layout_description,
            vocab_size=hp.text.vocab_size,
            text_arch=GGUF_ARCH,
            modality="image",
            rope_sections=hp.text.rope_sections,
            default_stem="PaddleOCR-VL",
            tie_note=hp.text.tie_note,
        )

    def canonical_to_checkpoint(self, hp: Hparams):
        """Vision / projector names are canonical; text names are already the checkpoint's (see text.py)."""
        return vision_to_ckpt(hp.layout)

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
        from smt_convert.archs.paddleocr_vl.vision_graph import vision_shapes  # graph code: conversion only

        return {**expected_text_tensors(hp.text, hp.text_layout), **vision_shapes(hp.vision, hp.text.hidden_size)}

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        return {**ignored_text_tensors(hp.text, hp.text_layout), **UNUSED_VISION}

    # ---- text GGUF -----------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams) -> list[TextTensor]:
        return text_tensors(hp.text, hp.text_layout)

    def text_types(self, tensors, outtype: str) -> dict:
        return text_tensor_types(tensors, outtype)

    def text_metadata(self, writer, hp: Hparams) -> None:
        write_text_metadata(writer, hp.text)

    # ---- encoder -------------------------------------------------------------------------------

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        v = hp.vision
        h, w = v.image_size
        ny, nx = v.grid
        size = f"{h}" if h == w else f"{h}x{w}"
        from smt_convert.archs.paddleocr_vl.vision_graph import vision_shapes

        params = sum(int(np.prod(s)) for s in vision_shapes(v, hp.text.hidden_size).values())
        return [
            EncoderOutput(
                "vision",
                f"{stem}-vision-{size}.onnx",
                params,
                [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}],
                [{"name": "image_embeds", "shape": [ny * nx, hp.text.hidden_size], "dtype": "float32"}],
            )
        ]

    def build_encoders(self, weights, hp: Hparams, precision: str):
        from smt_convert.archs.paddleocr_vl.vision_graph import build_vision_graph

        return [build_vision_graph(weights, hp, precision)]

    # ---- bundle --------------------------------------------------------------------------------

    def board_config(self, hp: Hparams, files: dict[str, str]) -> dict:
        h, w = hp.vision.image_size
        size = {"input_size": h} if h == w else {"input_width": w, "input_height": h}
        return {
            "architectures": list(HF_ARCHITECTURES),
            "vision_model": {"model_path": files["vision"], **size},
            "vision_preprocess": dict(hp.vision.preprocess),
            "text_model": {"hidden_size": hp.text.hidden_size, "model_path": files["text"]},
        }

    def prompt_record(self, hp: Hparams) -> dict:
        return prompt.prompt_record(hp)

    def preprocessing(self, hp: Hparams) -> dict:
        return prompt.preprocessing(hp)

    def plan_notes(self, hp: Hparams) -> list[str]:
        return prompt.plan_notes(hp)

    def golden_fields(self) -> dict:
        return {"prompt": "OCR:"}

    # ---- reference -----------------------------------------------------------------------------

    def reference(self, ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
        from smt_convert.archs.paddleocr_vl.reference import reference

        return reference(ckpt, hp, request)
