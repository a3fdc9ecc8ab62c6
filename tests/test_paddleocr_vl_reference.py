"""PaddleOCR-VL's streamed Hugging Face reference (archs/paddleocr_vl/reference.py) vs the whole transformers
model: the same checkpoint loaded module by module must give the full `PaddleOCRVLForConditionalGeneration`'s
logits at every position (image prompts with M-RoPE positions, text-only prompts) and its image features, for
both checkpoint layouts and for fused qkv / up_gate text tensors.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from smt_convert.archs.paddleocr_vl.plugin import PaddleOCRVLPlugin
from smt_convert.archs.paddleocr_vl.prompt import raw_check_images
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.plugin import ReferenceRequest
from smt_convert.runtime.image import normalize, resize_rgb
from smt_convert.testing.checkpoints import make_tiny_paddleocr_vl

REL = 1e-5  # max abs difference relative to max |full model| (measured: 0, bitwise equal, logits and rows)
SIZES = [(112, 112), (56, 112)]  # 8x8 patches (> the 4x4 table), and a non-square 2x4-token grid


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pv-ref")
    info = make_tiny_paddleocr_vl(root / "native")
    make_tiny_paddleocr_vl(root / "original", layout="original")
    return root, info


def _fuse(src, dst):
    """The original checkpoint with Paddle's fused `qkv_proj` ([q; k; v]) and `up_gate_proj` ([gate; up])."""
    import shutil

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    for key in [k for k in state if k.startswith("model.layers.") and k.endswith("self_attn.q_proj.weight")]:
        p = key[: -len("q_proj.weight")]
        state[p + "qkv_proj.weight"] = torch.cat([state.pop(p + f"{x}_proj.weight") for x in "qkv"])
    for key in [k for k in state if k.endswith("mlp.gate_proj.weight")]:
        p = key[: -len("gate_proj.weight")]
        state[p + "up_gate_proj.weight"] = torch.cat([state.pop(p + "gate_proj.weight"),
                                                      state.pop(p + "up_proj.weight")])
    save_file(state, str(dst / "model.safetensors"))
    return dst


def _request(info, hp, size, with_image=True):
    ids = info["ids"]
    h, w = size
    n = (h // 28) * (w // 28)
    media = raw_check_images(h + 17, w + 9, seed=4)["document"]
    p = hp.vision.preprocess
    host = normalize(resize_rgb(media, w, h), p["rescale_factor"], p["image_mean"], p["image_std"])
    text = [5, 17, 23, 9]
    image = [ids["<|IMAGE_START|>"]] + [hp.image_token_id] * n + [ids["<|IMAGE_END|>"]] if with_image else []
    prompt = text[:2] + image + text[2:]
    return ReferenceRequest(media=media if with_image else None, host_input=host if with_image else None,
                            prompt_ids=prompt, continuation=[31, 7, 12], stop_ids=[2])


def _full_model(model, hp, request, **overrides):
    """The whole HF model on the same prompt: pixel_values are the host input cut into raster patches."""
    ids = torch.tensor([request.prompt_ids + request.continuation])
    kwargs = dict(overrides)
    if request.host_input is not None:
        h, w = hp.vision.image_size
        x = torch.from_numpy(request.host_input)[0]
        pixel_values = x.reshape(3, h // 14, 14, w // 14, 14).permute(1, 3, 0, 2, 4).reshape(-1, 3, 14, 14)
        grid = torch.tensor([[1, h // 14, w // 14]])
        kwargs.update(pixel_values=pixel_values, image_grid_thw=grid,
                      mm_token_type_ids=(ids == hp.image_token_id).int())
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0].numpy()
        if request.host_input is None:
            return logits, None
        feats = model.model.get_image_features(kwargs["pixel_values"], kwargs["image_grid_thw"]).pooler_output[0]
    return logits, feats.numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("layout", ["native", "original", "fused"])
@pytest.mark.parametrize("size", SIZES)
def test_streamed_reference_equals_the_full_model(tiny, tmp_path, layout, size):
    root, info = tiny
    path = _fuse(root / "original", tmp_path / "fused") if layout == "fused" else root / layout
    plugin = PaddleOCRVLPlugin()
    ckpt = Checkpoint.open(path)
    hp = plugin.read_hparams(ckpt, SimpleNamespace(image_size=size))
    fused = layout == "fused"
    assert (hp.text_layout.fused_qkv, hp.text_layout.fused_ffn) == (fused, fused)
    request = _request(info, hp, size)
    result = plugin.reference(ckpt, hp, request)
    logits, feats = _full_model(info["model"], hp, request)
    n = (size[0] // 28) * (size[1] // 28)
    assert result.encoder.shape == feats.shape == (n, 64)
    assert result.logits.shape == logits.shape == (len(request.prompt_ids) + 3, hp.text.vocab_size)
    print(f"{layout} {size}: image rows rel {_rel(result.encoder, feats):.1e}, "
          f"logits rel {_rel(result.logits, logits):.1e}")
    assert _rel(result.encoder, feats) <= REL
    assert _rel(result.logits, logits) <= REL
    (row,) = result.rows
    assert row.check == "host preprocessing" and row.ok and row.value <= 1e-5
    # the comparison can fail: the same model with 1-D positions instead of M-RoPE is far off after the image
    flat, _ = _full_model(info["model"], hp, request, position_ids=torch.arange(len(result.logits))[None])
    print(f"{layout} {size}: 1-D positions: logits rel {_rel(result.logits, flat):.1e}")
    assert _rel(result.logits, flat) > 100 * REL


def test_text_only_prompt(tiny):
    root, info = tiny
    plugin = PaddleOCRVLPlugin()
    ckpt = Checkpoint.open(root / "native")
    hp = plugin.read_hparams(ckpt, SimpleNamespace(image_size=56))
    request = _request(info, hp, (56, 56), with_image=False)
    result = plugin.reference(ckpt, hp, request)
    logits, _ = _full_model(info["model"], hp, request)
    assert result.encoder is None and result.rows == []
    assert _rel(result.logits, logits) <= REL


def test_placeholder_count_must_match(tiny):
    root, info = tiny
    plugin = PaddleOCRVLPlugin()
    ckpt = Checkpoint.open(root / "native")
    hp = plugin.read_hparams(ckpt, SimpleNamespace(image_size=56))
    request = _request(info, hp, (56, 56))
    request.prompt_ids = [t for t in request.prompt_ids if t != hp.image_token_id][:-1] + [hp.image_token_id]
    with pytest.raises(ValueError, match="1 image placeholders in the prompt, 4 encoder rows"):
        plugin.reference(ckpt, hp, request)


def test_tied_lm_head_is_the_embedding(tiny, tmp_path):
    """A tied checkpoint (no lm_head tensor): the reference's LM head is the token embedding, as HF ties it."""
    import json
    import shutil

    from transformers import PaddleOCRVLForConditionalGeneration

    root, info = tiny
    hf = tmp_path / "tied"
    shutil.copytree(root / "native", hf)
    state = load_file(str(hf / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(hf / "model.safetensors"))
    config = json.loads((hf / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (hf / "config.json").write_text(json.dumps(config))
    model = PaddleOCRVLForConditionalGeneration.from_pretrained(str(hf)).eval()
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    plugin = PaddleOCRVLPlugin()
    ckpt = Checkpoint.open(hf)
    hp = plugin.read_hparams(ckpt, SimpleNamespace(image_size=56))
    assert hp.text.tie_embeddings
    request = _request(info, hp, (56, 56))
    logits, _ = _full_model(model, hp, request)
    assert _rel(plugin.reference(ckpt, hp, request).logits, logits) <= REL
