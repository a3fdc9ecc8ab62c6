"""Qwen3-ASR: a Qwen3 text decoder (GGUF `qwen3vl`) fed by a Whisper-style audio encoder split in two ONNX
files (per-chunk convolution frontend, windowed-attention backend with the projector).

This class ties the family's modules together: `config` (hyperparameters), `text` (tensor names, GGUF),
`encoder_graph` (the ONNX graphs), `prompt` (prompt, preprocessing, golden input), `reference` (the Hugging Face
reference, streamed).
"""

from __future__ import annotations

from dataclasses import replace


from smt_convert.archs.qwen3_asr import config, prompt, reference, text
from smt_convert.archs.qwen3_asr.config import Hparams
from smt_convert.converters.plugin import (
    ArchPlugin,
    EncoderOutput,
    ModelFacts,
    ReferenceRequest,
    ReferenceResult,
    TokenRules,
    register,
)
from smt_convert.converters.validate import settle_tie

__all__ = ["Hparams", "Qwen3ASRPlugin"]


@register
class Qwen3ASRPlugin(ArchPlugin):
    name = "qwen3-asr"
    hf_architectures = ("Qwen3ASRForConditionalGeneration",)
    summary = "Qwen3-ASR (0.6B/1.7B): Qwen3 text decoder + audio encoder"
    text_arch = "qwen3vl"
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF qwen3vl, tokenizer embedded)",
        "<stem>-encoder-frontend.onnx ([1,128,100] mel chunk -> [1,13,d_model])",
        "<stem>-encoder-backend.onnx ([1,T,d_model] -> [T,output_dim], windowed attention in-graph)",
        "<stem>-encoder-split-metadata.json, config.json, tokenizer files, golden/, manifest.json",
    ]
    # As upstream writes Qwen3-ASR: qwen2 pre-tokenizer, <|im_end|> as eos/eot (and as the never-added bos).
    tokens = TokenRules(
        pre="qwen2", eos="<|im_end|>", eot="<|im_end|>", bos="<|im_end|>", chat_template=prompt.CHAT_TEMPLATE
    )
    board_flags = ()  # ChatML template: llama.cpp detects it (<|im_start|>) and applies its built-in chatml

    @classmethod
    def matches(cls, config: dict) -> bool:
        root = config.get("thinker_config", config)
        return config.get("model_type") == "qwen3_asr" or (
            isinstance(root, dict)
            and "audio_config" in root
            and "text_config" in root
            and root["audio_config"].get("n_window_infer") is not None
        )

    # ---- checkpoint ---------------------------------------------------------------------------------

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        hp = config.read_hparams(ckpt, opts, self.name)
        to_ckpt = text.canonical_to_checkpoint(hp)
        assert hp.tie_config is not None  # read_hparams sets it
        decision = settle_tie(
            hp.tie_config, ckpt, to_ckpt(text.TEXT + "embed_tokens.weight"), to_ckpt("lm_head.weight")
        )
        return replace(hp, tie_embeddings=decision.tied, tie_note=decision.note)

    def facts(self, hp: Hparams) -> ModelFacts:
        return ModelFacts(
            layout=hp.layout,
            vocab_size=hp.vocab_size,
            text_arch=self.text_arch,
            modality="audio",
            rope_sections=hp.rope_sections,
            default_stem=config.default_stem(hp),
            tie_note=hp.tie_note,
        )

    def canonical_to_checkpoint(self, hp: Hparams):
        return text.canonical_to_checkpoint(hp)

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
        return text.expected_tensors(hp)

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        return text.ignored_tensors(hp)

    def check_weights(self, ckpt, hp: Hparams) -> None:
        text.check_weights(ckpt, hp)

    # ---- text GGUF ----------------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams):
        return text.text_tensors(hp)

    def text_metadata(self, writer, hp: Hparams) -> None:
        text.text_metadata(writer, hp)

    # ---- encoder ------------------------------------------------------------------------------------

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        d, C = hp.d_model, hp.downsample_hidden_size
        front = C * 9 + C + 2 * (C * C * 9 + C) + d * C * hp.conv_freq_bins
        layer = 4 * (d * d + d) + 4 * d + 2 * hp.encoder_ffn_dim * d + hp.encoder_ffn_dim + d
        back = hp.encoder_layers * layer + 2 * d + d * d + d + hp.output_dim * d + hp.output_dim
        chunk = 2 * hp.n_window
        return [
            EncoderOutput(
                "audio-frontend",
                f"{stem}-encoder-frontend.onnx",
                front,
                [{"name": "input_features", "shape": [1, hp.num_mel_bins, chunk], "dtype": "float32"}],
                [{"name": "chunk_embeds", "shape": [1, hp.rows_per_chunk, d], "dtype": "float32"}],
            ),
            EncoderOutput(
                "audio-backend",
                f"{stem}-encoder-backend.onnx",
                back,
                [{"name": "audio_embeds", "shape": [1, "T", d], "dtype": "float32"}],
                [{"name": "audio_features", "shape": ["T", hp.output_dim], "dtype": "float32"}],
            ),
        ]

    def build_encoders(self, weights, hp: Hparams, precision: str):
        # imported here: onnxscript is a conversion dependency, and `smt-convert list` runs on boards without it
        from smt_convert.archs.qwen3_asr.encoder_graph import build_encoders

        return build_encoders(weights, hp, precision)

    # ---- bundle -------------------------------------------------------------------------------------

    def board_config(self, hp: Hparams, files: dict[str, str]) -> dict:
        """config.json in the layout of the board runtime's --smt-config-dir."""
        return {
            "architectures": ["Qwen3ASRForConditionalGeneration"],
            "audio_model": {
                "frontend_model_path": files["audio-frontend"],
                "backend_model_path": files["audio-backend"],
                "d_model": hp.d_model,
                "output_dim": hp.output_dim,
                "num_mel_bins": hp.num_mel_bins,
                "sample_rate": 16000,
                "n_fft": 400,
                "window_len": 400,
                "hop_len": 160,
            },
            "text_model": {"hidden_size": hp.hidden_size, "model_path": files["text"]},
        }

    def side_files(self, hp: Hparams, files: dict[str, str], stem: str) -> dict[str, dict]:
        """The fallback file the board reads when config.json has no usable audio block."""
        return {
            f"{stem}-encoder-split-metadata.json": {
                "frontend_onnx": files["audio-frontend"],
                "backend_onnx": files["audio-backend"],
                "num_mel_bins": hp.num_mel_bins,
                "d_model": hp.d_model,
                "output_dim": hp.output_dim,
                "chunk_frames": 2 * hp.n_window,
                "rows_per_chunk": hp.rows_per_chunk,
                "attention_window_rows": hp.attention_window_rows,
            }
        }

    def prompt_record(self, hp: Hparams) -> dict:
        return prompt.prompt_record(hp)

    def preprocessing(self, hp: Hparams) -> dict:
        return prompt.preprocessing(hp)

    # ---- reference ----------------------------------------------------------------------------------

    def reference(self, ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
        return reference.reference(ckpt, hp, self.canonical_to_checkpoint(hp), request)
