"""Qwen3.5 vision tower + merger as one static ONNX graph, written node by node, the way the SMT board host
feeds it.

Input:  `pixel_values` float32 [1, 3, H, W] of raw 0..255 RGB (the host decodes and resizes, nothing else).
Output: `image_embeds` float32 [N, out_hidden_size], N = (H / (patch * merge)) * (W / (patch * merge)) rows in
        the order the Hugging Face model emits them (row-major over the merged ny x nx grid).

Everything the HF image processor and `Qwen3_5VisionModel` do between those two tensors is in the graph,
computed for the static size:

- normalisation: `x * rescale` then `(x - mean) / std` per channel (Qwen3.5: mean = std = 0.5);
- patchify + temporal duplication: HF repeats the frame `temporal_patch_size` times and applies a Conv3d with
  kernel [T, p, p]; on identical frames that is a Conv2d (stride p) with the kernel summed over T (a weight
  transform, computed when the file is saved);
- patch order: HF's processor emits patches in spatial-merge-block order (block_row, block_col, in_row,
  in_col); the graph convolves in raster order and gathers the rows into that order (a constant index);
- learned position embedding: the square table resampled bilinearly with align_corners=True to the patch
  grid, in merge-block order (HF `get_vision_interpolation_indices_and_weights`), a weight transform [S, hidden];
- 2-D rotary tables (row, col of each patch), constants [S, head_dim];
- the blocks with full attention over the one image, then the merger (LayerNorm, 2x2 rows concatenated,
  Linear, exact GELU, Linear).

Qwen3-VL's tower is this one plus DeepStack: after each block listed in `deepstack_visual_indexes` a merger of
its own (2x2 rows concatenated first, then LayerNorm over the concatenation) makes one more output of the same
[N, out_hidden_size] shape. Outputs are `image_embeds` then `deepstack_0..k-1`, the order the board's wrapper
concatenates row by row into [N, out_hidden_size x (1 + k)].
"""

from __future__ import annotations

import numpy as np

from smt_convert.archs.qwen3_5.config import VISION, Hparams, VisionHparams
from smt_convert.converters.plugin import EncoderOutput
from smt_convert.converters.onnx_graph import (
    EncoderGraph,
    GraphContext,
    Weights,
    blocked_attention,
    gelu,
    layer_norm,
    linear,
)

LN_EPS = 1e-6  # every LayerNorm of the tower and merger (nn.LayerNorm(..., eps=1e-6) in HF)


# ---- constants of the grid (numpy, from the config and the static size) ----------------------------------


def merge_order(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """(row, col) of each patch in HF's spatial-merge-block order: [S, 2] int64."""
    rows = np.arange(grid_h).reshape(grid_h // merge, merge, 1, 1)
    cols = np.arange(grid_w).reshape(1, 1, grid_w // merge, merge)
    rows = np.broadcast_to(rows, (grid_h // merge, merge, grid_w // merge, merge)).transpose(0, 2, 1, 3)
    cols = np.broadcast_to(cols, (grid_h // merge, merge, grid_w // merge, merge)).transpose(0, 2, 1, 3)
    return np.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(np.int64)


def _axis_taps(n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear align_corners=True taps (floor, floor + 1, clamped) and weights for n targets on a side table."""
    src = np.arange(n, dtype=np.float32) * np.float32(side - 1) / np.float32(max(n - 1, 1))
    floor = np.floor(src)
    taps = np.clip(floor.astype(np.int64)[:, None] + np.arange(2), 0, side - 1)
    weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - np.arange(2, dtype=np.float32)), 0, None)
    return taps, weights.astype(np.float32)


def interpolation(v: VisionHparams) -> tuple[np.ndarray, np.ndarray]:
    """Table rows and weights [S, 4] of each patch's position embedding, patches in merge-block order."""
    gh, gw = v.patch_grid
    pos = merge_order(gh, gw, v.spatial_merge_size)
    h_taps, h_w = _axis_taps(gh, v.side)
    w_taps, w_w = _axis_taps(gw, v.side)
    r, c = pos[:, 0], pos[:, 1]
    idx = (h_taps[r][:, :, None] * v.side + w_taps[c][:, None, :]).reshape(-1, 4)
    wts = (h_w[r][:, :, None] * w_w[c][:, None, :]).reshape(-1, 4)
    return idx, wts


def rotary_tables(v: VisionHparams) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [S, head_dim]: angles cat(row * inv_freq, col * inv_freq), twice (rotate_half layout), as
    `Qwen3_5VisionRotaryEmbedding` (inv_freq over head_dim / 2 in steps of 2)."""
    spatial = v.head_dim // 2
    inv_freq = (1.0 / (v.rope_theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))).astype(np.float32)
    pos = merge_order(*v.patch_grid, v.spatial_merge_size).astype(np.float32)
    freqs = (pos[:, :, None] * inv_freq).reshape(len(pos), -1)  # [S, (row freqs, col freqs)]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


# ---- weight transforms (run when the file is saved) -------------------------------------------------------


def summed_kernel(w: np.ndarray) -> np.ndarray:
    """Conv3d kernel [D, C, T, p, p] -> Conv2d kernel [D, C, p, p]: T identical frames."""
    return w.sum(axis=2, dtype=np.float32)


def position_table(v: VisionHparams):
    """The transform that resamples `pos_embed.weight` to this grid: [side^2, D] -> [S, D]."""
    idx, wts = interpolation(v)

    def resample(table: np.ndarray) -> np.ndarray:
        return (table[idx] * wts[:, :, None]).sum(axis=1, dtype=np.float32)

    return resample


# ---- the graph ----------------------------------------------------------------------------------------------


def _rotate_half(ctx: GraphContext, x, head_dim: int):
    op = ctx.op
    half = head_dim // 2
    first = op.Slice(x, ctx.ints([0]), ctx.ints([half]), ctx.ints([-1]))
    second = op.Slice(x, ctx.ints([half]), ctx.ints([head_dim]), ctx.ints([-1]))
    return op.Concat(op.Neg(second), first, axis=-1)


def _block(ctx: GraphContext, h, v: VisionHparams, prefix: str, cos, sin):
    op = ctx.op
    gh, gw = v.patch_grid
    s, d, heads, hd = gh * gw, v.hidden_size, v.num_heads, v.head_dim
    x = layer_norm(ctx, h, prefix + "norm1", LN_EPS)
    qkv = op.Transpose(op.Reshape(linear(ctx, x, prefix + "attn.qkv"), ctx.ints([s, 3, heads, hd])), perm=[1, 2, 0, 3])
    q, k, val = (op.Gather(qkv, ctx.const(np.array(i, np.int64)), axis=0) for i in range(3))  # [heads, S, hd]
    q = op.Add(op.Mul(q, cos), op.Mul(_rotate_half(ctx, q, hd), sin))
    k = op.Add(op.Mul(k, cos), op.Mul(_rotate_half(ctx, k, hd), sin))
    out = blocked_attention(ctx, q, k, val, hd**-0.5, heads, s)
    out = op.Reshape(op.Transpose(out, perm=[1, 0, 2]), ctx.ints([s, d]))
    h = op.Add(h, linear(ctx, out, prefix + "attn.proj"))
    x = layer_norm(ctx, h, prefix + "norm2", LN_EPS)
    x = linear(ctx, gelu(ctx, linear(ctx, x, prefix + "mlp.linear_fc1"), v.gelu), prefix + "mlp.linear_fc2")
    return op.Add(h, x)


def build_vision(ctx: GraphContext, v: VisionHparams) -> None:
    """[1, 3, H, W] raw pixels -> [N, out_hidden_size]; see the module notes."""
    op = ctx.op
    h_px, w_px = v.image_size
    gh, gw = v.patch_grid
    s, d, m = gh * gw, v.hidden_size, v.spatial_merge_size
    mean, std = np.asarray(v.image_mean, np.float32), np.asarray(v.image_std, np.float32)

    x = ctx.input("pixel_values", [1, 3, h_px, w_px])
    x = op.Add(
        op.Mul(x, ctx.const((v.rescale_factor / std).reshape(1, 3, 1, 1))), ctx.const((-mean / std).reshape(1, 3, 1, 1))
    )
    p = v.patch_size
    kernel = ctx.param(VISION + "patch_embed.proj.weight", transform=summed_kernel, shape=(d, 3, p, p))
    x = op.Conv(x, kernel, ctx.param(VISION + "patch_embed.proj.bias"), kernel_shape=[p, p], strides=[p, p])
    x = op.Transpose(op.Reshape(x, ctx.ints([d, s])), perm=[1, 0])  # raster [S, D]
    pos = merge_order(gh, gw, m)
    h = op.Gather(x, ctx.const(pos[:, 0] * gw + pos[:, 1]), axis=0)  # merge-block order
    h = op.Add(h, ctx.param(VISION + "pos_embed.weight", transform=position_table(v), shape=(s, d)))

    cos_table, sin_table = rotary_tables(v)
    cos, sin = ctx.const(cos_table[None]), ctx.const(sin_table[None])  # [1, S, hd], broadcast over heads
    deepstack = []
    for i in range(v.depth):
        h = _block(ctx, h, v, f"{VISION}blocks.{i}.", cos, sin)
        if i in v.deepstack_indexes:
            j = v.deepstack_indexes.index(i)
            deepstack.append(_merger(ctx, h, v, f"{VISION}deepstack_merger_list.{j}.", postshuffle_norm=True))

    rows = [s // (m * m), v.out_hidden_size]
    ctx.output(_merger(ctx, h, v, VISION + "merger.", postshuffle_norm=False), "image_embeds", rows)
    for j, x in enumerate(deepstack):
        ctx.output(x, f"deepstack_{j}", rows)


def _merger(ctx: GraphContext, h, v: VisionHparams, prefix: str, postshuffle_norm: bool):
    """LayerNorm, 2x2 rows concatenated (or the other way round: DeepStack), Linear, exact GELU, Linear."""
    op, m = ctx.op, v.spatial_merge_size
    merged = [v.patch_grid[0] * v.patch_grid[1] // (m * m), v.hidden_size * m * m]
    if postshuffle_norm:
        x = layer_norm(ctx, op.Reshape(h, ctx.ints(merged)), prefix + "norm", LN_EPS)
    else:
        x = op.Reshape(layer_norm(ctx, h, prefix + "norm", LN_EPS), ctx.ints(merged))
    return linear(ctx, gelu(ctx, linear(ctx, x, prefix + "linear_fc1")), prefix + "linear_fc2")


# ---- the plugin's hook --------------------------------------------------------------------------------------


def vision_shapes(v: VisionHparams) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every vision tensor the graph reads."""
    d, f, merged = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size**2
    shapes = {
        "patch_embed.proj.weight": (d, 3, v.temporal_patch_size, v.patch_size, v.patch_size),
        "patch_embed.proj.bias": (d,),
        "pos_embed.weight": (v.num_position_embeddings, d),
        "merger.norm.weight": (d,),
        "merger.norm.bias": (d,),
        "merger.linear_fc1.weight": (merged, merged),
        "merger.linear_fc1.bias": (merged,),
        "merger.linear_fc2.weight": (v.out_hidden_size, merged),
        "merger.linear_fc2.bias": (v.out_hidden_size,),
    }
    block = {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "norm2.weight": (d,),
        "norm2.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "mlp.linear_fc1.weight": (f, d),
        "mlp.linear_fc1.bias": (f,),
        "mlp.linear_fc2.weight": (d, f),
        "mlp.linear_fc2.bias": (d,),
    }
    for i in range(v.depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    for j in range(len(v.deepstack_indexes)):
        shapes.update(
            {
                f"deepstack_merger_list.{j}.norm.weight": (merged,),
                f"deepstack_merger_list.{j}.norm.bias": (merged,),
                **{f"deepstack_merger_list.{j}.{k}": shapes[f"merger.{k}"] for k in MERGER_LINEARS},
            }
        )
    return {VISION + k: s for k, s in shapes.items()}


MERGER_LINEARS = ("linear_fc1.weight", "linear_fc1.bias", "linear_fc2.weight", "linear_fc2.bias")


def check_images(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic images [1, 3, H, W] float32 in 0..255 (integral): random, gradient, photo-like."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    gradient = np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy])
    blobs = [
        200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08) + 30 * c
        for c, (cy, cx) in enumerate(rng.random((3, 2)))
    ]
    rect = (yy > 0.3) & (yy < 0.55) & (xx > 0.2) & (xx < 0.7)
    photo = np.where(rect, np.array([240.0, 220.0, 60.0])[:, None, None], np.stack(blobs))
    photo = photo + 20 * np.sin(40 * xx + 25 * yy) + 8 * rng.standard_normal((3, height, width))
    images = {"random": rng.random((3, height, width)) * 255, "gradient": gradient, "photo": photo}
    return {k: np.clip(np.rint(a), 0, 255).astype(np.float32)[None] for k, a in images.items()}


def encoder_output(v: VisionHparams, stem: str) -> EncoderOutput:
    """The vision ONNX file as the plan describes it: one raw-pixel input, `image_embeds` and any DeepStack outputs,
    each [N, out_hidden_size]."""
    h, w = v.image_size
    rows = [v.grid[0] * v.grid[1], v.out_hidden_size]
    names = ["image_embeds"] + [f"deepstack_{j}" for j in range(len(v.deepstack_indexes))]
    params = sum(int(np.prod(s)) for s in vision_shapes(v).values())
    size = f"{h}" if h == w else f"{h}x{w}"
    return EncoderOutput(
        "vision",
        f"{stem}-vision-{size}.onnx",
        params,
        [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}],
        [{"name": n, "shape": rows, "dtype": "float32"} for n in names],
    )


def build_encoders(weights: Weights, hp: Hparams, precision: str) -> list[EncoderGraph]:
    """The one vision graph (none for a text-only checkpoint). Static, so the writer does not run it: the golden
    run right after writing does (and the board-vs-hf row once more); every extra run of a large tower at 768x768
    costs tens of seconds. The tests run it on other images against transformers."""
    if hp.vision is None:
        return []
    ctx = GraphContext("qwen3_5_vision", weights, precision)
    build_vision(ctx, hp.vision)
    return [EncoderGraph("vision", ctx.model())]
