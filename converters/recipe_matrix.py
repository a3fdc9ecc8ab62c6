"""Recipes over a CI matrix: list the variants as jobs, run a deterministic share of them, and merge the shares'
results into the report one run would have written.

A variant's key is `<recipe name>/<declared variant>` (types a board profile fills in show as "board"), known from
the recipe files alone, so `--list` needs no checkpoint. `--shard I/N` takes every N-th key of the sorted list,
starting at the I-th; `--only` takes named keys (or whole recipes). Each run writes `OUT/results/<shard>.json`;
`smt-convert recipe-report DIR...` reads those from every shard's OUT and writes the JUnit XML, the Markdown
summary and the table, exactly as a single run does (recipe.py's own writers)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from smt_convert.converters.recipe import Recipe, Result
from smt_convert.runtime.errors import SmtError

RESULTS_DIR = ".results"  # beside the recipes' OUT/<name>/ directories; a recipe name cannot start with "."


def declared_name(variant) -> str:
    """The variant as the recipe file declares it (before a board profile fills in its types: "board")."""
    return variant.name


def variant_keys(recipes: list[Recipe]) -> list[dict]:
    """One entry per variant, sorted by key: what a CI matrix fans out over."""
    entries = []
    for r in recipes:
        for v in r.variants:
            entries.append(
                {
                    "key": f"{r.name}/{declared_name(v)}",
                    "recipe": r.name,
                    "file": str(r.path),
                    "variant": declared_name(v),
                    "architecture": r.architecture,
                    "board": r.board,
                    "outtype": v.outtype,
                    "onnx_dtype": v.onnx_dtype,
                    "image_size": v.image_size,
                    "source": r.source["kind"],
                }
            )
    return sorted(entries, key=lambda e: e["key"])


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise SmtError(f"--shard: expected I/N (e.g. 2/4), got {value!r}") from None
    if not 1 <= i <= n:
        raise SmtError(f"--shard: {value}: I must be between 1 and N")
    return i, n


def select(recipes: list[Recipe], only: str | None, shard: tuple[int, int] | None) -> list[Recipe]:
    """The recipes with only the chosen variants (recipes left with none are dropped)."""
    keys = [e["key"] for e in variant_keys(recipes)]
    chosen = set(keys)
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in chosen and not any(k.startswith(w + "/") for k in keys)]
        if unknown:
            raise SmtError(f"--only: {unknown[0]!r} is no recipe or variant key (see --list)")
        chosen = {k for k in keys if k in wanted or k.split("/")[0] in wanted}
    if shard:
        i, n = shard
        chosen &= {k for j, k in enumerate(keys) if j % n == i - 1}
    out = []
    for r in recipes:
        variants = [v for v in r.variants if f"{r.name}/{declared_name(v)}" in chosen]
        if variants:
            out.append(dataclasses.replace(r, variants=variants))
    return out


def write_results(results: list[Result], out_root: Path, shard: tuple[int, int] | None) -> Path:
    """This run's results, for `recipe-report` to merge."""
    path = Path(out_root) / RESULTS_DIR / (f"shard-{shard[0]}-of-{shard[1]}.json" if shard else "all.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [{**dataclasses.asdict(r), "output": str(r.output) if r.output else None} for r in results]
    path.write_text(json.dumps(data, indent=1))
    return path


def read_results(directories: list[Path]) -> list[Result]:
    """Every shard's results from the given OUT directories, in the order one run reports them (by key)."""
    from smt_convert.runtime.documents import load_json

    results = []
    for directory in directories:
        files = sorted((Path(directory) / RESULTS_DIR).glob("*.json"))
        if not files:
            raise SmtError(f"{directory}: no {RESULTS_DIR}/*.json (not the --out of a recipe run?)")
        for path in files:
            data = load_json(path)
            if not isinstance(data, list):
                raise SmtError(f"{path}: expected a list of results")
            for i, entry in enumerate(data):
                if not isinstance(entry, dict):
                    raise SmtError(f"{path}: [{i}]: not a recipe result (expected an object)")
                try:
                    output = Path(entry["output"]) if entry.get("output") else None
                    results.append(Result(**{**entry, "output": output}))
                except (TypeError, KeyError) as exc:
                    raise SmtError(f"{path}: [{i}]: not a recipe result ({exc})") from None
    seen = set()
    for r in results:
        if (r.recipe, r.variant) in seen:
            raise SmtError(f"{r.recipe} {r.variant}: reported by two shards")
        seen.add((r.recipe, r.variant))
    return results
