"""Byte-level BPE (Qwen and other GPT-2-style tokenizers) -> GGUF vocabulary with tokenizer model "gpt2".

Whatever the layout (tokenizer.json, vocab.json + merges.txt, or a transformers tokenizer, fast or
slow), it is first reduced to BpeParts, then to a token table by id, as upstream llama.cpp's converter
writes it. The pre-tokenizer name is chosen by the arch plugin, never guessed by hashing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smt_convert.runtime.errors import SmtError

from .files import AUTO_KIND, TokenizerSource, loaded_auto_tokenizer, read_json
from .vocab import (
    CONTROL,
    NORMAL,
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


@dataclass
class BpeParts:
    """A byte-level BPE reduced to plain data, whatever file layout it came from."""

    vocab: dict[str, int]
    merges: list[str]
    added: dict[int, AddedInfo]
    origin: Path  # file named in errors
    post_processor: dict | None = None


# ---------------------------------------------------------------- reading BPE parts


def merge_to_string(merge: Any, origin: Path) -> str:
    """A merge as llama.cpp stores it: "a b"; spaces inside a pair part become U+0120 like upstream."""
    if isinstance(merge, str):
        return merge
    if isinstance(merge, (list, tuple)) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
        return " ".join(p.replace(" ", chr(ord(" ") + 256)) for p in merge)
    raise SmtError(f"{origin}: model.merges: entry {merge!r} is neither 'a b' nor [a, b]")


def read_merges_txt(path: Path) -> list[str]:
    """merges.txt lines, without the '#version' header and blank lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=1):
        parts = line.strip().split(" ")
        if line.strip() == "":
            continue
        if len(parts) != 2:
            raise SmtError(f"{path}: line {number}: expected two space-separated parts, got {line!r}")
        merges.append(" ".join(parts))
    return merges


def parts_from_tokenizer_json(data: dict, origin: Path, config: dict) -> BpeParts:
    """tokenizer.json (or a fast tokenizer's backend) → BpeParts; its added_tokens win over the config."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise SmtError(f"{origin}: model.type: {model.get('type')!r} is not BPE; byte-level BPE vocab expected")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise SmtError(f"{origin}: model.vocab: missing or not an object")
    merges = [merge_to_string(m, origin) for m in model.get("merges") or []]
    added = added_from_config(config)
    for entry in data.get("added_tokens") or []:
        added[int(entry["id"])] = added_info(entry)
    return BpeParts(dict(vocab), merges, added, origin, data.get("post_processor"))


def parts_from_vocab_merges(directory: Path, config: dict) -> BpeParts:
    """vocab.json + merges.txt (+ legacy added_tokens.json) + tokenizer_config's added tokens."""
    vocab_path = directory / "vocab.json"
    vocab = read_json(vocab_path)
    if not isinstance(vocab, dict):
        raise SmtError(f"{vocab_path}: (whole file): expected an object {{token: id}}")
    added = {}
    legacy = directory / "added_tokens.json"
    if legacy.is_file():
        for content, i in read_json(legacy).items():
            added[int(i)] = AddedInfo(content, special=looks_special(content))
    added.update(added_from_config(config))
    # The post-processor transformers gives this layout's fast tokenizer (and export.py the runtime copy): it adds
    # no bos/eos, so add_bos/add_eos come out as from the same tokenizer's tokenizer.json.
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return BpeParts(vocab, read_merges_txt(directory / "merges.txt"), added, vocab_path, byte_level)


def parts_from_auto(source: TokenizerSource) -> BpeParts:
    """A transformers tokenizer: use the fast backend's JSON; slow BPE tokenizers lack usable merges."""
    hf = loaded_auto_tokenizer(source, "AutoTokenizer")
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return parts_from_slow(hf, source.directory)
    data = json.loads(backend.to_str())
    parts = parts_from_tokenizer_json(data, source.directory / "(AutoTokenizer)", source.config)
    for i, tok in (getattr(hf, "added_tokens_decoder", None) or {}).items():
        parts.added.setdefault(int(i), AddedInfo(str(tok), special=bool(getattr(tok, "special", False))))
    return parts


def parts_from_slow(hf: Any, directory: Path) -> BpeParts:
    """A slow (pure Python) BPE tokenizer: get_vocab() plus its bpe_ranks, when it has them."""
    ranks = getattr(hf, "bpe_ranks", None)
    if not isinstance(ranks, dict):
        raise SmtError(f"{directory}: tokenizer: {type(hf).__name__} is neither fast nor a BPE with bpe_ranks")
    added = {
        int(i): AddedInfo(str(t), special=bool(getattr(t, "special", False)))
        for i, t in (getattr(hf, "added_tokens_decoder", None) or {}).items()
    }
    added_text = {a.content for a in added.values()}
    vocab = {t: i for t, i in hf.get_vocab().items() if t not in added_text}
    merges = [" ".join(pair) for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return BpeParts(vocab, merges, added, directory / "(AutoTokenizer)")


def read_bpe_parts(source: TokenizerSource) -> BpeParts:
    """Dispatch on the discovery kind."""
    if source.kind == "tokenizer.json":
        path = source.directory / "tokenizer.json"
        return parts_from_tokenizer_json(read_json(path), path, source.config)
    if source.kind == "vocab.json+merges.txt":
        return parts_from_vocab_merges(source.directory, source.config)
    if source.kind == AUTO_KIND:
        return parts_from_auto(source)
    raise SmtError(
        f"{source.directory / 'tokenizer.model'}: tokenizer: SentencePiece model, but this arch needs a byte-level "
        "BPE vocabulary (tokenizer.json or vocab.json + merges.txt)"
    )


# ---------------------------------------------------------------- GGUF vocabulary


def token_table(parts: BpeParts, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and types by id, padded with [PAD{i}] (UNUSED) up to the embedding row count."""
    by_id: dict[int, str] = {i: t for t, i in parts.vocab.items()}
    by_id.update({i: a.content for i, a in parts.added.items()})
    top = max(by_id) if by_id else -1
    if top >= vocab_size:
        raise SmtError(
            f"{parts.origin}: vocab: tokenizer has ids up to {top} ({len(by_id)} tokens) but the model's "
            f"embedding has only vocab_size={vocab_size} rows"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in parts.added:
            info = parts.added[i]
            if info.special or looks_special(info.content):
                tokens.append(info.content)
                types.append(CONTROL)
            else:
                tokens.append(info.content.replace("\u2581", " "))  # upstream pre-normalizes user-defined spaces
                types.append(USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def resolve_add_bos(config: dict, post_processor: dict | None) -> bool | None:
    """tokenizer_config's add_bos_token, else False for a ByteLevel post-processor (adds nothing)."""
    value = config.get("add_bos_token")
    if isinstance(value, bool):
        return value
    if isinstance(post_processor, dict) and post_processor.get("type") == "ByteLevel":
        return False
    return None


def build_bpe_vocab(
    source: TokenizerSource,
    vocab_size: int,
    pre: str,
    eot_token: str | None = None,
    eos_token: str | None = None,
) -> GgufVocab:
    """Byte-level BPE → GGUF vocab as llama.cpp's converter writes it (model "gpt2")."""
    parts = read_bpe_parts(source)
    tokens, types = token_table(parts, vocab_size)
    if not parts.merges:
        raise SmtError(f"{parts.origin}: merges: none found; llama.cpp cannot load a BPE vocab without merges")
    lookup = dict(parts.vocab)
    lookup.update({a.content: i for i, a in parts.added.items()})  # added tokens take priority over the base vocab
    return GgufVocab(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        types=types,
        merges=parts.merges,
        scores=None,
        special_ids=resolve_special_ids(lookup, parts.origin, source.config, eot_token, eos_token),
        add_bos=resolve_add_bos(source.config, parts.post_processor),
        add_eos=resolve_add_eos(source.config, parts.post_processor),
        chat_template=source.chat_template,
    )
