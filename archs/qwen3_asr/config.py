"""Qwen3-ASR hyperparameters: read from config.json (either layout) and validated before any heavy work.

Layouts: transformers-native (`text_config`/`audio_config` at the top) and the original Qwen release (the same
under `thinker_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from smt_convert.converters.validate import ConfigReader, TieConfig, read_rope, read_tie, require, require_grouped_heads
from smt_convert.runtime.audio import conv_rows
from smt_convert.runtime.errors import SmtError


@dataclass
class Hparams:
    layout: str  # "native" or "original"
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
    tie_config: TieConfig | None = field(default=None, compare=False)  # what config.json says
    tie_note: str | None = field(default=None, compare=False)  # why, when the weights decided it

    @property
    def conv_freq_bins(self) -> int:
        """Mel bins left after the three stride-2 convolutions (the conv_out input is channels x this)."""
        return (((self.num_mel_bins + 1) // 2 + 1) // 2 + 1) // 2

    @property
    def rows_per_chunk(self) -> int:
        """Encoder rows one 2*n_window-frame chunk yields (13 for the released models)."""
        return conv_rows(2 * self.n_window)

    @property
    def attention_window_rows(self) -> int:
        """Rows per attention window: HF `get_audio_cu_seqlens` uses rows-per-chunk * (n_window_infer // chunk).

        (HF takes the longest chunk's row count; a clip shorter than one chunk has fewer rows than any window,
        so the full-chunk value gives the same blocks in every case.)"""
        return self.rows_per_chunk * (self.n_window_infer // (2 * self.n_window))

    @property
    def rope_sections(self) -> list[int]:
        """`rope.dimension_sections` for llama.cpp's interleaved M-RoPE such that every rotary pair takes the
        t/h/w stream: with 1-D positions (text and audio) this is exactly the 1-D rope of the HF Qwen3 decoder.
        (Upstream writes [24, 20, 20, 0] from the original config; with it pairs 61 and 62 of 64 read the
        fourth stream, which llama.cpp sets to 0 for text, so logits drift slightly from HF's.)"""
        n = self.head_dim // 2
        return [math.ceil(n / 3), math.ceil((n - 1) / 3), math.ceil((n - 2) / 3), 0]


def read_hparams(ckpt, opts=None, name: str = "qwen3-asr") -> Hparams:
    """Hyperparameters of either layout; SmtError naming the file and field for anything unusable."""
    if opts is not None and opts.image_size is not None:
        raise SmtError(f"--image-size: {name} has no vision encoder")
    top = ConfigReader(ckpt.config, ckpt.config_path)
    layout = "original" if "thinker_config" in ckpt.config else "native"
    root = top.sub("thinker_config") if layout == "original" else top
    text, audio = root.sub("text_config"), root.sub("audio_config")
    rope = read_rope(text, default_theta=10000.0)
    require(
        rope.rope_type == "default" or "mrope_section" in rope.block.data,
        ckpt.config_path,
        rope.block.field("rope_type"),
        f"'{rope.rope_type}' scaling is not supported",
    )
    theta = rope.theta
    tie = _read_tie(top, root, text)
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
        tie_embeddings=tie.value,  # what the config says; the plugin settles it from the weights
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
        tie_config=tie,
    )
    path = ckpt.config_path
    require(
        hp.output_dim == hp.hidden_size,
        path,
        audio.field("output_dim"),
        f"projector output width {hp.output_dim} must equal the text hidden size {hp.hidden_size}",
    )
    require_grouped_heads(hp.num_heads, hp.num_kv_heads, path, text)
    require(hp.head_dim % 2 == 0, path, text.field("head_dim"), "must be even for rotary embeddings")
    require(
        hp.d_model % hp.encoder_heads == 0,
        path,
        audio.field("encoder_attention_heads"),
        f"{hp.encoder_heads} heads do not divide d_model {hp.d_model}",
    )
    require(
        hp.n_window_infer > 0 and hp.n_window_infer % (2 * hp.n_window) == 0,
        path,
        audio.field("n_window_infer"),
        f"{hp.n_window_infer} must be a positive multiple of 2 * n_window ({2 * hp.n_window})",
    )
    require(
        hp.num_mel_bins == 128, path, audio.field("num_mel_bins"), "the board runtime feeds 128-bin log-mel features"
    )
    require(
        hp.activation == "gelu",
        path,
        audio.field("activation_function"),
        f"'{hp.activation}' is not supported (expected gelu)",
    )
    require(
        hp.n_window == 50,
        path,
        audio.field("n_window"),
        f"{hp.n_window} gives {2 * hp.n_window}-frame chunks; the board feeds 100-frame chunks (n_window 50)",
    )
    require(
        0 <= hp.audio_token_id < hp.vocab_size,
        path,
        root.field("audio_token_id"),
        f"{hp.audio_token_id} is outside the vocabulary (vocab_size {hp.vocab_size})",
    )
    return hp


def _read_tie(top: ConfigReader, root: ConfigReader, text: ConfigReader) -> TieConfig:
    """At the top, in thinker_config or in text_config; absent means tied (both released sizes are).
    transformers' Qwen3ASRForConditionalGeneration reads the top level; its `save_pretrained` writes
    `text_config.tie_word_embeddings: false` under a tied top level."""
    return read_tie([top, root, text] if root is not top else [top, text], default=True)


def default_stem(hp: Hparams) -> str:
    size = {1024: "0.6B", 2048: "1.7B"}.get(hp.hidden_size)
    return f"Qwen3-ASR-{size}" if size else "Qwen3-ASR"
