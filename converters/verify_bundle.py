"""`smt-convert verify --reference`: compare an existing bundle with a Hugging Face checkpoint again."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.convert import ConvertOptions, _json_default
from smt_convert.converters.plugin import detect_plugin, get_plugin
from smt_convert.converters.reference import compare_with_reference
from smt_convert.converters.trace_reference import trace_recorder
from smt_convert.runtime.bundle import GOLDEN_DIR, read_json
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.media import modality
from smt_convert.converters.trace_bundle import trace_run, trace_with_float
from smt_convert.runtime.trace import ActivationStore


# How a checkpoint is laid out and how its tie flags were written may differ between copies of the same model
# (the release and what transformers' save_pretrained writes of it): left out of the comparison at any depth.
LAYOUT_ONLY = {"layout", "config_layout", "text_layout", "tie_config", "tie_note"}


def _model_identity(record):
    if isinstance(record, dict):
        return {k: _model_identity(v) for k, v in record.items() if k not in LAYOUT_ONLY}
    return record


def reference_rows_and_trace(
    runner, reference_dir: Path, max_new_tokens: int, report, trace: bool = False, float_bundle: Path | None = None
):
    """The reference rows and, with `trace`, the block-by-block trace from the same reference pass; with
    `float_bundle` (a float conversion of the same checkpoint) the trace's conversion/quantisation columns."""
    manifest = runner.manifest
    plugin = get_plugin(manifest["architecture"])
    ckpt = Checkpoint.open(reference_dir)
    detected = detect_plugin(ckpt.config, ckpt.config_path)
    if detected.name != plugin.name:
        raise SmtError(f"{ckpt.config_path}: --reference is a {detected.name} checkpoint, the bundle is {plugin.name}")
    size = manifest.get("preprocessing", {}).get("image_size")
    hp = plugin.read_hparams(ckpt, ConvertOptions(image_size=tuple(size) if size else None))
    # compare as JSON sees them (the manifest stores tuples as lists)
    recorded = _model_identity(manifest["hparams"])
    found = _model_identity(json.loads(json.dumps(plugin.hparams_record(hp), default=_json_default)))
    differ = [k for k in recorded if recorded[k] != found.get(k)]
    if differ:
        k = differ[0]
        raise SmtError(
            f"{ckpt.config_path}: {k}: {found.get(k)!r} but the bundle was converted from a model with "
            f"{recorded[k]!r}; --reference must be the checkpoint the bundle came from"
        )
    golden = manifest["golden"]
    kind = modality(manifest["modality"])
    media = None
    if golden.get("input"):
        assert kind.load is not None  # a golden input belongs to a medium
        media = kind.load(runner.bundle.root / GOLDEN_DIR / golden["input"])
    expected = read_json(runner.bundle.root / GOLDEN_DIR / "expected.json")
    float_runner = float_bundle_runner(float_bundle, runner) if float_bundle is not None else None  # checked first
    result = runner.run(
        media, fields=expected.get("fields"), language=expected.get("language"), max_new_tokens=max_new_tokens
    )
    if not trace:
        rows, _, _ = _compare(plugin, ckpt, hp, runner, media, result, max_new_tokens, report, None)
        return rows, None
    with tempfile.TemporaryDirectory(prefix="smt-trace-") as tmp:
        recorder = trace_recorder(plugin, hp, ActivationStore(Path(tmp)), result)
        rows, _, _ = _compare(plugin, ckpt, hp, runner, media, result, max_new_tokens, report, recorder)
        if report is not None:
            report.step("tracing the bundle block by block")
        if float_runner is None:
            traced = trace_run(runner, media, result, recorder.store, plugin.lossy_nmse_scale)
        else:
            traced = trace_with_float(runner, float_runner, media, result, recorder.store, plugin.lossy_nmse_scale)
        runner.release()
    return rows, traced


def _compare(plugin, ckpt, hp, runner, media, result, max_new_tokens, report, recorder):
    manifest = runner.manifest
    return compare_with_reference(
        plugin,
        ckpt,
        hp,
        runner,
        media,
        result,
        manifest["text"]["outtype"],
        manifest["onnx_dtype"],
        max_new_tokens,
        report=report,
        recorder=recorder,
    )


FLOAT_TYPES = ("f32", "f16", "bf16")


def float_bundle_runner(path: Path, runner):
    """The runner of `--float-bundle`: a float text type, the same model and host path as the traced bundle."""
    from smt_convert.runtime.pipeline import BundleRunner

    other = BundleRunner(path, host=runner.host)
    where = path / "manifest.json"
    outtype = other.manifest["text"]["outtype"]
    if outtype not in FLOAT_TYPES:
        raise SmtError(f"{where}: text.outtype: {outtype} is not a float type ({', '.join(FLOAT_TYPES)})")
    for key in ("architecture", "hparams", "prompt"):
        if _model_identity(other.manifest[key]) != _model_identity(runner.manifest[key]):
            raise SmtError(
                f"{where}: {key}: differs from the traced bundle's; --float-bundle must convert the same model"
            )
    return other
