"""Numpy Qwen3 text decoder for llama.cpp architecture `qwen3vl` (the LLM half of Qwen3-VL / Qwen3-ASR).

Pre-norm transformer: RMSNorm -> GQA attention (per-head q/k RMSNorm, interleaved M-RoPE) -> residual,
RMSNorm -> SwiGLU MLP -> residual. Tensor names and metadata keys are the ones upstream llama.cpp writes.

Memory: weights stay in the memory-mapped GGUF and are used through `runtime/weights.py` (`Linear`): on
first use each projection is packed for ONNX Runtime's MatMulNBits (Q8_0/Q4_0), dequantised to float32, or
streamed, within a memory budget; the embedding table is read row by row. q/k/v and gate/up are stacked into
one `Linear` each (one matmul call apiece on the quantised path).

Deepstack (Qwen3-VL vision features added to early layers) is not implemented: embeddings are [n, hidden].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smt_convert.runtime.errors import SmtError, where
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.weights import Linear, WeightStore

# ---- config -------------------------------------------------------------------------------


@dataclass
class Qwen3VLConfig:
    n_layer: int
    hidden: int
    n_head: int
    n_kv: int
    head_dim: int
    ff: int
    eps: float
    rope_base: float
    sections: list[int]  # M-RoPE pairs per stream (t, h, w, e)
    vocab: int
    n_rot: int  # rotated dims per head (== head_dim for Qwen3)
    context_length: int = 0

    @classmethod
    def from_gguf(cls, model: GGUFModel) -> "Qwen3VLConfig":
        """Read the keys upstream writes, with llama.cpp's own defaults for the optional ones."""
        hidden = int(model.meta("{arch}.embedding_length"))
        n_head = int(model.meta("{arch}.attention.head_count"))
        head_dim = int(model.meta("{arch}.attention.key_length", hidden // n_head))
        sections = [int(s) for s in model.meta("{arch}.rope.dimension_sections")]
        cfg = cls(
            n_layer=int(model.meta("{arch}.block_count")),
            hidden=hidden,
            n_head=n_head,
            n_kv=int(model.meta("{arch}.attention.head_count_kv", n_head)),
            head_dim=head_dim,
            ff=int(model.meta("{arch}.feed_forward_length")),
            eps=float(model.meta("{arch}.attention.layer_norm_rms_epsilon")),
            rope_base=float(model.meta("{arch}.rope.freq_base", 10000.0)),
            sections=(sections + [0, 0, 0, 0])[:4],
            vocab=int(model.tensor_shape("token_embd.weight")[0]),
            n_rot=int(model.meta("{arch}.rope.dimension_count", head_dim)),
            context_length=int(model.meta("{arch}.context_length", 0)),
        )
        cfg.check(model)
        return cfg

    def check(self, model: GGUFModel) -> None:
        """Reject shapes the math below cannot handle, naming the offending key."""

        def bad(key, why):
            raise SmtError(f"{where(model.path, key.format(arch=model.arch))}: {why}")

        if self.n_kv <= 0 or self.n_head % self.n_kv:
            bad("{arch}.attention.head_count_kv", f"{self.n_kv} does not divide head_count {self.n_head}")
        vdim = int(model.meta("{arch}.attention.value_length", self.head_dim))
        if vdim != self.head_dim:
            bad("{arch}.attention.value_length", f"{vdim} != key_length {self.head_dim} (unsupported)")
        if self.n_rot % 2 or self.n_rot > self.head_dim:
            bad("{arch}.rope.dimension_count", f"{self.n_rot} must be even and <= key_length {self.head_dim}")
        if sum(self.sections) <= 0:
            bad("{arch}.rope.dimension_sections", f"{self.sections} has no pairs")


# ---- interleaved M-RoPE ---------------------------------------------------------------------


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


def rope_angles(positions: np.ndarray, cfg: Qwen3VLConfig, streams=imrope_streams) -> tuple[np.ndarray, np.ndarray]:
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


# ---- building blocks ----------------------------------------------------------------------


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


# ---- KV cache -----------------------------------------------------------------------------


@dataclass
class KVCache:
    """Per-layer K/V in [n_kv, capacity, head_dim] buffers that double when full (amortised O(1) append)."""

    keys: list[np.ndarray]
    values: list[np.ndarray]
    length: int = 0  # tokens stored (same for every layer once `forward` returns)

    @classmethod
    def empty(cls, cfg: Qwen3VLConfig, capacity: int = 256) -> "KVCache":
        shape = (cfg.n_kv, capacity, cfg.head_dim)
        return cls(
            keys=[np.zeros(shape, np.float32) for _ in range(cfg.n_layer)],
            values=[np.zeros(shape, np.float32) for _ in range(cfg.n_layer)],
        )

    def extend(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write k/v [n_kv, n, head_dim] after the stored tokens; return views of past + new."""
        end = self.length + k.shape[1]
        if end > self.keys[layer].shape[1]:
            cap = max(end, 2 * self.keys[layer].shape[1])
            self.keys[layer] = _grow(self.keys[layer], cap, self.length)
            self.values[layer] = _grow(self.values[layer], cap, self.length)
        self.keys[layer][:, self.length : end] = k
        self.values[layer][:, self.length : end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]


def _grow(buf: np.ndarray, capacity: int, used: int) -> np.ndarray:
    new = np.zeros((buf.shape[0], capacity, buf.shape[2]), np.float32)
    new[:, :used] = buf[:, :used]
    return new


# ---- weights ------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    qkv: Linear  # rows [q (n_head*head_dim); k (n_kv*head_dim); v (n_kv*head_dim)], in = hidden
    wo: Linear  # [hidden, n_head*head_dim]
    q_norm: np.ndarray  # [head_dim]
    k_norm: np.ndarray
    ffn_norm: np.ndarray
    gate_up: Linear  # rows [gate (ff); up (ff)], in = hidden
    down: Linear  # [hidden, ff]


def embed_rows(table: Linear, token_ids) -> np.ndarray:
    """Rows of the embedding table for token ids (what the board's host looks up for text tokens);
    only those rows are read and dequantised."""
    return table.rows(token_ids)


def _load_layer(store: WeightStore, cfg: Qwen3VLConfig, i: int) -> LayerWeights:
    """Check shapes and wrap the tensors; nothing is read or dequantised until first use."""
    h, q, kv, d = cfg.hidden, cfg.n_head * cfg.head_dim, cfg.n_kv * cfg.head_dim, cfg.head_dim
    b = f"blk.{i}."
    return LayerWeights(
        attn_norm=store.vector(b + "attn_norm.weight", h),
        qkv=store.linear(
            b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight", shapes=[(q, h), (kv, h), (kv, h)]
        ),
        wo=store.linear(b + "attn_output.weight", shapes=[(h, q)]),
        q_norm=store.vector(b + "attn_q_norm.weight", d),
        k_norm=store.vector(b + "attn_k_norm.weight", d),
        ffn_norm=store.vector(b + "ffn_norm.weight", h),
        gate_up=store.linear(b + "ffn_gate.weight", b + "ffn_up.weight", shapes=[(cfg.ff, h), (cfg.ff, h)]),
        down=store.linear(b + "ffn_down.weight", shapes=[(h, cfg.ff)]),
    )


# ---- decoder ------------------------------------------------------------------------------


class Qwen3VLDecoder:
    """Qwen3 decoder over a GGUF. `forward` takes embeddings (not ids) so audio/vision rows can be spliced in."""

    config_type = Qwen3VLConfig

    def __init__(self, model: GGUFModel, budget: int | str | None = None, threads: int | None = None):
        self.config = cfg = self.config_type.from_gguf(model)
        self.weights = store = WeightStore(model, budget=budget, threads=threads)
        self.token_embd, self.output_norm, self.output = store.token_io(cfg.vocab, cfg.hidden)
        self.layers = [self._load_layer(store, cfg, i) for i in range(cfg.n_layer)]

    _load_layer = staticmethod(_load_layer)

    rope_streams = staticmethod(imrope_streams)

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rope_angles(positions, self.config, self.rope_streams)

    def embed(self, token_ids) -> np.ndarray:
        return embed_rows(self.token_embd, token_ids)

    def new_cache(self) -> KVCache:
        return KVCache.empty(self.config)

    def forward(
        self, embeds: np.ndarray, positions: np.ndarray, cache: KVCache, logits: str = "all", observe=None
    ) -> np.ndarray:
        """Run new tokens after those in `cache` (appending to it); return logits [n or 1, vocab] float32.
        `observe(i, hidden)`, when given, sees each layer's output (the divergence trace, runtime/trace.py)."""
        cfg = self.config
        x = check_inputs(embeds, positions, cfg.hidden, logits)
        cos, sin = self._rope(positions)
        mask = causal_mask(x.shape[0], cache.length)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(rms_norm(x, layer.attn_norm, cfg.eps), layer, cos, sin, mask, cache, i)
            x = x + self._mlp(rms_norm(x, layer.ffn_norm, cfg.eps), layer)
            if observe is not None:
                observe(i, x)
        cache.length += x.shape[0]
        if logits == "last":
            x = x[-1:]
        return self.output(rms_norm(x, self.output_norm, cfg.eps))

    def _attention(self, x, w: LayerWeights, cos, sin, mask, cache: KVCache, layer: int) -> np.ndarray:
        cfg = self.config
        n, d = x.shape[0], cfg.head_dim
        q, k, v = w.qkv.split(x)
        q = rms_norm(q.reshape(n, cfg.n_head, d), w.q_norm, cfg.eps)
        k = rms_norm(k.reshape(n, cfg.n_kv, d), w.k_norm, cfg.eps)
        v = v.reshape(n, cfg.n_kv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.extend(layer, k.transpose(1, 0, 2), v.transpose(1, 0, 2))  # [n_kv, T, d]
        return w.wo(grouped_attention(q, keys, values, mask))

    def _mlp(self, x, w: LayerWeights) -> np.ndarray:
        gate, up = w.gate_up.split(x)
        return w.down(silu(gate) * up)


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


def grouped_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Causal GQA over the cache: q [n, n_head, d], keys/values [n_kv, T, d] -> [n, n_head * d].
    Query heads h*group .. h*group+group-1 share kv head h (the grouping of HF's repeat_kv)."""
    n, n_head, d = q.shape
    n_kv = keys.shape[0]
    qg = q.transpose(1, 0, 2).reshape(n_kv, n_head // n_kv, n, d)
    scores = (qg @ keys[:, None].transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(d))  # [n_kv, g, n, T]
    out = softmax(scores + mask) @ values[:, None]  # [n_kv, g, n, d]
    return out.reshape(n_head, n, d).transpose(1, 0, 2).reshape(n, n_head * d)


def causal_mask(n: int, past: int) -> np.ndarray:
    """[n, past+n] additive mask: new token i sees every cached token and new tokens 0..i."""
    allowed = np.arange(past + n)[None, :] <= (past + np.arange(n))[:, None]
    return np.where(allowed, np.float32(0), np.float32(-np.inf)).astype(np.float32)
