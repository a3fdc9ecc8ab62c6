"""A random-weight `qwen3vl` GGUF (the Qwen3-ASR text decoder's layout) at any sizes and type, written with
gguf-py directly, not by our converter: the runtime tests check the decoder against a file of known contents,
and the runtime benchmark times it against llama.cpp at the real 0.6B sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_random_qwen3vl(
    path: Path,
    sizes: dict,
    n_layer: int,
    qtype_name: str = "q8_0",
    tied: bool = True,
    seed: int = 0,
    scale: float = 0.2,
    rope_sections=(3, 3, 2, 0),
    context: int = 512,
    tokens: list[str] | None = None,
) -> Path:
    """`sizes`: hidden, n_head, n_kv, head_dim, ff, vocab. Matrices ~ N(0, scale^2) in `qtype_name`; 1-D
    tensors (norms) 1 + N(0, 0.01) in F32. `tokens`: a byte-level BPE vocabulary for llama.cpp (the numpy
    runtime needs none)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    qtype = Q[qtype_name.upper()]
    s = sizes
    h, q, kv, ff, V = s["hidden"], s["n_head"] * s["head_dim"], s["n_kv"] * s["head_dim"], s["ff"], s["vocab"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen3vl")
    w.add_block_count(n_layer)
    w.add_context_length(context)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_kv"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_rope_dimension_sections(list(rope_sections))
    w.add_uint32("qwen3vl.n_deepstack_layers", 0)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([1] * len(tokens))
        w.add_token_merges(["Ġ Ġ"])
        w.add_eos_token_id(V - 1)
        w.add_bos_token_id(V - 2)
        w.add_add_bos_token(False)

    def add(name, *shape):
        if len(shape) == 1:
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32))
            return
        data = scale * rng.standard_normal(shape, dtype=np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", V, h)
    add("output_norm.weight", h)
    if not tied:
        add("output.weight", V, h)
    for i in range(n_layer):
        for name, shape in [
            ("attn_norm", (h,)),
            ("attn_q", (q, h)),
            ("attn_k", (kv, h)),
            ("attn_v", (kv, h)),
            ("attn_output", (h, q)),
            ("attn_q_norm", (s["head_dim"],)),
            ("attn_k_norm", (s["head_dim"],)),
            ("ffn_norm", (h,)),
            ("ffn_gate", (ff, h)),
            ("ffn_up", (ff, h)),
            ("ffn_down", (h, ff)),
        ]:
            add(f"blk.{i}.{name}.weight", *shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def byte_level_tokens(n: int) -> list[str]:
    """GPT-2's 256 byte tokens, one merge's result, fillers: a vocabulary llama.cpp's BPE loader accepts."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)] + ["ĠĠ"] + [f"<t{i}>" for i in range(n - 257)]
