"""How much a variant loses against the Hugging Face model, in the terms llama.cpp users compare quantisations:
the KL divergence of the next-token distribution (llama-perplexity's --kl-divergence reports its mean and 99th
percentile), top-1 agreement, and the perplexity of a continuation, all teacher-forced on the same tokens.

Logits arrive as [positions, vocabulary] float32 (a 248k vocabulary x a few hundred positions is 100s of MB), so
everything here works a block of positions at a time in float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BLOCK = 32  # positions per float64 block


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(logits: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """KL(P_ref || P_ours) per position, in nats: what the variant loses of the reference's distribution."""
    out = np.empty(len(ref), dtype=np.float64)
    for i in range(0, len(ref), BLOCK):
        lp_ref, lp = log_softmax(ref[i : i + BLOCK]), log_softmax(logits[i : i + BLOCK])
        out[i : i + BLOCK] = np.sum(np.exp(lp_ref) * (lp_ref - lp), axis=-1)
    return np.maximum(out, 0.0)  # rounding can give -1e-17 where the two agree


def token_nll(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Negative log-likelihood of `tokens[j]` under row j of `logits` (row j predicts token j)."""
    out = np.empty(len(tokens), dtype=np.float64)
    for i in range(0, len(tokens), BLOCK):
        lp = log_softmax(logits[i : i + BLOCK])
        out[i : i + BLOCK] = -lp[np.arange(len(lp)), tokens[i : i + BLOCK]]
    return out


@dataclass
class Quality:
    """One variant against the reference over the same teacher-forced positions (manifest `quality`)."""

    positions: int
    kld_mean: float
    kld_p99: float
    kld_max: float
    top1: float
    continuation_tokens: int = 0
    ppl: float | None = None  # the variant's perplexity of the continuation
    ppl_reference: float | None = None  # the Hugging Face model's, same tokens
    kld_mean_text_only: float | None = None  # the variant's text decoder fed the reference's encoder rows

    def to_dict(self) -> dict:
        return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure(logits: np.ndarray, ref: np.ndarray, n_prompt: int, continuation: list[int]) -> Quality:
    """`logits`/`ref`: rows for the prompt positions then one per continuation token (row n_prompt - 1 + j
    predicts continuation[j]); every row is scored."""
    n = min(len(logits), len(ref))
    kld = kl_divergence(logits[:n], ref[:n])
    top1 = float(np.mean(np.argmax(logits[:n], -1) == np.argmax(ref[:n], -1)))
    quality = Quality(n, float(kld.mean()), float(np.percentile(kld, 99)), float(kld.max()), top1)
    k = min(len(continuation), n - n_prompt + 1)
    if k > 0:
        rows = slice(n_prompt - 1, n_prompt - 1 + k)
        quality.continuation_tokens = k
        quality.ppl = float(np.exp(token_nll(logits[rows], continuation[:k]).mean()))
        quality.ppl_reference = float(np.exp(token_nll(ref[rows], continuation[:k]).mean()))
    return quality
