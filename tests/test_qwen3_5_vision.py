"""Qwen3.5 vision encoder: the graph written node by node (archs/qwen3_5/vision_graph.py) -> ONNX file
(fp32/fp16/int8, square and non-square) -> board-host logic, vs the Hugging Face model.

A tiny random Qwen3_5ForConditionalGeneration stands in for the real checkpoint (8x8 learned position grid,
so the default image is 128x128). Vision weights are re-drawn larger than HF's init and the position table
with std 1, so the position embedding, the patch order and the rotary tables all move the output: a
raster-order patch layout is ~100x outside the tolerances (checked below). One block at the real width
(transformers' default Qwen3_5VisionConfig: hidden 1152, 16 heads, MLP 4304, 48x48 table) is checked too.

The reference is the Hugging Face path: Qwen2-VL image processor (PIL backend, resize off) on the uint8 image
already at H x W -> pixel_values, image_grid_thw -> the HF vision model (`get_image_features`).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from smt_convert.archs.qwen3_5 import vision_graph as G
from smt_convert.archs.qwen3_5.config import TEXT_PREFIX, Hparams, read_vision
from smt_convert.converters.onnx_graph import Weights
from smt_convert.converters.onnx_write import write_encoder
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.image import load_image, normalize, resize_rgb
from smt_convert.runtime.positions import guess_grid, mrope_positions, text_positions
from smt_convert.runtime.vision_encoder import VisionEncoder

# Measured on the tiny model (outputs |max| ~5.5), written file vs HF, 3 images x 2 sizes, as max |diff| / max |ref|:
#   fp32: <= 1.7e-6, cosine >= 1 - 1e-12;
#   fp16: <= 1.7e-3, cosine >= 0.9999993;
#   int8: <= 5.5e-2, cosine >= 0.99909 (dynamic per-tensor int8 of every MatMul).
# Bounds: fp32 the plan's 1e-5 relative; fp16 3x, int8 2.7x (max) and 5x (1 - cosine) headroom.
TOL = {"fp32": (1e-5, 1 - 1e-9), "fp16": (5e-3, 0.99999), "int8": (0.15, 0.995)}  # (max_abs / max|ref|, cosine)
SIZES = [(128, 128), (96, 160)]  # (height, width); 96x160 -> 6x10 patches, 3x5 tokens
DTYPES = ["fp32", "fp16", "int8"]
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
    _redraw(model.model.visual, seed=1)
    return model


def _redraw(visual, seed: int):
    """Weights larger than HF's init (norms around 1, position table std 1) so every part moves the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in visual.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "pos_embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise * 1.5 / p[0].numel() ** 0.5)


def _processor(mean=(0.5,) * 3, std=(0.5,) * 3):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=list(mean),
                                    image_std=list(std), do_resize=False)


def _hf_features(visual, rgb_uint8, processor=None):
    """HF reference rows for one uint8 [H, W, 3] image already at the target size."""
    batch = (processor or _processor())(images=[rgb_uint8], return_tensors="pt")
    with torch.no_grad():
        out = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    return out.numpy(), batch


def _to_uint8(img):  # [1, 3, H, W] float 0..255 (integral) -> [H, W, 3] uint8
    return img[0].transpose(1, 2, 0).astype(np.uint8)


def _diff(a, ref):
    a, ref = np.asarray(a, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return float(np.abs(a - ref).max() / np.abs(ref).max()), float(a @ ref / (np.linalg.norm(a) * np.linalg.norm(ref)))


def _weights(module, prefix="model.visual."):
    state = {prefix + k: v.detach() for k, v in module.state_dict().items()}
    return Weights(load=lambda n: state[n].float().numpy(), shape=lambda n: tuple(state[n].shape))


def _hparams(visual, size, mean=None, std=None):
    config = {"vision_config": visual.config.to_dict()}
    pre = None if mean is None else {"image_mean": list(mean), "image_std": list(std), "rescale_factor": 1 / 255}
    v = read_vision(config, Path("config.json"), visual.config.out_hidden_size, size, pre,
                    Path("preprocessor_config.json"))
    return Hparams(text=None, vision=v, prefix=TEXT_PREFIX, experts="fused", hf_class="x", image_token_id=IMAGE_TOKEN)


def _write(visual, size, dtype, path, **kw):
    hp = _hparams(visual, size, **kw)
    graph = G.build_encoders(_weights(visual), hp, dtype)[0]
    report = write_encoder(graph, path, dtype)
    h, w = size
    assert report.inputs == [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}]
    assert report.outputs == [{"name": "image_embeds", "shape": [(h // 32) * (w // 32), visual.config.out_hidden_size],
                               "dtype": "float32"}]
    assert report.checks == []  # static: run by the golden run, not the writer
    return path


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def written(model, tmp_path_factory):
    """{(H, W, dtype): onnx path} for both sizes in every dtype."""
    out = tmp_path_factory.mktemp("qwen35-vision")
    return {(h, w, d): _write(model.model.visual, (h, w), d, out / f"vision-{h}x{w}.{d}.onnx")
            for h, w in SIZES for d in DTYPES}


def test_default_size_and_bad_sizes(model):
    from transformers import Qwen3_5VisionConfig

    visual = model.model.visual
    assert _hparams(visual, None).vision.image_size == (128, 128)
    assert read_vision({"vision_config": Qwen3_5VisionConfig().to_dict()}, Path("c"), 3584).image_size == (768, 768)
    assert _hparams(visual, 96).vision.image_size == (96, 96)
    for bad in [(100, 128), (128, 112), 48, (0, 32)]:
        with pytest.raises(SmtError, match="--image-size"):
            _hparams(visual, bad)


def test_grid_constants_match_hf(model):
    """Patch order, rotary tables and interpolated position embedding equal HF's own helpers."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    visual = model.model.visual
    table = visual.pos_embed.weight.detach().numpy()
    for h, w in [(8, 8), (6, 10), (10, 4), (16, 12)]:  # patch grids (incl. larger than the 8x8 table)
        v = _hparams(visual, (16 * h, 16 * w)).vision
        grid = torch.tensor([[1, h, w]])
        pos = get_vision_position_ids(grid, 2)
        np.testing.assert_array_equal(G.merge_order(h, w, 2), pos.numpy())
        idx, wts = get_vision_interpolation_indices_and_weights(grid, 8, mode="bilinear", align_corners=True,
                                                                spatial_merge_size=2)
        ours_idx, ours_wts = G.interpolation(v)
        np.testing.assert_array_equal(ours_idx, idx.numpy())
        np.testing.assert_allclose(ours_wts, wts.numpy(), rtol=0, atol=1e-7)
        with torch.no_grad():
            ref_pe = (visual.pos_embed(idx) * wts[:, :, None]).sum(1).numpy()
            cos, sin = visual.rotary_pos_emb(torch.zeros(1), pos)
        np.testing.assert_allclose(G.position_table(v)(table), ref_pe, rtol=0, atol=1e-6)
        ours_cos, ours_sin = G.rotary_tables(v)
        np.testing.assert_allclose(ours_cos, cos.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours_sin, sin.numpy(), rtol=0, atol=1e-6)
    v = _hparams(visual, (128, 128)).vision  # the 8x8 grid reads the table unchanged (in merge-block order)
    np.testing.assert_allclose(G.position_table(v)(table), table[G.merge_order(8, 8, 2) @ [8, 1]], atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_graph_matches_hf(model, written, size, dtype):
    h, w = size
    enc = VisionEncoder(written[(h, w, dtype)])
    assert enc.input_size == (h, w) and enc.hidden_size == 64 and enc.num_tokens == (h // 32) * (w // 32)
    max_rel, min_cos = TOL[dtype]
    for name, img in G.check_images(h, w, seed=7).items():  # other draws than the writer's checks
        ref, batch = _hf_features(model.model.visual, _to_uint8(img))
        assert batch["image_grid_thw"].tolist() == [[1, h // 16, w // 16]]
        out = enc.encode(img)
        rel, cos = _diff(out, ref)
        print(f"{dtype} {h}x{w} {name}: max_abs/max|ref| {rel:.2e} cosine {cos:.9f}")
        assert out.shape == ref.shape == ((h // 32) * (w // 32), 64)
        assert rel <= max_rel and cos >= min_cos, (name, rel, cos)


def test_not_vacuous(model, written):
    """HF fed raster-order patches (no merge-block reorder) is far outside the fp32 tolerance."""
    h, w = SIZES[1]
    img = G.check_images(h, w, seed=7)["photo"]
    ref, batch = _hf_features(model.model.visual, _to_uint8(img))
    pv = batch["pixel_values"]
    gh, gw = h // 16, w // 16
    raster = pv.reshape(gh // 2, gw // 2, 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(pv.shape)
    with torch.no_grad():
        wrong = model.model.visual(raster, grid_thw=batch["image_grid_thw"]).pooler_output.numpy()
    assert _diff(wrong, VisionEncoder(written[(h, w, "fp32")]).encode(img))[0] > 100 * TOL["fp32"][0]


def test_attention_in_query_blocks(model, tmp_path, monkeypatch):
    """Large images run the attention in blocks of query rows (onnxruntime memory); force blocks of 5 rows (the
    last one shorter) on the tiny model and compare with HF as above."""
    import onnx

    from smt_convert.converters import onnx_graph

    h, w = SIZES[1]
    patches, heads = (h // 16) * (w // 16), model.model.visual.config.num_heads
    monkeypatch.setattr(onnx_graph, "ATTENTION_BLOCK_BYTES", heads * patches * 4 * 5)
    path = _write(model.model.visual, (h, w), "fp32", tmp_path / "blocked.onnx")
    softmaxes = sum(n.op_type == "Softmax" for n in onnx.load(str(path), load_external_data=False).graph.node)
    assert softmaxes == model.model.visual.config.depth * -(-patches // 5)
    enc = VisionEncoder(path)
    for name, img in G.check_images(h, w, seed=7).items():
        rel, cos = _diff(enc.encode(img), _hf_features(model.model.visual, _to_uint8(img))[0])
        assert rel <= TOL["fp32"][0] and cos >= TOL["fp32"][1], (name, rel, cos)


def test_other_mean_std(model, tmp_path):
    """mean/std/rescale come from the preprocessor config: the graph uses what it is given."""
    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
    path = _write(model.model.visual, (64, 96), "fp32", tmp_path / "v.onnx", mean=mean, std=std)
    img = G.check_images(64, 96, seed=2)["photo"]
    ref, _ = _hf_features(model.model.visual, _to_uint8(img), _processor(mean, std))
    rel, cos = _diff(VisionEncoder(path).encode(img), ref)
    assert rel <= TOL["fp32"][0] and cos >= TOL["fp32"][1]


@pytest.fixture(scope="module")
def real_width():
    """One block at the real width: transformers' default Qwen3_5VisionConfig (hidden 1152, 16 heads, MLP 4304,
    out 3584, 48x48 position table) with depth 1, HF's own init plus the redraw above."""
    from transformers import Qwen3_5VisionConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    torch.manual_seed(0)
    visual = Qwen3_5VisionModel(Qwen3_5VisionConfig(depth=1)).eval()
    _redraw(visual, seed=2)
    return visual


# Measured at the real width, 96x160 (60 patches), 3 images: fp32 max|diff|/max|ref| <= 1.3e-6, fp16 <= 8.8e-4
# (cosine >= 0.9999996), int8 <= 3.8e-2 (cosine >= 0.99917): inside the same bounds.
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_block_real_width(real_width, tmp_path, dtype):
    h, w = 96, 160
    path = _write(real_width, (h, w), dtype, tmp_path / f"real.{dtype}.onnx")
    enc = VisionEncoder(path)
    max_rel, min_cos = TOL[dtype]
    for name, img in G.check_images(h, w, seed=9).items():
        ref, _ = _hf_features(real_width, _to_uint8(img))
        rel, cos = _diff(enc.encode(img), ref)
        print(f"real width {dtype} {name}: max_abs/max|ref| {rel:.2e} cosine {cos:.9f}")
        assert rel <= max_rel and cos >= min_cos, (name, rel, cos)


def test_runtime_png_path(model, written, tmp_path):
    """PNG on disk -> load_image -> resize_rgb (Pillow bilinear, antialiased) -> ONNX, vs HF on the same pixels."""
    from PIL import Image

    h, w = SIZES[1]
    src = _to_uint8(G.check_images(150, 230, seed=3)["photo"])  # other size: the host resizes
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
    enc = VisionEncoder(written[(h, w, "fp32")])
    out = enc.encode_image(img, host="hf")
    assert np.array_equal(out, enc.encode(pixels))
    ref, _ = _hf_features(model.model.visual, pixels[0].transpose(1, 2, 0).astype(np.uint8))
    rel, cos = _diff(out, ref)
    assert rel <= TOL["fp32"][0] and cos >= TOL["fp32"][1]
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
