"""Numpy Qwen3.5 text decoder for llama.cpp architectures `qwen35` (dense) and `qwen35moe` (MoE).

Hybrid stack, pre-norm with residuals: RMSNorm -> token mixer -> residual, RMSNorm -> FFN -> residual.
Token mixer per layer (`{arch}.attention.recurrent_layers`, else every `full_attention_interval`-th layer is
full attention):
- Gated DeltaNet (linear attention): qkv projection -> causal depthwise conv1d (kernel K, state = the last
  K-1 inputs) -> SiLU -> per-head L2-normalised q, k; beta = sigmoid(b), log-decay g = ssm_a * softplus(a +
  dt_bias) (ssm_a already holds -exp(A_log)); the delta rule S <- S*exp(g) + k (beta (v - S^T k))^T,
  o = S^T q / sqrt(d_k); RMSNorm(o) * silu(z) per head; out projection.
  Prefill uses the chunked (WY / UT-transform) form, vectorised over heads and chunks; decode (few tokens)
  the recurrent form.
- Gated full attention: q_proj gives [query, gate] per head; q/k RMSNorm; partial interleaved M-RoPE on
  the first `rope.dimension_count` dims; GQA; output * sigmoid(gate); o_proj.
FFN: SwiGLU (dense), or top-k of softmax(router) renormalised over the k chosen experts plus a shared
SwiGLU expert scaled by sigmoid(shared gate) (MoE).

Value heads are in the GGUF's tiled order (head h uses key head h % n_k), which is how upstream reorders
them; the out projection's columns were permuted the same way, so outputs equal HF's.

Memory: weights are read through `runtime/weights.py` (memory-mapped; packed for ONNX Runtime's MatMulNBits,
dequantised or streamed on first use, within a memory budget). Projections sharing an input are stacked
into one `Linear` (linear attention: qkv, z, beta, alpha; full attention: q+gate, k, v; FFN: gate, up).
MoE experts are 3-D tensors read one expert slice at a time, only for experts the router selects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from smt_convert.runtime.decoders.blocks import (
    apply_rope,
    causal_mask,
    check_inputs,
    embed_rows,
    grouped_attention,
    moe_ffn,
    rms_norm,
    rope_angles,
    silu,
)
from smt_convert.runtime.errors import SmtError, where
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.weights import WeightStore

GDN_CHUNK = 64  # chunk length of the chunked delta rule (as HF / FLA)
RECURRENT_MAX = 8  # up to this many new tokens, the per-token recurrent form is cheaper
L2_EPS = 1e-6  # HF's l2norm eps for q/k in the delta rule


# ---- config -------------------------------------------------------------------------------


@dataclass
class Qwen35Config:
    arch: str
    n_layer: int
    hidden: int
    n_head: int
    n_kv: int
    head_dim: int
    eps: float
    rope_base: float
    sections: list[int]
    n_rot: int
    vocab: int
    recurrent: list[bool]
    conv_kernel: int
    d_state: int  # key (and value) head size of the linear attention
    n_k_heads: int  # ssm.group_count
    n_v_heads: int  # ssm.time_step_rank
    d_inner: int  # n_v_heads * value head size
    ff: int = 0  # dense FFN width
    moe: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    ff_exp: int = 0
    ff_shexp: int = 0
    context_length: int = 0

    @property
    def head_v_dim(self) -> int:
        return self.d_inner // self.n_v_heads

    @property
    def key_dim(self) -> int:
        return self.d_state * self.n_k_heads

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.d_inner

    @classmethod
    def from_gguf(cls, model: GGUFModel) -> "Qwen35Config":
        def meta(key, *default):
            return model.meta("{arch}." + key, *default)

        n_layer = int(meta("block_count"))
        head_dim = int(meta("attention.key_length"))
        sections = ([int(s) for s in meta("rope.dimension_sections")] + [0, 0, 0, 0])[:4]
        if model.has_meta("{arch}.attention.recurrent_layers"):
            recurrent = [bool(x) for x in meta("attention.recurrent_layers")]
        else:
            interval = int(meta("full_attention_interval", 4))
            recurrent = [(i + 1) % interval != 0 for i in range(n_layer)]
        moe = model.arch == "qwen35moe"
        cfg = cls(
            arch=model.arch,
            n_layer=n_layer,
            hidden=int(meta("embedding_length")),
            n_head=int(meta("attention.head_count")),
            n_kv=int(meta("attention.head_count_kv")),
            head_dim=head_dim,
            eps=float(meta("attention.layer_norm_rms_epsilon")),
            rope_base=float(meta("rope.freq_base", 10000.0)),
            sections=sections,
            n_rot=int(meta("rope.dimension_count", head_dim)),
            vocab=int(model.tensor_shape("token_embd.weight")[0]),
            recurrent=recurrent,
            conv_kernel=int(meta("ssm.conv_kernel")),
            d_state=int(meta("ssm.state_size")),
            n_k_heads=int(meta("ssm.group_count")),
            n_v_heads=int(meta("ssm.time_step_rank")),
            d_inner=int(meta("ssm.inner_size")),
            ff=0 if moe else int(meta("feed_forward_length")),
            moe=moe,
            context_length=int(meta("context_length", 0)),
        )
        if moe:
            cfg.n_expert = int(meta("expert_count"))
            cfg.n_expert_used = int(meta("expert_used_count"))
            cfg.ff_exp = int(meta("expert_feed_forward_length"))
            cfg.ff_shexp = int(meta("expert_shared_feed_forward_length"))
        cfg.check(model)
        return cfg

    def check(self, model: GGUFModel) -> None:
        def bad(key, why):
            raise SmtError(f"{where(model.path, key.format(arch=model.arch))}: {why}")

        if self.n_kv <= 0 or self.n_head % self.n_kv:
            bad("{arch}.attention.head_count_kv", f"{self.n_kv} does not divide head_count {self.n_head}")
        if int(model.meta("{arch}.attention.value_length", self.head_dim)) != self.head_dim:
            bad("{arch}.attention.value_length", "must equal key_length")
        if self.n_rot % 2 or not 0 < self.n_rot <= self.head_dim:
            bad("{arch}.rope.dimension_count", f"{self.n_rot} must be even and <= key_length {self.head_dim}")
        if sum(self.sections) <= 0:
            bad("{arch}.rope.dimension_sections", f"{self.sections} has no pairs")
        if len(self.recurrent) != self.n_layer:
            bad("{arch}.attention.recurrent_layers", f"{len(self.recurrent)} entries for {self.n_layer} layers")
        if self.n_k_heads <= 0 or self.n_v_heads % self.n_k_heads:
            bad("{arch}.ssm.group_count", f"{self.n_k_heads} does not divide ssm.time_step_rank {self.n_v_heads}")
        if self.d_inner % self.n_v_heads or self.head_v_dim != self.d_state:
            bad("{arch}.ssm.inner_size", f"{self.d_inner} / {self.n_v_heads} heads != ssm.state_size {self.d_state}")
        if self.moe and not 0 < self.n_expert_used <= self.n_expert:
            bad("{arch}.expert_used_count", f"{self.n_expert_used} not in 1..expert_count {self.n_expert}")


# ---- cache --------------------------------------------------------------------------------


@dataclass
class HybridCache:
    """Per full-attention layer: K/V [n_kv, capacity, head_dim] (doubling); per linear layer: the conv
    state (last K-1 conv inputs, [K-1, conv_dim]) and the delta-rule state [n_v, d_k, d_v]."""

    keys: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)
    conv: dict[int, np.ndarray] = field(default_factory=dict)
    state: dict[int, np.ndarray] = field(default_factory=dict)
    length: int = 0

    @classmethod
    def empty(cls, cfg: Qwen35Config, capacity: int = 256) -> "HybridCache":
        cache = cls()
        for i, rec in enumerate(cfg.recurrent):
            if rec:
                cache.conv[i] = np.zeros((cfg.conv_kernel - 1, cfg.conv_dim), np.float32)
                cache.state[i] = np.zeros((cfg.n_v_heads, cfg.d_state, cfg.head_v_dim), np.float32)
            else:
                cache.keys[i] = np.zeros((cfg.n_kv, capacity, cfg.head_dim), np.float32)
                cache.values[i] = np.zeros((cfg.n_kv, capacity, cfg.head_dim), np.float32)
        return cache

    def extend(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write k/v [n_kv, n, head_dim] after the stored tokens; return views of past + new."""
        end = self.length + k.shape[1]
        if end > self.keys[layer].shape[1]:
            cap = max(end, 2 * self.keys[layer].shape[1])
            for store in (self.keys, self.values):
                new = np.zeros((store[layer].shape[0], cap, store[layer].shape[2]), np.float32)
                new[:, : self.length] = store[layer][:, : self.length]
                store[layer] = new
        self.keys[layer][:, self.length : end] = k
        self.values[layer][:, self.length : end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]


# ---- gated delta rule ----------------------------------------------------------------------


def l2norm(x: np.ndarray, eps: float = L2_EPS) -> np.ndarray:
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + np.float32(eps))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0), x).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def delta_rule_recurrent(q, k, v, g, beta, state):
    """Token by token (vectorised over heads). q, k [h, n, dk] (q already scaled), v [h, n, dv], g, beta
    [h, n]; state [h, dk, dv] is updated in place. Returns o [h, n, dv]."""
    out = np.empty_like(v)
    for t in range(q.shape[1]):
        state *= np.exp(g[:, t])[:, None, None]
        kv_mem = np.einsum("hk,hkv->hv", k[:, t], state)
        delta = (v[:, t] - kv_mem) * beta[:, t, None]
        state += k[:, t, :, None] * delta[:, None, :]
        out[:, t] = np.einsum("hk,hkv->hv", q[:, t], state)
    return out


def delta_rule_chunked(q, k, v, g, beta, state, chunk: int = GDN_CHUNK):
    """Chunked gated delta rule (the UT-transform form of HF's torch_chunk_gated_delta_rule): the
    intra-chunk part of every chunk at once, then one short loop over chunks carrying the state.
    Same arguments as `delta_rule_recurrent`; `state` is updated in place."""
    h, n, dk = k.shape
    dv = v.shape[-1]
    pad = (-n) % chunk
    if pad:
        q, k, v = (np.concatenate([x, np.zeros((h, pad, x.shape[-1]), np.float32)], axis=1) for x in (q, k, v))
        g, beta = (np.concatenate([x, np.zeros((h, pad), np.float32)], axis=1) for x in (g, beta))
    nc = (n + pad) // chunk
    q, k, v = (x.reshape(h, nc, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = g.reshape(h, nc, chunk), beta.reshape(h, nc, chunk)

    cum = np.cumsum(g, axis=-1)  # [h, nc, C] log decay from chunk start
    lower = np.tril(np.ones((chunk, chunk), dtype=bool))
    diff = cum[..., :, None] - cum[..., None, :]  # [h, nc, C, C]
    decay = np.where(lower, np.exp(np.where(lower, diff, 0.0)), 0.0).astype(np.float32)
    kb = k * beta[..., None]
    kk = kb @ np.swapaxes(k, -1, -2)  # beta_i k_i . k_j
    # Unit lower-triangular T = I + strictly-lower(kk * decay); solve T [U | W] = [beta v | beta k exp(cum)].
    T = np.where(np.tril(np.ones((chunk, chunk), dtype=bool), -1), kk * decay, 0.0) + np.eye(chunk, dtype=np.float32)
    rhs = np.concatenate([v * beta[..., None], kb * np.exp(cum)[..., None]], axis=-1)
    sol = np.linalg.solve(T, rhs).astype(np.float32)
    u, w = sol[..., :dv], sol[..., dv:]  # [h, nc, C, dv], [h, nc, C, dk]
    attn = (q @ np.swapaxes(k, -1, -2)) * decay  # intra-chunk q.k with decay (incl. diag)
    q_dec = q * np.exp(cum)[..., None]
    last = cum[..., -1:]  # [h, nc, 1]
    k_dec = k * np.exp(last - cum)[..., None]
    chunk_decay = np.exp(last[..., 0])  # [h, nc]

    out = np.empty((h, nc, chunk, dv), np.float32)
    S = state
    for c in range(nc):
        v_new = u[:, c] - w[:, c] @ S  # [h, C, dv]
        out[:, c] = q_dec[:, c] @ S + attn[:, c] @ v_new
        S = S * chunk_decay[:, c, None, None] + np.swapaxes(k_dec[:, c], -1, -2) @ v_new
    state[...] = S
    return out.reshape(h, nc * chunk, dv)[:, :n]


# ---- weights ------------------------------------------------------------------------------


@dataclass
class LayerWeights:
    recurrent: bool
    attn_norm: np.ndarray
    post_norm: np.ndarray
    mix: dict  # token-mixer weights (Linear for projections, float32 arrays for the small ones)
    ffn: dict  # FFN weights (Linear, Experts, arrays)


def _load_layer(store: WeightStore, cfg: Qwen35Config, i: int) -> LayerWeights:
    """Check shapes and wrap the tensors; nothing is read or dequantised until first use."""
    h, b = cfg.hidden, f"blk.{i}."

    def lin(*names_shapes):
        return store.linear(*(b + n for n, _ in names_shapes), shapes=[s for _, s in names_shapes])

    def vec(name, *shape):
        return store.vector(b + name, *shape)

    if cfg.recurrent[i]:
        nv = cfg.n_v_heads
        mix = {
            # one input, four projections: rows [qkv (conv_dim); z (d_inner); beta (nv); alpha (nv)]
            "in": lin(
                ("attn_qkv.weight", (cfg.conv_dim, h)),
                ("attn_gate.weight", (cfg.d_inner, h)),
                ("ssm_beta.weight", (nv, h)),
                ("ssm_alpha.weight", (nv, h)),
            ),
            "conv": vec("ssm_conv1d.weight", cfg.conv_dim, cfg.conv_kernel),
            "dt": vec("ssm_dt.bias", nv),
            "a": vec("ssm_a", nv),
            "norm": vec("ssm_norm.weight", cfg.head_v_dim),
            "out": lin(("ssm_out.weight", (h, cfg.d_inner))),
        }
    else:
        q, kv, d = cfg.n_head * cfg.head_dim, cfg.n_kv * cfg.head_dim, cfg.head_dim
        mix = {
            "qkv": lin(("attn_q.weight", (2 * q, h)), ("attn_k.weight", (kv, h)), ("attn_v.weight", (kv, h))),
            "o": lin(("attn_output.weight", (h, q))),
            "q_norm": vec("attn_q_norm.weight", d),
            "k_norm": vec("attn_k_norm.weight", d),
        }
    if cfg.moe:
        E, F, S = cfg.n_expert, cfg.ff_exp, cfg.ff_shexp
        # upstream stores the shared-expert gate as [1, hidden] (HF's Linear(hidden, 1)); [hidden] also loads
        shexp = b + "ffn_gate_inp_shexp.weight"
        shexp_shape = (1, h) if store.has(shexp) and store.model.tensor_shape(shexp) == (1, h) else (h,)
        ffn = {
            "router": lin(("ffn_gate_inp.weight", (E, h))),
            "gate_exps": store.experts(b + "ffn_gate_exps.weight", E, F, h),
            "up_exps": store.experts(b + "ffn_up_exps.weight", E, F, h),
            "down_exps": store.experts(b + "ffn_down_exps.weight", E, h, F),
            "shexp_gate": vec("ffn_gate_inp_shexp.weight", *shexp_shape).reshape(h),
            "gate_up_shexp": lin(("ffn_gate_shexp.weight", (S, h)), ("ffn_up_shexp.weight", (S, h))),
            "down_shexp": lin(("ffn_down_shexp.weight", (h, S))),
        }
    else:
        ffn = {
            "gate_up": lin(("ffn_gate.weight", (cfg.ff, h)), ("ffn_up.weight", (cfg.ff, h))),
            "down": lin(("ffn_down.weight", (h, cfg.ff))),
        }
    return LayerWeights(cfg.recurrent[i], vec("attn_norm.weight", h), vec("post_attention_norm.weight", h), mix, ffn)


# ---- decoder ------------------------------------------------------------------------------


class Qwen35Decoder:
    """Qwen3.5 hybrid decoder over a GGUF (`qwen35` or `qwen35moe`). Same API as Qwen3VLDecoder."""

    def __init__(self, model: GGUFModel, budget: int | str | None = None, threads: int | None = None):
        if model.arch not in ("qwen35", "qwen35moe"):
            raise SmtError(f"{where(model.path, 'general.architecture')}: '{model.arch}' is not qwen35/qwen35moe")
        self.config = cfg = Qwen35Config.from_gguf(model)
        self.weights = store = WeightStore(model, budget=budget, threads=threads)
        self.token_embd, self.output_norm, self.output = store.token_io(cfg.vocab, cfg.hidden)
        self.layers = [_load_layer(store, cfg, i) for i in range(cfg.n_layer)]

    def embed(self, token_ids) -> np.ndarray:
        return embed_rows(self.token_embd, token_ids)

    def new_cache(self) -> HybridCache:
        return HybridCache.empty(self.config)

    def forward(
        self, embeds: np.ndarray, positions: np.ndarray, cache: HybridCache, logits: str = "all", observe=None
    ) -> np.ndarray:
        """Run new tokens after those in `cache` (updating it); return logits [n or 1, vocab] float32.
        positions: [n] (text, expanded to (p, p, p, 0)) or [n, 4] M-RoPE streams (t, h, w, e).
        `observe(i, hidden)`, when given, sees each layer's output (the divergence trace, runtime/trace.py)."""
        cfg = self.config
        x = check_inputs(embeds, positions, cfg.hidden, logits)
        cos, sin = rope_angles(positions, cfg)
        mask = causal_mask(x.shape[0], cache.length)
        for i, layer in enumerate(self.layers):
            hn = rms_norm(x, layer.attn_norm, cfg.eps)
            if layer.recurrent:
                x = x + self._linear_attention(hn, layer.mix, cache, i)
            else:
                x = x + self._attention(hn, layer.mix, cos, sin, mask, cache, i)
            hn = rms_norm(x, layer.post_norm, cfg.eps)
            x = x + (self._moe(hn, layer.ffn) if cfg.moe else self._mlp(hn, layer.ffn))
            if observe is not None:
                observe(i, x)
        cache.length += x.shape[0]
        if logits == "last":
            x = x[-1:]
        return self.output(rms_norm(x, self.output_norm, cfg.eps))

    # ---- token mixers -----------------------------------------------------------------------

    def _attention(self, x, w, cos, sin, mask, cache: HybridCache, layer: int) -> np.ndarray:
        cfg = self.config
        n, d = x.shape[0], cfg.head_dim
        qg, k, v = w["qkv"].split(x)
        qg = qg.reshape(n, cfg.n_head, 2 * d)
        q, gate = qg[..., :d], qg[..., d:].reshape(n, cfg.n_head * d)
        q = rms_norm(q, w["q_norm"], cfg.eps)
        k = rms_norm(k.reshape(n, cfg.n_kv, d), w["k_norm"], cfg.eps)
        v = v.reshape(n, cfg.n_kv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.extend(layer, k.transpose(1, 0, 2), v.transpose(1, 0, 2))
        return w["o"](grouped_attention(q, keys, values, mask) * sigmoid(gate))

    def _linear_attention(self, x, w, cache: HybridCache, layer: int) -> np.ndarray:
        cfg = self.config
        n = x.shape[0]
        nk, nv, dk, dv = cfg.n_k_heads, cfg.n_v_heads, cfg.d_state, cfg.head_v_dim
        mixed, z, b, a = w["in"].split(x)  # [n, conv_dim], [n, d_inner], [n, nv] x2
        z = z.reshape(n, nv, dv)
        beta = sigmoid(b)  # [n, nv]
        g = (w["a"] * softplus(a + w["dt"])).astype(np.float32)  # [n, nv], <= 0

        # causal depthwise conv1d over [conv state ; new inputs], then SiLU
        K = cfg.conv_kernel
        full = np.concatenate([cache.conv[layer], mixed], axis=0)  # [K-1+n, C]
        conv = np.zeros_like(mixed)
        for j in range(K):
            conv += full[j : j + n] * w["conv"][:, j]
        cache.conv[layer] = full[-(K - 1) :].copy() if K > 1 else full[:0].copy()
        conv = silu(conv)

        kd = cfg.key_dim
        q = l2norm(conv[:, :kd].reshape(n, nk, dk))
        k = l2norm(conv[:, kd : 2 * kd].reshape(n, nk, dk))
        v = conv[:, 2 * kd :].reshape(n, nv, dv)
        if nv != nk:  # tiled value-head order: value head h reads key head h % nk
            q, k = np.tile(q, (1, nv // nk, 1)), np.tile(k, (1, nv // nk, 1))
        q = q * np.float32(dk**-0.5)
        args = (q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2), g.T.copy(), beta.T.copy())
        rule = delta_rule_recurrent if n <= RECURRENT_MAX else delta_rule_chunked
        o = rule(*args, cache.state[layer]).transpose(1, 0, 2)  # [n, nv, dv]
        o = rms_norm(o, w["norm"], cfg.eps) * silu(z)
        return w["out"](o.reshape(n, nv * dv))

    # ---- FFN ---------------------------------------------------------------------------------

    @staticmethod
    def _mlp(x, w) -> np.ndarray:
        gate, up = w["gate_up"].split(x)
        return w["down"](silu(gate) * up)

    def _moe(self, x, w) -> np.ndarray:
        """Only the selected experts' slices of the 3-D expert tensors are ever read."""
        out = moe_ffn(x, w["router"], w["gate_exps"], w["up_exps"], w["down_exps"], self.config.n_expert_used)
        gate, up = w["gate_up_shexp"].split(x)
        shared = w["down_shexp"](silu(gate) * up)
        return out + shared * sigmoid(x @ w["shexp_gate"])[:, None]
