"""Compare a bundle, run by the minimal runtime, with the Hugging Face model (the independent reference).

The plugin's `reference` redoes the runtime's work with the transformers classes, streamed layer by layer;
this module turns its answers into the verification rows every family shares (encoder, text logits, greedy
tokens) and keeps the answers for a recipe's other variants: the reference depends on the checkpoint, the
host input and the prompt, not on the output types, so it is computed once per recipe unless a variant's
greedy tokens leave the path the reference was scored on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from smt_convert.converters.plugin import ArchPlugin, ReferenceRequest, ReferenceResult
from smt_convert.converters.reference_stream import teacher_forced_tokens
from smt_convert.runtime import verify as V
from smt_convert.runtime.verify import Row


@dataclass
class ReferenceCache:
    """Reference results by (checkpoint, host input, prompt), each scored on one continuation."""

    results: dict[str, list[tuple[list[int], ReferenceResult]]] = field(default_factory=dict)

    @staticmethod
    def key(ckpt_root, host_input: np.ndarray | None, prompt_ids: list[int]) -> str:
        h = hashlib.sha256(str(ckpt_root).encode())
        h.update(np.asarray(prompt_ids, dtype=np.int64).tobytes())
        if host_input is not None:
            h.update(np.ascontiguousarray(host_input, dtype=np.float32).tobytes())
        return h.hexdigest()

    def find(self, key: str, continuation: list[int]) -> ReferenceResult | None:
        """A stored result whose logits decide the reference's greedy path against `continuation`."""
        for scored_on, result in self.results.get(key, []):
            if _decided(result.logits, len(result.logits) - len(scored_on), scored_on, continuation):
                return result
        return None

    def add(self, key: str, continuation: list[int], result: ReferenceResult) -> None:
        self.results.setdefault(key, []).append((list(continuation), result))


def _decided(logits: np.ndarray, prompt_len: int, scored_on: list[int], continuation: list[int]) -> bool:
    """Logits computed over `scored_on` give valid arg-maxes for every step whose prefix both sequences
    share; the comparison with `continuation` needs steps up to its first disagreement (or its end)."""
    common = 0
    while common < min(len(scored_on), len(continuation)) and scored_on[common] == continuation[common]:
        common += 1
    for step in range(min(common, len(continuation)) + 1):
        token = int(np.argmax(logits[prompt_len - 1 + step]))
        if step == len(continuation) or token != continuation[step]:
            return True
    return False


def reference_tokens(logits: np.ndarray, prompt_len: int, continuation: list[int], stop_ids: list[int],
                     max_new_tokens: int) -> list[int]:
    """The reference's greedy tokens as `generate` would return them (stop id removed), as far as they can be
    known from one teacher-forced pass: identical to `continuation` when the two agree throughout."""
    forced = teacher_forced_tokens(logits, prompt_len, continuation)
    if forced[:len(continuation)] == continuation:
        # Both agree on every runtime token; the reference's next choice says whether it also stops here.
        if len(continuation) < max_new_tokens and forced[len(continuation):] and \
                forced[len(continuation)] not in stop_ids:
            return continuation + [forced[len(continuation)]]
        return list(continuation)
    tokens = list(forced)
    while tokens and tokens[-1] in stop_ids:
        tokens.pop()
    return tokens


def compare_with_reference(plugin: ArchPlugin, ckpt, hp, runner, media, result, outtype: str, onnx_dtype: str,
                           max_new_tokens: int, thresholds: dict | None = None,
                           cache: ReferenceCache | None = None, report=None) -> tuple[list[Row], list[int]]:
    """Rows for the encoder, text logits and greedy tokens (plus the plugin's own rows); `result` is the
    runtime's run on `media`. Returns the rows and the reference's greedy tokens."""
    host_input = runner.features(media) if media is not None else None
    prompt_ids = list(result.prompt.placeholder_ids)
    stop_ids = runner.stop_ids()
    ours = prompt_logits(runner, result.prompt)
    runner.release()  # the runtime's encoder and decoder are not needed while the reference holds its layers
    key = ReferenceCache.key(ckpt.root, host_input, prompt_ids)
    ref = cache.find(key, result.tokens) if cache is not None else None
    if ref is None:
        if report is not None:
            report.step("running the Hugging Face reference layer by layer")
        request = ReferenceRequest(media=media, host_input=host_input, prompt_ids=prompt_ids,
                                   continuation=list(result.tokens), stop_ids=stop_ids, host=runner.host)
        ref = plugin.reference(ckpt, hp, request)
        if cache is not None:
            cache.add(key, result.tokens, ref)
    elif report is not None:
        report.step("Hugging Face reference: reusing this recipe's earlier result")
    rows = list(ref.rows)
    if ref.encoder is not None and result.media_embeds is not None:
        rows += V.encoder_rows(result.media_embeds, ref.encoder, onnx_dtype, overrides=thresholds)
    n_prompt = len(prompt_ids)
    rows += V.text_rows(ours, ref.logits[:n_prompt], outtype, onnx_dtype,
                        overrides=thresholds, nmse_scale=plugin.lossy_nmse_scale)
    tokens = reference_tokens(ref.logits, n_prompt, list(result.tokens), stop_ids, max_new_tokens)
    exact = outtype == "f32" and onnx_dtype == "fp32"
    rows += V.e2e_rows(result.tokens, tokens, exact)
    return rows, tokens


def prompt_logits(runner, prompt) -> np.ndarray:
    """Runtime logits at every prompt position (one prefill)."""
    return runner.decoder.forward(prompt.embeds, prompt.positions, runner.decoder.new_cache(), logits="all")
