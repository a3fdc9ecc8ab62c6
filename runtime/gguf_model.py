"""Read-only access to a GGUF file: metadata as python values, tensors as float32 numpy arrays.

The file is memory-mapped and its header parsed here (a lean parser: gguf.GGUFReader would cost ~300 MB
and seconds for a real vocabulary), so opening it is cheap and a tensor is only read (and dequantised)
when asked for. `tensor()` dequantises a whole tensor (tests, small tensors); the decoders read weights
through `runtime/weights.py` instead, which uses `raw()` (the mapped bytes) so a decoder never holds the
model in float32. Tensors come back in numpy/torch order: GGUF stores dimensions as ggml `ne` (fastest
first), they are reversed, so a torch Linear weight [out, in] is returned as [out, in].
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
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


# ---- a lean GGUF parser ------------------------------------------------------------------------
# gguf.GGUFReader builds numpy views for every element of every metadata array: for a real vocabulary
# (151k tokens + merges) that is ~300 MB of RSS and seconds of load time before any weight is touched.
# This parser reads the same little-endian GGUF v2/v3 layout but keeps string arrays as (offset, count)
# until asked, and numeric arrays as one numpy view each.

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
_TYPED = {  # tensor types the data is exposed as typed arrays (as GGUFReader does); others as raw bytes
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


class _LazyStrings:
    """A string array in the file, decoded on first use."""

    def __init__(self, buf, offset: int, count: int):
        self.buf, self.offset, self.count = buf, offset, count
        self._value: list[str] | None = None

    def value(self) -> list[str]:
        if self._value is None:
            out, pos, buf = [], self.offset, self.buf
            for _ in range(self.count):
                (n,) = struct.unpack_from("<Q", buf, pos)
                out.append(bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"))
                pos += 8 + n
            self._value = out
        return self._value


class _TensorInfo:
    __slots__ = ("name", "shape", "tensor_type", "data")

    def __init__(self, name, shape, tensor_type, data):
        self.name, self.shape, self.tensor_type, self.data = name, shape, tensor_type, data


def _parse(path: Path):
    """(metadata dict, {name: _TensorInfo}, file map). Values: python scalars/str, lists, or lazy strings."""
    mapped = np.memmap(path, mode="r")
    buf = memoryview(mapped)  # type: ignore[arg-type]  # numpy declares the buffer protocol to mypy only for Python 3.12+
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("bad magic")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} (or a big-endian file)")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24

    def string():
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        out = bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace")
        pos += 8 + n
        return out

    def value(vtype):
        nonlocal pos
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if etype == _STRING:
                lazy = _LazyStrings(buf, pos, count)
                for _ in range(count):  # skip over the strings (lengths only)
                    (n,) = struct.unpack_from("<Q", buf, pos)
                    pos += 8 + n
                return lazy
            if etype == _ARRAY:
                return [value(_ARRAY) for _ in range(count)]
            arr = np.frombuffer(buf, dtype=_NP[etype], count=count, offset=pos)
            pos += arr.nbytes
            return arr
        fmt = _SCALARS[vtype]
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    meta = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        meta[key] = value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        ttype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, dims, GGMLQuantizationType(ttype), offset))
    align = int(meta.get("general.alignment", 32))
    start = -(-pos // align) * align
    tensors = {}
    for name, dims, ttype, offset in infos:
        shape = tuple(int(d) for d in reversed(dims))  # numpy order
        if ttype in _TYPED:
            dtype, row = np.dtype(_TYPED[ttype]), shape
        else:
            block, size = GGML_QUANT_SIZES[ttype]
            dtype, row = np.dtype(np.uint8), shape[:-1] + (shape[-1] // block * size,)
        count = int(np.prod(row, dtype=np.int64))
        if start + offset + count * dtype.itemsize > len(mapped):
            raise ValueError(f"tensor {name} runs past the end of the file")
        data = np.ndarray(row, dtype=dtype, buffer=mapped, offset=start + offset)
        tensors[name] = _TensorInfo(name, dims, ttype, data)
    return meta, tensors, mapped


def _python(v):
    if isinstance(v, _LazyStrings):
        return list(v.value())
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [_python(x) for x in v]
    return v


class GGUFModel:
    """One GGUF file. `cache_tensors=True` keeps every `tensor()` result (costs the model's f32 size)."""

    def __init__(self, path, cache_tensors: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise SmtError(f"{where(self.path)}: file not found")
        try:
            self._meta, self._tensors, self._map = _parse(self.path)
        except (ValueError, OSError, KeyError, IndexError, struct.error, TypeError) as e:
            raise SmtError(f"{where(self.path)}: not a readable GGUF file ({e})") from None
        self._cache: dict[str, np.ndarray] | None = {} if cache_tensors else None
        self.arch = str(self.meta("general.architecture"))

    # ---- metadata -------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        """Expand the `{arch}` placeholder so callers can write `meta("{arch}.block_count")`."""
        if "{arch}" in key:
            key = key.replace("{arch}", self.arch)
        return key

    def has_meta(self, key: str) -> bool:
        return self._key(key) in self._meta

    def meta(self, key: str, default=_MISSING):
        """Metadata value as python: str, int/float/bool, or a list for arrays."""
        key = self._key(key)
        if key not in self._meta:
            if default is _MISSING:
                raise SmtError(f"{where(self.path, key)}: missing metadata key")
            return default
        return _python(self._meta[key])

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
        return tuple(int(d) for d in reversed(self._info(name).shape))

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

    def raw(self, name: str) -> tuple[np.ndarray, GGMLQuantizationType]:
        """The tensor's data as mapped (no copy): a typed array for F32/F16/integer types, else raw block
        bytes [..., bytes_per_row], rows first (numpy order); and its ggml type."""
        info = self._info(name)
        return info.data, info.tensor_type

    @property
    def mapping(self) -> np.ndarray:
        """The whole file's memory map (for releasing pages once a tensor has been copied elsewhere)."""
        return self._map

    def _info(self, name: str):
        t = self._tensors.get(name)
        if t is None:
            raise SmtError(f"{where(self.path, name)}: tensor not found")
        return t

    def __repr__(self) -> str:
        return f"GGUFModel({str(self.path)!r}, arch={self.arch!r}, tensors={len(self._tensors)})"
