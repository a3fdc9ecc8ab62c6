"""Numpy ERNIE-4.5 decoder for llama.cpp architecture `paddleocr` (the LLM half of PaddleOCR-VL).

Exactly llama.cpp's graph (src/models/paddleocr.cpp, qwen2vl's graph with optional biases):
RMSNorm -> q/k/v projections (separate `attn_q/k/v` or fused `attn_qkv`, optional biases) -> M-RoPE ->
GQA attention (scale 1/sqrt(head_dim)) -> `attn_output` (optional bias) -> residual; RMSNorm -> SwiGLU
(`ffn_gate`, `ffn_up`, `ffn_down`, no biases) -> residual; `output_norm` -> `output` (or the tied
`token_embd`).

Rope: llama.cpp's rope type for this arch is MROPE (not qwen3vl's interleaved IMROPE): sections are
contiguous ranges of rotary pairs, pair i reading stream t for sector < s0, h for < s0+s1, w for
< s0+s1+s2, else e (sector = i mod sum(sections)), with NeoX pairing (x[i], x[i + n_rot/2]).

Weights are read through `runtime/weights.py` (memory-mapped, packed / dequantised / streamed within a
memory budget), as in the qwen3vl decoder; q/k/v (fused or separate) are one `Linear`, gate/up another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smt_convert.runtime.decoders.blocks import SwiGLU, apply_rope, grouped_attention
from smt_convert.runtime.decoders.qwen3vl import KVCache, Qwen3VLConfig, Qwen3VLDecoder
from smt_convert.runtime.errors import SmtError, where
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.weights import Linear, WeightStore

# ---- config -------------------------------------------------------------------------------


class PaddleOCRConfig(Qwen3VLConfig):
    """The same hyperparameters as Qwen3-VL's decoder; llama.cpp's paddleocr graph rotates whole heads."""

    def check(self, model: GGUFModel) -> None:
        super().check(model)
        if self.n_rot != self.head_dim:
            raise SmtError(
                f"{where(model.path, model.arch + '.rope.dimension_count')}: {self.n_rot} != key_length "
                f"{self.head_dim} (llama.cpp asserts equal)"
            )


# ---- M-RoPE (contiguous sections) -------------------------------------------------------------


def mrope_streams(n_pairs: int, sections: list[int]) -> np.ndarray:
    """Position stream (0=t, 1=h, 2=w, 3=e) of each rotary pair, as ggml's MROPE (non-interleaved) picks it."""
    total = sum(sections)
    s0, s1, s2 = sections[0], sections[0] + sections[1], sections[0] + sections[1] + sections[2]
    streams = np.empty(n_pairs, dtype=np.int64)
    for i in range(n_pairs):
        sector = i % total
        streams[i] = 0 if sector < s0 else 1 if sector < s1 else 2 if sector < s2 else 3
    return streams


# ---- weights ------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    qkv: Linear  # rows [q (n_head*head_dim); k (n_kv*head_dim); v (n_kv*head_dim)], fused or stacked
    bqkv: np.ndarray | None  # [q + 2*kv] (zeros where a part has no bias), or None without any bias
    wo: Linear  # [hidden, n_head*head_dim]
    bo: np.ndarray | None
    ffn_norm: np.ndarray
    ffn: SwiGLU


def _load_layer(store: WeightStore, cfg: PaddleOCRConfig, i: int) -> LayerWeights:
    h, q, kv = cfg.hidden, cfg.n_head * cfg.head_dim, cfg.n_kv * cfg.head_dim
    b = f"blk.{i}."

    def opt(name, *shape):
        return store.vector(b + name, *shape) if store.has(b + name) else None

    # llama.cpp's create_tensor_qkv: a fused attn_qkv (rows [q; k; v]) wins over separate q/k/v; a fused
    # bias, or separate biases on either form, are optional.
    if store.has(b + "attn_qkv.weight"):
        qkv = store.linear(b + "attn_qkv.weight", shapes=[(q + 2 * kv, h)])
    else:
        qkv = store.linear(
            b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight", shapes=[(q, h), (kv, h), (kv, h)]
        )
    bqkv = opt("attn_qkv.bias", q + 2 * kv) if store.has(b + "attn_qkv.weight") else None
    if bqkv is None:
        parts = [opt("attn_q.bias", q), opt("attn_k.bias", kv), opt("attn_v.bias", kv)]
        if any(p is not None for p in parts):  # adding 0.0 where a part has no bias changes nothing
            bqkv = np.concatenate([p if p is not None else np.zeros(n, np.float32) for p, n in zip(parts, (q, kv, kv))])
    return LayerWeights(
        attn_norm=store.vector(b + "attn_norm.weight", h),
        qkv=qkv,
        bqkv=bqkv,
        wo=store.linear(b + "attn_output.weight", shapes=[(h, q)]),
        bo=opt("attn_output.bias", h),
        ffn_norm=store.vector(b + "ffn_norm.weight", h),
        ffn=SwiGLU(
            store.linear(b + "ffn_gate.weight", b + "ffn_up.weight", shapes=[(cfg.ff, h), (cfg.ff, h)]),
            store.linear(b + "ffn_down.weight", shapes=[(h, cfg.ff)]),
        ),
    )


def _linear(x: np.ndarray, w: Linear, b: np.ndarray | None) -> np.ndarray:
    y = w(x)
    return y if b is None else y + b


# ---- decoder ------------------------------------------------------------------------------


class PaddleOCRDecoder(Qwen3VLDecoder):
    """ERNIE-4.5 decoder over a GGUF: Qwen3VLDecoder's loop and API with ERNIE's layers (no q/k norm,
    optional biases) and llama.cpp's contiguous-section M-RoPE. Positions are [n] (text: (p, p, p, 0) as
    llama.cpp) or [n, 4] (t, h, w, e)."""

    config_type = PaddleOCRConfig
    _load_layer = staticmethod(_load_layer)  # type: ignore[assignment]  # this family's own LayerWeights, used only by its _attention

    rope_streams = staticmethod(mrope_streams)

    def _attention(self, x, w: LayerWeights, cos, sin, mask, cache: KVCache, layer: int) -> np.ndarray:  # type: ignore[override]  # as _load_layer
        cfg = self.config
        n, d = x.shape[0], cfg.head_dim
        qkv = _linear(x, w.qkv, w.bqkv)
        nq, nkv = cfg.n_head * d, cfg.n_kv * d
        q = qkv[:, :nq].reshape(n, cfg.n_head, d)
        k = qkv[:, nq : nq + nkv].reshape(n, cfg.n_kv, d)
        v = qkv[:, nq + nkv :].reshape(n, cfg.n_kv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.extend(layer, k.transpose(1, 0, 2), v.transpose(1, 0, 2))  # [n_kv, T, d]
        return _linear(grouped_attention(q, keys, values, mask), w.wo, w.bo)
