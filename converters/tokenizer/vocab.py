"""The GGUF vocabulary: what llama.cpp reads from tokenizer.ggml.*, and what BPE and SentencePiece share.

bpe.py and spm.py each turn a tokenizer into a GgufVocab; the token types, added-token records and
special-id lookup they both need live here. build_vocab picks one of the two for a source, and
write_vocab puts the result into a GGUF file, following what upstream llama.cpp's converter writes so
llama.cpp tokenizes exactly like the HF tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smt_convert.runtime.errors import SmtError

from .files import TokenizerSource

if TYPE_CHECKING:
    import gguf

# gguf.TokenType values (= SentencePiece's ModelProto.SentencePiece.Type numbers), duplicated so this
# package imports without gguf when only discovering.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GgufVocab:
    """Everything write_vocab puts into the GGUF's tokenizer.ggml.* keys."""

    model: str  # "gpt2" (BPE) or "llama" (SentencePiece)
    pre: str  # BPE: chosen by the arch plugin, e.g. "qwen2" or "qwen35"; SentencePiece: "default"
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    special_ids: dict[str, int]  # "bos","eos","eot","unk","sep","pad","mask" as available
    add_bos: bool | None
    chat_template: str | None
    add_space_prefix: bool | None = None  # SentencePiece only; None leaves llama.cpp's default (true)
    add_eos: bool | None = None


@dataclass
class AddedInfo:
    """An added token as tokenizer.json / tokenizer_config.json describe it."""

    content: str
    special: bool
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def added_info(entry: dict) -> AddedInfo:
    """One added-token record from either JSON file."""
    return AddedInfo(
        content=entry["content"],
        special=bool(entry.get("special", False)),
        normalized=bool(entry.get("normalized", False)),
        lstrip=bool(entry.get("lstrip", False)),
        rstrip=bool(entry.get("rstrip", False)),
        single_word=bool(entry.get("single_word", False)),
    )


def added_from_config(config: dict) -> dict[int, AddedInfo]:
    """tokenizer_config.json's added_tokens_decoder {id: {content, special, ...}}."""
    added = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added[int(key)] = added_info(entry)
    return added


def looks_special(text: str) -> bool:
    """Upstream marks added tokens that look like control tokens CONTROL even if not flagged special."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def token_content(value: Any) -> str | None:
    """A tokenizer_config special-token entry is a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def resolve_special_ids(
    lookup: dict[str, int], origin: Path, config: dict, eot_token: str | None, eos_token: str | None
) -> dict[str, int]:
    """Map bos/eos/eot/unk/sep/pad/mask to ids by their strings in `lookup` (token text -> id); `origin` names
    errors. The tokenizer_config keys are those llama.cpp's SpecialVocab reads and can write (not cls: gguf has no
    key for it)."""
    ids: dict[str, int] = {}
    for key in ("bos", "eos", "unk", "sep", "pad", "mask"):
        text = token_content(config.get(f"{key}_token"))
        if text is not None and text in lookup:
            ids[key] = lookup[text]
    if eos_token is not None:
        if eos_token not in lookup:
            raise SmtError(f"{origin}: eos_token: {eos_token!r} is not a token of this tokenizer")
        ids["eos"] = lookup[eos_token]
    if eot_token is not None and eot_token in lookup:
        ids["eot"] = lookup[eot_token]
    return ids


def resolve_add_eos(config: dict, post_processor: dict | None) -> bool | None:
    """Whether the tokenizer appends eos (tokenizer.ggml.add_eos_token). tokenizer_config's add_eos_token, which
    transformers follows too; else the tokenizer.json post-processor as llama.cpp's SpecialVocab reads it:
    ByteLevel appends nothing, RobertaProcessing appends </s>, a TemplateProcessing whose single-sequence template
    ends in a special token appends it. None (key not written) when neither says."""
    value = config.get("add_eos_token")
    if isinstance(value, bool):
        return value
    if not isinstance(post_processor, dict):
        return None
    found = None
    for proc in post_processor.get("processors") or [post_processor]:
        kind = proc.get("type")
        single = proc.get("single") or []
        if kind == "ByteLevel" and found is None:
            found = False
        elif kind == "RobertaProcessing" or (
            kind == "TemplateProcessing" and len(single) > 1 and "SpecialToken" in single[-1]
        ):
            found = True
    return found


def build_vocab(
    source: TokenizerSource,
    vocab_size: int,
    pre: str | None = None,
    eot_token: str | None = None,
    eos_token: str | None = None,
) -> GgufVocab:
    """BPE or SentencePiece, whichever the source is; BPE needs the plugin's `pre` (SentencePiece ignores it)."""
    # bpe and spm import this module for GgufVocab and the shared helpers, so they are imported here.
    from .bpe import build_bpe_vocab
    from .spm import build_spm_vocab, is_sentencepiece

    if is_sentencepiece(source):
        return build_spm_vocab(source, vocab_size, eos_token=eos_token, eot_token=eot_token)
    if pre is None:
        raise SmtError(
            f"{source.directory}: tokenizer: byte-level BPE ({source.kind}) needs a pre-tokenizer name "
            "from the arch plugin (vocab_pre)"
        )
    return build_bpe_vocab(source, vocab_size, pre, eot_token=eot_token, eos_token=eos_token)


def write_vocab(writer: "gguf.GGUFWriter", vocab: GgufVocab) -> None:
    """Write tokenizer.ggml.* keys (model, pre, tokens, types, scores, merges, special ids, add_bos, add_eos,
    add_space_prefix, template)."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for key, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{key}_token_id")(token_id)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
