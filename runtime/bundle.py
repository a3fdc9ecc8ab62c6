"""A bundle on disk: its manifest, its board config, and the integrity check of every file it lists."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from smt_convert.runtime.errors import SmtError

MANIFEST = "manifest.json"
BOARD_CONFIG = "config.json"
GOLDEN_DIR = "golden"
MANIFEST_FORMAT = 1


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
        return cls(root, manifest, read_json(root / BOARD_CONFIG))

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def text_gguf(self) -> Path:
        return self.root / self.manifest["text"]["file"]

    def check_files(self) -> list[dict]:
        """Compare every file listed in the manifest with its recorded size and sha256."""
        rows = []
        for entry in self.manifest.get("files", []):
            path = self.root / entry["path"]
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
    """Read a JSON object, turning every failure into a one-line error naming the file."""
    what = what or path.name
    if not path.is_file():
        raise SmtError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SmtError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise SmtError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise SmtError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
