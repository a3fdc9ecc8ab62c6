"""Weights for the numpy decoders, read from the memory-mapped GGUF as they are used, within a memory budget.

The decoders never hold a float32 copy of the whole model. They get, from one `WeightStore` per GGUF:
- `Linear` (y = x @ W.T, W [out, in], optionally several tensors stacked by rows, e.g. q/k/v), built lazily on
  its first call in the cheapest form that fits the budget;
- `Linear.rows(ids)`: dequantised rows for embedding lookups (the table itself is never dequantised whole);
- `Experts`: a 3-D [n_expert, out, in] tensor as one `Linear` per expert, made only when an expert is selected;
- `vector`: small 1-D tensors (norms, biases) as float32.

How a `Linear` computes, decided on its first call (in that order):
1. F32 tensors: matmul straight on the memory-mapped file (no copy; the page cache holds the bytes). F16
   tensors likewise, through ONNX Runtime (Cast + Gemm inside one call, exact; `qmatmul.HalfMatMul`).
2. Q8_0 / Q4_0: ONNX Runtime MatMulNBits on the quantised weights (`qmatmul.py`: exact up to float32
   summation order), if its packed size (1.25 / 0.625 bytes per weight) fits the remaining budget.
3. Any other type (F16, BF16, Q4_1, Q5_0, Q5_1, ...), and MoE experts: dequantised once to a float32 copy if
   that fits the remaining budget.
4. Otherwise streamed: every call dequantises slabs of rows (STREAM_ELEMS floats each), multiplies and drops them, so
   a call costs at most one slab of float32 however large the matrix.
After 2 or 3 the source pages are dropped from the process (madvise DONTNEED on the read-only mapping;
they stay in the page cache), so RSS holds the packed copy, not both.

Why a fill-once budget and not an LRU: a decoder touches every layer once per token, in order. Under a cyclic
access pattern an LRU smaller than the working set evicts every entry just before it is needed again (hit
rate 0); keeping the first entries that fit and streaming the rest gives the optimal hit rate, budget /
working set, with no eviction churn. The budget (bytes) is the constructor's `budget`, else
SMT_RUNTIME_MEMORY_BUDGET ("768M", "2G", "1500000000"), else DEFAULT_BUDGET (1 GiB: a 0.6B Q8_0 decoder
packs into ~0.7 GiB, so it runs fully packed with peak RSS well under the GGUF's size + 1 GiB; a bigger
model packs what fits and streams the rest). Budget 0 streams everything (slowest, smallest). The budget
counts kept weights only; the process also holds still-mapped file pages (at most the GGUF's size), the
KV cache and activations. Memory beyond the budget does not grow with the number of layers.

Threads: ONNX Runtime sessions use `threads` (constructor, else SMT_RUNTIME_THREADS, else OMP_NUM_THREADS,
else the CPU count); numpy's BLAS follows OMP_NUM_THREADS as usual. SMT_RUNTIME_QMATMUL (or `quant_matmul`) picks
path 2's kernel:
"exact" (default; see qmatmul.py), "int8" (opt-in, several times faster: Q8_0 stays 8-bit and the kernel
quantises the activations to int8 per block of 32, much as llama.cpp itself does for Q8_0 weights, so logits
move by about the Q8_0 storage error and no longer equal a float32 reference), or "0" (numpy paths only).
"""

from __future__ import annotations

import mmap
import os

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

from smt_convert.runtime import qmatmul
from smt_convert.runtime.errors import SmtError, where

DEFAULT_BUDGET = 1 << 30
ENV_BUDGET = "SMT_RUNTIME_MEMORY_BUDGET"
ENV_THREADS = "SMT_RUNTIME_THREADS"
ENV_QMATMUL = "SMT_RUNTIME_QMATMUL"
STREAM_ELEMS = 1 << 22  # float32 elements dequantised at a time when streaming (16 MiB)

_PLAIN = {Q.F32, Q.F16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64}  # the reader gives these as typed arrays


def parse_bytes(text) -> int:
    """'768M', '2G', '1.5g', '4096K' or a plain number of bytes."""
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:] if s else "", 1)
    try:
        value = float(s[:-1] if mult > 1 else s)
    except ValueError:
        raise SmtError(f"{ENV_BUDGET}: cannot read {text!r} as a size (e.g. 768M, 2G, 1000000000)") from None
    if value < 0:
        raise SmtError(f"{ENV_BUDGET}: {text!r} is negative")
    return int(value * mult)


def dequantize_rows(data: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 [rows, in] from GGUF rows as the reader exposes them (typed array or raw block bytes)."""
    if qtype in _PLAIN:
        return np.asarray(data, dtype=np.float32)
    try:
        return dequantize(np.asarray(data), qtype).astype(np.float32, copy=False)
    except NotImplementedError:
        raise SmtError(f"tensor type {qtype.name} cannot be dequantised by gguf") from None


class WeightStore:
    """Hands out the decoder's weights from one `GGUFModel` and accounts for the RAM they take."""

    def __init__(
        self, model, budget: int | str | None = None, threads: int | None = None, quant_matmul: bool | str | None = None
    ):
        self.model = model
        if budget is None:
            budget = os.environ.get(ENV_BUDGET, DEFAULT_BUDGET)
        self.budget = parse_bytes(budget)
        self.threads = int(
            threads or os.environ.get(ENV_THREADS) or os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1
        )
        if quant_matmul is None:
            quant_matmul = os.environ.get(ENV_QMATMUL, "exact")
        mode = {
            "0": None,
            "off": None,
            "false": None,
            "1": "exact",
            "exact": "exact",
            "on": "exact",
            "true": "exact",
            "int8": "int8",
        }.get(str(quant_matmul).lower())
        if mode is None and str(quant_matmul).lower() not in ("0", "off", "false"):
            raise SmtError(f"{ENV_QMATMUL}: {quant_matmul!r} is not one of exact, int8, 0")
        self.quant_matmul = mode if mode and qmatmul.available() else None  # None: numpy paths only
        self.cached_bytes = 0  # charged against the budget: packed and float32 copies held
        self.kinds: dict[str, int] = {}  # how many Linear kernels took each path (for reports and tests)

    # ---- budget -------------------------------------------------------------------------------

    def admit(self, nbytes: int) -> bool:
        """Reserve `nbytes` of the budget for a copy that is kept; False if it does not fit."""
        if self.cached_bytes + nbytes > self.budget:
            return False
        self.cached_bytes += nbytes
        return True

    def release_pages(self, arr: np.ndarray) -> None:
        """Drop the file pages under `arr` (a view of the mapping) from this process; harmless if impossible."""
        mm = getattr(getattr(self.model, "mapping", None), "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = self.model.mapping.ctypes.data
        start = arr.ctypes.data - base
        end = start + arr.nbytes
        if start < 0 or end > len(mm):
            return
        page = mmap.PAGESIZE
        start = -(-start // page) * page
        end = end // page * page
        if end > start:
            try:
                mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):
                pass

    # ---- tensors -------------------------------------------------------------------------------

    def _raw(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, Q]:
        """The mapped data (rows first, as the reader has it) after checking the shape, and its type."""
        m = self.model
        if not m.has(name):
            raise SmtError(f"{where(m.path, name)}: tensor not found")
        got = m.tensor_shape(name)
        if got != tuple(shape):
            raise SmtError(f"{where(m.path, name)}: shape {list(got)}, expected {list(shape)}")
        data, qtype = m.raw(name)
        return data, qtype

    def has(self, name: str) -> bool:
        return self.model.has(name)

    def vector(self, name: str, *shape: int) -> np.ndarray:
        """A small tensor (norm weights, biases, per-head constants) as float32 [*shape]."""
        data, qtype = self._raw(name, shape)
        return dequantize_rows(data, qtype).reshape(shape)

    def linear(self, *names: str, shapes: list[tuple[int, int]]) -> "Linear":
        """y = x @ W.T with W the named [out, in] tensors stacked by rows (one name: just that tensor)."""
        parts = []
        for name, shape in zip(names, shapes, strict=True):
            data, qtype = self._raw(name, shape)
            parts.append(_Part(name, data.reshape(shape[0], -1), qtype))
        return Linear(self, parts, shapes[0][1])

    def token_io(self, vocab: int, hidden: int) -> tuple["Linear", np.ndarray, "Linear"]:
        """(token_embd, output_norm, output): the embedding table (used by rows) and the head (used as a
        Linear); without output.weight the head is tied and is the very same object as the table."""
        token_embd = self.linear("token_embd.weight", shapes=[(vocab, hidden)])
        output_norm = self.vector("output_norm.weight", hidden)
        output = token_embd
        if self.has("output.weight"):
            output = self.linear("output.weight", shapes=[(vocab, hidden)])
        return token_embd, output_norm, output

    def experts(self, name: str, n_expert: int, out: int, inp: int) -> "Experts":
        data, qtype = self._raw(name, (n_expert, out, inp))
        return Experts(self, name, data.reshape(n_expert, out, -1), qtype, inp)


class _Part:
    """One tensor's rows in the mapping: `data` [out, in] typed or [out, bytes] raw blocks."""

    def __init__(self, name: str, data: np.ndarray, qtype: Q):
        self.name, self.data, self.qtype = name, data, qtype
        self.rows = data.shape[0]


class Linear:
    """y = x @ W.T over GGUF rows, W [out_features, in_features]; see the module docstring for how."""

    def __init__(self, store: WeightStore, parts: list[_Part], in_features: int, allow_quant_matmul: bool = True):
        self.store = store
        self.parts = parts
        self.in_features = in_features
        self.out_features = sum(p.rows for p in parts)
        self.sizes = [p.rows for p in parts]
        self._allow_qmm = allow_quant_matmul
        self._kernels: list | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._kernels is None:
            self._kernels = self._build()
        x = np.asarray(x, dtype=np.float32)
        outs = [k(x) for k in self._kernels]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        """The outputs of each stacked tensor separately (q, k, v of a fused projection, ...)."""
        y = self(x)
        return np.split(y, np.cumsum(self.sizes)[:-1], axis=-1)

    def rows(self, ids) -> np.ndarray:
        """float32 rows W[ids] (embedding lookup), dequantising only those rows."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.out_features):
            raise SmtError(f"token_ids: id out of range [0, {self.out_features})")
        out = np.empty((ids.size, self.in_features), np.float32)
        start = 0
        for p in self.parts:
            sel = (ids >= start) & (ids < start + p.rows)
            if sel.any():
                out[sel] = dequantize_rows(p.data[ids[sel] - start], p.qtype).reshape(-1, self.in_features)
            start += p.rows
        return out

    def _build(self) -> list:
        """Choose each kernel once (first call), charging the budget for whatever is kept."""
        store, K = self.store, self.in_features
        kernels, i = [], 0
        while i < len(self.parts):
            j = i + 1  # a run of stacked parts of one type shares one quantised kernel
            while j < len(self.parts) and self.parts[j].qtype == self.parts[i].qtype:
                j += 1
            run, qtype = self.parts[i:j], self.parts[i].qtype
            rows = sum(p.rows for p in run)
            if (
                self._allow_qmm
                and store.quant_matmul
                and qmatmul.supported(qtype, K)
                and store.admit(qmatmul.packed_nbytes(qtype, rows, K, store.quant_matmul))
            ):
                kernels.append(
                    qmatmul.QuantMatMul(
                        [p.data for p in run],
                        qtype,
                        K,
                        store.threads,
                        release=store.release_pages,
                        mode=store.quant_matmul,
                    )
                )
                store.kinds["quant_matmul"] = store.kinds.get("quant_matmul", 0) + 1
            else:
                kernels += [self._numpy_kernel(p) for p in run]
            i = j
        return kernels

    def _numpy_kernel(self, p: _Part):
        store = self.store
        if p.qtype == Q.F32:
            w = p.data
            kind = "mapped_f32"
        elif p.qtype == Q.F16 and store.quant_matmul:
            store.kinds["mapped_f16"] = store.kinds.get("mapped_f16", 0) + 1
            return qmatmul.HalfMatMul(np.asarray(p.data), store.threads, release=store.release_pages)
        elif store.admit(p.rows * self.in_features * 4):
            w = dequantize_rows(p.data, p.qtype).reshape(p.rows, self.in_features)
            store.release_pages(p.data)
            kind = "cached_f32"
        else:
            store.kinds["streamed"] = store.kinds.get("streamed", 0) + 1
            return _Streamed(p, self.in_features)
        store.kinds[kind] = store.kinds.get(kind, 0) + 1
        return lambda x: x @ w.T


class _Streamed:
    """x @ W.T dequantising slabs of rows per call; holds nothing between calls."""

    def __init__(self, part: _Part, in_features: int):
        self.part, self.K = part, in_features
        self.slab = max(1, STREAM_ELEMS // in_features)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.part
        out = np.empty(x.shape[:-1] + (p.rows,), np.float32)
        for start in range(0, p.rows, self.slab):
            w = dequantize_rows(p.data[start : start + self.slab], p.qtype).reshape(-1, self.K)
            out[..., start : start + w.shape[0]] = x @ w.T
        return out


class Experts:
    """A [n_expert, out, in] tensor; `experts[e]` is expert e's Linear, built (and charged) on first use.
    Experts go through the numpy paths (cached float32 within the budget, else streamed): one ONNX Runtime
    session per expert would multiply sessions and threads by the expert count."""

    def __init__(self, store: WeightStore, name: str, data: np.ndarray, qtype: Q, in_features: int):
        self.store, self.name, self.data, self.qtype, self.in_features = store, name, data, qtype, in_features
        self._linears: dict[int, Linear] = {}

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, e: int) -> Linear:
        e = int(e)
        lin = self._linears.get(e)
        if lin is None:
            part = _Part(f"{self.name}[{e}]", self.data[e], self.qtype)
            lin = self._linears[e] = Linear(self.store, [part], self.in_features, allow_quant_matmul=False)
        return lin
