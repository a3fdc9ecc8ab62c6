"""sha256 of finished files on a worker thread, so hashing overlaps the conversion instead of following it.

A bundle hashes its input (the checkpoint's weight files, 1.5 GB for a 0.6B model) and every file it writes:
about a second per 1.5 GB here. hashlib releases the GIL while it hashes, so one worker thread runs beside the
GGUF/ONNX writing and the golden run on the other core. A result is used only if the file's size and mtime are
what they were when it was submitted; otherwise the file is hashed again in the caller.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from smt_convert.runtime.bundle import sha256_file

CHUNK = 1 << 22  # bytes read at a time; a stop request is seen between chunks


class BackgroundHashes:
    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: dict[Path, tuple[tuple[int, int], Future]] = {}
        self._stop = threading.Event()

    def submit(self, *paths: Path) -> None:
        for path in paths:
            key = Path(path).resolve()
            if key not in self._pending:
                self._pending[key] = (_stamp(key), self._pool.submit(self._hash, key))

    def sha256(self, path: Path) -> str:
        key = Path(path).resolve()
        stamp, future = self._pending.get(key, (None, None))
        if future is not None and stamp == _stamp(key):
            digest = future.result()
            if digest is not None:
                return digest
        return sha256_file(key)

    def close(self) -> None:
        """Stop: what has not started is dropped and a running hash ends at its next chunk (a failed or
        interrupted conversion does not wait for hashes nobody will read)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _hash(self, path: Path) -> str | None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                if self._stop.is_set():
                    return None
                h.update(block)
        return h.hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
