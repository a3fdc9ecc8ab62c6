"""The Hugging Face reference for a Qwen3.5 bundle, streamed: transformers' own classes, one module at a time.

Vision: HF's image processor patchifies the image the runtime fed its encoder (already resized), then HF's
`Qwen3_5(Moe)VisionModel.forward` runs unchanged (its interpolation, rotary tables, blocks and merger) with each
block built from the checkpoint just before it runs and freed after: the 0.3-0.45 B-parameter towers never
sit in memory whole.
Text: token embeddings of prompt + continuation with the vision rows spliced at the image placeholders,
positions from HF's own `get_rope_index` (M-RoPE), each decoder layer (Gated DeltaNet or gated attention, MLP or
MoE) built, run over the whole sequence without a cache, and freed; final norm and lm_head (the embedding when
tied). The logits equal the full model's without ever holding it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from smt_convert.archs.qwen3_5.config import TEXT_PREFIX, VISION, Hparams, ImageModel
from smt_convert.converters.plugin import ReferenceRequest, ReferenceResult
from smt_convert.converters.reference_stream import build_module, streamed

ATTENTION = "sdpa"  # what transformers picks by default for these classes on CPU
EXPERTS = "grouped_mm"  # likewise for the MoE experts (set explicitly: a standalone layer has no default)


@dataclass(frozen=True)
class Classes:
    """The transformers classes of one variant (dense or MoE; Qwen3-VL's fill the same record)."""

    config: Any  # the multimodal config class
    text_config: Any
    model: Any  # holds get_rope_index
    vision: Any
    vision_block: Any
    decoder_layer: Any
    norm: Any
    rotary: Any


def classes(moe: bool) -> Classes:
    if moe:
        from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as moe_m

        return Classes(
            moe_m.Qwen3_5MoeConfig,
            moe_m.Qwen3_5MoeTextConfig,
            moe_m.Qwen3_5MoeModel,
            moe_m.Qwen3_5MoeVisionModel,
            moe_m.Qwen3_5MoeVisionBlock,
            moe_m.Qwen3_5MoeDecoderLayer,
            moe_m.Qwen3_5MoeRMSNorm,
            moe_m.Qwen3_5MoeTextRotaryEmbedding,
        )
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    return Classes(
        m.Qwen3_5Config,
        m.Qwen3_5TextConfig,
        m.Qwen3_5Model,
        m.Qwen3_5VisionModel,
        m.Qwen3_5VisionBlock,
        m.Qwen3_5DecoderLayer,
        m.Qwen3_5RMSNorm,
        m.Qwen3_5TextRotaryEmbedding,
    )


def hf_configs(config: dict, hp: Hparams, cls: Classes):
    """(whole config, text config) as transformers reads the checkpoint's config.json."""
    if hp.prefix == TEXT_PREFIX:
        whole = cls.config.from_dict(config)
        text = whole.text_config
        whole.vision_config._attn_implementation = ATTENTION
    else:
        whole = text = cls.text_config.from_dict(config)
    text._attn_implementation = ATTENTION
    if hp.text.moe:
        text._experts_implementation = EXPERTS
    return whole, text


def checkpoint_loader(ckpt, hp: Hparams) -> Callable[[str], Any]:
    """Canonical name -> torch tensor. Per-expert MoE checkpoints are stacked into the fused parameters the
    transformers module holds (`gate_up_proj` = [gate; up] per expert, `down_proj`)."""
    import torch

    def load(name: str):
        if hp.experts == "per_expert" and name.endswith(".mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            return torch.stack(
                [
                    torch.cat([ckpt.load(f"{base}{j}.gate_proj.weight"), ckpt.load(f"{base}{j}.up_proj.weight")])
                    for j in range(hp.text.num_experts)
                ]
            )
        if hp.experts == "per_expert" and name.endswith(".mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            return torch.stack([ckpt.load(f"{base}{j}.down_proj.weight") for j in range(hp.text.num_experts)])
        return ckpt.load(name)

    return load


# ---- vision ----------------------------------------------------------------------------------------------


def hf_patches(host_input: np.ndarray, hp: ImageModel):
    """HF's image processor on the image the runtime fed its encoder ([1, 3, H, W] 0..255, already resized):
    (pixel_values, image_grid_thw)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    v = hp.vision
    assert v is not None  # an image model
    proc = Qwen2VLImageProcessorPil(
        do_resize=False,
        image_mean=list(v.image_mean),
        image_std=list(v.image_std),
        rescale_factor=v.rescale_factor,
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size,
    )
    image = np.clip(np.rint(host_input[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
    batch = proc(images=[image], return_tensors="pt")
    return batch["pixel_values"], batch["image_grid_thw"]


def streamed_tower(vision_config, cls: Classes, load: Callable):
    """HF's vision model with each block built from the checkpoint just before it runs (Qwen3-VL's too)."""
    import torch

    stem = copy.deepcopy(vision_config)
    stem.depth = 0  # patch embedding, position table, rotary and mergers; the blocks are streamed below
    tower = build_module(lambda: cls.vision(stem), load, VISION)
    tower.blocks = torch.nn.ModuleList(
        [
            streamed(lambda: cls.vision_block(vision_config), load, f"{VISION}blocks.{i}.")
            for i in range(vision_config.depth)
        ]
    )
    return tower


def vision_rows(vision_config, cls: Classes, load: Callable, pixel_values, grid_thw) -> np.ndarray:
    """HF's vision model on the patches, blocks streamed: [N, out_hidden_size]."""
    import torch

    with torch.no_grad():
        return streamed_tower(vision_config, cls, load)(pixel_values, grid_thw=grid_thw).pooler_output.numpy()


# ---- text ------------------------------------------------------------------------------------------------


def rope_positions(whole_config, cls: Classes, ids: list[int], image_token: int | None, grid_thw):
    """[3, 1, L] (t, h, w) positions: HF's own `get_rope_index` when the prompt holds an image, else 0..L-1."""
    import torch

    ids_t = torch.tensor([ids])
    if grid_thw is None or image_token is None or not bool((ids_t == image_token).any()):
        return torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)

    class RopeIndex:
        """HF's `get_rope_index` without the model it is a method of (it reads only the config)."""

        get_vision_position_ids = cls.model.get_vision_position_ids
        get_rope_index = cls.model.get_rope_index

        def __init__(self, config):
            self.config = config

    positions, _ = RopeIndex(whole_config).get_rope_index(ids_t, (ids_t == image_token).int(), image_grid_thw=grid_thw)
    return positions


def text_logits(text_config, cls: Classes, load: Callable, hp: Hparams, ids: list[int], image_rows, positions):
    """Logits [L, vocab] at every position of `ids`, the image placeholders replaced by `image_rows`."""
    import torch
    from transformers.masking_utils import create_causal_mask

    prefix = hp.prefix
    ids_t = torch.tensor(ids)
    embedding = load(prefix + "embed_tokens.weight").float()
    h = embedding[ids_t][None].clone()
    if not hp.text.tie_embeddings:
        del embedding
    if image_rows is not None:
        assert hp.image_token_id is not None  # an image model
        placeholders = ids_t.eq(hp.image_token_id)
        if int(placeholders.sum()) != image_rows.shape[0]:
            raise ValueError(f"{int(placeholders.sum())} image placeholders for {image_rows.shape[0]} encoder rows")
        h[0, placeholders] = torch.from_numpy(image_rows)
    with torch.no_grad():
        rope = cls.rotary(text_config)  # no parameters: inv_freq comes from the config
        cos_sin = rope(h, positions)
        mask = create_causal_mask(
            config=text_config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=None
        )
        for i in range(hp.text.num_layers):
            layer = build_module(lambda i=i: cls.decoder_layer(text_config, i), load, f"{prefix}layers.{i}.")  # type: ignore[misc]  # mypy cannot infer a lambda with a default argument
            h = layer(h, position_embeddings=cos_sin, attention_mask=None if hp.text.is_linear(i) else mask)
            del layer
        norm = build_module(lambda: cls.norm(hp.text.hidden_size, eps=hp.text.rms_norm_eps), load, prefix + "norm.")
        head = embedding if hp.text.tie_embeddings else load("lm_head.weight").float()
        return (norm(h)[0] @ head.T).numpy()


# ---- the plugin's reference ------------------------------------------------------------------------------


def reference(ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
    """Vision rows for the runtime's own resized image (HF's processor patchifies it) and logits over prompt +
    continuation, with HF's M-RoPE positions."""
    cls = classes(hp.text.moe)
    whole, text = hf_configs(ckpt.config, hp, cls)
    load = checkpoint_loader(ckpt, hp)
    ids = list(request.prompt_ids) + list(request.continuation)
    rows = grid = None
    extra = {}
    if hp.vision is not None and request.host_input is not None:
        pixel_values, grid = hf_patches(request.host_input, hp)
        rows = vision_rows(whole.vision_config, cls, load, pixel_values, grid)
        extra["image_grid_thw"] = grid.tolist()
    positions = rope_positions(whole, cls, ids, hp.image_token_id, grid)
    logits = text_logits(text, cls, load, hp, ids, rows, positions)
    return ReferenceResult(logits=logits, encoder=rows, extra=extra)
