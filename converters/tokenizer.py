"""Find a checkpoint's tokenizer, turn it into llama.cpp GGUF vocabulary, and export it for the board.

The GGUF vocabulary follows what upstream llama.cpp's converter writes, so upstream llama.cpp tokenizes
exactly like the HF tokenizer:
- byte-level BPE (tokenizer model "gpt2"): the pre-tokenizer name is chosen by the arch plugin, never
  guessed by hashing;
- SentencePiece (tokenizer model "llama", pre "default"; ERNIE-4.5 / PaddleOCR-VL): pieces, scores and
  token types as `_create_vocab_sentencepiece` assigns them, from tokenizer.model and/or an SPM-style
  tokenizer.json (Unigram, or BPE with byte_fallback).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smt_convert.runtime.errors import SmtError

if TYPE_CHECKING:
    import gguf

# Discovery order within one directory. AutoTokenizer is tried after all of these.
FILE_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("tokenizer.json", ("tokenizer.json",)),
    ("vocab.json+merges.txt", ("vocab.json", "merges.txt")),
    ("tokenizer.model", ("tokenizer.model",)),
]
AUTO_KIND = "AutoTokenizer"
SPM_KIND = "tokenizer.model"  # SentencePiece; files: tokenizer.model (+ tokenizer.json when present)
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")

# gguf.TokenType values (= SentencePiece's ModelProto.SentencePiece.Type numbers), duplicated so this
# module imports without gguf when only discovering.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Scores upstream gives SentencePiece added tokens and [PAD{i}] filler rows.
ADDED_SCORE, PAD_SCORE = -1000.0, -10000.0
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# The tokenizer.json `pre_tokenizer` / tokenizer_config `tokenizer_class` values we can rebuild
# from vocab.json+merges.txt without transformers (Qwen2's regex is the one every Qwen uses).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_CLASSES = {"Qwen2Tokenizer", "Qwen2TokenizerFast"}


@dataclass
class TokenizerSource:
    """Where the tokenizer came from and what was used (recorded in the bundle manifest)."""

    directory: Path
    kind: str  # "tokenizer.json" | "vocab.json+merges.txt" | "tokenizer.model" (SentencePiece) | "AutoTokenizer"
    files: list[Path]
    chat_template: str | None
    chat_template_file: Path | None
    config: dict
    hf_tokenizer: Any = field(default=None, repr=False, compare=False)  # only for kind AutoTokenizer


@dataclass
class GgufVocab:
    """Everything write_vocab puts into the GGUF's tokenizer.ggml.* keys."""

    model: str  # "gpt2" (BPE) or "llama" (SentencePiece)
    pre: str  # BPE: chosen by the arch plugin, e.g. "qwen2" or "qwen35"; SentencePiece: "default"
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    special_ids: dict[str, int]  # "bos","eos","eot","pad","unk" as available
    add_bos: bool | None
    chat_template: str | None
    add_space_prefix: bool | None = None  # SentencePiece only; None leaves llama.cpp's default (true)


@dataclass
class AddedInfo:
    """An added token as tokenizer.json / tokenizer_config.json describe it."""

    content: str
    special: bool
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass
class BpeParts:
    """A byte-level BPE reduced to plain data, whatever file layout it came from."""

    vocab: dict[str, int]
    merges: list[str]
    added: dict[int, AddedInfo]
    origin: Path  # file named in errors
    post_processor: dict | None = None


# ---------------------------------------------------------------- discovery


def read_json(path: Path) -> Any:
    """Load a JSON file; a broken file is a user error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SmtError(f"{path}: (whole file): not readable JSON ({e})") from None


def search_dirs(checkpoint_dir: Path, override_dir: Path | None) -> list[Path]:
    """The --tokenizer directory is searched before the checkpoint directory."""
    dirs = [Path(override_dir)] if override_dir is not None else []
    if Path(checkpoint_dir) not in dirs:
        dirs.append(Path(checkpoint_dir))
    return dirs


def is_spm_json(data: dict) -> bool:
    """A SentencePiece-style tokenizer.json: Unigram, or BPE with byte_fallback (byte-level BPE has none)."""
    model = data.get("model") or {}
    return model.get("type") == "Unigram" or (model.get("type") == "BPE" and bool(model.get("byte_fallback")))


def find_file_kind(directory: Path) -> tuple[str, list[Path]] | None:
    """First tokenizer file layout present in `directory`, in discovery order.

    tokenizer.model means SentencePiece (kind "tokenizer.model", with tokenizer.json as a second file when
    present), unless tokenizer.json next to it is a byte-level BPE (then the .model is not the vocab we use).
    """
    model, as_json = directory / "tokenizer.model", directory / "tokenizer.json"
    if model.is_file() and not (as_json.is_file() and not is_spm_json(read_json(as_json))):
        return SPM_KIND, [model, *([as_json] if as_json.is_file() else [])]
    for kind, names in FILE_KINDS:
        paths = [directory / n for n in names]
        if all(p.is_file() for p in paths):
            return kind, paths
    return None


MIN_AUTO_VOCAB = 16


def try_auto_tokenizer(directory: Path) -> tuple[Any, str | None]:
    """Last resort: let transformers load whatever it can (no remote code). Returns (tok, why_not)."""
    if not directory.is_dir():
        return None, "not a directory"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed"
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as e:  # transformers raises many types; any failure means "not here"
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    # transformers happily builds an empty tokenizer from config.json alone (one token, no merges):
    # that is not a tokenizer we can ship.
    try:
        size = len(tok.get_vocab())
    except Exception:  # a tokenizer without get_vocab() cannot give us a vocabulary either
        size = 0
    if size < MIN_AUTO_VOCAB:
        return None, f"AutoTokenizer found only {size} token(s), no vocabulary files"
    return tok, None


def chat_template_from_config(config: dict, config_path: Path) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of {name, template} (use "default")."""
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return entry.get("template")
        raise SmtError(f"{config_path}: chat_template: list has no entry named 'default'")
    raise SmtError(f"{config_path}: chat_template: expected a string or a list, got {type(value).__name__}")


def find_chat_template(directory: Path, config: dict) -> tuple[str | None, Path | None]:
    """chat_template.jinja, else chat_template.json, else tokenizer_config.json's field."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), jinja
    as_json = directory / "chat_template.json"
    if as_json.is_file():
        value = read_json(as_json)
        template = value.get("chat_template") if isinstance(value, dict) else None
        if not isinstance(template, str):
            raise SmtError(f"{as_json}: chat_template: missing or not a string")
        return template, as_json
    config_path = directory / CONFIG_FILE
    template = chat_template_from_config(config, config_path)
    return template, (config_path if template is not None else None)


def load_config(directory: Path) -> dict:
    """tokenizer_config.json contents, or {} when the checkpoint has none."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return {}
    config = read_json(path)
    if not isinstance(config, dict):
        raise SmtError(f"{path}: (whole file): expected a JSON object")
    return config


def make_source(directory: Path, kind: str, files: list[Path], others: list[Path], hf: Any = None) -> TokenizerSource:
    """Attach config and chat template; the template may also come from another searched directory."""
    config = load_config(directory)
    if config:
        files = [*files, directory / CONFIG_FILE]
    if (directory / "added_tokens.json").is_file() and kind != AUTO_KIND:
        files = [*files, directory / "added_tokens.json"]
    template, template_file = find_chat_template(directory, config)
    for other in others:
        if template is not None:
            break
        if other != directory and other.is_dir():
            template, template_file = find_chat_template(other, load_config(other))
    if template_file is not None and template_file not in files:
        files.append(template_file)
    return TokenizerSource(directory, kind, files, template, template_file, config, hf)


def find_tokenizer(checkpoint_dir: Path, override_dir: Path | None = None) -> TokenizerSource:
    """Locate the tokenizer: --tokenizer DIR first, then the checkpoint; file layouts before transformers."""
    dirs = search_dirs(checkpoint_dir, override_dir)
    for directory in dirs:
        found = find_file_kind(directory)
        if found is not None:
            return make_source(directory, found[0], list(found[1]), dirs)
    reasons = []
    for directory in dirs:
        hf, why_not = try_auto_tokenizer(directory)
        if hf is not None:
            return make_source(directory, AUTO_KIND, [], dirs, hf)
        reasons.append(f"{directory} ({why_not})")
    looked_for = ", ".join(" + ".join(names) for _, names in FILE_KINDS)
    raise SmtError(
        f"{dirs[-1]}: tokenizer: none found; looked for {looked_for} and transformers.AutoTokenizer "
        f"in {', '.join(str(d) for d in dirs)} [AutoTokenizer: {'; '.join(reasons)}]; "
        "pass --tokenizer DIR to point at a directory that has one"
    )


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


def added_from_config(config: dict) -> dict[int, AddedInfo]:
    """tokenizer_config.json's added_tokens_decoder {id: {content, special, ...}}."""
    added = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added[int(key)] = added_info(entry)
    return added


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
    return BpeParts(vocab, read_merges_txt(directory / "merges.txt"), added, vocab_path)


def loaded_auto_tokenizer(source: TokenizerSource, purpose: str):
    """The transformers tokenizer behind an "AutoTokenizer" source (loaded once, on first use)."""
    if source.hf_tokenizer is None:
        hf, why_not = try_auto_tokenizer(source.directory)
        if hf is None:
            raise SmtError(f"{source.directory}: tokenizer: {purpose} failed: {why_not}")
        source.hf_tokenizer = hf
    return source.hf_tokenizer


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
    added = {int(i): AddedInfo(str(t), special=bool(getattr(t, "special", False)))
             for i, t in (getattr(hf, "added_tokens_decoder", None) or {}).items()}
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


def looks_special(text: str) -> bool:
    """Upstream marks added tokens that look like control tokens CONTROL even if not flagged special."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


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


def token_content(value: Any) -> str | None:
    """A tokenizer_config special-token entry is a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def resolve_special_ids(
    parts: BpeParts, config: dict, eot_token: str | None, eos_token: str | None
) -> dict[str, int]:
    """Map bos/eos/eot/pad/unk to ids by their strings; added tokens take priority over the base vocab."""
    lookup = dict(parts.vocab)
    lookup.update({a.content: i for i, a in parts.added.items()})
    ids: dict[str, int] = {}
    for key in ("bos", "eos", "pad", "unk"):
        text = token_content(config.get(f"{key}_token"))
        if text is not None and text in lookup:
            ids[key] = lookup[text]
    if eos_token is not None:
        if eos_token not in lookup:
            raise SmtError(f"{parts.origin}: eos_token: {eos_token!r} is not a token of this tokenizer")
        ids["eos"] = lookup[eos_token]
    if eot_token is not None and eot_token in lookup:
        ids["eot"] = lookup[eot_token]
    return ids


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
    return GgufVocab(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        types=types,
        merges=parts.merges,
        scores=None,
        special_ids=resolve_special_ids(parts, source.config, eot_token, eos_token),
        add_bos=resolve_add_bos(source.config, parts.post_processor),
        chat_template=source.chat_template,
    )


# ---------------------------------------------------------------- SentencePiece vocabulary


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


def spm_model_proto(path: Path):
    """Parse tokenizer.model with sentencepiece's own protobuf schema (needs sentencepiece + protobuf)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise SmtError(f"{path}: tokenizer: reading a SentencePiece model needs sentencepiece and protobuf ({e})") from None
    proto = sentencepiece_model_pb2.ModelProto()
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
        raise SmtError(f"{path}: trainer_spec.model_type: {proto.trainer_spec.model_type} is neither "
                       "UNIGRAM nor BPE; llama.cpp's SentencePiece tokenizer cannot reproduce it")
    types = [p.type if p.type in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
             for p in proto.pieces]
    return SpmParts(
        tokens=[p.piece for p in proto.pieces],
        scores=[float(p.score) for p in proto.pieces],
        types=types,
        add_dummy_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        origin=path,
    )


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
        raise SmtError(f"{origin}: model.type: {model.get('type')!r} is neither Unigram nor BPE with byte_fallback; "
                       "not a SentencePiece-style tokenizer")
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


def check_spm_agree(from_model: SpmParts, from_json: SpmParts, renamed: set[int]) -> None:
    """tokenizer.model and tokenizer.json must describe the same base vocabulary (ids renamed by the config aside)."""
    where = f"{from_json.origin}: model.vocab"
    if len(from_json.tokens) != len(from_model.tokens):
        raise SmtError(f"{where}: {len(from_json.tokens)} pieces but {from_model.origin.name} has {len(from_model.tokens)}")
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


def spm_token_table(parts: SpmParts, source: TokenizerSource, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Base pieces, then added tokens as upstream applies them, padded with [PAD{i}] to vocab_size rows.

    Order (later wins): tokenizer.json added tokens beyond the base pieces, added_tokens.json (USER_DEFINED),
    tokenizer_config.json added_tokens_decoder (CONTROL if special or looks special, else USER_DEFINED with
    "▁" turned back into spaces). Every added token scores -1000; filler rows -10000 and UNUSED.
    """
    base = len(parts.tokens)
    if base > vocab_size:
        raise SmtError(f"{parts.origin}: vocab: {base} pieces but the model's embedding has only "
                       f"vocab_size={vocab_size} rows")
    tokens = [*parts.tokens, *(f"[PAD{i}]" for i in range(base, vocab_size))]
    scores = [*parts.scores, *([PAD_SCORE] * (vocab_size - base))]
    types = [*parts.types, *([UNUSED] * (vocab_size - base))]

    def place(i: int, text: str, toktype: int, origin: str) -> None:
        if i >= vocab_size:
            raise SmtError(f"{origin}: added token {text!r} has id {i} but the model's embedding has only "
                           f"vocab_size={vocab_size} rows")
        tokens[i], scores[i], types[i] = text, ADDED_SCORE, toktype

    for i, info in sorted(parts.json_added.items()):
        if i >= base:
            place(i, info.content, CONTROL if info.special or looks_special(info.content) else USER_DEFINED,
                  str(source.directory / "tokenizer.json"))
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
    lookup = {t: i for i, t in reversed(list(enumerate(tokens))) if types[i] != UNUSED}
    lookup_parts = BpeParts(lookup, [], {}, parts.origin)
    return GgufVocab(
        model="llama",
        pre="default",
        tokens=tokens,
        types=types,
        merges=[],
        scores=scores,
        special_ids=resolve_special_ids(lookup_parts, source.config, eot_token, eos_token),
        add_bos=resolve_spm_add_bos(source.config, parts.post_processor),
        chat_template=source.chat_template,
        add_space_prefix=resolve_add_space_prefix(source.config, parts),
    )


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


def build_vocab(
    source: TokenizerSource,
    vocab_size: int,
    pre: str | None = None,
    eot_token: str | None = None,
    eos_token: str | None = None,
) -> GgufVocab:
    """BPE or SentencePiece, whichever the source is; BPE needs the plugin's `pre` (SentencePiece ignores it)."""
    if is_sentencepiece(source):
        return build_spm_vocab(source, vocab_size, eos_token=eos_token, eot_token=eot_token)
    if pre is None:
        raise SmtError(f"{source.directory}: tokenizer: byte-level BPE ({source.kind}) needs a pre-tokenizer name "
                       "from the arch plugin (vocab_pre)")
    return build_bpe_vocab(source, vocab_size, pre, eot_token=eot_token, eos_token=eos_token)


def write_vocab(writer: "gguf.GGUFWriter", vocab: GgufVocab) -> None:
    """Write tokenizer.ggml.* keys (model, pre, tokens, types, scores, merges, special ids, add_bos,
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
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


# ---------------------------------------------------------------- runtime export


def qwen2_tokenizer_json(parts: BpeParts, config: dict) -> str:
    """Rebuild Qwen2Tokenizer's fast tokenizer from vocab.json + merges.txt with the tokenizers library."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    merges = [tuple(m.split(" ")) for m in parts.merges]
    tok = Tokenizer(models.BPE(vocab=parts.vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
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
        token = AddedToken(a.content, single_word=a.single_word, lstrip=a.lstrip, rstrip=a.rstrip,
                           normalized=a.normalized, special=a.special)
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


SPM_PROBES = [
    "Hello world",
    "  two  spaces,   three   and trailing  ",
    "line\n\nblank\n\n\n\nmany\r\nwindows\n\t tab",
    "digits 1234567890 3.14",
    "我想在苹果工作。今天天气很好！",
    "emoji 🚀🦙 👍🏽 café",
]


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
        raise SmtError(f"{source.directory / 'tokenizer.model'}: tokenizer: converting a SentencePiece model to "
                       "tokenizer.json needs transformers (or ship the checkpoint's tokenizer.json)") from None
    hf = loaded_auto_tokenizer(source, f"converting {source.kind} to tokenizer.json")
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise SmtError(f"{source.directory}: tokenizer: {type(hf).__name__} has no fast (tokenizers) backend")
    text = backend.to_str(pretty=True)
    check_same_encoding(text, hf, source.directory)
    return text


def check_same_encoding(text: str, hf: Any, directory: Path) -> None:
    """The exported tokenizer.json must encode a few probes exactly like the HF tokenizer (specials included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    specials = [t for t in (getattr(hf, "all_special_tokens", None) or []) if isinstance(t, str)]
    for probe in [*SPM_PROBES, "a " + " x ".join(specials[:8]) + "\ny"]:
        got, want = tok.encode(probe).ids, list(hf.encode(probe))
        if got != want:
            raise SmtError(f"{directory}: tokenizer: exported tokenizer.json encodes {probe!r} as {got[:12]}... "
                           f"but {type(hf).__name__} gives {want[:12]}...")


def runtime_tokenizer_json(source: TokenizerSource) -> str:
    """The tokenizer.json text the board loads with `tokenizers`."""
    if source.kind == SPM_KIND or (source.kind in ("tokenizer.json", AUTO_KIND) and is_sentencepiece(source)):
        return spm_runtime_tokenizer_json(source)
    if source.kind == "tokenizer.json":
        return (source.directory / "tokenizer.json").read_text(encoding="utf-8")
    if source.kind == "vocab.json+merges.txt" and source.config.get("tokenizer_class", "Qwen2Tokenizer") in QWEN2_CLASSES:
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
