"""Qwen3.5 (dense and MoE): the text side, as llama.cpp's `qwen35` / `qwen35moe` architectures.

Hybrid decoder: most layers are Gated DeltaNet linear attention (`linear_attn.*`, a recurrent state per
head plus a short causal conv1d), every `full_attention_interval`-th layer is gated full attention
(`self_attn.*`: `q_proj` yields query and an output gate per head, q/k RMSNorm, partial interleaved
M-RoPE). FFN is a SwiGLU MLP (dense) or top-k softmax MoE with a sigmoid-gated shared expert (MoE).

Canonical names are the transformers-native ones of `Qwen3_5(Moe)ForConditionalGeneration`:
`model.language_model.*` and `lm_head.weight` (`TEXT_PREFIX`). `Qwen3_5(Moe)ForCausalLM` names the same
tensors `model.*` (`CAUSAL_PREFIX`); every function takes the prefix.

MoE experts come in two on-disk layouts, both handled (`experts=`):
- "fused": `mlp.experts.gate_up_proj` [E, 2F, H] and `mlp.experts.down_proj` [E, H, F] (the parameters
  as transformers holds them, and the released Qwen3.5 MoE checkpoints);
- "per_expert": `mlp.experts.{j}.{gate,up,down}_proj.weight` (what transformers 5.x `save_pretrained`
  writes: it reverses its own conversion mapping on save).
`detect_expert_layout` picks one from the checkpoint's tensor names.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from smt_convert.converters.plugin import EncoderOutput, TextTensor, register
from smt_convert.converters.validate import ConfigReader, board_grid_notes, image_size_hw, read_tie, require
from smt_convert.runtime.positions import guess_grid
from smt_convert.runtime.errors import SmtError

TEXT_PREFIX = "model.language_model."  # Qwen3_5(Moe)ForConditionalGeneration
CAUSAL_PREFIX = "model."               # Qwen3_5(Moe)ForCausalLM

HF_ARCHITECTURES_DENSE = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")
HF_ARCHITECTURES_MOE = ("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM")

# Tokenizer facts, as upstream writes Qwen3.5: byte-level BPE ("gpt2" model) with the `qwen35`
# pre-tokenizer (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN35, a different split regex from qwen2);
# <|im_end|> ends an assistant turn (eos and eot). Qwen3.5's tokenizer_config has no bos token and
# add_bos_token false, so upstream writes no bos id.
VOCAB_PRE = "qwen35"
EOS_TOKEN = "<|im_end|>"
EOT_TOKEN = "<|im_end|>"
BOS_TOKEN = None

# HF's default when rope_parameters has no mrope_section (Qwen3_5TextRotaryEmbedding); upstream writes the
# same default ([11, 11, 10, 0]) because llama.cpp requires qwen35*.rope.dimension_sections.
DEFAULT_MROPE_SECTION = [11, 11, 10]

# GGUF tensors upstream always keeps in F32 whatever --outtype (conversion/base.py: FFN_GATE_INP,
# FFN_GATE_INP_SHEXP, SSM_CONV1D are forced F32; `ssm_a` has no ".weight" suffix, which also forces F32).
# ggml's CPU ssm_conv requires an F32 kernel, so `ssm_conv1d` in F16 would not even run.
F32_TENSOR_PATTERN = re.compile(
    r"^blk\.\d+\.(ffn_gate_inp\.weight|ffn_gate_inp_shexp\.weight|ssm_conv1d\.weight|ssm_a)$"
)

LINEAR, FULL = "linear_attention", "full_attention"


@dataclass
class TextHparams:
    moe: bool
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int            # dense FFN width (0 for MoE: it has none)
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: list[int]          # 3 entries (t, h, w) from the config
    max_position_embeddings: int
    layer_types: list[str]            # "linear_attention" | "full_attention" per layer
    full_attention_interval: int
    linear_conv_kernel: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    tie_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    mtp_layers: int = 0               # MTP blocks in the checkpoint (not converted)

    @property
    def gguf_arch(self) -> str:
        return "qwen35moe" if self.moe else "qwen35"

    @property
    def rope_dim(self) -> int:
        """Rotated dims per head (`rope.dimension_count`), as upstream computes it."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def rope_sections(self) -> list[int]:
        return (list(self.mrope_section) + [0, 0, 0, 0])[:4]

    @property
    def key_dim(self) -> int:
        return self.linear_key_head_dim * self.linear_num_key_heads

    @property
    def value_dim(self) -> int:
        return self.linear_value_head_dim * self.linear_num_value_heads

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def v_per_k(self) -> int:
        return self.linear_num_value_heads // self.linear_num_key_heads

    def is_linear(self, layer: int) -> bool:
        return self.layer_types[layer] == LINEAR


# ---- config -------------------------------------------------------------------------------------


def _text_reader(config: dict, path: Path) -> tuple[ConfigReader, ConfigReader]:
    top = ConfigReader(config, path)
    text = top.sub("text_config") if "text_config" in config else top
    return top, text


def is_moe_config(config: dict) -> bool:
    """MoE if the model type or the architectures say so, or the text config has experts."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    types = {str(config.get("model_type", "")), str(text.get("model_type", ""))}
    archs = set(config.get("architectures") or [])
    return bool(types & {"qwen3_5_moe", "qwen3_5_moe_text"} or archs & set(HF_ARCHITECTURES_MOE)
                or text.get("num_experts") is not None)


def read_text_hparams(config: dict, path: Path, moe: bool | None = None) -> TextHparams:
    """Text hyperparameters from a Qwen3.5 config.json: either the multimodal layout (`text_config`
    inside) or a text-only one (`Qwen3_5(Moe)ForCausalLM`). Errors name the file and dotted field."""
    top, text = _text_reader(config, path)
    if moe is None:
        moe = is_moe_config(config)
    rope_key = "rope_parameters" if "rope_parameters" in text.data else "rope_scaling"
    rope = text.sub(rope_key, required=False) or ConfigReader({}, path, text.field(rope_key) + ".")
    rope_type = rope.get("rope_type", str, rope.get("type", str, "default"))
    require(rope_type == "default", path, rope.field("rope_type"), f"'{rope_type}' scaling is not supported")
    theta = rope.get("rope_theta", float, None) or text.get("rope_theta", float, 10000.0)
    partial = rope.get("partial_rotary_factor", float, None) or text.get("partial_rotary_factor", float, 0.25)
    section = rope.data.get("mrope_section", DEFAULT_MROPE_SECTION)
    if not (isinstance(section, list) and 1 <= len(section) <= 4
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section)):
        raise SmtError(f"{path}: {rope.field('mrope_section')}: expected a list of up to 4 non-negative integers, "
                       f"found {section!r}")
    num_layers = text.get("num_hidden_layers")
    interval = text.get("full_attention_interval", int, 4)
    layer_types = text.data.get("layer_types")
    if layer_types is None:
        layer_types = [LINEAR if (i + 1) % interval else FULL for i in range(num_layers)]
    if not (isinstance(layer_types, list) and all(t in (LINEAR, FULL) for t in layer_types)):
        raise SmtError(f"{path}: {text.field('layer_types')}: expected a list of '{LINEAR}'/'{FULL}'")
    hidden = text.get("hidden_size")
    heads = text.get("num_attention_heads")
    hp = TextHparams(
        moe=moe,
        vocab_size=text.get("vocab_size"),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads"),
        head_dim=text.get("head_dim", int, hidden // heads),
        intermediate_size=0 if moe else text.get("intermediate_size"),
        rms_norm_eps=text.get("rms_norm_eps", float, 1e-6),
        rope_theta=float(theta),
        partial_rotary_factor=float(partial),
        mrope_section=[int(s) for s in section][:3] + [0] * max(0, 3 - len(section)),
        max_position_embeddings=text.get("max_position_embeddings", int, 32768),
        layer_types=list(layer_types),
        full_attention_interval=interval,
        linear_conv_kernel=text.get("linear_conv_kernel_dim", int, 4),
        linear_key_head_dim=text.get("linear_key_head_dim"),
        linear_value_head_dim=text.get("linear_value_head_dim"),
        linear_num_key_heads=text.get("linear_num_key_heads"),
        linear_num_value_heads=text.get("linear_num_value_heads"),
        tie_embeddings=_read_tie(top, text),
        mtp_layers=int(text.data.get("mtp_num_hidden_layers") or 0),
    )
    if moe:
        hp.num_experts = text.get("num_experts")
        hp.num_experts_per_tok = text.get("num_experts_per_tok")
        hp.moe_intermediate_size = text.get("moe_intermediate_size")
        hp.shared_expert_intermediate_size = text.get("shared_expert_intermediate_size")
    _check(hp, text, rope, path)
    return hp


def _read_tie(top: ConfigReader, text: ConfigReader) -> bool:
    """At the top or in text_config; Qwen3.5's default is untied."""
    return read_tie([top, text] if top is not text else [top], default=False)


def _check(hp: TextHparams, text: ConfigReader, rope: ConfigReader, path: Path) -> None:
    require(len(hp.layer_types) == hp.num_layers, path, text.field("layer_types"),
            f"{len(hp.layer_types)} entries, expected num_hidden_layers ({hp.num_layers})")
    require(hp.num_heads % hp.num_kv_heads == 0, path, text.field("num_key_value_heads"),
            f"{hp.num_kv_heads} does not divide num_attention_heads {hp.num_heads}")
    require(hp.linear_num_value_heads % hp.linear_num_key_heads == 0, path, text.field("linear_num_key_heads"),
            f"{hp.linear_num_key_heads} does not divide linear_num_value_heads {hp.linear_num_value_heads}")
    # llama.cpp derives both head sizes from ssm.state_size (qwen35*.cpp: head_v_dim = ssm_d_state).
    require(hp.linear_key_head_dim == hp.linear_value_head_dim, path, text.field("linear_value_head_dim"),
            f"{hp.linear_value_head_dim} != linear_key_head_dim {hp.linear_key_head_dim}; llama.cpp's qwen35 "
            "needs equal key and value head sizes")
    require(text.data.get("hidden_act", "silu") == "silu", path, text.field("hidden_act"),
            f"'{text.data.get('hidden_act')}' is not supported (expected silu)")
    require(not text.data.get("attention_bias", False), path, text.field("attention_bias"),
            "attention biases are not supported by llama.cpp's qwen35")
    rd = hp.rope_dim
    require(rd % 2 == 0 and 0 < rd <= hp.head_dim, path, rope.field("partial_rotary_factor"),
            f"head_dim {hp.head_dim} x {hp.partial_rotary_factor} = {rd} rotated dims, must be even and <= head_dim")
    bad = _section_mismatch(rd // 2, hp.rope_sections)
    require(bad is None, path, rope.field("mrope_section"),
            f"{hp.mrope_section} cannot be expressed by llama.cpp's interleaved M-RoPE for {rd // 2} rotary pairs "
            f"(rotary pair {bad} would turn by a different position stream than in HF)")
    if hp.moe:
        require(hp.num_experts_per_tok <= hp.num_experts, path, text.field("num_experts_per_tok"),
                f"{hp.num_experts_per_tok} exceeds num_experts {hp.num_experts}")


def hf_rope_streams(n_pairs: int, section: list[int]) -> list[int]:
    """Position stream (0=t, 1=h, 2=w) of each rotary pair in HF's interleaved M-RoPE
    (Qwen3_5TextRotaryEmbedding.recomposition_frequencies)."""
    out = []
    for i in range(n_pairs):
        if i % 3 == 1 and i < 3 * section[1]:
            out.append(1)
        elif i % 3 == 2 and i < 3 * section[2]:
            out.append(2)
        else:
            out.append(0)
    return out


def ggml_rope_streams(n_pairs: int, sections: list[int]) -> list[int]:
    """Position stream (0..3) of each rotary pair in ggml's IMROPE (same rule as runtime qwen3vl)."""
    total = sum(sections)
    out = []
    for i in range(n_pairs):
        s = i % total if total else 0
        if s % 3 == 1 and s < 3 * sections[1]:
            out.append(1)
        elif s % 3 == 2 and s < 3 * sections[2]:
            out.append(2)
        elif s % 3 == 0 and s < 3 * sections[0]:
            out.append(0)
        else:
            out.append(3)
    return out


def _section_mismatch(n_pairs: int, sections: list[int]) -> int | None:
    """First rotary pair that llama.cpp would rotate by a different stream than HF, or None."""
    if sum(sections) <= 0:
        return 0
    hf, gg = hf_rope_streams(n_pairs, sections), ggml_rope_streams(n_pairs, sections)
    return next((i for i, (a, b) in enumerate(zip(hf, gg)) if a != b), None)


# ---- checkpoint tensors ---------------------------------------------------------------------------


def detect_expert_layout(names, prefix: str = TEXT_PREFIX) -> str:
    """"fused" if the checkpoint has `mlp.experts.gate_up_proj`, "per_expert" if it has
    `mlp.experts.0.gate_proj.weight` (checked on layer 0); "fused" when neither (the error then names the
    missing fused tensor)."""
    names = set(names)
    if f"{prefix}layers.0.mlp.experts.0.gate_proj.weight" in names:
        return "per_expert"
    return "fused"


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
    shapes = {
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
        layer = {"input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,)}
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
    y = x.reshape(shape[:axis] + (n_k, v_per_k, head_dim) + shape[axis + 1:])
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

    add("token_embd.weight", prefix + "embed_tokens.weight")
    for i in range(hp.num_layers):
        p, b = f"{prefix}layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", p + "input_layernorm.weight", plus_one)
        add(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", plus_one)
        if hp.is_linear(i):
            la = p + "linear_attn."
            add(b + "attn_qkv.weight", la + "in_proj_qkv.weight", tf["qkv"])
            add(b + "attn_gate.weight", la + "in_proj_z.weight", tf["z"])
            add(b + "ssm_beta.weight", la + "in_proj_b.weight", tf["ab"])
            add(b + "ssm_alpha.weight", la + "in_proj_a.weight", tf["ab"])
            add(b + "ssm_conv1d.weight", la + "conv1d.weight", tf["conv"], (hp.conv_dim, hp.linear_conv_kernel))
            add(b + "ssm_dt.bias", la + "dt_bias", tf["dt"])
            add(b + "ssm_a", la + "A_log", tf["A"])
            add(b + "ssm_norm.weight", la + "norm.weight")  # gated norm: plain weight, no +1
            add(b + "ssm_out.weight", la + "out_proj.weight", tf["out"])
        else:
            sa = p + "self_attn."
            add(b + "attn_q.weight", sa + "q_proj.weight")  # [query, gate] per head, as llama.cpp views it
            add(b + "attn_k.weight", sa + "k_proj.weight")
            add(b + "attn_v.weight", sa + "v_proj.weight")
            add(b + "attn_output.weight", sa + "o_proj.weight")
            add(b + "attn_q_norm.weight", sa + "q_norm.weight", plus_one)
            add(b + "attn_k_norm.weight", sa + "k_norm.weight", plus_one)
        m = p + "mlp."
        if not hp.moe:
            add(b + "ffn_gate.weight", m + "gate_proj.weight")
            add(b + "ffn_up.weight", m + "up_proj.weight")
            add(b + "ffn_down.weight", m + "down_proj.weight")
            continue
        add(b + "ffn_gate_inp.weight", m + "gate.weight")
        if experts == "fused":
            add(b + "ffn_gate_exps.weight", m + "experts.gate_up_proj", lambda w, F=F: w[:, :F, :], (E, F, H))
            add(b + "ffn_up_exps.weight", m + "experts.gate_up_proj", lambda w, F=F: w[:, F:, :], (E, F, H))
            add(b + "ffn_down_exps.weight", m + "experts.down_proj")
        else:
            for kind in ("gate", "up", "down"):
                srcs = tuple(to_ckpt(f"{m}experts.{j}.{kind}_proj.weight") for j in range(E))
                shape = (E, H, F) if kind == "down" else (E, F, H)
                out.append(TextTensor(f"{b}ffn_{kind}_exps.weight", srcs, shape, lambda *ws: np.stack(ws, axis=0)))
        add(b + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight")  # [1, H], as upstream
        add(b + "ffn_gate_shexp.weight", m + "shared_expert.gate_proj.weight")
        add(b + "ffn_up_shexp.weight", m + "shared_expert.up_proj.weight")
        add(b + "ffn_down_shexp.weight", m + "shared_expert.down_proj.weight")
    add("output_norm.weight", prefix + "norm.weight", plus_one)
    if not hp.tie_embeddings:
        add("output.weight", "lm_head.weight")
    return out


def needs_f32(gguf_name: str) -> bool:
    """True for tensors upstream keeps in F32 whatever the outtype (router, shared-expert gate, conv kernel,
    ssm_a). llama.cpp cannot run ssm_conv with a non-F32 kernel."""
    return bool(F32_TENSOR_PATTERN.match(gguf_name))


def text_tensor_types(tensors: list[TextTensor], outtype: str) -> dict:
    """ggml type per GGUF tensor: the shared rule (`converters.text_gguf.choose_types`), then F32 for the
    tensors upstream forces to F32 (`needs_f32`)."""
    import gguf

    from smt_convert.converters import text_gguf

    if hasattr(text_gguf, "choose_types"):
        types = dict(text_gguf.choose_types(tensors, outtype))
    else:  # older signature choose_type(shape, outtype)
        types = {t.name: text_gguf.choose_type(t.shape, outtype) for t in tensors}
    for t in tensors:
        if needs_f32(t.name):
            types[t.name] = gguf.GGMLQuantizationType.F32
    return types


# ---- metadata -----------------------------------------------------------------------------------


def write_text_metadata(writer, hp: TextHparams, name: str) -> None:
    """The qwen35 / qwen35moe keys llama.cpp's loader reads (src/models/qwen35*.cpp, llama-model.cpp), with
    the values upstream's converter writes. No `nextn_predict_layers`: MTP is not converted."""
    from smt_convert.converters.text_gguf import write_decoder_metadata

    write_decoder_metadata(writer, hp, name, feed_forward=not hp.moe)  # MoE configs have no dense FFN width
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


# ---- the plugin ---------------------------------------------------------------------------------------

VISION = "model.visual."
IMAGE_PROMPT = "<|im_start|>user\n<__media__>{prompt}<|im_end|>\n<|im_start|>assistant\n"
TEXT_PROMPT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)


@dataclass
class VisionHparams:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    num_position_embeddings: int
    image_size: tuple[int, int]                 # (height, width) of the static ONNX input
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float
    preprocessor_source: str                    # file the normalisation came from, or "defaults"

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the merged token grid the vision encoder emits."""
        m = self.patch_size * self.spatial_merge_size
        return self.image_size[0] // m, self.image_size[1] // m


@dataclass
class Hparams:
    text: TextHparams
    vision: VisionHparams | None
    prefix: str                                 # canonical text prefix in this checkpoint
    experts: str                                # MoE expert layout on disk
    hf_class: str
    image_token_id: int | None = None

    @property
    def gguf_arch(self) -> str:
        return self.text.gguf_arch

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def layout(self) -> str:
        return "native" if self.prefix == TEXT_PREFIX else "native text-only"

    @property
    def rope_sections(self) -> list[int]:
        return self.text.rope_sections


def _read_vision(ckpt, opts, text: TextHparams) -> VisionHparams:
    from smt_convert.runtime.bundle import read_json

    top = ConfigReader(ckpt.config, ckpt.config_path)
    v = top.sub("vision_config")
    patch = v.get("patch_size", int, 16)
    merge = v.get("spatial_merge_size", int, 2)
    num_pos = v.get("num_position_embeddings", int, 2304)
    side = int(round(num_pos ** 0.5))
    require(side * side == num_pos, ckpt.config_path, v.field("num_position_embeddings"), f"{num_pos} is not a square")
    out_hidden = v.get("out_hidden_size")
    require(out_hidden == text.hidden_size, ckpt.config_path, v.field("out_hidden_size"),
            f"vision output width {out_hidden} must equal the text hidden size {text.hidden_size}")
    size = opts.image_size if opts is not None and opts.image_size is not None else side * patch
    h, w = image_size_hw(size, patch * merge)
    pre_path = ckpt.root / "preprocessor_config.json"
    if pre_path.is_file():
        pre = ConfigReader(read_json(pre_path), pre_path)
        mean = tuple(float(x) for x in pre.get("image_mean", list, list(DEFAULT_IMAGE_MEAN)))
        std = tuple(float(x) for x in pre.get("image_std", list, list(DEFAULT_IMAGE_STD)))
        rescale = pre.get("rescale_factor", float, 1 / 255)
        require(len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std), pre_path, "image_mean/image_std",
                "expected three values each (std positive)")
        source = pre_path.name
    else:
        mean, std, rescale, source = DEFAULT_IMAGE_MEAN, DEFAULT_IMAGE_STD, 1 / 255, "defaults"
    return VisionHparams(v.get("depth"), v.get("hidden_size"), v.get("num_heads"), v.get("intermediate_size"),
                         patch, v.get("temporal_patch_size", int, 2), merge, out_hidden, num_pos, (h, w),
                         mean, std, rescale, source)


def _vision_shapes(v: VisionHparams) -> dict[str, tuple[int, ...]]:
    d, f, merged = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size ** 2
    shapes = {"patch_embed.proj.weight": (d, 3, v.temporal_patch_size, v.patch_size, v.patch_size),
              "patch_embed.proj.bias": (d,), "pos_embed.weight": (v.num_position_embeddings, d),
              "merger.norm.weight": (d,), "merger.norm.bias": (d,),
              "merger.linear_fc1.weight": (merged, merged), "merger.linear_fc1.bias": (merged,),
              "merger.linear_fc2.weight": (v.out_hidden_size, merged), "merger.linear_fc2.bias": (v.out_hidden_size,)}
    block = {"norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
             "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
             "attn.proj.bias": (d,), "mlp.linear_fc1.weight": (f, d), "mlp.linear_fc1.bias": (f,),
             "mlp.linear_fc2.weight": (d, f), "mlp.linear_fc2.bias": (d,)}
    for i in range(v.depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    return {VISION + k: s for k, s in shapes.items()}


def _golden_image(height: int, width: int) -> np.ndarray:
    """A deterministic picture with structure at several scales (gradients, a disc, stripes, noise)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / max(width, 1) * 6.0)
    g = 255 * y / max(height - 1, 1)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(height, width) * 0.25) ** 2
    b = np.where(disc, 230.0, 40.0) + 30 * ((x // 8 + y // 8) % 2)
    noise = np.random.default_rng(7).normal(0, 6, (height, width, 3))
    return np.clip(np.stack([r, g, b], -1) + noise, 0, 255).astype(np.uint8)


@register
class Qwen35Plugin:
    name = "qwen3.5"
    hf_architectures = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")
    summary = "Qwen3.5 dense (0.8B-27B): hybrid Gated-DeltaNet text + vision encoder"
    text_arch = "qwen35"
    modality = "image"
    moe = False
    produces = [
        "<stem>-text-<outtype>.gguf (GGUF qwen35 / qwen35moe, tokenizer embedded)",
        "<stem>-vision-<size>.onnx (raw 0..255 [1,3,H,W] -> [(H/32)*(W/32), hidden]); none for text-only",
        "config.json, tokenizer files, golden/, manifest.json",
    ]
    vocab_pre = VOCAB_PRE
    eot_token = EOT_TOKEN
    eos_token = EOS_TOKEN
    bos_token = BOS_TOKEN
    chat_template = None  # the checkpoint's own (Qwen3.5's template handles thinking and images)

    @staticmethod
    def matches(config: dict) -> bool:
        return str(config.get("model_type", "")).startswith("qwen3_5")

    def default_stem(self, hp: Hparams) -> str:
        return "Qwen3.5-MoE" if hp.text.moe else "Qwen3.5"

    def modality_of(self, hp: Hparams) -> str:
        return "image" if hp.vision is not None else "text"

    # ---- checkpoint ---------------------------------------------------------------------------

    def read_hparams(self, ckpt, opts=None) -> Hparams:
        archs = ckpt.config.get("architectures") or []
        hf_class = archs[0] if archs else ("Qwen3_5MoeForConditionalGeneration" if self.moe
                                           else "Qwen3_5ForConditionalGeneration")
        text = read_text_hparams(ckpt.config, ckpt.config_path)
        if text.moe != self.moe:
            other = "qwen3.5-moe" if text.moe else "qwen3.5"
            raise SmtError(f"{ckpt.config_path}: architectures: this is a {'MoE' if text.moe else 'dense'} "
                           f"Qwen3.5 checkpoint; use `smt-convert {other}`")
        text_only = "ForCausalLM" in hf_class or "vision_config" not in ckpt.config
        if text_only and opts is not None and opts.image_size is not None:
            raise SmtError(f"--image-size: {ckpt.config_path} is a text-only checkpoint (no vision_config)")
        prefix = CAUSAL_PREFIX if "ForCausalLM" in hf_class else TEXT_PREFIX
        vision = None if text_only else _read_vision(ckpt, opts, text)
        image_token = None
        if vision is not None:
            image_token = ConfigReader(ckpt.config, ckpt.config_path).get("image_token_id", int, 248056)
            require(image_token < text.vocab_size, ckpt.config_path, "image_token_id",
                    f"{image_token} is outside the vocabulary ({text.vocab_size})")
        experts = detect_expert_layout(ckpt.tensors, prefix) if text.moe else "fused"
        return Hparams(text, vision, prefix, experts, hf_class, image_token)

    def canonical_to_checkpoint(self, hp: Hparams):
        return lambda name: name

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[int, ...]]:
        shapes = expected_text_tensors(hp.text, hp.prefix, hp.experts)
        if hp.vision is not None:
            shapes.update(_vision_shapes(hp.vision))
        return shapes

    def ignored_tensors(self, hp: Hparams) -> dict[str, str]:
        return ignored_text_tensors(hp.text, hp.prefix)

    def check_weights(self, ckpt, hp: Hparams) -> None:
        embed = ckpt.tensors.get(hp.prefix + "embed_tokens.weight")
        if embed is not None and embed.shape[0] != hp.text.vocab_size:
            raise SmtError(f"{ckpt.config_path}: vocab_size: {hp.text.vocab_size} but {embed.name} in "
                           f"{embed.file.name} has {embed.shape[0]} rows")
        head = ckpt.tensors.get("lm_head.weight")
        if hp.text.tie_embeddings and head is not None and embed is not None:
            import torch

            if not torch.equal(ckpt.load(head.name), ckpt.load(embed.name)):
                raise SmtError(f"{ckpt.config_path}: tie_word_embeddings: true, but lm_head.weight differs from "
                               f"{embed.name}; the config is wrong for these weights")

    # ---- text GGUF -----------------------------------------------------------------------------

    def text_tensors(self, hp: Hparams) -> list[TextTensor]:
        return text_tensors(hp.text, prefix=hp.prefix, experts=hp.experts)

    def text_types(self, tensors: list[TextTensor], outtype: str) -> dict:
        return text_tensor_types(tensors, outtype)

    def text_metadata(self, writer, hp: Hparams, name: str) -> None:
        write_text_metadata(writer, hp.text, name)

    # ---- encoder -------------------------------------------------------------------------------

    def vision_file(self, hp: Hparams, stem: str, onnx_dtype: str = "fp32") -> str:
        h, w = hp.vision.image_size
        size = f"{h}" if h == w else f"{h}x{w}"
        return f"{stem}-vision-{size}.onnx"

    def encoder_outputs(self, hp: Hparams, stem: str) -> list[EncoderOutput]:
        v = hp.vision
        h, w = v.image_size
        params = sum(int(np.prod(s)) for s in _vision_shapes(v).values())
        ny, nx = v.grid
        return [EncoderOutput("vision", self.vision_file(hp, stem), params,
                              [{"name": "pixel_values", "shape": [1, 3, h, w], "dtype": "float32"}],
                              [{"name": "image_embeds", "shape": [ny * nx, v.out_hidden_size], "dtype": "float32"}])]

    def build_torch_model(self, ckpt, hp: Hparams, parts: str = "all"):
        """The HF model loaded by transformers itself from the checkpoint (the independent reference), or
        for parts="encoder" just the vision tower with the checkpoint's weights."""
        import torch
        import transformers

        if parts == "all":
            cls = getattr(transformers, hp.hf_class)
            return cls.from_pretrained(str(ckpt.root), dtype=torch.float32).eval()
        from transformers import AutoConfig
        from transformers.initialization import no_init_weights
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

        config = AutoConfig.from_pretrained(str(ckpt.root))
        with no_init_weights():
            visual = Qwen3_5VisionModel._from_config(config.vision_config)
        params = dict(visual.named_parameters())
        with torch.no_grad():
            for name in _vision_shapes(hp.vision):
                params.pop(name[len(VISION):]).copy_(ckpt.load(name).to(torch.float32))
        if params:
            raise SmtError(f"{ckpt.root}: tensor {VISION}{next(iter(params))}: needed but not loaded")
        holder = torch.nn.Module()
        holder.visual = visual.eval()
        return holder

    def encoder_specs(self, model, hp: Hparams):
        from smt_convert.archs.qwen3_5.vision_torch import vision_export_spec

        visual = model.model.visual if hasattr(model, "model") else model.visual
        v = hp.vision
        return [vision_export_spec(visual, v.image_size, v.image_mean, v.image_std, v.rescale_factor)]

    # ---- bundle --------------------------------------------------------------------------------

    def board_config(self, hp: Hparams, files: dict[str, str]) -> dict:
        """config.json for --smt-config-dir. Element 0 of `architectures` selects the board's behaviour: the
        board knows `Qwen3_5ForConditionalGeneration` (Qwen3-VL family), so MoE bundles list it first and
        their own class second (the vision side is identical)."""
        archs = ["Qwen3_5ForConditionalGeneration"]
        if hp.hf_class not in archs and "ForConditionalGeneration" in hp.hf_class:
            archs.append(hp.hf_class)
        config = {"architectures": archs, "text_model": {"hidden_size": hp.text.hidden_size,
                                                          "model_path": files["text"]}}
        if hp.vision is not None:
            h, w = hp.vision.image_size
            size = {"input_size": h} if h == w else {"input_width": w, "input_height": h}
            config["vision_model"] = {"model_path": files["vision"], **size}
        return config

    def prompt_record(self, hp: Hparams) -> dict:
        record = {"template_fields": {"prompt": "Describe the image." if hp.vision else "Hello"},
                  "stop_tokens": ["<|im_end|>", "<|endoftext|>"], "positions": "mrope"}
        if hp.vision is None:
            return {**record, "template": TEXT_PROMPT}
        return {**record, "template": IMAGE_PROMPT, "media_marker": "<__media__>",
                "media_start": "<|vision_start|>", "media_end": "<|vision_end|>",
                "media_placeholder": "<|image_pad|>", "media_placeholder_id": hp.image_token_id}

    def preprocessing(self, hp: Hparams) -> dict:
        if hp.vision is None:
            return {}
        v = hp.vision
        ny, nx = v.grid
        guess = guess_grid(ny * nx)
        return {"host": "decode RGB, antialiased bilinear resize to exactly HxW, raw 0..255 float32 NCHW",
                "image_size": list(v.image_size), "grid": [ny, nx], "board_grid_guess": list(guess),
                "board_guess_matches": list(guess) == [ny, nx],
                "in_graph_normalisation": {"rescale_factor": v.rescale_factor, "image_mean": list(v.image_mean),
                                           "image_std": list(v.image_std), "from": v.preprocessor_source}}

    def golden_media(self, hp: Hparams) -> np.ndarray:
        h, w = hp.vision.image_size
        return _golden_image(int(h * 1.5), int(w * 1.25))  # not the export size: the host resize is exercised

    def golden_fields(self) -> dict:
        return {"prompt": "Describe the image."}

    def plan_notes(self, hp: Hparams) -> list[str]:
        notes = board_grid_notes(*hp.vision.grid) if hp.vision is not None else []
        if hp.vision is not None and hp.vision.preprocessor_source == "defaults":
            notes.append("preprocessor_config.json not found: the vision graph normalises with Qwen3.5's "
                         "defaults (rescale 1/255, mean 0.5, std 0.5)")
        if hp.text.mtp_layers:
            notes.append(f"{hp.text.mtp_layers} MTP layer(s) not converted (speculative decoding only)")
        return notes

    def hparams_record(self, hp: Hparams) -> dict:
        from dataclasses import asdict

        return asdict(hp)

    # ---- reference -----------------------------------------------------------------------------

    def reference_outputs(self, model, hp: Hparams, image, pixels: np.ndarray | None, placeholder_ids: list[int],
                          max_new_tokens: int, stop_ids: list[int]) -> dict:
        """HF's outputs for the same prompt. The image is first resized exactly as the runtime does (so both
        see the same H x W pixels), then HF's own image processor normalises and patchifies it."""
        import torch

        ids = torch.tensor([placeholder_ids])
        kwargs = {}
        out = {}
        if hp.vision is not None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            v = hp.vision
            proc = Qwen2VLImageProcessorPil(do_resize=False, image_mean=list(v.image_mean),
                                            image_std=list(v.image_std), rescale_factor=v.rescale_factor,
                                            patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                            merge_size=v.spatial_merge_size)
            resized = np.clip(np.rint(pixels[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
            batch = proc(images=[resized], return_tensors="pt")
            kwargs = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"],
                      "mm_token_type_ids": (ids == hp.image_token_id).long()}
            with torch.no_grad():
                feats = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
            feats = getattr(feats, "pooler_output", feats)
            feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
            out["encoder_same_features"] = feats.float().numpy()
        with torch.no_grad():
            out["logits"] = model(input_ids=ids, **kwargs).logits[0].float().numpy()
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0], **kwargs)
        tokens = gen[0, ids.shape[1]:].tolist()
        while tokens and tokens[-1] in stop_ids:
            tokens.pop()
        out["tokens"] = tokens
        return out


@register
class Qwen35MoePlugin(Qwen35Plugin):
    name = "qwen3.5-moe"
    hf_architectures = ("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM")
    summary = "Qwen3.5 MoE (35B-A3B and larger): hybrid Gated-DeltaNet MoE text + vision encoder"
    text_arch = "qwen35moe"
    moe = True
    # Rounding can flip an expert choice, which moves logits far more than in a dense model: tiny MoE
    # measured q8_0 NMSE 1.3e-2 where the dense model gives ~1e-4; bounds for lossy types are 5x wider.
    lossy_nmse_scale = 5.0
