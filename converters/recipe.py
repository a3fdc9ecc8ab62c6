"""Conversion recipes: one TOML file describes one model's conversions, so CI can repeat them.

name = "qwen3-asr-0.6b"              # optional, default: the file name
architecture = "qwen3-asr"
stem = "Qwen3-ASR-0.6B"              # optional bundle file prefix

[source]                             # exactly one of: path, env (+ optional path), tiny, repo (+ revision)
env = "SMT_MODEL_CACHE"              # a directory named by this environment variable ...
path = "Qwen3-ASR-0.6B"              # ... and a path inside it (alone: relative to this file)
# tiny = "qwen3-asr"                 # a tiny random checkpoint built in-process
# repo = "Qwen/Qwen3-ASR-0.6B"       # a Hugging Face repo id, through the Hub cache (HF_HUB_CACHE,
# revision = "main"                  # HF_HUB_OFFLINE, HF_TOKEN); branch, tag or commit (default main)

board = "k1"                         # optional: k1, k3 or host (converters/boards.py): a variant's missing
                                     # outtype/onnx_dtype come from the board, and ep_config and -c too

[[variants]]                         # one bundle per variant
outtype = "q4_0"                     # any --outtype, K-quants included (llama.cpp's quantiser)
onnx_dtype = "int8"
tensor_types = {"ssm_alpha" = "f16"} # optional: --tensor-type PATTERN=TYPE

[verify]                             # optional
enabled = true
max_new_tokens = 16
input = "clip.wav"                   # golden/verification input: audio or image (default: the plugin's own)
prompt = "OCR:"                      # prompt options used for the golden run (vision/text models)
language = "English"                 # (ASR models)
context = "hot words"                # (ASR models)

[thresholds]                         # optional overrides of the built-in per-type thresholds
text_nmse = 0.01
text_top1 = 0.9
encoder_cosine = 0.999
"""

from __future__ import annotations

import math
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from smt_convert.converters.hub import ResolvedCheckpoint, download, looks_like_repo_id
from smt_convert.converters.onnx_write import ONNX_DTYPES
from smt_convert.converters.text_gguf import ALL_OUTTYPES
from smt_convert.runtime.errors import SmtError

THRESHOLD_KEYS = ("text_nmse", "text_top1", "text_kld", "encoder_cosine", "encoder_rel_max_abs")
# A recipe's name and stem become directory and file names under --out: names, never paths.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
MAX_IMAGE_SIDE = 4096  # a 4096x4096 static input is 16k vision tokens: beyond what any of the boards runs
MAX_NEW_TOKENS = 4096  # greedy tokens a verification compares (each one is a decoder step)


@dataclass
class Variant:
    outtype: str | None  # None: the recipe's board profile decides
    onnx_dtype: str | None
    image_size: int | None = None
    tensor_types: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        size = f"-{self.image_size}" if self.image_size else ""
        types = ""
        if self.tensor_types:  # patterns are regexes, not file names: a short digest keeps variants apart
            import hashlib

            types = "-tt" + hashlib.sha256(repr(sorted(self.tensor_types.items())).encode()).hexdigest()[:6]
        return f"{self.outtype or 'board'}-{self.onnx_dtype or 'board'}{size}{types}"


@dataclass
class Recipe:
    path: Path
    name: str
    architecture: str
    source: dict
    variants: list[Variant]
    stem: str | None = None
    verify: bool = True
    max_new_tokens: int = 16
    verify_input: Path | None = None
    language: str | None = None
    context: str | None = None
    prompt: str | None = None
    thresholds: dict = field(default_factory=dict)
    board: str | None = None  # board profile (boards.py): default types, ep_config, -c


class _Table:
    """Typed access to one TOML table; every mistake names the file, the dotted key and what was expected."""

    def __init__(self, data: dict, path: Path, prefix: str, allowed: dict[str, type | tuple]):
        self.data, self.path, self.prefix, self.allowed = data, path, prefix, allowed
        for key in data:
            if key not in allowed:
                raise SmtError(f"{path}: {prefix}{key}: unknown key (expected one of: {', '.join(allowed)})")

    def get(self, key: str, default=None, choices: tuple | None = None):
        if key not in self.data:
            return default
        value, kind = self.data[key], self.allowed[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise SmtError(f"{self.path}: {self.prefix}{key}: expected {want}, got {value!r}")
        if choices and value not in choices:
            raise SmtError(f"{self.path}: {self.prefix}{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def require(self, key: str, choices: tuple | None = None):
        if key not in self.data:
            raise SmtError(f"{self.path}: {self.prefix}{key}: required key is missing")
        return self.get(key, choices=choices)


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SmtError(f"{path}: recipe not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SmtError(f"{path}: invalid TOML ({exc})") from None
    top = _Table(
        data,
        path,
        "",
        {
            "name": str,
            "architecture": str,
            "stem": str,
            "source": dict,
            "variants": list,
            "verify": dict,
            "thresholds": dict,
            "board": str,
        },
    )
    from smt_convert.converters.plugin import all_plugins

    known = tuple(p.name for p in all_plugins())
    recipe = Recipe(
        path=path,
        name=_plain(top.get("name", path.stem), path, "name"),
        architecture=top.require("architecture", known),
        source=_source(top.require("source"), path),
        variants=[],
        stem=top.get("stem"),
    )
    if recipe.stem is not None:
        _plain(recipe.stem, path, "stem")
    from smt_convert.converters.boards import BOARDS

    recipe.board = top.get("board", None, tuple(BOARDS))
    variants = top.require("variants")
    if not variants:
        raise SmtError(f"{path}: variants: at least one [[variants]] table is required")
    for i, entry in enumerate(variants):
        if not isinstance(entry, dict):
            raise SmtError(f"{path}: variants[{i}]: expected a table, got {entry!r}")
        v = _Table(
            entry, path, f"variants[{i}].", {"outtype": str, "onnx_dtype": str, "image_size": int, "tensor_types": dict}
        )
        default_out, default_onnx = (None, None) if recipe.board else ("f16", "fp32")
        variant = Variant(
            v.get("outtype", default_out, tuple(ALL_OUTTYPES)),
            v.get("onnx_dtype", default_onnx, ONNX_DTYPES),
            v.get("image_size"),
            _tensor_types(v.get("tensor_types", {}), path, f"variants[{i}].tensor_types"),
        )
        if variant.image_size is not None and not 1 <= variant.image_size <= MAX_IMAGE_SIDE:
            raise SmtError(f"{path}: variants[{i}].image_size: expected 1..{MAX_IMAGE_SIDE}, got {variant.image_size}")
        same = next((j for j, w in enumerate(recipe.variants) if w.name == variant.name), None)
        if same is not None and variant.outtype and variant.onnx_dtype:
            raise SmtError(f"{path}: variants[{i}]: the same variant as variants[{same}] ({variant.name})")
        recipe.variants.append(variant)
    verify = _Table(
        top.get("verify", {}),
        path,
        "verify.",
        {"enabled": bool, "max_new_tokens": int, "input": str, "language": str, "context": str, "prompt": str},
    )
    recipe.verify = verify.get("enabled", True)
    recipe.max_new_tokens = verify.get("max_new_tokens", 16)
    if not 1 <= recipe.max_new_tokens <= MAX_NEW_TOKENS:
        raise SmtError(f"{path}: verify.max_new_tokens: expected 1..{MAX_NEW_TOKENS}, got {recipe.max_new_tokens}")
    if verify.get("input"):
        recipe.verify_input = (path.parent / verify.get("input")).resolve()
    recipe.language, recipe.context = verify.get("language"), verify.get("context")
    recipe.prompt = verify.get("prompt")
    if recipe.verify_input is not None and not recipe.verify_input.is_file():
        raise SmtError(f"{path}: verify.input: {recipe.verify_input} not found")
    th = _Table(top.get("thresholds", {}), path, "thresholds.", {k: float for k in THRESHOLD_KEYS})
    recipe.thresholds = {k: th.get(k) for k in THRESHOLD_KEYS if th.get(k) is not None}
    for key, value in recipe.thresholds.items():
        if not math.isfinite(value) or value < 0 or (key in ("text_top1", "encoder_cosine") and value > 1):
            raise SmtError(
                f"{path}: thresholds.{key}: expected a finite number"
                f"{' in 0..1' if key in ('text_top1', 'encoder_cosine') else ' >= 0'}, got {value!r}"
            )
    return recipe


def _tensor_types(table: dict, path: Path, key: str) -> dict[str, str]:
    """A variant's `tensor_types = {PATTERN = "TYPE"}`, checked as --tensor-type is."""
    from smt_convert.converters.precision import parse_overrides

    if not all(isinstance(v, str) for v in table.values()):
        raise SmtError(f'{path}: {key}: expected PATTERN = "TYPE" strings')
    try:
        return parse_overrides([f"{k}={v}" for k, v in table.items()], f"{key}")
    except SmtError as exc:
        raise SmtError(f"{path}: {exc}") from None


def _plain(name, path: Path, key: str) -> str:
    """A recipe name or stem is a name: it becomes a directory or file name under --out, never a path."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name) or name in (".", ".."):
        raise SmtError(
            f"{path}: {key}: {name!r} must be a plain name (letters, digits, '.', '_', '+', '-'; "
            "no '/' and not starting with '.'): it names a directory under --out"
        )
    return name


def check_unique(recipes: list[Recipe]) -> None:
    """Two recipes with one name would write the same bundles: refused before anything converts."""
    seen: dict[str, Recipe] = {}
    for r in recipes:
        if r.name in seen:
            raise SmtError(
                f"{r.path}: name: {r.name!r} is also the name of {seen[r.name].path}; each recipe writes "
                "to OUT/<name>/, so names must differ"
            )
        seen[r.name] = r


def check_options(recipe: Recipe, plugin, ckpt, hp) -> None:
    """Options the model cannot use are errors, found from its prompt record and facts before any variant is
    converted (the same record the runtime checks `run`'s options against)."""
    record = plugin.prompt_record(hp)
    fields = set(record.get("template_fields", {}))
    takes = {
        "verify.prompt": "prompt" in fields,
        "verify.context": "context" in fields,
        "verify.language": "assistant_prefix_with_language" in record,
    }
    for key, value in (
        ("verify.prompt", recipe.prompt),
        ("verify.context", recipe.context),
        ("verify.language", recipe.language),
    ):
        if value is not None and not takes[key]:
            raise SmtError(f"{recipe.path}: {key}: {recipe.architecture} has no such prompt option")
    facts = plugin.facts(hp)
    if recipe.board:  # the board's defaults for what the variants leave open (they need the model's modality)
        from smt_convert.converters.boards import choose

        for v in recipe.variants:
            chosen = choose(recipe.board, v.outtype, v.onnx_dtype, facts.modality)
            v.outtype, v.onnx_dtype = chosen.outtype, chosen.onnx_dtype
        names = [v.name for v in recipe.variants]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice:
            raise SmtError(f"{recipe.path}: variants: two variants become {twice} on board {recipe.board}")
    for i, v in enumerate(recipe.variants):
        if v.image_size is not None and facts.modality != "image":
            raise SmtError(f"{recipe.path}: variants[{i}].image_size: {recipe.architecture} has no vision encoder")
        if v.image_size is not None:  # the model's own rules for the size (multiple of its merge size ...)
            from smt_convert.converters.convert import ConvertOptions

            try:
                plugin.read_hparams(ckpt, ConvertOptions(image_size=v.image_size))
            except SmtError as exc:
                raise SmtError(f"{recipe.path}: variants[{i}].image_size: {exc}") from None


def _source(data: dict, path: Path) -> dict:
    src = _Table(data, path, "source.", {"path": str, "env": str, "tiny": str, "repo": str, "revision": str})
    if set(data) not in ({"path"}, {"env"}, {"env", "path"}, {"tiny"}, {"repo"}, {"repo", "revision"}):
        raise SmtError(f"{path}: source: give exactly one of path, env (+ path), tiny or repo (+ revision)")
    kind = next((k for k in ("tiny", "repo", "env") if k in data), "path")
    if kind == "repo" and not looks_like_repo_id(src.get("repo")):
        raise SmtError(f"{path}: source.repo: expected a Hugging Face repo id ORG/NAME, got {data['repo']!r}")
    return {
        "kind": kind,
        "path": src.get("path"),
        "env": src.get("env"),
        "tiny": src.get("tiny"),
        "repo": src.get("repo"),
        "revision": src.get("revision"),
    }


def resolve_source(recipe: Recipe, scratch: Path, progress: bool = True) -> ResolvedCheckpoint:
    """The checkpoint directory for a recipe; `tiny:` sources are built under `scratch` (once), `repo:` ones
    fetched into (or found in) the Hugging Face cache."""
    src = recipe.source
    if src["kind"] == "repo":
        return download(src["repo"], src["revision"], progress, what=f"{recipe.path}: source.repo")
    if src["kind"] == "tiny":
        from smt_convert.testing.checkpoints import TINY_BUILDERS

        builder = TINY_BUILDERS.get(src["tiny"])
        if builder is None:
            raise SmtError(
                f"{recipe.path}: source.tiny: expected one of {', '.join(TINY_BUILDERS)}, got {src['tiny']!r}"
            )
        out = scratch / f"tiny-{src['tiny']}"
        if not (out / "config.json").is_file():
            builder(out)
        return ResolvedCheckpoint(out)
    if src["kind"] == "env":
        base = os.environ.get(src["env"])
        if not base:
            raise SmtError(f"{recipe.path}: source.env: environment variable {src['env']} is not set")
        directory = Path(base) / (src["path"] or "")
    else:
        directory = (recipe.path.parent / src["path"]).resolve()
    if not directory.is_dir():
        raise SmtError(f"{recipe.path}: source: checkpoint directory {directory} not found")
    return ResolvedCheckpoint(directory)


@dataclass
class Result:
    recipe: str
    variant: str
    status: str  # "pass", "fail" (verification), "error" (could not convert)
    seconds: float
    output: Path | None = None
    sizes: dict = field(default_factory=dict)
    worst: str = ""
    message: str = ""
    quality: dict = field(default_factory=dict)  # the manifest's quality report (KLD, top-1)
    memory: dict = field(default_factory=dict)  # the manifest's memory statement


def prepare_recipes(
    recipes: list[Recipe], scratch: Path, progress: bool = True
) -> tuple[dict[str, ResolvedCheckpoint], list[Result]]:
    """Before any conversion: resolve every recipe's source (a `tiny` one is built here) and check the options
    its architecture cannot take. A source that cannot be had fails that recipe's variants (the others run);
    an option the model cannot use is a mistake in the recipe file and stops everything (SmtError)."""
    from smt_convert.converters.checkpoint import Checkpoint
    from smt_convert.converters.plugin import get_plugin

    sources, failed = {}, []
    for recipe in recipes:
        try:
            checkpoint = resolve_source(recipe, scratch, progress)
        except SmtError as exc:
            failed += [Result(recipe.name, v.name, "error", 0.0, message=str(exc)) for v in recipe.variants]
            continue
        plugin = get_plugin(recipe.architecture)
        ckpt = Checkpoint.open(checkpoint.directory)
        check_options(recipe, plugin, ckpt, plugin.read_hparams(ckpt, None))
        sources[recipe.name] = checkpoint
    return sources, failed


def run_recipe(recipe: Recipe, checkpoint: ResolvedCheckpoint, out_root: Path, report) -> list[Result]:
    """Every variant of one (checked) recipe; a failing variant does not stop the others. The variants share
    one opened (and hashed) checkpoint, the encoder files already written and the Hugging Face reference."""
    from smt_convert.converters.convert import ConvertOptions, SharedWork, convert
    from smt_convert.converters.plugin import get_plugin

    results = []
    shared = SharedWork()
    plugin = get_plugin(recipe.architecture)
    for variant in recipe.variants:
        out = out_root / recipe.name / variant.name
        opts = ConvertOptions(
            outtype=variant.outtype,
            onnx_dtype=variant.onnx_dtype,
            stem=recipe.stem,
            force=True,
            verify=recipe.verify,
            max_new_tokens=recipe.max_new_tokens,
            thresholds=recipe.thresholds,
            golden_input=recipe.verify_input,
            language=recipe.language,
            fields=_fields(recipe),
            image_size=variant.image_size,
            shared=shared,
            hub=checkpoint.hub,
            board=recipe.board,
            tensor_types=variant.tensor_types or None,
        )
        report.step(f"recipe {recipe.name}: {variant.name}")
        t0 = time.perf_counter()
        try:
            manifest = convert(plugin, checkpoint.directory, out, opts, report)
        except SmtError as exc:
            results.append(Result(recipe.name, variant.name, "error", time.perf_counter() - t0, message=str(exc)))
            continue
        passed = manifest["verification"]["passed"]
        failing = [r for r in manifest["verification"]["rows"] if r.get("gate", True) and not r["ok"]]
        results.append(
            Result(
                recipe.name,
                variant.name,
                "pass" if passed else "fail",
                time.perf_counter() - t0,
                output=out,
                sizes=_sizes(manifest),
                worst=_worst(manifest),
                message="; ".join(f"{r['check']} {r['metric']} {r['value']}" for r in failing),
                quality=manifest.get("quality") or {},
                memory=manifest.get("memory") or {},
            )
        )
    return results


def _fields(recipe: Recipe) -> dict | None:
    fields = {k: v for k, v in (("context", recipe.context), ("prompt", recipe.prompt)) if v is not None}
    return fields or None


def _sizes(manifest: dict) -> dict:
    files = {f["path"]: f["size"] for f in manifest["files"]}
    text = files.get(manifest["text"]["file"], 0)
    encoders = sum(files.get(e["file"], 0) for e in manifest["encoders"])
    return {"text": text, "encoders": encoders}


def _worst(manifest: dict) -> str:
    """The headline numbers of the verification: text NMSE / top-1 and encoder cosine."""
    rows = {(r["check"], r["metric"]): r["value"] for r in manifest["verification"]["rows"]}
    parts = []
    if ("text logits", "nmse") in rows:
        top1 = rows.get(("text logits", "top-1 (3-sigma ties)"), rows.get(("text logits", "top-1 agreement")))
        parts.append(f"nmse {rows[('text logits', 'nmse')]:.2g} top1 {top1:.3f}")
    if ("encoder", "cosine") in rows:
        parts.append(f"enc cos {rows[('encoder', 'cosine')]:.5f}")
    return ", ".join(parts) or "goldens only"


RESULT_HEADER = ("recipe", "variant", "status", "time", "gguf", "encoders", "verification")


def result_cells(results: list[Result], message_width: int | None = 80) -> list[tuple[str, ...]]:
    """RESULT_HEADER's cells per variant: the printed table and the Markdown summary show the same."""

    def mb(n):
        return f"{n / 2**20:.1f}M" if n else "-"

    return [
        (
            r.recipe,
            r.variant,
            r.status.upper(),
            f"{r.seconds:.1f}s",
            mb(r.sizes.get("text", 0)),
            mb(r.sizes.get("encoders", 0)),
            r.worst if r.status != "error" else r.message[:message_width],
        )
        for r in results
    ]


COMPARISON_HEADER = (
    "recipe",
    "variant",
    "gguf",
    "encoders",
    "KLD mean",
    "KLD p99",
    "top-1",
    "board memory",
    "-c",
    "fits",
)


def comparison_cells(results: list[Result]) -> list[tuple]:
    """The variants side by side: what each costs (sizes, memory at its -c, the smallest board size that holds it)
    and what it loses against the Hugging Face model (KLD, top-1): the choice in one glance."""

    def mb(n):
        return f"{n / 2**20:.1f}M" if n else "-"

    def num(q, key, fmt):
        return format(q[key], fmt) if q.get(key) is not None else "-"

    rows = []
    for r in results:
        if r.status == "error":
            continue
        m = r.memory
        total = m.get("bytes", {}).get("total")
        fits = m.get("fits_at_n_ctx") or []
        rows.append(
            (
                r.recipe,
                r.variant,
                mb(r.sizes.get("text", 0)),
                mb(r.sizes.get("encoders", 0)),
                num(r.quality, "kld_mean", ".4g"),
                num(r.quality, "kld_p99", ".4g"),
                num(r.quality, "top1", ".3f"),
                mb(total) if total else "-",
                str(m.get("n_ctx", "-")),
                f">= {min(fits)} GB" if fits else "-",
            )
        )
    return rows


def format_comparison(results: list[Result]) -> str:
    rows = comparison_cells(results)
    if not rows:
        return ""
    widths = [max(len(str(c)) for c in col) for col in zip(COMPARISON_HEADER, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(COMPARISON_HEADER), line(["-" * w for w in widths])] + [line(b) for b in rows])


def format_results(results: list[Result]) -> str:
    header, body = RESULT_HEADER, result_cells(results)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def format_summary(results: list[Result]) -> str:
    """Markdown for a CI job summary (e.g. `--summary "$GITHUB_STEP_SUMMARY"`): the counts, the printed table's
    rows with each bundle's directory, and every failure's whole message."""
    from smt_convert.converters.card import markdown_table

    n = {status: sum(r.status == status for r in results) for status in ("pass", "fail", "error")}
    lines = [
        "## smt-convert recipes",
        "",
        f"{len(results)} variants: {n['pass']} passed, {n['fail']} failed verification, {n['error']} could not "
        f"be converted ({sum(r.seconds for r in results):.0f} s in all).",
        "",
    ]
    rows = [
        (*cells, f"`{r.output}`" if r.output else "-")
        for cells, r in zip(result_cells(results, message_width=None), results)
    ]
    lines += markdown_table((*RESULT_HEADER, "bundle"), rows) + [""]
    compared = comparison_cells(results)
    if compared:
        lines += (
            [
                "### Variants compared",
                "",
                "Quality against the Hugging Face model (teacher-forced KL divergence of the next-token "
                "distribution, top-1 agreement) and what each variant needs on the board at its -c.",
                "",
            ]
            + markdown_table(COMPARISON_HEADER, compared)
            + [""]
        )
    bad = [r for r in results if r.status != "pass"]
    if bad:
        lines += (
            ["### Not passed", ""]
            + [f"- {r.recipe} {r.variant} ({r.status}): {r.message or r.worst}" for r in bad]
            + [""]
        )
    return "\n".join(lines)


def write_summary(results: list[Result], path: Path) -> None:
    """Appended, as GitHub's $GITHUB_STEP_SUMMARY expects (other steps may have written to it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(format_summary(results))
    except OSError as exc:
        raise SmtError(f"--summary: {path}: cannot write ({exc.strerror or exc})") from None


def write_junit(results: list[Result], path: Path) -> None:
    """JUnit XML (one testcase per recipe variant) for CI systems that render test reports."""
    import xml.etree.ElementTree as ET

    suite = ET.Element(
        "testsuite",
        name="smt-convert recipes",
        tests=str(len(results)),
        failures=str(sum(r.status == "fail" for r in results)),
        errors=str(sum(r.status == "error" for r in results)),
        time=f"{sum(r.seconds for r in results):.2f}",
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=r.recipe, name=r.variant, time=f"{r.seconds:.2f}")
        if r.status == "fail":
            ET.SubElement(case, "failure", message=r.message or "verification failed").text = r.worst
        elif r.status == "error":
            ET.SubElement(case, "error", message=r.message)
        else:
            ET.SubElement(case, "system-out").text = r.worst
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise SmtError(f"--junit: {path}: cannot write ({exc.strerror or exc})") from None
