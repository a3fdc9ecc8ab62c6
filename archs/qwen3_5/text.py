"""Qwen3.5 text side: checkpoint tensors, their GGUF names and transforms, tensor types and metadata, as
upstream llama.cpp writes `qwen35` / `qwen35moe`.

Hybrid decoder: most layers are Gated DeltaNet linear attention (`linear_attn.*`, a recurrent state per
head plus a short causal conv1d), every `full_attention_interval`-th layer is gated full attention
(`self_attn.*`: `q_proj` yields query and an output gate per head, q/k RMSNorm, partial interleaved
M-RoPE). FFN is a SwiGLU MLP (dense) or top-k softmax MoE with a sigmoid-gated shared expert (MoE).

MoE experts come in two on-disk layouts, both handled (`experts=`):
- "fused": `mlp.experts.gate_up_proj` [E, 2F, H] and `mlp.experts.down_proj` [E, H, F] (the parameters
  as transformers holds them, and the released Qwen3.5 MoE checkpoints);
- "per_expert": `mlp.experts.{j}.{gate,up,down}_proj.weight` (what transformers 5.x `save_pretrained`
  writes: it reverses its own conversion mapping on save).

Every transform below is the one upstream llama.cpp's converter applies (conversion/qwen.py,
`Qwen3NextModel.modify_tensors`, `_LinearAttentionVReorderBase.modify_tensors`, `Qwen2MoeModel`):
- `A_log` -> `-exp(A_log)` (tensor `blk.N.ssm_a`, no `.weight` suffix);
- `dt_bias` -> `blk.N.ssm_dt.bias`;
- `conv1d.weight` [C, 1, K] squeezed to [C, K];
- zero-centred RMSNorm weights (`*norm.weight`) stored as `1 + w`, except the gated norm
  `linear_attn.norm.weight`, which HF applies as plain `w`;
- value heads reordered from grouped-by-key-head to tiled order when `linear_num_value_heads !=
  linear_num_key_heads` (V rows of `in_proj_qkv`, `in_proj_z` rows, `in_proj_a`/`in_proj_b` rows, `A_log`,
  `dt_bias`, the V channels of `conv1d`, the columns of `out_proj`), so ggml can broadcast key heads by
  plain repetition: new head r*n_k + g is old head g*(n_v/n_k) + r and reads key head g;
- fused `gate_up_proj` split in halves (gate first) into `ffn_gate_exps` / `ffn_up_exps`; `down_proj`
  as is; per-expert tensors stacked on a new leading expert axis;
- `q_proj` is copied as is: its rows are already [query(head_dim), gate(head_dim)] per head, the layout
  llama.cpp's graph views.

Only numpy is imported at module level (no torch): the board-side tools import this too.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
from gguf import MODEL_TENSOR as T

from smt_convert.archs.qwen3_5.config import TEXT_PREFIX, Hparams, TextHparams
from smt_convert.converters.decoder_tensors import gguf_name as name
from smt_convert.converters.plugin import TextTensor
from smt_convert.converters.precision import PrecisionRule
from smt_convert.runtime.errors import SmtError

# GGUF tensors upstream always keeps in F32 whatever --outtype (conversion/base.py: FFN_GATE_INP,
# FFN_GATE_INP_SHEXP, SSM_CONV1D are forced F32; `ssm_a` has no ".weight" suffix, which also forces F32).
# ggml's CPU ssm_conv requires an F32 kernel, so `ssm_conv1d` in F16 would not even run.
F32_TENSOR_PATTERN = re.compile(
    r"^blk\.\d+\.(ffn_gate_inp\.weight|ffn_gate_inp_shexp\.weight|ssm_conv1d\.weight|ssm_a)$"
)


# ---- checkpoint tensors ---------------------------------------------------------------------------


def _linear_shapes(hp: TextHparams) -> dict[str, tuple[int, ...]]:
    H, nv = hp.hidden_size, hp.linear_num_value_heads
    return {
        "linear_attn.in_proj_qkv.weight": (hp.conv_dim, H),
        "linear_attn.in_proj_z.weight": (hp.value_dim, H),
        "linear_attn.in_proj_b.weight": (nv, H),
        "linear_attn.in_proj_a.weight": (nv, H),
        "linear_attn.conv1d.weight": (hp.conv_dim, 1, hp.linear_conv_kernel),
        "linear_attn.dt_bias": (nv,),
        "linear_attn.A_log": (nv,),
        "linear_attn.norm.weight": (hp.linear_value_head_dim,),
        "linear_attn.out_proj.weight": (H, hp.value_dim),
    }


def _attention_shapes(hp: TextHparams) -> dict[str, tuple[int, ...]]:
    H, hd = hp.hidden_size, hp.head_dim
    return {
        "self_attn.q_proj.weight": (2 * hp.num_heads * hd, H),
        "self_attn.k_proj.weight": (hp.num_kv_heads * hd, H),
        "self_attn.v_proj.weight": (hp.num_kv_heads * hd, H),
        "self_attn.o_proj.weight": (H, hp.num_heads * hd),
        "self_attn.q_norm.weight": (hd,),
        "self_attn.k_norm.weight": (hd,),
    }


def _ffn_shapes(hp: TextHparams, experts: str) -> dict[str, tuple[int, ...]]:
    H = hp.hidden_size
    if not hp.moe:
        F = hp.intermediate_size
        return {"mlp.gate_proj.weight": (F, H), "mlp.up_proj.weight": (F, H), "mlp.down_proj.weight": (H, F)}
    E, F, S = hp.num_experts, hp.moe_intermediate_size, hp.shared_expert_intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "mlp.gate.weight": (E, H),
        "mlp.shared_expert.gate_proj.weight": (S, H),
        "mlp.shared_expert.up_proj.weight": (S, H),
        "mlp.shared_expert.down_proj.weight": (H, S),
        "mlp.shared_expert_gate.weight": (1, H),
    }
    if experts == "fused":
        shapes["mlp.experts.gate_up_proj"] = (E, 2 * F, H)
        shapes["mlp.experts.down_proj"] = (E, H, F)
    elif experts == "per_expert":
        for j in range(E):
            shapes[f"mlp.experts.{j}.gate_proj.weight"] = (F, H)
            shapes[f"mlp.experts.{j}.up_proj.weight"] = (F, H)
            shapes[f"mlp.experts.{j}.down_proj.weight"] = (H, F)
    else:
        raise ValueError(f"experts: expected 'fused' or 'per_expert', got {experts!r}")
    return shapes


def expected_text_tensors(
    hp: TextHparams, prefix: str = TEXT_PREFIX, experts: str = "fused"
) -> dict[str, tuple[int, ...]]:
    """Canonical checkpoint name -> shape for every text tensor the model uses (MTP excluded)."""
    H = hp.hidden_size
    shapes = {prefix + "embed_tokens.weight": (hp.vocab_size, H), prefix + "norm.weight": (H,)}
    ffn = _ffn_shapes(hp, experts)
    for i in range(hp.num_layers):
        layer: dict[str, tuple[int, ...]] = {"input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,)}
        layer.update(_linear_shapes(hp) if hp.is_linear(i) else _attention_shapes(hp))
        layer.update(ffn)
        shapes.update({f"{prefix}layers.{i}.{k}": v for k, v in layer.items()})
    if not hp.tie_embeddings:
        shapes["lm_head.weight"] = (hp.vocab_size, H)
    return shapes


def ignored_text_tensors(hp: TextHparams, prefix: str = TEXT_PREFIX) -> dict[str, str]:
    """Text-side checkpoint tensors deliberately not converted (glob -> reason). Vision tensors are the
    vision plugin's to list."""
    mtp = "multi-token-prediction (MTP) head for speculative decoding: not converted"
    ignored = {"mtp.*": mtp, "model.mtp.*": mtp, f"{prefix}mtp.*": mtp}
    if hp.tie_embeddings:
        ignored["lm_head.weight"] = "tied to the token embeddings (tie_word_embeddings)"
    return ignored


# ---- transforms (numpy, exactly as upstream) --------------------------------------------------------


def reorder_v_heads(x: np.ndarray, axis: int, n_k: int, v_per_k: int, head_dim: int) -> np.ndarray:
    """Value heads along `axis` from grouped [k0: v0..v{r-1}, k1: ...] to tiled [v0: k0..k{n-1}, v1: ...]."""
    axis = axis % x.ndim
    shape = x.shape
    y = x.reshape(shape[:axis] + (n_k, v_per_k, head_dim) + shape[axis + 1 :])
    y = np.swapaxes(y, axis, axis + 1)
    return np.ascontiguousarray(y).reshape(shape)


def plus_one(w: np.ndarray) -> np.ndarray:
    """Zero-centred RMSNorm weight (HF applies 1 + w) -> the plain multiplier llama.cpp applies."""
    return w + np.float32(1.0)


def _transforms(hp: TextHparams) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    nk, r, dk, dv = hp.linear_num_key_heads, hp.v_per_k, hp.linear_key_head_dim, hp.linear_value_head_dim
    grouped = r > 1

    def vrows(hd):
        return (lambda w: reorder_v_heads(w, 0, nk, r, hd)) if grouped else (lambda w: w)

    def qkv(w):
        if not grouped:
            return w
        split = 2 * nk * dk
        return np.concatenate([w[:split], reorder_v_heads(w[split:], 0, nk, r, dv)], axis=0)

    def conv(w):
        w = w.reshape(w.shape[0], w.shape[-1])  # [C, 1, K] -> [C, K] (upstream: squeeze)
        return qkv(w)

    return {
        "qkv": qkv,
        "z": vrows(dv),
        "ab": vrows(1),
        "A": lambda a: -np.exp(vrows(1)(a)),
        "dt": vrows(1),
        "conv": conv,
        "out": (lambda w: reorder_v_heads(w, 1, nk, r, dv)) if grouped else (lambda w: w),
    }


EXPERTS = {"gate": T.FFN_GATE_EXP, "up": T.FFN_UP_EXP, "down": T.FFN_DOWN_EXP}


def text_tensors(
    hp: TextHparams,
    to_ckpt: Callable[[str], str] = lambda name: name,
    prefix: str = TEXT_PREFIX,
    experts: str = "fused",
) -> list[TextTensor]:
    """Every GGUF tensor of the qwen35 / qwen35moe text model: name, checkpoint sources, shape, transform.
    `to_ckpt` maps a canonical name to the checkpoint's; `prefix` is the canonical text prefix."""
    H, E = hp.hidden_size, hp.num_experts
    F = hp.moe_intermediate_size
    tf = _transforms(hp)
    shapes = expected_text_tensors(hp, prefix, experts)
    out: list[TextTensor] = []

    def add(gguf_name: str, canonical: str, transform=None, shape=None):
        out.append(TextTensor(gguf_name, (to_ckpt(canonical),), tuple(shape or shapes[canonical]), transform))

    add(name(T.TOKEN_EMBD), prefix + "embed_tokens.weight")
    for i in range(hp.num_layers):
        p = f"{prefix}layers.{i}."
        add(name(T.ATTN_NORM, i), p + "input_layernorm.weight", plus_one)
        add(name(T.ATTN_POST_NORM, i), p + "post_attention_layernorm.weight", plus_one)
        if hp.is_linear(i):
            la = p + "linear_attn."
            add(name(T.ATTN_QKV, i), la + "in_proj_qkv.weight", tf["qkv"])
            add(name(T.ATTN_GATE, i), la + "in_proj_z.weight", tf["z"])
            add(name(T.SSM_BETA, i), la + "in_proj_b.weight", tf["ab"])
            add(name(T.SSM_ALPHA, i), la + "in_proj_a.weight", tf["ab"])
            add(name(T.SSM_CONV1D, i), la + "conv1d.weight", tf["conv"], (hp.conv_dim, hp.linear_conv_kernel))
            add(name(T.SSM_DT, i, "bias"), la + "dt_bias", tf["dt"])
            add(name(T.SSM_A, i, None), la + "A_log", tf["A"])
            add(name(T.SSM_NORM, i), la + "norm.weight")  # gated norm: plain weight, no +1
            add(name(T.SSM_OUT, i), la + "out_proj.weight", tf["out"])
        else:
            sa = p + "self_attn."
            add(name(T.ATTN_Q, i), sa + "q_proj.weight")  # [query, gate] per head, as llama.cpp views it
            add(name(T.ATTN_K, i), sa + "k_proj.weight")
            add(name(T.ATTN_V, i), sa + "v_proj.weight")
            add(name(T.ATTN_OUT, i), sa + "o_proj.weight")
            add(name(T.ATTN_Q_NORM, i), sa + "q_norm.weight", plus_one)
            add(name(T.ATTN_K_NORM, i), sa + "k_norm.weight", plus_one)
        m = p + "mlp."
        if not hp.moe:
            add(name(T.FFN_GATE, i), m + "gate_proj.weight")
            add(name(T.FFN_UP, i), m + "up_proj.weight")
            add(name(T.FFN_DOWN, i), m + "down_proj.weight")
            continue
        add(name(T.FFN_GATE_INP, i), m + "gate.weight")
        if experts == "fused":
            add(name(T.FFN_GATE_EXP, i), m + "experts.gate_up_proj", lambda w, F=F: w[:, :F, :], (E, F, H))
            add(name(T.FFN_UP_EXP, i), m + "experts.gate_up_proj", lambda w, F=F: w[:, F:, :], (E, F, H))
            add(name(T.FFN_DOWN_EXP, i), m + "experts.down_proj")
        else:
            for kind in ("gate", "up", "down"):
                srcs = tuple(to_ckpt(f"{m}experts.{j}.{kind}_proj.weight") for j in range(E))
                shape = (E, H, F) if kind == "down" else (E, F, H)
                out.append(TextTensor(name(EXPERTS[kind], i), srcs, shape, lambda *ws: np.stack(ws, axis=0)))
        add(name(T.FFN_GATE_INP_SHEXP, i), m + "shared_expert_gate.weight")  # [1, H], as upstream
        add(name(T.FFN_GATE_SHEXP, i), m + "shared_expert.gate_proj.weight")
        add(name(T.FFN_UP_SHEXP, i), m + "shared_expert.up_proj.weight")
        add(name(T.FFN_DOWN_SHEXP, i), m + "shared_expert.down_proj.weight")
    add(name(T.OUTPUT_NORM), prefix + "norm.weight", plus_one)
    if not hp.tie_embeddings:
        add(name(T.OUTPUT), "lm_head.weight")
    return out


# Gated-DeltaNet's per-head decay (alpha) and write strength (beta) projections feed the recurrence every step, so
# their error compounds along the sequence; people quantising Qwen3.5 / Qwen3-Next keep them in float. They are
# [value heads, hidden]: 0.4% of a 512-wide model's GGUF, far less at release widths. Measured with
# benchmarks/bench_quality.py (random weights, hidden 512, 8 layers, q4_0, 32 greedy tokens): KLD mean
# 0.3207 -> 0.3201 (no significant change on random weights; 2.21 -> 1.98 on an untrained network with a
# chaotic signal); Q8_0 measured the same as F16 there, and is what llama.cpp's quantiser can keep for them.
PRECISION_RULES = (
    PrecisionRule(
        r"\.ssm_(alpha|beta)\.weight$",
        "Q8_0",
        "Gated-DeltaNet gate projections: error compounds through the recurrence (0.4% of the GGUF)",
    ),
)


def needs_f32(gguf_name: str) -> bool:
    """True for tensors upstream keeps in F32 whatever the outtype (router, shared-expert gate, conv kernel,
    ssm_a). llama.cpp cannot run ssm_conv with a non-F32 kernel."""
    return bool(F32_TENSOR_PATTERN.match(gguf_name))


def text_tensor_types(tensors: list[TextTensor], outtype: str) -> dict:
    """ggml type per GGUF tensor: the shared rule (`converters.text_gguf.choose_types`), then F32 for the
    tensors upstream forces to F32 (`needs_f32`)."""
    import gguf

    from smt_convert.converters.text_gguf import choose_types

    types = dict(choose_types(tensors, outtype))
    for t in tensors:
        if needs_f32(t.name):
            types[t.name] = gguf.GGMLQuantizationType.F32
    return types


# ---- metadata -----------------------------------------------------------------------------------


def write_text_metadata(writer, hp: TextHparams) -> None:
    """The qwen35 / qwen35moe keys llama.cpp's loader reads (src/models/qwen35*.cpp, llama-model.cpp), with
    the values upstream's converter writes. No `nextn_predict_layers`: MTP is not converted."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    write_decoder_metadata(writer, hp, feed_forward=not hp.moe)  # MoE configs have no dense FFN width
    writer.add_rope_dimension_count(hp.rope_dim)
    # Gated DeltaNet: conv kernel, head size (k == v), key heads (groups), value heads, value width.
    writer.add_ssm_conv_kernel(hp.linear_conv_kernel)
    writer.add_ssm_state_size(hp.linear_key_head_dim)
    writer.add_ssm_group_count(hp.linear_num_key_heads)
    writer.add_ssm_time_step_rank(hp.linear_num_value_heads)
    writer.add_ssm_inner_size(hp.value_dim)
    # Which layers are recurrent: the explicit list wins over the interval in llama.cpp's loader.
    writer.add_array(f"{hp.gguf_arch}.attention.recurrent_layers", [hp.is_linear(i) for i in range(hp.num_layers)])
    writer.add_full_attention_interval(hp.full_attention_interval)
    if hp.moe:
        writer.add_expert_count(hp.num_experts)
        writer.add_expert_used_count(hp.num_experts_per_tok)
        writer.add_expert_feed_forward_length(hp.moe_intermediate_size)
        writer.add_expert_shared_feed_forward_length(hp.shared_expert_intermediate_size)


def check_weights(ckpt, hp: Hparams) -> None:
    """Vocabulary size = embedding rows (tied or not is decided from the weights in config.read_hparams)."""
    embed = ckpt.tensors.get(hp.prefix + "embed_tokens.weight")
    if embed is not None and embed.shape[0] != hp.text.vocab_size:
        raise SmtError(
            f"{ckpt.config_path}: vocab_size: {hp.text.vocab_size} but {embed.name} in "
            f"{embed.file.name} has {embed.shape[0]} rows"
        )
