"""One conversion, start to finish: plan (validate everything), write into a temporary directory, verify,
write the manifest last, then rename the directory into place.

Architecture-blind: everything model-specific comes from the plugin, through the contract in `plugin.py`.
Nothing here holds a whole model: the GGUF and the encoder files are written one tensor at a time, and the
Hugging Face reference runs one layer at a time (`reference_stream.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from smt_convert import __version__
from smt_convert.converters import boards, commands, memory
from smt_convert.converters.card import CARD_FILE, add_card_records, render_card
from smt_convert.converters.checkpoint import Checkpoint
from smt_convert.converters.document_shapes import check_checkpoint_documents
from smt_convert.converters.hashing import BackgroundHashes
from smt_convert.converters.hub import HubSource
from smt_convert.converters.onnx_graph import Weights
from smt_convert.converters.onnx_write import ONNX_DTYPES, WrittenEncoder, write_encoder
from smt_convert.converters.plugin import ArchPlugin, Plan
from smt_convert.converters.reference import ReferenceCache, compare_with_reference
from smt_convert.converters.output import PARTIAL_MARKER, claim_output, finish_output, release
from smt_convert.converters.precision import apply as apply_precision
from smt_convert.converters.report import Reporter
from smt_convert.converters.kquant import KQUANT_PRESETS, OVERRIDE_TYPES, quantize_gguf
from smt_convert.converters.text_gguf import (
    ALL_OUTTYPES,
    OUTTYPES,
    estimated_kquant_types,
    tensor_nbytes,
    write_general_metadata,
    write_text_gguf,
)
from smt_convert.converters.tokenizer import build_vocab, export_runtime_tokenizer, find_tokenizer, write_vocab
from smt_convert.converters.validate import check_tensors
from smt_convert.runtime import verify as V
from smt_convert.runtime.quality import Quality
from smt_convert.runtime.bundle import BOARD_CONFIG, GOLDEN_DIR, MANIFEST, MANIFEST_FORMAT, sha256_file
from smt_convert.runtime.errors import SmtError, Terminated
from smt_convert.runtime.media import modality

SUPPORTED_WEIGHT_DTYPES = {"F32", "F16", "BF16"}
EXACT_OUTTYPES = {"f32", "f16", "bf16"}  # the family's precision rules apply to the lossier types
GOLDEN_HOST = "board"  # goldens run the board's own host preprocessing: what `verify` on a board checks


@dataclass
class SharedWork:
    """What the variants of one recipe share: the checkpoint opened (and its files hashed) once, the encoder
    files already written (same checkpoint, size and precision: linked, not rebuilt), and the Hugging Face
    reference results."""

    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    source_records: dict[str, dict] = field(default_factory=dict)
    encoders: dict[tuple, tuple[Path, WrittenEncoder]] = field(default_factory=dict)
    references: ReferenceCache = field(default_factory=ReferenceCache)

    def checkpoint(self, directory: Path) -> Checkpoint:
        key = str(Path(directory).resolve())
        if key not in self.checkpoints:
            self.checkpoints[key] = Checkpoint.open(directory)
        return self.checkpoints[key]

    def source_record(self, ckpt: Checkpoint, sha256) -> dict:
        key = str(ckpt.root.resolve())
        if key not in self.source_records:
            self.source_records[key] = ckpt.source_record(sha256=sha256)
        return self.source_records[key]


@dataclass
class ConvertOptions:
    outtype: str | None = "f16"  # None: the board profile's (or f16)
    onnx_dtype: str | None = "fp32"  # None: the board profile's (or fp32)
    tokenizer_dir: Path | None = None
    stem: str | None = None
    force: bool = False
    verify: bool = True
    max_new_tokens: int = 16
    thresholds: dict | None = None  # overrides of runtime.verify's per-type thresholds (recipes)
    golden_input: Path | None = None  # verification/golden input instead of the plugin's own
    language: str | None = None  # prompt options used for the golden run
    fields: dict | None = None
    image_size: int | tuple[int, int] | None = None  # vision models only
    shared: SharedWork | None = None  # a recipe's shared work (None: a single conversion)
    hub: HubSource | None = None  # the checkpoint came from the Hugging Face Hub (repo, commit)
    tensor_types: dict[str, str] | None = None  # --tensor-type PATTERN=TYPE overrides (precision.py)
    board: str | None = None  # --board k1|k3|host: defaults for the types, ep_config, -c (boards.py)
    context: int | None = None  # --context: the -c the board commands carry and the memory is stated at


def make_plan(plugin: ArchPlugin, checkpoint_dir: Path, opts: ConvertOptions) -> tuple[Plan, Checkpoint]:
    """Read config and headers, validate them, find the tokenizer: every problem surfaces here, before any
    tensor data is read. The types are settled here too (--board defaults need the model's modality): the
    returned plan's `outtype`/`onnx_dtype` are the ones used."""
    for given, known, flag in (
        (opts.outtype, ALL_OUTTYPES, "--outtype"),
        (opts.onnx_dtype, ONNX_DTYPES, "--onnx-dtype"),
    ):
        if given is not None and given not in known:
            raise SmtError(f"{flag}: '{given}' is not one of {', '.join(known)}")

    ckpt = opts.shared.checkpoint(checkpoint_dir) if opts.shared else Checkpoint.open(checkpoint_dir)
    check_checkpoint_documents(opts.tokenizer_dir)
    hp = plugin.read_hparams(ckpt, opts)
    facts = plugin.facts(hp)
    choice = boards.choose(opts.board, opts.outtype, opts.onnx_dtype, facts.modality)
    opts = dataclasses.replace(opts, outtype=choice.outtype, onnx_dtype=choice.onnx_dtype)
    assert opts.outtype is not None and opts.onnx_dtype is not None  # settled by the choice
    to_ckpt = plugin.canonical_to_checkpoint(hp)
    expected = {to_ckpt(name): shape for name, shape in plugin.expected_tensors(hp).items()}
    plugin.check_weights(ckpt, hp)
    found = check_tensors(ckpt, expected, ignored=plugin.ignored_tensors(hp))
    for name in expected:
        info = ckpt.tensors[name]
        if info.dtype not in SUPPORTED_WEIGHT_DTYPES:
            raise SmtError(
                f"{info.file}: tensor {name}: dtype {info.dtype} is not supported "
                f"(expected {', '.join(sorted(SUPPORTED_WEIGHT_DTYPES))})"
            )
    tokenizer = find_tokenizer(ckpt.root, opts.tokenizer_dir)
    vocab = _vocab(plugin, tokenizer, facts.vocab_size)
    check_special_tokens(plugin.required_tokens(hp), vocab, tokenizer)
    stem = opts.stem or facts.default_stem
    tensors = plugin.text_tensors(hp)
    rules = plugin.precision_rules if opts.outtype not in EXACT_OUTTYPES else ()
    requant = None
    if opts.outtype in KQUANT_PRESETS:
        # written as the checkpoint's own float type (lossless), then requantised by llama.cpp (converters/kquant.py)
        source = source_float_type(ckpt, expected)
        written = plugin.text_types(tensors, source)
        estimate, precision = apply_precision(
            estimated_kquant_types(tensors, opts.outtype), tensors, rules, opts.tensor_types
        )
        bad = next((t for t in (opts.tensor_types or {}).values() if Q_TYPES[t.upper()] not in OVERRIDE_TYPES), None)
        if bad is not None:  # found now, not after the float GGUF is written
            raise SmtError(
                f"--tensor-type: {bad} is not a type llama.cpp's quantiser makes without an importance "
                f"matrix ({', '.join(sorted(t.name.lower() for t in OVERRIDE_TYPES))})"
            )
        requant = {
            "preset": opts.outtype,
            "source_type": source,
            "tensor_types": {
                **dict(opts.tensor_types or {}),
                **{r.pattern: r.qtype.lower() for r in rules if r.pattern not in (opts.tensor_types or {})},
            },
        }
        types = written
    else:
        types, precision = apply_precision(plugin.text_types(tensors, opts.outtype), tensors, rules, opts.tensor_types)
        estimate = types
        unwritable = next((f"{n}: {q.name}" for n, q in types.items() if q not in WRITABLE), None)
        if unwritable:
            raise SmtError(
                f"--tensor-type: {unwritable} is made by llama.cpp's quantiser, which runs only for a "
                f"K-quant --outtype ({', '.join(KQUANT_PRESETS)})"
            )
    text_bytes = sum(tensor_nbytes(t.shape, estimate[t.name]) for t in tensors)
    encoders = plugin.encoder_outputs(hp, stem) if facts.modality != "text" else []
    text_params = sum(int(np.prod(t.shape)) for t in tensors)
    params = {"text": text_params, **{e.role: e.params for e in encoders}}
    plan = Plan(
        plugin=plugin,
        hparams=hp,
        facts=facts,
        stem=stem,
        outtype=opts.outtype,
        onnx_dtype=opts.onnx_dtype,
        text_file=f"{stem}-text-{opts.outtype.replace('_', '')}.gguf",
        text_arch=facts.text_arch,
        modality=facts.modality,
        golden_file=modality(facts.modality).golden_file,
        text_tensors=tensors,
        text_types={k: v.name for k, v in types.items()},
        text_bytes=text_bytes,
        encoders=encoders,
        dropped=found.dropped,
        tokenizer=tokenizer,
        vocab=vocab,
        params=params,
        notes=[n for n in [facts.tie_note] if n] + plugin.plan_notes(hp),
        precision=precision,
        board=choice.board,
        warnings=list(choice.warnings),
        requant=requant,
        estimated_types={k: v.name for k, v in estimate.items()},
    )
    return plan, ckpt


WRITABLE = {OUTTYPES[t][0] for t in OUTTYPES}  # what gguf-py writes
Q_TYPES: type[gguf.GGMLQuantizationType] = gguf.GGMLQuantizationType


def source_float_type(ckpt: Checkpoint, expected: dict) -> str:
    """The float type a K-quant's intermediate GGUF is written in: the checkpoint's own (bf16 stays bf16, f32
    stays f32: no rounding before llama.cpp's), f16 when the checkpoint mixes them."""
    dtypes = {ckpt.tensors[name].dtype for name in expected}
    return {frozenset({"BF16"}): "bf16", frozenset({"F32"}): "f32"}.get(frozenset(dtypes), "f16")


def _vocab(plugin: ArchPlugin, tokenizer, vocab_size: int):
    """The GGUF vocabulary with the plugin's special-token rules (read now so token problems surface early)."""
    rules = plugin.tokens
    vocab = build_vocab(tokenizer, vocab_size, rules.pre, eot_token=rules.eot, eos_token=rules.eos)
    if rules.bos:
        if rules.bos == rules.eos:
            vocab.special_ids["bos"] = vocab.special_ids["eos"]  # eos_token is rules.eos: resolved or refused
        elif rules.bos in vocab.tokens:
            vocab.special_ids["bos"] = vocab.tokens.index(rules.bos)
        else:
            raise SmtError(f"{tokenizer.directory}: {rules.bos}: not in the tokenizer's vocabulary")
    vocab.chat_template = rules.chat_template or vocab.chat_template
    return vocab


def check_special_tokens(plan_tokens: list[str], vocab, tokenizer) -> None:
    """Tokens the prompt needs must be single entries of the vocabulary: found now, not after writing."""
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for token in plan_tokens:
        if token not in index:
            files = ", ".join(str(p) for p in tokenizer.files) or str(tokenizer.directory)
            raise SmtError(f"{files}: {token}: the model's prompt needs this special token, the tokenizer lacks it")


def _check_paths(checkpoint_dir: Path, out_dir: Path, opts: ConvertOptions) -> None:
    """The output must not be, or contain, an input: --force would replace it."""
    out = out_dir.resolve()
    for what, src in (("checkpoint", checkpoint_dir), ("--tokenizer", opts.tokenizer_dir)):
        if src is not None and (out == src.resolve() or out in src.resolve().parents):
            raise SmtError(f"{out_dir}: output would replace the {what} directory {src}; choose another output")
    if opts.stem is not None and (not opts.stem or Path(opts.stem).name != opts.stem or opts.stem.startswith(".")):
        raise SmtError(f"--stem: '{opts.stem}' must be a plain file-name prefix (no '/' or leading '.')")


def _on_signal(signum, frame):  # noqa: ANN001 - signal handler signature
    raise Terminated(128 + signum)


def convert(plugin: ArchPlugin, checkpoint_dir: Path, out_dir: Path, opts: ConvertOptions, report: Reporter) -> dict:
    """Write and verify a bundle; returns its manifest (whose verification may have failed: the caller
    decides the exit code). Raises SmtError on bad input, leaving nothing behind."""
    t_start = time.perf_counter()
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    _check_paths(checkpoint_dir, out_dir, opts)
    report.step(f"reading {checkpoint_dir}")
    plan, ckpt = make_plan(plugin, checkpoint_dir, opts)
    opts = dataclasses.replace(opts, outtype=plan.outtype, onnx_dtype=plan.onnx_dtype)
    for warning in plan.warnings:
        report.warning(warning)
    report.step(
        f"{plugin.name}: {plan.params['text'] / 1e6:.1f}M text parameters, layout {plan.facts.layout}, "
        f"tokenizer from {plan.tokenizer.kind}" + (f", for {plan.board.name.upper()}" if plan.board else "")
    )
    for note in plan.notes:
        report.step(f"note: {note}")
    claim = claim_output(out_dir, opts.force)
    tmp = claim.tmp
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    hashes = BackgroundHashes()
    try:
        if not (opts.shared and str(ckpt.root.resolve()) in opts.shared.source_records):
            hashes.submit(ckpt.config_path, *ckpt.weight_files)  # read beside the conversion, not after it
        manifest = _write_bundle(plan, ckpt, tmp, opts, report, hashes)
        manifest["timings"]["total_s"] = round(time.perf_counter() - t_start, 2)
        _write_manifest(tmp, manifest, complete=True, sha256=hashes.sha256)
        for note in finish_output(claim):
            report.warning(note)
    finally:
        hashes.close()
        release(claim)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if opts.shared is not None:
        for key, (path, written) in list(opts.shared.encoders.items()):
            if path.parent == tmp:
                opts.shared.encoders[key] = (claim.out_dir / path.name, written)
    report.step(f"bundle written to {out_dir}")
    return manifest


def _write_bundle(
    plan: Plan, ckpt: Checkpoint, tmp: Path, opts: ConvertOptions, report: Reporter, hashes: BackgroundHashes
) -> dict:
    """The four stages: text GGUF, encoder ONNX, board/runtime side files, verification with goldens. Each
    large file is handed to `hashes` as soon as it is complete."""
    timings = {}
    t0 = time.perf_counter()
    records = _write_text(plan, ckpt, tmp, report, opts.hub.repo if opts.hub else None)
    hashes.submit(tmp / plan.text_file)
    timings["text_gguf_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    encoders = _write_encoders(plan, ckpt, tmp, opts, report)
    for e in encoders:
        hashes.submit(*[tmp / f for f in (e.file, e.data_file) if f])
    timings["onnx_s"] = round(time.perf_counter() - t0, 2)

    files = {"text": plan.text_file, **{e.role: e.file for e in encoders}}
    tokenizer_files = _write_side_files(plan, files, tmp)
    source = opts.shared.source_record(ckpt, hashes.sha256) if opts.shared else ckpt.source_record(sha256=hashes.sha256)
    if opts.hub is not None:
        source = {**source, **opts.hub.record()}
    manifest = _manifest_skeleton(plan, source, records, encoders, tokenizer_files)
    add_card_records(manifest, ckpt.root, opts)
    manifest["timings"] = timings
    # The runtime reads the manifest, so a provisional one (complete: false, no hashes) goes in first.
    _write_manifest(tmp, manifest, complete=False)

    t0 = time.perf_counter()
    report.step("verifying the bundle" + (" against the Hugging Face model" if opts.verify else " (goldens only)"))
    answer: dict = {}
    rows, reference, quality, encoder_peak = _verify_and_store_goldens(plan, ckpt, tmp, opts, report, answer)
    manifest["golden"].update({k: v for k, v in answer.items() if v is not None})
    timings["verify_s"] = round(time.perf_counter() - t0, 2)
    _add_board_records(manifest, plan, tmp, opts, encoder_peak or 0)
    manifest["verification"] = {
        "reference": reference,
        "rows": [r.to_dict() for r in rows],
        "passed": all(r.ok for r in rows),
    }
    if quality is not None:
        manifest["quality"] = quality.to_dict()
    return manifest


def _add_board_records(manifest: dict, plan: Plan, tmp: Path, opts: ConvertOptions, encoder_peak: int) -> None:
    """What the bundle needs on the board: the memory at its `-c` and which board sizes hold it (memory.py), the
    board command lines carrying that `-c`, and with --board the profile and how much of the GGUF it accelerates."""
    shape = memory.read_text_shape(tmp / plan.text_file)  # the GGUF's header, read once for both
    sizes = plan.board.memory_gb if plan.board else ()
    n_ctx = memory.choose_context(shape, encoder_peak, opts.context, sizes)
    manifest["memory"] = memory.memory_record(shape, n_ctx, encoder_peak)
    manifest["board"] = commands.board_record(
        tuple(plan.plugin.board_flags),
        plan.text_file,
        plan.modality,
        commands.golden_input_path(manifest["golden"]),
        commands.golden_prompt(manifest),
        context=n_ctx,
        threads=plan.board.llama_threads if plan.board else None,
    )
    if plan.board is not None:
        manifest["board_profile"] = {
            "name": plan.board.name,
            "soc": plan.board.soc,
            "accelerated_types": sorted(plan.board.accelerated_types or []),
            "memory_gb": list(plan.board.memory_gb),
            "ep_config": plan.board.ep_config(),
            **boards.acceleration_record(plan.board, manifest["text"]["tensors"]),
        }


def _finite_float32(ckpt: Checkpoint, name: str, tensor) -> np.ndarray:
    """A torch tensor (or part) of checkpoint tensor `name` as float32, refused (naming file and tensor) if it
    holds NaN or inf."""
    import torch

    arr = tensor.to(torch.float32).numpy()
    if not np.isfinite(arr).all():
        raise SmtError(f"{ckpt.tensors[name].file}: tensor {name}: holds non-finite values (NaN or inf)")
    return arr


def _checked(ckpt: Checkpoint, name: str) -> np.ndarray:
    """One checkpoint tensor as checked float32."""
    return _finite_float32(ckpt, name, ckpt.load(name))


def _checked_blocks(ckpt: Checkpoint, name: str, rows: int):
    """`_checked`, a block of rows at a time (large tensors: the peak is one float32 block)."""
    for block in ckpt.row_blocks(name, rows):
        yield _finite_float32(ckpt, name, block)


def _write_text(plan: Plan, ckpt: Checkpoint, tmp: Path, report: Reporter, repo_id: str | None = None):
    """Stream the text GGUF (metadata, tokenizer, tensors one at a time)."""
    import gguf

    plugin, hp, vocab = plan.plugin, plan.hparams, plan.vocab

    def metadata(writer):
        write_general_metadata(writer, ckpt.root, plan.stem, repo_id)
        plugin.text_metadata(writer, hp)
        writer.add_file_type(OUTTYPES[plan.outtype if plan.requant is None else plan.requant["source_type"]][1])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab)

    requant = plan.requant
    written = plan.text_file if requant is None else f".{plan.text_file}.{requant['source_type']}.gguf"
    kind = plan.outtype if requant is None else f"{requant['source_type']}, for {plan.outtype}"
    report.step(f"writing {written} ({len(plan.text_tensors)} tensors, {kind})")
    types = {k: gguf.GGMLQuantizationType[v] for k, v in plan.text_types.items()}
    with report.progress(len(plan.text_tensors), "text gguf") as update:
        records = write_text_gguf(
            tmp / written,
            plan.text_arch,
            plan.text_tensors,
            types,
            lambda name: _checked(ckpt, name),
            metadata,
            on_tensor=lambda i, n, name: update(name),
            load_blocks=lambda name, rows: _checked_blocks(ckpt, name, rows),
        )
    if requant is None:
        return records
    report.step(f"quantising to {plan.outtype} with llama.cpp's quantiser -> {plan.text_file}")
    try:
        quantize_gguf(
            tmp / written, tmp / plan.text_file, plan.outtype, requant["tensor_types"] or None, log=report.detail
        )
    finally:
        (tmp / written).unlink(missing_ok=True)
    return gguf_records(tmp / plan.text_file)


def gguf_records(path: Path) -> list[dict]:
    """The manifest's per-tensor records (name, type, shape as numpy orders it, bytes) read from a written GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return [
        {
            "name": t.name,
            "type": gguf.GGMLQuantizationType(t.tensor_type).name,
            "shape": [int(d) for d in reversed(t.shape.tolist())],
            "bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]


def checkpoint_weights(ckpt: Checkpoint, to_ckpt) -> Weights:
    """Canonical-name access to the checkpoint for graph builders (read one tensor at a time, when saved)."""

    def shape(name: str) -> tuple[int, ...]:
        info = ckpt.tensors.get(to_ckpt(name))
        if info is None:
            raise SmtError(f"{ckpt.root}: tensor {to_ckpt(name)}: the encoder needs it but it is missing")
        return info.shape

    return Weights(load=lambda name: _checked(ckpt, to_ckpt(name)), shape=shape)


def _write_encoders(plan: Plan, ckpt: Checkpoint, tmp: Path, opts: ConvertOptions, report: Reporter) -> list:
    """Build each encoder graph from the weights and write it; in a recipe, a file an earlier variant wrote
    for the same checkpoint, preprocessing (image size) and precision is linked instead of written again."""
    if not plan.encoders:
        return []
    hp, dtype = plan.hparams, plan.onnx_dtype
    shared = opts.shared
    size = json.dumps(plan.plugin.preprocessing(hp), sort_keys=True, default=str)
    keys = [(str(ckpt.root.resolve()), size, planned.role, dtype) for planned in plan.encoders]
    done = [shared.encoders.get(key) if shared else None for key in keys]
    written: list = [None] * len(plan.encoders)
    for i, (planned, previous) in enumerate(zip(plan.encoders, done)):
        if previous is not None and _link(previous[0], tmp / planned.file, previous[1].data_file):
            report.step(f"{planned.file}: same encoder as an earlier variant, linked")
            written[i] = previous[1]
    if any(w is None for w in written):
        weights = checkpoint_weights(ckpt, plan.plugin.canonical_to_checkpoint(hp))
        graphs = plan.plugin.build_encoders(weights, hp, dtype)
        if len(graphs) != len(plan.encoders):
            raise SmtError(
                f"{plan.plugin.name}: built {len(graphs)} encoder graphs for {len(plan.encoders)} planned files"
            )
        for i, (planned, graph) in enumerate(zip(plan.encoders, graphs)):
            if written[i] is None:
                report.step(f"writing {planned.file} ({dtype})")
                written[i] = write_encoder(graph, tmp / planned.file, dtype, log=report.detail)
    if shared is not None:
        for key, planned, record in zip(keys, plan.encoders, written):
            shared.encoders[key] = (tmp / planned.file, record)
    return written


def _link(source: Path, target: Path, data_file: str | None) -> bool:
    """Hard-link an encoder file (and its data) written by an earlier variant. Only under the same file name:
    the .onnx names its data file inside, so a renamed pair would not load. False if it cannot be linked."""
    if source.name != target.name:
        return False
    pairs = [(source, target)] + ([(source.with_name(data_file), target.with_name(data_file))] if data_file else [])
    try:
        for src, dst in pairs:
            os.link(src, dst)
    except OSError:
        for _, dst in pairs:
            dst.unlink(missing_ok=True)
        return False
    return True


def _write_side_files(plan: Plan, files: dict[str, str], tmp: Path) -> list[str]:
    """Board config.json, the plugin's extra board files, and the tokenizer files the Python runtime reads."""
    plugin, hp = plan.plugin, plan.hparams
    config = plugin.board_config(hp, files)
    if plan.board is not None and plan.board.ep_config() and plan.modality != "text":
        config["ep_config"] = plan.board.ep_config()  # the board runtime passes it to SpacemiT's ONNX Runtime EP
    (tmp / BOARD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for name, content in plugin.side_files(hp, files, plan.stem).items():
        (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
    return [p.name for p in export_runtime_tokenizer(plan.tokenizer, tmp)]


def _verify_and_store_goldens(
    plan: Plan, ckpt: Checkpoint, tmp: Path, opts: ConvertOptions, report: Reporter, golden_answer: dict
) -> tuple[list, str | None, Quality | None, int | None]:
    """Run the bundle on the golden input, store what it produced, and compare with HF (unless --no-verify)."""
    from smt_convert.runtime.pipeline import BundleRunner

    plugin, hp = plan.plugin, plan.hparams
    runner = BundleRunner(tmp, require_complete=False, host=GOLDEN_HOST)
    golden = tmp / GOLDEN_DIR
    golden.mkdir()
    kind = modality(plan.modality)
    media = None
    if kind.has_media:
        assert kind.load is not None and kind.save is not None and kind.golden_file is not None  # has_media
        media = kind.load(opts.golden_input) if opts.golden_input else plugin.golden_media(hp)
        kind.save(media, golden / kind.golden_file)
    fields = opts.fields or plugin.golden_fields()
    # The board-vs-hf rows cost one more encoder pass (a full vision tower at 812x812: ~15 s here): part of the
    # verification, so --no-verify skips them. First, so the golden run below (board path) then releases the encoder.
    hf_embeds = runner.encode(runner.features(media, host="hf")) if media is not None and opts.verify else None
    result = runner.run(
        media, fields=fields, language=opts.language, max_new_tokens=opts.max_new_tokens, keep_encoder=False
    )
    if media is not None:
        assert result.media_embeds is not None  # a run with media has its embeddings
        np.save(golden / "encoder.npy", result.media_embeds.astype(np.float32))
    top = np.argsort(-result.first_logits)[:10]
    expected = {
        "tokens": result.tokens,
        "fields": fields,
        "language": opts.language,
        "text": result.text,
        "top_logits": {"ids": top.tolist(), "values": result.first_logits[top].astype(float).tolist()},
    }
    rows: list[V.Row]
    rows, reference, quality = [], None, None
    if opts.verify:
        _quiet_library_logs()
        rows, expected["reference_tokens"], quality = compare_with_reference(
            plugin,
            ckpt,
            hp,
            runner,
            media,
            result,
            plan.outtype,
            plan.onnx_dtype,
            opts.max_new_tokens,
            opts.thresholds,
            cache=opts.shared.references if opts.shared else None,
            report=report,
        )
        reference = "transformers " + _transformers_version() + " (streamed layer by layer)"
        if not all(r.ok for r in rows):  # say where: the first block outside tolerance (converters/trace_bundle.py)
            from smt_convert.converters.trace_bundle import summary_row, trace_after_failure

            report.step("verification failed: tracing the bundle block by block")
            rows.append(summary_row(trace_after_failure(plugin, ckpt, hp, runner, media, result)))
    if media is not None and opts.golden_input is None:
        from smt_convert.converters.golden_inputs import text_of

        expected["input_text"] = text_of(kind.name)  # what the golden input says or shows
    (golden / "expected.json").write_text(json.dumps(expected, indent=1))
    golden_answer.update(input_text=expected.get("input_text"), answer=result.text)
    # Re-running the goldens here would repeat the whole run (minutes for a large vision tower) to compare it
    # with itself; `smt-convert verify` re-runs them on the target, which is where they can fail.
    if hf_embeds is not None:
        assert result.media_embeds is not None  # as above
        rows += V.host_path_rows(result.media_embeds, hf_embeds, kind.name)
    stored = len(list(golden.iterdir()))
    rows.append(
        V.Row(
            "goldens", "stored", f"{stored} files in {GOLDEN_DIR}/", "re-run by `smt-convert verify`", True, gate=False
        )
    )
    report.detail(V.format_table(rows))
    return rows, reference, quality, runner.encoder_peak_bytes


def _manifest_skeleton(plan: Plan, source: dict, records, encoders: list[WrittenEncoder], tokenizer_files) -> dict:
    plugin, hp, vocab = plan.plugin, plan.hparams, plan.vocab
    kind = modality(plan.modality)
    return {
        "format": MANIFEST_FORMAT,
        "complete": False,
        "tool": {"name": "smt-convert", "version": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": plugin.name,
        "hf_architectures": list(plugin.hf_architectures),
        "modality": plan.modality,
        "source": {
            **source,
            "layout": plan.facts.layout,
            "tokenizer": {"kind": plan.tokenizer.kind, "files": [str(p) for p in plan.tokenizer.files]},
        },
        "hparams": plugin.hparams_record(hp),
        "text": {
            "file": plan.text_file,
            "gguf_arch": plan.text_arch,
            "outtype": plan.outtype,
            "precision": plan.precision,
            "quantiser": _quantiser(plan),
            "tensors": records,
            "rope_dimension_sections": list(plan.facts.rope_sections),
            "vocab": {
                "model": vocab.model,
                "pre": vocab.pre,
                "size": len(vocab.tokens),
                "special_ids": vocab.special_ids,
            },
        },
        "dropped_tensors": plan.dropped,
        "encoders": [e.record() for e in encoders],
        "onnx_dtype": plan.onnx_dtype,
        "preprocessing": {**plugin.preprocessing(hp), **({"host": GOLDEN_HOST} if kind.has_media else {})},
        "prompt": plugin.prompt_record(hp),
        "tokenizer_files": tokenizer_files,
        "golden": {
            "directory": GOLDEN_DIR,
            "input": kind.golden_file,
            "files": ([kind.golden_file, "encoder.npy"] if kind.has_media else []) + ["expected.json"],
        },
        "notes": plan.notes,
    }


def _write_manifest(root: Path, manifest: dict, complete: bool, sha256=sha256_file) -> None:
    """The final manifest hashes every file and says complete; it is written last, so a directory without
    a complete manifest is not a bundle."""
    manifest["complete"] = complete
    if complete:
        card = root / CARD_FILE
        entry = lambda p: {"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256(p)}
        manifest["files"] = [
            entry(p)
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, PARTIAL_MARKER) and p != card
        ]
        # The card shows the manifest as JSON has it and the other files' hashes; then it is listed like them.
        card.write_text(render_card(json.loads(json.dumps(manifest, default=_json_default))), encoding="utf-8")
        manifest["files"] = sorted(manifest["files"] + [entry(card)], key=lambda e: Path(e["path"]))
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default) + "\n")


def _quantiser(plan: Plan) -> dict:
    """Who quantised the text weights: gguf-py's quants module, or llama.cpp's `llama_model_quantize` (K-quants)."""
    if plan.requant is None:
        return {"by": "gguf-py", "version": _version("gguf")}
    return {
        "by": "llama.cpp llama_model_quantize (llama-cpp-python)",
        "version": _version("llama_cpp_python"),
        "preset": plan.requant["preset"],
        "from": plan.requant["source_type"],
        "tensor_types": plan.requant["tensor_types"],
    }


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _quiet_library_logs() -> None:
    """transformers' progress bars and warnings are noise inside our own progress output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
