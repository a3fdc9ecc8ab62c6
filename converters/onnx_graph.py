"""Encoder graphs written node by node from the checkpoint's weights, with the ONNX project's own builder.

Nothing is traced and no torch module is instantiated: a plugin's graph builder receives a `GraphContext`
(onnxscript's `GraphBuilder` plus the weights and the compute precision) and writes the graph from its
config. Every initializer is an `onnx_ir.LazyTensor` bound to one checkpoint tensor, so it is read from the
safetensors file, converted (transform, dtype) and written when the model is saved, one tensor at a time:
building a graph costs the nodes, saving it costs about the largest tensor.

Precision: `fp32`; `fp16` with float32 graph I/O and LayerNorm, Softmax and reductions computed in float32
(the helpers below insert those casts; builders use them instead of the raw ops); `int8`, the fp32 graph with
every Linear as onnxruntime's dynamic quantisation writes it (weights int8, symmetric, one scale per tensor;
activations quantised at run time by DynamicQuantizeLinear; MatMulInteger), convolutions left float. Writing it
here, weight by weight, costs what the fp32 file costs; quantising a written fp32 file holds the whole model.

The layer helpers are the pieces every encoder here shares (Linear, LayerNorm, GELU, scaled-dot-product
attention); anything specific to one model family stays in that family's package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx_ir as ir
import onnxscript

OPSET = 18  # LayerNormalization needs 17; 18 is what onnxruntime of 2024 onwards (and the board's) runs
PRECISIONS = ("fp32", "fp16", "int8")
_IR_DTYPE = {"fp32": ir.DataType.FLOAT, "fp16": ir.DataType.FLOAT16, "int8": ir.DataType.FLOAT}
_NP_DTYPE = {"fp32": np.float32, "fp16": np.float16, "int8": np.float32}


@dataclass
class Weights:
    """Checkpoint tensors by canonical name: `load` reads one as float32, `shape` answers without reading."""

    load: Callable[[str], np.ndarray]
    shape: Callable[[str], tuple[int, ...]]


@dataclass
class EncoderGraph:
    """One encoder graph as a plugin builds it, before it is written.

    `check_feeds` are extra inputs the writer runs the written file on (for a dynamic axis: lengths other than
    any example), so a graph that only works at one shape is caught at conversion."""

    role: str
    model: ir.Model
    check_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


class GraphContext:
    """The builder a plugin writes one graph with: ops, weights, constants and precision-aware I/O."""

    def __init__(self, name: str, weights: Weights, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.dtype = _IR_DTYPE[precision]
        self.np_dtype = _NP_DTYPE[precision]
        self.weights = weights
        self.graph = ir.Graph([], [], nodes=[], opset_imports={"": OPSET}, name=name)
        self.builder = onnxscript.GraphBuilder(self.graph)
        self.op = self.builder.op
        self._params: dict[str, ir.Value] = {}
        self._consts = 0

    # ---- graph I/O: always float32 at the boundary (the board host feeds and reads float32) -------------

    def input(self, name: str, shape: Sequence[int | str]) -> ir.Value:
        value = ir.Value(name=name, shape=ir.Shape(list(shape)), type=ir.TensorType(ir.DataType.FLOAT))
        self.graph.inputs.append(value)
        return self.cast(value)

    def output(self, value: ir.Value, name: str, shape: Sequence[int | str] | None = None) -> None:
        out = self.op.Cast(value, to=ir.DataType.FLOAT) if self.precision == "fp16" else self.op.Identity(value)
        out.name = name
        out.type = ir.TensorType(ir.DataType.FLOAT)
        if shape is not None:
            out.shape = ir.Shape(list(shape))
        self.graph.outputs.append(out)

    def model(self) -> ir.Model:
        return ir.Model(self.graph, ir_version=10, producer_name="smt-convert")

    # ---- values -------------------------------------------------------------------------------------

    def cast(self, x: ir.Value, to: ir.DataType | None = None) -> ir.Value:
        """Cast to the compute dtype (or `to`); a no-op when it already is."""
        to = self.dtype if to is None else to
        return x if to == ir.DataType.FLOAT and self.precision != "fp16" else self.op.Cast(x, to=to)

    def to_fp32(self, x: ir.Value) -> ir.Value:
        return x if self.precision != "fp16" else self.op.Cast(x, to=ir.DataType.FLOAT)

    def from_fp32(self, x: ir.Value) -> ir.Value:
        return x if self.precision != "fp16" else self.op.Cast(x, to=self.dtype)

    def param(
        self,
        name: str,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        shape: Sequence[int] | None = None,
        fp32: bool = False,
        int8: bool = False,
    ) -> ir.Value:
        """The checkpoint tensor `name` (optionally transformed) as an initializer, read only when saved.

        `shape` is the transformed shape (default: the stored one). `fp32` keeps it float32 in fp16 graphs
        (LayerNorm weights, which the helpers apply in float32); `int8` stores the transform's int8 result."""
        key = f"{name}|{id(transform) if transform else ''}|{'32' if fp32 else ''}{'i8' if int8 else ''}"
        if key in self._params:
            return self._params[key]
        shape = tuple(shape) if shape is not None else tuple(self.weights.shape(name))
        np_dtype = np.int8 if int8 else np.float32 if fp32 else self.np_dtype
        load = self.weights.load

        def read() -> ir.TensorProtocol:
            arr = load(name)
            if transform is not None:
                arr = transform(arr)
            if tuple(arr.shape) != shape:
                raise ValueError(f"{name}: built {list(arr.shape)}, graph expects {list(shape)}")
            return ir.tensor(np.ascontiguousarray(arr, dtype=np_dtype))

        ir_dtype = ir.DataType.INT8 if int8 else ir.DataType.FLOAT if fp32 else self.dtype
        init_name = name if transform is None and not fp32 else f"{name}.{len(self._params)}"
        tensor = ir.LazyTensor(read, dtype=ir_dtype, shape=ir.Shape(shape), name=init_name)
        value = ir.Value(name=init_name, shape=ir.Shape(shape), type=ir.TensorType(ir_dtype), const_value=tensor)
        self.graph.register_initializer(value)
        self._params[key] = value
        return value

    def const(self, array, fp32: bool = False, name: str | None = None) -> ir.Value:
        """A constant computed here (not from the checkpoint): float arrays take the compute dtype unless `fp32`;
        8-bit integers keep their type (quantisation zero points), other integers become int64."""
        arr = np.asarray(array)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32 if fp32 else self.np_dtype)
        elif arr.dtype.kind in "iu" and arr.dtype.itemsize > 1:
            arr = arr.astype(np.int64)
        self._consts += 1
        name = name or f"const_{self._consts}"
        value = ir.Value(
            name=name,
            shape=ir.Shape(arr.shape),
            type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
            const_value=ir.tensor(arr, name=name),
        )
        self.graph.register_initializer(value)
        return value

    def ints(self, values: Sequence[int]) -> ir.Value:
        """An int64 1-D constant (shapes, axes)."""
        return self.const(np.asarray(list(values), dtype=np.int64))


# ---- layers shared by every encoder ------------------------------------------------------------------


def linear(ctx: GraphContext, x: ir.Value, prefix: str, bias: bool = True) -> ir.Value:
    """torch.nn.Linear: x @ W.T + b, with W stored transposed ([in, out]) so MatMul needs no Transpose.
    In int8 graphs: the dynamic-quantisation pattern, weights int8 with one symmetric scale."""
    out_f, in_f = ctx.weights.shape(f"{prefix}.weight")
    op = ctx.op
    if ctx.precision == "int8":
        w_q = ctx.param(f"{prefix}.weight", transform=_quantized_t, shape=(in_f, out_f), int8=True)
        w_scale = ctx.param(f"{prefix}.weight", transform=_weight_scale, shape=(), fp32=True)
        x_q, x_scale, x_zero = op.DynamicQuantizeLinear(x, _outputs=3)
        y_int = op.MatMulInteger(x_q, w_q, x_zero, ctx.const(np.int8(0)))
        y = op.Mul(op.Cast(y_int, to=ir.DataType.FLOAT), op.Mul(x_scale, w_scale))
    else:
        y = op.MatMul(x, ctx.param(f"{prefix}.weight", transform=_transpose, shape=(in_f, out_f)))
    return op.Add(y, ctx.param(f"{prefix}.bias")) if bias else y


def _transpose(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


def _weight_scale(w: np.ndarray) -> np.ndarray:
    """onnxruntime's symmetric int8 weight scale: max |w| over the tensor / 127 (range -127..127)."""
    absmax = float(np.abs(w).max())
    return np.asarray(absmax / 127.0 if absmax > 0 else 1.0, dtype=np.float32)


def _quantized_t(w: np.ndarray) -> np.ndarray:
    scale = _weight_scale(w)
    return np.ascontiguousarray(np.clip(np.rint(w / scale), -127, 127).astype(np.int8).T)


def layer_norm(ctx: GraphContext, x: ir.Value, prefix: str, eps: float) -> ir.Value:
    """LayerNormalization over the last axis, computed in float32 whatever the graph's precision."""
    y = ctx.op.LayerNormalization(
        ctx.to_fp32(x),
        ctx.param(f"{prefix}.weight", fp32=True),
        ctx.param(f"{prefix}.bias", fp32=True),
        axis=-1,
        epsilon=float(eps),
    )
    return ctx.from_fp32(y)


def gelu(ctx: GraphContext, x: ir.Value, approximate: str = "none") -> ir.Value:
    """GELU as torch computes it: exact (erf) or the tanh approximation ("gelu_pytorch_tanh")."""
    op = ctx.op
    if approximate == "tanh":
        cube = op.Mul(op.Mul(x, x), x)
        inner = op.Mul(op.Add(x, op.Mul(cube, ctx.const(0.044715))), ctx.const(math.sqrt(2 / math.pi)))
        return op.Mul(op.Mul(x, ctx.const(0.5)), op.Add(op.Tanh(inner), ctx.const(1.0)))
    if approximate != "none":
        raise ValueError(f"gelu approximation {approximate!r}")
    return op.Mul(op.Mul(x, ctx.const(0.5)), op.Add(op.Erf(op.Div(x, ctx.const(math.sqrt(2.0)))), ctx.const(1.0)))


def softmax(ctx: GraphContext, x: ir.Value, axis: int = -1) -> ir.Value:
    """Softmax in float32 (fp16 sums of exp lose precision over long rows)."""
    return ctx.from_fp32(ctx.op.Softmax(ctx.to_fp32(x), axis=axis))


def attention(
    ctx: GraphContext, q: ir.Value, k: ir.Value, v: ir.Value, scale: float, mask: ir.Value | None = None, rank: int = 4
) -> ir.Value:
    """softmax(q k^T * scale + mask) v over [..., S, D] inputs; scores and softmax in float32.

    `mask` is additive and float32 (use a finite value such as -3e4 for padded keys: it stays finite if a graph
    is later run in fp16, and exp(-3e4) is exactly 0)."""
    op = ctx.op
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = op.MatMul(ctx.to_fp32(op.Mul(q, ctx.const(scale))), ctx.to_fp32(op.Transpose(k, perm=perm)))
    if mask is not None:
        scores = op.Add(scores, mask)
    probs = ctx.from_fp32(op.Softmax(scores, axis=-1))
    return op.MatMul(probs, v)


ATTENTION_BLOCK_BYTES = 64 << 20  # float32 attention scores a runtime holds at once in `blocked_attention`


def blocked_attention(
    ctx: GraphContext, q: ir.Value, k: ir.Value, v: ir.Value, scale: float, heads: int, length: int
) -> ir.Value:
    """`attention` over [heads, S, hd] in blocks of query rows, so a runtime holds one block's float32 scores
    ([heads, rows, S]) at a time instead of all [heads, S, S] (0.7 GB per layer for a 3364-patch image, twice:
    scores and probabilities); the result is the same, row by row."""
    rows = max(1, ATTENTION_BLOCK_BYTES // (heads * length * 4))
    if rows >= length:
        return attention(ctx, q, k, v, scale, rank=3)
    op = ctx.op
    blocks = [
        attention(
            ctx,
            op.Slice(q, ctx.ints([start]), ctx.ints([min(start + rows, length)]), ctx.ints([1])),
            k,
            v,
            scale,
            rank=3,
        )
        for start in range(0, length, rows)
    ]
    return op.Concat(*blocks, axis=1)
