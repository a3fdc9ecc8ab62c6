"""The Hugging Face reference for a PaddleOCR-VL bundle, streamed one module at a time.

transformers' own classes (PaddleOCRVisionEmbeddings, PaddleOCRVisionEncoderLayer, PaddleOCRProjector,
PaddleOCRDecoderLayer, the rotary embeddings, `get_rope_index`) are built one at a time from the checkpoint's
weights, run and freed, so peak memory stays near one block plus the activations whatever the depth (the
released vision tower is 0.4 B parameters). The steps are those of `PaddleOCRVLForConditionalGeneration.forward`:

1. vision: the host's normalised image cut into raster-order 14 x 14 patches (what HF's image processor
   returns, checked in a row against the processor itself), embeddings, the encoder layers, post-LayerNorm,
   the projector -> encoder rows;
2. text: token embeddings of prompt + continuation with the encoder rows scattered over the image
   placeholders, M-RoPE positions from HF's `get_rope_index`, each decoder layer over the whole sequence
   (causal mask as HF builds it), final norm and the LM head (the embedding when tied) -> logits everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from smt_convert.archs.paddleocr_vl.config import LM_HEAD, PROJECTOR, TEXT_PREFIX, VISION, Hparams, vision_to_ckpt
from smt_convert.archs.paddleocr_vl.text import canonical_text_sources
from smt_convert.converters.plugin import ReferenceRequest, ReferenceResult
from smt_convert.converters.reference_stream import build_module
from smt_convert.runtime.verify import Row

ATTENTION = "sdpa"  # what PaddleOCRVLForConditionalGeneration picks by default on CPU
HOST_PIXELS_MAX_ABS = 1e-5  # host normalisation vs HF's processor: float32 rounding only (measured <= 4.8e-7)


def hf_config(hp: Hparams):
    """PaddleOCRVLConfig for this checkpoint's hyperparameters (the classes below are built from its parts)."""
    from transformers import PaddleOCRVLConfig

    t, v = hp.text, hp.vision
    text = dict(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings,
        use_bias=False,
        hidden_act="silu",
        tie_word_embeddings=t.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
    )
    vision = dict(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        patch_size=v.patch_size,
        spatial_merge_size=v.merge_size,
        image_size=v.table_side * v.patch_size,
        layer_norm_eps=v.layer_norm_eps,
        hidden_act=v.hidden_act,
        rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta},
    )
    cfg = PaddleOCRVLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=t.tie_embeddings, image_token_id=hp.image_token_id
    )
    cfg.text_config._attn_implementation = ATTENTION  # type: ignore[union-attr]  # transformers types sub-configs loosely (dict | config | None)
    cfg.vision_config._attn_implementation = ATTENTION  # type: ignore[union-attr]  # as above
    return cfg


def reference(ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
    """Encoder rows for `request.host_input` and logits over prompt + continuation, module by module."""
    cfg = hf_config(hp)
    to_ckpt = vision_to_ckpt(hp.layout)
    sources = canonical_text_sources(hp.text, hp.text_layout)

    def load_vision(name: str) -> torch.Tensor:
        return ckpt.load(to_ckpt(name))

    def load_text(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(sources[name].build(lambda n: ckpt.load(n).float().numpy())))

    rows, encoder = [], None
    if request.host_input is not None:
        pixels = torch.from_numpy(np.asarray(request.host_input, dtype=np.float32))
        encoder = vision_rows(cfg, hp, load_vision, pixels)
        if request.media is not None:
            rows.append(host_pixels_row(hp, request.media, request.host_input, request.host))
    ids = list(request.prompt_ids) + list(request.continuation)
    logits = text_logits(cfg, hp, load_text, ids, encoder)
    return ReferenceResult(logits=logits, encoder=None if encoder is None else encoder.numpy(), rows=rows)


# ---- vision ----------------------------------------------------------------------------------------------------


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[1, 3, H, W] -> [S, 3, p, p] in raster order (the layout of HF's processor `pixel_values`)."""
    _, c, h, w = pixels.shape
    x = pixels[0].reshape(c, h // patch, patch, w // patch, patch).permute(1, 3, 0, 2, 4)
    return x.reshape(-1, c, patch, patch)


def vision_rows(cfg, hp: Hparams, load, pixels: torch.Tensor) -> torch.Tensor:
    """HF's `get_image_features` for one host-normalised image [1, 3, H, W], one encoder layer at a time."""
    from torch import nn
    from transformers.models.paddleocr_vl import modeling_paddleocr_vl as M
    from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

    vcfg, v = cfg.vision_config, hp.vision
    rows, cols = pixels.shape[2] // v.patch_size, pixels.shape[3] // v.patch_size
    grid_thw = torch.tensor([[1, rows, cols]])
    with torch.no_grad():
        embed = build_module(lambda: M.PaddleOCRVisionEmbeddings(vcfg), load, VISION + "embeddings.")
        h = embed(patchify(pixels, v.patch_size).unsqueeze(0), grid_thw=grid_thw)
        del embed
        position_ids = get_vision_position_ids(grid_thw, 1)
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, vcfg)
        rotary = build_module(lambda: M.PaddleOCRVisionRotaryEmbedding(vcfg), load, "")
        position_embeddings = rotary(h, position_ids)
        for i in range(v.num_layers):
            layer = build_module(lambda: M.PaddleOCRVisionEncoderLayer(vcfg), load, f"{VISION}encoder.layers.{i}.")
            h = layer(h, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, position_embeddings=position_embeddings)
            del layer
        post = build_module(
            lambda: nn.LayerNorm(v.hidden_size, eps=vcfg.layer_norm_eps), load, VISION + "post_layernorm."
        )
        h = post(h)
        projector = build_module(lambda: M.PaddleOCRProjector(cfg), load, PROJECTOR)
        return projector(h, grid_thw)


def host_pixels_row(hp: Hparams, media: np.ndarray, host_input: np.ndarray, host: str = "hf") -> Row:
    """The runtime's host normalisation vs HF's own image processor (resize off) on the same resized image
    (resized on `host`, the path the runtime took)."""
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    from smt_convert.runtime.host import image_pixels

    h, w = hp.vision.image_size
    resized = image_pixels(media, w, h, host)[0].transpose(1, 2, 0).astype(np.uint8)
    p = hp.vision.preprocess
    processor = PaddleOCRVLImageProcessorPil(
        do_resize=False, rescale_factor=p["rescale_factor"], image_mean=p["image_mean"], image_std=p["image_std"]
    )
    expected = processor(images=[resized], return_tensors="pt")["pixel_values"]
    ours = patchify(torch.from_numpy(np.asarray(host_input, dtype=np.float32)), hp.vision.patch_size)
    value = float((ours - expected).abs().max()) if ours.shape == expected.shape else float("inf")
    return Row(
        "host preprocessing",
        "max abs vs HF processor",
        value,
        f"<= {HOST_PIXELS_MAX_ABS}",
        value <= HOST_PIXELS_MAX_ABS,
    )


# ---- text ------------------------------------------------------------------------------------------------------


class _RopeIndexHost:
    """The two members HF's `PaddleOCRVLModel.get_rope_index` reads from its model, so that the model's own
    rope-index code runs without building the model."""

    def __init__(self, config):
        from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRVLModel

        self.config = config
        self.get_vision_position_ids = PaddleOCRVLModel.get_vision_position_ids.__get__(self)
        self.get_rope_index = PaddleOCRVLModel.get_rope_index.__get__(self)


def mrope_position_ids(cfg, hp: Hparams, ids: torch.Tensor, n_image_rows: int) -> torch.Tensor:
    """[3, 1, L] positions as HF computes them: `get_rope_index` when the prompt holds an image, else 0..L-1."""
    is_image = (ids == hp.image_token_id).int()
    if n_image_rows == 0:
        return torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
    rows, cols = hp.vision.patch_grid
    positions, _ = _RopeIndexHost(cfg).get_rope_index(ids, is_image, image_grid_thw=torch.tensor([[1, rows, cols]]))
    return positions


def text_logits(cfg, hp: Hparams, load, ids: list[int], image_rows: torch.Tensor | None) -> np.ndarray:
    """Logits [L, vocab] of the decoder over `ids`, image rows spliced at the placeholders, layer by layer."""
    from torch import nn
    from transformers.masking_utils import create_causal_mask
    from transformers.models.paddleocr_vl import modeling_paddleocr_vl as M

    tcfg, t = cfg.text_config, hp.text
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        h = nn.functional.embedding(input_ids, load(TEXT_PREFIX + "embed_tokens.weight").float())
        mask = input_ids == hp.image_token_id
        n_image = int(mask.sum())
        if image_rows is not None or n_image:
            if image_rows is None or n_image != image_rows.shape[0]:
                found = "none" if image_rows is None else image_rows.shape[0]
                raise ValueError(f"{n_image} image placeholders in the prompt, {found} encoder rows")
            h = h.masked_scatter(mask[..., None], image_rows.to(h.dtype))
        position_ids = mrope_position_ids(cfg, hp, input_ids, n_image)
        rotary = build_module(lambda: M.PaddleOCRRotaryEmbedding(tcfg), load, "")
        position_embeddings = rotary(h, position_ids)
        causal = create_causal_mask(config=tcfg, inputs_embeds=h, attention_mask=None, cache=None, position_ids=None)
        for i in range(t.num_layers):
            layer = build_module(lambda i=i: M.PaddleOCRDecoderLayer(tcfg, i), load, f"{TEXT_PREFIX}layers.{i}.")  # type: ignore[misc]  # mypy cannot infer a lambda with a default argument
            h = layer(h, attention_mask=causal, position_embeddings=position_embeddings)
            del layer
        norm = build_module(lambda: M.PaddleOCRRMSNorm(t.hidden_size, eps=t.rms_norm_eps), load, TEXT_PREFIX + "norm.")
        h = norm(h)
        head = build_module(lambda: nn.Linear(t.hidden_size, t.vocab_size, bias=False), load, LM_HEAD[: -len("weight")])
        return head(h)[0].numpy()
