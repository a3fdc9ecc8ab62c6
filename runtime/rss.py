"""The resident memory a piece of work adds at its peak, read from Linux's /proc (the encoder session's peak,
which a bundle's memory statement needs; onnxruntime reports no such number itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_added(work: Callable[[], T]) -> tuple[T, int | None]:
    """Run `work`; return its result and how far the process's resident set rose above where it started, in
    bytes (None where /proc cannot tell: not Linux, or the peak counter cannot be reset)."""
    before = _status_kib("VmRSS")
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    result = work()
    peak = _status_kib("VmHWM")
    if not reset or before is None or peak is None:
        return result, None
    return result, max(0, peak - before) * 1024
