"""Read-only access to a GGUF file: metadata as python values, tensors as float32 numpy arrays.

The file is memory-mapped by `gguf.GGUFReader`, so opening it is cheap and a tensor is only read
(and dequantised) when asked for. Tensors come back in numpy/torch order: GGUF stores dimensions
as ggml `ne` (fastest first), the reader reverses them, so a torch Linear weight [out, in] is
returned as [out, in].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize

from smt_convert.runtime.errors import SmtError, where

_MISSING = object()

# Types the reader already exposes as typed numpy arrays (not byte blocks) that `dequantize`
# does not know; `tensor` just casts them so callers always get float32.
_PLAIN_TYPES = {
    GGMLQuantizationType.I8,
    GGMLQuantizationType.I16,
    GGMLQuantizationType.I32,
    GGMLQuantizationType.I64,
    GGMLQuantizationType.F64,
}


class GGUFModel:
    """One GGUF file. `cache_tensors=True` keeps every `tensor()` result (costs the model's f32 size)."""

    def __init__(self, path, cache_tensors: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise SmtError(f"{where(self.path)}: file not found")
        try:
            self._reader = GGUFReader(self.path, "r")
        except (ValueError, OSError, KeyError, IndexError) as e:
            raise SmtError(f"{where(self.path)}: not a readable GGUF file ({e})") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._cache: dict[str, np.ndarray] | None = {} if cache_tensors else None
        self.arch = str(self.meta("general.architecture"))

    # ---- metadata -------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        """Expand the `{arch}` placeholder so callers can write `meta("{arch}.block_count")`."""
        if "{arch}" in key:
            key = key.replace("{arch}", self.arch)
        return key

    def has_meta(self, key: str) -> bool:
        return self._key(key) in self._reader.fields

    def meta(self, key: str, default=_MISSING):
        """Metadata value as python: str, int/float/bool, or a list for arrays."""
        key = self._key(key)
        field = self._reader.fields.get(key)
        if field is None:
            if default is _MISSING:
                raise SmtError(f"{where(self.path, key)}: missing metadata key")
            return default
        return field.contents()

    @property
    def tokens(self) -> list[str]:
        return self.meta("tokenizer.ggml.tokens")

    @property
    def token_types(self) -> list[int]:
        return self.meta("tokenizer.ggml.token_type")

    # ---- tensors --------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_types(self) -> dict[str, str]:
        """ggml type name per tensor (e.g. "Q8_0"), for reports."""
        return {name: t.tensor_type.name for name, t in self._tensors.items()}

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """Shape in numpy order, without reading the data."""
        return tuple(int(d) for d in reversed(self._info(name).shape.tolist()))

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array in numpy order. F32 tensors are a read-only view of the file."""
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        info = self._info(name)
        if info.tensor_type in _PLAIN_TYPES:
            arr = np.asarray(info.data, dtype=np.float32)
        else:
            try:
                arr = dequantize(info.data, info.tensor_type)
            except NotImplementedError:
                raise SmtError(
                    f"{where(self.path, name)}: tensor type {info.tensor_type.name} cannot be dequantised by gguf"
                ) from None
        arr = arr.reshape(self.tensor_shape(name))
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if self._cache is not None:
            self._cache[name] = arr
        return arr

    def _info(self, name: str):
        t = self._tensors.get(name)
        if t is None:
            raise SmtError(f"{where(self.path, name)}: tensor not found")
        return t

    def __repr__(self) -> str:
        return f"GGUFModel({str(self.path)!r}, arch={self.arch!r}, tensors={len(self._tensors)})"
