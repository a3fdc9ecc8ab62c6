"""The command lines a bundle documents: the board's llama.cpp (`llama-mtmd-cli`, `llama-server`) and smt-convert's
own `run`, `verify` and conversion commands.

Every line runs from inside the bundle directory (`cd BUNDLE`): `-m` names the bundle's GGUF, `--smt-config-dir .`
the directory itself, and the media example is the bundle's own golden input, so a line pasted as printed works.
The board's lines are built once at conversion (manifest `board`); the card and `inspect BUNDLE` print them.

Facts behind the board lines (SpacemiT's llama.cpp fork, `tools/mtmd/mtmd-cli.cpp`, `mtmd-cli-smt.cpp`,
`tools/server/server-media.cpp`): `--smt-config-dir` alone selects the SMT backend when no `--mmproj` is given;
`--image`/`--audio` take the media file; llama-mtmd-cli answers once only with both a medium and `-p` (otherwise it
starts its chat mode), and for Qwen3-ASR builds its own prompt around the medium, so `-p '<__media__>'` adds no text;
a bundle without an encoder has no SMT side (its config.json names no model, which the server refuses).
Kept free of conversion packages: `inspect BUNDLE` runs on a board.
"""

from __future__ import annotations

import shlex

BUNDLE_DIR = "."  # the lines run from inside the bundle
MEDIA_MARKER = "<__media__>"
FLAG_REASONS = {
    "--jinja": "this model's chat template is not one of llama.cpp's built-in templates, so the board "
    "must render it with its Jinja engine"
}


def board_record(
    flags: tuple[str, ...],
    text_file: str,
    modality: str,
    golden_input: str | None,
    prompt: str | None,
    context: int | None = None,
    threads: int | None = None,
) -> dict:
    """The manifest's `board` record: the plugin's flags and the two board command lines.

    `golden_input` is the golden medium's path inside the bundle (None for text only); `prompt` the prompt text
    the golden run used (None when the model takes none, e.g. speech recognition)."""
    model = ["-m", text_file] + (["-c", str(context)] if context else []) + (["-t", str(threads)] if threads else [])
    if modality == "text":
        commands = {
            "llama-cli": shlex.join(["llama-cli", *model, *flags, *(["-p", prompt] if prompt else [])]),
            "llama-server": shlex.join(["llama-server", *model, *flags]),
        }
    else:
        assert golden_input is not None  # every medium has a golden input
        smt = [*model, "--smt-config-dir", BUNDLE_DIR, *flags]
        cli_prompt = prompt if prompt else MEDIA_MARKER
        commands = {
            "llama-mtmd-cli": shlex.join(["llama-mtmd-cli", *smt, f"--{modality}", golden_input, "-p", cli_prompt]),
            "llama-server": shlex.join(["llama-server", *smt]),
        }
    notes = [f"`{flag}`: {FLAG_REASONS[flag]}." for flag in flags if flag in FLAG_REASONS]
    if modality == "text":
        notes.append("No encoder, so no `--smt-config-dir`: this config.json names no model for the SMT backend.")
    else:
        notes.append(
            "llama-mtmd-cli answers once when it has the medium and `-p`; without them it starts its chat "
            "mode. llama-server serves the same model over its OpenAI-compatible HTTP API."
        )
        if not prompt:
            notes.append(
                f"`-p '{MEDIA_MARKER}'` adds no text: it marks where the {modality} goes, and the board "
                "builds this model's prompt around it."
            )
    if context:
        notes.append(
            f"`-c {context}`: the context the bundle's memory statement is made for (see Memory on the "
            "board); llama.cpp's default is the model's whole training context, which a board may not hold."
        )
    return {
        "target": "SpacemiT llama.cpp with the SMT backend (spacemit-com/llama.cpp)",
        "run_from": "the bundle directory",
        "flags": list(flags),
        "commands": commands,
        "notes": notes,
    }


def run_command(manifest: dict) -> str:
    """`smt-convert run` on the bundle's golden input with the golden run's prompt."""
    args = ["smt-convert", "run", BUNDLE_DIR]
    golden = golden_input_path(manifest["golden"])
    if golden:
        args += [f"--{manifest['modality']}", golden]
    prompt = golden_prompt(manifest)
    if prompt:
        args += ["--prompt", prompt]
    options = manifest.get("options", {})
    if options.get("language"):
        args += ["--language", options["language"]]
    context = (options.get("fields") or {}).get("context")
    if context:
        args += ["--context", context]
    return shlex.join(args)


def verify_command() -> str:
    return shlex.join(["smt-convert", "verify", BUNDLE_DIR])


def golden_prompt(manifest: dict) -> str | None:
    """The prompt text of the golden run: the recipe's or the plugin's `prompt` field (None: the model has no
    prompt field, e.g. Qwen3-ASR)."""
    fields = manifest.get("options", {}).get("fields") or {}
    defaults = manifest["prompt"].get("template_fields", {})
    if "prompt" not in defaults:
        return None
    return fields.get("prompt") or defaults["prompt"]


def convert_command(manifest: dict, output: str = "OUTPUT") -> str | None:
    """The conversion that made this bundle, as one command (None when the manifest does not record the options,
    i.e. the bundle predates them)."""
    options = manifest.get("options")
    if options is None:
        return None
    source = manifest["source"]
    args = ["smt-convert", manifest["architecture"], source.get("repo") or source["directory"], output]
    if source.get("repo") and source.get("revision"):
        args += ["--revision", source["revision"]]
    if options.get("board"):
        args += ["--board", options["board"]]
    args += ["--outtype", options["outtype"], "--onnx-dtype", options["onnx_dtype"]]
    for pattern, type_name in (options.get("tensor_types") or {}).items():
        args += ["--tensor-type", f"{pattern}={type_name}"]
    if options.get("context"):
        args += ["--context", str(options["context"])]
    size = options.get("image_size")
    if size is not None:
        args += ["--image-size", f"{size[0]}x{size[1]}" if isinstance(size, list) else str(size)]
    if options.get("tokenizer"):
        args += ["--tokenizer", options["tokenizer"]]
    if options.get("stem"):
        args += ["--stem", options["stem"]]
    if not options.get("verify", True):
        args.append("--no-verify")
    if options.get("max_new_tokens", 16) != 16:
        args += ["--max-new-tokens", str(options["max_new_tokens"])]
    return shlex.join(args)


def golden_input_path(golden: dict) -> str | None:
    """The golden medium inside the bundle (the manifest's `golden` record), None for a text-only bundle."""
    return f"{golden['directory']}/{golden['input']}" if golden.get("input") else None
