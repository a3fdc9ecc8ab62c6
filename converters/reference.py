"""Compare a bundle, run by the minimal runtime, with the Hugging Face model (the independent reference).

The plugin's `reference` redoes the runtime's work with the transformers classes, streamed layer by layer;
this module turns its answers into the verification rows every family shares (encoder, text logits, greedy
tokens) and keeps the answers for a recipe's other variants: the reference depends on the checkpoint, the
host input and the prompt, not on the output types, so it is computed once per recipe unless a variant's
greedy tokens leave the path the reference was scored on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from smt_convert.converters.plugin import ArchPlugin, ReferenceRequest, ReferenceResult
from smt_convert.converters.reference_stream import teacher_forced_tokens, watching_builds
from smt_convert.runtime import quality as Q
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

    def find(self, key: str, continuation: list[int]) -> tuple[ReferenceResult, list[int]] | None:
        """A stored result whose logits decide the reference's greedy path against `continuation`, with the
        continuation it was scored on."""
        for scored_on, result in self.results.get(key, []):
            if _decided(result.logits, len(result.logits) - len(scored_on), scored_on, continuation):
                return result, scored_on
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


def reference_tokens(
    logits: np.ndarray, prompt_len: int, continuation: list[int], stop_ids: list[int], max_new_tokens: int
) -> list[int]:
    """The reference's greedy tokens as `generate` would return them (stop id removed), as far as they can be
    known from one teacher-forced pass: identical to `continuation` when the two agree throughout."""
    forced = teacher_forced_tokens(logits, prompt_len, continuation)
    if forced[: len(continuation)] == continuation:
        # Both agree on every runtime token; the reference's next choice says whether it also stops here.
        if (
            len(continuation) < max_new_tokens
            and forced[len(continuation) :]
            and forced[len(continuation)] not in stop_ids
        ):
            return continuation + [forced[len(continuation)]]
        return list(continuation)
    tokens = list(forced)
    while tokens and tokens[-1] in stop_ids:
        tokens.pop()
    return tokens


def compare_with_reference(
    plugin: ArchPlugin,
    ckpt,
    hp,
    runner,
    media,
    result,
    outtype: str,
    onnx_dtype: str,
    max_new_tokens: int,
    thresholds: dict | None = None,
    cache: ReferenceCache | None = None,
    report=None,
    recorder=None,
) -> tuple[list[Row], list[int], Q.Quality]:
    """Rows for the encoder, text logits and greedy tokens (plus the plugin's own rows); `result` is the
    runtime's run on `media`. Returns the rows, the reference's greedy tokens and the quality report.
    `recorder` (converters/trace_reference.py) also writes the reference's block outputs for a trace."""
    host_input = runner.features(media) if media is not None else None
    prompt_ids = list(result.prompt.placeholder_ids)
    stop_ids = runner.stop_ids()
    ours = scored_logits(runner, result.prompt, result.tokens)
    runner.release()  # the runtime's encoder and decoder are not needed while the reference holds its layers
    key = ReferenceCache.key(ckpt.root, host_input, prompt_ids)
    found = cache.find(key, result.tokens) if cache is not None and recorder is None else None
    if found is None:
        if report is not None:
            report.step("running the Hugging Face reference layer by layer")
        request = ReferenceRequest(
            media=media,
            host_input=host_input,
            prompt_ids=prompt_ids,
            continuation=list(result.tokens),
            stop_ids=stop_ids,
            host=runner.host,
        )
        with watching_builds(recorder) if recorder is not None else contextlib.nullcontext():
            ref, scored_on = plugin.reference(ckpt, hp, request), list(result.tokens)
        if recorder is not None:
            recorder.result(ref)
        if cache is not None:
            cache.add(key, result.tokens, ref)
    else:
        ref, scored_on = found
        if report is not None:
            report.step("Hugging Face reference: reusing this recipe's earlier result")
    rows = list(ref.rows)
    if ref.encoder is not None and result.media_embeds is not None:
        rows += V.encoder_rows(result.media_embeds, ref.encoder, onnx_dtype, overrides=thresholds)
    n_prompt = len(prompt_ids)
    rows += V.text_rows(
        ours[:n_prompt],
        ref.logits[:n_prompt],
        outtype,
        onnx_dtype,
        overrides=thresholds,
        nmse_scale=plugin.lossy_nmse_scale,
    )
    tokens = reference_tokens(ref.logits, n_prompt, list(result.tokens), stop_ids, max_new_tokens)
    exact = outtype == "f32" and onnx_dtype == "fp32"
    rows += V.e2e_rows(result.tokens, tokens, exact)
    quality = _quality(runner, result, ref, ours, n_prompt, _common(result.tokens, scored_on))
    rows += V.quality_rows(quality, outtype, onnx_dtype, overrides=thresholds)
    return rows, tokens, quality


def _common(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n])


def _quality(runner, result, ref: ReferenceResult, ours: np.ndarray, n_prompt: int, continuation: list[int]):
    """The quality report: teacher-forced over the prompt and the continuation both sides were scored on; with
    media, once more with the reference's own encoder rows spliced in, so the text decoder's share shows."""
    rows = n_prompt + len(continuation)
    quality = Q.measure(ours[:rows], ref.logits[:rows], n_prompt, continuation)
    start, end = result.prompt.media_span
    if ref.encoder is not None and end > start and ref.encoder.shape == (end - start, result.prompt.embeds.shape[1]):
        embeds = result.prompt.embeds.copy()
        embeds[start:end] = ref.encoder
        text_only = scored_logits(runner, dataclasses.replace(result.prompt, embeds=embeds), continuation)
        runner.release()
        quality.kld_mean_text_only = float(Q.kl_divergence(text_only[:rows], ref.logits[:rows]).mean())
    return quality


def scored_logits(runner, prompt, continuation: list[int]) -> np.ndarray:
    """Runtime logits at every prompt position and after each continuation token (teacher-forced: one prefill,
    then the continuation as one batch; its positions follow the prompt's as greedy decoding gives them)."""
    decoder = runner.decoder
    cache = decoder.new_cache()
    logits = decoder.forward(prompt.embeds, prompt.positions, cache, logits="all")
    if not continuation:
        return logits
    start = int(np.asarray(prompt.positions).max()) + 1
    positions = np.arange(start, start + len(continuation), dtype=np.int64)
    more = decoder.forward(decoder.embed(np.asarray(continuation)), positions, cache, logits="all")
    return np.concatenate([logits, more])
