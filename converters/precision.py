"""Per-tensor precision: which GGUF tensors keep a higher type than `--outtype`, and the user's overrides.

Three layers, in order:
1. the shared rule (`text_gguf.choose_type`, llama.cpp's): 1-D tensors F32, a 4/5-bit output projection Q8_0;
2. the family's rules (`ArchPlugin.precision_rules`): tensors whose error measurably hurts (each rule says why)
   are raised to at least the rule's type, never lowered;
3. `--tensor-type PATTERN=TYPE` (as llama-quantize's): the user's word, exact, last.
Patterns are regular expressions searched in the GGUF tensor name (`ssm_alpha`, `blk\\.0\\.`, `ffn_.*_exps`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

from smt_convert.runtime.errors import SmtError

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class PrecisionRule:
    """Tensors matching `pattern` keep at least `qtype` (a ggml type name) when `--outtype` is lossier."""

    pattern: str
    qtype: str
    reason: str

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def bits_per_weight(qtype: Q) -> float:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return 8.0 * size / block


def ggml_type(name: str, where: str) -> Q:
    """A ggml type from its name as users write it (q8_0, F16, q6_k), or one line naming `where`."""
    try:
        return Q[name.upper()]  # type: ignore[misc]  # an Enum lookup; mypy reads indexing the alias as a type application
    except KeyError:
        known = ", ".join(t.name.lower() for t in Q if t.name[0] in "FBQ" and not t.name.startswith("Q8_1"))
        raise SmtError(f"{where}: '{name}' is not a ggml type ({known})") from None


def parse_overrides(values: tuple[str, ...] | list[str], where: str = "--tensor-type") -> dict[str, str]:
    """`PATTERN=TYPE` strings -> {pattern: type name}; each checked (regex compiles, type exists)."""
    out = {}
    for value in values:
        pattern, sep, type_name = value.rpartition("=")
        if not sep or not pattern or not type_name:
            raise SmtError(f"{where}: expected PATTERN=TYPE (e.g. ssm_alpha=f16), got {value!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SmtError(f"{where}: {pattern!r} is not a regular expression ({exc})") from None
        ggml_type(type_name, where)
        out[pattern] = type_name.lower()
    return out


def fits(shape: tuple[int, ...], qtype: Q) -> bool:
    """A block type needs rows divisible by its block size."""
    return shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0


def apply(
    types: dict[str, Q],
    tensors: list,
    rules: tuple[PrecisionRule, ...] | list[PrecisionRule],
    overrides: dict[str, str] | None,
) -> tuple[dict[str, Q], list[dict]]:
    """The types after the family's rules and the user's overrides, and a record of what each changed (for the
    manifest). 1-D tensors stay F32 whatever is asked: llama.cpp reads norms and biases as F32."""
    types = dict(types)
    shapes = {t.name: tuple(t.shape) for t in tensors}
    applied = []
    for rule in rules:
        target = ggml_type(rule.qtype, f"precision rule {rule.pattern}")
        changed = [
            n
            for n, q in types.items()
            if rule.matches(n)
            and len(shapes[n]) > 1
            and bits_per_weight(q) < bits_per_weight(target)
            and fits(shapes[n], target)
        ]
        for name in changed:
            types[name] = target
        if changed:
            applied.append(
                {
                    "pattern": rule.pattern,
                    "type": target.name,
                    "tensors": len(changed),
                    "reason": rule.reason,
                    "by": "family rule",
                }
            )
    for pattern, type_name in (overrides or {}).items():
        target = ggml_type(type_name, "--tensor-type")
        matched = [n for n in types if re.search(pattern, n) and len(shapes[n]) > 1]
        if not matched:
            raise SmtError(f"--tensor-type: {pattern!r} matches no 2-D tensor of this model's GGUF")
        bad = next((n for n in matched if not fits(shapes[n], target)), None)
        if bad is not None:
            raise SmtError(
                f"--tensor-type: {bad}: rows of {shapes[bad][-1]} are not a multiple of "
                f"{target.name}'s block of {gguf.GGML_QUANT_SIZES[target][0]}"
            )
        for name in matched:
            types[name] = target
        applied.append({"pattern": pattern, "type": target.name, "tensors": len(matched), "by": "--tensor-type"})
    return types, applied
