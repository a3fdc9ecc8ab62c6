"""Find a checkpoint's tokenizer, turn it into llama.cpp GGUF vocabulary, and export it for the board.

The GGUF vocabulary follows what upstream llama.cpp's convert_hf_to_gguf.py writes for byte-level
BPE (tokenizer model "gpt2"), so upstream llama.cpp tokenizes exactly like the HF tokenizer; the
pre-tokenizer name is chosen by the arch plugin, never guessed by hashing.
"""

from __future__ import annotations

import json
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
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")

# gguf.TokenType values, duplicated so this module imports without gguf when only discovering.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

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
    kind: str  # "tokenizer.json" | "vocab.json+merges.txt" | "tokenizer.model" | "AutoTokenizer"
    files: list[Path]
    chat_template: str | None
    chat_template_file: Path | None
    config: dict
    hf_tokenizer: Any = field(default=None, repr=False, compare=False)  # only for kind AutoTokenizer


@dataclass
class GgufVocab:
    """Everything write_vocab puts into the GGUF's tokenizer.ggml.* keys."""

    model: str  # "gpt2" (BPE) or "llama" (SentencePiece, later)
    pre: str  # chosen by the arch plugin, e.g. "qwen2" or "qwen35"
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    special_ids: dict[str, int]  # "bos","eos","eot","pad","unk" as available
    add_bos: bool | None
    chat_template: str | None


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


def find_file_kind(directory: Path) -> tuple[str, list[Path]] | None:
    """First tokenizer file layout present in `directory`, in discovery order."""
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
    eot_token: str | None = "<|im_end|>",
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


def write_vocab(writer: "gguf.GGUFWriter", vocab: GgufVocab) -> None:
    """Write tokenizer.ggml.* keys (model, pre, tokens, types, merges, special ids, template)."""
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


def runtime_tokenizer_json(source: TokenizerSource) -> str:
    """The tokenizer.json text the board loads with `tokenizers`."""
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
    if source.kind == "tokenizer.json":
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
