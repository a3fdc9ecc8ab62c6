"""A trace of one run of a bundle: the reference's pass recorded, then the bundle's blocks compared with it.

`verify --trace` records during the reference pass verification makes anyway (converters/reference.py takes the
recorder); a conversion whose verification failed runs one more, recorded, reference pass here and keeps the
trace's one-line summary (the first block outside tolerance) in its table and manifest.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from smt_convert.converters.encoder_trace import encoder_block_rows
from smt_convert.converters.plugin import ReferenceRequest
from smt_convert.converters.reference_stream import watching_builds
from smt_convert.converters.trace_reference import trace_recorder
from smt_convert.runtime.trace import ActivationStore, Trace, bundle_trace
from smt_convert.runtime.verify import Row


def trace_run(
    runner,
    media,
    result,
    store: ActivationStore,
    scale: float = 1.0,
    keep: ActivationStore | None = None,
    float_blocks: ActivationStore | None = None,
) -> Trace:
    """The bundle's side of a trace: encoder blocks (from an exposed copy of the graph), then the decoder.
    `keep`/`float_blocks`: runtime/trace.py's decoder_trace."""
    manifest = runner.manifest
    blocks = Trace()
    if media is not None:  # this bundle's encoder output (a float bundle's differs from the run's)
        blocks.rows, blocks.notes, encoded = encoder_block_rows(
            runner, runner.features(media), store, manifest["onnx_dtype"], keep, float_blocks
        )
        result = dataclasses.replace(result, media_embeds=encoded)
    outtype, onnx_dtype = manifest["text"]["outtype"], manifest["onnx_dtype"]
    return bundle_trace(runner, result, store, outtype, onnx_dtype, blocks, scale, keep, float_blocks)


def trace_with_float(runner, float_runner, media, result, store: ActivationStore, scale: float = 1.0) -> Trace:
    """A quantised bundle's trace with its float bundle alongside: the float bundle runs the same input first
    (its blocks kept on disk, one at a time), then each of this bundle's blocks is compared with the reference
    and with the float bundle's. The float bundle's own errors become the conversion-error column."""
    from smt_convert.runtime.trace import with_conversion_error

    floats = ActivationStore(store.root / "float")
    float_trace = trace_run(float_runner, media, result, store, scale, keep=floats)
    float_runner.release()
    traced = trace_run(runner, media, result, store, scale, float_blocks=floats)
    with_conversion_error(traced.rows, float_trace.rows)
    traced.notes.append(f"float bundle: {float_runner.bundle.root} ({float_runner.manifest['text']['outtype']})")
    return traced


def trace_after_failure(plugin, ckpt, hp, runner, media, result) -> Trace:
    """A whole trace of `result` (the bundle's run on `media`): a recorded reference pass, then the bundle's."""
    request = ReferenceRequest(
        media=media,
        host_input=runner.features(media) if media is not None else None,
        prompt_ids=list(result.prompt.placeholder_ids),
        continuation=list(result.tokens),
        stop_ids=runner.stop_ids(),
        host=runner.host,
    )
    runner.release()  # as verification: the bundle and the reference never hold memory at the same time
    with tempfile.TemporaryDirectory(prefix="smt-trace-") as tmp:
        recorder = trace_recorder(plugin, hp, ActivationStore(Path(tmp)), result)
        with watching_builds(recorder):
            ref = plugin.reference(ckpt, hp, request)
        recorder.result(ref)
        del ref
        traced = trace_run(runner, media, result, recorder.store, plugin.lossy_nmse_scale)
        runner.release()
    return traced


def summary_row(traced: Trace) -> Row:
    """The trace as one informational row of the verification table (and so of the manifest)."""
    first = traced.first_out
    value = "none" if first is None else f"{first.part} {first.block}"
    return Row("trace", "first block outside tolerance", value, traced.summary(), True, gate=False)
