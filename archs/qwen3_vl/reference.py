"""The Hugging Face reference for a Qwen3-VL bundle, streamed: transformers' own classes, one module at a time.

Vision: Qwen3.5's patchify (HF's image processor on the runtime's resized image), then `Qwen3VL(Moe)VisionModel`'s
own forward with its blocks streamed; its DeepStack features are concatenated after the main rows, the layout of
the board wrapper's output. Text: the embeddings with the main rows at the image placeholders, HF's own M-RoPE
positions, each decoder layer built, run and freed, and after layer i < k the i-th DeepStack rows added at the
image positions (`Qwen3VLTextModel._deepstack_process`); final norm and lm_head.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from smt_convert.archs.qwen3_5.reference import Classes, hf_patches, rope_positions, streamed_tower
from smt_convert.archs.qwen3_vl.config import TEXT, Hparams
from smt_convert.converters.plugin import ReferenceRequest, ReferenceResult
from smt_convert.converters.reference_stream import build_module

ATTENTION = "sdpa"
EXPERTS = "grouped_mm"


def classes(moe: bool) -> Classes:
    if moe:
        from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe as moe_m

        return Classes(
            moe_m.Qwen3VLMoeConfig,
            moe_m.Qwen3VLMoeTextConfig,
            moe_m.Qwen3VLMoeModel,
            moe_m.Qwen3VLMoeVisionModel,
            moe_m.Qwen3VLMoeVisionBlock,
            moe_m.Qwen3VLMoeTextDecoderLayer,
            moe_m.Qwen3VLMoeTextRMSNorm,
            moe_m.Qwen3VLMoeTextRotaryEmbedding,
        )
    from transformers.models.qwen3_vl import modeling_qwen3_vl as m

    return Classes(
        m.Qwen3VLConfig,
        m.Qwen3VLTextConfig,
        m.Qwen3VLModel,
        m.Qwen3VLVisionModel,
        m.Qwen3VLVisionBlock,
        m.Qwen3VLTextDecoderLayer,
        m.Qwen3VLTextRMSNorm,
        m.Qwen3VLTextRotaryEmbedding,
    )


def checkpoint_loader(ckpt, hp: Hparams) -> Callable[[str], Any]:
    """Canonical name -> torch tensor; the release's transposed experts as transformers' loader turns them."""

    def load(name: str):
        tensor = ckpt.load(name)
        if hp.experts == "released" and name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")):
            return tensor.transpose(1, 2).contiguous()
        return tensor

    return load


def vision_rows(vision_config, cls: Classes, load: Callable, pixel_values, grid_thw) -> np.ndarray:
    """[N, out_hidden x (1 + k)]: the merger's rows, then each DeepStack merger's, side by side."""
    import torch

    with torch.no_grad():
        out = streamed_tower(vision_config, cls, load)(pixel_values, grid_thw=grid_thw)
        return torch.cat([out.pooler_output, *out.deepstack_features], dim=1).numpy()


def text_logits(text_config, cls: Classes, load: Callable, hp: Hparams, ids: list[int], image_rows, positions):
    """Logits [L, vocab]; `image_rows` [N, hidden x (1 + k)] as `vision_rows` gives them."""
    import torch
    from transformers.masking_utils import create_causal_mask

    t, width = hp.text, hp.text.hidden_size
    ids_t = torch.tensor(ids)
    embedding = load(TEXT + "embed_tokens.weight").float()
    h = embedding[ids_t][None].clone()
    if not t.tie_embeddings:
        del embedding
    placeholders = ids_t == hp.image_token_id
    deepstack = []
    if image_rows is not None:
        if int(placeholders.sum()) != image_rows.shape[0]:
            raise ValueError(f"{int(placeholders.sum())} image placeholders for {image_rows.shape[0]} encoder rows")
        rows = torch.from_numpy(image_rows)
        h[0, placeholders] = rows[:, :width]
        deepstack = [rows[:, width * (j + 1) : width * (j + 2)] for j in range(rows.shape[1] // width - 1)]
    with torch.no_grad():
        cos_sin = cls.rotary(text_config)(h, positions)
        mask = create_causal_mask(
            config=text_config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=None
        )
        for i in range(t.num_layers):
            layer = build_module(lambda i=i: cls.decoder_layer(text_config, i), load, f"{TEXT}layers.{i}.")  # type: ignore[misc]  # mypy cannot infer a lambda with a default argument
            h = layer(h, attention_mask=mask, position_embeddings=cos_sin)
            del layer
            if i < len(deepstack):
                h[0, placeholders] = h[0, placeholders] + deepstack[i]
        norm = build_module(lambda: cls.norm(t.hidden_size, eps=t.rms_norm_eps), load, TEXT + "norm.")
        head = embedding if t.tie_embeddings else load("lm_head.weight").float()
        return (norm(h)[0] @ head.T).numpy()


def reference(ckpt, hp: Hparams, request: ReferenceRequest) -> ReferenceResult:
    cls = classes(hp.text.moe)
    whole = cls.config.from_dict(ckpt.config)
    whole.vision_config._attn_implementation = ATTENTION
    text = whole.text_config
    text._attn_implementation = ATTENTION
    if hp.text.moe:
        text._experts_implementation = EXPERTS
    load = checkpoint_loader(ckpt, hp)
    ids = list(request.prompt_ids) + list(request.continuation)
    rows = grid = None
    extra = {}
    if request.host_input is not None:
        pixel_values, grid = hf_patches(request.host_input, hp)
        rows = vision_rows(whole.vision_config, cls, load, pixel_values, grid)
        extra["image_grid_thw"] = grid.tolist()
    positions = rope_positions(whole, cls, ids, hp.image_token_id, grid)
    logits = text_logits(text, cls, load, hp, ids, rows, positions)
    return ReferenceResult(logits=logits, encoder=rows, extra=extra)
