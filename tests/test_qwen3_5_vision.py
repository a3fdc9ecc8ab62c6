"""Qwen3.5 vision encoder: torch wrapper -> ONNX (fp32/fp16, square and non-square) -> board-host logic, vs HF.

A tiny random Qwen3_5ForConditionalGeneration stands in for the real checkpoint (8x8 learned position grid,
so the default image is 128x128). Vision weights are re-drawn larger than HF's init and the position table
with std 1, so the position embedding, the patch order and the rotary tables all move the output: a
raster-order or transposed patch layout is ~100x outside the tolerances (checked below).

The reference is the Hugging Face path: Qwen2-VL image processor (PIL backend, resize off, mean/std 0.5)
on the uint8 image already at H x W -> pixel_values, image_grid_thw -> model.model.get_image_features.
"""

import numpy as np
import pytest
import torch

from smt_convert.archs.qwen3_5.vision_torch import (
    VisionEncoder as TorchVisionEncoder,
    check_image_size,
    check_images,
    default_image_size,
    interpolated_pos_embed,
    merge_order,
    rotary_tables,
    vision_export_spec,
)
from smt_convert.converters.onnx_export import export_onnx
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.image import load_image, normalize, resize_rgb
from smt_convert.runtime.positions import guess_grid, mrope_positions, text_positions
from smt_convert.runtime.vision_encoder import VisionEncoder

# Measured on this model (outputs |max| ~5.5, rms ~1.4), ONNX vs HF get_image_features on 4 images each:
#   fp32: max_abs <= 7.4e-6, cosine >= 1 - 1e-12 (128x128 and 96x160 alike);
#   fp16: max_abs <= 6.3e-3, cosine >= 0.9999993.
# The torch wrapper alone vs HF: max_abs <= 1.2e-5 (Conv3d over 2 equal frames vs Conv2d with the summed
# kernel, explicit attention vs sdpa). Tolerances leave >= 8x (fp32) and ~5x (fp16) headroom.
FP32_ATOL, FP32_COS = 1e-4, 0.999999
FP16_ATOL, FP16_COS = 3e-2, 0.9999
SIZES = [(128, 128), (96, 160)]  # (height, width); 96x160 -> 6x10 patches, 3x5 tokens
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 900, 901, 902, 903


def _tiny_model():
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen3_5Config(
        vision_config=dict(
            depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
        ),
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=1000,
            layer_types=["linear_attention", "full_attention"], linear_key_head_dim=16,
            linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        ),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
    )
    model = Qwen3_5ForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.model.visual.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "pos_embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise * 1.5 / p[0].numel() ** 0.5)
    return model


def _processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_resize=False,
    )


def _hf_features(model, rgb_uint8, processor=None):
    """HF reference rows for one uint8 [H, W, 3] image already at the target size."""
    batch = (processor or _processor())(images=[rgb_uint8], return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output[0]
    return out.numpy(), batch


def _to_uint8(img):  # [1, 3, H, W] float 0..255 (integral) -> [H, W, 3] uint8
    return img[0].permute(1, 2, 0).numpy().astype(np.uint8)


def _diff(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.abs(a - b).max()), float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """{(H, W, dtype): onnx path} for both sizes in fp32 and the non-square size in fp16."""
    out = tmp_path_factory.mktemp("qwen35-vision")
    paths = {}
    for (h, w), dtype in [(SIZES[0], "fp32"), (SIZES[1], "fp32"), (SIZES[1], "fp16")]:
        path = out / f"vision-{h}x{w}.{dtype}.onnx"
        report = export_onnx(vision_export_spec(model.model.visual, (h, w)), path, dtype=dtype, log=lambda s: None)
        assert report.inputs == [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}]
        assert report.outputs[0]["shape"] == [(h // 32) * (w // 32), 64]
        assert len(report.checks) == 4
        paths[(h, w, dtype)] = path
    return paths


def test_default_size_and_bad_sizes(model):
    from transformers import Qwen3_5VisionConfig

    assert default_image_size(model.config.vision_config) == 128
    assert default_image_size(Qwen3_5VisionConfig()) == 768  # real Qwen3.5: 48x48 table, patch 16
    assert check_image_size(96, model.config.vision_config) == (96, 96)
    for bad in [(100, 128), (128, 112), 48, (0, 32)]:
        with pytest.raises(SmtError, match="--image-size"):
            check_image_size(bad, model.config.vision_config)
        with pytest.raises(SmtError, match="--image-size"):
            vision_export_spec(model.model.visual, bad)


def test_grid_constants_match_hf(model):
    """Patch order, rotary tables and interpolated position embedding equal HF's own helpers."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    visual = model.model.visual
    for h, w in [(8, 8), (6, 10), (10, 4), (16, 12)]:  # patch grids (incl. larger than the 8x8 table)
        grid = torch.tensor([[1, h, w]])
        pos = merge_order(h, w, 2)
        assert torch.equal(pos, get_vision_position_ids(grid, 2))
        idx, wts = get_vision_interpolation_indices_and_weights(grid, 8, mode="bilinear", align_corners=True, spatial_merge_size=2)
        with torch.no_grad():
            ref_pe = (visual.pos_embed(idx) * wts[:, :, None]).sum(1)
            cos, sin = visual.rotary_pos_emb(torch.zeros(1), pos)
        assert torch.equal(interpolated_pos_embed(visual.pos_embed.weight, pos, h, w), ref_pe)
        ours_cos, ours_sin = rotary_tables(visual.rotary_pos_emb.inv_freq, pos)
        assert torch.equal(ours_cos, cos) and torch.equal(ours_sin, sin)
    # the 8x8 grid at the default size reads the table unchanged (weights 1 on the exact node)
    assert torch.allclose(interpolated_pos_embed(visual.pos_embed.weight, merge_order(8, 8, 1), 8, 8), visual.pos_embed.weight)


@pytest.mark.parametrize("size", SIZES)
def test_onnx_fp32_matches_hf(model, exported, size):
    h, w = size
    enc = VisionEncoder(exported[(h, w, "fp32")])
    assert enc.input_size == (h, w) and enc.hidden_size == 64 and enc.num_tokens == (h // 32) * (w // 32)
    wrapper = TorchVisionEncoder(model.model.visual, size).eval()
    images = check_images(h, w, seed=7)  # other draws than the export checks
    for name, img in images.items():
        ref, batch = _hf_features(model, _to_uint8(img))
        assert batch["image_grid_thw"].tolist() == [[1, h // 16, w // 16]]
        out = enc.encode(img.numpy())
        max_abs, cos = _diff(out, ref)
        print(f"fp32 {h}x{w} {name}: max_abs {max_abs:.2e} cosine 1-{1 - cos:.1e}")
        assert out.shape == ref.shape == ((h // 32) * (w // 32), 64)
        assert max_abs <= FP32_ATOL and cos >= FP32_COS, (name, max_abs, cos)
        with torch.no_grad():
            assert _diff(wrapper(img).numpy(), ref)[0] <= FP32_ATOL
    # the comparison is not vacuous: HF fed raster-order patches (no merge-block reorder) is far off
    img = images["photo"]
    ref, batch = _hf_features(model, _to_uint8(img))
    pv = batch["pixel_values"]
    gh, gw = h // 16, w // 16
    raster = pv.reshape(gh // 2, gw // 2, 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(pv.shape)
    with torch.no_grad():
        wrong = model.model.get_image_features(raster, batch["image_grid_thw"]).pooler_output[0].numpy()
    assert _diff(wrong, enc.encode(img.numpy()))[0] > 100 * FP32_ATOL


def test_other_mean_std(model):
    """mean/std/rescale come from the preprocessor config: the graph uses what it is given."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    mean, std = [0.48, 0.45, 0.40], [0.27, 0.26, 0.28]
    proc = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=mean, image_std=std, do_resize=False,
    )
    wrapper = TorchVisionEncoder(model.model.visual, (64, 96), mean, std).eval()
    img = check_images(64, 96, seed=2)["photo"]
    ref, _ = _hf_features(model, _to_uint8(img), proc)
    with torch.no_grad():
        max_abs, cos = _diff(wrapper(img).numpy(), ref)
    assert max_abs <= FP32_ATOL and cos >= FP32_COS
    assert vision_export_spec(model.model.visual, 64, checks=1).check_inputs[0][0].shape == (1, 3, 64, 64)


def test_onnx_fp16(model, exported):
    h, w = SIZES[1]
    enc = VisionEncoder(exported[(h, w, "fp16")])
    for name, img in check_images(h, w, seed=11).items():
        ref, _ = _hf_features(model, _to_uint8(img))
        max_abs, cos = _diff(enc.encode(img.numpy()), ref)
        print(f"fp16 {h}x{w} {name}: max_abs {max_abs:.2e} cosine {cos:.7f}")
        assert max_abs <= FP16_ATOL and cos >= FP16_COS, (name, max_abs, cos)


def test_runtime_png_path(model, exported, tmp_path):
    """PNG on disk -> load_image -> resize_rgb (Pillow bilinear, antialiased) -> ONNX, vs HF on the same pixels."""
    from PIL import Image

    h, w = SIZES[1]
    src = _to_uint8(check_images(150, 230, seed=3)["photo"])  # other size: the host resizes
    rgba = np.concatenate([src, np.full(src.shape[:2] + (1,), 200, np.uint8)], axis=2)
    png = tmp_path / "photo.png"
    Image.fromarray(rgba).save(png)
    img = load_image(png)
    assert img.dtype == np.uint8 and img.shape == (150, 230, 3) and np.array_equal(img, src)
    pixels = resize_rgb(img, w, h)
    assert pixels.shape == (1, 3, h, w) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 255 and np.array_equal(pixels, np.rint(pixels))
    expect = np.asarray(Image.fromarray(src).resize((w, h), Image.BILINEAR)).transpose(2, 0, 1)[None]
    assert np.array_equal(pixels, expect)
    assert np.array_equal(resize_rgb(src[:h, :w], w, h)[0].transpose(1, 2, 0), src[:h, :w])  # same size: unchanged
    enc = VisionEncoder(exported[(h, w, "fp32")])
    out = enc.encode_image(img)
    assert np.array_equal(out, enc.encode(pixels))
    ref, _ = _hf_features(model, pixels[0].transpose(1, 2, 0).astype(np.uint8))
    max_abs, cos = _diff(out, ref)
    assert max_abs <= FP32_ATOL and cos >= FP32_COS
    with pytest.raises(ValueError, match="pixels must be"):
        enc.encode(np.zeros((1, 3, w, h), np.float32))


def test_image_errors_and_normalize(tmp_path):
    with pytest.raises(SmtError, match=r"missing\.png: image: file not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(SmtError, match=r"bad\.jpg: image: cannot decode"):
        load_image(bad)
    x = np.full((1, 3, 2, 2), 255.0, np.float32)
    y = normalize(x, 1 / 255, [0.5, 0.4, 0.3], [0.5, 0.2, 0.1])
    assert np.allclose(y[0, :, 0, 0], [1.0, 3.0, 7.0])


def _hf_rope(model, ids, grid_thw):
    ids = torch.tensor([ids])
    types = (ids == IMAGE_TOKEN).int()
    pos, _ = model.model.get_rope_index(ids, types, image_grid_thw=torch.tensor([grid_thw]))
    return pos[:, 0].T.numpy()  # [L, 3]


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (160, 96)])
def test_mrope_positions_match_hf_rope_index(model, size):
    """text + <|vision_start|> + N image tokens + <|vision_end|> + text: every position equals HF's."""
    h, w = size
    ny, nx = h // 32, w // 32
    n = ny * nx
    head, tail = [11, 12, 13, 14, 15], [21, 22, 23, 24]
    ids = head + [VISION_START] + [IMAGE_TOKEN] * n + [VISION_END] + tail
    ref = _hf_rope(model, ids, [1, h // 16, w // 16])

    def board(grid):
        before = text_positions(0, len(head) + 1)
        image, n_past = mrope_positions(len(head) + 1, n, grid)
        after = text_positions(n_past, 1 + len(tail))
        return np.concatenate([before, image, after]), n_past

    ours, n_past = board((ny, nx))
    assert ours.shape == (len(ids), 4) and ours.dtype == np.int32 and not ours[:, 3].any()
    np.testing.assert_array_equal(ours[:, :3], ref)
    assert n_past == len(head) + 1 + max(nx, ny)  # the text after the image starts at max(nx, ny) past its start
    assert ref[len(head) + 1 + n, 0] == n_past  # HF agrees: <|vision_end|> sits there
    guessed, _ = board(None)  # the board's guess from N alone: right unless the grid is taller than wide
    assert np.array_equal(guessed[:, :3], ref) == (guess_grid(n) == (ny, nx))
    assert (guess_grid(n) == (ny, nx)) == (ny <= nx)


def test_positions_helpers():
    assert guess_grid(16) == (4, 4) and guess_grid(15) == (3, 5) and guess_grid(7) == (1, 7) and guess_grid(12) == (3, 4)
    np.testing.assert_array_equal(text_positions(3, 2), [[3, 3, 3, 0], [4, 4, 4, 0]])
    pos, nxt = mrope_positions(10, 6, (2, 3))
    np.testing.assert_array_equal(pos, [[10, 10, 10, 0], [10, 10, 11, 0], [10, 10, 12, 0],
                                        [10, 11, 10, 0], [10, 11, 11, 0], [10, 11, 12, 0]])
    assert nxt == 13
    with pytest.raises(ValueError):
        mrope_positions(0, 6, (4, 2))
