"""Long audio (issue 20): cut at pauses into pieces of at most the window, joined transcripts with time offsets;
a clip shorter than the window is untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from smt_convert.converters.golden_inputs import speech
from smt_convert.main import cli
from smt_convert.runtime.segments import cut, frame_db, longest_in_one_piece, quiet_threshold
from smt_convert.testing.checkpoints import make_tiny_qwen3_asr

RATE = 16000


def speech_with_pauses(seconds: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The golden sentence again and again with pauses of 0.3-1.0 s between (and quiet noise throughout); returns
    the wave and where the pauses are."""
    rng = np.random.default_rng(seed)
    voice = speech()
    parts, pauses, n = [], [], 0
    while n < seconds * RATE:
        parts.append(voice * rng.uniform(0.6, 1.0))
        n += len(voice)
        gap = int(RATE * rng.uniform(0.3, 1.0))
        parts.append(np.zeros(gap, np.float32))
        pauses.append((n, n + gap))
        n += gap
    wave = np.concatenate(parts)
    return wave + rng.normal(0, 0.003, len(wave)).astype(np.float32), pauses


def test_cuts_fall_in_pauses_and_pieces_fit_the_window():
    wave, pauses = speech_with_pauses(600)
    pieces = cut(wave, RATE, 30.0)
    assert pieces[0].start == 0 and pieces[-1].end == len(wave)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))          # contiguous, nothing dropped
    assert all(p.end - p.start <= 30 * RATE for p in pieces)
    assert len(pieces) >= 20                                                   # 600 s / 30 s
    db = frame_db(wave, RATE)
    quiet = quiet_threshold(db)
    for p in pieces[:-1]:   # every cut in a pause: between the sentences or between words, never inside a word
        assert db[p.end // 160] < quiet, (p, db[p.end // 160])
    between = sum(any(a - 1600 <= p.end <= b for a, b in pauses) for p in pieces[:-1])
    assert between >= len(pieces[:-1]) // 2   # mostly the longer pauses between sentences


def test_a_clip_shorter_than_the_window_is_one_piece():
    wave, _ = speech_with_pauses(20)
    assert [(p.start, p.end) for p in cut(wave, RATE, 30.0)] == [(0, len(wave))]


def test_no_pause_cuts_at_the_quietest_frame_within_the_window():
    rng = np.random.default_rng(1)
    wave = rng.normal(0, 0.3, 95 * RATE).astype(np.float32)
    wave[50 * RATE: 50 * RATE + 400] *= 0.2                                    # one slightly quieter moment
    pieces = cut(wave, RATE, 60.0)
    assert len(pieces) == 2 and abs(pieces[0].end - 50 * RATE) < 800


def test_energy_frames_cover_the_clip():
    wave, _ = speech_with_pauses(5)
    assert len(frame_db(wave, RATE)) == 1 + (len(wave) - 400) // 160


def test_window_from_the_context():
    assert 200 < longest_in_one_piece(4096) < 240 and longest_in_one_piece(64) == 0


def test_run_segments_a_long_recording_and_leaves_a_short_one_alone(tmp_path):
    make_tiny_qwen3_asr(tmp_path / "hf")
    bundle = tmp_path / "b"
    assert CliRunner().invoke(cli, ["-q", "qwen3-asr", str(tmp_path / "hf"), str(bundle), "--no-verify"]).exit_code == 0
    wave, _ = speech_with_pauses(150)
    sf.write(tmp_path / "long.wav", wave, RATE, subtype="PCM_16")
    result = CliRunner().invoke(cli, ["-q", "run", str(bundle), "--audio", str(tmp_path / "long.wav"), "--json",
                                      "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    starts = [s["start"] for s in out["segments"]]
    assert len(starts) >= 5 and starts[0] == 0 and starts == sorted(starts)
    assert out["segments"][-1]["end"] == pytest.approx(len(wave) / RATE, abs=0.01)
    one = CliRunner().invoke(cli, ["-q", "run", str(bundle), "--audio", str(tmp_path / "long.wav"), "--json",
                                   "--max-new-tokens", "4", "--segment", "off"])
    assert one.exit_code == 0 and "segments" not in json.loads(one.stdout)
    short = CliRunner().invoke(cli, ["-q", "run", str(bundle), "--audio", str(bundle / "golden" / "input.wav"),
                                     "--json", "--max-new-tokens", "4"])
    assert short.exit_code == 0 and "segments" not in json.loads(short.stdout)
    bad = CliRunner().invoke(cli, ["run", str(bundle), "--audio", str(tmp_path / "long.wav"), "--segment", "1"])
    assert bad.exit_code == 2 and "--segment" in bad.stderr
