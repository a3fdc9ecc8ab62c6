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

MAX_JSON_BYTES = 256 << 20  # tokenizer.json of a 250k vocabulary is ~11 MB; a safetensors index ~100 KB
MAX_INT_DIGITS = 30  # the largest integer in a config or manifest is a file size (< 20 digits)


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


# ---- shapes ---------------------------------------------------------------------------------------------------
# A document's shape as data: a type (or tuple of types) for a value; {"key": shape, "key?": optional shape,
# "*": shape of every other value} for an object; [shape] for a list of such elements; OneOf(...) for alternatives.
# Only the fields we read are described; anything else a document holds is left alone.


class OneOf:
    def __init__(self, *options):
        self.options = options


NUMBER = (int, float)


def check_shape(data: Any, shape, path, field: str = "") -> None:
    """Raise one line naming the file and the dotted field path of the first value that does not fit `shape`."""
    problem = _mismatch(data, shape, field)
    if problem is not None:
        where_, message = problem
        raise SmtError(f"{path}: {where_ or '(whole file)'}: {message}")


def _describe(shape) -> str:
    if isinstance(shape, tuple) and not all(isinstance(t, type) for t in shape):
        shape = OneOf(*shape)
    if isinstance(shape, OneOf):
        return " or ".join(_describe(s) for s in shape.options)
    if isinstance(shape, dict):
        return "an object"
    if isinstance(shape, list):
        return "a list"
    types = shape if isinstance(shape, tuple) else (shape,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        dict: "an object",
        list: "a list",
        type(None): "null",
    }
    return "/".join(names.get(t, t.__name__) for t in types)


def _mismatch(data, shape, field):
    if isinstance(shape, tuple) and not all(isinstance(t, type) for t in shape):
        shape = OneOf(*shape)  # (["x"], None)-style alternatives
    if isinstance(shape, OneOf):
        for option in shape.options:
            if _mismatch(data, option, field) is None:
                return None
        return field, f"expected {_describe(shape)}, found {_found(data)}"
    if isinstance(shape, dict):
        if not isinstance(data, dict):
            return field, f"expected an object, found {_found(data)}"
        for key, sub in shape.items():
            if key == "*":
                continue
            name, optional = key.rstrip("?"), key.endswith("?")
            if name not in data:
                if not optional:
                    return _join(field, name), "required field is missing"
                continue
            problem = _mismatch(data[name], sub, _join(field, name))
            if problem:
                return problem
        if "*" in shape:
            named = {k.rstrip("?") for k in shape if k != "*"}
            for key, value in data.items():
                if key not in named:
                    problem = _mismatch(value, shape["*"], _join(field, str(key)))
                    if problem:
                        return problem
        return None
    if isinstance(shape, list):
        if not isinstance(data, list):
            return field, f"expected a list, found {_found(data)}"
        for i, value in enumerate(data):
            problem = _mismatch(value, shape[0], f"{field}[{i}]")
            if problem:
                return problem
        return None
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(data, bool) and bool not in types:
        return field, f"expected {_describe(shape)}, found {_found(data)}"
    if not isinstance(data, types):
        return field, f"expected {_describe(shape)}, found {_found(data)}"
    return None


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _found(value) -> str:
    text = json.dumps(value)[:40] if isinstance(value, (int, float, str, bool)) or value is None else ""
    return f"{type(value).__name__}" + (f" {text}" if text else "")


def load_checked(path: Path, shape, what: str | None = None) -> Any:
    """`load_json`, then `check_shape`: the one way a document we did not write is read."""
    data = load_json(path, what)
    check_shape(data, shape, path)
    return data
