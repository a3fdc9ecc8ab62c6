"""Architecture-blind torch -> ONNX export, with every step checked against torch.

Plugins describe each graph as an `OnnxSpec`; `export_onnx` exports it, checks the file (onnx checker,
shape inference, onnxruntime vs torch on several input shapes), simplifies it only when that provably
changes nothing, and optionally converts weights/compute to fp16 while keeping float32 graph I/O
(the SMT host always feeds and reads float32).

Exporter: torch 2.13's default dynamo exporter (`torch.export` + onnxscript) is used first; it is the
maintained path, gives smaller graphs (its optimizer folds the shape arithmetic) and keeps symbolic
dims from `dynamic_axes`. If it raises, the legacy TorchScript exporter (`dynamo=False`, deprecated)
is tried and the report says so. Both were checked on the Qwen3-ASR split encoder.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from smt_convert.runtime.onnx_session import open_session
from smt_convert.runtime.errors import SmtError, VerificationFailed

if TYPE_CHECKING:
    import onnx
    import torch

OPSET = 18
EXTERNAL_DATA_BYTES = int(1.8 * 1024**3)  # above this, weights go to <name>.onnx.data (protobuf limit is 2 GB)
SIMPLIFY_ATOL = 1e-6  # simplified vs unsimplified, scaled by max(1, |output|)
# ops computed in fp32 inside fp16 graphs: reductions whose sums overflow or lose precision in fp16
FP16_KEEP_FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Range", "CumSum"]
DEFAULT_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
ONNX_DTYPES = ("fp32", "fp16", "int8")
# int8: dynamic quantisation of MatMul/Gemm weights only (the board's "dynq" files). Convolutions stay float:
# ConvInteger is missing from many runtimes and execution providers.
INT8_OP_TYPES = ["MatMul", "Gemm"]


@dataclass
class OnnxSpec:
    """One graph to export: a module, example inputs and extra inputs (other shapes) to check with."""

    name: str  # e.g. "encoder-frontend"
    module: "torch.nn.Module"
    example_inputs: tuple  # torch tensors
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict | None = None  # e.g. {"audio_embeds": {1: "T"}}
    check_inputs: list[tuple] = field(default_factory=list)


@dataclass
class OnnxReport:
    """What was written and how well it matches torch; goes into the bundle manifest."""

    path: Path
    inputs: list[dict]  # name, shape (ints or dim names), dtype
    outputs: list[dict]
    simplified: bool
    checks: list[dict]  # per input set and output: input_shapes, output, shape, max_abs, cosine
    export_seconds: float
    exporter: str = "dynamo"
    dtype: str = "fp32"
    notes: list[str] = field(default_factory=list)
    external_data: bool = False

    def worst(self) -> dict:
        """The check with the lowest cosine (ties: largest max_abs)."""
        return min(self.checks, key=lambda c: (c["cosine"], -c["max_abs"]))


def export_onnx(
    spec: OnnxSpec,
    path: Path,
    dtype: str = "fp32",
    simplify: bool = True,
    log: Callable[[str], None] = print,
    exporter: str = "auto",
    opset: int = OPSET,
    min_cosine: float | None = None,
    max_abs: float | None = None,
) -> OnnxReport:
    """Export `spec` to `path` and verify it against torch fp32 on the example and check inputs.

    exporter: "auto" (dynamo, falling back to torchscript), "dynamo" or "torchscript".
    Raises SmtError when export/checking fails and VerificationFailed when the numbers are outside
    `min_cosine` (default 0.9999 fp32 / 0.999 fp16) or `max_abs` (default: not checked).
    """
    import onnx

    path = Path(path)
    if dtype not in ONNX_DTYPES:
        raise SmtError(f"{path}: dtype: expected one of {', '.join(ONNX_DTYPES)}, got {dtype!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    spec.module.eval()
    input_sets = [tuple(spec.example_inputs)] + [tuple(x) for x in spec.check_inputs]
    refs = [_torch_outputs(spec.module, inputs) for inputs in input_sets]
    notes: list[str] = []

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw.onnx"
        start = time.perf_counter()
        used = _run_exporter(spec, raw, exporter, opset, path, notes, log)
        export_seconds = time.perf_counter() - start
        model = onnx.load(str(raw))
        _name_dynamic_dims(model, spec)
        _check_dims(model, spec, path)

        base = tmp / "base.onnx"
        _save(model, base)
        base_session = open_session(base)
        base_outs = [_ort_run(base, spec, inputs, base_session) for inputs in input_sets]
        del base_session

        simplified = False
        if simplify:
            simplified = _try_simplify(model, spec, tmp, input_sets, base_outs, notes, path, log)
            if simplified:
                model = onnx.load(str(tmp / "sim.onnx"))

        if dtype == "fp16":
            model = _to_fp16(model, tmp, path)
        elif dtype == "int8":
            model = _to_int8(model, tmp, path)

        external = _save(model, path)
    _check_file(path)
    final = onnx.load(str(path), load_external_data=False)
    _check_dims(final, spec, path)

    checks = []
    session = open_session(path)
    for inputs, ref in zip(input_sets, refs):
        outs = _ort_run(path, spec, inputs, session)
        checks += _compare(spec, inputs, ref, outs)
    report = OnnxReport(
        path=path,
        inputs=_io_info(final.graph.input, final),
        outputs=_io_info(final.graph.output, final),
        simplified=simplified,
        checks=checks,
        export_seconds=round(export_seconds, 3),
        exporter=used,
        dtype=dtype,
        notes=notes,
        external_data=external,
    )
    worst = report.worst()
    log(
        f"{path.name}: {used} {dtype}{' simplified' if simplified else ''}, {len(checks)} checks, "
        f"worst cosine {worst['cosine']:.6f}, max_abs {max(c['max_abs'] for c in checks):.2e}"
    )
    _enforce(report, min_cosine if min_cosine is not None else DEFAULT_MIN_COSINE[dtype], max_abs)
    return report


def _to_int8(model, tmp: Path, path: Path):
    """Dynamic int8 quantisation of the MatMul/Gemm weights (activations quantised at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp / "int8-src.onnx", tmp / "int8.onnx"
    external = _save(model, src)
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic "consider pre-processing" hint on root
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=INT8_OP_TYPES, weight_type=QuantType.QInt8,
                         per_channel=False, use_external_data_format=external)
    except Exception as exc:  # onnxruntime.quantization raises plain Exceptions with long messages
        raise SmtError(f"{path}: int8 quantisation failed ({str(exc).splitlines()[0][:200]})") from None
    finally:
        root.setLevel(level)
    return onnx.load(str(dst))


def _torch_outputs(module, inputs) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*inputs)
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.detach().float().cpu().numpy() for o in out]


def _run_exporter(spec, raw: Path, exporter: str, opset: int, path: Path, notes: list, log) -> str:
    """Run torch.onnx.export; returns the exporter actually used."""
    order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}.get(exporter)
    if order is None:
        raise SmtError(f"{path}: exporter: expected auto, dynamo or torchscript, got {exporter!r}")
    errors = []
    for name in order:
        try:
            _torch_export(spec, raw, name == "dynamo", opset)
            return name
        except Exception as exc:  # exporter failures come in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"{name}: {type(exc).__name__}: {first[:300]}")
            log(f"{path.name}: {name} exporter failed ({type(exc).__name__}); {'trying next' if name != order[-1] else 'giving up'}")
    if len(errors) > 1:
        notes.append(f"dynamo exporter failed: {errors[0]}")
    raise SmtError(f"{path}: onnx export: " + " | ".join(errors))


def _torch_export(spec, raw: Path, dynamo: bool, opset: int) -> None:
    import torch

    kwargs = dict(
        input_names=list(spec.input_names),
        output_names=list(spec.output_names),
        dynamic_axes=spec.dynamic_axes or None,
        opset_version=opset,
        dynamo=dynamo,
    )
    if dynamo:
        kwargs.update(external_data=True, verbose=False, report=False)
    # both exporters print progress/deprecation noise; the report carries what matters
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.module, tuple(spec.example_inputs), str(raw), **kwargs)
    if not raw.is_file():
        raise RuntimeError("exporter wrote no file")


def _name_dynamic_dims(model, spec) -> None:
    """Give declared dynamic axes their declared names (dynamo names outputs with sympy expressions)."""
    axes = spec.dynamic_axes or {}
    for value in list(model.graph.input) + list(model.graph.output):
        for axis, dim_name in _axes_of(axes.get(value.name)).items():
            dims = value.type.tensor_type.shape.dim
            if axis < len(dims):
                dims[axis].dim_param = dim_name


def _axes_of(entry) -> dict:
    if entry is None:
        return {}
    if isinstance(entry, dict):
        return {int(k): str(v) for k, v in entry.items()}
    return {int(a): f"dim{a}" for a in entry}


def _check_dims(model, spec, path: Path) -> None:
    """Declared dynamic axes must be symbolic; inputs' other axes must equal the example's sizes."""
    axes = spec.dynamic_axes or {}
    examples = dict(zip(spec.input_names, spec.example_inputs))
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dynamic = _axes_of(axes.get(value.name))
        for axis, dim in enumerate(dims):
            if axis in dynamic and not dim.dim_param:
                raise SmtError(f"{path}: {value.name}: axis {axis} should be dynamic but is fixed to {dim.dim_value}")
            if axis not in dynamic and value.name in examples:
                want = int(examples[value.name].shape[axis])
                if dim.dim_value != want:
                    raise SmtError(f"{path}: {value.name}: axis {axis} should be static {want}, got {dim.dim_param or dim.dim_value}")


def _model_bytes(model) -> int:
    try:
        return model.ByteSize()
    except Exception:
        return sum(len(t.raw_data) for t in model.graph.initializer)


def _save(model, path: Path) -> bool:
    """Save, with external data (<name>.data) above EXTERNAL_DATA_BYTES; returns whether it did."""
    import onnx

    external = _model_bytes(model) > EXTERNAL_DATA_BYTES
    data = path.with_name(path.name + ".data")
    for old in (path, data):
        if old.exists():
            old.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
        location=data.name, size_threshold=1024,
    )
    if external:  # save_model moved the weights out of `model`; read them back so it stays usable
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    return external


def _check_file(path: Path) -> None:
    """Path-based checker and strict shape inference (both work past the 2 GB protobuf limit)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
    except Exception as exc:
        raise SmtError(f"{path}: onnx check: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from None


def _ort_run(path: Path, spec, inputs, session=None) -> list[np.ndarray]:
    session = session or open_session(path)
    graph_inputs = {i.name for i in session.get_inputs()}
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(spec.input_names, inputs) if n in graph_inputs}
    try:
        return session.run(None, feeds)
    except Exception as exc:
        shapes = [tuple(t.shape) for t in inputs]
        raise SmtError(f"{path}: onnxruntime run on {shapes}: {str(exc).strip().splitlines()[0][:300]}") from None


def _compare(spec, inputs, refs, outs) -> list[dict]:
    rows = []
    for name, ref, out in zip(spec.output_names, refs, outs):
        row = {"input_shapes": [list(t.shape) for t in inputs], "output": name, "shape": list(out.shape)}
        if tuple(ref.shape) != tuple(out.shape):
            row.update(max_abs=float("inf"), cosine=-1.0, error=f"shape {list(out.shape)} != torch {list(ref.shape)}")
        else:
            row.update(max_abs=_max_abs(ref, out), cosine=_cosine(ref, out))
        rows.append(row)
    return rows


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return -1.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _try_simplify(model, spec, tmp: Path, input_sets, base_outs, notes, path: Path, log) -> bool:
    """onnxsim, kept only if outputs are unchanged (1e-6) on every check input and dims are intact."""
    if _model_bytes(model) > EXTERNAL_DATA_BYTES:
        notes.append("simplify skipped: model above 1.8 GB")
        return False
    try:
        import onnxsim

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            sim, ok = onnxsim.simplify(model, check_n=0, certify=False)
    except Exception as exc:
        notes.append(f"simplify failed, kept original: {type(exc).__name__}: {str(exc).strip()[:200]}")
        log(f"{path.name}: onnxsim failed ({type(exc).__name__}); keeping the exported graph")
        return False
    _name_dynamic_dims(sim, spec)
    try:
        _check_dims(sim, spec, path)
    except SmtError as exc:
        notes.append(f"simplify changed the I/O shapes, kept original: {exc}")
        return False
    sim_path = tmp / "sim.onnx"
    _save(sim, sim_path)
    try:
        session = open_session(sim_path)
        for inputs, base in zip(input_sets, base_outs):
            for a, b in zip(base, _ort_run(sim_path, spec, inputs, session)):
                tol = SIMPLIFY_ATOL * max(1.0, float(np.abs(a).max()) if a.size else 1.0)
                if a.shape != b.shape or _max_abs(a, b) > tol:
                    notes.append(f"simplify changed outputs on {[list(t.shape) for t in inputs]}, kept original")
                    return False
    except SmtError as exc:
        notes.append(f"simplified graph does not run, kept original: {exc}")
        return False
    return True


def _to_fp16(model, tmp: Path, path: Path):
    """fp16 weights and compute, float32 graph I/O; FP16_KEEP_FP32_OPS stay fp32 (see module notes)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # shape inference by path (no 2 GB limit), then the converter uses the recorded value_info
    inferred = tmp / "infer.onnx"
    _save(model, inferred)
    onnx.shape_inference.infer_shapes_path(str(inferred), str(inferred))
    model = onnx.load(str(inferred))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_float_to_float16(
                model, keep_io_types=True, disable_shape_infer=True, op_block_list=FP16_KEEP_FP32_OPS,
            )
    except Exception as exc:
        raise SmtError(f"{path}: fp16 conversion: {type(exc).__name__}: {str(exc).strip()[:300]}") from None
    _topological_sort(model.graph)  # the converter appends its I/O Casts at the end of the node list
    return model


def _consumed(node) -> set[str]:
    """Names a node reads, including outer-scope names used inside its subgraphs."""
    names = set(node.input)
    for attr in node.attribute:
        for g in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
            for sub in g.node:
                names |= _consumed(sub)
    return names


def _topological_sort(graph) -> None:
    """Stable topological order of the top-level nodes (the checker requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced = {o for n in graph.node for o in n.output}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(n in ready or n not in produced for n in _consumed(node)):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)


def _io_info(values, model) -> list[dict]:
    import onnx

    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        out.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name})
    return out


def _enforce(report: OnnxReport, min_cosine: float, max_abs: float | None) -> None:
    for c in report.checks:
        bad = c.get("error")
        if not bad and c["cosine"] < min_cosine:
            bad = f"cosine {c['cosine']:.6f} < {min_cosine}"
        if not bad and max_abs is not None and c["max_abs"] > max_abs:
            bad = f"max_abs {c['max_abs']:.3g} > {max_abs}"
        if bad:
            raise VerificationFailed(f"{report.path}: {c['output']}: on inputs {c['input_shapes']}: {bad}")
