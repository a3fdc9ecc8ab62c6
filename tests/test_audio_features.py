"""runtime.audio against the Hugging Face Qwen3-ASR feature extractor (the contract's numerical reference)."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from smt_convert.runtime.audio import MelParams, load_audio, log_mel, mel_filters, post_cnn_length, valid_frames
from smt_convert.runtime.errors import SmtError

# Measured max |ours - HF| is 0.7e-5 .. 3e-5 (HF runs the STFT in float32, we in float64).
FEATURE_TOL = 1e-4


def _speechlike(n, seed=0, rate=16000):
    """A tone plus noise with an amplitude envelope: exercises both loud bins and the max-8 floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    wave = env * (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)) + 0.02 * rng.standard_normal(n)
    return wave.astype(np.float32)


def _hf_features(wave):
    from transformers import Qwen3ASRFeatureExtractor

    out = Qwen3ASRFeatureExtractor()(wave, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    mask = out["attention_mask"][0]
    n_valid = int(mask.sum())
    assert mask[:n_valid].all(), "HF mask is expected to be a prefix"
    return out["input_features"][0], n_valid


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=201, num_mel_filters=128, min_frequency=0, max_frequency=8000,
        sampling_rate=16000, norm="slaney", mel_scale="slaney",
    )
    assert np.abs(mel_filters(MelParams()) - ref).max() < 1e-12


@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.37, 31.0])
def test_log_mel_matches_hf(seconds):
    wave = _speechlike(int(round(seconds * 16000)), seed=int(seconds * 100))
    ref, n_valid = _hf_features(wave)
    ours = log_mel(wave, MelParams())
    assert ours.dtype == np.float32
    assert ours.shape == (128, n_valid)
    assert n_valid == valid_frames(wave.size, MelParams())
    diff = np.abs(ours - ref[:, :n_valid]).max()
    print(f"{seconds}s: frames={n_valid} max_abs={diff:.2e}")
    assert diff < FEATURE_TOL


def test_silence_and_min_length():
    wave = np.zeros(100, dtype=np.float32)
    ref, n_valid = _hf_features(wave)
    ours = log_mel(wave)
    assert ours.shape == (128, 50) == (128, n_valid)
    assert np.abs(ours - ref[:, :n_valid]).max() < 1e-6


def test_stereo_44k_wav(tmp_path):
    rate, n = 44100, int(44100 * 1.7)
    left = _speechlike(n, seed=1, rate=rate)
    right = _speechlike(n, seed=2, rate=rate) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")

    wave = load_audio(path)
    expected = soxr.resample((left + right) / 2, rate, 16000, quality="HQ").astype(np.float32)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape == expected.shape
    assert np.abs(wave - expected).max() < 1e-6

    ref, n_valid = _hf_features(wave)
    assert np.abs(log_mel(wave) - ref[:, :n_valid]).max() < FEATURE_TOL


def test_load_audio_16k_mono_passthrough(tmp_path):
    wave = _speechlike(8000)
    path = tmp_path / "mono.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    assert np.array_equal(load_audio(path), wave)


def test_load_audio_errors(tmp_path):
    with pytest.raises(SmtError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(SmtError, match="bad.wav"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(SmtError, match="empty.wav"):
        load_audio(empty)


def test_mel_params_roundtrip():
    params = MelParams(num_mel_bins=80, chunk_length=20)
    assert MelParams.from_dict({**params.to_dict(), "extra": 1}) == params


def test_post_cnn_length_matches_hf():
    import torch
    from transformers.models.qwen3_asr.modeling_qwen3_asr import _get_feat_extract_output_lengths

    for n in [1, 2, 7, 8, 9, 50, 99, 100, 101, 237, 300, 3000, 3100]:
        assert post_cnn_length(n) == int(_get_feat_extract_output_lengths(torch.tensor(n))), n
