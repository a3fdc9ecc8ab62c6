"""The board's host preprocessing (runtime/board_image.py, runtime/board_audio.py) and the hf one side by side.

Each of the board's rules is pinned by a small case whose answer is worked out by hand in the comments (an impulse
in the audio, a 4-pixel image), then the two paths are compared on real-looking inputs, and a converted bundle
shows the rows, the manifest record and `run --host`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.runtime.audio import MelParams, load_audio, log_mel, mel_filters, post_cnn_length
from smt_convert.runtime.board_audio import (BOARD_LOG_FLOOR, board_frames, board_log_mel, board_mel_power,
                                             clip_facts, clip_warnings)
from smt_convert.runtime.board_image import board_resize_rgb, board_resize_uint8
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.host import audio_warnings, check_host, image_pixels, recorded_host
from smt_convert.runtime.image import resize_rgb
from smt_convert.runtime.pipeline import BundleRunner

PARAMS = MelParams()
COLUMN_SUMS = mel_filters(PARAMS).sum(axis=0)  # an impulse's flat power spectrum seen by each mel filter


def hann(j: int) -> float:
    return 0.5 - 0.5 * np.cos(2 * np.pi * j / 400)


def power_of(features: np.ndarray) -> np.ndarray:
    """Undo (log10(p) + 4) / 4 where no floor or clamp acted: the mel power the features encode."""
    return 10.0 ** (4.0 * features.astype(np.float64) - 4.0)


def impulse(n: int, at: int, amplitude: float) -> np.ndarray:
    wave = np.zeros(n, np.float32)
    wave[at] = amplitude
    return wave


# ---- audio: the three differences, by hand ------------------------------------------------------------------


def test_board_pads_the_start_with_zeros():
    """An impulse A at sample 100. Frame t covers samples [160t - 200, 160t + 200), so frame 0 sees it at
    window position 300 (Hann 0.5) and frame 1 at 140: power (A w)^2 in every FFT bin, i.e. (A w)^2 times each
    mel filter's column sum. With Hugging Face's reflect padding frame 0 also holds the mirror image at
    position 100 (Hann 0.5 too): |0.5 A (e^-i pi k/2 + e^-i 3 pi k/2)|^2 = A^2 on even bins, 0 on odd ones."""
    a = 0.3
    wave = impulse(16037, 100, a)
    board = power_of(board_log_mel(wave))
    assert np.allclose(board[:, 0], (a * hann(300)) ** 2 * COLUMN_SUMS, rtol=1e-4)
    assert np.allclose(board[:, 1], (a * hann(140)) ** 2 * COLUMN_SUMS, rtol=1e-4)
    even_bins = mel_filters(PARAMS)[0::2].sum(axis=0)
    hf = log_mel(wave)
    seen = even_bins > 1e-3 * even_bins.max()  # filters narrower than a bin can miss every even bin
    assert np.allclose(power_of(hf[seen, 0]), a ** 2 * even_bins[seen], rtol=1e-4)


def test_board_keeps_the_final_frame():
    """16000 samples (a multiple of 160): the board's frames are 16000 // 160 + 1 = 101, Hugging Face's 100.
    Frame 100 covers samples [15800, 16200): an impulse at 15900 sits at window position 100 (Hann 0.5).
    101 frames are one more encoder row (13 per 100 frames + 1 for the rest): one more audio token."""
    a = 0.3
    wave = impulse(16000, 15900, a)
    features = board_log_mel(wave)
    assert features.shape == (128, 101) and board_frames(16000, PARAMS) == 101
    assert np.allclose(power_of(features[:, 100]), (a * hann(100)) ** 2 * COLUMN_SUMS, rtol=1e-4)
    assert np.allclose(power_of(features[:, 99]), (a * hann(260)) ** 2 * COLUMN_SUMS, rtol=1e-4)
    assert log_mel(wave).shape == (128, 100)
    assert (post_cnn_length(101), post_cnn_length(100)) == (14, 13)
    assert board_log_mel(impulse(16001, 15900, a)).shape == log_mel(impulse(16001, 15900, a)).shape == (128, 101)


def test_board_log_floor_is_2_to_the_minus_24():
    """A lone full-scale impulse (1.0) in silence: frames 49-51 see it, the others are exactly zero. The loudest
    frame (50, impulse at the window's centre, Hann 1) has power 1 x the largest column sum, log10 about -1.38,
    so the max - 8 clamp sits at -9.38. The board floors zero power at 2^-24 (log10 -7.22), above the clamp:
    silent frames read (log10(2^-24) + 4) / 4 = -0.806. Hugging Face floors at 1e-10, below the clamp: its
    silent frames read (-9.38 + 4) / 4 = -1.345. (At 1e-3 both floors lie above the clamp and the silent frames
    differ by (-7.22 + 10) / 4 = 0.694: the largest difference quiet speech shows.)"""
    assert BOARD_LOG_FLOOR == float(np.float32(5.960464477539063e-08))
    wave = impulse(16037, 8000, 1.0)
    board, hf = board_log_mel(wave), log_mel(wave)
    silent = [t for t in range(hf.shape[1]) if t not in (49, 50, 51)]
    assert np.allclose(board[:, silent], (4 - 24 * np.log10(2)) / 4, atol=1e-6)
    loudest = np.log10(COLUMN_SUMS.max())
    assert np.allclose(hf[:, silent], (loudest - 8 + 4) / 4, atol=1e-5)
    assert np.allclose(power_of(board[:, 50]), COLUMN_SUMS, rtol=1e-4)
    facts = clip_facts(wave)
    assert facts.floored_share > 0.95 and facts.hf_floored_share == 0.0
    assert any("quiet input" in w for w in clip_warnings(facts))
    quiet = impulse(16037, 8000, 1e-3)
    assert np.allclose(board_log_mel(quiet)[:, silent] - log_mel(quiet)[:, silent], (10 - 24 * np.log10(2)) / 4,
                       atol=1e-5)


def test_chunks_and_t_out_are_the_boards():
    """The board's `get_feat_extract_output_lengths` (13 rows per 100 frames, three k3/s2/p1 convolutions on the
    rest, with floor division), written out independently, equals the runtime's post_cnn_length."""
    def floor_div(a, b):
        return a // b  # Python's // already floors; the board spells it out for C's truncation

    def board_t_out(frames):
        rest = frames % 100
        feat = floor_div(rest - 1, 2) + 1
        return floor_div(floor_div(feat - 1, 2) + 1 - 1, 2) + 1 + (frames // 100) * 13

    assert [post_cnn_length(n) for n in range(1, 2001)] == [board_t_out(n) for n in range(1, 2001)]


def test_empty_and_non_mono_audio_refused():
    with pytest.raises(ValueError, match="empty"):
        board_log_mel(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono"):
        board_log_mel(np.zeros((2, 100), np.float32))


# ---- images: the edge rule and the single rounding, by hand --------------------------------------------------


def test_board_resize_replicates_edges_and_rounds_once():
    """4 -> 2 pixels: scale 2, support 2. Output 0 is centred at 0.5 * 2 - 0.5 = 0.5; taps -1, 0, 1, 2 at
    distances 0.75, 0.25, 0.25, 0.75 (/2) weigh 0.25, 0.75, 0.75, 0.25, normalised to 1/8, 3/8, 3/8, 1/8; tap -1
    reads pixel 0 (replicated). A first column of 253, the rest 0: 253 * (1/8 + 3/8) = 126.5 exactly, in both
    passes, rounded once half away from zero: 127. Pillow drops tap -1 (weights 3/7, 3/7, 1/7): 253 * 3/7 =
    108.4 -> 108."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[:, 0] = 253
    board = board_resize_uint8(img, 2, 2)
    assert board[..., 0].tolist() == [[127, 0], [127, 0]] and np.all(board == board[..., :1])
    hf = resize_rgb(img, 2, 2)[0, 0]
    assert hf.tolist() == [[108, 0], [108, 0]]


def test_board_resize_enlarges_as_plain_bilinear():
    """2 -> 4 pixels: scale 0.5, support 1. Centres -0.25, 0.25, 0.75, 1.25; output 1 takes pixels 0 and 1 at
    distances 0.25 and 0.75: 0.75 * 100 + 0.25 * 200 = 125; output 0's tap -1 replicates pixel 0: 100."""
    img = np.array([[[100] * 3, [200] * 3]], np.uint8)
    assert board_resize_uint8(img, 4, 1)[0, :, 0].tolist() == [100, 125, 175, 200]
    assert resize_rgb(img, 4, 1)[0, 0, 0].tolist() == [100, 125, 175, 200]


def test_board_resize_same_size_is_identity():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = board_resize_rgb(img, 53, 37)
    assert out.shape == (1, 3, 37, 53) and out.dtype == np.float32
    assert np.array_equal(out[0].transpose(1, 2, 0), img)


# ---- both paths on real-looking inputs ---------------------------------------------------------------------


def speech(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Speech-like audio: syllables (harmonics of a wandering pitch, spectral tilt, two formant peaks), some with a
    fricative (high-passed noise) before them, separated by pauses, over a -70 dBFS room noise; peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    start = int(0.12 * rate)
    while start < n - int(0.1 * rate):
        length = int(rng.uniform(0.12, 0.3) * rate)
        t = np.arange(length) / rate
        f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(f0) / rate
        f1, f2 = rng.uniform(300, 900), rng.uniform(900, 2500)
        voiced = np.zeros(length)
        for k in range(1, 40):
            fk = k * f0.mean()
            if fk > 7800:
                break
            gain = k ** -1.2 * (1 + 3 * np.exp(-((fk - f1) / 150) ** 2) + 2 * np.exp(-((fk - f2) / 250) ** 2))
            voiced += gain * np.sin(k * phase)
        syllable = 0.25 * voiced * np.sin(np.pi * np.arange(length) / length) ** 0.7
        if rng.random() < 0.35:
            m = int(rng.uniform(0.05, 0.12) * rate)
            syllable[:m] += 0.05 * np.diff(rng.standard_normal(m + 1)) * np.sin(np.pi * np.arange(m) / m)
        end = min(n, start + length)
        out[start:end] += syllable[: end - start]
        start = end + int(rng.uniform(0.03, 0.25) * rate)
    out += 10 ** (-70 / 20) * rng.standard_normal(n)
    return (out / np.abs(out).max() * 0.5).astype(np.float32)


def test_speech_at_normal_level_differs_only_in_the_first_frames_and_the_extra_one():
    """Measured: frames 2.. agree to 0 (both float64 here), frames 0-1 by 0.15; 2.55 s = 40800 samples, a
    multiple of 160: one more frame on the board."""
    wave = speech(2.55)
    board, hf = board_log_mel(wave), log_mel(wave)
    assert board.shape[1] == hf.shape[1] + 1 == 256
    assert np.abs(board[:, 2:hf.shape[1]] - hf[:, 2:]).max() < 1e-4
    facts = clip_facts(wave)
    assert facts.floored_share == 0.0
    warnings = clip_warnings(facts)
    assert len(warnings) == 1 and "multiple of 160 samples" in warnings[0] and "256 frames vs" in warnings[0]


def test_speech_at_two_percent_is_floored_by_the_board():
    """At 2% volume (-34 dB) the board's 2^-24 floor sets 44% of the features (measured) and moves them by up to
    0.69 (the issue measured 0.69 on real speech); every difference beyond the first two frames is at a
    feature whose power is below 2^-24, where only the floors decide."""
    wave = speech(3.0) * 0.02
    board, hf = board_log_mel(wave), log_mel(wave)
    common = hf.shape[1]
    diff = np.abs(board[:, :common] - hf)
    assert 0.5 < diff.max() < 0.8
    below_floor = board_mel_power(wave)[:, :common] < BOARD_LOG_FLOOR
    assert np.all((diff[:, 2:] <= 1e-4) | below_floor[:, 2:])
    facts = clip_facts(wave)
    assert 0.3 < facts.floored_share < 0.6
    lines = audio_warnings(wave, {**PARAMS.to_dict(), "n_window": 50})
    assert len(lines) == 2 and lines[0].startswith("quiet input") and f"{facts.floored_share:.0%}" in lines[0]


def test_natural_images_down_and_up():
    """Downscaled, the paths differ by at most 1 level inside (one rounding vs two) and more on the outer ring
    (replicated vs dropped taps: measured up to 9 on a document page, 15 on noise); enlarged, by at most 1
    anywhere (no tap leaves the image by more than the replicated edge, which has the edge's own value)."""
    from smt_convert.archs.paddleocr_vl.prompt import raw_check_images
    from smt_convert.archs.qwen3_5.prompt import golden_image

    document = np.clip(raw_check_images(1015, 812)["document"], 0, 255).astype(np.uint8)
    natural = golden_image(336, 280)
    for img, (w, h) in ((document, (64, 96)), (natural, (224, 224)), (natural, (100, 77))):
        board = image_pixels(img, w, h, "board")[0]
        hf = image_pixels(img, w, h, "hf")[0]
        d = np.abs(board - hf)
        assert d[:, 1:-1, 1:-1].max() <= 1
        assert 0.01 < np.mean(d > 0) < 0.3
    d = np.abs(image_pixels(document, 64, 96, "board") - image_pixels(document, 64, 96, "hf"))[0]
    assert d.max() >= 5  # the ring
    up = np.abs(image_pixels(natural, 560, 672, "board") - image_pixels(natural, 560, 672, "hf"))
    assert up.max() <= 1


def test_host_names():
    assert check_host("board") == "board" and check_host("hf") == "hf"
    with pytest.raises(SmtError, match="--host: 'pil' is not one of board, hf"):
        check_host("pil")
    assert recorded_host({"preprocessing": {}}) == "hf"
    assert recorded_host({"preprocessing": {"host": "board"}}) == "board"


# ---- a converted bundle ------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def asr_bundle(tmp_path_factory):
    from smt_convert.testing.checkpoints import make_tiny_qwen3_asr

    root = tmp_path_factory.mktemp("host")
    make_tiny_qwen3_asr(root / "hf", layout="native")
    result = invoke("-q", "qwen3-asr", root / "hf", root / "bundle", "--outtype", "f32")
    assert result.exit_code == 0, result.output
    return root / "bundle"


def test_bundle_records_the_board_host_and_the_rows(asr_bundle):
    manifest = json.loads((asr_bundle / "manifest.json").read_text())
    assert manifest["preprocessing"]["host"] == "board"
    rows = [r for r in manifest["verification"]["rows"] if r["check"] == "host board vs hf"]
    assert [r["metric"] for r in rows] == ["cosine", "rel max abs"] and not any(r["gate"] for r in rows)
    assert 0.999 < rows[0]["value"] < 1.0 and 0 < rows[1]["value"] < 0.15  # the 2.6 s golden: 0.999999 / 0.0068
    processor = next(r for r in manifest["verification"]["rows"] if r["check"] == "encoder vs HF processor")
    assert not processor["gate"] and processor["value"] > 0.99
    runner = BundleRunner(asr_bundle)
    assert runner.host == "board"
    golden = np.load(asr_bundle / "golden" / "encoder.npy")
    wave = load_audio(asr_bundle / "golden" / "input.wav")
    assert np.array_equal(runner.encode(runner.features(wave)), golden)  # goldens are the board path's
    assert not np.allclose(runner.encode(runner.features(wave, host="hf")), golden, rtol=0, atol=1e-4)


def test_old_bundle_without_host_verifies_on_the_hf_path(asr_bundle, tmp_path):
    """A bundle written before the host was recorded: its goldens came from the hf path; `verify` must use it."""
    from smt_convert.runtime.bundle import sha256_file

    old = tmp_path / "old"
    shutil.copytree(asr_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["preprocessing"]["host"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert invoke("verify", old).exit_code == 1  # board goldens, re-run on the hf path: the host matters

    expected = json.loads((old / "golden" / "expected.json").read_text())
    runner = BundleRunner(old)
    assert runner.host == "hf"
    result = runner.run(load_audio(old / "golden" / "input.wav"), fields=expected["fields"],
                        max_new_tokens=len(expected["tokens"]) or 1)
    np.save(old / "golden" / "encoder.npy", result.media_embeds)
    top = np.argsort(-result.first_logits)[:10]
    expected.update(tokens=result.tokens, top_logits={"ids": top.tolist(),
                                                      "values": result.first_logits[top].astype(float).tolist()})
    (old / "golden" / "expected.json").write_text(json.dumps(expected))
    for entry in manifest["files"]:
        entry.update(size=(old / entry["path"]).stat().st_size, sha256=sha256_file(old / entry["path"]))
    (old / "manifest.json").write_text(json.dumps(manifest))
    verified = invoke("verify", old)
    assert verified.exit_code == 0, verified.output


def test_run_host_option_and_warnings(asr_bundle, tmp_path):
    import soundfile as sf

    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, speech(3.0) * 0.02, 16000, subtype="FLOAT")
    board = invoke("run", asr_bundle, "--audio", quiet, "--json", "--max-new-tokens", "3")
    assert board.exit_code == 0, board.output
    assert json.loads(board.stdout)["host"] == "board"
    warnings = [line for line in board.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "quiet input" in warnings[0] and "48000 samples" in warnings[1]
    hf = invoke("run", asr_bundle, "--audio", quiet, "--json", "--host", "hf", "--max-new-tokens", "3")
    assert hf.exit_code == 0 and json.loads(hf.stdout)["host"] == "hf"
    silent = invoke("-q", "run", asr_bundle, "--audio", quiet, "--max-new-tokens", "3")
    assert silent.exit_code == 0 and "warning" not in silent.stderr
    normal = tmp_path / "normal.wav"
    sf.write(normal, speech(2.571), 16000, subtype="PCM_16")  # 41136 samples: not a multiple of 160, loud
    plain = invoke("run", asr_bundle, "--audio", normal, "--max-new-tokens", "3")
    assert plain.exit_code == 0 and "warning" not in plain.stderr
    bad = invoke("run", asr_bundle, "--audio", normal, "--host", "pil")
    assert bad.exit_code == 2 and "--host" in bad.output


def test_host_path_rows_are_informational_and_flag_unusual_values():
    from smt_convert.runtime.verify import host_path_rows

    rng = np.random.default_rng(0)
    board = rng.standard_normal((35, 16)).astype(np.float32)
    close = host_path_rows(board, board + 1e-4, "audio")
    assert [r.metric for r in close] == ["cosine", "rel max abs"] and all(r.ok and not r.gate for r in close)
    assert all("OUTSIDE" not in r.threshold for r in close)
    far = host_path_rows(board, board[:34] + 0.5 * rng.standard_normal((34, 16)).astype(np.float32), "image")
    assert far[0].metric == "encoder rows" and far[0].value == "35 vs 34"
    assert [r.metric for r in far[1:]] == ["cosine (first 34 rows)", "rel max abs (first 34 rows)"]
    assert all("OUTSIDE the typical" in r.threshold and not r.gate for r in far[1:])
