"""Find a checkpoint's tokenizer files: which directory, which file layout, its config and chat template.

Everything downstream (the GGUF vocabulary, the runtime export) starts from the TokenizerSource this
module returns, and the bundle manifest records it. Discovery needs neither gguf nor transformers; the
AutoTokenizer fallback imports transformers only when no tokenizer file layout is found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smt_convert.runtime.errors import SmtError

# Discovery order within one directory. AutoTokenizer is tried after all of these.
FILE_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("tokenizer.json", ("tokenizer.json",)),
    ("vocab.json+merges.txt", ("vocab.json", "merges.txt")),
    ("tokenizer.model", ("tokenizer.model",)),
]
AUTO_KIND = "AutoTokenizer"
SPM_KIND = "tokenizer.model"  # SentencePiece; files: tokenizer.model (+ tokenizer.json when present)
CONFIG_FILE = "tokenizer_config.json"
# transformers happily builds an empty tokenizer from config.json alone; fewer tokens than this is not a vocab.
MIN_AUTO_VOCAB = 16


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


def loaded_auto_tokenizer(source: TokenizerSource, purpose: str):
    """The transformers tokenizer behind an "AutoTokenizer" source (loaded once, on first use)."""
    if source.hf_tokenizer is None:
        hf, why_not = try_auto_tokenizer(source.directory)
        if hf is None:
            raise SmtError(f"{source.directory}: tokenizer: {purpose} failed: {why_not}")
        source.hf_tokenizer = hf
    return source.hf_tokenizer


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
