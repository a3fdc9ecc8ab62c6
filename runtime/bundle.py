"""A bundle on disk: its manifest, its board config, and the integrity check of every file it lists."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from smt_convert.runtime.errors import SmtError

MANIFEST = "manifest.json"
BOARD_CONFIG = "config.json"
GOLDEN_DIR = "golden"
MANIFEST_FORMAT = 1
# config.json as the board reads it (SMT-CONTRACT.md): the blocks are objects, ep_config maps strings to strings
BOARD_CONFIG_SHAPE = {
    "architectures?": [str],
    "audio_model?": dict,
    "vision_model?": dict,
    "text_model?": dict,
    "vision_preprocess?": dict,
    "ep_config?": {"*": str},
}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    root: Path
    manifest: dict
    config: dict

    @classmethod
    def open(cls, root: str | Path, require_complete: bool = True) -> "Bundle":
        """require_complete=False is for the converter, which runs the bundle before its manifest is final."""
        root = Path(root)
        if not root.is_dir():
            raise SmtError(f"{root}: bundle directory not found")
        manifest = read_json(root / MANIFEST)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise SmtError(f"{root / MANIFEST}: format: not an smt-convert bundle manifest (format {MANIFEST_FORMAT})")
        if require_complete and manifest.get("complete") is not True:
            raise SmtError(f"{root / MANIFEST}: complete: the bundle was not finished (conversion interrupted?)")
        validate_manifest(manifest, root / MANIFEST, require_complete)
        from smt_convert.runtime.documents import check_shape

        config = read_json(root / BOARD_CONFIG)
        check_shape(config, BOARD_CONFIG_SHAPE, root / BOARD_CONFIG)
        return cls(root, manifest, config)

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def text_gguf(self) -> Path:
        return self.root / self.manifest["text"]["file"]

    def required_files(self) -> list[str]:
        """Every file the bundle needs: the GGUF, each encoder and its data, config.json, the tokenizer files,
        the goldens, the model card (when the manifest names one) and the board's extra files (everything
        config.json points at)."""
        m = self.manifest
        need = [m["text"]["file"], BOARD_CONFIG]
        for enc in m["encoders"]:
            need += [enc["file"]] + ([enc["data_file"]] if enc.get("data_file") else [])
        need += list(m.get("tokenizer_files", []))
        need += [m["card"]] if m.get("card") else []
        golden = m["golden"]
        need += [f"{golden['directory']}/{name}" for name in golden["files"]]
        return need + self.config_paths()

    def config_paths(self) -> list[str]:
        """Model paths in config.json and in the split-encoder metadata: what the board will open."""
        paths = []
        for block, keys in (
            ("vision_model", ("model_path",)),
            ("text_model", ("model_path",)),
            ("audio_model", ("frontend_model_path", "backend_model_path")),
        ):
            entry = self.config.get(block)
            if isinstance(entry, dict):
                paths += [entry[k] for k in keys if isinstance(entry.get(k), str)]
        for meta in sorted(self.root.glob("*-encoder-split-metadata.json")):
            data = read_json(meta)
            paths += [meta.name] + [data[k] for k in ("frontend_onnx", "backend_onnx") if isinstance(data.get(k), str)]
        return paths

    def check_structure(self) -> list[str]:
        """Problems with what the manifest lists (not with file contents): paths that leave the bundle, files the
        bundle needs that are not listed, board paths that point at nothing listed."""
        problems = []
        listed = {e["path"] for e in self.manifest["files"]}
        root = self.root.resolve()
        for name in sorted(listed):
            if name.startswith("/") or ".." in Path(name).parts:
                problems.append(f"{name}: path leaves the bundle")
                continue
            resolved = (self.root / name).resolve()
            if root not in resolved.parents:
                problems.append(f"{name}: resolves outside the bundle (symlink?)")
        for name in self.required_files():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                problems.append(f"{name}: named by the bundle but leaves it")
            elif name not in listed:
                problems.append(f"{name}: needed by the bundle but not listed in the manifest")
        return problems

    def unlisted_files(self) -> list[str]:
        """Files in the bundle the manifest does not list (reported; a bundle may be copied with extras)."""
        listed = {e["path"] for e in self.manifest["files"]} | {MANIFEST}
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and p.relative_to(self.root).as_posix() not in listed
        )

    def check_sizes(self) -> None:
        """Presence and size of every listed file (cheap; full hashes are `verify`'s job): before `run` loads."""
        for problem in self.check_structure():
            raise SmtError(f"{self.root}: {problem}")
        card = self.manifest.get("card")
        for entry in self.manifest["files"]:
            if entry["path"] == card:  # documentation, edited before publishing; `verify` still hashes it
                continue
            path = self.root / entry["path"]
            if not path.is_file():
                raise SmtError(f"{path}: listed in the manifest but missing")
            if path.stat().st_size != entry["size"]:
                raise SmtError(
                    f"{path}: size {path.stat().st_size}, the manifest says {entry['size']} (copied incompletely?)"
                )

    def check_files(self) -> list[dict]:
        """Compare every file listed in the manifest with its recorded size and sha256."""
        rows = []
        for entry in self.manifest.get("files", []):
            path = self.root / entry["path"]
            if (
                entry["path"].startswith("/")
                or ".." in Path(entry["path"]).parts
                or self.root.resolve() not in path.resolve().parents
            ):
                rows.append({"file": entry["path"], "ok": False, "detail": "outside the bundle, not read"})
                continue
            if not path.is_file():
                rows.append({"file": entry["path"], "ok": False, "detail": "missing"})
                continue
            size = path.stat().st_size
            if size != entry["size"]:
                rows.append({"file": entry["path"], "ok": False, "detail": f"size {size} != {entry['size']}"})
                continue
            digest = sha256_file(path)
            ok = digest == entry["sha256"]
            rows.append({"file": entry["path"], "ok": ok, "detail": "sha256 ok" if ok else "sha256 differs"})
        return rows


def read_json(path: Path, what: str | None = None) -> dict:
    """Read a JSON object within `documents.load_json`'s limits; every failure is one line naming the file."""
    from smt_convert.runtime.documents import load_json

    data = load_json(path, what)
    if not isinstance(data, dict):
        raise SmtError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


NUMBER = (int, float)
IO_SHAPE = [{"name": str, "shape": [(int, str)], "dtype": str}]
ROW = {"check": str, "metric": str, "value": (int, float, str), "threshold": str, "ok": bool, "gate?": bool}
# What the runtime, `verify`, `inspect` and the card read from a manifest (runtime/documents.py's shape language).
MANIFEST_SHAPE = {
    "tool": {"name": str, "version": str},
    "architecture": str,
    "modality": str,
    "text": {
        "file": str,
        "outtype": str,
        "gguf_arch?": str,
        "tensors?": [{"name": str, "type": str, "shape": [int], "bytes": int}],
    },
    "encoders": [
        {
            "file": str,
            "role": str,
            "data_file?": (str, type(None)),
            "dtype?": str,
            "inputs?": IO_SHAPE,
            "outputs?": IO_SHAPE,
        }
    ],
    "onnx_dtype": str,
    "prompt": {
        "template": str,
        "template_fields?": {"*": str},
        "media_marker?": str,
        "media_start?": str,
        "media_end?": str,
        "media_placeholder?": str,
        "media_placeholder_id?": int,
        "positions": str,
        "stop_tokens": [str],
        "assistant_prefix_with_language?": str,
        "languages?": {"*": str},
        "answer_after?": (str, type(None)),
    },
    "preprocessing": {
        "host?": str,
        "image_size?": [int],
        "grid?": ([int], type(None)),
        "num_mel_bins?": int,
        "sample_rate?": int,
        "n_fft?": int,
        "hop_length?": int,
        "chunk_length?": int,
        "min_length?": int,
        "n_window?": int,
        "vision_preprocess?": {"rescale_factor": NUMBER, "image_mean": [NUMBER], "image_std": [NUMBER]},
    },
    "golden": {
        "directory": str,
        "files": [str],
        "input?": (str, type(None)),
        "input_text?": (str, type(None)),
        "answer?": (str, type(None)),
    },
    "source?": {"directory": str},
    "verification?": {"rows": [ROW], "passed?": (bool, type(None)), "reference?": (str, type(None))},
    "memory?": {
        "n_ctx": int,
        "bytes": {"*": int},
        "fits_at_n_ctx": [int],
        "longest_context": {"*": (int, type(None))},
        "assumptions": str,
    },
    "quality?": {"positions": int, "kld_mean": NUMBER, "kld_p99": NUMBER, "top1": NUMBER},
    "board?": {"commands?": {"*": str}, "flags?": [str], "notes?": [str]},
    "options?": (dict, type(None)),
    "card?": (str, type(None)),
    "tokenizer_files?": [str],
    "files?": [{"path": str, "size": int, "sha256": str}],
}
# Sizes in `preprocessing` the host computes with: positive and within what any model uses.
PREPROCESSING_LIMITS = {
    "num_mel_bins": 1024,
    "sample_rate": 192000,
    "n_fft": 65536,
    "hop_length": 65536,
    "chunk_length": 3600,
    "min_length": 192000 * 60,
    "n_window": 65536,
}


def _check_prompt_and_preprocessing(m: dict, path: Path) -> None:
    """What the shape cannot say: the prompt template's fields are the ones it declares (str.format on a
    template naming others would fail, or reach attributes), positions is a rule the runtime has, and the host's
    sizes are positive."""
    import string

    prompt = m["prompt"]
    if prompt["positions"] not in ("1d", "mrope"):
        raise SmtError(f"{path}: prompt.positions: expected 1d or mrope, found {prompt['positions']!r}")
    allowed = set(prompt.get("template_fields", {}))
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(prompt["template"]) if f is not None]
    except ValueError as exc:
        raise SmtError(f"{path}: prompt.template: not a template ({exc})") from None
    bad = next((f for f in fields if f not in allowed or not f.isidentifier()), None)
    if bad is not None:
        raise SmtError(f"{path}: prompt.template: field {{{bad}}} is not one of prompt.template_fields")
    if m["modality"] != "text":
        for key in ("media_marker", "media_start", "media_end", "media_placeholder_id"):
            if key not in prompt:
                raise SmtError(f"{path}: prompt.{key}: required field is missing")
    for key, limit in PREPROCESSING_LIMITS.items():
        value = m["preprocessing"].get(key)
        if value is not None and not 0 < value <= limit:
            raise SmtError(f"{path}: preprocessing.{key}: {value} is outside 1..{limit}")
    for key in ("image_size", "grid"):
        value = m["preprocessing"].get(key)
        if value is not None and (len(value) != 2 or not all(0 < v <= 16384 for v in value)):
            raise SmtError(f"{path}: preprocessing.{key}: expected two sizes in 1..16384, found {value}")


def validate_manifest(m: dict, path: Path, complete: bool = True) -> None:
    """The manifest's shape, before anything trusts it: one line naming the first bad field."""
    from smt_convert.runtime.documents import check_shape

    check_shape(m, MANIFEST_SHAPE, path)
    _check_prompt_and_preprocessing(m, path)

    def need(obj, key, kind, where):
        if not isinstance(obj, dict) or key not in obj:
            raise SmtError(f"{path}: {where}{key}: missing")
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise SmtError(f"{path}: {where}{key}: expected {names}, found {type(value).__name__}")
        return value

    need(m, "architecture", str, "")
    need(m, "modality", str, "")
    text = need(m, "text", dict, "")
    need(text, "file", str, "text.")
    need(text, "outtype", str, "text.")
    for i, enc in enumerate(need(m, "encoders", list, "")):
        need(enc, "file", str, f"encoders[{i}].")
        need(enc, "role", str, f"encoders[{i}].")
        if enc.get("data_file") is not None:
            need(enc, "data_file", str, f"encoders[{i}].")
    need(m, "onnx_dtype", str, "")
    need(m, "prompt", dict, "")
    need(m, "preprocessing", dict, "")
    golden = need(m, "golden", dict, "")
    need(golden, "directory", str, "golden.")
    for i, name in enumerate(need(golden, "files", list, "golden.")):
        if not isinstance(name, str):
            raise SmtError(f"{path}: golden.files[{i}]: expected str, found {type(name).__name__}")
    if m.get("card") is not None:
        need(m, "card", str, "")
    for i, name in enumerate(m.get("tokenizer_files", [])):
        if not isinstance(name, str):
            raise SmtError(f"{path}: tokenizer_files[{i}]: expected str, found {type(name).__name__}")
    if not complete:
        return
    files = need(m, "files", list, "")
    if not files:
        raise SmtError(f"{path}: files: empty (a bundle lists every file it holds)")
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise SmtError(f"{path}: files[{i}]: expected an object, found {type(entry).__name__}")
        need(entry, "path", str, f"files[{i}].")
        need(entry, "size", int, f"files[{i}].")
        if not _SHA256.match(need(entry, "sha256", str, f"files[{i}].")):
            raise SmtError(f"{path}: files[{i}].sha256: not a sha256 hex digest")
