"""PaddleOCR-VL vision encoder + projector: the graph written node by node (archs/paddleocr_vl/vision_graph.py)
vs the Hugging Face modules with the same weights, fp32 / fp16 / int8, square and non-square inputs.

Tiny model: a random PaddleOCRVLForConditionalGeneration (vision: 2 layers, hidden 32, 2 heads, patch 14,
image_size 112 -> 8x8 learned position table; text hidden 64), vision and projector weights re-drawn larger
than HF's init and the position table with std 1, so the position embedding, the patch order, the rotary tables
and the projector's 2x2 merge order all move the output. Real width: transformers' PaddleOCRVisionConfig
defaults (= the release: hidden 1152, 16 heads, MLP 4304, 27x27 table) with one encoder layer.

Reference: HF's own path, PaddleOCRVLImageProcessorPil (resize off, rescale 1/255, mean/std) on the uint8 image
already at H x W -> pixel_values, image_grid_thw -> `get_image_features` (tiny) or PaddleOCRVisionModel +
PaddleOCRProjector (real width). The ONNX input is what the board host feeds: runtime.image.normalize.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from smt_convert.archs.paddleocr_vl.config import (HF_DEFAULT_IMAGE_MEAN, HF_DEFAULT_IMAGE_STD, Hparams,
                                                   NATIVE, NATIVE_LAYOUT, default_image_size, pixel_limits,
                                                   read_text_hparams, read_vision_hparams, vision_preprocess)
from smt_convert.archs.paddleocr_vl.prompt import raw_check_images
from smt_convert.archs.paddleocr_vl.vision_graph import (build_vision_graph, raster_positions,
                                                         resample_position_table, rotary_tables, vision_shapes)
from smt_convert.converters.onnx_graph import Weights
from smt_convert.converters.onnx_write import write_encoder
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.image import load_image, normalize, resize_rgb
from smt_convert.runtime.positions import guess_grid, mrope_positions, text_positions
from smt_convert.runtime.vision_encoder import VisionEncoder

# Measured, graph vs HF, 3 images per size (max abs relative to max |ref|; outputs |max| ~4.7-6.7):
#   tiny fp32 <= 1.7e-6 rel; fp16 <= 1.4e-3 rel, cosine >= 1 - 7.7e-7; int8 <= 0.165 rel, cosine >= 0.996
#   (64-wide rows re-drawn at 1.5/sqrt(fan-in): per-tensor int8 is at its worst here);
#   real width, 1 layer: fp32 <= 1.4e-6 rel; fp16 <= 8.8e-4 rel, cosine >= 1 - 3.5e-7;
#   int8 <= 4.4e-2 rel, cosine >= 1 - 7.7e-4.
# Bounds: fp32 the project's 1e-5; fp16 ~3.5x the worst measured; int8 ~2x (real width ~2.5x).
FP32_REL, FP32_COS = 1e-5, 0.999999
FP16_REL, FP16_COS = 5e-3, 0.99999
INT8_REL, INT8_COS = 0.3, 0.99
REAL_INT8_REL, REAL_INT8_COS = 0.1, 0.998
SIZES = [(140, 140), (56, 84), (84, 56)]  # (height, width): 10x10 patches (> 8x8 table), 4x6 and 6x4 (<)
IMAGES = ("document", "photo", "random")
PRE = {"rescale_factor": 1 / 255, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # the release's
IMAGE_TOKEN, VIDEO_TOKEN, IMAGE_START, IMAGE_END = 900, 901, 902, 903


def _tiny_model():
    from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration

    torch.manual_seed(0)
    cfg = PaddleOCRVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=14, image_size=112, spatial_merge_size=2),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [2, 3, 3]}),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
        vision_start_token_id=IMAGE_START, vision_end_token_id=IMAGE_END,
    )
    model = PaddleOCRVLForConditionalGeneration(cfg).eval()
    _redraw(list(model.model.visual.named_parameters()) + list(model.model.projector.named_parameters()))
    return model


def _redraw(params, seed=1):
    """Weights larger than HF's init (and a std-1 position table) so every part of the graph matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "position_embedding" in name:
                p.copy_(noise)
            else:
                p.copy_(noise * 1.5 / p[0].numel() ** 0.5)


def _hparams(config, size, pre=PRE) -> Hparams:
    """Our hyperparameters read from the HF config's own dict (native layout)."""
    d, path = config.to_dict(), Path("config.json")
    return Hparams(read_text_hparams(d, path), read_vision_hparams(d, path, pre, "test", size), NATIVE,
                   NATIVE_LAYOUT, config.image_token_id)


def _weights(state: dict) -> Weights:
    return Weights(load=lambda n: state[n].detach().float().numpy(), shape=lambda n: tuple(state[n].shape))


def _write(state, hp, dtype, out: Path) -> Path:
    graph = build_vision_graph(_weights(state), hp, dtype)
    h, w = hp.vision.image_size
    path = out / f"vision-{h}x{w}.{dtype}.onnx"
    written = write_encoder(graph, path, dtype)
    assert written.inputs == [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}]
    assert written.outputs == [{"name": "image_embeds", "shape": [(h // 28) * (w // 28), hp.text.hidden_size],
                                "dtype": "float32"}]
    return path


def _processor(mean=PRE["image_mean"], std=PRE["image_std"]):
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    return PaddleOCRVLImageProcessorPil(do_resize=False, image_mean=mean, image_std=std, rescale_factor=1 / 255)


def _hf_features(model, rgb_uint8, processor=None):
    """HF reference rows for one uint8 [H, W, 3] image already at the target size."""
    batch = (processor or _processor())(images=[rgb_uint8], return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output[0]
    return out.numpy(), batch


def _host(rgb_uint8, mean=PRE["image_mean"], std=PRE["image_std"]):
    """The board host's input: uint8 [H, W, 3] -> normalised float32 [1, 3, H, W]."""
    return normalize(rgb_uint8.transpose(2, 0, 1)[None].astype(np.float32), 1 / 255, mean, std)


def _diff(a, b):
    """(max abs relative to max |b|, cosine)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.abs(a - b).max() / np.abs(b).max()), float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def written(model, tmp_path_factory):
    """{(H, W, dtype): onnx path}: every size in fp32, fp16 and int8."""
    out = tmp_path_factory.mktemp("paddleocr-vision")
    state = model.state_dict()
    return {(*size, dtype): _write(state, _hparams(model.config, size), dtype, out)
            for size in SIZES for dtype in ("fp32", "fp16", "int8")}


def test_default_size_limits_and_bad_sizes(model):
    released = {"min_pixels": 147384, "max_pixels": 2822400, "patch_size": 14, "merge_size": 2, **PRE}
    assert pixel_limits(released) == (147384, 2822400)
    assert default_image_size(released, 28) == 812  # sqrt(sqrt(min * max)) = 803 -> 29 * 28
    assert default_image_size({}, 28) == 756  # HF class defaults 384^2 .. 1536^2 -> 768 -> 27 * 28
    saved = {"size": {"shortest_edge": 147384, "longest_edge": 2822400}}  # transformers 5 save_pretrained layout
    assert pixel_limits(saved) == (147384, 2822400) and default_image_size(saved, 28) == 812
    assert default_image_size({"min_pixels": 300 * 300, "max_pixels": 320 * 320}, 28) == 308  # clamped in range
    with pytest.raises(SmtError, match="min_pixels"):
        pixel_limits({"min_pixels": 10, "max_pixels": 5})
    assert vision_preprocess(released) == PRE
    assert vision_preprocess({}) == {"rescale_factor": 1 / 255, "image_mean": list(HF_DEFAULT_IMAGE_MEAN),
                                     "image_std": list(HF_DEFAULT_IMAGE_STD)}
    assert _hparams(model.config, 56).vision.image_size == (56, 56)
    assert _hparams(model.config, (84, 56)).vision.image_size == (84, 56)
    assert _hparams(model.config, None, released).vision.image_size == (812, 812)
    for bad in [(100, 112), (112, 100), 50, (0, 28), (32, 32), "big"]:
        with pytest.raises(SmtError, match="--image-size"):
            _hparams(model.config, bad)


def test_grid_constants_match_hf(model):
    """Raster patch order, rotary tables and the resampled position table equal HF's own code."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    vt = model.model.visual.vision_model
    table = vt.embeddings.position_embedding.weight.detach()
    assert vt.embeddings.interpolation_mode == "bilinear" and vt.embeddings.interpolation_align_corners is False
    for h, w in [(8, 8), (10, 10), (4, 6), (6, 4), (28, 40), (4, 18)]:
        grid = torch.tensor([[1, h, w]])
        pos = get_vision_position_ids(grid, 1)
        assert np.array_equal(raster_positions(h, w), pos.numpy())
        idx, wts = get_vision_interpolation_indices_and_weights(grid, 8, mode="bilinear", align_corners=False)
        hp = _hparams(model.config, (h * 14, w * 14))
        with torch.no_grad():
            ref_pe = (vt.embeddings.position_embedding(idx) * wts[:, :, None]).sum(1).numpy()
            cos, sin = vt.encoder.rotary_pos_emb(torch.zeros(1), pos)
        np.testing.assert_allclose(resample_position_table(table.numpy(), h, w), ref_pe, rtol=0, atol=1e-6)
        ours_cos, ours_sin = rotary_tables(hp.vision)
        np.testing.assert_allclose(ours_cos[:, 0], cos.numpy(), rtol=0, atol=2e-6)
        np.testing.assert_allclose(ours_sin[:, 0], sin.numpy(), rtol=0, atol=2e-6)
    # the 8x8 grid of a 112x112 image reads the table unchanged
    np.testing.assert_array_equal(resample_position_table(table.numpy(), 8, 8), table.numpy())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_graph_matches_hf(model, written, size, dtype):
    h, w = size
    enc = VisionEncoder(written[(h, w, dtype)])
    n = (h // 28) * (w // 28)
    assert enc.input_size == (h, w) and enc.hidden_size == 64 and enc.num_tokens == n
    rel_bound, cos_bound = {"fp32": (FP32_REL, FP32_COS), "fp16": (FP16_REL, FP16_COS),
                            "int8": (INT8_REL, INT8_COS)}[dtype]
    raws = raw_check_images(h, w, seed=7)  # other draws than the builder's check inputs
    for name in IMAGES:
        ref, batch = _hf_features(model, raws[name])
        assert batch["image_grid_thw"].tolist() == [[1, h // 14, w // 14]]
        out = enc.encode(_host(raws[name]))
        rel, cos = _diff(out, ref)
        print(f"{dtype} {h}x{w} {name}: rel max abs {rel:.2e} cosine 1-{1 - cos:.1e} "
              f"(|ref| max {np.abs(ref).max():.2f})")
        assert out.shape == ref.shape == (n, 64)
        assert rel <= rel_bound and cos >= cos_bound, (name, rel, cos)


def test_attention_in_query_blocks(model, tmp_path, monkeypatch):
    """At 812x812 the attention runs in blocks of query rows (ORT memory); force blocks of 3 rows (the last one
    shorter) on the tiny model and compare with HF as above."""
    from smt_convert.converters import onnx_graph

    h, w = SIZES[0]
    monkeypatch.setattr(onnx_graph, "ATTENTION_BLOCK_BYTES", 2 * 100 * 4 * 3)  # heads * S * float32 * 3 rows
    path = _write(model.state_dict(), _hparams(model.config, (h, w)), "fp32", tmp_path)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    assert sum(n.op_type == "Softmax" for n in graph.node) == 2 * 34  # 2 layers x ceil(100 / 3) blocks
    enc = VisionEncoder(path)
    for name, img in raw_check_images(h, w, seed=8).items():
        rel, cos = _diff(enc.encode(_host(img)), _hf_features(model, img)[0])
        assert rel <= FP32_REL and cos >= FP32_COS, (name, rel, cos)


def test_the_comparison_can_fail(model, written):
    """Each thing the graph must get right, done wrong in HF's own model, is far outside the fp32 bound."""
    h, w = SIZES[0]
    img = raw_check_images(h, w, seed=7)["document"]
    ours = VisionEncoder(written[(h, w, "fp32")]).encode(_host(img))
    ref, batch = _hf_features(model, img)
    pv, gh, gw, d = batch["pixel_values"], h // 14, w // 14, 32
    proj = model.model.projector
    wrong, grid = {}, batch["image_grid_thw"]
    with torch.no_grad():
        # patches in Qwen's 2x2 merge-block order instead of raster
        blocked = pv.reshape(gh // 2, 2, gw // 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(pv.shape)
        wrong["merge-block patch order"] = model.model.get_image_features(blocked, grid).pooler_output[0]
        # projector concatenating each 2x2 block column-major instead of row-major
        feats = proj.pre_norm(model.model.visual(pixel_values=pv.unsqueeze(0), grid_thw=grid).last_hidden_state)
        blocks = feats.reshape(gh // 2, 2, gw // 2, 2, d)
        column_major = blocks.permute(0, 2, 3, 1, 4).reshape(-1, 4 * d)
        wrong["column-major 2x2 merge"] = proj.linear_2(proj.act(proj.linear_1(column_major)))
        # position table resampled with align_corners=True (Qwen's choice)
        emb = model.model.visual.vision_model.embeddings
        emb.interpolation_align_corners = True
        try:
            wrong["align_corners=True position table"] = model.model.get_image_features(pv, grid).pooler_output[0]
        finally:
            emb.interpolation_align_corners = False
    assert _diff(ours, ref)[0] <= FP32_REL
    for what, out in wrong.items():
        err = _diff(out.numpy(), ours)[0]
        print(f"{h}x{w} {what}: rel max abs {err:.2f}")
        assert err > 100 * FP32_REL, what


def test_host_normalisation_other_mean_std(model, tmp_path):
    """With the HF class-default (CLIP) mean/std the host's normalize is the HF processor's input, and the
    graph (which does no normalisation) still matches."""
    mean, std = list(HF_DEFAULT_IMAGE_MEAN), list(HF_DEFAULT_IMAGE_STD)
    pre = {"rescale_factor": 1 / 255, "image_mean": mean, "image_std": std}
    img = raw_check_images(56, 112, seed=2)["document"]
    ref, batch = _hf_features(model, img, _processor(mean, std))
    pv = batch["pixel_values"].reshape(4, 8, 3, 14, 14).permute(2, 0, 3, 1, 4).reshape(1, 3, 56, 112)
    x = _host(img, mean, std)
    assert np.abs(pv.numpy() - x).max() < 1e-5  # the same tensor up to float32 rounding, patches in raster order
    path = _write(model.state_dict(), _hparams(model.config, (56, 112), pre), "fp32", tmp_path)
    rel, cos = _diff(VisionEncoder(path).encode(x), ref)
    assert rel <= FP32_REL and cos >= FP32_COS


def test_runtime_png_path(model, written, tmp_path):
    """PNG -> load_image -> resize_rgb -> normalize (the board host) -> ONNX, vs HF on the same resized pixels."""
    from PIL import Image

    h, w = SIZES[1]
    src = raw_check_images(150, 230, seed=3)["document"]
    png = tmp_path / "page.png"
    Image.fromarray(src).save(png)
    pixels = resize_rgb(load_image(png), w, h)
    out = VisionEncoder(written[(h, w, "fp32")]).encode(normalize(pixels, 1 / 255, PRE["image_mean"], PRE["image_std"]))
    ref, _ = _hf_features(model, pixels[0].transpose(1, 2, 0).astype(np.uint8))
    rel, cos = _diff(out, ref)
    assert rel <= FP32_REL and cos >= FP32_COS


# ---- real width ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_width():
    """The release's vision width (transformers' defaults) with one encoder layer, vision model + projector."""
    from transformers import PaddleOCRVLConfig
    from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRProjector, PaddleOCRVisionModel

    cfg = PaddleOCRVLConfig(vision_config=dict(num_hidden_layers=1),
                            text_config=dict(num_hidden_layers=1, vocab_size=1000))
    torch.manual_seed(0)
    visual, projector = PaddleOCRVisionModel(cfg.vision_config).eval(), PaddleOCRProjector(cfg).eval()
    _redraw(list(visual.named_parameters()) + list(projector.named_parameters()), seed=2)
    state = {**{"model.visual." + k: v for k, v in visual.state_dict().items()},
             **{"model.projector." + k: v for k, v in projector.state_dict().items()}}
    assert set(vision_shapes(_hparams(cfg, 56).vision, 1024)) == set(state)
    return cfg, visual, projector, state


@pytest.mark.parametrize("size", [(224, 224), (168, 280)])
def test_real_width_layer(real_width, tmp_path, size):
    cfg, visual, projector, state = real_width
    h, w = size
    hp = _hparams(cfg, size)
    v = hp.vision
    sizes = (v.hidden_size, v.num_heads, v.intermediate_size, v.table_side, hp.text.hidden_size)
    assert sizes == (1152, 16, 4304, 27, 1024)
    raws = raw_check_images(h, w, seed=5)
    refs = {}
    for name in IMAGES:
        batch = _processor()(images=[raws[name]], return_tensors="pt")
        with torch.no_grad():
            grid = batch["image_grid_thw"]
            feats = visual(pixel_values=batch["pixel_values"].unsqueeze(0), grid_thw=grid).last_hidden_state
            refs[name] = projector(feats, grid).numpy()
    for dtype, (rel_bound, cos_bound) in {"fp32": (FP32_REL, FP32_COS), "fp16": (FP16_REL, FP16_COS),
                                          "int8": (REAL_INT8_REL, REAL_INT8_COS)}.items():
        enc = VisionEncoder(_write(state, hp, dtype, tmp_path))
        for name in IMAGES:
            rel, cos = _diff(enc.encode(_host(raws[name])), refs[name])
            print(f"real width {dtype} {h}x{w} {name}: rel max abs {rel:.2e} cosine 1-{1 - cos:.1e}")
            assert rel <= rel_bound and cos >= cos_bound, (dtype, name, rel, cos)


# ---- positions ---------------------------------------------------------------------------------------------


def _hf_rope(model, ids, grid_thw):
    ids = torch.tensor([ids])
    types = (ids == IMAGE_TOKEN).int()  # the processor marks only the image placeholders (not START/END)
    pos, _ = model.model.get_rope_index(ids, types, image_grid_thw=torch.tensor([grid_thw]))
    return pos[:, 0].T.numpy()  # [L, 3]


@pytest.mark.parametrize("size", [(140, 140), (56, 84), (84, 56), (812, 812), (784, 1120), (1120, 784)])
def test_mrope_positions_match_hf_rope_index(model, size):
    """text + <|IMAGE_START|> + N image tokens + <|IMAGE_END|> + text: every position equals HF's."""
    h, w = size
    ny, nx = h // 28, w // 28
    n = ny * nx
    head, tail = [11, 12, 13, 14, 15], [21, 22, 23, 24]
    ids = head + [IMAGE_START] + [IMAGE_TOKEN] * n + [IMAGE_END] + tail
    ref = _hf_rope(model, ids, [1, h // 14, w // 14])

    def board(grid):
        before = text_positions(0, len(head) + 1)
        image, n_past = mrope_positions(len(head) + 1, n, grid)
        after = text_positions(n_past, 1 + len(tail))
        return np.concatenate([before, image, after]), n_past

    ours, n_past = board((ny, nx))  # with the real grid: runtime.positions is HF's rule exactly
    assert ours.shape == (len(ids), 4) and ours.dtype == np.int32 and not ours[:, 3].any()
    np.testing.assert_array_equal(ours[:, :3], ref)
    assert n_past == len(head) + 1 + max(nx, ny)
    assert ref[len(head) + 1 + n, 0] == n_past  # HF agrees: <|IMAGE_END|> sits at start + max(nx, ny)
    # the board's guess from N alone (closest-to-square pair, ny <= nx) is right only when it is the real grid
    guessed, _ = board(None)
    right = guess_grid(n) == (ny, nx)
    assert np.array_equal(guessed[:, :3], ref) == right
    assert right == (ny == nx or (h, w) == (56, 84))
