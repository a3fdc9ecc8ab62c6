"""The model card: `README.md` inside every bundle, in the Hugging Face model-card convention (YAML front matter,
then Markdown), generated from the manifest alone so that it states exactly what the manifest records.

`card_facts(manifest)` is what the card says, as data (`smt-convert inspect BUNDLE` prints it, `--json` too);
`render_card` writes it as Markdown. The card is written just before the final manifest and listed in it like
every other file, so `verify` notices an edited card. It cannot hold its own hash (the manifest does), so the
card's own `files` entry is never shown and rendering the final manifest again gives the same text.

No conversion packages and no YAML library (the board runs `inspect BUNDLE`): front-matter values are written as
JSON strings, which YAML reads as double-quoted scalars.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from smt_convert.converters import commands
from smt_convert.runtime.bundle import BOARD_CONFIG, MANIFEST
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.verify import TABLE_HEADER, Row, format_table, table_cells

CARD_FILE = "README.md"
LIBRARY_NAME = "llama.cpp"
PIPELINE_TAGS = {"audio": "automatic-speech-recognition", "image": "image-text-to-text", "text": "text-generation"}
BOARD_TAGS = ("spacemit", "riscv64")
LOSSY_TEXT = (
    "q8_0",
    "q5_1",
    "q5_0",
    "q4_1",
    "q4_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q4_k_m",
    "q4_k_s",
    "iq4_nl",
    "iq4_xs",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
)
LICENSE_KEYS = ("license", "license_name", "license_link")  # the Hub's keys ("other" comes with name and link)


# ---- recorded at conversion --------------------------------------------------------------------------------


def add_card_records(manifest: dict, checkpoint_dir: Path, opts) -> None:
    """What the card needs beyond the manifest skeleton: the conversion options as given (`opts`, a
    ConvertOptions), the source's license and the card's own name (so that `verify` requires it to be listed).
    The board's command lines are added after verification (convert.py), when the bundle's -c is known."""
    size = opts.image_size
    manifest["options"] = {
        "outtype": opts.outtype,
        "onnx_dtype": opts.onnx_dtype,
        "image_size": list(size) if isinstance(size, (tuple, list)) else size,
        "stem": opts.stem,
        "tokenizer": str(opts.tokenizer_dir) if opts.tokenizer_dir else None,
        "verify": opts.verify,
        "max_new_tokens": opts.max_new_tokens,
        "thresholds": dict(opts.thresholds or {}),
        "golden_input": str(opts.golden_input) if opts.golden_input else None,
        "language": opts.language,
        "fields": dict(opts.fields or {}),
        "board": opts.board,
        "context": opts.context,
        "tensor_types": dict(opts.tensor_types or {}),
    }
    manifest["source"]["license"] = source_license(Path(checkpoint_dir))
    manifest["card"] = CARD_FILE  # (the board's command lines come after verification: they carry the -c)


# ---- the source's license ----------------------------------------------------------------------------------


def source_license(checkpoint_dir: Path) -> dict[str, str]:
    """The license keys of the checkpoint: `license` in config.json (rare), else the front matter of its own
    README.md (the Hub's model card), read as gguf-py reads it for the GGUF's general.license (lists joined).
    Empty when neither says."""
    import gguf

    config = _read_json(checkpoint_dir / "config.json")
    if isinstance(config.get("license"), str) and config["license"].strip():
        return {"license": config["license"].strip()}
    from smt_convert.converters.text_gguf import check_model_card

    try:
        check_model_card(checkpoint_dir)
        card = gguf.Metadata.load_model_card(checkpoint_dir)
    except Exception:  # noqa: BLE001 - an unreadable card is reported (one line) when the GGUF is written
        card = {}
    found = {}
    for key in LICENSE_KEYS:
        value = card.get(key)
        value = ", ".join(map(str, value)) if isinstance(value, list) else value
        if isinstance(value, str) and value.strip():
            found[key] = value.strip()
    return found


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- what the card says ------------------------------------------------------------------------------------


def bundle_report(root: Path, as_json: bool = False) -> str:
    """`smt-convert inspect BUNDLE`: the card's facts of the bundle at `root` as JSON or for a terminal (its
    manifest checked as `run` and `verify` check it); a manifest lacking or mangling a field the card states is
    one line naming the file and the field."""
    from smt_convert.runtime.bundle import Bundle

    manifest = Bundle.open(root).manifest
    try:
        facts = card_facts(manifest)
        return json.dumps(facts, indent=1) if as_json else format_facts(facts, root)
    except KeyError as exc:
        raise SmtError(f"{Path(root) / MANIFEST}: {exc.args[0]}: missing (the model card states it)") from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise SmtError(f"{Path(root) / MANIFEST}: malformed for the model card ({exc})") from None


def card_facts(manifest: dict) -> dict:
    """Everything the card states, from the manifest alone."""
    source, text = manifest["source"], manifest["text"]
    base_model = source.get("repo") or Path(source["directory"]).name
    front = {"base_model": base_model}
    if source.get("repo") and source.get("revision"):
        front["base_model_revision"] = source["revision"]
    front["library_name"] = LIBRARY_NAME
    front.update({k: v for k, v in source.get("license", {}).items() if k in LICENSE_KEYS})
    front["pipeline_tag"] = PIPELINE_TAGS.get(manifest["modality"], "text-generation")
    front["tags"] = _tags(manifest)
    rows = manifest.get("verification", {}).get("rows", [])
    board = manifest.get("board", {})
    return {
        "title": f"{base_model} for SpacemiT boards",
        "front_matter": front,
        "base_model": base_model,
        "source": {
            "repo": source.get("repo"),
            "revision": source.get("revision"),
            "directory": source["directory"],
            "layout": source.get("layout"),
            "config_sha256": source.get("config_sha256"),
            "weight_files": len(source.get("weight_files", [])),
            "weight_bytes": sum(w.get("size", 0) for w in source.get("weight_files", [])),
            "license": source.get("license", {}).get("license"),
        },
        "tool": {
            "name": manifest["tool"]["name"],
            "version": manifest["tool"]["version"],
            "created": manifest.get("created"),
        },
        "architecture": manifest["architecture"],
        "modality": manifest["modality"],
        "files": _files(manifest),
        "card": next((e for e in manifest.get("files", []) if e["path"] == CARD_FILE), None),
        "gguf": {
            "file": text["file"],
            "arch": text["gguf_arch"],
            "outtype": text["outtype"],
            "tensors": len(text.get("tensors", [])),
            "tensor_types": tensor_type_counts(manifest),
            "vocab": text.get("vocab", {}),
        },
        "encoders": [
            {
                "file": e["file"],
                "role": e["role"],
                "dtype": e.get("dtype", manifest["onnx_dtype"]),
                "data_file": e.get("data_file"),
                "inputs": e.get("inputs", []),
                "outputs": e.get("outputs", []),
            }
            for e in manifest["encoders"]
        ],
        "options": manifest.get("options"),
        "convert_command": commands.convert_command(manifest),
        "verification": {
            "reference": manifest.get("verification", {}).get("reference"),
            "passed": manifest.get("verification", {}).get("passed"),
            "rows": rows,
        },
        "limits": known_limits(manifest),
        "board": {
            "flags": board.get("flags", []),
            "commands": board.get("commands", {}),
            "notes": board.get("notes", []),
        },
        "smt_convert": {"run": commands.run_command(manifest), "verify": commands.verify_command()},
        "timings": manifest.get("timings", {}),
        "quality": manifest.get("quality"),
        "golden": {
            "input": commands.golden_input_path(manifest["golden"]),
            "input_text": manifest["golden"].get("input_text"),
            "answer": manifest["golden"].get("answer"),
        },
        "memory": manifest.get("memory"),
        "board_profile": manifest.get("board_profile"),
    }


def _tags(manifest: dict) -> list[str]:
    tags = ["gguf"] + (["onnx"] if manifest["encoders"] else [])
    tags += [manifest["text"]["gguf_arch"], manifest["architecture"], *BOARD_TAGS]
    return list(dict.fromkeys(tags))


def tensor_type_counts(manifest: dict) -> dict[str, int]:
    """GGUF tensors per ggml type, as the manifest lists them (most frequent first)."""
    counts = Counter(t["type"] for t in manifest["text"].get("tensors", []))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _files(manifest: dict) -> list[dict]:
    """Every listed file with what it is; the card's own entry is left out (it cannot show its own hash)."""
    return [
        {**entry, "what": _what(manifest, entry["path"])}
        for entry in manifest.get("files", [])
        if entry["path"] != CARD_FILE
    ]


def _what(manifest: dict, path: str) -> str:
    text = manifest["text"]
    if path == text["file"]:
        return f"text decoder, GGUF `{text['gguf_arch']}` ({text['outtype']}), tokenizer embedded"
    for enc in manifest["encoders"]:
        if path == enc["file"]:
            return f"{enc['role']} encoder, ONNX ({enc.get('dtype', manifest['onnx_dtype'])})"
        if path == enc.get("data_file"):
            return f"weights of {enc['file']} (ONNX external data)"
    if path == BOARD_CONFIG:
        return "board runtime config (`--smt-config-dir`)"
    if path in manifest.get("tokenizer_files", []):
        return "tokenizer / chat template for the Python runtime"
    golden = manifest["golden"]
    if path.startswith(golden["directory"] + "/"):
        return "golden input" if path == commands.golden_input_path(golden) else "golden output (checked by verify)"
    return "board runtime side file"


def known_limits(manifest: dict) -> list[str]:
    """What a user of this bundle should know before relying on it, from the manifest's own facts."""
    limits = []
    verification = manifest.get("verification", {})
    failing = [r for r in verification.get("rows", []) if r.get("gate", True) and not r.get("ok", True)]
    if failing:
        limits.append(
            "This bundle FAILED verification at conversion: "
            + "; ".join(
                f"{r['check']} {r['metric']} {_value(r['value'])} (threshold {r['threshold']})" for r in failing
            )
            + "."
        )
    if verification.get("reference") is None:
        limits.append(
            "Not compared with the Hugging Face model at conversion (`--no-verify`): only the goldens were "
            "recorded. `smt-convert verify . --reference CHECKPOINT` makes the comparison."
        )
    outtype = manifest["text"]["outtype"]
    others = {t: n for t, n in tensor_type_counts(manifest).items() if t not in ("F32", outtype.upper())}
    kept = ", ".join(f"{n} x {t}" for t, n in others.items())
    if outtype in LOSSY_TEXT:
        limits.append(
            f"Text weights are {outtype}: block quantisation is lossy. The logits differ from the "
            "original model's (the text-logits rows above), and greedy output can part from it after a "
            "near-tie, so token agreement is reported, not gated."
            + (
                f" Kept at other types (the output projection at 4/5 bits, rows that do not fill a "
                f"quantisation block, tensors the family keeps wider): {kept}."
                if kept
                else ""
            )
        )
    elif outtype in ("f16", "bf16"):
        limits.append(
            f"Text weights are rounded to {outtype} (norms and biases stay F32): differences from the "
            "original model are at rounding level."
        )
    dtype = manifest["onnx_dtype"]
    if manifest["encoders"] and dtype == "fp16":
        limits.append(
            "Encoder weights and compute in fp16 (LayerNorm, Softmax and reductions in fp32): its rows "
            "differ from fp32 by rounding (the encoder rows above)."
        )
    elif manifest["encoders"] and dtype == "int8":
        limits.append(
            "Encoder MatMul/Gemm weights are dynamically quantised to int8 (convolutions stay float): "
            "lossy, and the text bounds are loosened to match."
        )
    pre = manifest.get("preprocessing", {})
    if pre.get("image_size"):
        h, w = pre["image_size"]
        limits.append(f"Images are resized to exactly {h}x{w} (the vision ONNX input is static).")
    if pre.get("board_guess_matches") is False:
        limits.append(
            f"Non-square image grid {pre['grid'][0]}x{pre['grid'][1]}: the board lays the image rows out "
            f"as the closest-to-square factor pair ({pre['board_grid_guess'][0]}x"
            f"{pre['board_grid_guess'][1]}), so its image positions differ from the model's; "
            "`smt-convert run` uses the real grid. For the board, convert with a square `--image-size`."
        )
    limits += [f"Note from the conversion: {note}." for note in manifest.get("notes", [])]
    dropped = manifest.get("dropped_tensors", {})
    if dropped:
        reasons = sorted(set(dropped.values()))
        limits.append(f"{len(dropped)} checkpoint tensors are not converted: " + "; ".join(reasons) + ".")
    if not manifest["encoders"]:
        limits.append("Text only: the checkpoint has no encoder, so the bundle takes no images or audio.")
    return limits


def _value(v) -> str:
    return v if isinstance(v, str) else f"{v:.6g}"


# ---- Markdown -----------------------------------------------------------------------------------------------


def render_card(manifest: dict) -> str:
    """The whole README.md: YAML front matter, then the sections."""
    f = card_facts(manifest)
    out = [front_matter(f["front_matter"]), "", f"# {f['title']}", ""]
    out += [_summary(f), ""]
    out += [
        "## Run it",
        "",
        "On the board (SpacemiT's llama.cpp with the SMT backend), from this directory:",
        "",
        "```bash",
        *f["board"]["commands"].values(),
        "```",
        "",
    ]
    out += [" ".join(f["board"]["notes"]), ""] if f["board"]["notes"] else []
    out += [
        "Anywhere with `pip install smt-convert` (no torch), from this directory: run the bundle on its golden "
        "input, and re-check every file's sha256 and the golden vectors:",
        "",
        "```bash",
        f["smt_convert"]["run"],
        f["smt_convert"]["verify"],
        "```",
        "",
    ]
    out += _golden(f)
    out += _memory(f)
    out += _contents(f)
    out += _made(f)
    out += _verification(f)
    out += ["## Known limits", ""] + [f"- {limit}" for limit in f["limits"]] + [""]
    return "\n".join(out)


def front_matter(values: dict) -> str:
    """YAML front matter; every string is a JSON string (a YAML double-quoted scalar), lists are block lists."""
    lines = ["---"]
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {_yaml_str(v)}" for v in value]
        else:
            lines.append(f"{key}: {_yaml_str(value)}")
    return "\n".join(lines + ["---"])


def _yaml_str(value: str) -> str:
    # JSON escapes quotes, backslashes and control characters; YAML also breaks lines at these three.
    text = json.dumps(str(value), ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\u0085", "\\u0085")


def _summary(f: dict) -> str:
    gguf = f["gguf"]
    parts = [
        f"`{f['base_model']}` converted by {f['tool']['name']} {f['tool']['version']} for SpacemiT's llama.cpp "
        f"fork (SMT backend): the text decoder as GGUF `{gguf['arch']}` ({gguf['outtype']})"
    ]
    if f["encoders"]:
        roles = ", ".join(e["role"] for e in f["encoders"])
        parts.append(f", the {f['modality']} encoder as ONNX ({f['encoders'][0]['dtype']}; {roles})")
    verdict = {True: "passed", False: "FAILED"}.get(f["verification"]["passed"], "not recorded")
    reference = "against the Hugging Face model" if f["verification"]["reference"] else "goldens only"
    return "".join(parts) + f". Verification {verdict} ({reference}; table below)."


def _md(cell) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(header, rows) -> list[str]:
    """A GitHub/Hub Markdown table; `|` inside a cell is escaped."""
    return ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_md(c) for c in row) + " |" for row in rows
    ]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _io(items: list[dict]) -> str:
    return ", ".join(f"`{x['name']}` {shape(x['shape'])} {x['dtype']}" for x in items)


def shape(dims: list) -> str:
    """[1, T, 64]: named (dynamic) axes by name, unquoted."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _contents(f: dict) -> list[str]:
    rows = [
        (f"`{e['path']}`", f"{e['size']} ({human_size(e['size'])})", f"`{e['sha256']}`", e["what"]) for e in f["files"]
    ]
    rows += [
        (f"`{CARD_FILE}`", "-", "in manifest.json", "this card"),
        (
            f"`{MANIFEST}`",
            "-",
            "-",
            "written last: every file's size and sha256, I/O contracts, preprocessing, prompt rules, verification",
        ),
    ]
    gguf = f["gguf"]
    types = ", ".join(f"{n} x {t}" for t, n in gguf["tensor_types"].items())
    vocab = gguf["vocab"]
    out = ["## Contents", ""] + markdown_table(("file", "bytes", "sha256", "what"), rows) + [""]
    out += [
        f"Text GGUF `{gguf['file']}`: architecture `{gguf['arch']}`, `--outtype {gguf['outtype']}`, "
        f"{gguf['tensors']} tensors: {types}; vocabulary `{vocab.get('model')}` with {vocab.get('size')} tokens.",
        "",
    ]
    if f["encoders"]:
        out += ["Encoders (ONNX; inputs and outputs float32, fixed shapes except the named axes):", ""]
        out += markdown_table(
            ("file", "role", "dtype", "inputs", "outputs"),
            [(f"`{e['file']}`", e["role"], e["dtype"], _io(e["inputs"]), _io(e["outputs"])) for e in f["encoders"]],
        ) + [""]
    return out


def _made(f: dict) -> list[str]:
    src = f["source"]
    where = f"`{src['repo']}` at commit `{src['revision']}`" if src["repo"] else f"directory `{src['directory']}`"
    out = [
        "## How it was made",
        "",
        f"- {f['tool']['name']} {f['tool']['version']}, {f['tool']['created']}",
        f"- source: {where} ({src['layout']} layout, config.json sha256 `{src['config_sha256']}`, "
        f"{src['weight_files']} weight file(s), {human_size(src['weight_bytes'])}; every weight file's sha256 is "
        "in manifest.json)",
        f"- license: {src['license'] or 'not stated by the source (no `license` in its config.json or card)'}",
    ]
    options = f["options"]
    if options:
        shown = ", ".join(f"{k} {json.dumps(v)}" for k, v in options.items() if v not in (None, {}, []))
        out.append(f"- options: {shown}")
    if f["timings"]:
        out.append("- time: " + ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in f["timings"].items()))
    if f["convert_command"]:
        recipe_only = [k for k in ("thresholds", "golden_input", "language", "fields") if (options or {}).get(k)]
        also = (
            (
                f"; the verification settings {', '.join(recipe_only)} above came from a recipe and have no "
                "command-line option"
            )
            if recipe_only
            else ""
        )
        out += [
            "",
            f"The same conversion as one command (OUTPUT: a new directory{also}):",
            "",
            "```bash",
            f["convert_command"],
            "```",
        ]
    return out + [""]


def _golden(f: dict) -> list[str]:
    g = f["golden"]
    if g["answer"] is None:
        return []
    verb = {"audio": "says", "image": "shows"}.get(f["modality"], "is")
    out = ["## On its golden input", ""]
    if g["input_text"]:
        out += [f"`{g['input']}` {verb}:", "", *[f"> {line}" for line in g["input_text"].splitlines()], ""]
    out += [
        "This bundle's own answer to it (greedy, smt-convert's runtime with the board's host preprocessing; "
        "re-checked by `smt-convert verify`):",
        "",
        "```text",
        g["answer"].strip() or "(empty)",
        "```",
        "",
    ]
    if g["input_text"]:
        out += [
            "A model with random or broken weights answers with nonsense here; a good conversion of a real "
            "checkpoint answers with the text above.",
            "",
        ]
    return out


MEMORY_TERMS = (
    ("weights", "text weights (the GGUF's tensors, mapped)"),
    ("kv_cache", "KV cache (attention layers)"),
    ("recurrent_state", "recurrent state (Gated-DeltaNet layers)"),
    ("compute", "llama.cpp compute buffer (estimate)"),
    ("output", "logits buffer"),
    ("encoder", "encoder session peak (measured at conversion)"),
    ("overhead", "runtime allowance"),
)


def memory_lines(m: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The memory statement as table rows: (term, size) at the bundle's -c, and (board memory, holds -c N?,
    longest -c) per board size."""
    terms = [(what, human_size(m["bytes"][key])) for key, what in MEMORY_TERMS if m["bytes"].get(key)]
    terms.append(("total", human_size(m["bytes"]["total"])))
    sizes = [
        (f"{gb} GB", "yes" if int(gb) in m["fits_at_n_ctx"] else "no", str(ctx) if ctx else "does not fit")
        for gb, ctx in m["longest_context"].items()
    ]
    return terms, sizes


def _memory(f: dict) -> list[str]:
    m, profile = f["memory"], f["board_profile"]
    if not m:
        return []
    terms, sizes = memory_lines(m)
    out = [
        "## Memory on the board",
        "",
        f"At `-c {m['n_ctx']}` (the board commands above), this bundle needs about "
        f"**{human_size(m['bytes']['total'])}** besides the board's Linux ({m['assumptions']}):",
        "",
    ]
    out += markdown_table(("part", "size"), terms) + [""]
    out += markdown_table(("board memory", f"holds -c {m['n_ctx']}", "longest -c it holds"), sizes) + [""]
    if f["modality"] == "audio":
        from smt_convert.runtime.segments import AUTO_SECONDS, longest_in_one_piece

        out += [
            f"At `-c {m['n_ctx']}` one prompt takes about {longest_in_one_piece(m['n_ctx']):.0f} s of audio with "
            "room for its transcript. The board's llama-mtmd-cli sends a recording in one piece and does not cut "
            "it: cut longer ones first, at pauses (`smt-convert run . --audio long.wav` does, into pieces of at "
            f"most {AUTO_SECONDS:.0f} s, and prints them with `--json`), or convert with a larger `--context`.",
            "",
        ]
    if profile:
        slow = ", ".join(f"{v['tensors']} x {k}" for k, v in profile["not_accelerated"].items())
        out += [
            f"Made for {profile['name'].upper()} ({profile['soc']}): "
            f"{100 * profile['accelerated_bytes_share']:.0f}% of the text matrices' bytes are in types it "
            f"accelerates ({', '.join(profile['accelerated_types'])})"
            + (f"; {slow} run on the vector path." if slow else "."),
            "",
        ]
    return out


def _verification(f: dict) -> list[str]:
    v = f["verification"]
    reference = v["reference"] or "none (goldens only)"
    rows = [Row.from_dict(r) for r in v["rows"]]
    return (
        [
            "## Verification",
            "",
            f"The bundle run by smt-convert's minimal runtime, compared with: {reference}. Rows marked info are "
            "reported, not gated; the thresholds are smt-convert's, per type (its README, \"Verification "
            'thresholds").',
            "",
        ]
        + markdown_table(TABLE_HEADER, table_cells(rows))
        + [""]
    )


# ---- plain text (`smt-convert inspect BUNDLE`) ---------------------------------------------------------------


def format_facts(f: dict, bundle: Path) -> str:
    """The card's facts for a terminal: one line per fact, tables without Markdown."""
    src, gguf = f["source"], f["gguf"]
    where = f"{src['repo']} at {src['revision']}" if src["repo"] else f"directory {src['directory']}"
    types = ", ".join(f"{n} x {t}" for t, n in gguf["tensor_types"].items())
    v = f["verification"]
    verdict = {True: "passed", False: "FAILED"}.get(v["passed"], "not recorded")
    lines = [
        f"bundle        {bundle}",
        f"base model    {f['base_model']} ({where}, {src['layout']} layout; license "
        f"{src['license'] or 'not stated by the source'})",
        f"made by       {f['tool']['name']} {f['tool']['version']}, {f['tool']['created']}",
        f"architecture  {f['architecture']} ({f['front_matter']['pipeline_tag']})",
        f"text GGUF     {gguf['file']}: {gguf['arch']}, {gguf['outtype']}, {gguf['tensors']} tensors ({types})",
        f"verification  {verdict}, "
        + (f"against {v['reference']}" if v["reference"] else "goldens only (no Hugging Face comparison)"),
    ]
    if f["options"]:
        lines.append(
            "options       "
            + ", ".join(f"{k} {json.dumps(val)}" for k, val in f["options"].items() if val not in (None, {}, []))
        )
    if f["convert_command"]:
        lines.append(f"made with     {f['convert_command']}")
    lines.append("files:")
    width = max([len(e["path"]) for e in f["files"]] + [len(CARD_FILE)])
    for e in f["files"] + ([{**f["card"], "what": "the model card"}] if f["card"] else []):
        lines.append(f"  {e['path']:<{width}}  {e['size']:>12}  {e['sha256']}  {e['what'].replace('`', '')}")
    for e in f["encoders"]:
        io = lambda items: ", ".join(f"{x['name']} {shape(x['shape'])} {x['dtype']}" for x in items)
        lines.append(f"encoder       {e['file']} ({e['role']}, {e['dtype']}): {io(e['inputs'])} -> {io(e['outputs'])}")
    if v["rows"]:
        lines += ["verification rows:"] + [
            "  " + line for line in format_table([Row.from_dict(r) for r in v["rows"]]).splitlines()
        ]
    if f.get("memory"):
        terms, sizes = memory_lines(f["memory"])
        lines.append(f"memory        at -c {f['memory']['n_ctx']}: " + ", ".join(f"{t} {v}" for t, v in terms))
        lines.append(
            "board sizes   "
            + "; ".join(
                f"{gb}: {'holds it' if ok == 'yes' else 'too small'} (longest -c {ctx})" for gb, ok, ctx in sizes
            )
        )
    if f.get("golden", {}).get("answer") is not None:
        said = f["golden"]["input_text"]
        lines.append(
            f"golden        {f['golden']['input']}"
            + (f" ({said.splitlines()[0]!r}...)" if said else "")
            + f" -> {f['golden']['answer'].strip()[:100]!r}"
        )
    if f.get("quality"):
        q = f["quality"]
        lines.append(
            f"quality       KLD mean {q['kld_mean']:.4g}, p99 {q['kld_p99']:.4g}, top-1 {q['top1']:.3f} vs "
            f"Hugging Face over {q['positions']} positions"
        )
    lines.append("on the board, from the bundle directory:")
    lines += [f"  {c}" for c in f["board"]["commands"].values()] + [f"  ({n})" for n in f["board"]["notes"]]
    if not f["board"]["commands"]:
        lines.append("  (not recorded: this bundle was written before smt-convert recorded board command lines)")
    lines += [
        "with smt-convert, from the bundle directory:",
        f"  {f['smt_convert']['run']}",
        f"  {f['smt_convert']['verify']}",
    ]
    if f["limits"]:
        lines += ["known limits:"] + [f"  - {limit}" for limit in f["limits"]]
    return "\n".join(lines)
