"""Streaming text-GGUF writing with gguf-py: header first, then one tensor at a time.

The header needs every tensor's name, shape and type before any data, so the plan (from `Plan`) is
written first; then each tensor is loaded, transformed, converted and written, and dropped. Peak memory
is about one source tensor in float32 plus its converted copy, whatever the model size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gguf
import numpy as np
from gguf.quants import quant_shape_to_byte_shape, quantize

from smt_convert.runtime.errors import SmtError

Q = gguf.GGMLQuantizationType

# --outtype -> (ggml type for weight matrices, GGUF general.file_type). Every type gguf-py can quantise to;
# the K-quants it can only read, not write.
OUTTYPES: dict[str, tuple[Q, int]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}
LOW_BIT = {"q5_1", "q5_0", "q4_1", "q4_0"}
# K-quant presets are made by llama.cpp's quantiser from a float GGUF (converters/kquant.py); with these, every
# --outtype llama.cpp users know: ALL_OUTTYPES.
from smt_convert.converters.kquant import KQUANT_PRESETS  # noqa: E402 - after the table it extends

ALL_OUTTYPES = (*OUTTYPES, *KQUANT_PRESETS)
OUTPUT_NAMES = {"output.weight"}


def choose_type(name: str, shape: tuple[int, ...], outtype: str, tied_output: bool = False) -> Q:
    """Per-tensor type, following llama.cpp:
    - 1-D tensors (norms, biases, gates' vectors) stay F32;
    - with a 4/5-bit type, the output projection (or the token embedding when it doubles as the output)
      gets more bits: llama-quantize uses Q6_K there, which gguf-py cannot write, so Q8_0;
    - a block type needs rows divisible by its block size, else the tensor falls back to F16."""
    target = OUTTYPES[outtype][0]
    if len(shape) <= 1:
        return Q.F32
    if outtype in LOW_BIT and (name in OUTPUT_NAMES or (tied_output and name == "token_embd.weight")):
        target = Q.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[target]
    if shape[-1] % block != 0:
        return Q.F16
    return target


def choose_types(tensors: list, outtype: str) -> dict[str, Q]:
    """Types for every tensor of a text GGUF (tied output detected from the tensor list)."""
    tied = not any(t.name in OUTPUT_NAMES for t in tensors)
    return {t.name: choose_type(t.name, t.shape, outtype, tied) for t in tensors}


def estimated_kquant_types(tensors: list, preset: str) -> dict[str, Q]:
    """What llama.cpp's quantiser will choose, near enough for a size estimate (`inspect`, the plan): the preset's
    base type for matrices whose rows fill its 256-wide blocks, Q6_K for the output projection, the fallback
    (Q8_0) for rows that do not fill a block, F32 for 1-D. The file's real types are read back after writing."""
    base = KQUANT_PRESETS[preset].base_type
    tied = not any(t.name in OUTPUT_NAMES for t in tensors)
    types = {}
    for t in tensors:
        if len(t.shape) <= 1:
            types[t.name] = Q.F32
            continue
        target = Q.Q6_K if t.name in OUTPUT_NAMES or (tied and t.name == "token_embd.weight") else base
        block = gguf.GGML_QUANT_SIZES[target][0]
        types[t.name] = target if t.shape[-1] % block == 0 else (Q.Q8_0 if t.shape[-1] % 32 == 0 else Q.F16)
    return types


def tensor_nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    byte_shape = quant_shape_to_byte_shape(shape, qtype) if qtype not in (Q.F32, Q.F16) else shape
    itemsize = {Q.F32: 4, Q.F16: 2}.get(qtype, 1)
    return int(np.prod(byte_shape, dtype=np.int64)) * itemsize


def convert_array(data: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 array -> the bytes layout gguf-py writes for that type."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F32:
        return data
    if qtype == Q.F16:
        return data.astype(np.float16)
    return quantize(data, qtype)


BLOCK_ELEMS = 1 << 23  # float32 elements converted at a time for a plain tensor (32 MiB)


def convert_in_blocks(shape: tuple[int, ...], qtype: Q, blocks) -> np.ndarray:
    """The converted tensor built from float32 row blocks (`blocks`: iterable of arrays [rows, ...] in order),
    so the peak is the output plus one block, not the whole tensor in float32 as well. Every type converts row
    by row (quantisation blocks run along the last axis), so the bytes equal `convert_array` of the whole."""
    rows = shape[0]
    out_shape = shape if qtype in (Q.F32, Q.F16) else quant_shape_to_byte_shape(shape, qtype)
    out = np.empty(out_shape, dtype={Q.F32: np.float32, Q.F16: np.float16}.get(qtype, np.uint8))
    start = 0
    for block in blocks:
        out[start : start + block.shape[0]] = convert_array(block, qtype)
        start += block.shape[0]
    if start != rows:
        raise SmtError(f"tensor: {start} rows read, {rows} expected")
    return out


def write_text_gguf(
    path: Path,
    arch: str,
    tensors: list,  # list[plugin.TextTensor]
    types: dict[str, Q],
    load: Callable[[str], np.ndarray],  # checkpoint name -> float32 array
    add_metadata: Callable[[gguf.GGUFWriter], None],
    on_tensor: Callable[[int, int, str], None] | None = None,
    load_blocks: Callable[[str, int], object] | None = None,  # (name, rows per block) -> float32 row blocks
) -> list[dict]:
    """Write the GGUF at `path`; returns one record per tensor (name, type, shape, bytes) for the manifest.
    `add_metadata` runs after the tensor infos are added, so it can count parameters as llama.cpp does.
    A large tensor taken as it is from one checkpoint tensor is converted a block of rows at a time when
    `load_blocks` is given (the embedding table is the largest tensor of these models)."""
    writer = gguf.GGUFWriter(str(path), arch)
    records = []
    for t in tensors:
        qtype = types[t.name]
        nbytes = tensor_nbytes(t.shape, qtype)
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32 if qtype == Q.F32 else np.float16), nbytes)
        else:
            byte_shape = quant_shape_to_byte_shape(t.shape, qtype)
            writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        records.append({"name": t.name, "type": qtype.name, "shape": list(t.shape), "bytes": nbytes})
    add_metadata(writer)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(tensors):
            if on_tensor:
                on_tensor(i, len(tensors), t.name)
            plain = t.transform is None and len(t.sources) == 1 and len(t.shape) == 2
            if load_blocks is not None and plain and np.prod(t.shape) > BLOCK_ELEMS:
                data = convert_in_blocks(
                    t.shape, types[t.name], load_blocks(t.sources[0], max(1, BLOCK_ELEMS // t.shape[1]))
                )
            else:
                data = convert_array(t.build(load), types[t.name])
            writer.write_tensor_data(data)
            del data
    except OSError as exc:
        raise SmtError(f"{path}: cannot write GGUF ({exc.strerror or exc})") from None
    finally:
        writer.close()
    return records


NAME_HEURISTIC_FIELDS = ("organization", "basename", "finetune", "version", "size_label")


def write_general_metadata(writer: gguf.GGUFWriter, model_dir: Path, name: str, repo_id: str | None = None) -> None:
    """general.* as llama.cpp's converter writes them, derived by gguf-py's own `Metadata` (model card front
    matter in README.md, config.json's _name_or_path, the directory name, generation_config.json's sampling
    settings; else a size label from the parameter count of the tensors already added), except general.name:
    ours is the bundle stem (llama.cpp titles the directory name). For a Hub snapshot, whose directory is named
    by its commit, the name heuristics read the repo id instead (`repo_id`)."""
    import yaml  # gguf-py's Metadata reads the model card's front matter with it

    total, shared, expert, experts = writer.get_total_parameter_count()
    card = model_dir / "README.md"
    check_model_card(model_dir)
    try:
        meta = gguf.Metadata.load(None, model_dir, name, total)
    except yaml.YAMLError as exc:
        raise SmtError(f"{card}: front matter: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise SmtError(f"{card}: cannot be read as UTF-8 text ({exc})") from None
    if repo_id is not None:
        from_dir = gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), None, {}, model_dir, total)
        from_repo = gguf.Metadata.apply_metadata_heuristic(
            gguf.Metadata(), None, {"_name_or_path": repo_id}, Path(repo_id.split("/")[-1]), total
        )
        for field in NAME_HEURISTIC_FIELDS:  # what the card and config left to the (commit-named) directory
            if getattr(meta, field) == getattr(from_dir, field):
                setattr(meta, field, getattr(from_repo, field))
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, experts)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)


MAX_CARD_BYTES = 4 << 20  # released model cards are < 100 KB
MAX_CARD_ALIASES = 16  # real front matter has none; "billion laughs" needs a few dozen


def check_model_card(model_dir: Path) -> None:
    """The checkpoint's README.md front matter is read by gguf-py with PyYAML, which expands aliases: a few
    dozen nested ones ("billion laughs") make gigabytes from a kilobyte. Counted here without expanding
    anything (the scanner only tokenises), and refused in one line before gguf-py parses it."""
    import yaml

    card = model_dir / "README.md"
    if not card.is_file():
        return
    if card.stat().st_size > MAX_CARD_BYTES:
        raise SmtError(
            f"{card}: {card.stat().st_size} bytes, more than the {MAX_CARD_BYTES >> 20} MiB a model card may have here"
        )
    try:
        lines = card.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise SmtError(f"{card}: cannot be read as UTF-8 text ({exc})") from None
    if not lines or lines[0] != "---":
        return
    front = "\n".join(lines[1 : lines.index("---", 1)] if "---" in lines[1:] else lines[1:])
    try:
        aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(front, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise SmtError(f"{card}: front matter: not valid YAML ({str(exc).splitlines()[0]})") from None
    if aliases > MAX_CARD_ALIASES:
        raise SmtError(
            f"{card}: front matter: {aliases} YAML aliases (at most {MAX_CARD_ALIASES}; alias expansion "
            "can make gigabytes from a few lines)"
        )


def write_decoder_metadata(writer: gguf.GGUFWriter, hp, feed_forward: bool = True) -> None:
    """The keys every llama.cpp decoder here reads (TextModel.set_gguf_parameters upstream), from a plugin's
    text hparams (attributes: max_position_embeddings, hidden_size, num_layers, intermediate_size, num_heads,
    num_kv_heads, head_dim, rope_theta, rope_sections, rms_norm_eps). key/value_length are always written:
    these models' head_dim is not hidden/heads. general.* (name included) is write_general_metadata's."""
    writer.add_context_length(hp.max_position_embeddings)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_block_count(hp.num_layers)
    if feed_forward:
        writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.num_heads)
    writer.add_head_count_kv(hp.num_kv_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_sections(hp.rope_sections)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
