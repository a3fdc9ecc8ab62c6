"""PaddleOCR-VL's vision encoder (SigLIP-style NaViT) + `mlp_AR` projector as one static ONNX graph, node by node.

Input:  `pixel_values` float32 [1, 3, H, W], ALREADY rescaled and normalised by the host (`x * rescale_factor`,
        then `(x - image_mean) / image_std`: config.json's `vision_preprocess`). H, W multiples of 28.
Output: `image_embeds` [N, text_hidden], N = (H / 28) * (W / 28), rows row-major over the merged grid: exactly
        the rows Hugging Face's `get_image_features` returns for that image.

The math of transformers 5 `modeling_paddleocr_vl.py`:
- patchify: HF's processor cuts the image into 14 x 14 patches in RASTER order and runs Conv2d(3, d, 14,
  stride 14) on each; one Conv over the whole image gives the same rows, already in raster order (PaddleOCR
  merges 2 x 2 patches only in the projector, after the encoder);
- learned position embedding: the square table (27 x 27 for the released 384/14) resampled to the patch grid,
  bilinear with half-pixel centres and border clamping (`get_vision_interpolation_indices_and_weights`,
  align_corners=False); a weight-derived constant, computed when the model is saved;
- 2-D ("axial") rotary: per patch (row, col), inv_freq = 1 / theta^(arange(0, hd/2, 2) / (hd/2)), angles
  cat(row * inv_freq, col * inv_freq) twice over head_dim, rotate_half; applied in float32 as HF does;
- the layers (pre-LN, full attention over the one image, MLP with the config's GELU), `post_layernorm`; the
  attention runs in blocks of query rows when its scores would exceed 64 MB (`converters.onnx_graph.blocked_attention`);
- projector: LayerNorm (eps 1e-5), each 2 x 2 block concatenated in (in_row, in_col) order into one 4d row,
  blocks row-major, Linear -> GELU (erf) -> Linear.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from smt_convert.archs.paddleocr_vl.config import PROJECTOR, VISION, VISION_ACTS, Hparams, VisionHparams
from smt_convert.converters.onnx_graph import (
    EncoderGraph,
    GraphContext,
    Weights,
    blocked_attention,
    gelu,
    layer_norm,
    linear,
)

EMBED = VISION + "embeddings."
PROJECTOR_LN_EPS = 1e-5  # PaddleOCRProjector.pre_norm is built with this eps, whatever the config says


def vision_shapes(v: VisionHparams, text_hidden: int) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every vision and projector tensor the graph reads."""
    d, f, merged = v.hidden_size, v.intermediate_size, v.hidden_size * v.merge_size**2
    shapes = {
        EMBED + "patch_embedding.weight": (d, 3, v.patch_size, v.patch_size),
        EMBED + "patch_embedding.bias": (d,),
        EMBED + "position_embedding.weight": (v.table_side**2, d),
        VISION + "post_layernorm.weight": (d,),
        VISION + "post_layernorm.bias": (d,),
        PROJECTOR + "pre_norm.weight": (d,),
        PROJECTOR + "pre_norm.bias": (d,),
        PROJECTOR + "linear_1.weight": (merged, merged),
        PROJECTOR + "linear_1.bias": (merged,),
        PROJECTOR + "linear_2.weight": (text_hidden, merged),
        PROJECTOR + "linear_2.bias": (text_hidden,),
    }
    layer = {
        "layer_norm1.weight": (d,),
        "layer_norm1.bias": (d,),
        "layer_norm2.weight": (d,),
        "layer_norm2.bias": (d,),
        "mlp.fc1.weight": (f, d),
        "mlp.fc1.bias": (f,),
        "mlp.fc2.weight": (d, f),
        "mlp.fc2.bias": (d,),
    }
    for proj in ("q", "k", "v", "out"):
        layer.update({f"self_attn.{proj}_proj.weight": (d, d), f"self_attn.{proj}_proj.bias": (d,)})
    for i in range(v.num_layers):
        shapes.update({f"{VISION}encoder.layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


# ---- constants of the grid (numpy, at build time) ------------------------------------------------------------


def raster_positions(rows: int, cols: int) -> np.ndarray:
    """(row, col) of each patch in raster order: [S, 2] (HF `get_vision_position_ids(grid, 1)`)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([r, c], axis=1)


def axis_taps(n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear align_corners=False taps (floor, floor+1, clamped to the border) and their weights, for n
    targets over a `side`-long table axis; float32 arithmetic as HF's `_interpolation_axis_taps_weights`."""
    src = (np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(side) / np.float32(n) - np.float32(0.5)
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32)), 0, None)
    return taps, weights.astype(np.float32)


def resample_position_table(table: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The square [side^2, d] table resampled to rows x cols patches, raster order: [rows*cols, d]."""
    side = int(round(table.shape[0] ** 0.5))
    h_taps, h_w = axis_taps(rows, side)
    w_taps, w_w = axis_taps(cols, side)
    r, c = raster_positions(rows, cols).T
    index = (h_taps[r][:, :, None] * side + w_taps[c][:, None, :]).reshape(-1, 4)
    weight = (h_w[r][:, :, None] * w_w[c][:, None, :]).reshape(-1, 4)
    table = table.astype(np.float32)
    return sum(table[index[:, k]] * weight[:, k, None] for k in range(4)).astype(np.float32)


def rotary_tables(v: VisionHparams) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [S, 1, head_dim] (broadcast over heads): cat(row * inv_freq, col * inv_freq) twice."""
    quarter = v.head_dim // 2
    inv_freq = 1.0 / (np.float32(v.rope_theta) ** (np.arange(0, quarter, 2, dtype=np.float32) / np.float32(quarter)))
    pos = raster_positions(*v.patch_grid).astype(np.float32)
    freqs = (pos[:, :, None] * inv_freq.astype(np.float32)).reshape(len(pos), -1)  # [S, row freqs | col freqs]
    angles = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ---- layers ----------------------------------------------------------------------------------------------------


def apply_rotary(ctx: GraphContext, x, cos, sin, head_dim: int):
    """x * cos + rotate_half(x) * sin over [S, heads, head_dim], in float32 (HF casts q and k up for this)."""
    op = ctx.op
    x = ctx.to_fp32(x)
    half = head_dim // 2
    first = op.Slice(x, ctx.ints([0]), ctx.ints([half]), ctx.ints([-1]))
    second = op.Slice(x, ctx.ints([half]), ctx.ints([head_dim]), ctx.ints([-1]))
    rotated = op.Concat(op.Neg(second), first, axis=-1)
    return ctx.from_fp32(op.Add(op.Mul(x, cos), op.Mul(rotated, sin)))


def self_attention(ctx: GraphContext, x, prefix: str, v: VisionHparams, rope):
    """Full multi-head attention over the image's patches with 2-D rotary q/k: [S, d] -> [S, d]."""
    op = ctx.op
    heads, hd = v.num_heads, v.head_dim

    def project(name, rotary):  # -> [heads, S, hd]
        y = op.Reshape(linear(ctx, x, f"{prefix}.{name}"), ctx.ints([-1, heads, hd]))
        y = apply_rotary(ctx, y, *rope, hd) if rotary else y  # type: ignore[call-arg]  # rope is (cos, sin); mypy counts *rope as filling head_dim
        return op.Transpose(y, perm=[1, 0, 2])

    out = blocked_attention(
        ctx,
        project("q_proj", True),
        project("k_proj", True),
        project("v_proj", False),
        scale=hd**-0.5,
        heads=heads,
        length=v.patch_grid[0] * v.patch_grid[1],
    )
    out = op.Reshape(op.Transpose(out, perm=[1, 0, 2]), ctx.ints([-1, v.hidden_size]))
    return linear(ctx, out, f"{prefix}.out_proj")


def encoder_layer(ctx: GraphContext, h, prefix: str, v: VisionHparams, rope):
    """PaddleOCRVisionEncoderLayer: pre-LayerNorm attention and GELU MLP, each with a residual."""
    op = ctx.op
    h = op.Add(
        h,
        self_attention(
            ctx, layer_norm(ctx, h, f"{prefix}.layer_norm1", v.layer_norm_eps), f"{prefix}.self_attn", v, rope
        ),
    )
    y = linear(ctx, layer_norm(ctx, h, f"{prefix}.layer_norm2", v.layer_norm_eps), f"{prefix}.mlp.fc1")
    y = linear(ctx, gelu(ctx, y, VISION_ACTS[v.hidden_act]), f"{prefix}.mlp.fc2")
    return op.Add(h, y)


def project(ctx: GraphContext, h, v: VisionHparams):
    """PaddleOCRProjector: LayerNorm, 2 x 2 blocks -> one row ((0,0), (0,1), (1,0), (1,1)), blocks row-major, MLP."""
    op = ctx.op
    (rows, cols), m, d = v.patch_grid, v.merge_size, v.hidden_size
    h = layer_norm(ctx, h, PROJECTOR + "pre_norm", PROJECTOR_LN_EPS)
    h = op.Transpose(op.Reshape(h, ctx.ints([rows // m, m, cols // m, m, d])), perm=[0, 2, 1, 3, 4])
    h = op.Reshape(h, ctx.ints([-1, m * m * d]))
    return linear(ctx, gelu(ctx, linear(ctx, h, PROJECTOR + "linear_1")), PROJECTOR + "linear_2")


def build_vision(ctx: GraphContext, v: VisionHparams, text_hidden: int) -> None:
    """[1, 3, H, W] host-normalised pixels -> [N, text_hidden]."""
    op = ctx.op
    (height, width), (rows, cols), p, d = v.image_size, v.patch_grid, v.patch_size, v.hidden_size
    x = ctx.input("pixel_values", [1, 3, height, width])
    x = op.Conv(
        x,
        ctx.param(EMBED + "patch_embedding.weight"),
        ctx.param(EMBED + "patch_embedding.bias"),
        kernel_shape=[p, p],
        strides=[p, p],
    )  # [1, d, rows, cols]
    h = op.Transpose(op.Reshape(x, ctx.ints([d, rows * cols])), perm=[1, 0])  # [S, d], raster order
    table = ctx.param(
        EMBED + "position_embedding.weight",
        shape=(rows * cols, d),
        transform=partial(resample_position_table, rows=rows, cols=cols),
    )
    h = op.Add(h, table)
    cos, sin = rotary_tables(v)
    rope = (ctx.const(cos, fp32=True), ctx.const(sin, fp32=True))
    for i in range(v.num_layers):
        h = encoder_layer(ctx, h, f"{VISION}encoder.layers.{i}", v, rope)
    h = layer_norm(ctx, h, VISION + "post_layernorm", v.layer_norm_eps)
    ny, nx = v.grid
    ctx.output(project(ctx, h, v), "image_embeds", [ny * nx, text_hidden])


def build_vision_graph(weights: Weights, hp: Hparams, precision: str) -> EncoderGraph:
    """The vision EncoderGraph. No extra check feeds: every axis is static, so the golden run right after writing
    already runs the only shape there is, and at the released size each run is ~3.5 TFLOP (minutes here)."""
    ctx = GraphContext("paddleocr_vl_vision", weights, precision)
    build_vision(ctx, hp.vision, hp.text.hidden_size)
    return EncoderGraph("vision", ctx.model())
