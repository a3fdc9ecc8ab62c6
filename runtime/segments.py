"""Long recordings cut at silences into pieces the decoder takes one at a time.

Qwen3-ASR's users report long audio in one prompt degrading or coming back empty (llama.cpp #21847, QwenLM/Qwen3-ASR
#37); the tools people like cut at pauses first (sherpa-onnx's VAD, antirez/qwen-asr's segmented mode). An energy
rule serves here: speech recordings have clear low-energy gaps between phrases, and it needs no model, no extra
package and linear time. Each piece is at most `max_seconds` long, cut in the quietest stretch of its last third
(the middle of the longest run of quiet frames, else the quietest frame), so words are not split where a pause
exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME = 0.025  # s, energy frame
HOP = 0.010  # s
PAUSE_ABOVE_FLOOR_DB = 10.0  # a frame within 10 dB of the recording's noise floor (its 5th percentile) is a pause,
SPEECH_BELOW_PEAK_DB = 15.0  # unless that is within 15 dB of the loud frames (95th percentile): then there is none
AUTO_SECONDS = 30.0  # --segment auto: pieces of at most 30 s (what the model was trained on per utterance)
MIN_SEGMENT_SECONDS = 5.0  # shorter pieces cut sentences more often than pauses allow
AUDIO_TOKENS_PER_SECOND = 13  # Qwen3-ASR: 13 encoder rows per 100-frame (1 s) chunk
TEXT_TOKENS_PER_SECOND = 5  # a fast speaker's transcript, with margin
PROMPT_TOKENS = 64


@dataclass(frozen=True)
class Segment:
    start: int  # sample index
    end: int

    def seconds(self, rate: int) -> tuple[float, float]:
        return round(self.start / rate, 2), round(self.end / rate, 2)


def longest_in_one_piece(n_ctx: int) -> float:
    """Seconds of audio a context of `n_ctx` tokens takes in one prompt, with room for its transcript."""
    return max(0.0, (n_ctx - PROMPT_TOKENS) / (AUDIO_TOKENS_PER_SECOND + TEXT_TOKENS_PER_SECOND))


def frame_db(wave: np.ndarray, rate: int) -> np.ndarray:
    """Energy per frame in dB (10 ms hop), computed in blocks (an hour of audio is 360,000 frames)."""
    frame, hop = int(FRAME * rate), int(HOP * rate)
    n = max(1, 1 + (len(wave) - frame) // hop)
    out = np.empty(n)
    block = 10_000
    for i in range(0, n, block):
        idx = np.arange(i, min(n, i + block))[:, None] * hop + np.arange(frame)[None, :]
        idx = np.minimum(idx, len(wave) - 1)
        out[i : i + block] = 10 * np.log10(np.mean(wave[idx].astype(np.float64) ** 2, axis=1) + 1e-12)
    return out


def quiet_threshold(db: np.ndarray) -> float:
    """Frames below this are pauses: near the noise floor, and well below speech (a recording with a noise floor
    of -50 dB and speech at -20 dB: -40 dB)."""
    return float(min(np.percentile(db, 5) + PAUSE_ABOVE_FLOOR_DB, np.percentile(db, 95) - SPEECH_BELOW_PEAK_DB))


def cut(wave: np.ndarray, rate: int, max_seconds: float) -> list[Segment]:
    """Segments covering `wave`, each at most `max_seconds`, cut at pauses where there are any."""
    limit = int(max(max_seconds, MIN_SEGMENT_SECONDS) * rate)
    if len(wave) <= limit:
        return [Segment(0, len(wave))]
    db = frame_db(wave, rate)
    quiet = db < quiet_threshold(db)
    hop = int(HOP * rate)
    segments, start = [], 0
    while len(wave) - start > limit:
        lo, hi = (start + limit * 2 // 3) // hop, (start + limit) // hop  # frames of the last third
        window = quiet[lo:hi]
        if window.any():  # the middle of the longest quiet run
            runs, run_start, best = [], None, (0, lo)
            for j, q in enumerate(np.append(window, False)):
                if q and run_start is None:
                    run_start = j
                elif not q and run_start is not None:
                    runs.append((j - run_start, lo + (run_start + j) // 2))
                    run_start = None
            best = max(runs)
            at = best[1] * hop
        else:
            at = (lo + int(np.argmin(db[lo:hi]))) * hop
        at = min(max(at, start + 1), start + limit)
        segments.append(Segment(start, at))
        start = at
    segments.append(Segment(start, len(wave)))
    return segments
