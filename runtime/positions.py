"""Positions the SMT board feeds llama.cpp, as [n, 4] int32 rows (t, h, w, e) for M-RoPE models.

Text (and audio): 1-D positions, the same value in t, h and w, 0 in the fourth stream.
Images (Qwen3-VL family, PaddleOCR): an image of N tokens laid out as ny x nx gets
`(n_past, n_past + y, n_past + x, 0)` in row-major order, then n_past advances by max(nx, ny).
This equals Hugging Face's Qwen3.5 `get_rope_index` (t = h = w = index for text; for an image
t = start, h = start + y, w = start + x, then start += max(grid_h, grid_w) / merge).

When the grid is not given the board guesses it from N alone: the factor pair closest to square,
ny <= nx (i.e. ny = the largest divisor of N not above sqrt(N)). For a square input this is exact; for
a non-square input the guess is only right when its merged grid happens to be that pair (e.g. 96x160 ->
3 x 5 is, 160x96 -> 5 x 3 is not, 64x256 -> 2 x 8 is not), so bundles for the board should keep the
grid what the board guesses (square sizes are always safe).
"""

from __future__ import annotations

import math

import numpy as np


def guess_grid(n_tokens: int) -> tuple[int, int]:
    """(ny, nx) for N tokens as the board guesses: factor pair closest to square, ny <= nx."""
    n = int(n_tokens)
    if n <= 0:
        raise ValueError(f"n_tokens must be positive, got {n}")
    ny = math.isqrt(n)
    while n % ny:
        ny -= 1
    return ny, n // ny


def text_positions(n_past: int, n: int) -> np.ndarray:
    """[n, 4] int32: (p, p, p, 0) for p = n_past .. n_past + n - 1."""
    p = np.arange(int(n_past), int(n_past) + int(n), dtype=np.int32)
    return np.stack([p, p, p, np.zeros_like(p)], axis=1)


def mrope_positions(n_past: int, n_tokens: int, grid: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Positions of one image's N tokens and the next n_past.

    grid: (ny, nx) of the merged token grid, row-major; None = the board's guess (`guess_grid`).
    Returns ([N, 4] int32 rows (n_past, n_past + y, n_past + x, 0), n_past + max(nx, ny)).
    """
    n_past, n_tokens = int(n_past), int(n_tokens)
    ny, nx = guess_grid(n_tokens) if grid is None else (int(grid[0]), int(grid[1]))
    if ny <= 0 or nx <= 0 or ny * nx != n_tokens:
        raise ValueError(f"grid {ny}x{nx} does not hold {n_tokens} tokens")
    y, x = np.divmod(np.arange(n_tokens, dtype=np.int32), nx)
    pos = np.stack(
        [np.full(n_tokens, n_past, dtype=np.int32), n_past + y, n_past + x, np.zeros(n_tokens, dtype=np.int32)], axis=1
    )
    return pos.astype(np.int32), n_past + max(nx, ny)
