"""The plugin contract: what shared code asks of one model family, and the registry that finds it.

A plugin is one subclass of `ArchPlugin` in its own package under `archs/`, registered with `@register`.
Shared code (`convert.py`, `text_gguf.py`, `onnx_write.py`, `reference.py`, `recipe.py`, `inspect.py`) calls
only the members declared here and never probes for others: a hook a family does not need keeps the default
written here.

Naming convention: `expected_tensors` returns *canonical* names (the transformers-native names of the class);
`canonical_to_checkpoint` maps them onto the names this checkpoint uses (original release or native);
`TextTensor.sources`, `ignored_tensors` and everything that touches the files use checkpoint names.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from smt_convert.runtime.errors import SmtError

if TYPE_CHECKING:
    from smt_convert.converters.checkpoint import Checkpoint
    from smt_convert.converters.onnx_graph import EncoderGraph, Weights
    from smt_convert.converters.precision import PrecisionRule
    from smt_convert.runtime.verify import Row

PLUGINS: dict[str, type["ArchPlugin"]] = {}


def register(cls: type["ArchPlugin"]) -> type["ArchPlugin"]:
    """Class decorator: make a plugin reachable by its CLI name and its HF `architectures` values."""
    if cls.name in PLUGINS:
        raise ValueError(f"plugin {cls.name} registered twice")
    PLUGINS[cls.name] = cls
    return cls


def _load_builtin_plugins() -> None:
    """Import every family package under `archs/`: each registers its plugin on import, so a new family is a
    new package and nothing here changes."""
    import importlib
    import pkgutil

    import smt_convert.archs as archs

    for module in pkgutil.iter_modules(archs.__path__):
        if module.ispkg:
            importlib.import_module(f"{archs.__name__}.{module.name}")


def get_plugin(name: str) -> "ArchPlugin":
    _load_builtin_plugins()
    cls = PLUGINS.get(name)
    if cls is None:
        raise SmtError(f"unknown architecture '{name}' (supported: {', '.join(sorted(PLUGINS))})")
    return cls()


def all_plugins() -> list["ArchPlugin"]:
    _load_builtin_plugins()
    return [PLUGINS[n]() for n in sorted(PLUGINS)]


def detect_plugin(config: dict, config_path) -> "ArchPlugin":
    """Pick the plugin for a checkpoint from its config.json `architectures` (then the plugin's own test)."""
    _load_builtin_plugins()
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise SmtError(f"{config_path}: architectures: expected a list of class names")
    for cls in PLUGINS.values():
        if any(a in cls.hf_architectures for a in archs):
            return cls()
    if not archs:  # only an unlabelled config is identified by its shape
        for cls in PLUGINS.values():
            if cls.matches(config):
                return cls()
    known = sorted(a for cls in PLUGINS.values() for a in cls.hf_architectures)
    shown = ", ".join(archs) if archs else "none"
    raise SmtError(f"{config_path}: architectures: {shown} is not supported (supported: {', '.join(known)})")


def plugin_for_command(name: str, config: dict, config_path) -> tuple["ArchPlugin", str | None]:
    """The plugin of an explicit `smt-convert <name>` command, and a warning when the checkpoint declares a class
    that plugin does not list (a different family is an error: the user picked the wrong command)."""
    plugin = get_plugin(name)
    archs = config.get("architectures") or []
    try:
        detected = detect_plugin(config, config_path)
    except SmtError:  # unknown or unlabelled: the chosen plugin's own checks say what is wrong
        detected = plugin
    if detected.name != plugin.name:
        raise SmtError(
            f"{config_path}: architectures: this is a {detected.name} checkpoint; use `smt-convert {detected.name}`"
        )
    declared = archs[0] if isinstance(archs, list) and archs else None
    if declared is None:
        return plugin, f"{config_path}: architectures: not declared; converting as {name}"
    if declared not in plugin.hf_architectures:
        return plugin, (
            f"{config_path}: architectures: {declared} is not a class {name} knows "
            f"({', '.join(plugin.hf_architectures)}); converting as {name}"
        )
    return plugin, None


@dataclass
class TextTensor:
    """One tensor of the text GGUF: which checkpoint tensors it is made from and how."""

    name: str  # GGUF tensor name, e.g. "blk.0.attn_q.weight"
    sources: tuple[str, ...]  # checkpoint tensor names
    shape: tuple[int, ...]  # numpy-order shape of the result
    transform: Callable[..., np.ndarray] | None = None  # f(*arrays) -> array; None means the single source as is

    def build(self, load: Callable[[str], np.ndarray]) -> np.ndarray:
        arrays = [load(s) for s in self.sources]
        out = self.transform(*arrays) if self.transform else arrays[0]
        if tuple(out.shape) != tuple(self.shape):
            raise SmtError(f"tensor {self.name}: transform produced {list(out.shape)}, planned {list(self.shape)}")
        return out


@dataclass
class EncoderOutput:
    """One ONNX file of the bundle, as the plan describes it before export."""

    role: str  # "audio-frontend", "audio-backend", "vision"
    file: str  # file name inside the bundle
    params: int  # parameters it carries (for inspect)
    inputs: list[dict]  # planned I/O contract: [{"name", "shape", "dtype"}]
    outputs: list[dict]


@dataclass
class Plan:
    """Everything a conversion will write, known before any tensor data is read; `inspect` prints it."""

    plugin: "ArchPlugin"
    hparams: Any  # the plugin's own hyperparameter record
    facts: "ModelFacts"
    stem: str
    outtype: str
    onnx_dtype: str
    text_file: str
    text_arch: str
    modality: str  # "audio", "image" or "text" (no encoder)
    golden_file: str | None  # golden input file name inside golden/ (None: text only)
    text_tensors: list[TextTensor]
    text_types: dict[str, str]  # GGUF name -> ggml type name chosen for it
    text_bytes: int  # planned GGUF tensor data size
    encoders: list[EncoderOutput]
    dropped: dict[str, str]  # checkpoint tensors not converted, with the reason
    tokenizer: Any  # converters.tokenizer.TokenizerSource
    vocab: Any  # converters.tokenizer.GgufVocab, built while planning
    params: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    precision: list[dict] = field(default_factory=list)  # what the family's rules and --tensor-type changed
    board: Any = None  # converters.boards.BoardProfile with --board, else None
    warnings: list[str] = field(default_factory=list)  # printed as warnings (e.g. a type the board runs slowly)
    requant: dict | None = None  # K-quant: {"preset", "source_type", "tensor_types"} for llama.cpp
    estimated_types: dict[str, str] = field(default_factory=dict)  # the final file's types (K-quants: estimated)


@dataclass(frozen=True)
class TokenRules:
    """How the GGUF vocabulary is written: llama.cpp's pre-tokenizer name (None for SentencePiece) and the
    special tokens by their text (None: not set). `chat_template` None keeps the checkpoint's own."""

    pre: str | None
    eos: str | None
    eot: str | None = None
    bos: str | None = None
    chat_template: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What shared code reads from a plugin's hyperparameters (each plugin keeps its own record for the rest)."""

    layout: str  # which checkpoint layout was found, e.g. "native" or "original"
    vocab_size: int
    text_arch: str  # GGUF general.architecture
    modality: str  # "audio", "image" or "text" (no encoder)
    rope_sections: list[int]  # rope.dimension_sections written to the GGUF ([] when not M-RoPE)
    default_stem: str  # file-name prefix of the bundle's files
    tie_note: str | None = None  # how tied embeddings were decided, when config.json alone did not say


@dataclass
class ReferenceRequest:
    """What the bundle's runtime did, handed to the plugin's Hugging Face reference to redo independently.

    `media` is the raw input (waveform or RGB uint8 image, None for text-only); `host_input` is what the runtime
    fed the encoder after host preprocessing (log-mel features or the resized image); `prompt_ids` is the prompt
    with the media rows as the model's placeholder id; `continuation` the runtime's greedy tokens, which the
    reference scores by teacher forcing (one streamed pass instead of a generate loop)."""

    media: Any
    host_input: np.ndarray | None
    prompt_ids: list[int]
    continuation: list[int]
    stop_ids: list[int]
    host: str = "hf"  # the host path that made host_input ("board" or "hf", runtime/host.py)


@dataclass
class ReferenceResult:
    """The Hugging Face model's answers: encoder rows for the same host input, logits at every prompt and
    continuation position, and any family-specific rows (e.g. feature extraction) already judged."""

    logits: np.ndarray  # [len(prompt_ids) + len(continuation), vocab]
    encoder: np.ndarray | None = None  # [rows, hidden] for the same host input
    rows: list["Row"] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # stored in expected.json for people (small values only)


class ArchPlugin(abc.ABC):
    """One model family. Subclasses set the class attributes and implement the abstract methods; every
    other method has the default behaviour shared code relies on."""

    name: ClassVar[str]  # CLI name, e.g. "qwen3-asr"
    hf_architectures: ClassVar[tuple[str, ...]]  # config.json `architectures` values it answers to
    summary: ClassVar[str]
    produces: ClassVar[list[str]]  # what a bundle holds, for `smt-convert list`
    text_arch: ClassVar[str]  # GGUF architecture, for `smt-convert list` (facts() decides)
    tokens: ClassVar[TokenRules]
    lossy_nmse_scale: ClassVar[float] = 1.0  # widens lossy text NMSE bounds (MoE routing flips)
    # GGUF tensors that keep a higher type than a lossy --outtype, each with its measured reason (precision.py)
    precision_rules: ClassVar[tuple["PrecisionRule", ...]] = ()
    # Flags the board's llama-mtmd-cli / llama-server need for this family, recorded in the bundle's board command
    # lines: `--jinja` when the GGUF's chat template is not one llama.cpp recognises (llama-chat.cpp) without it.
    board_flags: ClassVar[tuple[str, ...]] = ()

    # ---- checkpoint ------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def matches(cls, config: dict) -> bool:
        """An unlabelled config (no `architectures`) is this family's."""

    @abc.abstractmethod
    def read_hparams(self, ckpt: "Checkpoint", opts) -> Any:
        """Read and validate the config (and tensor names where the layout needs them); raise SmtError naming
        the file and field for anything unusable."""

    @abc.abstractmethod
    def facts(self, hp) -> ModelFacts:
        """The few facts shared code needs from the hyperparameters."""

    def canonical_to_checkpoint(self, hp) -> Callable[[str], str]:
        """Canonical (native) tensor name -> the name in this checkpoint (by default they are the same: the
        checkpoint is in transformers' own layout)."""
        return lambda name: name

    @abc.abstractmethod
    def expected_tensors(self, hp) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape for every tensor the model uses."""

    def ignored_tensors(self, hp) -> dict[str, str]:
        """Checkpoint tensors deliberately not converted (glob over checkpoint names -> reason)."""
        return {}

    def check_weights(self, ckpt: "Checkpoint", hp) -> None:  # noqa: B027 - a hook: most families need none
        """Config-vs-weights checks that need more than names and shapes."""

    # ---- text GGUF -------------------------------------------------------------------------------

    @abc.abstractmethod
    def text_tensors(self, hp) -> list[TextTensor]:
        """Every tensor of the GGUF, in write order, with checkpoint-name sources."""

    def text_types(self, tensors: list[TextTensor], outtype: str) -> dict:
        """ggml type per GGUF tensor for `--outtype`; llama.cpp's rules by default."""
        from smt_convert.converters.text_gguf import choose_types

        return choose_types(tensors, outtype)

    @abc.abstractmethod
    def text_metadata(self, writer, hp) -> None:
        """The architecture's GGUF metadata keys (general.*, vocabulary and file type are written by shared code)."""

    # ---- encoders --------------------------------------------------------------------------------

    def encoder_outputs(self, hp, stem: str) -> list[EncoderOutput]:
        """The ONNX files the bundle will hold, with their planned I/O (empty: text only)."""
        return []

    def build_encoders(self, weights: "Weights", hp, precision: str) -> list["EncoderGraph"]:
        """The encoder graphs, one per `encoder_outputs` entry and in the same order, written node by node
        from the weights at `precision` ("fp32", "fp16", "int8": `converters/onnx_graph.py`'s layers handle it)."""
        return []

    # ---- bundle side files -----------------------------------------------------------------------

    @abc.abstractmethod
    def board_config(self, hp, files: dict[str, str]) -> dict:
        """config.json for the board runtime's --smt-config-dir (`files`: role -> file name)."""

    def side_files(self, hp, files: dict[str, str], stem: str) -> dict[str, dict]:
        """Extra JSON files the board may read (file name -> content)."""
        return {}

    @abc.abstractmethod
    def prompt_record(self, hp) -> dict:
        """How the runtime (and the board) builds a prompt: template, media marker and boundary tokens,
        position rule, stop tokens; stored in the manifest."""

    def required_tokens(self, hp) -> list[str]:
        """Tokens the prompt needs as entries of the vocabulary (checked while planning, before any writing):
        by default the media boundary tokens of the prompt record."""
        record = self.prompt_record(hp)
        return [record[k] for k in ("media_start", "media_end") if record.get(k)]

    def preprocessing(self, hp) -> dict:
        """Host preprocessing the board and the runtime apply (stored in the manifest)."""
        return {}

    def golden_media(self, hp):
        """The deterministic input the goldens are computed on: by default the shipped one for the modality
        (converters/golden_inputs.py: a rendered page, a spoken sentence; None for text only)."""
        from smt_convert.converters.golden_inputs import page, speech

        return {"image": page, "audio": speech}.get(self.facts(hp).modality, lambda: None)()

    def golden_fields(self) -> dict:
        """Prompt fields for the golden run (e.g. {"prompt": "Describe the image."})."""
        return {}

    def plan_notes(self, hp) -> list[str]:
        """Notes printed before conversion and kept in the manifest."""
        return []

    def hparams_record(self, hp) -> dict:
        return dataclasses.asdict(hp)

    # ---- reference -------------------------------------------------------------------------------

    @abc.abstractmethod
    def reference(self, ckpt: "Checkpoint", hp, request: ReferenceRequest) -> ReferenceResult:
        """Redo the runtime's work with the transformers classes and the checkpoint's weights, streamed so
        peak memory stays near one layer (see converters/reference_stream.py)."""
