"""Greedy decoding with a KV cache, for any runtime decoder (embed / new_cache / forward)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smt_convert.runtime.errors import SmtError

PREFILL_CHUNK = 512  # prompt rows per forward call: bounds the [heads, chunk, T] attention scores


@dataclass
class GenerationResult:
    tokens: list[int]  # generated ids, without the stop id that ended generation
    first_logits: np.ndarray  # [vocab] logits at the last prompt position (chooses tokens[0])
    stopped: bool  # True if a stop id was produced, False if max_new_tokens ran out


def prefill(decoder, embeds: np.ndarray, positions: np.ndarray, cache, chunk: int = PREFILL_CHUNK) -> np.ndarray:
    """Feed the prompt in chunks; return logits of its last row."""
    last = None
    for start in range(0, len(embeds), chunk):
        end = start + chunk
        last = decoder.forward(embeds[start:end], positions[start:end], cache, logits="last")
    assert last is not None  # the prompt is never empty
    return last[-1]


def greedy_generate(
    decoder,
    prompt_embeds: np.ndarray,
    positions: np.ndarray,
    max_new_tokens: int,
    stop_ids: set[int],
    next_position: int | None = None,
) -> GenerationResult:
    """Argmax decoding. A produced stop id ends generation and is not included in `tokens`.

    `positions` are the prompt's ([n] or [n, 4] M-RoPE); generated tokens get 1-D positions counting
    up from `next_position` (default: largest prompt position + 1, which is right for M-RoPE prompts
    too, where text after an image continues from the max over all streams).
    """
    prompt_embeds = np.asarray(prompt_embeds, dtype=np.float32)
    positions = np.asarray(positions)
    if len(prompt_embeds) == 0:
        raise SmtError("prompt_embeds: empty prompt")
    if len(positions) != len(prompt_embeds):
        raise SmtError(f"positions: {len(positions)} positions for {len(prompt_embeds)} prompt rows")
    if next_position is None:
        next_position = int(positions.max()) + 1

    cache = decoder.new_cache()
    first_logits = prefill(decoder, prompt_embeds, positions, cache)
    logits = first_logits
    tokens: list[int] = []
    for step in range(max_new_tokens):
        tok = int(np.argmax(logits))
        if tok in stop_ids:
            return GenerationResult(tokens, first_logits, stopped=True)
        tokens.append(tok)
        if step + 1 == max_new_tokens:
            break  # no need to run the model for a token we will not use
        pos = np.array([next_position + step], dtype=np.int64)
        logits = decoder.forward(decoder.embed([tok]), pos, cache, logits="last")[-1]
    return GenerationResult(tokens, first_logits, stopped=False)
