"""Qwen3-ASR: a Qwen3 text decoder (GGUF `qwen3vl`) fed by a Whisper-style audio encoder split in two ONNX
files (per-chunk convolution frontend, windowed-attention backend with the projector).

Checkpoint layouts:
- transformers-native: `Qwen3ASRForConditionalGeneration`, `model.audio_tower.*`,
  `model.multi_modal_projector.linear_{1,2}`, `model.language_model.*`, `lm_head`;
- the original Qwen release: `thinker_config` with `audio_config`/`text_config`, weights under
  `thinker.audio_tower.*` (projector as `proj1`/`proj2` inside the tower), `thinker.model.*`, `thinker.lm_head`.
Both are mapped onto the native names ("canonical" below) before anything else happens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from smt_convert.converters.plugin import EncoderOutput, TextTensor, register
from smt_convert.converters.validate import ConfigReader, read_tie, require
from smt_convert.runtime.errors import SmtError

# Full language names the model was trained with ("language <NAME><asr_text>"); codes are accepted too.
LANGUAGES = {
    "ar": "Arabic", "yue": "Cantonese", "zh": "Chinese", "cs": "Czech", "da": "Danish", "nl": "Dutch",
    "en": "English", "fil": "Filipino", "fi": "Finnish", "fr": "French", "de": "German", "el": "Greek",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "mk": "Macedonian", "ms": "Malay", "fa": "Persian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "es": "Spanish", "sv": "Swedish", "th": "Thai", "tr": "Turkish", "vi": "Vietnamese",
}

PROMPT_TEMPLATE = (
    "<|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n<__media__><|im_end|>\n<|im_start|>assistant\n"
)

# Text tensors: canonical checkpoint suffix -> GGUF name (per layer where it has {i}).
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
TEXT = "model.language_model."
AUDIO = "model.audio_tower."
PROJ = "model.multi_modal_projector."


@dataclass
class Hparams:
    layout: str                # "native" or "original"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_embeddings: bool
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_heads: int
    encoder_ffn_dim: int
    downsample_hidden_size: int
    output_dim: int
    n_window: int
    n_window_infer: int
    activation: str
    audio_token_id: int

    @property
    def conv_freq_bins(self) -> int:
        """Mel bins left after the three stride-2 convolutions (the conv_out input is channels x this)."""
        return (((self.num_mel_bins + 1) // 2 + 1) // 2 + 1) // 2

    @property
    def rows_per_chunk(self) -> int:
        """Encoder rows one 2*n_window-frame chunk yields (13 for the released models)."""
        from smt_convert.runtime.audio import conv_rows

        return conv_rows(2 * self.n_window)

    @property
    def rope_sections(self) -> list[int]:
        """`rope.dimension_sections` for llama.cpp's interleaved M-RoPE such that every rotary pair takes the
        t/h/w stream: with 1-D positions (text and audio) this is exactly the 1-D rope of the HF Qwen3 decoder.
        (Upstream writes [24, 20, 20, 0] from the original config; with it pairs 61 and 62 of 64 read the
        fourth stream, which llama.cpp sets to 0 for text, so logits drift slightly from HF's.)"""
        n = self.head_dim // 2
        return [math.ceil(n / 3), math.ceil((n - 1) / 3), math.ceil((n - 2) / 3), 0]


@register
class Qwen3ASRPlugin:
    name = "qwen3-asr"
    hf_architectures = ("Qwen3ASRForConditionalGeneration",)
    summary = "Qwen3-ASR (0.6B/1.7B): Qwen3 text decoder + audio encoder"
    text_arch = "qwen3vl"
    modality = "audio"
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF qwen3vl, tokenizer embedded)",
        "<stem>-encoder-frontend.onnx ([1,128,100] mel chunk -> [1,13,d_model])",
        "<stem>-encoder-backend.onnx ([1,T,d_model] -> [T,output_dim], windowed attention in-graph)",
        "<stem>-encoder-split-metadata.json, config.json, tokenizer files, golden/, manifest.json",
    ]

    @staticmethod
    def matches(config: dict) -> bool:
        root = config.get("thinker_config", config)
        return config.get("model_type") == "qwen3_asr" or (
            isinstance(root, dict) and "audio_config" in root and "text_config" in root
            and root["audio_config"].get("n_window_infer") is not None
        )

    def default_stem(self, hp: Hparams) -> str:
        size = {1024: "0.6B", 2048: "1.7B"}.get(hp.hidden_size)
        return f"Qwen3-ASR-{size}" if size else "Qwen3-ASR"

    # ---- checkpoint ---------------------------------------------------------------------------------

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        if opts is not None and opts.image_size is not None:
            raise SmtError(f"--image-size: {self.name} has no vision encoder")
        top = ConfigReader(ckpt.config, ckpt.config_path)
        layout = "original" if "thinker_config" in ckpt.config else "native"
        root = top.sub("thinker_config") if layout == "original" else top
        text, audio = root.sub("text_config"), root.sub("audio_config")
        rope_key = "rope_parameters" if "rope_parameters" in text.data else "rope_scaling"
        rope = text.sub(rope_key, required=False) or ConfigReader({}, ckpt.config_path, text.field(rope_key) + ".")
        rope_type = rope.get("rope_type", str, rope.get("type", str, "default"))
        require(rope_type == "default" or "mrope_section" in rope.data, ckpt.config_path,
                rope.field("rope_type"), f"'{rope_type}' scaling is not supported")
        theta = text.get("rope_theta", float, None) or rope.get("rope_theta", float, 10000.0)
        hp = Hparams(
            layout=layout,
            vocab_size=text.get("vocab_size"),
            hidden_size=text.get("hidden_size"),
            intermediate_size=text.get("intermediate_size"),
            num_layers=text.get("num_hidden_layers"),
            num_heads=text.get("num_attention_heads"),
            num_kv_heads=text.get("num_key_value_heads"),
            head_dim=text.get("head_dim", int, text.get("hidden_size") // text.get("num_attention_heads")),
            rms_norm_eps=text.get("rms_norm_eps", float, 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=text.get("max_position_embeddings", int, 65536),
            tie_embeddings=self._read_tie(top, root, text),
            num_mel_bins=audio.get("num_mel_bins", int, 128),
            d_model=audio.get("d_model"),
            encoder_layers=audio.get("encoder_layers"),
            encoder_heads=audio.get("encoder_attention_heads"),
            encoder_ffn_dim=audio.get("encoder_ffn_dim"),
            downsample_hidden_size=audio.get("downsample_hidden_size", int, 480),
            output_dim=audio.get("output_dim"),
            n_window=audio.get("n_window", int, 50),
            n_window_infer=audio.get("n_window_infer", int, 800),
            activation=audio.get("activation_function", str, "gelu"),
            audio_token_id=root.get("audio_token_id", int, 151676),
        )
        path = ckpt.config_path
        require(hp.output_dim == hp.hidden_size, path, audio.field("output_dim"),
                f"projector output width {hp.output_dim} must equal the text hidden size {hp.hidden_size}")
        require(hp.num_heads % hp.num_kv_heads == 0, path, text.field("num_key_value_heads"),
                f"{hp.num_kv_heads} does not divide num_attention_heads {hp.num_heads}")
        require(hp.head_dim % 2 == 0, path, text.field("head_dim"), "must be even for rotary embeddings")
        require(hp.d_model % hp.encoder_heads == 0, path, audio.field("encoder_attention_heads"),
                f"{hp.encoder_heads} heads do not divide d_model {hp.d_model}")
        require(hp.n_window_infer % (2 * hp.n_window) == 0, path, audio.field("n_window_infer"),
                f"{hp.n_window_infer} must be a multiple of 2 * n_window ({2 * hp.n_window})")
        require(hp.num_mel_bins == 128, path, audio.field("num_mel_bins"),
                "the board runtime feeds 128-bin log-mel features")
        require(hp.activation == "gelu", path, audio.field("activation_function"),
                f"'{hp.activation}' is not supported (expected gelu)")
        require(hp.n_window == 50, path, audio.field("n_window"),
                f"{hp.n_window} gives {2 * hp.n_window}-frame chunks; the board feeds 100-frame chunks (n_window 50)")
        require(0 <= hp.audio_token_id < hp.vocab_size, path, root.field("audio_token_id"),
                f"{hp.audio_token_id} is outside the vocabulary (vocab_size {hp.vocab_size})")
        return hp

    @staticmethod
    def _read_tie(top: ConfigReader, root: ConfigReader, text: ConfigReader) -> bool:
        """At the top, in thinker_config or in text_config; absent means tied (both released sizes are)."""
        return read_tie([top, root, text] if root is not top else [top, text], default=True)

    def canonical_to_checkpoint(self, hp: Hparams) -> callable:
        """Map a native (canonical) tensor name to the name used in this checkpoint's layout."""
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

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
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
        d, C, ffn = hp.d_model, hp.downsample_hidden_size, hp.encoder_ffn_dim
        shapes.update({
            AUDIO + "conv2d1.weight": (C, 1, 3, 3), AUDIO + "conv2d1.bias": (C,),
            AUDIO + "conv2d2.weight": (C, C, 3, 3), AUDIO + "conv2d2.bias": (C,),
            AUDIO + "conv2d3.weight": (C, C, 3, 3), AUDIO + "conv2d3.bias": (C,),
            AUDIO + "conv_out.weight": (d, C * hp.conv_freq_bins),
            AUDIO + "ln_post.weight": (d,), AUDIO + "ln_post.bias": (d,),
            PROJ + "linear_1.weight": (d, d), PROJ + "linear_1.bias": (d,),
            PROJ + "linear_2.weight": (hp.output_dim, d), PROJ + "linear_2.bias": (hp.output_dim,),
        })
        enc_layer = {
            "self_attn.q_proj.weight": (d, d), "self_attn.q_proj.bias": (d,),
            "self_attn.k_proj.weight": (d, d), "self_attn.k_proj.bias": (d,),
            "self_attn.v_proj.weight": (d, d), "self_attn.v_proj.bias": (d,),
            "self_attn.out_proj.weight": (d, d), "self_attn.out_proj.bias": (d,),
            "self_attn_layer_norm.weight": (d,), "self_attn_layer_norm.bias": (d,),
            "fc1.weight": (ffn, d), "fc1.bias": (ffn,), "fc2.weight": (d, ffn), "fc2.bias": (d,),
            "final_layer_norm.weight": (d,), "final_layer_norm.bias": (d,),
        }
        for i in range(hp.encoder_layers):
            shapes.update({f"{AUDIO}layers.{i}.{k}": v for k, v in enc_layer.items()})
        return shapes

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        """Checkpoint tensors that are deliberately not converted (glob pattern -> reason)."""
        to_ckpt = self.canonical_to_checkpoint(hp)
        ignored = {to_ckpt(AUDIO + "positional_embedding*"): "fixed sinusoids, recomputed inside the frontend graph"}
        if hp.tie_embeddings:
            ignored[to_ckpt("lm_head.weight")] = "tied to the token embeddings (tie_word_embeddings)"
        return ignored

    def check_weights(self, ckpt, hp: Hparams) -> None:
        """Config-vs-weights checks that need more than shapes, with clearer messages than a shape mismatch."""
        to_ckpt = self.canonical_to_checkpoint(hp)
        prefix = "thinker_config." if hp.layout == "original" else ""
        embed = ckpt.tensors.get(to_ckpt(TEXT + "embed_tokens.weight"))
        if embed is not None and embed.shape[0] != hp.vocab_size:
            raise SmtError(f"{ckpt.config_path}: {prefix}text_config.vocab_size: {hp.vocab_size} but {embed.name} in "
                           f"{embed.file.name} has {embed.shape[0]} rows")
        head = ckpt.tensors.get(to_ckpt("lm_head.weight"))
        if hp.tie_embeddings and head is not None and embed is not None:
            # A tied checkpoint may still store lm_head; it is only safe to drop if it is the embedding.
            import torch

            if not torch.equal(ckpt.load(head.name), ckpt.load(embed.name)):
                raise SmtError(f"{ckpt.config_path}: tie_word_embeddings: true, but {head.name} differs from "
                               f"{embed.name}; the config is wrong for these weights")

    # ---- text GGUF ----------------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams) -> list[TextTensor]:
        to_ckpt = self.canonical_to_checkpoint(hp)
        shapes = self.expected_tensors(hp)
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

    def text_metadata(self, writer, hp: Hparams, name: str) -> None:
        """The qwen3vl keys upstream llama.cpp reads (no deepstack layers for an audio model)."""
        from smt_convert.converters.text_gguf import write_decoder_metadata

        write_decoder_metadata(writer, hp, name)
        writer.add_num_deepstack_layers(0)

    # Tokenizer as upstream writes Qwen3-ASR: qwen2 pre-tokenizer, <|im_end|> as eos/eot (and as the
    # never-added bos), plain ChatML as the chat template.
    vocab_pre = "qwen2"
    eot_token = "<|im_end|>"
    eos_token = "<|im_end|>"
    bos_token = "<|im_end|>"
    chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )

    # ---- encoder ------------------------------------------------------------------------------------

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        d, C = hp.d_model, hp.downsample_hidden_size
        front = C * 9 + C + 2 * (C * C * 9 + C) + d * C * hp.conv_freq_bins
        layer = 4 * (d * d + d) + 4 * d + 2 * hp.encoder_ffn_dim * d + hp.encoder_ffn_dim + d
        back = hp.encoder_layers * layer + 2 * d + d * d + d + hp.output_dim * d + hp.output_dim
        chunk = 2 * hp.n_window
        return [
            EncoderOutput("audio-frontend", f"{stem}-encoder-frontend.onnx", front,
                          [{"name": "input_features", "shape": [1, hp.num_mel_bins, chunk], "dtype": "float32"}],
                          [{"name": "chunk_embeds", "shape": [1, hp.rows_per_chunk, d], "dtype": "float32"}]),
            EncoderOutput("audio-backend", f"{stem}-encoder-backend.onnx", back,
                          [{"name": "audio_embeds", "shape": [1, "T", d], "dtype": "float32"}],
                          [{"name": "audio_features", "shape": ["T", hp.output_dim], "dtype": "float32"}]),
        ]

    def hf_config(self, hp: Hparams):
        """The transformers config that the reference model and the exported encoder are built from."""
        from transformers import Qwen3ASRConfig

        audio = dict(num_mel_bins=hp.num_mel_bins, d_model=hp.d_model, encoder_layers=hp.encoder_layers,
                     encoder_attention_heads=hp.encoder_heads, encoder_ffn_dim=hp.encoder_ffn_dim,
                     downsample_hidden_size=hp.downsample_hidden_size, output_dim=hp.output_dim,
                     n_window=hp.n_window, n_window_infer=hp.n_window_infer, activation_function=hp.activation)
        text = dict(model_type="qwen3", vocab_size=hp.vocab_size, hidden_size=hp.hidden_size,
                    intermediate_size=hp.intermediate_size, num_hidden_layers=hp.num_layers,
                    num_attention_heads=hp.num_heads, num_key_value_heads=hp.num_kv_heads, head_dim=hp.head_dim,
                    rms_norm_eps=hp.rms_norm_eps, max_position_embeddings=hp.max_position_embeddings,
                    rope_parameters={"rope_type": "default", "rope_theta": hp.rope_theta},
                    tie_word_embeddings=hp.tie_embeddings)
        return Qwen3ASRConfig(audio_config=audio, text_config=text, audio_token_id=hp.audio_token_id,
                              tie_word_embeddings=hp.tie_embeddings)

    def build_torch_model(self, ckpt, hp: Hparams, parts: str = "all"):
        """HF modules with this checkpoint's weights (either layout): the reference model for parts="all",
        only the audio tower and projector (what ONNX export needs) for parts="encoder".

        Built without random initialisation (42 s -> 0.2 s at 0.6B); every parameter is then loaded from
        the checkpoint, and a parameter left unloaded is an error, so nothing random survives."""
        import torch
        from transformers import Qwen3ASRForConditionalGeneration
        from transformers.initialization import no_init_weights
        from transformers.models.qwen3_asr.modeling_qwen3_asr import Qwen3ASREncoder, Qwen3ASRMultiModalProjector

        config = self.hf_config(hp)
        with no_init_weights():
            if parts == "encoder":
                model = torch.nn.Module()
                model.audio_tower = Qwen3ASREncoder(config.audio_config)
                model.multi_modal_projector = Qwen3ASRMultiModalProjector(config)
                model.config = config
            else:
                model = Qwen3ASRForConditionalGeneration(config)
                model.tie_weights()  # not done under no_init_weights; ties lm_head when configured
        model.eval()
        prefix = "model." if parts == "encoder" else ""
        to_ckpt = self.canonical_to_checkpoint(hp)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for canonical in self.expected_tensors(hp):
                if parts == "encoder" and not canonical.startswith((AUDIO, PROJ)):
                    continue
                name = canonical[len(prefix):]
                params.pop(name).copy_(ckpt.load(to_ckpt(canonical)).to(torch.float32))
        if params:
            raise SmtError(f"{ckpt.root}: tensor {next(iter(params))}: the model needs it but it was not loaded")
        return model

    def encoder_specs(self, model, hp: Hparams):
        from smt_convert.archs.qwen3_asr.encoder_torch import encoder_export_specs

        root = getattr(model, "model", model)
        return encoder_export_specs(root.audio_tower, root.multi_modal_projector, model.config.audio_config)

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

    def split_metadata(self, hp: Hparams, files: dict[str, str]) -> dict:
        """The fallback file the board reads when config.json has no usable audio block."""
        return {
            "frontend_onnx": files["audio-frontend"],
            "backend_onnx": files["audio-backend"],
            "num_mel_bins": hp.num_mel_bins,
            "d_model": hp.d_model,
            "output_dim": hp.output_dim,
            "chunk_frames": 2 * hp.n_window,
            "rows_per_chunk": hp.rows_per_chunk,
            "attention_window_rows": hp.rows_per_chunk * (hp.n_window_infer // (2 * hp.n_window)),
        }

    def prompt_record(self, hp: Hparams) -> dict:
        """How the runtime (and the board) builds a prompt for this model; stored in the manifest."""
        return {
            "template": PROMPT_TEMPLATE,
            "template_fields": {"context": ""},
            "media_marker": "<__media__>",
            "media_start": "<|audio_start|>",
            "media_end": "<|audio_end|>",
            "media_placeholder": "<|audio_pad|>",
            "media_placeholder_id": hp.audio_token_id,
            "positions": "1d",
            "assistant_prefix_with_language": "language {language}<asr_text>",
            "languages": LANGUAGES,
            "answer_after": "<asr_text>",
            "stop_tokens": ["<|im_end|>", "<|endoftext|>"],
        }

    def preprocessing(self, hp: Hparams) -> dict:
        """Host feature extraction the board and the runtime apply (stored in the manifest)."""
        return {"num_mel_bins": hp.num_mel_bins, "sample_rate": 16000, "n_fft": 400, "hop_length": 160,
                "chunk_length": 30, "min_length": 8000, "window": "hann (periodic)", "mel_scale": "slaney",
                "log": "log10, clamp(max-8), (x+4)/4", "n_window": hp.n_window}

    def golden_media(self, hp: Hparams) -> np.ndarray:
        return self.golden_audio()

    def golden_fields(self) -> dict:
        return {}

    def golden_audio(self, seconds: float = 2.6, sample_rate: int = 16000) -> np.ndarray:
        """A deterministic, speech-like test signal (gliding harmonics with syllable-rate envelope + noise).

        2.6 s spans two full 100-frame chunks plus a partial one, so chunk padding is part of every golden."""
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
        noise = np.random.default_rng(1234).normal(0, 0.02, t.shape)
        return (0.3 * voice * envelope / 2 + noise).astype(np.float32)

    def hparams_record(self, hp: Hparams) -> dict:
        return asdict(hp)

    # ---- reference --------------------------------------------------------------------------------

    def reference_outputs(self, model, hp: Hparams, wave: np.ndarray, runtime_features: np.ndarray,
                          placeholder_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> dict:
        """What the Hugging Face model computes for the same audio and prompt (the independent reference).

        The model is given the runtime's log-mel (itself compared with HF's feature extractor) with the last
        100-frame chunk zero-padded, as the board host and the original Qwen implementation pad it. HF's
        processor instead pads with log-mel-of-silence values, which changes the last chunk's edge rows;
        `encoder_processor_path` measures that separately so it is reported, not hidden."""
        import torch
        from transformers import Qwen3ASRFeatureExtractor

        fe = Qwen3ASRFeatureExtractor(feature_size=hp.num_mel_bins, n_window=hp.n_window)
        feats = fe(wave, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
        chunk = 2 * hp.n_window
        n = runtime_features.shape[1]
        padded = np.zeros((1, runtime_features.shape[0], -(-n // chunk) * chunk), np.float32)
        padded[0, :, :n] = runtime_features
        mask = np.zeros((1, padded.shape[2]), np.int64)
        mask[0, :n] = 1
        features, features_mask = torch.from_numpy(padded), torch.from_numpy(mask)
        ids = torch.tensor([placeholder_ids])
        with torch.no_grad():
            same = model.get_audio_features(features, features_mask).pooler_output
            processor_path = model.get_audio_features(feats["input_features"], feats["attention_mask"]).pooler_output
            logits = model(input_ids=ids, input_features=features, input_features_mask=features_mask).logits[0]
            gen = model.generate(input_ids=ids, input_features=features, input_features_mask=features_mask,
                                 attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0])
        n_valid = int(feats["attention_mask"].sum())
        tokens = gen[0, ids.shape[1]:].tolist()
        while tokens and tokens[-1] in stop_ids:
            tokens.pop()
        return {"features": feats["input_features"][0, :, :n_valid].numpy(), "encoder_same_features": same.numpy(),
                "encoder_processor_path": processor_path.numpy(), "logits": logits.float().numpy(),
                "tokens": tokens}
