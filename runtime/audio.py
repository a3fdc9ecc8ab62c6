"""Audio input for Qwen3-ASR-style encoders: file loading and the Hugging Face log-mel, in numpy only.

The board has no torch, so the feature extractor is re-implemented here and tested against
`transformers.Qwen3ASRFeatureExtractor` (the numerical reference named in the SMT contract).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .errors import SmtError

# Qwen3ASRFeatureExtractor builds its filterbank with a hard-coded 0..8000 Hz range.
MEL_MIN_HZ = 0.0
MEL_MAX_HZ = 8000.0
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum
STFT_BLOCK_FRAMES = 4096  # frames per FFT block: bounds memory on long audio


MIN_SAMPLE_RATE = 4000  # below telephone quality nothing intelligible survives; resampling up costs rate ratio x
MAX_AUDIO_SECONDS = 3600  # an hour: ~450 MB of float32 features at 16 kHz before the encoder; longer: cut it first
MAX_CHANNELS = 64


def load_audio(path, sample_rate: int = 16000) -> np.ndarray:
    """Read any file soundfile can decode as float32 mono at `sample_rate` (mean downmix, soxr HQ)."""
    import soundfile as sf
    import soxr

    path = Path(path)
    if not path.is_file():
        raise SmtError(f"{path}: audio: file not found")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt/unsupported files
        raise SmtError(f"{path}: audio: cannot decode ({exc})") from None
    if info.samplerate < MIN_SAMPLE_RATE:  # a 1 Hz file of 800 KB would resample to 400,000 s
        raise SmtError(f"{path}: audio: sample rate {info.samplerate} Hz; at least {MIN_SAMPLE_RATE} Hz expected")
    if info.frames > MAX_AUDIO_SECONDS * info.samplerate or info.channels > MAX_CHANNELS:
        raise SmtError(
            f"{path}: audio: {info.frames / info.samplerate:.0f} s in {info.channels} channels; at most "
            f"{MAX_AUDIO_SECONDS} s and {MAX_CHANNELS} channels (cut longer recordings first)"
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt/unsupported files
        raise SmtError(f"{path}: audio: cannot decode ({exc})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise SmtError(f"{path}: audio: file has no samples")
    if not np.isfinite(data).all():
        raise SmtError(f"{path}: audio: holds non-finite samples (NaN or inf)")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


@dataclass
class MelParams:
    """Feature-extractor settings; stored in the bundle so the host computes the same features."""

    num_mel_bins: int = 128
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_length: int = 30  # seconds the signal is padded up to before the STFT (affects the max clamp)
    min_length: int = 8000  # samples; shorter clips are zero-padded first (Qwen3-ASR behaviour)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MelParams":
        """Build from a manifest dict, ignoring unknown keys so manifests can grow."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in known})


def _hz_to_mel_slaney(freq: np.ndarray | float) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(freq, 1e-30) / 1000.0) * (27.0 / np.log(6.4)), mels)


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    return np.where(log_region, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0)), freq)


def mel_filters(params: MelParams) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters [n_fft//2+1, num_mel_bins], as transformers builds them."""
    n_bins = params.n_fft // 2 + 1
    mel_points = np.linspace(_hz_to_mel_slaney(MEL_MIN_HZ), _hz_to_mel_slaney(MEL_MAX_HZ), params.num_mel_bins + 2)
    filter_freqs = _mel_to_hz_slaney(mel_points)
    fft_freqs = np.linspace(0, params.sample_rate // 2, n_bins)
    diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    enorm = 2.0 / (filter_freqs[2 : params.num_mel_bins + 2] - filter_freqs[: params.num_mel_bins])
    return filters * enorm[None, :]


def _periodic_hann(n: int) -> np.ndarray:
    """torch.hann_window(n) (periodic=True)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _power_mel(signal: np.ndarray, params: MelParams) -> np.ndarray:
    """|STFT|^2 through the mel filters, torch.stft(center=True, reflect) semantics, last frame dropped."""
    half = params.n_fft // 2
    padded = np.pad(signal.astype(np.float64), (half, half), mode="reflect")
    return mel_power(padded, params, drop_last=True)  # the extractor drops the last STFT frame


def mel_power(padded: np.ndarray, params: MelParams, drop_last: bool = False) -> np.ndarray:
    """Mel power [num_mel_bins, frames] of an already padded signal: periodic-Hann frames every hop_length
    samples, |rfft|^2, Slaney filters (float64, a block of frames at a time)."""
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(padded, np.float64), params.n_fft)
    frames = frames[:: params.hop_length]
    if drop_last:
        frames = frames[:-1]
    window = _periodic_hann(params.n_fft)
    filters = mel_filters(params)
    out = np.empty((params.num_mel_bins, frames.shape[0]), dtype=np.float64)
    for start in range(0, frames.shape[0], STFT_BLOCK_FRAMES):
        block = frames[start : start + STFT_BLOCK_FRAMES] * window
        spec = np.fft.rfft(block, n=params.n_fft, axis=-1)
        power = spec.real**2 + spec.imag**2
        out[:, start : start + block.shape[0]] = (power @ filters).T
    return out


def valid_frames(n_samples: int, params: MelParams) -> int:
    """Frames the HF attention mask marks valid: ceil(samples/hop) after min-length padding."""
    n = max(n_samples, params.min_length)
    total = max(n, params.chunk_length * params.sample_rate)
    return min(-(-n // params.hop_length), total // params.hop_length)


def log_mel(wave: np.ndarray, params: MelParams | None = None) -> np.ndarray:
    """Log-mel [num_mel_bins, n_valid] float32, equal to Qwen3ASRFeatureExtractor's valid frames.

    The max-8 clamp is taken over the whole padded spectrogram, so the signal is padded exactly as HF
    pads it (min_length, then up to chunk_length seconds) before the STFT.
    """
    params = params or MelParams()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"log_mel expects a mono 1-D wave, got shape {wave.shape}")
    if wave.size == 0 and params.min_length <= 0:
        raise ValueError("log_mel: empty wave")
    n = max(wave.size, params.min_length)
    total = max(n, params.chunk_length * params.sample_rate)
    signal = np.zeros(total, dtype=np.float32)
    signal[: wave.size] = wave
    log_spec = normalise(_power_mel(signal, params), LOG_FLOOR)
    return np.ascontiguousarray(log_spec[:, : valid_frames(wave.size, params)])


def normalise(power: np.ndarray, floor: float) -> np.ndarray:
    """log10(max(power, floor)), clamp to (max - 8) over all given frames, (x + 4) / 4, as float32 (Whisper's
    rule; the board and Hugging Face differ only in the floor and in which frames are given)."""
    log_spec = np.log10(np.maximum(power, floor))
    log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return np.ascontiguousarray((log_spec + 4.0) / 4.0, dtype=np.float32)


def post_cnn_length(n_frames: int, n_window: int = 50) -> int:
    """Encoder rows for n mel frames: 13 per full 2*n_window chunk plus three stride-2 convs on the rest.

    Same as HF `_get_feat_extract_output_lengths` (13 is its hard-coded rows per 100-frame chunk).
    """
    chunk = 2 * n_window
    rest = n_frames % chunk
    full_rows = conv_rows(chunk)
    if rest == 0:
        return (n_frames // chunk) * full_rows
    return (n_frames // chunk) * full_rows + conv_rows(rest)


def conv_rows(length: int) -> int:
    """Output length of the encoder's three (k=3, s=2, p=1) convolutions (13 for a 100-frame chunk)."""
    for _ in range(3):
        length = (length - 1) // 2 + 1
    return length
