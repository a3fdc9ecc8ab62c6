"""The divergence trace: block by block, how far the bundle's activations are from the Hugging Face model's.

Verification says whether the bundle's encoder rows, logits and tokens match; when they do not, the trace says
where the difference starts. The reference side (converters/trace_reference.py, torch) writes each block's output
to an `ActivationStore` as it runs; this side (no torch) runs the bundle with the same inputs and compares one
block at a time, so neither side ever holds more than one block's activations of the other.

Per block: relative error ||x - ref|| / ||ref|| (the tolerance is on it), cosine, the largest absolute difference
and where it is (row = sequence position or encoder row, channel). The first block outside its tolerance is the
one the report names; the growth column (this block's relative error over the previous one's) shows whether the
error is made there or carried in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Relative error tolerated per block. Measured on the clean tiny bundles (golden input, 16 teacher-forced tokens;
# the decoder fed the reference's encoder rows), the largest over the decoder layers and logits of Qwen3-ASR /
# Qwen3.5 dense / PaddleOCR-VL:
#   f32 1.2e-6, f16 1.4e-3, bf16 1.1e-2, q8_0 3.5e-2, q5_0 0.23, q4_0 0.47 (all Qwen3.5; the others are lower);
#   q4_0 on the 512-wide, 8-layer random Qwen3.5 of benchmarks/bench_quality.py: 0.66 at its last layer.
# Each bound is 14x (f16) to 1.5x (4/5-bit) above that, and 80x for f32. A fault (a wrong or swapped tensor, a
# scaled norm, an overflow) gives relative errors of order 1, which only the 4-bit bound comes near: for 4/5-bit
# types the trace's float column (quantised vs float bundle) is what separates conversion from quantisation.
# MoE routing flips a token's experts on small differences, so a MoE family's bounds are scaled by its plugin's
# `lossy_nmse_scale` (Qwen3.5 MoE 5x; measured f16 0.06, bf16 0.062, q8_0 0.097, q5_0 0.33, q4_0 0.59), capped at 1.
TEXT_BLOCK_TOLERANCE = {
    "f32": 1e-4,
    "f16": 2e-2,
    "bf16": 5e-2,
    "q8_0": 0.1,
    "q6_k": 0.2,
    "q5_k_m": 0.4,
    "q5_k_s": 0.4,
    "q5_1": 0.4,
    "q5_0": 0.4,
}
LOSSY_TEXT_BLOCK_TOLERANCE = 1.0  # 4 bits and below: as far as a wrong block goes (deep random models reach it)
# Encoder stem, blocks and output by --onnx-dtype. Measured on the same bundles: fp32 6.8e-7, fp16 6.5e-4, int8 0.026.
ENCODER_BLOCK_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.1}


def text_tolerance(outtype: str, scale: float = 1.0) -> float:
    """The bound for `outtype`; `scale` (> 1 for MoE) widens lossy bounds, never f32's."""
    tol = TEXT_BLOCK_TOLERANCE.get(outtype, LOSSY_TEXT_BLOCK_TOLERANCE)
    return tol if outtype == "f32" else min(tol * scale, max(tol, 1.0))


@dataclass
class BlockRow:
    """One block's comparison. With a float bundle alongside a quantised one (`verify --float-bundle`):
    `conversion_error` is the float bundle's relative error against the reference (what conversion alone
    costs), `quantisation_error` this bundle's against the float bundle (what quantisation adds)."""

    part: str  # "encoder" or "text"
    block: str  # "layer 3", "embeddings", "logits", an encoder stage's name
    rel_error: float
    cosine: float
    max_abs: float
    where: tuple[int, int]  # (row, channel) of max_abs
    tolerance: float
    conversion_error: float | None = None
    quantisation_error: float | None = None

    @property
    def ok(self) -> bool:
        return bool(self.rel_error <= self.tolerance)  # NaN is outside

    def to_dict(self) -> dict:
        return {
            "part": self.part,
            "block": self.block,
            "rel_error": _num(self.rel_error),
            "cosine": _num(self.cosine),
            "max_abs": _num(self.max_abs),
            "where": list(self.where),
            "tolerance": self.tolerance,
            "ok": self.ok,
            "conversion_error": None if self.conversion_error is None else _num(self.conversion_error),
            "quantisation_error": None if self.quantisation_error is None else _num(self.quantisation_error),
        }


def _num(x: float) -> float | str:
    return float(x) if np.isfinite(x) else str(x)


@dataclass
class Trace:
    """Every block's row in run order (encoder stages, then embeddings, decoder layers, logits)."""

    rows: list[BlockRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def first_out(self) -> BlockRow | None:
        return next((r for r in self.rows if not r.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_out is None

    def to_dict(self) -> dict:
        first = self.first_out
        return {
            "ok": self.ok,
            "first_out_of_tolerance": None if first is None else f"{first.part} {first.block}",
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def summary(self) -> str:
        """One line: the short form for a failing conversion's output and the manifest."""
        first = self.first_out
        if first is None:
            return f"trace: all {len(self.rows)} blocks within tolerance"
        return (
            f"trace: first block outside tolerance: {first.part} {first.block} (relative error "
            f"{first.rel_error:.3g} > {first.tolerance:g}, max abs {first.max_abs:.3g} at row {first.where[0]}, "
            f"channel {first.where[1]})"
        )

    def format(self) -> str:
        """The table: one row per block, growth over the previous block of the same part, the first block
        outside tolerance marked `<-- first`."""
        quantised = any(r.quantisation_error is not None for r in self.rows)
        header = ["part", "block", "rel error", "growth", "cosine", "max abs", "at (row, ch)", "tolerance", ""]
        if quantised:
            header[3:3] = ["float vs ref", "vs float"]
        first = self.first_out
        body: list[list[str]] = []
        prev: dict[str, float | None] = {}
        for r in self.rows:
            before = prev.get(r.part)
            growth = f"x{r.rel_error / before:.3g}" if before and np.isfinite(r.rel_error) else "-"
            prev[r.part] = r.rel_error if r.rel_error > 0 else None
            mark = "<-- first" if r is first else ("out" if not r.ok else "")
            cells = [
                r.part,
                r.block,
                f"{r.rel_error:.3g}",
                growth,
                f"{r.cosine:.6f}",
                f"{r.max_abs:.3g}",
                f"({r.where[0]}, {r.where[1]})",
                f"<= {r.tolerance:g}",
                mark,
            ]
            if quantised:
                cells[3:3] = [_g(r.conversion_error), _g(r.quantisation_error)]
            body.append(cells)
        widths = [max(len(c) for c in col) for col in zip(header, *body)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
        return "\n".join(out + [self.summary()] + [f"note: {n}" for n in self.notes])


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def compare(part: str, block: str, x: np.ndarray, ref: np.ndarray, tolerance: float) -> BlockRow:
    """One block: x and ref as [rows, channels] (leading axes folded into rows)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        a, b = _fold(a), _fold(b)
    if a.shape != b.shape:
        return BlockRow(
            part, f"{block} (shape {list(a.shape)} vs {list(b.shape)})", np.inf, 0.0, np.inf, (0, 0), tolerance
        )
    a, b = _fold(a), _fold(b)
    diff = a - b
    ref_norm = float(np.linalg.norm(b))
    rel = float(np.linalg.norm(diff)) / max(ref_norm, 1e-30)
    cos = float((a.ravel() @ b.ravel()) / max(float(np.linalg.norm(a)) * ref_norm, 1e-30))
    bad = ~np.isfinite(diff)
    if bad.any():  # an overflow: its first non-finite value is where the block broke
        flat = int(np.flatnonzero(bad)[0])
        rel, cos, max_abs = np.inf, cos if np.isfinite(cos) else 0.0, np.inf
    else:
        flat = int(np.argmax(np.abs(diff))) if diff.size else 0
        max_abs = float(np.abs(diff).ravel()[flat]) if diff.size else 0.0
    row, col = divmod(flat, a.shape[1]) if a.size else (0, 0)
    return BlockRow(part, block, rel, cos, max_abs, (int(row), int(col)), tolerance)


def _fold(x: np.ndarray) -> np.ndarray:
    """[..., channels] -> [rows, channels], dropping leading axes of size 1 (a batch of one)."""
    x = np.atleast_2d(x)
    return x.reshape(-1, x.shape[-1])


class ActivationStore:
    """Block outputs on disk, one .npy per block: the reference writes them as it runs, the bundle's side reads
    one at a time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy")

    def put(self, name: str, value: np.ndarray) -> None:
        np.save(self._path(name), np.ascontiguousarray(value, dtype=np.float32), allow_pickle=False)

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    def rename(self, name: str, new: str) -> None:
        """`name` (if stored) becomes `new`."""
        if self.has(name):
            self._path(name).replace(self._path(new))

    def get(self, name: str) -> np.ndarray:
        return np.load(self._path(name), allow_pickle=False)


# Block names the two sides share.
ENCODER_OUTPUT = "encoder.output"
EMBEDDINGS = "text.embeddings"
LOGITS = "text.logits"


def text_layer(i: int) -> str:
    return f"text.layer.{i}"


def decoder_trace(
    decoder,
    embeds: np.ndarray,
    positions: np.ndarray,
    continuation: list[int],
    reference: ActivationStore,
    tolerance: float,
    keep: ActivationStore | None = None,
    float_blocks: ActivationStore | None = None,
) -> list[BlockRow]:
    """The runtime decoder over prompt + continuation (teacher-forced, one pass) against the reference's
    embeddings, each layer's hidden state and the logits. `keep` also stores each block (a float bundle's, for a
    quantised bundle's columns); `float_blocks` are those, compared as the quantisation error."""
    from smt_convert.runtime.decoders.blocks import as_mrope_positions

    x = np.asarray(embeds, dtype=np.float32)
    pos = np.asarray(positions)
    if continuation:
        x = np.concatenate([x, decoder.embed(np.asarray(continuation))])
        start = int(pos.max()) + 1
        more = np.arange(start, start + len(continuation), dtype=np.int64)
        pos = np.concatenate([as_mrope_positions(pos), as_mrope_positions(more)]) if pos.ndim == 2 else np.r_[pos, more]
    rows = []

    def seen(name: str, label: str, value: np.ndarray) -> None:
        if keep is not None:
            keep.put(name, value)
        if reference.has(name):
            rows.append(
                against_float(compare("text", label, value, reference.get(name), tolerance), name, value, float_blocks)
            )

    seen(EMBEDDINGS, "embeddings", x[:, : decoder.config.hidden])  # DeepStack slices ride after the embedding
    logits = decoder.forward(
        x, pos, decoder.new_cache(), logits="all", observe=lambda i, h: seen(text_layer(i), f"layer {i}", h)
    )
    seen(LOGITS, "logits", logits)
    return rows


def against_float(row: BlockRow, name: str, value: np.ndarray, float_blocks: ActivationStore | None) -> BlockRow:
    """`row` with its quantisation error: `value` against the float bundle's block `name`, when there is one."""
    if float_blocks is not None and float_blocks.has(name):
        row.quantisation_error = compare(row.part, row.block, value, float_blocks.get(name), row.tolerance).rel_error
    return row


def with_conversion_error(rows: list[BlockRow], float_rows: list[BlockRow]) -> list[BlockRow]:
    """Each block's conversion error: the float bundle's relative error on the same block."""
    errors = {(r.part, r.block): r.rel_error for r in float_rows}
    for r in rows:
        r.conversion_error = errors.get((r.part, r.block))
    return rows


def decoder_inputs(decoder, prompt, media_rows: np.ndarray | None) -> np.ndarray:
    """The prompt's embeddings from `decoder`'s own table with `media_rows` at the media span: the same input
    for every bundle compared (a quantised bundle and its float one differ in their token embeddings)."""
    embeds = decoder.embed(np.asarray(prompt.placeholder_ids))
    start, end = prompt.media_span
    if media_rows is not None and end > start:
        embeds[start:end] = media_rows
    return embeds


def bundle_trace(
    runner,
    result,
    reference: ActivationStore,
    outtype: str,
    onnx_dtype: str,
    encoder_blocks: Trace | None = None,
    scale: float = 1.0,
    keep: ActivationStore | None = None,
    float_blocks: ActivationStore | None = None,
) -> Trace:
    """The bundle's blocks against the reference's, on the run `result` (its prompt and greedy tokens, which the
    reference scored by teacher forcing). The decoder is fed the reference's encoder rows when the reference has
    them, so its rows measure the text decoder alone. `scale`: text_tolerance's. `encoder_blocks`: the encoder's
    stem and block rows (read from a copy of its graph, converters/encoder_trace.py), which come first. `keep`
    and `float_blocks`: see decoder_trace."""
    trace = encoder_blocks or Trace()
    start, end = result.prompt.media_span
    media = result.media_embeds
    if media is not None and reference.has(ENCODER_OUTPUT):
        ref_rows = reference.get(ENCODER_OUTPUT)
        tolerance = ENCODER_BLOCK_TOLERANCE[onnx_dtype]
        if keep is not None:
            keep.put(ENCODER_OUTPUT, media)
        row = compare("encoder", "output", media, ref_rows, tolerance)
        trace.rows.append(against_float(row, ENCODER_OUTPUT, media, float_blocks))
        if ref_rows.shape == (end - start, media.shape[1]):
            media = ref_rows
            trace.notes.append("the text decoder was fed the reference's encoder rows: its rows are its own error")
    decoder = runner.decoder
    trace.rows += decoder_trace(
        decoder,
        decoder_inputs(decoder, result.prompt, media),
        result.prompt.positions,
        list(result.tokens),
        reference,
        text_tolerance(outtype, scale),
        keep,
        float_blocks,
    )
    return trace
