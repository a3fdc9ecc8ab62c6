"""K-quant text GGUFs through llama.cpp's own quantiser (llama-cpp-python's ctypes binding).

gguf-py can read K-quants but not write them, so a K-quant `--outtype` is made in two steps: the converter writes
an F16 (or BF16/F32) GGUF as for any float outtype, then `quantize_gguf` requantises it with
`llama_model_quantize`, the function `llama-quantize` calls. Going through llama.cpp's own code (not a port)
means the file is what llama-quantize would make from the same F16 GGUF: the same per-tensor mixture, the same
quantisation search, the same fallbacks. The binding is an optional extra (`smt-convert[kquants]`) because it
compiles llama.cpp; nothing here imports it until a K-quant is asked for.

What llama.cpp chooses per tensor (src/llama-quant.cpp, llama.cpp as vendored by llama-cpp-python 0.3.36;
`llama_tensor_get_type` -> `tensor_allows_quantization`, then `llama_tensor_get_type_impl`, then
`tensor_type_fallback`):
- never quantised, whatever the preset or a pattern says (`tensor_allows_quantization`): 1-D tensors
  (`ggml_n_dims < 2`, so also a [1, H] matrix), names not ending in "weight" (`blk.N.ssm_a`), `*_norm.weight`,
  `ffn_gate_inp.weight` (MoE router) and `ssm_conv1d`. They keep the SOURCE file's type: the F16 GGUF must
  already hold them in F32 (our writer does: 1-D tensors, and qwen35's F32_TENSOR_PATTERN).
- `output.weight`, or `token_embd.weight` when there is no output.weight (tied): Q6_K for every K/IQ4 preset,
  Q8_0 if its rows are not a multiple of the preset's block. An untied token_embd gets the preset's base type.
- attention V (`attn_v`, and `attn_qkv`/`attn_kv_b`: `category_is_attn_v`), numbered i over the file:
  Q4_K_M/Q5_K_M -> Q6_K where `use_more_bits(i, n)` (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2);
  Q4_K_S -> Q5_K for the first 4; Q3_K_M -> Q5_K for the first 2 else Q4_K; Q3_K_L -> Q5_K;
  Q2_K -> Q4_K if n_head/n_head_kv >= 4 else Q3_K; IQ4_NL/IQ4_XS -> Q5_K if n_head/n_head_kv >= 4.
- every name containing "ffn_down" (`_exps`, `_shexp` too; layer parsed from the name when n_expert > 1):
  Q4_K_M/Q5_K_M -> Q6_K where use_more_bits(layer); Q4_K_S -> Q5_K for layer < n/8; Q3_K_M -> Q5_K for
  layer < n/16 else Q4_K; Q3_K_L -> Q5_K; Q2_K -> Q3_K; IQ4_NL/IQ4_XS -> Q5_K for layer < n/8.
- `attn_output`: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K. Everything else: the preset's base type.
- rows not a multiple of the type's block (256 for K-quants): Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
  Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, and F16 when even 32 does not divide the row.
Qwen3.5 (`qwen35`/`qwen35moe`) gets no case of its own: `ssm_alpha`/`ssm_beta` ([value heads, hidden]) and
`ssm_out`, `attn_gate` go to the base type (Q4_K in Q4_K_M; only GLM5-Next exempts `ssm_beta`), `ssm_conv1d`,
`ssm_a` and `ffn_gate_inp` stay as in the source, `ffn_gate_inp_shexp` too (its name escapes the
"ffn_gate_inp.weight" test but it is [1, H], one dimension for ggml), and the linear layers' `attn_qkv` counts
as attention V (Q6_K at use_more_bits positions in Q4_K_M: the ATTENTION_QKV branch giving Q5_K is unreachable
behind `category_is_attn_v`), numbered together with the full-attention layers' `attn_v`. (Checked on tiny
qwen35/qwen35moe GGUFs with 256-wide rows written by smt-convert.) So a family rule that keeps `ssm_alpha`
/`ssm_beta` higher has to be passed here as a tensor type.

Per-tensor overrides (`--tensor-type PATTERN=TYPE`) are `llama_model_quantize_params.tt_overrides`: a C array of
`llama_model_tensor_override {const char *pattern; enum ggml_type type;}` ended by `pattern == NULL`. Each
pattern is a std::regex (ECMAScript) searched in the tensor name; the FIRST matching pattern wins; it replaces
the preset's mixture for that tensor (the fallback for short rows still applies), and it cannot reach the
never-quantised tensors above. Note llama-quantize lower-cases the patterns it reads; we pass them as given.
"""

from __future__ import annotations

import ctypes
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gguf

from smt_convert.runtime.errors import SmtError, first_line

Q = gguf.GGMLQuantizationType
EXTRA = "pip install 'smt-convert[kquants]', which builds llama-cpp-python"


@dataclass(frozen=True)
class KQuantPreset:
    """One llama-quantize preset. `ftype_name` is the binding's constant (read when quantising, so this module
    imports without llama-cpp-python); `file_type` is what llama.cpp writes to general.file_type (the same
    llama_ftype number, through gguf-py's mirror); `base_type` is the type of the matrices no rule raises."""

    name: str
    ftype_name: str
    file_type: gguf.LlamaFileType
    base_type: Q

    @property
    def ftype(self) -> int:
        """The llama_ftype value, from the installed binding."""
        return int(getattr(_binding(self.name), self.ftype_name))


def _preset(name: str, base: Q) -> KQuantPreset:
    upper = name.upper()
    return KQuantPreset(name, f"LLAMA_FTYPE_MOSTLY_{upper}", gguf.LlamaFileType[f"MOSTLY_{upper}"], base)


# Every llama-quantize preset that needs no importance matrix (`tensor_requires_imatrix`: IQ1/IQ2/IQ3_XXS types
# and Q2_K inside Q2_K_S do, so Q2_K_S, IQ3_XS/XXS and the IQ2/IQ1 presets are left out; IQ3_S/M would work
# but are too lossy for models of 0.6-4B parameters).
KQUANT_PRESETS: dict[str, KQuantPreset] = {
    p.name: p
    for p in (
        _preset("q2_k", Q.Q2_K),
        _preset("q3_k_s", Q.Q3_K),
        _preset("q3_k_m", Q.Q3_K),
        _preset("q3_k_l", Q.Q3_K),
        _preset("q4_k_s", Q.Q4_K),
        _preset("q4_k_m", Q.Q4_K),
        _preset("q5_k_s", Q.Q5_K),
        _preset("q5_k_m", Q.Q5_K),
        _preset("q6_k", Q.Q6_K),
        _preset("iq4_nl", Q.IQ4_NL),
        _preset("iq4_xs", Q.IQ4_XS),
    )
}

SOURCE_TYPES = {Q.F32, Q.F16, Q.BF16}
# Types a pattern may ask for: float, and block types llama.cpp quantises without an importance matrix.
OVERRIDE_TYPES = SOURCE_TYPES | {
    Q.Q8_0,
    Q.Q5_0,
    Q.Q5_1,
    Q.Q4_0,
    Q.Q4_1,
    Q.Q2_K,
    Q.Q3_K,
    Q.Q4_K,
    Q.Q5_K,
    Q.Q6_K,
    Q.IQ4_NL,
    Q.IQ4_XS,
}


def _binding(outtype: str):
    """llama_cpp, or one line naming the extra. A binding that is installed but whose library does not load is
    a different problem, said differently."""
    try:
        import llama_cpp
    except ImportError:
        raise SmtError(f"--outtype {outtype}: needs llama.cpp's quantiser ({EXTRA})") from None
    except (OSError, RuntimeError) as exc:  # llama_cpp raises these when libllama cannot be loaded
        raise SmtError(
            f"--outtype {outtype}: llama-cpp-python is installed but libllama does not load ({first_line(exc)})"
        ) from None
    return llama_cpp


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """ggml type name (as gguf-py spells it: Q4_K, F32) of every tensor of a GGUF, in file order: what llama.cpp
    actually chose, for the manifest. (llama.cpp writes its loader's order: global tensors first, then layer by
    layer, names sorted within a layer.)"""
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise SmtError(f"{path}: not a readable GGUF ({first_line(exc)})") from None
    return {t.name: Q(t.tensor_type).name for t in reader.tensors}


def _override_array(llama_cpp, tensor_types: dict[str, str], where: str):
    """The NULL-terminated `llama_model_tensor_override` array for `tt_overrides`. Patterns are checked with
    Python's re first (std::regex would throw inside the quantiser, which we would only see as a failure)."""
    items = []
    for pattern, type_name in tensor_types.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SmtError(f"{where}: tensor type pattern {pattern!r} is not a regular expression ({exc})") from None
        qtype = Q.__members__.get(type_name.upper())
        if qtype not in OVERRIDE_TYPES:
            known = ", ".join(sorted(t.name.lower() for t in OVERRIDE_TYPES))
            raise SmtError(f"{where}: tensor type {type_name!r} for {pattern!r} is not one of {known}")
        items.append((pattern.encode(), int(qtype)))
    array = (llama_cpp.llama_model_tensor_override * (len(items) + 1))()
    for slot, (pattern_bytes, type_id) in zip(array, items):
        slot.pattern, slot.type = pattern_bytes, type_id
    array[len(items)].pattern = None  # the terminator llama.cpp's loop stops at
    array[len(items)].type = getattr(llama_cpp, "GGML_TYPE_COUNT", 0)  # as llama-quantize writes it
    return array


# ggml.h's ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (the table in llama_cpp/_logger.py,
# INFO 1 ... ERROR 3, DEBUG 4, is an older numbering: it would take llama.cpp's errors for debug lines).
LOG_ERROR, LOG_CONT = 4, 5


@contextmanager
def _llama_logs(llama_cpp, log: Callable[[str], None] | None):
    """Route llama.cpp's log (hundreds of lines per model) to `log` line by line, or nowhere; yields the list of
    ERROR lines, so a failure can say why. The ctypes callback is kept referenced until llama.cpp has been
    given the binding's own callback back (the one `Llama(verbose=...)` relies on)."""
    errors: list[str] = []
    pending: dict[str, Any] = {"text": "", "level": 0}

    def emit(text: str, level: int) -> None:
        if level == LOG_ERROR:
            errors.append(text)
        if log is not None:
            log(text)

    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if not pending["text"] and level != LOG_CONT:
            pending["level"] = level
        pending["text"] += (text or b"").decode("utf-8", "replace")
        *lines, pending["text"] = pending["text"].split("\n")
        for line in lines:
            emit(line, pending["level"])

    callback = llama_cpp.llama_log_callback(on_log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield errors
    finally:
        try:
            from llama_cpp import _logger

            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        except ImportError:  # a binding without its logger module: back to llama.cpp's default (stderr)
            llama_cpp.llama_log_set(None, ctypes.c_void_p(0))
        if pending["text"]:
            emit(pending["text"], pending["level"])
        del callback


def quantize_gguf(
    src: Path,
    dst: Path,
    preset: str,
    tensor_types: dict[str, str] | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Requantise the float GGUF `src` to the K-quant `preset` at `dst` with llama.cpp's `llama_model_quantize`.

    `tensor_types`: {regex on GGUF tensor names: ggml type name} (llama-quantize's `--tensor-type`; first match
    wins, see the module docstring for what it cannot reach). `threads`: None uses every core. `log`: receives
    llama.cpp's log lines; without it they are dropped. `src` must hold only F32/F16/BF16 tensors: requantising
    would stack two rounding errors (llama.cpp refuses it too). `dst` appears only when complete."""
    src, dst = Path(src), Path(dst)
    if preset not in KQUANT_PRESETS:
        raise SmtError(f"--outtype {preset}: not a K-quant preset ({', '.join(KQUANT_PRESETS)})")
    p = KQUANT_PRESETS[preset]
    llama_cpp = _binding(preset)
    if not src.is_file():
        raise SmtError(f"{src}: no such GGUF")
    if not dst.parent.is_dir():
        raise SmtError(f"{dst.parent}: no such directory")
    if dst.resolve() == src.resolve():
        raise SmtError(f"{dst}: the quantised GGUF cannot replace its source")
    for name, type_name in gguf_tensor_types(src).items():
        if Q[type_name] not in SOURCE_TYPES:  # type: ignore[misc, valid-type]  # an Enum lookup, not a type application
            raise SmtError(f"{src}: tensor {name} is {type_name}; K-quants are made from an f32/f16/bf16 GGUF")

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = p.ftype
    params.nthread = int(threads or 0)  # <= 0: std::thread::hardware_concurrency()
    overrides = None
    if tensor_types:
        # Before `tt_overrides`, llama.h had `void * tensor_types`: a C++ std::vector<tensor_quantization{std::string,
        # ggml_type}>, which ctypes cannot build. Such a binding gets no per-tensor types.
        if not hasattr(llama_cpp.llama_model_quantize_params, "tt_overrides"):
            raise SmtError(
                f"--tensor-type: llama-cpp-python {getattr(llama_cpp, '__version__', '?')} cannot pass "
                "per-tensor types to llama.cpp's quantiser (no tt_overrides field; 0.3.36 has it)"
            )
        overrides = _override_array(llama_cpp, tensor_types, "--tensor-type")  # kept alive through the call
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))

    partial = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    try:
        llama_cpp.llama_backend_init()  # ggml's f16 tables and CPU backend, as llama-quantize does first
        with _llama_logs(llama_cpp, log) as errors:
            rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(partial), ctypes.byref(params))
        if rc != 0:
            why = next(
                (e.split("failed to quantize: ", 1)[-1].strip() for e in reversed(errors) if e.strip()),
                f"llama_model_quantize returned {rc}",
            )
            raise SmtError(f"{src}: llama.cpp could not quantise it to {preset} ({why})")
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
