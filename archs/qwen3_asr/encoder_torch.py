"""Qwen3-ASR audio encoder split into the two ONNX graphs the SMT board host runs.

frontend: one 100-frame mel chunk [1, 128, 100] -> [1, 13, d_model]  (conv stack + positions)
backend:  the concatenated rows  [1, T, d_model] -> [T, output_dim]  (windowed transformer + projector)

The host does the chunking and row trimming (runtime/audio_encoder.py); these wrappers reuse the HF
`Qwen3ASREncoder` and projector modules (weights shared, not copied) so they are exact by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smt_convert.converters.onnx_export import OnnxSpec
from smt_convert.runtime.audio import conv_rows

# Additive key-padding mask. Finite in fp16 (max 65504) with headroom for score + mask, and
# exp(-3e4 - max) is exactly 0 in fp32/fp16, so padded keys get no weight.
MASK_VALUE = -3.0e4


def attention_window_rows(audio_config) -> int:
    """Rows per attention window: HF get_audio_cu_seqlens uses 13 * (n_window_infer // (2 * n_window)).

    (HF takes the longest chunk's row count; a clip shorter than one chunk has fewer rows than any
    window, so the full-chunk value gives the same blocks in every case.)
    """
    chunk = 2 * audio_config.n_window
    ratio = audio_config.n_window_infer // chunk
    if ratio < 1:
        raise ValueError(f"n_window_infer {audio_config.n_window_infer} < chunk {chunk}")
    return conv_rows(chunk) * ratio


class AudioFrontend(nn.Module):
    """Conv stack of one mel chunk: [1, mel, 2*n_window] -> [1, rows, d_model], positions added."""

    def __init__(self, audio_tower):
        super().__init__()
        cfg = audio_tower.config
        self.num_mel_bins = cfg.num_mel_bins
        self.chunk_frames = 2 * cfg.n_window
        self.rows = conv_rows(self.chunk_frames)
        self.conv2d1 = audio_tower.conv2d1
        self.conv2d2 = audio_tower.conv2d2
        self.conv2d3 = audio_tower.conv2d3
        self.conv_out = audio_tower.conv_out
        pos = audio_tower.positional_embedding.positional_embedding[: self.rows]
        self.register_buffer("positions", pos.detach().clone().float(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.unsqueeze(1)  # [B, 1, mel, time]
        x = F.gelu(self.conv2d1(x))
        x = F.gelu(self.conv2d2(x))
        x = F.gelu(self.conv2d3(x))
        b, c, f, t = x.shape
        # HF layout: (time, channels * freq), channel-major
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * f)
        return self.conv_out(x) + self.positions


class AudioBackend(nn.Module):
    """Transformer layers + ln_post + projector over [1, T, d_model] -> [T, output_dim], T dynamic.

    Attention is block-diagonal over consecutive windows of W rows (the last one shorter), built in the
    graph from T: pad T up to a multiple of W, attend within [nW, W] blocks with an additive
    key-padding mask. The board's optional [1, 1, T, T] mask input is deliberately not declared: the
    host fills it with zeros (full attention, which is wrong for T > W) and it grows as T^2.
    """

    def __init__(self, audio_tower, projector):
        super().__init__()
        cfg = audio_tower.config
        self.window = attention_window_rows(cfg)
        self.num_heads = cfg.encoder_attention_heads
        self.d_model = cfg.d_model
        self.head_dim = self.d_model // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.layers = audio_tower.layers
        self.ln_post = audio_tower.ln_post
        self.projector = projector

    def _attention(self, attn, x: torch.Tensor, mask: torch.Tensor, n_blocks) -> torch.Tensor:
        shape = (n_blocks, self.window, self.num_heads, self.head_dim)
        q = (attn.q_proj(x) * self.scaling).reshape(shape).transpose(1, 2)  # [nW, H, W, hd]
        k = attn.k_proj(x).reshape(shape).transpose(1, 2)
        v = attn.v_proj(x).reshape(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) + mask  # [nW, H, W, W]
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(-1, self.d_model)
        return attn.out_proj(out)

    def forward(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        h = audio_embeds[0]  # [T, d]
        t = h.shape[0]
        padded_len = (t + self.window - 1) // self.window * self.window
        h = F.pad(h, (0, 0, 0, padded_len - t))
        n_blocks = padded_len // self.window
        pos = torch.arange(padded_len, device=h.device)
        mask = torch.where(pos < t, 0.0, MASK_VALUE).to(h.dtype).reshape(n_blocks, 1, 1, self.window)
        for layer in self.layers:
            residual = h
            y = self._attention(layer.self_attn, layer.self_attn_layer_norm(h), mask, n_blocks)
            h = residual + y
            residual = h
            y = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
            h = residual + y
        h = self.ln_post(h[:t])
        return self.projector(h)


def encoder_export_specs(audio_tower, projector, audio_config=None) -> list[OnnxSpec]:
    """Frontend and backend specs for converters.onnx_export, with extra lengths to check dynamic T."""
    cfg = audio_config or audio_tower.config
    frontend = AudioFrontend(audio_tower).eval()
    backend = AudioBackend(audio_tower, projector).eval()
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(1, cfg.num_mel_bins, 2 * cfg.n_window, generator=gen)
    window = backend.window
    # example T spans two windows (one partial) so nothing about T == example is baked in
    lengths = sorted({13, 50, window, window + 1, 250, 400})

    def rows(n):
        return (torch.randn(1, n, cfg.d_model, generator=gen),)

    return [
        OnnxSpec(
            name="encoder-frontend",
            module=frontend,
            example_inputs=(mel,),
            input_names=["input_features"],
            output_names=["chunk_embeds"],
            dynamic_axes=None,
            check_inputs=[(torch.zeros_like(mel),), (torch.randn(mel.shape, generator=gen) * 2 - 1,)],
        ),
        OnnxSpec(
            name="encoder-backend",
            module=backend,
            example_inputs=rows(window + 33),
            input_names=["audio_embeds"],
            output_names=["audio_features"],
            dynamic_axes={"audio_embeds": {1: "T"}, "audio_features": {0: "T"}},
            check_inputs=[rows(n) for n in lengths],
        ),
    ]
