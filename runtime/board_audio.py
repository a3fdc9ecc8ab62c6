"""The SMT board's own log-mel for Qwen3-ASR, in numpy: what `mtmd_audio_compute_log_mel_spectrogram` computes.

The board host (SpacemiT's llama.cpp fork, Qwen3-ASR branch of `smt-audio-wrapper.cpp`) calls it with
`center_padding=true, preemph=0, natural_log=false, norm_per_feature=false`. Facts read from that code:

- the clip is padded with n_fft/2 zeros at both ends (Hugging Face reflects at the start, and at the end of a
  clip longer than 30 s, which it does not pad with zeros);
- frames = (n + n_fft - n_fft) / hop + 1 = n // hop + 1, every one kept (Hugging Face drops the last STFT
  frame of its padded signal: a clip whose length is a multiple of hop, or longer than 30 s, has one frame
  more on the board, and for whole seconds one more audio token);
- no 0.5-second minimum (Hugging Face pads shorter clips to 8000 samples: 50 frames) and no 30-second padding;
- mel power is floored at 2^-24 (float32's epsilon/2; Hugging Face: 1e-10) before log10;
- the max - 8 clamp is over the clip's own frames, then (x + 4) / 4.

Periodic Hann, Slaney mel 0..sample_rate/2 and the power spectrum are the same as Hugging Face's; the board
runs its FFT in float32, we in float64 (differences are float rounding). The 100-frame chunks, their zero
fill and `t_out` are the encoder's business (`audio_encoder.SplitAudioEncoder`, `audio.post_cnn_length`),
identical on both host paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import DYNAMIC_RANGE, LOG_FLOOR, MelParams, mel_power, normalise, post_cnn_length, valid_frames

BOARD_LOG_FLOOR = 2.0**-24  # the board's mel_floor (5.960464477539063e-08)
# `run` warns when the board's floor sets more than this share of the features: at normal speech level the
# share is 0 (the max - 8 clamp sits above the floor), at 2% volume it is about half (README, host paths).
FLOORED_SHARE_WARN = 0.05


def board_frames(n_samples: int, params: MelParams) -> int:
    """Frames the board computes for a clip: n // hop + 1 (centre padding, final frame kept)."""
    return n_samples // params.hop_length + 1


def board_mel_power(wave: np.ndarray, params: MelParams | None = None) -> np.ndarray:
    """Mel power [num_mel_bins, n // hop + 1] float64 of the zero-centre-padded clip (before the floor)."""
    params = params or MelParams()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"board log-mel expects a mono 1-D wave, got shape {wave.shape}")
    if wave.size == 0:
        raise ValueError("board log-mel: empty wave (the board refuses it too)")
    half = params.n_fft // 2
    padded = np.zeros(wave.size + 2 * half, dtype=np.float64)
    padded[half : half + wave.size] = wave
    return mel_power(padded, params)  # n // hop + 1 frames (n_fft is even: 2 * half)


def board_log_mel(wave: np.ndarray, params: MelParams | None = None) -> np.ndarray:
    """Log-mel [num_mel_bins, n // hop + 1] float32, as the board host computes it."""
    return normalise(board_mel_power(wave, params), BOARD_LOG_FLOOR)


def floored_share(power: np.ndarray) -> float:
    """Share of the features whose value the board's 2^-24 floor sets: 0 when the max - 8 clamp lies above
    the floor (then the floor never decides anything)."""
    top = float(np.log10(max(float(power.max()), BOARD_LOG_FLOOR)))
    if np.log10(BOARD_LOG_FLOOR) <= top - DYNAMIC_RANGE:
        return 0.0
    return float(np.mean(power < BOARD_LOG_FLOOR))


@dataclass(frozen=True)
class ClipFacts:
    """Where the board's features for this clip differ from Hugging Face's in kind, not only in value."""

    n_samples: int
    board_frames: int
    hf_frames: int
    board_rows: int
    hf_rows: int
    floored_share: float  # features the board's 2^-24 floor sets
    hf_floored_share: float  # the same with Hugging Face's 1e-10 floor (on the board's frames)


def clip_facts(wave: np.ndarray, params: MelParams | None = None, n_window: int = 50) -> ClipFacts:
    """Frame and encoder-row counts on both host paths and the share of features each log floor sets."""
    params = params or MelParams()
    power = board_mel_power(wave, params)
    n = int(np.asarray(wave).size)
    b_frames, h_frames = power.shape[1], valid_frames(n, params)
    top = float(np.log10(max(float(power.max()), LOG_FLOOR)))
    hf_share = 0.0 if np.log10(LOG_FLOOR) <= top - DYNAMIC_RANGE else float(np.mean(power < LOG_FLOOR))
    return ClipFacts(
        n,
        b_frames,
        h_frames,
        post_cnn_length(b_frames, n_window),
        post_cnn_length(h_frames, n_window),
        floored_share(power),
        hf_share,
    )


def clip_warnings(facts: ClipFacts, params: MelParams | None = None) -> list[str]:
    """One line per way this clip lands on a board-only behaviour (empty when it lands on none)."""
    params = params or MelParams()
    notes = []
    if facts.floored_share > FLOORED_SHARE_WARN:
        notes.append(
            f"quiet input: the board's log floor (2^-24) sets {facts.floored_share:.0%} of the log-mel "
            f"features, Hugging Face's (1e-10) {facts.hf_floored_share:.0%}; a higher recording level "
            "gives the board the features the model was trained on"
        )
    if facts.board_frames != facts.hf_frames:
        if facts.n_samples < params.min_length:
            why = (
                f"shorter than {params.min_length / params.sample_rate:g} s, which Hugging Face pads up to and "
                "the board does not"
            )
        elif facts.n_samples > params.chunk_length * params.sample_rate:
            why = f"longer than {params.chunk_length} s: the board keeps the final frame, Hugging Face drops it"
        else:
            why = f"a multiple of {params.hop_length} samples: the board keeps the final frame"
        tokens = f", {facts.board_rows} audio tokens vs {facts.hf_rows}" if facts.board_rows != facts.hf_rows else ""
        notes.append(
            f"clip length {facts.n_samples} samples is {why} ({facts.board_frames} frames vs Hugging "
            f"Face's {facts.hf_frames}{tokens})"
        )
    return notes
