"""The `smt-convert` command line.

Conversion commands (`<arch>`, `convert`, `inspect`) need the [convert] extra (torch, transformers);
`run`, `verify` (without --reference) and `list` work on a board with only the base install.
Errors a user can fix print one line and exit 2; a failed verification exits 1.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from smt_convert import __version__
from smt_convert.runtime.errors import SmtError, Terminated

# Kept here (not imported from converters) so that `run` and `verify` start without importing conversion code.
OUTTYPE_CHOICES = [
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q5_1",
    "q5_0",
    "q4_1",
    "q4_0",  # gguf-py writes these
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
]  # llama.cpp's quantiser (the [kquants] extra)
ONNX_DTYPE_CHOICES = ["fp32", "fp16", "int8"]
BOARD_CHOICES = ["k1", "k3", "host"]
# Bounds on what drives time and memory (README, "Limits"), checked when the command line is read.
MAX_VERIFY_TOKENS = 4096
MAX_RUN_TOKENS = 32768
MAX_THREADS = 256
MAX_PROMPT_CHARS = 32768
# What the [convert] extra adds: a board's base install has none of these.
CONVERSION_PACKAGES = {
    "torch",
    "transformers",
    "safetensors",
    "onnx",
    "onnx_ir",
    "onnxscript",
    "sentencepiece",
    "huggingface_hub",
}


class SmtGroup(click.Group):
    """Turns SmtError into a one-line message and its exit code, with no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SmtError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Terminated as exc:
            click.echo("hangup" if exc.exit_code == 129 else "terminated", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # stdout closed (a pipe's reader gone) or full (> /dev/full)
            if exc.errno not in (errno.EPIPE, errno.ENOSPC) or exc.filename is not None:
                raise
            _stdout_lost(exc)
        except ImportError as exc:  # a conversion command on the base (board) install
            package = (exc.name or "").split(".")[0]
            if package not in CONVERSION_PACKAGES:
                raise
            click.echo(
                f"error: {ctx.invoked_subcommand or 'this command'}: needs the conversion packages "
                f"(pip install 'smt-convert[convert]'); {package} is not installed",
                err=True,
            )
            sys.exit(2)

    def main(self, *args, **kwargs):
        try:
            kwargs.pop("standalone_mode", None)
            result = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]  # click overloads on standalone_mode; forwarded *args match no overload
            sys.stdout.flush()  # a full or closed stdout fails here, not in the interpreter's exit
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ENOSPC) or exc.filename is not None:
                raise
            _stdout_lost(exc)
        sys.exit(result if isinstance(result, int) else 0)

    def list_commands(self, ctx):
        return sorted(super().list_commands(ctx), key=lambda n: (n not in ("list", "inspect", "convert"), n))


def _stdout_lost(exc: OSError) -> None:
    """One line on stderr and exit 2; stdout is pointed at /dev/null so the interpreter's own final flush
    cannot print a traceback."""
    try:
        sys.stdout = open(os.devnull, "w")
    except OSError:
        pass
    try:
        click.echo(f"error: cannot write to standard output ({exc.strerror})", err=True)
    except OSError:
        pass
    os._exit(2) if exc.errno == errno.EPIPE else sys.exit(2)


def _reporter(ctx):
    from smt_convert.converters.report import Reporter

    return Reporter(ctx.obj["verbosity"])


@click.group(cls=SmtGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="smt-convert")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors (no progress).")
@click.option("-v", "--verbose", is_flag=True, help="Also print per-tensor and per-check details.")
@click.pass_context
def cli(ctx, quiet, verbose):
    """Convert Hugging Face multimodal checkpoints into verified SpacemiT board bundles.

    \b
    A bundle holds the text decoder as GGUF (llama.cpp), the audio/vision encoder as ONNX with the board's
    static interface, config.json for the board runtime's --smt-config-dir, and manifest.json (sources,
    hashes, I/O contracts, preprocessing, verification results, golden vectors).

    \b
    Examples:
      smt-convert list
      smt-convert inspect ./Qwen3-ASR-0.6B
      smt-convert qwen3-asr ./Qwen3-ASR-0.6B ./out --outtype q8_0
      smt-convert qwen3-asr Qwen/Qwen3-ASR-0.6B ./out   (Hub repo id; HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN apply)
      smt-convert run ./out --audio speech.wav --language English
      smt-convert verify ./out
    """
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose cannot be combined")
    ctx.obj = {"verbosity": 0 if quiet else 2 if verbose else 1}
    if not verbose:  # transformers' own warnings (e.g. config keys it does not know) are noise in our output
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@cli.command("list")
def list_cmd():
    """List the supported architectures and what each produces."""
    from smt_convert.converters.plugin import all_plugins

    for plugin in all_plugins():
        click.echo(f"{plugin.name}: {plugin.summary}")
        click.echo(f"  HF architectures: {', '.join(plugin.hf_architectures)}")
        click.echo(f"  text GGUF arch:   {plugin.text_arch}")
        for item in plugin.produces:
            click.echo(f"  - {item}")


def _verbosity_options(f):
    """-q/-v are accepted after the command too (`smt-convert run ... -q`), as people type them."""

    def apply(ctx, param, value):
        if value:
            ctx.find_root().obj["verbosity"] = 0 if param.name == "quiet" else 2
        return value

    f = click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=apply,
        help="Also print per-tensor and per-check details.",
    )(f)
    return click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=apply, help="Print only results and errors."
    )(f)


def _parse_image_size(ctx, param, value):
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter(f"expected N or HxW (e.g. 384 or 384x512), got {value!r}")
    sizes = [int(p) for p in parts]
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _conversion_options(f):
    options = [
        click.option(
            "--outtype",
            type=click.Choice(OUTTYPE_CHOICES),
            default=None,
            help="Type of the text GGUF's weight matrices (norms and biases stay f32). K-quants and "
            "iq4 are made by llama.cpp's own quantiser (pip install 'smt-convert[kquants]'). "
            "Default: f16, or the --board profile's.",
        ),
        click.option(
            "--onnx-dtype",
            type=click.Choice(ONNX_DTYPE_CHOICES),
            default=None,
            help="Encoder weights/compute precision (inputs and outputs stay float32). Default: fp32, or "
            "the --board profile's.",
        ),
        click.option(
            "--board",
            type=click.Choice(BOARD_CHOICES),
            default=None,
            help="Target board: its defaults for --outtype/--onnx-dtype (k1: q4_0 + int8 audio / fp16 "
            "vision encoder; k3: the same; host: q8_0 + fp32), its ONNX Runtime thread settings "
            "(config.json ep_config) and a -c that fits its memory. Explicit options win; a type the "
            "board does not accelerate is a warning.",
        ),
        click.option(
            "--context",
            type=click.IntRange(256, 1 << 20),
            default=None,
            help="The -c the bundle's board commands carry and its memory is stated at (default 4096, or "
            "what the --board's memory holds, at most the model's own context length).",
        ),
        click.option(
            "--image-size",
            default=None,
            callback=_parse_image_size,
            help="Vision input side N (square) or HxW, multiples of 32 (Qwen3.5); default from the model.",
        ),
        click.option(
            "--tokenizer",
            "tokenizer_dir",
            default=None,
            type=click.Path(path_type=Path, exists=True, file_okay=False),
            help="Directory with the tokenizer files, when the checkpoint lacks them.",
        ),
        click.option(
            "--revision",
            default=None,
            help="Branch, tag or commit of a Hugging Face repo id CHECKPOINT (default main).",
        ),
        click.option(
            "--tensor-type",
            "tensor_types",
            multiple=True,
            metavar="PATTERN=TYPE",
            help="Give GGUF tensors whose name matches the regular expression PATTERN this ggml type "
            "(e.g. ssm_alpha=f16, 'blk\\.0\\.'=q8_0), as llama-quantize's option; repeatable, "
            "applied last.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _resolve_checkpoint(ctx, checkpoint: str, revision: str | None, what: str = "CHECKPOINT"):
    """A local directory as given; a Hugging Face repo id ORG/NAME (no local path of that name) fetched through
    the Hub cache (converters/hub.py)."""
    from smt_convert.converters.hub import resolve_checkpoint

    verbosity = ctx.find_root().obj["verbosity"]
    resolved = resolve_checkpoint(checkpoint, revision, progress=verbosity >= 1, what=what)
    if resolved.hub is not None:
        _reporter(ctx).step(resolved.describe())
    return resolved


@cli.command()
@click.argument("checkpoint")
@_conversion_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or the bundle's facts) as JSON.")
@click.pass_context
def inspect(
    ctx, checkpoint, outtype, onnx_dtype, board, context, image_size, tokenizer_dir, revision, tensor_types, as_json
):
    """Validate CHECKPOINT (a directory, or a Hugging Face repo id ORG/NAME) and print what a conversion would
    produce (writes nothing but the Hub cache).

    Given a bundle directory instead, print the facts its model card (README.md) states, from its manifest:
    files and hashes, GGUF tensor types, ONNX I/O, how it was made, verification, known limits and the command
    lines for the board. Nothing is loaded (works on a board install); the conversion options do not apply."""
    if (Path(checkpoint) / "manifest.json").is_file():
        _inspect_bundle(Path(checkpoint), as_json)
        return
    from smt_convert.converters.checkpoint import Checkpoint
    from smt_convert.converters.convert import ConvertOptions, make_plan
    from smt_convert.converters.inspect import describe_plan
    from smt_convert.converters.plugin import detect_plugin

    resolved = _resolve_checkpoint(ctx, checkpoint, revision)
    checkpoint = resolved.directory
    ckpt = Checkpoint.open(checkpoint)
    plugin = detect_plugin(ckpt.config, ckpt.config_path)
    from smt_convert.converters.precision import parse_overrides

    plan, _ = make_plan(
        plugin,
        checkpoint,
        ConvertOptions(
            outtype=outtype,
            onnx_dtype=onnx_dtype,
            tokenizer_dir=tokenizer_dir,
            image_size=image_size,
            tensor_types=parse_overrides(tensor_types),
            board=board,
            context=context,
        ),
    )
    description = describe_plan(plan, ckpt)
    if resolved.hub is not None:
        description.update(resolved.hub.record())
    if as_json:
        click.echo(json.dumps(description, indent=1))
    else:
        from smt_convert.converters.inspect import format_plan

        click.echo(format_plan(description))


def _inspect_bundle(bundle: Path, as_json: bool) -> None:
    from smt_convert.converters.card import bundle_report

    click.echo(bundle_report(bundle, as_json))


def _convert_command(plugin_name: str | None):
    """Build `smt-convert <arch>` (plugin fixed) or `smt-convert convert` (plugin detected from config.json)."""

    @click.argument("checkpoint")
    @click.argument("output", type=click.Path(path_type=Path))
    @_conversion_options
    @click.option("--stem", default=None, help="File-name prefix of the bundle files (default from the model).")
    @click.option(
        "--force",
        is_flag=True,
        help="Replace OUTPUT when it holds an smt-convert bundle and nothing "
        "else; only the files its manifest lists are deleted (README, "
        '"What happens at OUTPUT").',
    )
    @click.option(
        "--no-verify",
        is_flag=True,
        help="Skip the comparison with the Hugging Face model and the board-vs-hf host rows "
        "(goldens are still recorded).",
    )
    @click.option(
        "--max-new-tokens",
        default=16,
        show_default=True,
        type=click.IntRange(1, MAX_VERIFY_TOKENS),
        help="Greedy tokens compared with the Hugging Face model's greedy choice and stored as goldens "
        f"(at most {MAX_VERIFY_TOKENS}: the reference scores every one).",
    )
    @_verbosity_options
    @click.pass_context
    def command(
        ctx,
        checkpoint,
        output,
        outtype,
        onnx_dtype,
        board,
        context,
        image_size,
        tokenizer_dir,
        revision,
        tensor_types,
        stem,
        force,
        no_verify,
        max_new_tokens,
    ):
        from smt_convert.converters.checkpoint import read_json
        from smt_convert.converters.convert import ConvertOptions, convert
        from smt_convert.converters.output import check_output
        from smt_convert.converters.hub import is_repo_id
        from smt_convert.converters.plugin import detect_plugin, plugin_for_command
        from smt_convert.runtime.errors import VerificationFailed
        from smt_convert.runtime.verify import Row, format_table

        from smt_convert.converters.precision import parse_overrides

        overrides = parse_overrides(tensor_types)
        if is_repo_id(checkpoint):  # a bad OUTPUT is refused before the Hub checkpoint is fetched, not after
            check_output(Path(output), force)
        resolved = _resolve_checkpoint(ctx, checkpoint, revision)
        checkpoint = resolved.directory
        config_path = checkpoint / "config.json"
        from smt_convert.converters.document_shapes import check_checkpoint_documents

        check_checkpoint_documents(checkpoint, tokenizer_dir)  # every document's shape, before anything reads one
        config = read_json(config_path, "config.json")
        report = _reporter(ctx)
        if plugin_name:
            plugin, warning = plugin_for_command(plugin_name, config, config_path)
            if warning:
                report.warning(warning)
        else:
            plugin = detect_plugin(config, config_path)
        opts = ConvertOptions(
            outtype=outtype,
            onnx_dtype=onnx_dtype,
            tokenizer_dir=tokenizer_dir,
            stem=stem,
            force=force,
            verify=not no_verify,
            max_new_tokens=max_new_tokens,
            image_size=image_size,
            hub=resolved.hub,
            tensor_types=overrides,
            board=board,
            context=context,
        )
        manifest = convert(plugin, checkpoint, output, opts, report)
        rows = [Row.from_dict(r) for r in manifest["verification"]["rows"]]
        click.echo(format_table(rows))
        if not manifest["verification"]["passed"]:
            raise VerificationFailed(f"{output}: verification failed (bundle kept; see manifest.json)")

    return command


cli.command(
    "convert",
    help="Convert CHECKPOINT (a directory, or a Hugging Face repo id ORG/NAME with optional "
    "--revision) into a bundle at OUTPUT, detecting the architecture from config.json, then "
    "verify it and print the result table.",
)(_convert_command(None))


def _register_arch_commands():
    from smt_convert.converters.plugin import all_plugins

    for plugin in all_plugins():
        cli.command(
            plugin.name,
            help=f"Convert a {plugin.summary} checkpoint CHECKPOINT (a directory, or a "
            f"Hugging Face repo id ORG/NAME with optional --revision) into a bundle at "
            f"OUTPUT, then verify it against the Hugging Face model and print the result "
            f"table.",
        )(_convert_command(plugin.name))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--audio", type=click.Path(path_type=Path), help="Audio file (WAV/FLAC/OGG, any rate and channels).")
@click.option("--image", type=click.Path(path_type=Path), help="Image file (PNG/JPEG/...), for vision bundles.")
@click.option("--prompt", default=None, help="The question or instruction (vision and text bundles).")
@click.option("--language", default=None, help="Force the language, e.g. English or en (ASR models).")
@click.option("--context", default=None, help="Context or hot words placed in the system prompt (ASR models).")
@click.option(
    "--max-new-tokens",
    default=256,
    show_default=True,
    type=click.IntRange(1, MAX_RUN_TOKENS),
    help=f"Stop after this many generated tokens (at most {MAX_RUN_TOKENS}).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    default=None,
    help=f"ONNX Runtime intra-op threads (at most {MAX_THREADS}; more threads than cores only slow it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print text, tokens, host and timings as JSON.")
@click.option(
    "--host",
    type=click.Choice(["board", "hf"]),
    default="board",
    show_default=True,
    help="Host preprocessing before the encoder: the board's own resize / log-mel (what the bundle meets "
    "on the device) or the Hugging Face processor's (what the model was trained with).",
)
@click.option(
    "--segment",
    default="auto",
    show_default=True,
    metavar="auto|off|SECONDS",
    help="Audio longer than this is cut at pauses into pieces transcribed one by one and joined (auto: "
    "30 s, or less when the bundle's -c holds less); off: one prompt, however long.",
)
@_verbosity_options
@click.pass_context
def run(ctx, bundle, audio, image, prompt, language, context, max_new_tokens, threads, as_json, host, segment):
    """Run BUNDLE with the minimal runtime (no torch) and print the answer."""
    from smt_convert.runtime.bundle import Bundle
    from smt_convert.runtime.media import MODALITIES
    from smt_convert.runtime.pipeline import BundleRunner

    for flag, text in (("--prompt", prompt), ("--context", context)):
        if text is not None and len(text) > MAX_PROMPT_CHARS:
            raise SmtError(
                f"{flag}: {len(text)} characters; at most {MAX_PROMPT_CHARS} (the prompt is prefilled "
                "by the numpy runtime in one pass)"
            )
    opened = Bundle.open(bundle)
    opened.check_sizes()  # a bundle copied incompletely is refused before anything loads
    kind = opened.manifest["modality"]
    given = {"audio": audio, "image": image}
    for flag, value in given.items():
        if value is not None and flag != kind:
            article = "an" if kind[0] in "aeiou" else "a"
            raise SmtError(f"--{flag}: {bundle} is {article} {kind} bundle")
    if kind in given and given[kind] is None:
        article = "an" if kind[0] in "aeiou" else "a"
        raise SmtError(f"{bundle}: this is {article} {kind} bundle; pass --{kind} FILE")
    media: Any = None
    if kind in given:
        load = MODALITIES[kind].load
        assert load is not None  # audio and image have a loader
        media = load(given[kind])  # decoded and checked before loading
    if kind == "audio" and ctx.obj["verbosity"] >= 1:
        from smt_convert.runtime.host import audio_warnings

        for note in audio_warnings(media, opened.manifest["preprocessing"]):
            click.echo(f"warning: {given[kind]}: {note}", err=True)
    pieces = _audio_pieces(media, opened.manifest, segment) if kind == "audio" else None
    runner = BundleRunner(bundle, threads=threads, host=host)
    if not runner.manifest.get("verification", {}).get("passed", False):
        click.echo(f"warning: {bundle}: this bundle failed verification when it was converted", err=True)
    if pieces is not None and len(pieces) > 1:
        _run_segments(ctx, runner, media, pieces, context, language, max_new_tokens, as_json)
        return
    result = runner.run(
        media,
        fields={"context": context, "prompt": prompt},
        language=language,
        max_new_tokens=max_new_tokens,
        keep_encoder=False,
    )  # one answer: decode without it
    if as_json:
        click.echo(
            json.dumps(
                {
                    "text": result.text,
                    "raw": result.raw_text,
                    "tokens": result.tokens,
                    "host": runner.host,
                    "timings": result.timings,
                },
                indent=1,
            )
        )
    else:
        click.echo(result.text)
        if ctx.obj["verbosity"] >= 2:
            click.echo(json.dumps({"host": runner.host, **result.timings}), err=True)


def _audio_pieces(wave, manifest: dict, segment: str):
    """--segment: where a long recording is cut (runtime/segments.py)."""
    from smt_convert.runtime.segments import AUTO_SECONDS, MIN_SEGMENT_SECONDS, cut, longest_in_one_piece

    rate = manifest["preprocessing"].get("sample_rate", 16000)
    one_piece = longest_in_one_piece(manifest.get("memory", {}).get("n_ctx", 4096))
    if segment == "off":
        return None
    if segment == "auto":
        seconds = max(MIN_SEGMENT_SECONDS, min(AUTO_SECONDS, one_piece))
    else:
        try:
            seconds = float(segment)
        except ValueError:
            raise SmtError(f"--segment: expected auto, off or a number of seconds, got {segment!r}") from None
        if not MIN_SEGMENT_SECONDS <= seconds <= 3600:
            raise SmtError(f"--segment: {segment}: expected {MIN_SEGMENT_SECONDS:.0f} to 3600 seconds")
    return cut(np.asarray(wave), rate, seconds)


def _run_segments(ctx, runner, wave, pieces, context, language, max_new_tokens, as_json) -> None:
    """Transcribe the pieces one by one (the sessions stay loaded) and join them; progress on stderr."""
    rate = runner.manifest["preprocessing"].get("sample_rate", 16000)
    report = _reporter(ctx)
    out = []
    with report.progress(len(pieces), "segments") as update:
        for piece in pieces:
            result = runner.run(
                wave[piece.start : piece.end],
                fields={"context": context},
                language=language,
                max_new_tokens=max_new_tokens,
            )
            start, end = piece.seconds(rate)
            out.append({"start": start, "end": end, "text": result.text, "tokens": result.tokens})
            update(f"{start:.0f}-{end:.0f} s")
    text = " ".join(s["text"].strip() for s in out if s["text"].strip())
    if as_json:
        click.echo(json.dumps({"text": text, "segments": out, "host": runner.host}, indent=1))
    else:
        click.echo(text)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    default=None,
    help="Hugging Face checkpoint to compare with (a directory or a repo id ORG/NAME; needs torch); "
    "without it, check hashes and goldens.",
)
@click.option("--revision", default=None, help="Branch, tag or commit of a repo id --reference (default main).")
@click.option(
    "--max-new-tokens",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --reference: greedy tokens compared with the Hugging Face model's greedy choice.",
)
@click.option(
    "--trace",
    is_flag=True,
    help="With --reference: also compare every block (encoder stages, decoder layers) with the Hugging Face "
    "model's and name the first outside tolerance.",
)
@click.option(
    "--float-bundle",
    type=click.Path(path_type=Path),
    default=None,
    help="With --trace on a quantised bundle: a float bundle of the same checkpoint, run alongside; the trace "
    "then separates conversion error (float vs the reference) from quantisation error (this bundle vs float).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows (and the trace) as JSON.")
@_verbosity_options
@click.pass_context
def verify(ctx, bundle, reference, revision, max_new_tokens, trace, float_bundle, as_json):
    """Re-verify BUNDLE: file hashes, golden vectors, and optionally the Hugging Face reference."""
    from smt_convert.runtime.bundle import Bundle
    from smt_convert.runtime.errors import VerificationFailed
    from smt_convert.runtime.verify import format_table, golden_rows, hash_rows

    if revision is not None and reference is None:
        raise SmtError("--revision: applies to a Hugging Face repo id given as --reference")
    if trace and reference is None:
        raise SmtError("--trace: needs --reference CHECKPOINT (the model to trace the bundle against)")
    if float_bundle is not None and not trace:
        raise SmtError("--float-bundle: applies to --trace")
    if reference is not None:  # resolved (fetched) first: a wrong repo id fails before the goldens run
        reference = _resolve_checkpoint(ctx, reference, revision, what="--reference").directory
    rows = hash_rows(Bundle.open(bundle))
    traced = None
    if all(r.ok for r in rows):
        from smt_convert.runtime.pipeline import BundleRunner

        runner = BundleRunner(bundle)
        rows += golden_rows(runner)
        if reference is not None:
            from smt_convert.converters.verify_bundle import reference_rows_and_trace

            more, traced = reference_rows_and_trace(
                runner, reference, max_new_tokens, _reporter(ctx), trace, float_bundle
            )
            rows += more
    if as_json:
        document = {"rows": [r.to_dict() for r in rows], "passed": all(r.ok for r in rows)}
        if traced is not None:
            document["trace"] = traced.to_dict()
        click.echo(json.dumps(document, indent=1))
    else:
        click.echo(format_table(rows))
        if traced is not None:
            click.echo("\n" + traced.format())
    if not all(r.ok for r in rows):  # the trace says where, the rows decide (README, "Reading a trace")
        raise VerificationFailed(f"{bundle}: verification failed")


_register_arch_commands()


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_root",
    type=click.Path(path_type=Path),
    default=Path("recipe-out"),
    show_default=True,
    help="Bundles go to OUT/<recipe name>/<variant>/.",
)
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Also write JUnit XML here (for CI).")
@click.option(
    "--summary",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help='Also append a Markdown summary to this file (a CI job summary, e.g. "$GITHUB_STEP_SUMMARY").',
)
@click.option(
    "--scratch",
    type=click.Path(path_type=Path),
    default=None,
    help="Where tiny: sources are built (default: OUT/.sources).",
)
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="Print the variants (one key per line: RECIPE/VARIANT) and run nothing; with --json, as data for a CI matrix.",
)
@click.option("--json", "as_json", is_flag=True, help="With --list: a JSON list of the variants.")
@click.option(
    "--only",
    default=None,
    metavar="KEY[,KEY]",
    help="Run only these variants (RECIPE/VARIANT keys from --list) or recipes (RECIPE).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Run the I-th of N deterministic shares of the variants (a CI matrix job); merge the shares' "
    "--out directories with `smt-convert recipe-report`.",
)
@_verbosity_options
@click.pass_context
def recipe(ctx, recipes, out_root, junit, summary, scratch, list_only, as_json, only, shard):
    """Run conversion recipes (TOML files, see recipes/): every variant of every recipe, a summary table,
    exit 1 if any failed. A failing recipe does not stop the others."""
    from smt_convert.converters.recipe import check_unique, load_recipe, prepare_recipes, run_recipe
    from smt_convert.converters.recipe_matrix import parse_shard, select, variant_keys, write_results

    loaded = [load_recipe(p) for p in recipes]  # every recipe is checked before any conversion starts
    check_unique(loaded)
    if list_only:
        entries = variant_keys(loaded)
        click.echo(json.dumps(entries, indent=1) if as_json else "\n".join(e["key"] for e in entries))
        return
    shard_ = parse_shard(shard)
    loaded = select(loaded, only, shard_)
    _check_report_paths(junit, summary, scratch)
    for flag, directory in (("--out", out_root), ("--scratch", scratch or out_root / ".sources")):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SmtError(f"{flag}: {directory}: cannot be created ({exc.strerror or exc})") from None
    sources, failed = prepare_recipes(
        loaded, scratch or out_root / ".sources", progress=ctx.find_root().obj["verbosity"] >= 1
    )
    results = []
    for r in loaded:
        results += (
            run_recipe(r, sources[r.name], out_root, _reporter(ctx))
            if r.name in sources
            else [f for f in failed if f.recipe == r.name]
        )
    write_results(results, out_root, shard_)
    _report(results, junit, summary)


@cli.command("recipe-report")
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write the merged JUnit XML here.")
@click.option(
    "--summary",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Append the merged Markdown summary to this file.",
)
@_verbosity_options
def recipe_report(directories, junit, summary):
    """Merge the --out DIRECTORIES of `recipe --shard` runs into the report one run writes: the table, --junit,
    --summary; exit 1 if any variant failed."""
    from smt_convert.converters.recipe_matrix import read_results

    _check_report_paths(junit, summary, None)
    _report(read_results(list(directories)), junit, summary)


def _report(results, junit, summary) -> None:
    """The table (and the variant comparison), JUnit, Markdown summary, one line per failure; exit 1 on any."""
    from smt_convert.converters.recipe import format_comparison, format_results, write_junit, write_summary

    click.echo(format_results(results))
    comparison = format_comparison(results)
    if comparison:
        click.echo("\nvariants compared (quality vs Hugging Face; board memory at each bundle's -c):")
        click.echo(comparison)
    if junit:
        write_junit(results, junit)
    if summary:
        write_summary(results, summary)
    bad = [r for r in results if r.status != "pass"]
    for r in bad:
        click.echo(f"{r.status}: {r.recipe} {r.variant}: {r.message}", err=True)
    if bad:
        sys.exit(1)


def _check_report_paths(junit: Path | None, summary: Path | None, scratch: Path | None) -> None:
    """--junit/--summary name files and --scratch a directory: refused now, not after an hour of conversions."""
    for flag, path in (("--junit", junit), ("--summary", summary)):
        if path is not None and path.is_dir():
            raise SmtError(f"{flag}: {path} is a directory; name a file")
        if path is not None and path.parent.exists() and not path.parent.is_dir():
            raise SmtError(f"{flag}: {path.parent} is not a directory")
    if scratch is not None and scratch.exists() and not scratch.is_dir():
        raise SmtError(f"--scratch: {scratch} is a file; name a directory")


def main():
    cli(prog_name="smt-convert")


if __name__ == "__main__":
    main()
