"""Matrix products on GGUF Q8_0 / Q4_0 weights without a float32 copy, through ONNX Runtime's
`com.microsoft::MatMulNBits` (CPU), so a quantised decoder's weights stay about their file size in RAM.

Why this shape (measured with onnxruntime 1.32 on x86-64, one thread):
- MatMulNBits with bits=8 computes exactly (float32 accumulation of dequantised weights) only on a slow path:
  ~20 ms for a 3072x1024 matvec, 35x numpy on cached float32. Its fast bits=8 path needs
  accuracy_level=4, which quantises the *activations* to int8 (errors ~0.4% of the logit scale), so it is
  not used.
- MatMulNBits with bits=4 and accuracy_level 0 (activations stay float32) is fast (about numpy's float32
  speed, 0.74 ms for that matvec) and exact up to float32 summation order (max |diff| vs a float32 matmul on
  dequantised weights ~1e-6 relative).
So:
- Q4_0 (w = d * (q - 8), 32 nibbles per block) is MatMulNBits bits=4 with the default zero point 8; only the
  nibble order is repacked (GGUF stores elements 0..15 in low nibbles, 16..31 in high nibbles; MatMulNBits
  wants element 2i low and 2i+1 high).
- Q8_0 (w = d * q, int8 q) is split exactly into two 4-bit halves: with u = q + 128 = 16 * hi + lo,
  w = 16d * (hi - 8) + d * (lo - 0). One MatMulNBits over K' = 2K computes [x, x] @ [W_hi | W_lo]^T, its blocks
  carrying scales 16d / d and zero points 8 / 0. Every dequantised value is exact in float32 (a power-of-two
  times d, and d times a small integer), so only the summation order differs from `x @ dequantize(W).T`.
  Cost: 1.25 bytes per weight (file: 1.0625).

Opt-in mode "int8" (SMT_RUNTIME_QMATMUL=int8) takes the fast bits=8 path anyway: Q8_0 as MatMulNBits bits=8
(B = q + 128, default zero point 128, 1.125 bytes per weight) and Q4_0 as above, both with accuracy_level=4,
which quantises the activations to int8 per block of 32 inside the kernel. That is close to what llama.cpp
itself does with Q8_0 weights (it quantises activations to Q8_0) and measured 3-4x faster per token than
"exact", but logits move (NMSE ~4e-4 on the tiny random test model, the size of the Q8_0 storage error
itself), so it is not the default (and `verify` should run with the default).

The ONNX model (one node, weights as initializers) is serialised here by hand, so the runtime needs neither
the `onnx` package nor torch. Large matrices are cut into row slabs of at most SLAB_WEIGHTS weights, one
session each, which bounds the transient memory while ONNX Runtime copies and prepacks a slab; each slab's
source pages can be dropped as soon as it is packed. Sessions: arena off, spinning off (there are ~130 of
them for a 0.6B decoder, each with its own small thread pool), graph optimisations off (nothing to fuse).
Measured RAM per session ~= its packed bytes (after dropping the python wrapper's copy of the model bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

SLAB_WEIGHTS = 1 << 23  # weights per session (8M: ~10 MB of packed Q8_0)
QBLOCK = 32
SUPPORTED = (Q.Q8_0, Q.Q4_0)

# ---- minimal protobuf writer (just what an ONNX ModelProto with one node needs) --------------------
# Messages are lists of byte chunks, joined once at the end, so the weight bytes are copied once.


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field: int, value: int) -> list:
    return [_varint(field << 3) + _varint(value)]


def _len(chunks: list) -> int:
    return sum(memoryview(c).nbytes for c in chunks)


def _msg(field: int, payload) -> list:
    """A length-delimited field: payload is str, bytes, a numpy buffer or a list of chunks."""
    if isinstance(payload, str):
        payload = payload.encode()
    chunks = payload if isinstance(payload, list) else [payload]
    return [_varint(field << 3 | 2) + _varint(_len(chunks))] + chunks


_FLOAT, _UINT8, _FLOAT16 = 1, 2, 10  # TensorProto.DataType


def _value_info(name: str, elem_type: int, dims) -> list:
    shape = []
    for d in dims:
        shape += _msg(1, _msg(2, d) if isinstance(d, str) else _int(1, d))
    tensor_type = _int(1, elem_type) + _msg(2, shape)
    return _msg(1, name) + _msg(2, _msg(1, tensor_type))


def _tensor(name: str, arr: np.ndarray) -> list:
    elem = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint8): _UINT8}[arr.dtype]
    dims = [c for d in arr.shape for c in _int(1, d)]
    raw = memoryview(np.ascontiguousarray(arr)).cast("B")  # type: ignore[arg-type]  # numpy declares the buffer protocol to mypy only for Python 3.12+
    return dims + _int(2, elem) + _msg(8, name) + _msg(9, raw)


def _node(op: str, inputs, outputs, domain: str = "", **attrs) -> list:
    out = [c for i in inputs for c in _msg(1, i)] + [c for o in outputs for c in _msg(2, o)] + _msg(4, op)
    for k, v in attrs.items():
        out += _msg(5, _msg(1, k) + _int(3, int(v)) + _int(20, 2))  # AttributeProto of type INT
    return out + (_msg(7, domain) if domain else [])


def matmulnbits_model(
    K: int,
    N: int,
    B: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    duplicate_input: bool,
    bits: int = 4,
    accuracy_level: int = 0,
) -> bytes:
    """ONNX bytes for Y[M, N] = A[M, K] @ W^T with W in MatMulNBits form (K' = 2K if duplicate_input)."""
    k_inner = 2 * K if duplicate_input else K
    graph, a = [], "A"
    if duplicate_input:
        graph += _msg(1, _node("Concat", ["A", "A"], ["A2"], axis=1))
        a = "A2"
    inputs = [a, "B", "S"] + (["Z"] if zero_points is not None else [])
    graph += _msg(
        1,
        _node(
            "MatMulNBits",
            inputs,
            ["Y"],
            domain="com.microsoft",
            K=k_inner,
            N=N,
            bits=bits,
            block_size=QBLOCK,
            accuracy_level=accuracy_level,
        ),
    )
    graph += _msg(2, "qmatmul") + _msg(5, _tensor("B", B)) + _msg(5, _tensor("S", scales))
    if zero_points is not None:
        graph += _msg(5, _tensor("Z", zero_points))
    graph += _msg(11, _value_info("A", _FLOAT, ["M", K])) + _msg(12, _value_info("Y", _FLOAT, ["M", N]))
    opsets = _msg(8, _msg(1, "") + _int(2, 17)) + _msg(8, _msg(1, "com.microsoft") + _int(2, 1))
    return b"".join(_int(1, 8) + opsets + _msg(7, graph))


# ---- GGUF blocks -> MatMulNBits operands -----------------------------------------------------------


def _pack_nibbles(v: np.ndarray) -> np.ndarray:
    """[..., 2n] values < 16 -> [..., n] bytes, element 2i in the low nibble (MatMulNBits order)."""
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def to_matmulnbits(raw: np.ndarray, qtype: Q, K: int, mode: str = "exact"):
    """GGUF rows [N, bytes] -> (B [N, blocks, blob] uint8, scales [N * blocks] f32, zero points or None, dup,
    bits). mode "int8" keeps Q8_0 as 8-bit (zero point 128: B = q + 128) for the int8-activation kernel."""
    N, nb = raw.shape[0], K // QBLOCK
    if qtype == Q.Q8_0 and mode == "int8":
        blocks = raw.reshape(N, nb, 34)
        d: np.ndarray = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).reshape(-1).astype(np.float32)
        return blocks[:, :, 2:] ^ np.uint8(0x80), d, None, False, 8
    if qtype == Q.Q8_0:
        blocks = raw.reshape(N, nb, 34)
        d = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).reshape(N, nb).astype(np.float32)
        u = blocks[:, :, 2:] ^ np.uint8(0x80)  # int8 q -> u = q + 128 = 16 hi + lo
        even, odd = u[..., 0::2], u[..., 1::2]
        B = np.empty((N, 2 * nb, 16), np.uint8)
        np.bitwise_or(even >> 4, odd & np.uint8(0xF0), out=B[:, :nb])  # hi nibbles, pairs packed
        np.bitwise_or(even & np.uint8(15), (odd & np.uint8(15)) << 4, out=B[:, nb:])  # lo nibbles
        del u, even, odd
        S = np.concatenate([d * np.float32(16), d], axis=1).reshape(-1)
        nib = np.array([8] * nb + [0] * nb, np.uint8)  # zero points: hi blocks 8, lo blocks 0
        Z = np.broadcast_to(_pack_nibbles(nib), (N, nb))
        return B, S, np.ascontiguousarray(Z), True, 4
    if qtype == Q.Q4_0:
        blocks = raw.reshape(N, nb, 18)
        d = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).reshape(N, nb).astype(np.float32)
        qs = blocks[:, :, 2:]
        vals = np.concatenate([qs & np.uint8(15), qs >> 4], axis=2)  # GGUF element order 0..31
        return _pack_nibbles(vals), d.reshape(-1), None, False, 4
    raise ValueError(f"{qtype.name} has no MatMulNBits form")


def packed_nbytes(qtype: Q, N: int, K: int, mode: str = "exact") -> int:
    """RAM the packed form of an [N, K] weight takes (what the memory budget is charged)."""
    nb = K // QBLOCK
    if qtype == Q.Q8_0 and mode == "int8":
        return N * (nb * 32 + nb * 4)
    if qtype == Q.Q8_0:
        return N * (2 * nb * 16 + 2 * nb * 4 + nb)
    return N * (nb * 16 + nb * 4)


def supported(qtype: Q, K: int) -> bool:
    return qtype in SUPPORTED and K % QBLOCK == 0


class QuantMatMul:
    """x @ W.T for GGUF Q8_0/Q4_0 rows [N, bytes] (one tensor, or several of one type stacked by rows)."""

    def __init__(self, raws: list[np.ndarray], qtype: Q, K: int, threads: int, release=None, mode: str = "exact"):
        """`release(view)`, if given, is called on each slab of the source once it is packed (to drop its
        file pages right away, so the peak is the packed model plus one slab, not plus the file)."""
        import onnxruntime as ort

        self.K = K
        self.N = sum(r.shape[0] for r in raws)
        self.nbytes = packed_nbytes(qtype, self.N, K, mode)
        accuracy = {"exact": 0, "int8": 4}[mode]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # nothing to fuse
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # many small sessions
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = False  # outputs are returned to numpy; an arena per session would hold its peak
        bytes_per_row = raws[0].shape[1]
        rows_per_slab = max(1, SLAB_WEIGHTS // K)
        self.sessions = []
        for raw in raws:
            for start in range(0, raw.shape[0], rows_per_slab):
                part = np.asarray(raw[start : start + rows_per_slab]).reshape(-1, bytes_per_row)
                B, S, Z, dup, bits = to_matmulnbits(part, qtype, K, mode)
                if release is not None:
                    release(part)
                model = matmulnbits_model(K, part.shape[0], B, S, Z, dup, bits, accuracy)
                del B, S, Z
                sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                # The python wrapper keeps the model bytes only to rebuild the session on a provider change
                # (which never happens here); the C++ session has its own copy. Drop ours.
                sess._model_bytes = None
                self.sessions.append(sess)
                del model
                trim_heap()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [s.run(None, {"A": x})[0] for s in self.sessions]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)


# ---- F16 weights: Cast + Gemm with the weight fed from the mapped file -------------------------------------


def half_gemm_model(K: int) -> bytes:
    """ONNX bytes for Y[M, N] = A[M, K] @ float32(W[N, K]).T, W an fp16 *input* (no initializer)."""
    graph = _msg(1, _node("Cast", ["W"], ["Wf"], to=_FLOAT)) + _msg(1, _node("Gemm", ["A", "Wf"], ["Y"], transB=1))
    graph += _msg(2, "half_gemm")
    graph += _msg(11, _value_info("A", _FLOAT, ["M", K])) + _msg(11, _value_info("W", _FLOAT16, ["N", K]))
    graph += _msg(12, _value_info("Y", _FLOAT, ["M", "N"]))
    return b"".join(_int(1, 8) + _msg(8, _msg(1, "") + _int(2, 17)) + _msg(7, graph))


class HalfMatMul:
    """x @ W.T for F16 rows W [N, K] read straight from the memory-mapped GGUF: ONNX Runtime converts to
    float32 inside the call (exact) and multiplies, several times faster than numpy's float16 conversion
    (measured 2.1 ms vs 9.3 ms for a 3072x1024 matvec) and with no copy kept, so no budget is charged.

    Memory: the call runs over slabs of at most SLAB_WEIGHTS rows x K, so the float32 cast inside onnxruntime
    is one slab (32 MiB), not the whole matrix (a tied 151936 x 1024 output layer would be 594 MiB); and, given
    `release`, each slab's file pages are dropped from the process after use (they stay in the page cache), so
    RSS does not grow to the file's size as a token touches every layer. One session per K, shared."""

    _sessions: dict[tuple[int, int], Any] = {}

    def __init__(self, w: np.ndarray, threads: int, release=None):
        self.w = w
        self.release = release
        self.rows_per_slab = max(1, SLAB_WEIGHTS // w.shape[1])
        key = (w.shape[1], threads)
        if key not in HalfMatMul._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3
            opts.enable_cpu_mem_arena = False
            HalfMatMul._sessions[key] = ort.InferenceSession(
                half_gemm_model(w.shape[1]), opts, providers=["CPUExecutionProvider"]
            )
        self.session = HalfMatMul._sessions[key]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        lead = x.shape[:-1]
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        outs = []
        for start in range(0, self.w.shape[0], self.rows_per_slab):
            slab = self.w[start : start + self.rows_per_slab]
            outs.append(self.session.run(None, {"A": a, "W": slab})[0])
            if self.release is not None:
                self.release(slab)
        y = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)
        return y.reshape(*lead, self.w.shape[0])


_AVAILABLE: bool | None = None
_LIBC: Any = None  # ctypes.CDLL once loaded; False without glibc


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc). Packing leaves tens of MB of freed temporaries per slab
    that glibc's raised mmap threshold would otherwise keep in the heap, so RSS would grow with the model."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def available() -> bool:
    """Whether this onnxruntime runs MatMulNBits on CPU (a contrib op; minimal builds may lack it)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            rng = np.random.default_rng(0)
            raw = np.zeros((2, 34), np.uint8)
            raw[:, :2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
            raw[:, 2:] = rng.integers(0, 256, (2, 32), dtype=np.uint8)
            mm = QuantMatMul([raw], Q.Q8_0, 32, threads=1)
            x = np.ones((1, 32), np.float32)
            w = raw[:, 2:].view(np.int8).astype(np.float32) * np.float32(0.5)
            _AVAILABLE = bool(np.allclose(mm(x), x @ w.T, rtol=0, atol=1e-4))
        except Exception:  # noqa: BLE001 - any failure means: use the numpy path
            _AVAILABLE = False
    return _AVAILABLE
