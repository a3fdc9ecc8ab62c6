"""Numpy Qwen3 text decoder for llama.cpp architectures `qwen3vl` and `qwen3vlmoe` (the LLM half of Qwen3-VL and
Qwen3-ASR).

Pre-norm transformer: RMSNorm -> GQA attention (per-head q/k RMSNorm, interleaved M-RoPE) -> residual,
RMSNorm -> SwiGLU MLP (or, `qwen3vlmoe`, top-k of softmax(router) renormalised over the k chosen SwiGLU experts)
-> residual. Tensor names and metadata keys are the ones upstream llama.cpp writes.

DeepStack (`{arch}.n_deepstack_layers` = k > 0): input rows are [n, hidden x (1 + k)], as llama.cpp takes them
(`n_embd_inp`): the first `hidden` columns are the embedding, and after layer i < k the (i + 1)-th slice is added
to the hidden state. Vision rows carry the encoder's DeepStack outputs there; token embeddings are zero-padded
(llama.cpp's `build_inp_embd`), so text rows get nothing added.

Memory: weights stay in the memory-mapped GGUF and are used through `runtime/weights.py` (`Linear`): on
first use each projection is packed for ONNX Runtime's MatMulNBits (Q8_0/Q4_0), dequantised to float32, or
streamed, within a memory budget; the embedding table is read row by row. q/k/v and gate/up are stacked into
one `Linear` each (one matmul call apiece on the quantised path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smt_convert.runtime.decoders.blocks import (
    SwiGLU,
    TopKMoE,
    apply_rope,
    causal_mask,
    check_inputs,
    embed_rows,
    grouped_attention,
    imrope_streams,
    rms_norm,
    rope_angles,
)
from smt_convert.runtime.errors import SmtError, where
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.weights import Linear, WeightStore

MAX_DEEPSTACK = 64  # a bound for hostile files (the released models have 3)

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
    n_deepstack: int = 0  # DeepStack slices after the embedding in each input row
    n_expert: int = 0  # qwen3vlmoe: experts, experts per token, expert FFN width
    n_expert_used: int = 0
    ff_exp: int = 0

    @property
    def input_width(self) -> int:
        """Width of an input row: the embedding, then one slice per DeepStack layer (llama.cpp's n_embd_inp)."""
        return self.hidden * (1 + self.n_deepstack)

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
            n_deepstack=int(model.meta("{arch}.n_deepstack_layers", 0)),
        )
        if model.arch == "qwen3vlmoe":
            cfg.n_expert = int(model.meta("{arch}.expert_count"))
            cfg.n_expert_used = int(model.meta("{arch}.expert_used_count"))
            cfg.ff_exp = int(model.meta("{arch}.expert_feed_forward_length"))
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
        if not 0 <= self.n_deepstack <= MAX_DEEPSTACK:  # more than the layers is fine: the extra slices go unused
            bad("{arch}.n_deepstack_layers", f"{self.n_deepstack} not in 0..{MAX_DEEPSTACK}")
        if model.arch == "qwen3vlmoe" and not 0 < self.n_expert_used <= self.n_expert:
            bad("{arch}.expert_used_count", f"{self.n_expert_used} not in 1..expert_count {self.n_expert}")


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
    ffn: SwiGLU | TopKMoE  # dense (qwen3vl) or experts (qwen3vlmoe)


def _load_layer(store: WeightStore, cfg: Qwen3VLConfig, i: int) -> LayerWeights:
    """Check shapes and wrap the tensors; nothing is read or dequantised until first use."""
    h, q, kv, d = cfg.hidden, cfg.n_head * cfg.head_dim, cfg.n_kv * cfg.head_dim, cfg.head_dim
    b = f"blk.{i}."
    ffn: SwiGLU | TopKMoE
    if cfg.n_expert:
        E, F = cfg.n_expert, cfg.ff_exp
        ffn = TopKMoE(
            router=store.linear(b + "ffn_gate_inp.weight", shapes=[(E, h)]),
            gate_exps=store.experts(b + "ffn_gate_exps.weight", E, F, h),
            up_exps=store.experts(b + "ffn_up_exps.weight", E, F, h),
            down_exps=store.experts(b + "ffn_down_exps.weight", E, h, F),
            k=cfg.n_expert_used,
        )
    else:
        ffn = SwiGLU(
            store.linear(b + "ffn_gate.weight", b + "ffn_up.weight", shapes=[(cfg.ff, h), (cfg.ff, h)]),
            store.linear(b + "ffn_down.weight", shapes=[(h, cfg.ff)]),
        )
    return LayerWeights(
        attn_norm=store.vector(b + "attn_norm.weight", h),
        qkv=store.linear(
            b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight", shapes=[(q, h), (kv, h), (kv, h)]
        ),
        wo=store.linear(b + "attn_output.weight", shapes=[(h, q)]),
        q_norm=store.vector(b + "attn_q_norm.weight", d),
        k_norm=store.vector(b + "attn_k_norm.weight", d),
        ffn_norm=store.vector(b + "ffn_norm.weight", h),
        ffn=ffn,
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
        """Token rows [n, input_width]: the embedding, zero-padded over the DeepStack slices as llama.cpp does."""
        rows = embed_rows(self.token_embd, token_ids)
        if self.config.n_deepstack:
            rows = np.pad(rows, ((0, 0), (0, self.config.input_width - self.config.hidden)))
        return rows

    def new_cache(self) -> KVCache:
        return KVCache.empty(self.config)

    def forward(
        self, embeds: np.ndarray, positions: np.ndarray, cache: KVCache, logits: str = "all", observe=None
    ) -> np.ndarray:
        """Run new tokens after those in `cache` (appending to it); return logits [n or 1, vocab] float32.
        `observe(i, hidden)`, when given, sees each layer's output (the divergence trace, runtime/trace.py)."""
        cfg = self.config
        rows = check_inputs(embeds, positions, cfg.input_width, logits)
        x, hd = rows[:, : cfg.hidden], cfg.hidden
        cos, sin = self._rope(positions)
        mask = causal_mask(x.shape[0], cache.length)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(rms_norm(x, layer.attn_norm, cfg.eps), layer, cos, sin, mask, cache, i)
            x = x + layer.ffn(rms_norm(x, layer.ffn_norm, cfg.eps))
            if observe is not None:  # the layer's own output, as the reference's hook sees it (before DeepStack)
                observe(i, x)
            if i < cfg.n_deepstack:
                x = x + rows[:, hd * (i + 1) : hd * (i + 2)]
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
