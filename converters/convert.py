"""One conversion, start to finish: plan (validate everything), write into a temporary directory, verify,
write the manifest last, then rename the directory into place.

Architecture-blind: everything model-specific comes from the plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smt_convert import __version__
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.onnx_export import ONNX_DTYPES
from smt_convert.converters.plugin import Plan
from smt_convert.converters.reference import compare_with_reference
from smt_convert.converters.report import Reporter
from smt_convert.converters.text_gguf import OUTTYPES, choose_types, tensor_nbytes, write_text_gguf
from smt_convert.converters.tokenizer import build_vocab, export_runtime_tokenizer, find_tokenizer, write_vocab
from smt_convert.converters.validate import check_tensors
from smt_convert.runtime import verify as V
from smt_convert.runtime.bundle import BOARD_CONFIG, GOLDEN_DIR, MANIFEST, MANIFEST_FORMAT, sha256_file
from smt_convert.runtime.errors import SmtError

SUPPORTED_WEIGHT_DTYPES = {"F32", "F16", "BF16"}


@dataclass
class ConvertOptions:
    outtype: str = "f16"
    onnx_dtype: str = "fp32"
    tokenizer_dir: Path | None = None
    stem: str | None = None
    force: bool = False
    verify: bool = True
    max_new_tokens: int = 16
    thresholds: dict | None = None       # overrides of runtime.verify's per-type thresholds (recipes)
    golden_input: Path | None = None     # verification/golden input instead of the plugin's own
    language: str | None = None          # prompt options used for the golden run
    fields: dict | None = None
    image_size: int | None = None        # vision models only


def make_plan(plugin, checkpoint_dir: Path, opts: ConvertOptions) -> tuple[Plan, Checkpoint]:
    """Read config and headers, validate them, find the tokenizer: every problem surfaces here, before any
    tensor data is read."""
    if opts.outtype not in OUTTYPES:
        raise SmtError(f"--outtype: '{opts.outtype}' is not one of {', '.join(OUTTYPES)}")
    if opts.onnx_dtype not in ONNX_DTYPES:
        raise SmtError(f"--onnx-dtype: '{opts.onnx_dtype}' is not one of {', '.join(ONNX_DTYPES)}")

    ckpt = Checkpoint.open(checkpoint_dir)
    hp = plugin.read_hparams(ckpt, opts)
    to_ckpt = plugin.canonical_to_checkpoint(hp)
    expected = {to_ckpt(name): shape for name, shape in plugin.expected_tensors(hp).items()}
    plugin.check_weights(ckpt, hp)
    found = check_tensors(ckpt, expected, ignored=plugin.ignored_tensors(hp))
    for name in expected:
        info = ckpt.tensors[name]
        if info.dtype not in SUPPORTED_WEIGHT_DTYPES:
            raise SmtError(f"{info.file}: tensor {name}: dtype {info.dtype} is not supported "
                           f"(expected {', '.join(sorted(SUPPORTED_WEIGHT_DTYPES))})")
    tokenizer = find_tokenizer(ckpt.root, opts.tokenizer_dir)
    stem = opts.stem or plugin.default_stem(hp)
    tensors = plugin.text_tensors(hp)
    types = plugin.text_types(tensors, opts.outtype) if hasattr(plugin, "text_types") else \
        choose_types(tensors, opts.outtype)
    modality = plugin.modality_of(hp) if hasattr(plugin, "modality_of") else plugin.modality
    text_bytes = sum(tensor_nbytes(t.shape, types[t.name]) for t in tensors)
    encoders = plugin.encoder_outputs(hp, stem) if modality != "text" else []
    text_params = sum(int(np.prod(t.shape)) for t in tensors)
    params = {"text": text_params, **{e.role: e.params for e in encoders}}
    plan = Plan(plugin=plugin, hparams=hp, stem=stem, outtype=opts.outtype, onnx_dtype=opts.onnx_dtype,
                text_file=f"{stem}-text-{opts.outtype.replace('_', '')}.gguf",
                text_arch=getattr(hp, "gguf_arch", None) or plugin.text_arch, modality=modality,
                golden_file=GOLDEN_FILES.get(modality),
                text_tensors=tensors, text_types={k: v.name for k, v in types.items()}, text_bytes=text_bytes,
                encoders=encoders, dropped=found.dropped, tokenizer=tokenizer, params=params,
                notes=plugin.plan_notes(hp) if hasattr(plugin, "plan_notes") else [])
    return plan, ckpt


def _check_paths(checkpoint_dir: Path, out_dir: Path, opts: ConvertOptions) -> None:
    """The output must not be, or contain, an input: --force would delete it."""
    out = out_dir.resolve()
    for what, src in (("checkpoint", checkpoint_dir), ("--tokenizer", opts.tokenizer_dir)):
        if src is not None and (out == src.resolve() or out in src.resolve().parents):
            raise SmtError(f"{out_dir}: output would replace the {what} directory {src}; choose another output")
    if opts.stem is not None and (not opts.stem or Path(opts.stem).name != opts.stem or opts.stem.startswith(".")):
        raise SmtError(f"--stem: '{opts.stem}' must be a plain file-name prefix (no '/' or leading '.')")


def prepare_output(out_dir: Path, force: bool) -> Path:
    """Refuse a non-empty output unless forced; return a fresh temporary directory beside it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SmtError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SmtError(f"{out_dir}: output directory is not empty (use --force to replace it)")
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    except OSError as exc:
        raise SmtError(f"{parent}: cannot create the output ({exc.strerror or exc})") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a bundle is meant to be shared
    return tmp


def finish_output(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temporary directory into place; the old bundle (with --force) goes only after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError as exc:
        if old is not None:
            old.rename(out_dir)
        raise SmtError(f"{out_dir}: cannot move the finished bundle into place ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert(plugin, checkpoint_dir: Path, out_dir: Path, opts: ConvertOptions, report: Reporter) -> dict:
    """Write and verify a bundle; returns its manifest (whose verification may have failed: the caller
    decides the exit code). Raises SmtError on bad input, leaving nothing behind."""
    t_start = time.perf_counter()
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    _check_paths(checkpoint_dir, out_dir, opts)
    report.step(f"reading {checkpoint_dir}")
    plan, ckpt = make_plan(plugin, checkpoint_dir, opts)
    report.step(f"{plugin.name}: {plan.params['text'] / 1e6:.1f}M text parameters, layout {plan.hparams.layout}, "
                f"tokenizer from {plan.tokenizer.kind}")
    for note in plan.notes:
        report.step(f"note: {note}")
    tmp = prepare_output(out_dir, opts.force)
    try:
        manifest = _write_bundle(plan, ckpt, tmp, opts, report)
        manifest["timings"]["total_s"] = round(time.perf_counter() - t_start, 2)
        _write_manifest(tmp, manifest, complete=True)
        finish_output(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        ckpt.close()
    report.step(f"bundle written to {out_dir}")
    return manifest


def _write_bundle(plan: Plan, ckpt: Checkpoint, tmp: Path, opts: ConvertOptions, report: Reporter) -> dict:
    """The four stages: text GGUF, encoder ONNX, board/runtime side files, verification with goldens."""
    timings = {}
    t0 = time.perf_counter()
    records, vocab = _write_text(plan, ckpt, tmp, report)
    timings["text_gguf_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    _quiet_library_logs()
    report.step("loading the encoder" + (" and the Hugging Face reference" if opts.verify else "") + " from the checkpoint")
    model = None
    if opts.verify or plan.encoders:
        model = plan.plugin.build_torch_model(ckpt, plan.hparams, parts="all" if opts.verify else "encoder")
    encoder_reports = _export_encoders(plan, model, tmp, report)
    timings["onnx_s"] = round(time.perf_counter() - t0, 2)

    files = {"text": plan.text_file, **{e["role"]: e["file"] for e in encoder_reports}}
    tokenizer_files = _write_side_files(plan, files, tmp)
    manifest = _manifest_skeleton(plan, ckpt, records, encoder_reports, tokenizer_files, vocab)
    manifest["timings"] = timings
    # The runtime reads the manifest, so a provisional one (complete: false, no hashes) goes in first.
    _write_manifest(tmp, manifest, complete=False)

    t0 = time.perf_counter()
    report.step("verifying the bundle" + (" against the Hugging Face model" if opts.verify else " (goldens only)"))
    rows = _verify_and_store_goldens(plan, model if opts.verify else None, tmp, opts, report)
    timings["verify_s"] = round(time.perf_counter() - t0, 2)
    manifest["verification"] = {"reference": "transformers " + _transformers_version() if opts.verify else None,
                                "rows": [r.to_dict() for r in rows], "passed": all(r.ok for r in rows)}
    return manifest


def _write_text(plan: Plan, ckpt: Checkpoint, tmp: Path, report: Reporter):
    """Stream the text GGUF (metadata, tokenizer, tensors one at a time)."""
    import gguf
    import torch

    plugin, hp = plan.plugin, plan.hparams
    vocab = build_vocab(plan.tokenizer, hp.vocab_size, plugin.vocab_pre, eot_token=plugin.eot_token,
                        eos_token=plugin.eos_token)
    if plugin.bos_token:
        vocab.special_ids["bos"] = vocab.special_ids.get("eos") if plugin.bos_token == plugin.eos_token \
            else _token_index(vocab, plugin.bos_token, plan)
    vocab.chat_template = plugin.chat_template or vocab.chat_template

    def metadata(writer):
        plugin.text_metadata(writer, hp, plan.stem)
        writer.add_file_type(OUTTYPES[plan.outtype][1])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab)

    def load(name: str) -> np.ndarray:
        return ckpt.load(name).to(torch.float32).numpy()

    report.step(f"writing {plan.text_file} ({len(plan.text_tensors)} tensors, {plan.outtype})")
    types = {k: gguf.GGMLQuantizationType[v] for k, v in plan.text_types.items()}
    with report.progress(len(plan.text_tensors), "text gguf") as update:
        records = write_text_gguf(tmp / plan.text_file, plan.text_arch, plan.text_tensors, types, load, metadata,
                                  on_tensor=lambda i, n, name: update(name))
    return records, vocab


def _token_index(vocab, token: str, plan: Plan) -> int:
    try:
        return vocab.tokens.index(token)
    except ValueError:
        raise SmtError(f"{plan.tokenizer.directory}: {token}: not in the tokenizer's vocabulary") from None


def _export_encoders(plan: Plan, model, tmp: Path, report: Reporter) -> list[dict]:
    """Export, check and simplify each ONNX file the plan lists; returns their manifest records."""
    from smt_convert.converters.onnx_export import export_onnx

    records = []
    if not plan.encoders:
        return []
    for planned, spec in zip(plan.encoders, plan.plugin.encoder_specs(model, plan.hparams)):
        report.step(f"exporting {planned.file} ({plan.onnx_dtype})")
        rep = export_onnx(spec, tmp / planned.file, dtype=plan.onnx_dtype, log=report.detail)
        records.append({"role": planned.role, "file": planned.file, "inputs": rep.inputs, "outputs": rep.outputs,
                        "exporter": rep.exporter, "simplified": rep.simplified, "notes": rep.notes,
                        "external_data": rep.external_data, "export_checks": rep.checks,
                        "export_seconds": round(rep.export_seconds, 2)})
    return records


def _write_side_files(plan: Plan, files: dict[str, str], tmp: Path) -> list[str]:
    """Board config.json, the encoder split metadata, and the tokenizer files the Python runtime reads."""
    plugin, hp = plan.plugin, plan.hparams
    (tmp / BOARD_CONFIG).write_text(json.dumps(plugin.board_config(hp, files), indent=2) + "\n")
    if hasattr(plugin, "split_metadata"):
        split = tmp / f"{plan.stem}-encoder-split-metadata.json"
        split.write_text(json.dumps(plugin.split_metadata(hp, files), indent=2) + "\n")
    return [p.name for p in export_runtime_tokenizer(plan.tokenizer, tmp)]


def _verify_and_store_goldens(plan: Plan, model, tmp: Path, opts: ConvertOptions, report: Reporter) -> list:
    """Run the bundle on the plugin's golden input, store what it produced, compare with HF (if a model is
    given), then re-check the stored goldens through the same path `smt-convert verify` uses."""
    from smt_convert.runtime.pipeline import BundleRunner

    plugin, hp = plan.plugin, plan.hparams
    runner = BundleRunner(tmp, require_complete=False)
    golden = tmp / GOLDEN_DIR
    golden.mkdir()
    media = None
    if plan.golden_file:
        media = load_media(opts.golden_input, plan.modality) if opts.golden_input else plugin.golden_media(hp)
        save_media(media, plan.modality, golden / plan.golden_file)
    fields = opts.fields or plugin.golden_fields()
    result = runner.run(media, fields=fields, language=opts.language, max_new_tokens=opts.max_new_tokens)
    if media is not None:
        np.save(golden / "encoder.npy", result.media_embeds.astype(np.float32))
    top = np.argsort(-result.first_logits)[:10]
    expected = {"tokens": result.tokens, "fields": fields, "language": opts.language, "text": result.text,
                "top_logits": {"ids": top.tolist(), "values": result.first_logits[top].astype(float).tolist()}}
    rows = []
    if model is not None:
        rows, expected["reference_tokens"] = compare_with_reference(
            plugin, hp, model, runner, media, result, plan.outtype, opts.onnx_dtype, opts.max_new_tokens,
            opts.thresholds)
    (golden / "expected.json").write_text(json.dumps(expected, indent=1))
    rows += V.golden_rows(runner)
    report.detail(V.format_table(rows))
    return rows


def _manifest_skeleton(plan: Plan, ckpt: Checkpoint, records, encoder_reports, tokenizer_files, vocab) -> dict:
    plugin, hp = plan.plugin, plan.hparams
    return {
        "format": MANIFEST_FORMAT,
        "complete": False,
        "tool": {"name": "smt-convert", "version": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": plugin.name,
        "hf_architectures": list(plugin.hf_architectures),
        "modality": plan.modality,
        "source": {**ckpt.source_record(), "layout": hp.layout, "tokenizer": {
            "kind": plan.tokenizer.kind, "files": [str(p) for p in plan.tokenizer.files]}},
        "hparams": plugin.hparams_record(hp),
        "text": {"file": plan.text_file, "gguf_arch": plan.text_arch, "outtype": plan.outtype,
                 "tensors": records, "rope_dimension_sections": list(hp.rope_sections),
                 "vocab": {"model": vocab.model, "pre": vocab.pre, "size": len(vocab.tokens),
                           "special_ids": vocab.special_ids}},
        "dropped_tensors": plan.dropped,
        "encoders": encoder_reports,
        "onnx_dtype": plan.onnx_dtype,
        "preprocessing": plugin.preprocessing(hp),
        "prompt": plugin.prompt_record(hp),
        "tokenizer_files": tokenizer_files,
        "golden": {"directory": GOLDEN_DIR, "input": plan.golden_file,
                   "files": ([plan.golden_file, "encoder.npy"] if plan.golden_file else []) + ["expected.json"]},
        "notes": plan.notes,
    }


GOLDEN_FILES = {"audio": "input.wav", "image": "input.png"}


def load_media(path: Path, modality: str):
    if modality == "audio":
        from smt_convert.runtime.audio import load_audio

        return load_audio(path)
    from smt_convert.runtime.image import load_image

    return load_image(path)


def save_media(media, modality: str, path: Path) -> None:
    if modality == "audio":
        import soundfile

        soundfile.write(path, media, 16000, subtype="FLOAT")
    else:
        from PIL import Image

        Image.fromarray(np.asarray(media, dtype=np.uint8)).save(path)


def _write_manifest(root: Path, manifest: dict, complete: bool) -> None:
    """The final manifest hashes every file and says complete; it is written last, so a directory without
    a complete manifest is not a bundle."""
    manifest["complete"] = complete
    if complete:
        manifest["files"] = [
            {"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
        ]
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _quiet_library_logs() -> None:
    """torch's exporter warns about optional torchvision ops on every export; that is noise for our users."""
    import logging

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
