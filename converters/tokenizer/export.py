"""Export the tokenizer for the board: tokenizer.json, tokenizer_config.json and chat_template.jinja.

The board runtime loads tokenizer.json with the `tokenizers` library only, so every layout is turned into
one: a byte-level tokenizer.json is copied, Qwen2's vocab.json + merges.txt is rebuilt without
transformers, SentencePiece goes through transformers' fast conversion (checked against the HF tokenizer
on a few probes), anything else through transformers' own fast backend.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from smt_convert.runtime.errors import SmtError

from .bpe import BpeParts, parts_from_vocab_merges
from .files import AUTO_KIND, CONFIG_FILE, SPM_KIND, TokenizerSource, loaded_auto_tokenizer
from .spm import is_sentencepiece

# The tokenizer.json `pre_tokenizer` / tokenizer_config `tokenizer_class` values we can rebuild
# from vocab.json+merges.txt without transformers (Qwen2's regex is the one every Qwen uses).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_CLASSES = {"Qwen2Tokenizer", "Qwen2TokenizerFast"}

# Texts the exported SentencePiece tokenizer.json must encode exactly like the HF tokenizer.
SPM_PROBES = [
    "Hello world",
    "  two  spaces,   three   and trailing  ",
    "line\n\nblank\n\n\n\nmany\r\nwindows\n\t tab",
    "digits 1234567890 3.14",
    "我想在苹果工作。今天天气很好！",
    "emoji 🚀🦙 👍🏽 café",
]


def qwen2_tokenizer_json(parts: BpeParts, config: dict) -> str:
    """Rebuild Qwen2Tokenizer's fast tokenizer from vocab.json + merges.txt with the tokenizers library."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    merges = [tuple(m.split(" ")) for m in parts.merges]
    tok = Tokenizer(models.BPE(vocab=parts.vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))  # type: ignore[arg-type]  # each merge is two tokens
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)), use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for i in sorted(parts.added):
        a = parts.added[i]
        token = AddedToken(
            a.content,
            single_word=a.single_word,
            lstrip=a.lstrip,
            rstrip=a.rstrip,
            normalized=a.normalized,
            special=a.special,
        )
        (tok.add_special_tokens if a.special else tok.add_tokens)([token])
        if tok.token_to_id(a.content) != i:
            raise SmtError(
                f"{parts.origin}: added_tokens_decoder: {a.content!r} has id {i} but the rebuilt tokenizer gives it "
                f"{tok.token_to_id(a.content)} (added token ids must follow the vocab without gaps)"
            )
    return tok.to_str(pretty=True)


def auto_tokenizer_json(source: TokenizerSource) -> str:
    """Fallback: transformers' own conversion (SentencePiece, non-Qwen slow tokenizers)."""
    hf = loaded_auto_tokenizer(source, f"converting {source.kind} to tokenizer.json")
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise SmtError(f"{source.directory}: tokenizer: {type(hf).__name__} has no fast (tokenizers) backend")
    return backend.to_str(pretty=True)


def check_same_encoding(text: str, hf: Any, directory: Path) -> None:
    """The exported tokenizer.json must encode a few probes exactly like the HF tokenizer (specials included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    specials = [t for t in (getattr(hf, "all_special_tokens", None) or []) if isinstance(t, str)]
    for probe in [*SPM_PROBES, "a " + " x ".join(specials[:8]) + "\ny"]:
        got, want = tok.encode(probe).ids, list(hf.encode(probe))
        if got != want:
            raise SmtError(
                f"{directory}: tokenizer: exported tokenizer.json encodes {probe!r} as {got[:12]}... "
                f"but {type(hf).__name__} gives {want[:12]}..."
            )


def spm_runtime_tokenizer_json(source: TokenizerSource) -> str:
    """SentencePiece: the HF tokenizer's own fast backend (transformers converts tokenizer.model, and applies
    tokenizer_config's add_bos_token / add_prefix_space to a checkpoint tokenizer.json); without
    transformers, the checkpoint's tokenizer.json as is."""
    as_json = source.directory / "tokenizer.json"
    try:
        import transformers  # noqa: F401
    except ImportError:
        if source.kind in (SPM_KIND, "tokenizer.json") and as_json.is_file():
            return as_json.read_text(encoding="utf-8")
        raise SmtError(
            f"{source.directory / 'tokenizer.model'}: tokenizer: converting a SentencePiece model to "
            "tokenizer.json needs transformers (or ship the checkpoint's tokenizer.json)"
        ) from None
    text = auto_tokenizer_json(source)
    check_same_encoding(text, source.hf_tokenizer, source.directory)  # hf_tokenizer: loaded by auto_tokenizer_json
    return text


def runtime_tokenizer_json(source: TokenizerSource) -> str:
    """The tokenizer.json text the board loads with `tokenizers`, for any source but a byte-level
    tokenizer.json (export_runtime_tokenizer copies that one as is)."""
    if source.kind == SPM_KIND or (source.kind in ("tokenizer.json", AUTO_KIND) and is_sentencepiece(source)):
        return spm_runtime_tokenizer_json(source)
    qwen2 = source.config.get("tokenizer_class", "Qwen2Tokenizer") in QWEN2_CLASSES
    if source.kind == "vocab.json+merges.txt" and qwen2:
        return qwen2_tokenizer_json(parts_from_vocab_merges(source.directory, source.config), source.config)
    return auto_tokenizer_json(source)


def check_loads(path: Path) -> None:
    """Fail at conversion, not on the board, if `tokenizers` cannot read what we wrote."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:
        raise SmtError(f"{path}: (whole file): the tokenizers library cannot load it ({e})") from None


def export_runtime_tokenizer(source: TokenizerSource, out_dir: Path) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja for the board runtime."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tok_path = out_dir / "tokenizer.json"
    if source.kind == "tokenizer.json" and not is_sentencepiece(source):
        shutil.copyfile(source.directory / "tokenizer.json", tok_path)
    else:
        tok_path.write_text(runtime_tokenizer_json(source), encoding="utf-8")
    check_loads(tok_path)
    written.append(tok_path)
    config = {k: v for k, v in source.config.items() if k not in ("chat_template", "auto_map")}
    config_path = out_dir / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    written.append(config_path)
    if source.chat_template is not None:
        template_path = out_dir / "chat_template.jinja"
        template_path.write_text(source.chat_template, encoding="utf-8")
        written.append(template_path)
    return written
