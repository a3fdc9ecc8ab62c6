"""Qwen3-ASR's audio encoder as the two ONNX graphs the SMT board host runs, written node by node.

frontend: one 100-frame mel chunk [1, 128, 100] -> [1, 13, d_model]   (three stride-2 convs + GELU, conv_out,
          the fixed sinusoidal positions of the chunk's rows)
backend:  the concatenated rows [1, T, d_model] -> [T, output_dim], T dynamic   (transformer layers with
          attention block-diagonal over windows of W rows, ln_post, projector linear_1 -> GELU -> linear_2)

The host does the chunking and the row trimming (runtime/audio_encoder.py). The math follows transformers'
`Qwen3ASREncoder` / `Qwen3ASRMultiModalProjector`; tensor names are the canonical (native) ones.
"""

from __future__ import annotations

import numpy as np

from smt_convert.archs.qwen3_asr.config import Hparams
from smt_convert.converters.onnx_graph import EncoderGraph, GraphContext, Weights, attention, gelu, layer_norm, linear

AUDIO = "model.audio_tower."
PROJ = "model.multi_modal_projector."

# Additive key-padding mask: finite in fp16 (max 65504) with headroom for score + mask, and exp(-3e4 - max) is
# exactly 0, so padded keys get no weight.
MASK_VALUE = -3.0e4
SINUSOID_TIMESCALE = 10000.0
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which HF's encoder layers and ln_post use


def sinusoid_positions(rows: int, channels: int) -> np.ndarray:
    """HF `SinusoidsPositionEmbedding` rows 0..rows-1 ([sin | cos]), computed in float32 as torch does."""
    increment = np.float32(np.log(SINUSOID_TIMESCALE) / (channels // 2 - 1))
    inv_timescales = np.exp(-increment * np.arange(channels // 2, dtype=np.float32))
    scaled = np.arange(rows, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


# ---- frontend --------------------------------------------------------------------------------------------


def conv_gelu(ctx: GraphContext, x, prefix: str):
    """nn.Conv2d(k=3, s=2, p=1) then exact GELU."""
    y = ctx.op.Conv(
        x,
        ctx.param(f"{prefix}.weight"),
        ctx.param(f"{prefix}.bias"),
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    )
    return gelu(ctx, y)


def build_frontend(ctx: GraphContext, hp: Hparams) -> None:
    """[1, mel, 2*n_window] -> [1, rows, d_model]: HF's per-chunk CNN, conv_out and positions."""
    op = ctx.op
    chunk, rows, d = 2 * hp.n_window, hp.rows_per_chunk, hp.d_model
    x = ctx.input("input_features", [1, hp.num_mel_bins, chunk])
    x = op.Unsqueeze(x, ctx.ints([1]))  # [1, 1, mel, time]
    for name in ("conv2d1", "conv2d2", "conv2d3"):
        x = conv_gelu(ctx, x, AUDIO + name)  # [1, C, freq, rows]
    x = op.Transpose(x, perm=[0, 3, 1, 2])  # [1, rows, C, freq]: channel-major rows
    x = op.Reshape(x, ctx.ints([1, rows, hp.downsample_hidden_size * hp.conv_freq_bins]))
    x = linear(ctx, x, AUDIO + "conv_out", bias=False)
    x = op.Add(x, ctx.const(sinusoid_positions(rows, d)))
    ctx.output(x, "chunk_embeds", [1, rows, d])


# ---- backend ---------------------------------------------------------------------------------------------


def pad_to_windows(ctx: GraphContext, h, window: int):
    """Pad [T, d] rows with zeros to a multiple of `window`; returns (padded rows, T as a [1] int64, the
    additive float32 key mask [nW, 1, 1, window] that hides the padding)."""
    op = ctx.op
    t = op.Shape(h, start=0, end=1)
    w = ctx.ints([window])
    pad = op.Mod(op.Sub(w, op.Mod(t, w)), w)
    padded = op.Pad(h, op.Concat(ctx.ints([0, 0]), pad, ctx.ints([0]), axis=0))
    total = op.Squeeze(op.Add(t, pad), ctx.ints([0]))
    positions = op.Range(ctx.const(np.int64(0)), total, ctx.const(np.int64(1)))
    keep = op.Less(positions, op.Squeeze(t, ctx.ints([0])))
    mask = op.Where(keep, ctx.const(np.float32(0.0), fp32=True), ctx.const(np.float32(MASK_VALUE), fp32=True))
    return padded, t, op.Reshape(mask, ctx.ints([-1, 1, 1, window]))


def windowed_self_attention(ctx: GraphContext, x, prefix: str, hp: Hparams, mask):
    """Multi-head attention within each window: [nW*W, d] -> [nW*W, d]."""
    op = ctx.op
    heads, head_dim, window = hp.encoder_heads, hp.d_model // hp.encoder_heads, hp.attention_window_rows

    def split_heads(name):  # [nW*W, d] -> [nW, H, W, hd]
        y = op.Reshape(linear(ctx, x, f"{prefix}.{name}"), ctx.ints([-1, window, heads, head_dim]))
        return op.Transpose(y, perm=[0, 2, 1, 3])

    out = attention(
        ctx, split_heads("q_proj"), split_heads("k_proj"), split_heads("v_proj"), scale=head_dim**-0.5, mask=mask
    )
    out = op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), ctx.ints([-1, hp.d_model]))
    return linear(ctx, out, f"{prefix}.out_proj")


def encoder_layer(ctx: GraphContext, h, prefix: str, hp: Hparams, mask):
    """Qwen3ASRAudioEncoderLayer: pre-LayerNorm attention and GELU MLP, each with a residual."""
    op, eps = ctx.op, LAYER_NORM_EPS
    h = op.Add(
        h,
        windowed_self_attention(
            ctx, layer_norm(ctx, h, f"{prefix}.self_attn_layer_norm", eps), f"{prefix}.self_attn", hp, mask
        ),
    )
    y = gelu(ctx, linear(ctx, layer_norm(ctx, h, f"{prefix}.final_layer_norm", eps), f"{prefix}.fc1"))
    return op.Add(h, linear(ctx, y, f"{prefix}.fc2"))


def build_backend(ctx: GraphContext, hp: Hparams) -> None:
    """[1, T, d_model] -> [T, output_dim]: the layers over windows of W rows, ln_post, the projector.

    The board's optional [1, 1, T, T] mask input is deliberately not declared: the host fills it with zeros
    (full attention, wrong for T > W) and it grows as T^2; the windows are built here from T."""
    op = ctx.op
    x = ctx.input("audio_embeds", [1, "T", hp.d_model])
    h, t, mask = pad_to_windows(ctx, op.Squeeze(x, ctx.ints([0])), hp.attention_window_rows)
    for i in range(hp.encoder_layers):
        h = encoder_layer(ctx, h, f"{AUDIO}layers.{i}", hp, mask)
    h = op.Slice(h, ctx.ints([0]), t, ctx.ints([0]))  # drop the padding rows
    h = layer_norm(ctx, h, AUDIO + "ln_post", LAYER_NORM_EPS)
    h = linear(ctx, gelu(ctx, linear(ctx, h, PROJ + "linear_1")), PROJ + "linear_2")
    ctx.output(h, "audio_features", ["T", hp.output_dim])


# ---- both, as the plugin hands them to the writer --------------------------------------------------------


def check_lengths(hp: Hparams) -> list[int]:
    """Backend lengths the writer runs the file on (besides its warm-up at T = 1, inside one window): exactly one
    window (no padding), one row more, and several windows with a partial last one."""
    w = hp.attention_window_rows
    return [w, w + 1, 2 * w + 7]


def build_encoders(weights: Weights, hp: Hparams, precision: str) -> list[EncoderGraph]:
    rng = np.random.default_rng(0)
    front = GraphContext("qwen3_asr_audio_frontend", weights, precision)
    build_frontend(front, hp)
    mel = [1, hp.num_mel_bins, 2 * hp.n_window]
    back = GraphContext("qwen3_asr_audio_backend", weights, precision)
    build_backend(back, hp)
    return [
        EncoderGraph(
            "audio-frontend",
            front.model(),
            check_feeds=[{"input_features": rng.uniform(-1.5, 1.5, mel).astype(np.float32)}],
        ),
        EncoderGraph(
            "audio-backend",
            back.model(),
            check_feeds=[
                {"audio_embeds": rng.standard_normal((1, n, hp.d_model)).astype(np.float32)} for n in check_lengths(hp)
            ],
            dynamic_axes={"audio_embeds": {1: "T"}, "audio_features": {0: "T"}},
        ),
    ]
