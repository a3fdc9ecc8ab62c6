"""Write an encoder graph to the bundle and prove the file works, without torch.

`write_encoder` saves a plugin-built `EncoderGraph` (fp32 or fp16) with its weights in `<file>.data` beside it:
onnx-ir writes the external data one tensor at a time, so peak memory is about the largest tensor, not the
model (a single-file ONNX would need the whole protobuf in memory, twice). ONNX Runtime loads the pair from
the path the board's config.json names. The precision (fp32, fp16, int8) is the builder's
(`converters/onnx_graph.py`): int8 files are the dynamic-quantisation pattern onnxruntime's `quantize_dynamic`
writes (the board's "dynq" files), built weight by weight instead of by loading a whole fp32 model.

Then the written file is checked the way a board would meet it: the ONNX checker and strict shape inference
by path, the I/O contract (float32, static shapes except the declared dynamic axes), and onnxruntime runs on the
builder's extra feeds (dynamic axes), with finite outputs.
How close the numbers are to the Hugging Face model is verification's job (`converters/reference.py`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from smt_convert.converters.onnx_graph import EncoderGraph
from smt_convert.runtime.errors import SmtError, first_line
from smt_convert.runtime.onnx_session import open_session

ONNX_DTYPES = ("fp32", "fp16", "int8")
EXTERNAL_ALIGNMENT = 65536  # tensor offsets in .data aligned so runtimes can map them (page/allocation size)


@dataclass
class WrittenEncoder:
    """What was written and checked; goes into the manifest's `encoders` entry."""

    role: str
    file: str
    data_file: str | None
    dtype: str
    inputs: list[dict]
    outputs: list[dict]
    checks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict:
        return {
            "role": self.role,
            "file": self.file,
            "data_file": self.data_file,
            "dtype": self.dtype,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "builder": "graph (onnxscript GraphBuilder)",
            "checks": self.checks,
            "write_seconds": round(self.seconds, 2),
        }


def save_graph(graph: EncoderGraph, path: Path, progress: Callable[[str], None] | None = None) -> str:
    """Save the graph's model to `path` + `path.data`; returns the data file's name."""
    import onnx_ir as ir

    data = path.name + ".data"
    _remove(path, path.with_name(data))

    def callback(tensor, info):  # noqa: ANN001 - onnx-ir's callback signature
        assert progress is not None  # passed only with a progress
        progress(str(tensor.name))

    try:
        ir.save(
            graph.model, path, external_data=data, callback=callback if progress else None, alignment=EXTERNAL_ALIGNMENT
        )
    except OSError as exc:
        _remove(path, path.with_name(data))
        raise SmtError(f"{path}: cannot write the encoder ({exc.strerror or exc})") from None
    return data


def write_encoder(
    graph: EncoderGraph, path: Path, dtype: str, log: Callable[[str], None] = lambda _: None
) -> WrittenEncoder:
    """Write `graph` (built at precision `dtype`) to `path` and check it."""
    path = Path(path)
    if dtype not in ONNX_DTYPES:
        raise SmtError(f"{path}: dtype: expected one of {', '.join(ONNX_DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    data = save_graph(graph, path)
    seconds = time.perf_counter() - t0
    inputs, outputs = check_file(path, graph)
    checks = run_checks(path, graph, inputs)
    log(f"{path.name}: {dtype}, written in {seconds:.1f}s, {len(checks)} onnxruntime checks")
    return WrittenEncoder(
        graph.role, path.name, data if (path.parent / data).is_file() else None, dtype, inputs, outputs, checks, seconds
    )


def check_file(path: Path, graph: EncoderGraph) -> tuple[list[dict], list[dict]]:
    """Checker and strict shape inference by path (no 2 GB limit), then the float32/static I/O contract."""
    import onnx

    inferred = path.with_name(f".{path.name}.inferred")
    try:
        onnx.checker.check_model(str(path))
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), strict_mode=True)
    except Exception as exc:  # the checker raises several types
        raise SmtError(f"{path}: onnx check: {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        _remove(inferred)
    model = onnx.load(str(path), load_external_data=False)
    inputs, outputs = _io(model.graph.input), _io(model.graph.output)
    for value in inputs + outputs:
        dynamic = graph.dynamic_axes.get(value["name"], {})
        if value["dtype"] != "float32":
            raise SmtError(f"{path}: {value['name']}: dtype {value['dtype']}, the board feeds and reads float32")
        for axis, dim in enumerate(value["shape"]):
            if isinstance(dim, str) and axis not in dynamic:
                raise SmtError(f"{path}: {value['name']}: axis {axis} is '{dim}', the board needs a static size")
            if axis in dynamic:
                value["shape"][axis] = dynamic[axis]
    return inputs, outputs


def run_checks(path: Path, graph: EncoderGraph, inputs: list[dict]) -> list[dict]:
    """onnxruntime on the builder's feeds (other lengths of a dynamic axis) and, for graphs with a dynamic
    axis, on the board's warm-up input (zeros, dynamic axes at 1). A static graph is run once by the golden
    run right after writing, which is the check that matters: a full-size vision tower costs minutes a run."""
    if not graph.dynamic_axes and not graph.check_feeds:
        return []
    session = open_session(path)
    warmup = {i["name"]: np.zeros([d if isinstance(d, int) else 1 for d in i["shape"]], np.float32) for i in inputs}
    rows = []
    for feeds in [warmup] + list(graph.check_feeds):
        try:
            outs = session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own types
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise SmtError(f"{path}: onnxruntime run on {shapes}: {first_line(exc)}") from None
        for meta, out in zip(session.get_outputs(), outs):
            finite = bool(np.isfinite(out).all())
            rows.append(
                {
                    "inputs": {k: list(v.shape) for k, v in feeds.items()},
                    "output": meta.name,
                    "shape": list(out.shape),
                    "finite": finite,
                }
            )
            if not finite:
                raise SmtError(
                    f"{path}: {meta.name}: non-finite values on inputs "
                    f"{ {k: list(v.shape) for k, v in feeds.items()} } (check the weights for NaN/inf)"
                )
    return rows


def _io(values) -> list[dict]:
    import onnx

    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        out.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name})
    return out


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
