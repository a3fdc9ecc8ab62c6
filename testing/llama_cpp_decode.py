"""Decode an embedding batch in the real llama.cpp (llama-cpp-python's C API), the way mtmd feeds image rows: for
tests that compare our runtime's logits and greedy text with llama.cpp's on the same spliced prompt. Rows may be
wider than n_embd (DeepStack: llama.cpp's n_embd_inp)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def load(path: Path, n_ctx: int = 256):
    """(llama_cpp module, Llama) with an F32 KV cache (the default F16 rounds K/V)."""
    import llama_cpp

    return llama_cpp, llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, type_k=0, type_v=0)


def _decode(llama_cpp, llm, embeds: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
    """One batch of rows (positions [n, 4] M-RoPE, section-major as mtmd lays them out); logits of every row."""
    n, d = embeds.shape
    batch = llama_cpp.llama_batch_init(4 * n, d, 1)  # pos has room for 4 streams x n tokens
    try:
        batch.n_tokens = n
        flat = np.ascontiguousarray(embeds, np.float32).reshape(-1)
        ctypes.memmove(batch.embd, flat.ctypes.data, flat.nbytes)
        sect = np.ascontiguousarray(positions.T, np.int32).reshape(-1)
        ctypes.memmove(batch.pos, sect.ctypes.data, sect.nbytes)
        for i in range(n):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        assert llama_cpp.llama_decode(llm.ctx, batch) == 0
        vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        return [
            np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, i), shape=(vocab,)).copy() for i in range(n)
        ]
    finally:
        llama_cpp.llama_batch_free(batch)


def embd_logits(path: Path, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Logits [n, vocab] for an embedding batch with explicit [n, 4] M-RoPE positions."""
    llama_cpp, llm = load(path)
    try:
        return np.stack(_decode(llama_cpp, llm, embeds, positions)).astype(np.float32)
    finally:
        llm.close()


def greedy_from_embeds(
    path: Path, embeds: np.ndarray, positions: np.ndarray, token_rows, max_new: int, stop: set[int]
) -> tuple[np.ndarray, list[int]]:
    """Prompt logits [n, vocab] and llama.cpp's greedy tokens after an embedded prompt; each new token's row is
    `token_rows([id])` (the runtime's own embedding rows, so both sides feed the same numbers) at the next text
    position (p, p, p, 0)."""
    llama_cpp, llm = load(path)
    try:
        logits = _decode(llama_cpp, llm, embeds, positions)
        prompt_logits = np.stack(logits).astype(np.float32)
        nxt = int(positions[-1, :3].max()) + 1
        tokens, last = [], logits[-1]
        for _ in range(max_new):
            tok = int(np.argmax(last))
            tokens.append(tok)
            if tok in stop:
                break
            row = np.asarray(token_rows([tok]), np.float32)
            (last,) = _decode(llama_cpp, llm, row, np.array([[nxt, nxt, nxt, 0]]))
            nxt += 1
        return prompt_logits, tokens
    finally:
        llm.close()
