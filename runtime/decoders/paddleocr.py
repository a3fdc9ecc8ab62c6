"""Numpy ERNIE-4.5 decoder for llama.cpp architecture `paddleocr` (the LLM half of PaddleOCR-VL).

Exactly llama.cpp's graph (src/models/paddleocr.cpp, qwen2vl's graph with optional biases):
RMSNorm -> q/k/v projections (separate `attn_q/k/v` or fused `attn_qkv`, optional biases) -> M-RoPE ->
GQA attention (scale 1/sqrt(head_dim)) -> `attn_output` (optional bias) -> residual; RMSNorm -> SwiGLU
(`ffn_gate`, `ffn_up`, `ffn_down`, no biases) -> residual; `output_norm` -> `output` (or the tied
`token_embd`).

Rope: llama.cpp's rope type for this arch is MROPE (not qwen3vl's interleaved IMROPE): sections are
contiguous ranges of rotary pairs, pair i reading stream t for sector < s0, h for < s0+s1, w for
< s0+s1+s2, else e (sector = i mod sum(sections)), with NeoX pairing (x[i], x[i + n_rot/2]).

Weights are dequantised once to float32 at load, as in the qwen3vl decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smt_convert.runtime.decoders.qwen3vl import (
    KVCache,
    Qwen3VLConfig,
    Qwen3VLDecoder,
    _load_tensor,
    apply_rope,
    grouped_attention,
)
from smt_convert.runtime.errors import SmtError, where
from smt_convert.runtime.gguf_model import GGUFModel

# ---- config -------------------------------------------------------------------------------


class PaddleOCRConfig(Qwen3VLConfig):
    """The same hyperparameters as Qwen3-VL's decoder; llama.cpp's paddleocr graph rotates whole heads."""

    def check(self, model: GGUFModel) -> None:
        super().check(model)
        if self.n_rot != self.head_dim:
            raise SmtError(f"{where(model.path, model.arch + '.rope.dimension_count')}: {self.n_rot} != key_length "
                           f"{self.head_dim} (llama.cpp asserts equal)")


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
    wq: np.ndarray  # [n_head*head_dim, hidden]
    wk: np.ndarray  # [n_kv*head_dim, hidden]
    wv: np.ndarray
    wo: np.ndarray  # [hidden, n_head*head_dim]
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    bo: np.ndarray | None
    ffn_norm: np.ndarray
    w_gate: np.ndarray  # [ff, hidden]
    w_up: np.ndarray
    w_down: np.ndarray  # [hidden, ff]


def _load_layer(model: GGUFModel, cfg: PaddleOCRConfig, i: int) -> LayerWeights:
    h, q, kv = cfg.hidden, cfg.n_head * cfg.head_dim, cfg.n_kv * cfg.head_dim

    def t(name, *shape):
        return _load_tensor(model, f"blk.{i}.{name}", shape)

    def opt(name, *shape):
        return t(name, *shape) if model.has(f"blk.{i}.{name}") else None

    # llama.cpp's create_tensor_qkv: a fused attn_qkv (rows [q; k; v]) wins over separate q/k/v; a fused
    # bias, or separate biases on either form, are optional.
    if model.has(f"blk.{i}.attn_qkv.weight"):
        w = t("attn_qkv.weight", q + 2 * kv, h)
        wq, wk, wv = w[:q], w[q:q + kv], w[q + kv:]
        b = opt("attn_qkv.bias", q + 2 * kv)
        bq, bk, bv = (b[:q], b[q:q + kv], b[q + kv:]) if b is not None else (None, None, None)
    else:
        wq, wk, wv = t("attn_q.weight", q, h), t("attn_k.weight", kv, h), t("attn_v.weight", kv, h)
        bq = bk = bv = None
    if bq is None:
        bq, bk, bv = opt("attn_q.bias", q), opt("attn_k.bias", kv), opt("attn_v.bias", kv)
    return LayerWeights(
        attn_norm=t("attn_norm.weight", h),
        wq=wq, wk=wk, wv=wv,
        wo=t("attn_output.weight", h, q),
        bq=bq, bk=bk, bv=bv,
        bo=opt("attn_output.bias", h),
        ffn_norm=t("ffn_norm.weight", h),
        w_gate=t("ffn_gate.weight", cfg.ff, h),
        w_up=t("ffn_up.weight", cfg.ff, h),
        w_down=t("ffn_down.weight", h, cfg.ff),
    )


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w.T
    return y if b is None else y + b


# ---- decoder ------------------------------------------------------------------------------


class PaddleOCRDecoder(Qwen3VLDecoder):
    """ERNIE-4.5 decoder over a GGUF: Qwen3VLDecoder's loop and API with ERNIE's layers (no q/k norm,
    optional biases) and llama.cpp's contiguous-section M-RoPE. Positions are [n] (text: (p, p, p, 0) as
    llama.cpp) or [n, 4] (t, h, w, e)."""

    config_type = PaddleOCRConfig
    _load_layer = staticmethod(_load_layer)

    rope_streams = staticmethod(mrope_streams)

    def _attention(self, x, w: LayerWeights, cos, sin, mask, cache: KVCache, layer: int) -> np.ndarray:
        cfg = self.config
        n, d = x.shape[0], cfg.head_dim
        q = _linear(x, w.wq, w.bq).reshape(n, cfg.n_head, d)
        k = _linear(x, w.wk, w.bk).reshape(n, cfg.n_kv, d)
        v = _linear(x, w.wv, w.bv).reshape(n, cfg.n_kv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.extend(layer, k.transpose(1, 0, 2), v.transpose(1, 0, 2))  # [n_kv, T, d]
        return _linear(grouped_attention(q, keys, values, mask), w.wo, w.bo)
