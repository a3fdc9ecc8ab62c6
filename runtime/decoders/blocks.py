"""The numpy building blocks the decoders share (one module, so an architecture file reads as its own math):
norms and activations, interleaved M-RoPE as ggml picks position streams, causal GQA, top-k MoE routing, and the
checks every forward call makes. Each is written to match llama.cpp's kernel of the same name, which is what the
board runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.weights import Experts, Linear


class RopeConfig(Protocol):
    """What `rope_angles` reads from a decoder's config."""

    n_rot: int
    rope_base: float
    sections: list[int]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def imrope_streams(n_pairs: int, sections: list[int]) -> np.ndarray:
    """Position stream (0=t, 1=h, 2=w, 3=e) used by each rotary pair, as ggml's IMROPE picks it."""
    total = sum(sections)
    streams = np.empty(n_pairs, dtype=np.int64)
    for i in range(n_pairs):
        sector = i % total
        if sector % 3 == 1 and sector < 3 * sections[1]:
            streams[i] = 1
        elif sector % 3 == 2 and sector < 3 * sections[2]:
            streams[i] = 2
        elif sector % 3 == 0 and sector < 3 * sections[0]:
            streams[i] = 0
        else:
            streams[i] = 3
    return streams


def as_mrope_positions(positions: np.ndarray) -> np.ndarray:
    """[n] text positions become (p, p, p, 0) per token, as llama.cpp does; [n, 4] pass through."""
    pos = np.asarray(positions)
    if pos.ndim == 1:
        pos = np.stack([pos, pos, pos, np.zeros_like(pos)], axis=1)
    if pos.ndim != 2 or pos.shape[1] != 4:
        raise SmtError(f"positions: expected shape [n] or [n, 4], got {list(pos.shape)}")
    return pos.astype(np.int64)


def rope_angles(positions: np.ndarray, cfg: RopeConfig, streams=imrope_streams) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [n, n_rot/2]: pair i turns by pos[stream_i] * base^(-2i/n_rot). `streams(n_pairs, sections)`
    says which position stream each pair reads (interleaved for qwen3vl/qwen35, contiguous for paddleocr)."""
    n_pairs = cfg.n_rot // 2
    inv_freq = cfg.rope_base ** (-2.0 * np.arange(n_pairs, dtype=np.float64) / cfg.n_rot)
    pos = as_mrope_positions(positions)[:, streams(n_pairs, cfg.sections)]  # [n, n_pairs]
    theta = pos.astype(np.float64) * inv_freq
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NeoX layout: pair i is (x[i], x[i + n_rot/2]). x is [n, heads, head_dim]; dims past n_rot untouched."""
    half = cos.shape[-1]
    c, s = cos[:, None, :], sin[:, None, :]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    out = x.copy()
    out[..., :half] = x1 * c - x2 * s
    out[..., half : 2 * half] = x2 * c + x1 * s
    return out


def causal_mask(n: int, past: int) -> np.ndarray:
    """[n, past+n] additive mask: new token i sees every cached token and new tokens 0..i."""
    allowed = np.arange(past + n)[None, :] <= (past + np.arange(n))[:, None]
    return np.where(allowed, np.float32(0), np.float32(-np.inf)).astype(np.float32)


def grouped_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Causal GQA over the cache: q [n, n_head, d], keys/values [n_kv, T, d] -> [n, n_head * d].
    Query heads h*group .. h*group+group-1 share kv head h (the grouping of HF's repeat_kv)."""
    n, n_head, d = q.shape
    n_kv = keys.shape[0]
    qg = q.transpose(1, 0, 2).reshape(n_kv, n_head // n_kv, n, d)
    scores = (qg @ keys[:, None].transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(d))  # [n_kv, g, n, T]
    out = softmax(scores + mask) @ values[:, None]  # [n_kv, g, n, d]
    return out.reshape(n_head, n, d).transpose(1, 0, 2).reshape(n, n_head * d)


def moe_ffn(x: np.ndarray, router: Linear, gate_exps, up_exps, down_exps, k: int) -> np.ndarray:
    """Top-k of softmax(router), renormalised over the k chosen (llama.cpp's qwen3moe / qwen35moe, HF's
    routers); each chosen expert a SwiGLU. Only the selected experts' slices are ever read."""
    probs = softmax(router(x))  # [n, E]
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, top, axis=-1)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    out = np.zeros_like(x)
    for e in np.unique(top):
        rows, slot = np.nonzero(top == e)
        xe = x[rows]
        out[rows] += down_exps[e](silu(gate_exps[e](xe)) * up_exps[e](xe)) * weights[rows, slot, None]
    return out


@dataclass
class SwiGLU:
    """The dense FFN: gate and up stacked in one Linear (one matmul), silu(gate) * up, then down."""

    gate_up: Linear  # rows [gate (ff); up (ff)], in = hidden
    down: Linear  # [hidden, ff]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        gate, up = self.gate_up.split(x)
        return self.down(silu(gate) * up)


@dataclass
class TopKMoE:
    """The MoE FFN without a shared expert (llama.cpp's qwen3moe / qwen3vlmoe): `moe_ffn` over these experts."""

    router: Linear  # [n_expert, hidden]
    gate_exps: Experts  # [n_expert, ff_exp, hidden]
    up_exps: Experts
    down_exps: Experts  # [n_expert, hidden, ff_exp]
    k: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return moe_ffn(x, self.router, self.gate_exps, self.up_exps, self.down_exps, self.k)


def embed_rows(table: Linear, token_ids) -> np.ndarray:
    """Rows of the embedding table for token ids (what the board's host looks up for text tokens);
    only those rows are read and dequantised."""
    return table.rows(token_ids)


def check_inputs(embeds: np.ndarray, positions: np.ndarray, hidden: int, logits: str) -> np.ndarray:
    """Validate one forward call's inputs (shared by every decoder) and return the embeddings as float32."""
    if logits not in ("all", "last"):
        raise SmtError(f"logits: expected 'all' or 'last', got {logits!r}")
    x = np.asarray(embeds, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != hidden:
        raise SmtError(f"embeds: expected shape [n, {hidden}], got {list(x.shape)}")
    if len(positions) != x.shape[0]:
        raise SmtError(f"positions: {len(positions)} positions for {x.shape[0]} embeddings")
    return x
