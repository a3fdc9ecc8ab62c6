"""Config and weight validation that runs before any heavy work.

Every failure is a one-line SmtError naming the file and the field (or tensor); nothing only warns.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from smt_convert.runtime.errors import SmtError

_MISSING = object()
# Plan-time bounds on the config sizes that drive memory and time, so a wrong config is refused in one line
# before anything is allocated for it. Each is far above every released model of these families (largest
# known: 94 layers, 512 experts, 248320-token vocabulary, 262144 positions); the name is the config key.
FIELD_LIMITS = {
    "num_hidden_layers": 1024,
    "encoder_layers": 1024,
    "depth": 1024,
    "num_experts": 4096,
    "num_experts_per_tok": 4096,
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "moe_intermediate_size": 1 << 18,
    "shared_expert_intermediate_size": 1 << 18,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "max_position_embeddings": 1 << 24,
    "num_mel_bins": 1024,
}
MAX_CONFIG_INT = (1 << 31) - 1  # any other integer field
_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true/false",
    list: "a list",
    dict: "an object",
}


@dataclass
class ConfigReader:
    """Reads typed fields from a (possibly nested) config dict, naming the file and dotted path on failure."""

    data: dict
    path: Path
    prefix: str = ""

    @overload
    def sub(self, key: str, required: Literal[True] = True) -> "ConfigReader": ...
    @overload
    def sub(self, key: str, required: bool) -> "ConfigReader | None": ...
    def sub(self, key: str, required: bool = True) -> "ConfigReader | None":
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                raise SmtError(f"{self.path}: {self.prefix}{key}: required block is missing")
            return None
        if not isinstance(value, dict):
            raise SmtError(f"{self.path}: {self.prefix}{key}: expected an object, found {type(value).__name__}")
        return ConfigReader(value, self.path, f"{self.prefix}{key}.")

    def get(self, key: str, kind: type[Any] = int, default: Any = _MISSING) -> Any:
        value: Any = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise SmtError(f"{self.path}: {self.prefix}{key}: required field is missing")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise SmtError(
                f"{self.path}: {self.prefix}{key}: expected {_TYPE_NAMES.get(kind, kind.__name__)}, found {value!r}"
            )
        if kind is float and not math.isfinite(value):
            raise SmtError(f"{self.path}: {self.prefix}{key}: expected a finite number, found {value!r}")
        if kind in (int, float) and value <= 0:
            raise SmtError(f"{self.path}: {self.prefix}{key}: must be positive, found {value!r}")
        limit = FIELD_LIMITS.get(key, MAX_CONFIG_INT)
        if kind is int and value > limit:
            raise SmtError(
                f"{self.path}: {self.prefix}{key}: {value} is more than this tool accepts ({limit}; "
                "far above any released model: a wrong config?)"
            )
        return value

    def field(self, key: str) -> str:
        return f"{self.prefix}{key}"


def require(condition: bool, path: Path, field_name: str, message: str) -> None:
    """Cross-check helper: raise a one-line error when a relation between fields does not hold."""
    if not condition:
        raise SmtError(f"{path}: {field_name}: {message}")


def require_grouped_heads(num_heads: int, num_kv_heads: int, path: Path, text: "ConfigReader") -> None:
    """Grouped-query attention: every key/value head serves the same number of query heads (llama.cpp and the
    runtime's GQA assume it)."""
    require(
        num_heads % num_kv_heads == 0,
        path,
        text.field("num_key_value_heads"),
        f"{num_kv_heads} does not divide num_attention_heads {num_heads}",
    )


def require_silu_without_biases(text: "ConfigReader", path: Path, gguf_arch: str) -> None:
    """The decoders llama.cpp's Qwen graphs build: SiLU-gated FFNs, attention without biases."""
    require(
        text.data.get("hidden_act", "silu") == "silu",
        path,
        text.field("hidden_act"),
        f"'{text.data.get('hidden_act')}' is not supported (expected silu)",
    )
    require(
        not text.data.get("attention_bias", False),
        path,
        text.field("attention_bias"),
        f"attention biases are not supported by llama.cpp's {gguf_arch}",
    )


@dataclass
class TensorCheck:
    """What validation found about the checkpoint's tensors (dropped ones go into the manifest)."""

    dropped: dict[str, str] = field(default_factory=dict)  # checkpoint name -> why it is not converted


def check_tensors(
    checkpoint,
    expected: dict[str, tuple[int, ...]],
    ignored: dict[str, str] | None = None,
    optional: set[str] | None = None,
) -> TensorCheck:
    """Every expected tensor present with its shape; every other tensor explicitly ignored (with a reason).

    `expected` and `optional` are checkpoint tensor names; `ignored` maps glob patterns to the reason those
    tensors are not converted. An unexpected tensor is an error, so nothing is silently dropped.
    """
    ignored = ignored or {}
    optional = optional or set()
    tensors = checkpoint.tensors
    missing = [n for n in expected if n not in tensors and n not in optional]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SmtError(f"{checkpoint.root}: tensor {missing[0]}: missing from the checkpoint{more}")
    for name, shape in expected.items():
        info = tensors.get(name)
        if info is not None and tuple(info.shape) != tuple(shape):
            raise SmtError(
                f"{info.file}: tensor {name}: shape {list(info.shape)} does not match the config, "
                f"expected {list(shape)}"
            )
    result = TensorCheck()
    unexpected = []
    for name in tensors:
        if name in expected:
            continue
        reason = next((why for pattern, why in ignored.items() if fnmatch.fnmatchcase(name, pattern)), None)
        if reason is None:
            unexpected.append(name)
        else:
            result.dropped[name] = reason
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise SmtError(
            f"{tensors[unexpected[0]].file}: tensor {unexpected[0]}: not used by this architecture{more}; "
            f"refusing to drop weights silently"
        )
    return result


@dataclass(frozen=True)
class TieConfig:
    """What config.json says about tied embeddings: the value of the level the model class reads (or the
    family's default) and every level that states one (dotted field -> value)."""

    value: bool
    levels: dict[str, bool]

    @property
    def disagree(self) -> bool:
        return len(set(self.levels.values())) > 1


def read_tie(readers: list[ConfigReader], default: bool) -> TieConfig:
    """`tie_word_embeddings` may sit at several levels (top, thinker_config, text_config), and transformers'
    `save_pretrained` writes levels that disagree (Qwen3-ASR: top true, text_config false). `readers[0]` is the
    level the model class reads; the weights settle the rest (`settle_tie`)."""
    levels = {}
    for r in readers:
        if "tie_word_embeddings" in r.data:
            value = r.data["tie_word_embeddings"]
            if not isinstance(value, bool):
                raise SmtError(f"{r.path}: {r.field('tie_word_embeddings')}: expected true/false, found {value!r}")
            levels[r.field("tie_word_embeddings")] = value
    governing = readers[0].field("tie_word_embeddings")
    return TieConfig(levels.get(governing, default), levels)


@dataclass(frozen=True)
class TieDecision:
    tied: bool
    note: str | None = None  # why, when the config alone did not decide it (recorded in the manifest)


def settle_tie(config: TieConfig, ckpt, embed: str, head: str = "lm_head.weight") -> TieDecision:
    """Tied or not, as transformers 5 loads the checkpoint, with the weights as the final word:
    - `head` present and different from `embed`: untied (transformers keeps both, whatever the config says);
    - `head` present and equal: tied if the config says so (same numbers either way);
    - `head` absent: tied when any config level says tied (nothing else gives the model an output layer);
      absent with every level untied is refused (nothing settles it; transformers would make a random one)."""
    shown = ", ".join(f"{k}={str(v).lower()}" for k, v in config.levels.items())
    if embed not in ckpt.tensors:
        return TieDecision(config.value)  # the missing-tensor check names what is missing
    if head in ckpt.tensors:
        if not config.value:
            return TieDecision(False)
        if ckpt.tensors_equal(embed, head):
            return TieDecision(
                True,
                f"tie_word_embeddings: config levels disagree ({shown}); {head} equals the embeddings: tied"
                if config.disagree
                else None,
            )
        return TieDecision(
            False,
            f"tie_word_embeddings: the config says tied ({shown or 'default'}) but {head} "
            "differs from the embeddings: converted untied, as transformers loads it",
        )
    if config.value and not config.disagree:
        return TieDecision(True)
    if config.value or any(config.levels.values()):
        said = "config levels disagree" if config.disagree else "the level the model class reads does not say tied"
        return TieDecision(True, f"tie_word_embeddings: {said} ({shown}); no {head} in the checkpoint: tied")
    raise SmtError(
        f"{ckpt.config_path}: tie_word_embeddings: false ({shown or 'the default'}), but the checkpoint "
        f"has no {head}: nothing gives the model an output layer"
    )


def board_grid_notes(ny: int, nx: int) -> list[str]:
    """The board lays an image's tokens out as the closest-to-square factor pair; say so when that is not the
    real grid (its M-RoPE positions then differ from HF's; our runtime uses the real grid)."""
    from smt_convert.runtime.positions import guess_grid

    guess = guess_grid(ny * nx)
    if guess == (ny, nx):
        return []
    return [
        f"image grid {ny}x{nx}: the board guesses {guess} from the token count, so its M-RoPE positions "
        "will differ from HF's; the runtime uses the real grid"
    ]


def image_size_hw(
    image_size, multiple: int, patch: int | None = None, max_patches: int | None = None, why: str = ""
) -> tuple[int, int]:
    """(height, width) from N (square) or (height, width); both sides positive multiples of `multiple`
    (patch size x spatial merge: the vision encoder's token grid must be whole), and at most `max_patches`
    patches of `patch` pixels (checked here, before anything is allocated for the grid)."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise SmtError(f"--image-size: expected N or (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise SmtError(
            f"--image-size: {h}x{w} (height x width): both sides must be positive multiples of "
            f"{multiple} (patch_size * spatial_merge_size)"
        )
    if patch and max_patches and (h // patch) * (w // patch) > max_patches:
        raise SmtError(f"--image-size: {h}x{w} is {(h // patch) * (w // patch)} patches; at most {max_patches} ({why})")
    return h, w


@dataclass
class RopeConfig:
    """The rotary block of a text config, wherever transformers versions put it: `rope_parameters` (5.x) or
    `rope_scaling` (4.x), with the theta from the block or the text level."""

    block: ConfigReader  # the block itself (empty when absent), for family-specific keys
    rope_type: str
    theta: float


def read_rope(text: ConfigReader, default_theta: float) -> RopeConfig:
    key = "rope_parameters" if isinstance(text.data.get("rope_parameters"), dict) else "rope_scaling"
    block = text.sub(key, required=False) or ConfigReader({}, text.path, text.field(key) + ".")
    rope_type = block.get("rope_type", str, block.get("type", str, "default"))
    outer = text.get("rope_theta", float, None)  # read (and type-checked) even when the block has its own
    theta = block.get("rope_theta", float, None) or outer or default_theta
    return RopeConfig(block, rope_type, float(theta))
