"""SentencePiece (ERNIE-4.5 / PaddleOCR-VL) -> GGUF vocabulary with tokenizer model "llama", pre "default".

Pieces, scores and token types are the ones upstream llama.cpp's `_create_vocab_sentencepiece` assigns,
read from tokenizer.model (sentencepiece's protobuf) and/or an SPM-style tokenizer.json (Unigram, or BPE
with byte_fallback); when both are present they must agree. Added tokens are then applied in upstream's
order and the table is padded to the model's embedding rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smt_convert.runtime.errors import SmtError

from .files import AUTO_KIND, CONFIG_FILE, SPM_KIND, TokenizerSource, is_spm_json, loaded_auto_tokenizer, read_json
from .vocab import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    AddedInfo,
    GgufVocab,
    added_from_config,
    added_info,
    looks_special,
    resolve_add_eos,
    resolve_special_ids,
)

# Scores upstream gives SentencePiece added tokens and [PAD{i}] filler rows.
ADDED_SCORE, PAD_SCORE = -1000.0, -10000.0
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class SpmParts:
    """A SentencePiece vocabulary reduced to plain data (base pieces only; added tokens come later)."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_dummy_prefix: bool | None  # the model's own normalizer setting, when the file says
    origin: Path
    json_added: dict[int, AddedInfo] = field(default_factory=dict)  # tokenizer.json added_tokens (all ids)
    post_processor: dict | None = None


# ---------------------------------------------------------------- tokenizer.model


def spm_model_proto(path: Path):
    """Parse tokenizer.model with sentencepiece's own protobuf schema (needs sentencepiece + protobuf)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise SmtError(
            f"{path}: tokenizer: reading a SentencePiece model needs sentencepiece and protobuf ({e})"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module: no class declarations for mypy
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError, or silently yields an empty model
        raise SmtError(f"{path}: (whole file): not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise SmtError(f"{path}: (whole file): not a SentencePiece model (no pieces)")
    return proto


def spm_parts_from_model(path: Path) -> SpmParts:
    """tokenizer.model → pieces, scores, types. The proto's piece types are gguf's TokenType numbers.

    Upstream (`_create_vocab_sentencepiece`) asks SentencePieceProcessor IsUnknown/IsControl/IsUnused/IsByte
    and types everything else NORMAL; we also keep USER_DEFINED for the model's user-defined symbols, which
    SentencePiece always emits whole (as NORMAL, llama.cpp would try to reach them by merging).
    """
    proto = spm_model_proto(path)
    if proto.trainer_spec.model_type not in (0, 1, 2):  # UNIGRAM (default), BPE
        raise SmtError(
            f"{path}: trainer_spec.model_type: {proto.trainer_spec.model_type} is neither "
            "UNIGRAM nor BPE; llama.cpp's SentencePiece tokenizer cannot reproduce it"
        )
    types = [
        p.type if p.type in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL for p in proto.pieces
    ]
    return SpmParts(
        tokens=[p.piece for p in proto.pieces],
        scores=[float(p.score) for p in proto.pieces],
        types=types,
        add_dummy_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        origin=path,
    )


# ---------------------------------------------------------------- SPM-style tokenizer.json


def walk_components(node: Any, key: str):
    """Yield a normalizer/pre_tokenizer dict and, for a Sequence, its members."""
    if isinstance(node, dict):
        yield node
        for member in node.get(key) or []:
            yield from walk_components(member, key)


def json_prepends_space(data: dict) -> bool | None:
    """Whether an SPM-style tokenizer.json adds the "▁" dummy prefix (Prepend normalizer or Metaspace)."""
    for node in walk_components(data.get("normalizer"), "normalizers"):
        if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
            return True
    for node in walk_components(data.get("pre_tokenizer"), "pretokenizers"):
        if node.get("type") == "Metaspace":
            scheme = node.get("prepend_scheme")
            if scheme is None:  # tokenizers < 0.14 wrote add_prefix_space
                return bool(node.get("add_prefix_space", True))
            return scheme != "never"
    if data.get("normalizer") is not None or data.get("pre_tokenizer") is not None:
        return False
    return None


def spm_parts_from_json(data: dict, origin: Path) -> SpmParts:
    """An SPM-style tokenizer.json → pieces, scores, types, classified the way SentencePiece does.

    Unigram vocabularies carry their scores. A BPE-with-byte-fallback json (what transformers makes from a
    SentencePiece BPE model) has none: SentencePiece scores BPE pieces by rank, -0, -1, -2, ... over the
    normal pieces in id order, and llama.cpp merges by score, so that is what we rebuild.
    """
    model = data.get("model") or {}
    if not is_spm_json(data):
        raise SmtError(
            f"{origin}: model.type: {model.get('type')!r} is neither Unigram nor BPE with byte_fallback; "
            "not a SentencePiece-style tokenizer"
        )
    if model["type"] == "Unigram":
        vocab = model.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(v, list) and len(v) == 2 for v in vocab):
            raise SmtError(f"{origin}: model.vocab: expected a list of [piece, score] pairs")
        tokens = [str(v[0]) for v in vocab]
        scores: list[float] | None = [float(v[1]) for v in vocab]
        unk_id = model.get("unk_id")
        byte_fallback = bool(model.get("byte_fallback"))
    else:
        vocab = model.get("vocab")
        if not isinstance(vocab, dict):
            raise SmtError(f"{origin}: model.vocab: missing or not an object")
        by_id = {int(i): t for t, i in vocab.items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise SmtError(f"{origin}: model.vocab: ids are not 0..{len(by_id) - 1} without gaps")
        tokens = [by_id[i] for i in range(len(by_id))]
        scores = None
        unk_id = vocab.get(model.get("unk_token")) if model.get("unk_token") is not None else None
        byte_fallback = True
    json_added = {int(e["id"]): added_info(e) for e in data.get("added_tokens") or []}
    types = []
    for i, piece in enumerate(tokens):
        if i == unk_id:
            types.append(UNKNOWN)
        elif i in json_added:
            types.append(CONTROL if json_added[i].special else USER_DEFINED)
        elif byte_fallback and BYTE_PIECE.fullmatch(piece):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    if scores is None:
        rank = iter(range(len(tokens)))
        scores = [-float(next(rank)) if t == NORMAL else 0.0 for t in types]
    return SpmParts(tokens, scores, types, json_prepends_space(data), origin, json_added, data.get("post_processor"))


# ---------------------------------------------------------------- either file, or both


def check_spm_agree(from_model: SpmParts, from_json: SpmParts, renamed: set[int]) -> None:
    """tokenizer.model and tokenizer.json must describe the same base vocabulary (ids renamed by the config aside)."""
    where = f"{from_json.origin}: model.vocab"
    if len(from_json.tokens) != len(from_model.tokens):
        raise SmtError(
            f"{where}: {len(from_json.tokens)} pieces but {from_model.origin.name} has {len(from_model.tokens)}"
        )
    for i, (a, b) in enumerate(zip(from_model.tokens, from_json.tokens)):
        if i not in renamed and a != b:
            raise SmtError(f"{where}: id {i} is {b!r} but {from_model.origin.name} has {a!r}")


def read_spm_parts(source: TokenizerSource) -> SpmParts:
    """tokenizer.model preferred for pieces/scores/types; a tokenizer.json next to it must agree."""
    as_json = source.directory / "tokenizer.json"
    if source.kind == SPM_KIND:
        parts = spm_parts_from_model(source.directory / "tokenizer.model")
        if as_json in source.files:
            data = read_json(as_json)
            other = spm_parts_from_json(data, as_json)
            check_spm_agree(parts, other, set(added_from_config(source.config)))
            parts.json_added, parts.post_processor = other.json_added, other.post_processor
            json_prefix = other.add_dummy_prefix
            parts.add_dummy_prefix = json_prefix if json_prefix is not None else parts.add_dummy_prefix
        return parts
    if source.kind == "tokenizer.json":
        return spm_parts_from_json(read_json(as_json), as_json)
    if source.kind == AUTO_KIND:
        hf = loaded_auto_tokenizer(source, "AutoTokenizer")
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise SmtError(f"{source.directory}: tokenizer: {type(hf).__name__} has no fast (tokenizers) backend")
        return spm_parts_from_json(json.loads(backend.to_str()), source.directory / "(AutoTokenizer)")
    raise SmtError(f"{source.directory}: tokenizer: {source.kind} is a byte-level BPE layout, not SentencePiece")


def is_sentencepiece(source: TokenizerSource) -> bool:
    """Whether the source is a SentencePiece vocabulary (tokenizer.model, or an SPM-style tokenizer.json)."""
    if source.kind == SPM_KIND:
        return True
    if source.kind == "tokenizer.json":
        return is_spm_json(read_json(source.directory / "tokenizer.json"))
    if source.kind == AUTO_KIND:
        backend = getattr(loaded_auto_tokenizer(source, "AutoTokenizer"), "backend_tokenizer", None)
        return backend is not None and is_spm_json(json.loads(backend.to_str()))
    return False


# ---------------------------------------------------------------- GGUF vocabulary


def spm_token_table(
    parts: SpmParts, source: TokenizerSource, vocab_size: int
) -> tuple[list[str], list[float], list[int]]:
    """Base pieces, then added tokens as upstream applies them, padded with [PAD{i}] to vocab_size rows.

    Order (later wins): tokenizer.json added tokens beyond the base pieces, added_tokens.json (USER_DEFINED),
    tokenizer_config.json added_tokens_decoder (CONTROL if special or looks special, else USER_DEFINED with
    "▁" turned back into spaces). Every added token scores -1000; filler rows -10000 and UNUSED.
    """
    base = len(parts.tokens)
    if base > vocab_size:
        raise SmtError(
            f"{parts.origin}: vocab: {base} pieces but the model's embedding has only vocab_size={vocab_size} rows"
        )
    tokens = [*parts.tokens, *(f"[PAD{i}]" for i in range(base, vocab_size))]
    scores = [*parts.scores, *([PAD_SCORE] * (vocab_size - base))]
    types = [*parts.types, *([UNUSED] * (vocab_size - base))]

    def place(i: int, text: str, toktype: int, origin: str) -> None:
        if i >= vocab_size:
            raise SmtError(
                f"{origin}: added token {text!r} has id {i} but the model's embedding has only "
                f"vocab_size={vocab_size} rows"
            )
        tokens[i], scores[i], types[i] = text, ADDED_SCORE, toktype

    for i, info in sorted(parts.json_added.items()):
        if i >= base:
            place(
                i,
                info.content,
                CONTROL if info.special or looks_special(info.content) else USER_DEFINED,
                str(source.directory / "tokenizer.json"),
            )
    legacy = source.directory / "added_tokens.json"
    if legacy.is_file() and source.kind != AUTO_KIND:
        for text, i in read_json(legacy).items():
            place(int(i), text, USER_DEFINED, str(legacy))
    for i, info in sorted(added_from_config(source.config).items()):
        if info.special or looks_special(info.content):
            place(i, info.content, CONTROL, str(source.directory / CONFIG_FILE))
        else:
            place(i, info.content.replace("\u2581", " "), USER_DEFINED, str(source.directory / CONFIG_FILE))
    return tokens, scores, types


def resolve_add_space_prefix(config: dict, parts: SpmParts) -> bool | None:
    """ERNIE's rule upstream: tokenizer_config's add_prefix_space; else the tokenizer.json / model's own setting."""
    value = config.get("add_prefix_space")
    if isinstance(value, bool):
        return value
    return parts.add_dummy_prefix


def resolve_spm_add_bos(config: dict, post_processor: dict | None) -> bool | None:
    """tokenizer_config's add_bos_token, else whether the tokenizer.json post-processor starts with a special token."""
    value = config.get("add_bos_token")
    if isinstance(value, bool):
        return value
    if isinstance(post_processor, dict):
        for proc in post_processor.get("processors") or [post_processor]:
            if proc.get("type") == "TemplateProcessing":
                single = proc.get("single") or []
                return bool(single) and "SpecialToken" in single[0]
        return False
    return None


def build_spm_vocab(
    source: TokenizerSource,
    vocab_size: int,
    eos_token: str | None = None,
    eot_token: str | None = None,
) -> GgufVocab:
    """SentencePiece → GGUF vocab as upstream's `_set_vocab_sentencepiece` writes it (model "llama", pre "default")."""
    parts = read_spm_parts(source)
    tokens, scores, types = spm_token_table(parts, source, vocab_size)
    lookup = {t: i for i, t in reversed(list(enumerate(tokens))) if types[i] != UNUSED}  # lowest id wins
    return GgufVocab(
        model="llama",
        pre="default",
        tokens=tokens,
        types=types,
        merges=[],
        scores=scores,
        special_ids=resolve_special_ids(lookup, parts.origin, source.config, eot_token, eos_token),
        add_bos=resolve_spm_add_bos(source.config, parts.post_processor),
        add_eos=resolve_add_eos(source.config, parts.post_processor),
        chat_template=source.chat_template,
        add_space_prefix=resolve_add_space_prefix(source.config, parts),
    )
