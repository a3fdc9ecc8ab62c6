"""Every JSON document we read, parsed with limits: size, nesting depth, integer digits.

A checkpoint or a bundle is input we did not write. Python's json module recurses once per nesting level
(100,000 levels: RecursionError), turns a 5,000-digit integer into ValueError (its int limit) and reads a file
of any size into memory. Here each of those is one line naming the file, exit 2. NaN and Infinity parse (our own
manifests record a NaN metric of a failed check); values that must be finite are checked where they are used
(`finite`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from smt_convert.runtime.errors import SmtError

MAX_JSON_BYTES = 256 << 20   # tokenizer.json of a 250k vocabulary is ~11 MB; a safetensors index ~100 KB
MAX_INT_DIGITS = 30          # the largest integer in a config or manifest is a file size (< 20 digits)


def load_json(path: Path, what: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file within the limits above; every failure is one line naming the file."""
    path = Path(path)
    what = what or path.name
    if not path.is_file():
        raise SmtError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a regular file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SmtError(f"{path}: {what} is {size} bytes, more than the {max_bytes >> 20} MiB we read")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SmtError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    return parse_json(text, path, what)


def parse_json(text: str, path, what: str) -> Any:
    """`load_json` for text already read (limits on depth, integers and non-finite numbers)."""
    where = f"{path}" if what == Path(str(path)).name else f"{path}: {what}"
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise SmtError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _Refused as exc:
        raise SmtError(f"{where}: {exc}") from None
    except RecursionError:
        raise SmtError(f"{where}: nested too deeply to be a document we read") from None
    except ValueError as exc:
        raise SmtError(f"{where}: not a document we can read ({str(exc).splitlines()[0][:120]})") from None


class _Refused(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def finite(value, path, field: str, low: float | None = None, high: float | None = None) -> float:
    """A config number that must be finite (and within [low, high] when given), else one line naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SmtError(f"{path}: {field}: expected a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SmtError(f"{path}: {field}: {value!r} is outside [{low}, {high}]")
    return value
