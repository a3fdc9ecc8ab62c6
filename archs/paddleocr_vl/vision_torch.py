"""PaddleOCR-VL vision encoder (SigLIP-style NaViT) + projector as one static ONNX graph, as the SMT board feeds it.

Input:  one float32 tensor [1, 3, H, W], ALREADY rescaled and normalised by the host
        (`x * rescale_factor`, then `(x - image_mean) / image_std`: the config.json `vision_preprocess` block).
        H and W are multiples of patch_size * merge (14 * 2 = 28); they may differ.
Output: [N, text_hidden], N = (H / 28) * (W / 28), rows row-major over the merged (H/28) x (W/28) grid,
        exactly the rows Hugging Face's `get_image_features` returns for that image.

What the graph does, checked against transformers 5 `modeling_paddleocr_vl.py` and
`image_processing_pil_paddleocr_vl.py`:

- patchify: the processor cuts the normalised image into 14 x 14 patches in RASTER order (grid_h, grid_w),
  each patch laid out (C, 14, 14) (`patchify`: reshape (C, gh, p, gw, p) -> transpose (gh, gw, C, p, p)),
  and the model runs its Conv2d(3, hidden, 14, stride 14) on every patch. That is one Conv2d over the whole
  image, whose output [hidden, gh, gw] flattened is already in raster order: no reordering (unlike Qwen,
  PaddleOCR merges 2 x 2 patches only in the projector, after the encoder);
- learned position embedding: the square (image_size // patch)^2 table (27 x 27 for the released 384/14)
  resampled to the gh x gw patch grid with BILINEAR, align_corners=False (half-pixel centres), border
  clamping (HF `PaddleOCRVisionEmbeddings`: `get_vision_interpolation_indices_and_weights(mode="bilinear",
  align_corners=False, spatial_merge_size=1)` = `F.interpolate(..., "bilinear", align_corners=False)`),
  raster order; a constant [S, hidden] computed at export with HF's arithmetic;
- 2-D rotary ("axial"): positions (row, col) of each patch in raster order (`get_vision_position_ids(grid, 1)`),
  inv_freq = 1 / theta^(arange(0, hd/2, 2) / (hd/2)) (theta = vision rope_theta, 10000), angles
  cat(row * inv_freq, col * inv_freq) repeated twice over head_dim, rotate_half; constants [S, head_dim];
- the encoder layers (pre-LN, full unmasked attention over the one image, MLP with gelu_pytorch_tanh),
  then `post_layernorm`;
- the projector (`mlp_AR`): LayerNorm (eps 1e-5), then each 2 x 2 block of patches is concatenated in the
  order (in_row, in_col) = (0,0), (0,1), (1,0), (1,1) into one 4*hidden row (HF reshape (h/2, 2, w/2, 2, d)
  -> transpose -> (h/2, w/2, 2, 2, d)), blocks row-major, then Linear -> GELU (erf) -> Linear to text width.

Weights are the HF modules' own (shared, not copied). This module imports torch; plugins import it lazily.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smt_convert.converters.onnx_export import OnnxSpec
from smt_convert.converters.validate import image_size_hw
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.image import normalize

# Released PaddlePaddle/PaddleOCR-VL preprocessor_config.json: rescale 1/255, mean = std = 0.5,
# min_pixels 147384 (= 188 * 28^2), max_pixels 2822400 (= 1680^2), patch 14, merge 2, temporal 1.
PADDLEOCR_RESCALE_FACTOR = 1.0 / 255.0
PADDLEOCR_IMAGE_MEAN = (0.5, 0.5, 0.5)
PADDLEOCR_IMAGE_STD = (0.5, 0.5, 0.5)
# What HF's PaddleOCRVLImageProcessor uses when preprocessor_config.json lacks a key (class defaults).
HF_DEFAULT_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN
HF_DEFAULT_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)  # OPENAI_CLIP_STD
HF_DEFAULT_MIN_PIXELS = 384 * 384
HF_DEFAULT_MAX_PIXELS = 1536 * 1536


def _get(cfg, name: str, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _cfg_int(cfg, name: str, default=None) -> int:
    value = _get(cfg, name, default)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise SmtError(f"vision_config.{name}: non-square {value} is not supported")
        value = value[0]
    if value is None:
        raise SmtError(f"vision_config.{name}: missing")
    return int(value)


def image_multiple(vision_config) -> int:
    """Side multiple an input image must have: patch_size * spatial_merge_size (28 for PaddleOCR-VL)."""
    return _cfg_int(vision_config, "patch_size", 14) * _cfg_int(vision_config, "spatial_merge_size", 2)


def pixel_limits(preprocessor_config) -> tuple[int, int]:
    """(min_pixels, max_pixels) from preprocessor_config.json: top-level `min_pixels`/`max_pixels` (the released
    file), else `size.shortest_edge`/`size.longest_edge` (transformers 5 save format) or `size.min_pixels`/
    `size.max_pixels`, else HF's class defaults 384^2 / 1536^2."""
    size = _get(preprocessor_config, "size") or {}
    lo = _get(preprocessor_config, "min_pixels") or _get(size, "shortest_edge") or _get(size, "min_pixels")
    hi = _get(preprocessor_config, "max_pixels") or _get(size, "longest_edge") or _get(size, "max_pixels")
    lo = int(lo) if lo is not None else HF_DEFAULT_MIN_PIXELS
    hi = int(hi) if hi is not None else HF_DEFAULT_MAX_PIXELS
    if lo <= 0 or hi < lo:
        raise SmtError(f"preprocessor_config.json: min_pixels/max_pixels: expected 0 < min <= max, got {lo} / {hi}")
    return lo, hi


def vision_preprocess(preprocessor_config) -> dict:
    """The board's `vision_preprocess` block: rescale_factor, image_mean, image_std (HF class defaults if absent)."""
    rescale = _get(preprocessor_config, "rescale_factor", PADDLEOCR_RESCALE_FACTOR)
    mean = _get(preprocessor_config, "image_mean", HF_DEFAULT_IMAGE_MEAN)
    std = _get(preprocessor_config, "image_std", HF_DEFAULT_IMAGE_STD)
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    if isinstance(std, (int, float)):
        std = [std] * 3
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise SmtError(f"preprocessor_config.json: image_mean/image_std: expected 3 values each, std != 0, got {mean} / {std}")
    return {"rescale_factor": float(rescale), "image_mean": mean, "image_std": std}


def default_image_size(preprocessor_config, vision_config) -> int:
    """Square side of the default static input: 812 for the released PaddleOCR-VL (29 x 29 = 841 image tokens).

    - square, because the board lays an image's N tokens out as the closest-to-square factor pair with
      ny <= nx: only then are the board's M-RoPE positions HF's for every image (a portrait page size such
      as 1120x784 would get its grid guessed transposed);
    - its pixel count is the geometric mean of min_pixels and max_pixels (sqrt(147384 * 2822400) = 645k px,
      side 803 -> nearest multiple of 28 = 812), i.e. the middle, on a log scale, of the range of pixel
      counts HF's smart_resize feeds the model in training and inference: well above min_pixels (the
      ~384x384 that small layout crops are upscaled to, too coarse for a whole page) and well below
      max_pixels (1680x1680: 14400 patches, whose S^2 attention a board cannot afford);
    - 58 x 58 = 3364 encoder patches, 841 tokens for the decoder: the same order as the board's Qwen3.5
      default (768x768: 2304 patches, 576 tokens); an A4 page resized to 812 px tall keeps ~16 px per line
      of 50-line text. Users with a known document shape pick another size with --image-size.
    Then clamped so side^2 stays within [min_pixels, max_pixels].
    """
    lo, hi = pixel_limits(preprocessor_config)
    m = image_multiple(vision_config)
    side = max(1, round(math.sqrt(math.sqrt(lo * hi)) / m)) * m
    while side * side < lo:
        side += m
    while side * side > hi and side > m:
        side -= m
    return side


def check_image_size(image_size, vision_config) -> tuple[int, int]:
    """(height, width) from N or (height, width); sides must be multiples of 28 (patch x spatial merge)."""
    return image_size_hw(image_size, image_multiple(vision_config))


def raster_positions(grid_h: int, grid_w: int) -> torch.Tensor:
    """(row, col) of each patch in raster order: [S, 2] long (HF `get_vision_position_ids(grid, 1)`)."""
    rows = torch.arange(grid_h).view(grid_h, 1).expand(grid_h, grid_w).reshape(-1)
    cols = torch.arange(grid_w).view(1, grid_w).expand(grid_h, grid_w).reshape(-1)
    return torch.stack([rows, cols], dim=-1)


def _axis_taps(n: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear align_corners=False taps (floor, floor+1, clamped to the border) and weights: n targets, side table."""
    index = torch.arange(n, dtype=torch.float32)
    src = (index + 0.5) * side / n - 0.5  # half-pixel centres
    floor = torch.floor(src)
    offsets = torch.arange(2)
    taps = (floor.long()[:, None] + offsets).clamp(0, side - 1)
    weights = (1 - (src[:, None] - floor[:, None] - offsets).abs()).clamp(min=0)
    return taps, weights


def interpolated_pos_embed(table: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """HF's bilinear (align_corners=False) resampling of the square table to gh x gw, raster order: [S, hidden]."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise SmtError(f"vision position embedding: {table.shape[0]} rows is not a square grid")
    h_taps, h_w = _axis_taps(grid_h, side)
    w_taps, w_w = _axis_taps(grid_w, side)
    pos = raster_positions(grid_h, grid_w)
    r, c = pos[:, 0], pos[:, 1]
    idx = (h_taps[r][:, :, None] * side + w_taps[c][:, None, :]).reshape(-1, 4)
    wts = (h_w[r][:, :, None] * w_w[c][:, None, :]).reshape(-1, 4)
    return (F.embedding(idx, table.detach().float()) * wts[:, :, None]).sum(1)


def rotary_tables(inv_freq: torch.Tensor, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, head_dim]: cat(row * inv_freq, col * inv_freq) repeated twice, raster order."""
    freqs = raster_positions(grid_h, grid_w).float()[:, :, None] * inv_freq.detach().float()  # [S, 2, hd/4]
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _vision_transformer(visual):
    """HF `PaddleOCRVisionModel` (model.model.visual) or its inner `PaddleOCRVisionTransformer`."""
    return getattr(visual, "vision_model", visual)


class VisionEncoder(nn.Module):
    """[1, 3, H, W] host-normalised pixels -> [N, text_hidden], for one static (H, W). See the module notes."""

    def __init__(self, visual, projector, image_size):
        super().__init__()
        vt = _vision_transformer(visual)
        cfg = vt.config
        self.height, self.width = check_image_size(image_size, cfg)
        self.patch = _cfg_int(cfg, "patch_size")
        self.merge = _cfg_int(cfg, "spatial_merge_size")
        m1, m2 = getattr(projector, "merge_kernel_size", (self.merge, self.merge))
        if (m1, m2) != (self.merge, self.merge):
            raise SmtError(f"projector merge_kernel_size {m1}x{m2} != vision_config.spatial_merge_size {self.merge}")
        self.grid_h, self.grid_w = self.height // self.patch, self.width // self.patch
        self.num_patches = self.grid_h * self.grid_w
        self.num_tokens = self.num_patches // (self.merge * self.merge)
        self.hidden = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        self.head_dim = self.hidden // self.num_heads
        self.scaling = self.head_dim**-0.5

        emb = vt.embeddings
        self.patch_embedding = emb.patch_embedding  # Conv2d(3, hidden, p, stride p)
        self.register_buffer(
            "pos_embeds", interpolated_pos_embed(emb.position_embedding.weight, self.grid_h, self.grid_w),
            persistent=False,
        )
        cos, sin = rotary_tables(vt.encoder.rotary_pos_emb.inv_freq, self.grid_h, self.grid_w)
        self.register_buffer("rope_cos", cos[:, None, :], persistent=False)  # [S, 1, hd], broadcast over heads
        self.register_buffer("rope_sin", sin[:, None, :], persistent=False)
        self.layers = vt.encoder.layers
        self.post_layernorm = vt.post_layernorm
        self.projector = projector

    def _attention(self, attn, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[0]
        q = attn.q_proj(x).view(s, self.num_heads, self.head_dim)
        k = attn.k_proj(x).view(s, self.num_heads, self.head_dim)
        v = attn.v_proj(x).view(s, self.num_heads, self.head_dim).transpose(0, 1)  # [H, S, hd]
        q = (q * self.rope_cos + _rotate_half(q) * self.rope_sin).transpose(0, 1)
        k = (k * self.rope_cos + _rotate_half(k) * self.rope_sin).transpose(0, 1)
        scores = torch.matmul(q, k.transpose(1, 2)) * self.scaling  # [H, S, S]
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [H, S, hd]
        return attn.out_proj(out.transpose(0, 1).reshape(s, self.hidden))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels)  # [1, hidden, gh, gw]
        h = x.reshape(self.hidden, self.num_patches).transpose(0, 1) + self.pos_embeds  # raster [S, hidden]
        for layer in self.layers:
            h = h + self._attention(layer.self_attn, layer.layer_norm1(h))
            h = h + layer.mlp(layer.layer_norm2(h))
        h = self.post_layernorm(h)
        # projector: pre-norm, 2x2 blocks -> one row in (in_row, in_col) order, blocks row-major, MLP
        proj = self.projector
        h = proj.pre_norm(h)
        m = self.merge
        h = h.reshape(self.grid_h // m, m, self.grid_w // m, m, self.hidden).permute(0, 2, 1, 3, 4)
        h = h.reshape(self.num_tokens, m * m * self.hidden)
        return proj.linear_2(proj.act(proj.linear_1(h)))  # [N, text_hidden]


def raw_check_images(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic uint8 [H, W, 3] RGB test images: document-like, photo-like, random, gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    # document: off-white page, dark "text lines" of varying length made of glyph-like strokes, a table rule
    doc = np.full((height, width, 3), 245.0) + rng.normal(0, 3, (height, width, 3))
    line_h = max(3, height // 14)
    for top in range(line_h, height - line_h, 2 * line_h):
        end = int(width * rng.uniform(0.5, 0.95))
        glyphs = rng.random(width) < 0.55
        band = doc[top:top + line_h, width // 12:end]
        band[:, glyphs[: band.shape[1]]] = rng.uniform(10, 60)
    doc[height * 2 // 3, :, :] = [30, 60, 160]
    photo = np.stack([200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08) + 30 * c
                      for c, (cy, cx) in enumerate(rng.random((3, 2)))], axis=-1)
    photo += 20 * np.sin(40 * xx + 25 * yy)[..., None] + rng.normal(0, 8, photo.shape)
    images = {
        "document": doc,
        "photo": photo,
        "random": rng.uniform(0, 255, (height, width, 3)),
        "gradient": np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy], axis=-1),
    }
    return {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in images.items()}


def check_images(height: int, width: int, rescale_factor=PADDLEOCR_RESCALE_FACTOR, mean=PADDLEOCR_IMAGE_MEAN,
                 std=PADDLEOCR_IMAGE_STD, seed: int = 0) -> dict[str, torch.Tensor]:
    """The raw images normalised as the board host does (runtime.image.normalize): float32 [1, 3, H, W].

    Plus "zeros": the all-zero tensor the host's warm-up feeds (mid-grey after normalisation).
    """
    out = {}
    for name, img in raw_check_images(height, width, seed).items():
        x = normalize(img.transpose(2, 0, 1)[None].astype(np.float32), rescale_factor, mean, std)
        out[name] = torch.from_numpy(x)
    out["zeros"] = torch.zeros(1, 3, height, width)
    return out


def vision_export_spec(visual, projector, image_size, rescale_factor=PADDLEOCR_RESCALE_FACTOR,
                       mean=PADDLEOCR_IMAGE_MEAN, std=PADDLEOCR_IMAGE_STD, checks: int = 3) -> OnnxSpec:
    """Spec for converters.onnx_export: static [1, 3, H, W] normalised input, image_size = N or (height, width).

    visual: HF `model.model.visual` (PaddleOCRVisionModel); projector: `model.model.projector`.
    rescale_factor/mean/std: the `vision_preprocess` values, used only to make realistic check inputs
    (the graph itself does no normalisation). Example input: a document-like page; `checks` (0..4) more:
    photo, random, gradient, zeros (the host's warm-up input).
    """
    module = VisionEncoder(visual, projector, image_size).eval()
    images = check_images(module.height, module.width, rescale_factor, mean, std)
    return OnnxSpec(
        name="vision",
        module=module,
        example_inputs=(images["document"],),
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes=None,
        check_inputs=[(images[k],) for k in ("photo", "random", "gradient", "zeros")[: max(0, int(checks))]],
    )
