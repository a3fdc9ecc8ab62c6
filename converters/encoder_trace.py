"""The bundle's side of the encoder trace: each block's output read from a copy of the ONNX graph.

The graph writers name every initializer after its checkpoint tensor (`model.visual.blocks.3.attn.qkv.weight.5`),
so a graph's blocks are found from its weights: block k is the run of nodes that read `<...>layers.k.` or
`<...>blocks.k.` weights. Its input is the activation the first of those nodes reads (a pre-norm block starts
with its LayerNorm); its output is what the next stage reads first: the next block's LayerNorm, or the tower's
final norm after the last block. Those values become extra outputs of a copy of the graph (in memory; the
weights are read from the bundle's file), and the runtime's own encoder code runs the copy, so the host logic
(the board's chunking and window padding) is the one verification runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smt_convert.runtime.errors import SmtError, first_line
from smt_convert.runtime.onnx_session import session_options
from smt_convert.runtime.trace import ENCODER_BLOCK_TOLERANCE, ActivationStore, BlockRow, against_float, compare

BLOCK_WEIGHT = re.compile(r"^(.*?(?:layers|blocks)\.\d+\.)")


def encoder_point(prefix: str, what: str = "output") -> str:
    """Store name of a block's input or output; `prefix` is the block's canonical prefix (`...layers.3.`)."""
    return f"block:{prefix}{what}"


@dataclass
class TracePoint:
    label: str  # "stem" or "block 3"
    store_name: str  # the reference's name for it (encoder_point)
    value: str  # the ONNX value holding it


def trace_points(graph) -> list[TracePoint]:
    """The stem (input of the first block) and each block's output, from the weights the nodes read: block k's
    output is what the first node after its last weight-reading node that reads a named weight (the next block's
    norm, a final norm, a merger) takes as its activation; weights shared by every block (read inside them) and a
    stage between blocks (read after one) leave that unchanged."""
    weights = {i.name for i in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    nodes = list(graph.node)

    def data_input(node) -> str | None:
        return next((x for x in node.input if x and x not in weights and x not in constants), None)

    def named_weights(node) -> list[str]:  # checkpoint tensors (canonical dotted names), not "const_12"
        return [x for x in node.input if x in weights and "." in x]

    last: dict[str, int] = {}
    first: dict[str, int] = {}  # block prefix -> index of its last / first weight-reading node
    for i, node in enumerate(nodes):
        for name in named_weights(node):
            m = BLOCK_WEIGHT.match(name)
            if m:
                first.setdefault(m.group(1), i)
                last[m.group(1)] = i
    if not first:
        return []
    stem_block = min(first, key=lambda b: first[b])
    value = data_input(nodes[first[stem_block]])
    points = [TracePoint("stem", encoder_point(stem_block, "input"), value)] if value else []
    readers = [i for i, node in enumerate(nodes) if named_weights(node)]
    order = sorted(last, key=lambda b: last[b])
    for k, block in enumerate(order):
        # the next block's first node reads this block's output as it is (a DeepStack merger after the block
        # reads it reshaped); after the last block, the first node that reads a weight (a final norm, a merger)
        after = first[order[k + 1]] if k + 1 < len(order) else next((i for i in readers if i > last[block]), None)
        value = data_input(nodes[after]) if after is not None else None
        if value is not None:
            index = re.search(r"(\d+)\.$", block)
            assert index is not None  # BLOCK_WEIGHT's prefixes end in "<n>."
            points.append(TracePoint(f"block {index.group(1)}", encoder_point(block, "output"), value))
    return points


def exposed_session(path: Path, threads: int | None = None):
    """An onnxruntime session over a copy of the ONNX file at `path` (held in memory, its weights read from the
    bundle's external data file) with the trace points as extra outputs after the real ones. Returns the
    session and its points (none: the graph has no blocks to trace)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    points = trace_points(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for p in points:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(p.value, types.get(p.value, onnx.TensorProto.FLOAT), None)
        )
    opts = session_options(threads)
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent.resolve()))
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise SmtError(
            f"{path}: onnxruntime (the trace's copy with block outputs exposed): {first_line(exc)}"
        ) from None
    return session, points


class RecordingSession:
    """An onnxruntime session over the exposed copy that answers like the original (its outputs only) and keeps
    the extra outputs of its last run."""

    def __init__(self, session, points: list[TracePoint]):
        self.session = session
        self.points = points
        self.real = len(session.get_outputs()) - len(points)
        self.recorded: dict[str, np.ndarray] = {}

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()[: self.real]

    def run(self, output_names, feeds):
        outs = self.session.run(None, feeds)
        self.recorded = {p.store_name: outs[self.real + i] for i, p in enumerate(self.points)}
        return outs[: self.real]


def encoder_block_rows(
    runner,
    features: np.ndarray,
    reference: ActivationStore,
    onnx_dtype: str,
    keep: ActivationStore | None = None,
    float_blocks: ActivationStore | None = None,
) -> tuple[list[BlockRow], list[str], np.ndarray]:
    """The bundle's encoder on `features` with its blocks exposed, against the reference's blocks. Returns the
    rows (stem, blocks in order), notes and the encoder's output rows. `keep` and `float_blocks`: as
    runtime/trace.py's decoder_trace."""
    from smt_convert.runtime.audio_encoder import SplitAudioEncoder
    from smt_convert.runtime.vision_encoder import VisionEncoder

    encoder = runner.encoder()
    if isinstance(encoder, SplitAudioEncoder):
        recording = RecordingSession(*exposed_session(encoder.backend_path, runner.threads))
        encoder.backend = recording
    elif isinstance(encoder, VisionEncoder):
        recording = RecordingSession(*exposed_session(encoder.path, runner.threads))
        encoder.session = recording
    else:
        return [], [f"no encoder trace for {type(encoder).__name__}"], runner.encode(features)
    try:
        output = encoder.encode(features)
    finally:
        runner.release()  # the next use opens the bundle's own sessions again
    rows, notes = [], []
    tolerance = ENCODER_BLOCK_TOLERANCE[onnx_dtype]
    for p in recording.points:
        if not reference.has(p.store_name):
            notes.append(f"encoder {p.label}: the reference has no {p.store_name}")
            continue
        ours, ref = _2d(recording.recorded[p.store_name]), _2d(reference.get(p.store_name))
        if ours.shape[0] > ref.shape[0] and ours.shape[1:] == ref.shape[1:]:  # the bundle's window padding
            note = f"encoder blocks: the first {ref.shape[0]} rows compared (the rest are the graph's window padding)"
            if note not in notes:
                notes.append(note)
            ours = ours[: ref.shape[0]]
        if keep is not None:
            keep.put(p.store_name, ours)
        rows.append(against_float(compare("encoder", p.label, ours, ref, tolerance), p.store_name, ours, float_blocks))
    return rows, notes, output


def _2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(-1, x.shape[-1])
