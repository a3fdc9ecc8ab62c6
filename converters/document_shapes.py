"""The shapes of the documents a checkpoint brings, as far as smt-convert reads them (runtime/documents.py checks
them), and the one pass that checks every one present before a plan is made: a wrong type anywhere is one line
naming the file and the field path, not a traceback from wherever the value is first used."""

from __future__ import annotations

from pathlib import Path

from smt_convert.runtime.documents import NUMBER, OneOf, check_shape, load_checked
from smt_convert.runtime.errors import SmtError

SUB_CONFIG = OneOf(dict, type(None))
CONFIG = {
    "architectures?": OneOf([str], type(None)),
    "_name_or_path?": str,
    "model_type?": str,
    "text_config?": SUB_CONFIG,
    "audio_config?": SUB_CONFIG,
    "vision_config?": SUB_CONFIG,
    "thinker_config?": OneOf({"text_config?": SUB_CONFIG, "audio_config?": SUB_CONFIG}, type(None)),
    "tie_word_embeddings?": OneOf(bool, type(None)),
    "license?": OneOf(str, type(None)),
}
INDEX = {"weight_map": {"*": str}}
TOKEN_IDS = OneOf(int, [int], type(None))
GENERATION = {
    "top_k?": OneOf(int, type(None)),
    "top_p?": OneOf(NUMBER, type(None)),
    "temperature?": OneOf(NUMBER, type(None)),
    "min_p?": OneOf(NUMBER, type(None)),
    "repetition_penalty?": OneOf(NUMBER, type(None)),
    "do_sample?": OneOf(bool, type(None)),
    "eos_token_id?": TOKEN_IDS,
    "bos_token_id?": TOKEN_IDS,
    "pad_token_id?": TOKEN_IDS,
}
MAX_TOP_K = 1 << 24  # a vocabulary size; a 5,000-digit or negative top_k is not a sampling setting
NUMBERS = OneOf(NUMBER, [NUMBER])
PREPROCESSOR = {
    "image_mean?": NUMBERS,
    "image_std?": NUMBERS,
    "rescale_factor?": NUMBER,
    "min_pixels?": int,
    "max_pixels?": int,
    "patch_size?": int,
    "merge_size?": int,
    "temporal_patch_size?": int,
    "size?": OneOf(dict, int),
    "feature_size?": int,
    "sampling_rate?": int,
    "n_fft?": int,
    "hop_length?": int,
    "chunk_length?": int,
    "n_samples?": int,
}
ADDED_TOKEN = {"id": int, "content": str, "special?": bool}
TOKENIZER_JSON = {
    "model": {
        "type?": str,
        "vocab?": OneOf({"*": int}, [[OneOf(str, NUMBER)]]),
        "merges?": [OneOf(str, [str])],
        "byte_fallback?": OneOf(bool, type(None)),
    },
    "added_tokens?": [ADDED_TOKEN],
    "post_processor?": OneOf(dict, type(None)),
    "pre_tokenizer?": OneOf(dict, type(None)),
    "normalizer?": OneOf(dict, type(None)),
}
TEMPLATE = OneOf(str, [{"name": str, "template": str}], type(None))
TOKENIZER_CONFIG = {
    "chat_template?": TEMPLATE,
    "added_tokens_decoder?": {"*": {"content": str}},
    "add_bos_token?": OneOf(bool, type(None)),
    "add_eos_token?": OneOf(bool, type(None)),
    "bos_token?": OneOf(str, dict, type(None)),
    "eos_token?": OneOf(str, dict, type(None)),
}
VOCAB_JSON = {"*": int}
ADDED_TOKENS_JSON = {"*": int}
CHAT_TEMPLATE_JSON = {"chat_template": str}

CHECKPOINT_DOCUMENTS = {  # file -> shape (each checked when present)
    "config.json": CONFIG,
    "model.safetensors.index.json": INDEX,
    "generation_config.json": GENERATION,
    "preprocessor_config.json": PREPROCESSOR,
    "processor_config.json": dict,
    "tokenizer.json": TOKENIZER_JSON,
    "tokenizer_config.json": TOKENIZER_CONFIG,
    "vocab.json": VOCAB_JSON,
    "added_tokens.json": ADDED_TOKENS_JSON,
    "chat_template.json": CHAT_TEMPLATE_JSON,
    "special_tokens_map.json": dict,
}
TEXT_FILES = ("chat_template.jinja", "merges.txt", "README.md")
MAX_TEXT_BYTES = 64 << 20  # merges.txt of a 250k vocabulary is ~5 MB


_CHECKED: set[tuple] = set()  # (path, size, mtime) already checked in this process (the CLI and the plan both ask)


def check_checkpoint_documents(*directories: Path | None) -> None:
    """Every JSON document and text file smt-convert reads from these directories (the checkpoint, --tokenizer),
    parsed with limits and checked against the shape we use, before anything else reads them (once per run for
    an unchanged file)."""
    for directory in [d for d in directories if d is not None]:
        checks = [
            (name, lambda path, shape=shape: _check_document(path, shape))
            for name, shape in CHECKPOINT_DOCUMENTS.items()
        ]
        for name, check in checks + [(name, _check_text) for name in TEXT_FILES]:
            path = Path(directory) / name
            if not path.exists():
                continue
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if key not in _CHECKED:
                check(path)
                _CHECKED.add(key)


def _check_document(path: Path, shape) -> None:
    data = load_checked(path, shape)
    if path.name == "generation_config.json":
        top_k = data.get("top_k")
        if isinstance(top_k, int) and not 0 <= top_k <= MAX_TOP_K:
            raise SmtError(f"{path}: top_k: {top_k} is outside 0..{MAX_TOP_K}")


def _check_text(path: Path) -> None:
    if not path.is_file():
        raise SmtError(f"{path}: not a regular file")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise SmtError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_TEXT_BYTES >> 20} MiB read")
    try:
        path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SmtError(f"{path}: cannot be read as UTF-8 text ({exc.__class__.__name__})") from None


__all__ = ["check_checkpoint_documents", "check_shape"]
