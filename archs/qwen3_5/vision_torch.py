"""Qwen3.5 vision tower + merger as one static ONNX graph, the way the SMT board host feeds it.

Input:  one float32 tensor [1, 3, H, W] of raw 0..255 RGB (the host decodes and resizes, nothing else).
Output: [N, out_hidden_size], N = (H / (patch * merge)) * (W / (patch * merge)) rows in the order the
        Hugging Face model emits them (row-major over the merged ny x nx grid).

Everything the HF image processor and `Qwen3_5VisionModel` do between those two tensors is in the graph,
computed for the export size:

- normalisation: `x * (1/255)` then `(x - mean) / std` per channel (HF: rescale then normalize;
  Qwen3.5's preprocessor_config.json has image_mean = image_std = [0.5, 0.5, 0.5]);
- patchify + temporal duplication: HF repeats the single frame `temporal_patch_size` times and applies a
  Conv3d with kernel [T, p, p]. With identical frames that is exactly a Conv2d (stride p) with the Conv3d
  kernel summed over T, which is what the graph does (half the MACs, no duplicated input);
- patch order: HF's processor emits patches in spatial-merge-block order, i.e. the flat index runs over
  (block_row, block_col, in_row, in_col) with merge x merge blocks (Qwen2-VL processor `patchify`:
  transpose (gh/m, gw/m, m, m, C, p, p)); the graph computes the Conv2d in raster order and gathers the
  rows into that order with a constant index;
- learned position embedding: the square `num_grid_per_side^2` table resampled bilinearly with
  align_corners=True to the gh x gw patch grid (HF `fast_pos_embed_interpolate` /
  `get_vision_interpolation_indices_and_weights(mode="bilinear", align_corners=True)`), in merge-block
  order: a constant [S, hidden] computed at export from the table in float32, same arithmetic as HF;
- 2-D rotary tables (row, col of each patch, merge-block order), constants [S, head_dim];
- the blocks with full (unmasked) attention over the one image, then the HF merger module itself.

Weights are the HF modules' own (shared, not copied), so a checkpoint loaded into `Qwen3_5VisionModel`
exports as-is. This module imports torch; the plugin should import it lazily.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from smt_convert.converters.onnx_export import OnnxSpec
from smt_convert.converters.validate import image_size_hw
from smt_convert.runtime.errors import SmtError

QWEN3_5_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_5_IMAGE_STD = (0.5, 0.5, 0.5)
RESCALE_FACTOR = 1.0 / 255.0


def _cfg_int(config, name: str) -> int:
    value = getattr(config, name)
    if isinstance(value, (list, tuple)):  # patch_size may be [p, p] in the config type
        if len(set(value)) != 1:
            raise SmtError(f"vision_config.{name}: non-square {value} is not supported")
        value = value[0]
    return int(value)


def image_multiple(vision_config) -> int:
    """Side multiple an input image must have: patch_size * spatial_merge_size (32 for Qwen3.5)."""
    return _cfg_int(vision_config, "patch_size") * _cfg_int(vision_config, "spatial_merge_size")


def default_image_size(vision_config) -> int:
    """Side of the image whose patch grid equals the learned position table: sqrt(num_pos) * patch (768)."""
    n = int(vision_config.num_position_embeddings)
    side = math.isqrt(n)
    if side * side != n:
        raise SmtError(f"vision_config.num_position_embeddings: {n} is not a square")
    return side * _cfg_int(vision_config, "patch_size")


def check_image_size(image_size, vision_config) -> tuple[int, int]:
    """(height, width) from N or (height, width); sides must be multiples of 32 (patch x spatial merge)."""
    return image_size_hw(image_size, image_multiple(vision_config))


def merge_order(grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """(row, col) of each patch in HF's spatial-merge-block order: [S, 2] long.

    Flat index runs over (block_row, block_col, in_row, in_col); HF's processor patchify and the model's
    `get_vision_position_ids` both use this order.
    """
    rows = torch.arange(grid_h).view(grid_h // merge, merge, 1, 1).expand(-1, -1, grid_w // merge, merge)
    cols = torch.arange(grid_w).view(1, 1, grid_w // merge, merge).expand(grid_h // merge, merge, -1, -1)
    rows = rows.permute(0, 2, 1, 3).reshape(-1)
    cols = cols.permute(0, 2, 1, 3).reshape(-1)
    return torch.stack([rows, cols], dim=-1)


def _axis_taps(n: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear align_corners=True taps (floor, floor+1 clamped) and weights for n targets on a side table."""
    src = torch.arange(n, dtype=torch.float32) * (side - 1) / max(n - 1, 1)
    floor = torch.floor(src)
    taps = (floor.long()[:, None] + torch.arange(2)).clamp(0, side - 1)
    weights = (1 - (src[:, None] - floor[:, None] - torch.arange(2)).abs()).clamp(min=0)
    return taps, weights


def interpolated_pos_embed(pos_embed_weight: torch.Tensor, positions: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """HF's bilinear (align_corners=True) resampling of the square table, rows in `positions` order: [S, hidden]."""
    side = math.isqrt(pos_embed_weight.shape[0])
    h_taps, h_w = _axis_taps(grid_h, side)
    w_taps, w_w = _axis_taps(grid_w, side)
    r, c = positions[:, 0], positions[:, 1]
    idx = (h_taps[r][:, :, None] * side + w_taps[c][:, None, :]).reshape(-1, 4)
    wts = (h_w[r][:, :, None] * w_w[c][:, None, :]).reshape(-1, 4)
    table = pos_embed_weight.detach().float()
    return (F.embedding(idx, table) * wts[:, :, None]).sum(1)


def rotary_tables(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, head_dim]: freqs = cat(row * inv_freq, col * inv_freq), repeated twice (rotate_half layout)."""
    inv_freq = inv_freq.detach().float()
    freqs = positions.float()[:, :, None] * inv_freq  # [S, 2, head_dim/4]
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)  # [S, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class VisionEncoder(nn.Module):
    """[1, 3, H, W] raw 0..255 RGB -> [N, out_hidden_size], for one static (H, W). See the module notes."""

    def __init__(self, visual, image_size, mean=QWEN3_5_IMAGE_MEAN, std=QWEN3_5_IMAGE_STD, rescale_factor=RESCALE_FACTOR):
        super().__init__()
        self.rescale_factor = float(rescale_factor)
        cfg = visual.config
        self.height, self.width = check_image_size(image_size, cfg)
        self.patch = _cfg_int(cfg, "patch_size")
        self.merge = _cfg_int(cfg, "spatial_merge_size")
        self.grid_h, self.grid_w = self.height // self.patch, self.width // self.patch
        self.num_patches = self.grid_h * self.grid_w
        self.num_tokens = self.num_patches // (self.merge * self.merge)
        self.hidden = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_heads)
        self.head_dim = self.hidden // self.num_heads
        self.scaling = self.head_dim**-0.5
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
        if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
            raise SmtError(f"image_mean/image_std: expected 3 values each with std != 0, got {mean} / {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        # Conv3d [hidden, C, T, p, p] on T identical frames == Conv2d with the kernel summed over T
        proj = visual.patch_embed.proj
        self.register_buffer("patch_weight", proj.weight.detach().float().sum(dim=2), persistent=False)
        bias = proj.bias.detach().float() if proj.bias is not None else torch.zeros(proj.weight.shape[0])
        self.register_buffer("patch_bias", bias, persistent=False)

        positions = merge_order(self.grid_h, self.grid_w, self.merge)  # [S, 2] (row, col)
        # raster index of each merge-ordered patch: gathers Conv2d's raster rows into HF order
        self.register_buffer("order", positions[:, 0] * self.grid_w + positions[:, 1], persistent=False)
        self.register_buffer(
            "pos_embeds", interpolated_pos_embed(visual.pos_embed.weight, positions, self.grid_h, self.grid_w),
            persistent=False,
        )
        cos, sin = rotary_tables(visual.rotary_pos_emb.inv_freq, positions)
        self.register_buffer("rope_cos", cos[None], persistent=False)  # [1, S, head_dim], broadcast over heads
        self.register_buffer("rope_sin", sin[None], persistent=False)
        self.blocks = visual.blocks
        self.merger = visual.merger

    def _attention(self, attn, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[0]
        qkv = attn.qkv(x).reshape(s, 3, self.num_heads, self.head_dim).permute(1, 2, 0, 3)  # [3, H, S, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.rope_cos + _rotate_half(q) * self.rope_sin
        k = k * self.rope_cos + _rotate_half(k) * self.rope_sin
        scores = torch.matmul(q * self.scaling, k.transpose(1, 2))  # [H, S, S]
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [H, S, hd]
        return attn.proj(out.transpose(0, 1).reshape(s, self.hidden))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels * self.rescale_factor - self.mean) / self.std
        x = F.conv2d(x, self.patch_weight, self.patch_bias, stride=self.patch)  # [1, hidden, gh, gw]
        x = x.reshape(self.hidden, self.num_patches).transpose(0, 1)  # raster [S, hidden]
        h = torch.index_select(x, 0, self.order) + self.pos_embeds  # HF merge-block order (ONNX Gather)
        for blk in self.blocks:
            h = h + self._attention(blk.attn, blk.norm1(h))
            h = h + blk.mlp(blk.norm2(h))
        return self.merger(h)  # [N, out_hidden]


def check_images(height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic test images [1, 3, H, W] float32 in 0..255: random, gradient, photo-like, flat."""
    gen = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
    xx = torch.linspace(0, 1, width).view(1, width).expand(height, width)
    gradient = torch.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy])
    # photo-like: smooth colour blobs, a sharp-edged bright rectangle, fine texture, some noise
    blobs = []
    for c in range(3):
        cy, cx = torch.rand(2, generator=gen)
        blobs.append(200 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08) + 30 * c)
    photo = torch.stack(blobs)
    rect = (yy > 0.3) & (yy < 0.55) & (xx > 0.2) & (xx < 0.7)
    photo = torch.where(rect, torch.tensor([240.0, 220.0, 60.0]).view(3, 1, 1), photo)
    photo = photo + 20 * torch.sin(40 * xx + 25 * yy) + 8 * torch.randn(3, height, width, generator=gen)
    images = {
        "random": torch.rand(3, height, width, generator=gen) * 255,
        "gradient": gradient,
        "photo": photo,
        "zeros": torch.zeros(3, height, width),  # what the host's warm-up feeds
    }
    return {k: v.clamp(0, 255).round().float()[None].contiguous() for k, v in images.items()}


def vision_export_spec(
    visual, image_size, mean=QWEN3_5_IMAGE_MEAN, std=QWEN3_5_IMAGE_STD, rescale_factor=RESCALE_FACTOR, checks: int = 3,
) -> OnnxSpec:
    """Spec for converters.onnx_export: static [1, 3, H, W] input, image_size = N or (height, width).

    mean/std/rescale_factor: the checkpoint's preprocessor_config.json `image_mean`, `image_std`,
    `rescale_factor`. Example input: a photo-like image; `checks` (0..3) more: random, gradient, zeros.
    Every check costs one torch and three onnxruntime passes; at 768x768 one pass of 2 blocks at the
    real width took ~6 s on 2 cores, so the full 27-block tower may want fewer.
    """
    module = VisionEncoder(visual, image_size, mean, std, rescale_factor).eval()
    images = check_images(module.height, module.width)
    return OnnxSpec(
        name="vision",
        module=module,
        example_inputs=(images["photo"],),
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes=None,
        check_inputs=[(images[k],) for k in ("random", "gradient", "zeros")[: max(0, int(checks))]],
    )
