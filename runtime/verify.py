"""Verification without torch: file hashes and golden vectors stored in the bundle at conversion time.

Thresholds live here, next to the metrics, because both the converter (against the Hugging Face model)
and `smt-convert verify` (against the goldens) use them. How they were measured is in README.md
("Verification thresholds").
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import numpy as np

from smt_convert.runtime.bundle import GOLDEN_DIR

# Thresholds, each set with a wide margin over what was measured on the tiny test models (README, "Verification
# thresholds", has the measurements). Text logits of the runtime vs Hugging Face, per GGUF --outtype: normalised
# MSE over all prompt positions, and the fraction of positions whose arg-max token agrees.
TEXT_THRESHOLDS = {
    "f32": {"nmse": 1e-6, "top1": 1.0},  # measured 2.7e-13, 1.0
    "f16": {"nmse": 1e-4, "top1": 0.98},  # measured 5.9e-7 (with an fp16 encoder), 1.0
    "bf16": {"nmse": 1e-3, "top1": 0.95},  # measured 2.2e-5, 1.0
    "q8_0": {"nmse": 1e-2, "top1": 0.9},  # measured 2.3e-4, 0.966
    # 4/5-bit: the tiny test models (64-wide rows = two 32-element blocks) are the worst case, and the
    # bounds only catch gross errors; recipes for real models should set tighter ones ([thresholds]).
    "q5_1": {"nmse": 0.1, "top1": 0.75},  # measured 8.3e-3 (Qwen3-ASR tiny)
    "q5_0": {"nmse": 0.1, "top1": 0.75},  # measured 1.1e-2 (Qwen3-ASR tiny)
    "q4_1": {"nmse": 0.5, "top1": 0.6},  # measured 4.5e-2 (Qwen3-ASR tiny)
    "q4_0": {"nmse": 0.5, "top1": 0.6},  # measured 3.9e-2 (Qwen3-ASR tiny), 0.20-0.22 (Qwen3.5 tiny)
    # K-quants (llama.cpp's quantiser): at least as close as the legacy type of the same bits per weight; on the
    # tiny models (64-wide rows) llama.cpp falls back to Q5_0/Q5_1/Q8_0 for every matrix, so they measure like
    # those (README, "Quality report", has the 512-wide measurements)
    "q6_k": {"nmse": 0.1, "top1": 0.75},
    "q5_k_m": {"nmse": 0.1, "top1": 0.75},
    "q5_k_s": {"nmse": 0.1, "top1": 0.75},
    "q4_k_m": {"nmse": 0.5, "top1": 0.6},
    "q4_k_s": {"nmse": 0.5, "top1": 0.6},
    "iq4_nl": {"nmse": 0.5, "top1": 0.6},
    "iq4_xs": {"nmse": 0.5, "top1": 0.6},
    "q3_k_l": {"nmse": 1.0, "top1": 0.4},
    "q3_k_m": {"nmse": 1.0, "top1": 0.4},
    "q3_k_s": {"nmse": 1.0, "top1": 0.4},
    "q2_k": {"nmse": 2.0, "top1": 0.3},
}
# Encoder rows (ONNX via the board's host logic) vs the torch encoder on the same features, per --onnx-dtype.
ENCODER_THRESHOLDS = {
    "fp32": {"cosine": 0.99999, "rel_max_abs": 1e-3},  # measured 1.0, 7.8e-7
    "fp16": {"cosine": 0.9995, "rel_max_abs": 1e-2},  # measured 0.9999996, 9.9e-4
    "int8": {"cosine": 0.99, "rel_max_abs": 0.2},  # measured 0.998, 7.7e-2
}
# Greedy tokens vs Hugging Face generate: identical for f32 text + fp32 encoder (a gate). For lossy types the
# agreement is reported, not gated: one flipped near-tie changes every later token (q8_0 measured 0.625 of 16
# tokens, q5_0 0.0), and the logits rows above already gate the precision.
# Goldens are re-checked on the same bundle, so only runtime/library differences across machines remain.
GOLDEN_THRESHOLDS = {"encoder_rel_max_abs": 1e-4, "logits_rel_max_abs": 1e-3}


@dataclass
class Row:
    check: str
    metric: str
    value: float | str
    threshold: str
    ok: bool
    gate: bool = True  # False: reported only, never fails the verification

    @classmethod
    def from_dict(cls, data: dict) -> "Row":
        """A row as a manifest stores it (keys a newer smt-convert may add are ignored)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def to_dict(self) -> dict:
        value = self.value if isinstance(self.value, str) else float(self.value)
        return {
            "check": self.check,
            "metric": self.metric,
            "value": value,
            "threshold": self.threshold,
            "ok": self.ok,
            "gate": self.gate,
        }


ROW_BLOCK = 64  # rows per block in the metrics below: a [positions, vocabulary] float64 copy would be GBs


def nmse(x: np.ndarray, ref: np.ndarray) -> float:
    """sum((x - ref)^2) / sum(ref^2), accumulated in float64 a block of rows at a time."""
    x2, r2 = np.atleast_2d(x), np.atleast_2d(ref)
    x2, r2 = x2.reshape(-1, x2.shape[-1]), r2.reshape(-1, r2.shape[-1])
    err = total = 0.0
    for i in range(0, r2.shape[0], ROW_BLOCK):
        r = r2[i : i + ROW_BLOCK].astype(np.float64)
        err += float(np.sum((x2[i : i + ROW_BLOCK].astype(np.float64) - r) ** 2))
        total += float(np.sum(r**2))
    return err / max(total, 1e-30)


def cosine(x: np.ndarray, ref: np.ndarray) -> float:
    a, b = x.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30))


def rel_max_abs(x: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference, relative to the reference's largest magnitude (scale-free)."""
    return float(np.max(np.abs(x.astype(np.float64) - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def top1_agreement(logits: np.ndarray, ref: np.ndarray, tie_sigmas: float = 0.0) -> float:
    """Fraction of positions whose arg-max agrees with the reference's. With tie_sigmas > 0 a different
    choice still counts as agreeing when the reference rates it within tie_sigmas x (that position's RMS
    logit error) of its own best: a near-tie flipped by rounding is not evidence of a wrong model."""
    ours = np.argmax(logits, -1)
    if tie_sigmas <= 0:
        return float(np.mean(ours == np.argmax(ref, -1)))
    rms = np.concatenate(
        [
            np.sqrt(np.mean((logits[i : i + ROW_BLOCK].astype(np.float64) - ref[i : i + ROW_BLOCK]) ** 2, axis=-1))
            for i in range(0, len(ref), ROW_BLOCK)
        ]
    )
    chosen = np.take_along_axis(ref, ours[:, None], axis=-1)[:, 0]
    return float(np.mean(chosen >= ref.max(-1) - tie_sigmas * rms))


def prefix_agreement(tokens: list[int], ref: list[int]) -> float:
    n = max(len(ref), 1)
    k = 0
    while k < min(len(tokens), len(ref)) and tokens[k] == ref[k]:
        k += 1
    return 1.0 if tokens == ref else k / n


def encoder_rows(
    x: np.ndarray, ref: np.ndarray, onnx_dtype: str, label: str = "encoder", overrides: dict | None = None
) -> list[Row]:
    if x.shape != ref.shape:
        return [Row(label, "shape", f"{list(x.shape)} vs {list(ref.shape)}", "equal", False)]
    th = dict(ENCODER_THRESHOLDS[onnx_dtype])
    for key in ("cosine", "rel_max_abs"):
        if overrides and overrides.get(f"encoder_{key}") is not None:
            th[key] = overrides[f"encoder_{key}"]
    c, r = cosine(x, ref), rel_max_abs(x, ref)
    return [
        Row(label, "cosine", c, f">= {th['cosine']}", c >= th["cosine"]),
        Row(label, "rel max abs", r, f"<= {th['rel_max_abs']}", r <= th["rel_max_abs"]),
    ]


TIE_SIGMAS = 3.0  # lossy types: top-1 flips within 3 sigma of the measured logit error count as ties


def text_rows(
    logits: np.ndarray,
    ref: np.ndarray,
    outtype: str,
    onnx_dtype: str = "fp32",
    overrides: dict | None = None,
    nmse_scale: float = 1.0,
) -> list[Row]:
    """NMSE and top-1 gates. Exact settings (f32 text + fp32 encoder) need every arg-max identical; lossy
    ones gate top-1 with near-ties forgiven and report the raw agreement. `nmse_scale` widens the NMSE bound
    for architectures whose error is amplified by discrete choices (MoE routing)."""
    exact = outtype == "f32" and onnx_dtype == "fp32"
    th = dict(TEXT_THRESHOLDS[outtype])
    if not exact:
        th["nmse"] *= nmse_scale
    if onnx_dtype != "fp32":  # encoder rounding reaches the logits through the media rows
        # int8 encoder with q8_0 text measured top-1 0.905 (0.966 with fp32), so int8 gets the 5-bit bounds
        loosest = TEXT_THRESHOLDS["q5_0" if onnx_dtype == "int8" else "f16"]
        th = {"nmse": max(th["nmse"], loosest["nmse"]), "top1": min(th["top1"], loosest["top1"])}
    for key in ("nmse", "top1"):
        if overrides and overrides.get(f"text_{key}") is not None:
            th[key] = overrides[f"text_{key}"]
    e = nmse(logits, ref)
    rows = [Row("text logits", "nmse", e, f"<= {th['nmse']:g}", e <= th["nmse"])]
    if exact:
        t = top1_agreement(logits, ref)
        return rows + [Row("text logits", "top-1 agreement", t, f">= {th['top1']}", t >= th["top1"])]
    t = top1_agreement(logits, ref, TIE_SIGMAS)
    raw = top1_agreement(logits, ref)
    return rows + [
        Row("text logits", "top-1 (3-sigma ties)", t, f">= {th['top1']}", t >= th["top1"]),
        Row("text logits", "top-1 agreement", raw, "reported", True, gate=False),
    ]


# Mean KL divergence (nats) of the next-token distribution against Hugging Face, teacher-forced over the prompt
# and the greedy continuation: the quality gate per text type. Measured (README, "Quality report"): the tiny test
# models give q8_0 2e-4, q4_0 0.013 (Qwen3-ASR); the 512-wide random Qwen3.5 of benchmarks/bench_quality.py gives
# q8_0 0.0026, q6_k 0.036, q5_k_m 0.063, q5_0 0.10, q4_k_m 0.18, q4_0 0.32, q3_k_m 0.49, q2_k 0.99. Untrained
# networks amplify rounding more than trained ones, so the gates sit about 3x above that worst case: they catch a
# broken conversion (a wrong tensor or layout gives several nats), and the value itself is the comparison.
KLD_THRESHOLDS = {
    "f32": 1e-6,
    "f16": 1e-3,
    "bf16": 1e-2,
    "q8_0": 0.05,
    "q6_k": 0.2,
    "q5_k_m": 0.3,
    "q5_k_s": 0.3,
    "q5_1": 0.3,
    "q5_0": 0.3,
    "q4_k_m": 1.0,
    "q4_k_s": 1.0,
    "q4_1": 1.0,
    "q4_0": 1.0,
    "iq4_nl": 1.0,
    "iq4_xs": 1.0,
    "q3_k_l": 1.5,
    "q3_k_m": 1.5,
    "q3_k_s": 1.5,
    "q2_k": 3.0,
}
KLD_ENCODER_FLOOR = {"fp32": 0.0, "fp16": 1e-3, "int8": 0.1}  # added for a lossy encoder


def quality_rows(quality, outtype: str, onnx_dtype: str = "fp32", overrides: dict | None = None) -> list[Row]:
    """The quality report as rows: the mean KL divergence gated per type, the rest reported."""
    bound = KLD_THRESHOLDS[outtype] + KLD_ENCODER_FLOOR[onnx_dtype]
    if overrides and overrides.get("text_kld") is not None:
        bound = overrides["text_kld"]
    label = "quality"
    rows = [
        Row(
            label,
            f"KLD mean ({quality.positions} positions)",
            quality.kld_mean,
            f"<= {bound:g}",
            quality.kld_mean <= bound,
        ),
        Row(label, "KLD p99", quality.kld_p99, "reported", True, gate=False),
    ]
    if quality.kld_mean_text_only is not None:
        rows.append(
            Row(
                label,
                "KLD mean, HF encoder rows",
                quality.kld_mean_text_only,
                "reported: the text decoder's share",
                True,
                gate=False,
            )
        )
    if quality.ppl is not None:
        rows.append(
            Row(
                label,
                f"perplexity of {quality.continuation_tokens} greedy tokens",
                f"{quality.ppl:.4f} (HF {quality.ppl_reference:.4f})",
                "reported",
                True,
                gate=False,
            )
        )
    return rows


def e2e_rows(tokens: list[int], ref: list[int], exact: bool) -> list[Row]:
    agree = prefix_agreement(tokens, ref)
    if exact:
        return [Row("end to end", "greedy tokens agreeing", agree, "== HF greedy", tokens == ref)]
    return [Row("end to end", "greedy tokens agreeing", agree, "reported", True, gate=False)]


# config.json's audio block as the board reads it (SMT-CONTRACT.md) -> the manifest's preprocessing key it must equal
BOARD_AUDIO_KEYS = {
    "num_mel_bins": "num_mel_bins",
    "sample_rate": "sample_rate",
    "n_fft": "n_fft",
    "window_len": "n_fft",
    "hop_len": "hop_length",
}


def board_config_problems(bundle) -> list[str]:
    """The board's config.json against the manifest's contract: the audio front end the board computes must be the
    one the encoder was converted for (a hop of 0 or another mel count would feed it features it never saw)."""
    audio = bundle.config.get("audio_model")
    pre = bundle.manifest.get("preprocessing", {})
    problems = []
    if isinstance(audio, dict):
        for key, manifest_key in BOARD_AUDIO_KEYS.items():
            value, want = audio.get(key), pre.get(manifest_key)
            if want is not None and value != want:
                problems.append(
                    f"config.json audio_model.{key} is {value!r}, the manifest's "
                    f"preprocessing.{manifest_key} is {want!r}"
                )
    return problems


def hash_rows(bundle) -> list[Row]:
    """Structure first (what is listed and where it points, config.json against the manifest), then every listed
    file's size and sha256."""
    rows = []
    problems = bundle.check_structure() + board_config_problems(bundle)
    rows.append(
        Row(
            "manifest",
            "structure",
            "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            if problems
            else "complete",
            "every needed file listed, inside the bundle",
            not problems,
        )
    )
    results = bundle.check_files()
    bad = [r for r in results if not r["ok"]]
    detail = "all match" if not bad else "; ".join(f"{r['file']}: {r['detail']}" for r in bad)
    rows.append(Row("files", f"{len(results)} sha256", detail, "manifest", not bad))
    extra = bundle.unlisted_files()
    if extra:
        rows.append(
            Row(
                "files",
                "not in the manifest",
                ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""),
                "reported",
                True,
                gate=False,
            )
        )
    return rows


def load_array(path) -> np.ndarray:
    """A stored golden array: plain numbers only (a pickled object array could run code when loaded)."""
    from smt_convert.runtime.errors import SmtError

    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise SmtError(f"{path}: not a plain numpy array ({str(exc).splitlines()[0][:120]})") from None
    if arr.dtype.kind not in "fiu":
        raise SmtError(f"{path}: holds {arr.dtype} values, expected numbers")
    return arr


def golden_rows(runner) -> list[Row]:
    """Re-run the bundle on its stored golden input and compare with the vectors saved at conversion."""
    root = runner.bundle.root
    record = runner.manifest["golden"]
    golden = root / GOLDEN_DIR
    from smt_convert.runtime.documents import NUMBER, OneOf, load_checked

    expected = load_checked(
        golden / "expected.json",
        {
            "tokens": [int],
            "top_logits": {"ids": [int], "values": [NUMBER]},
            "fields?": OneOf({"*": str}, type(None)),
            "language?": OneOf(str, type(None)),
        },
    )
    media = golden / record["input"] if record.get("input") else None
    result = runner.run(
        media,
        fields=expected.get("fields"),
        language=expected.get("language"),
        max_new_tokens=len(expected["tokens"]) or 1,
    )
    rows = []
    if media is not None:
        enc_ref = load_array(golden / "encoder.npy")
        if result.media_embeds.shape != enc_ref.shape:
            rows.append(
                Row("golden encoder", "shape", f"{list(result.media_embeds.shape)}", f"{list(enc_ref.shape)}", False)
            )
        else:
            r = rel_max_abs(result.media_embeds, enc_ref)
            th = GOLDEN_THRESHOLDS["encoder_rel_max_abs"]
            rows.append(Row("golden encoder", "rel max abs", r, f"<= {th}", r <= th))
    top_ids = np.asarray(expected["top_logits"]["ids"])
    top_vals = np.asarray(expected["top_logits"]["values"], dtype=np.float64)
    got = result.first_logits[top_ids]
    r = float(np.max(np.abs(got - top_vals)) / max(np.max(np.abs(top_vals)), 1e-30))
    th = GOLDEN_THRESHOLDS["logits_rel_max_abs"]
    rows.append(Row("golden logits", f"top-{len(top_ids)} rel max abs", r, f"<= {th}", r <= th))
    same = result.tokens == expected["tokens"]
    rows.append(
        Row(
            "golden tokens",
            "greedy tokens",
            "equal" if same else f"{result.tokens} != {expected['tokens']}",
            "equal",
            same,
        )
    )
    return rows


# The board's host preprocessing vs the Hugging Face-faithful one: encoder outputs on the golden input. Reported,
# never gated: the difference is the board's design, not a conversion error. The typical ranges are what the tiny
# models measured on speech-like audio at normal level and on natural, document and noise images, with margin
# (README, "Host preprocessing: board vs Hugging Face"); a value outside is flagged in the threshold column: the
# input meets a board behaviour hard (quiet audio: cosine 0.992 / rel 0.19 at 2% volume; a loud first frame).
HOST_PATH_TYPICAL = {
    "audio": {"cosine": 0.999, "rel_max_abs": 0.15},  # measured 0.99957-0.99999 / 0.014-0.12
    "image": {"cosine": 0.9999, "rel_max_abs": 0.05},  # measured 0.99985-0.999999 / 0.0018-0.023
}


def host_path_rows(board: np.ndarray, hf: np.ndarray, modality: str) -> list[Row]:
    """Informational rows: encoder rows from the board's host path vs from the hf host path (same bundle).
    When the board has more rows (the final audio frame it keeps), the rows both have are compared."""
    label = "host board vs hf"
    rows = []
    n = min(board.shape[0], hf.shape[0])
    if board.shape != hf.shape:
        rows.append(Row(label, "encoder rows", f"{board.shape[0]} vs {hf.shape[0]}", "reported", True, gate=False))
    if n == 0 or board.shape[1:] != hf.shape[1:]:
        return rows
    c, r = cosine(board[:n], hf[:n]), rel_max_abs(board[:n], hf[:n])
    suffix = "" if board.shape == hf.shape else f" (first {n} rows)"
    typical = HOST_PATH_TYPICAL[modality]

    def note(inside: bool, bound: str) -> str:
        return f"info; typically {bound}" if inside else f"info; OUTSIDE the typical {bound}"

    return rows + [
        Row(label, "cosine" + suffix, c, note(c >= typical["cosine"], f">= {typical['cosine']}"), True, gate=False),
        Row(
            label,
            "rel max abs" + suffix,
            r,
            note(r <= typical["rel_max_abs"], f"<= {typical['rel_max_abs']}"),
            True,
            gate=False,
        ),
    ]


TABLE_HEADER = ("check", "metric", "value", "threshold", "result")


def table_cells(rows: list[Row]) -> list[tuple[str, ...]]:
    """Printed cells per row, TABLE_HEADER's columns: the CLI's table and the model card's show the same text."""

    def fmt(v):
        if isinstance(v, str):
            return v
        return f"{v:.6g}"

    return [
        (r.check, r.metric, fmt(r.value), r.threshold, "info" if not r.gate else "PASS" if r.ok else "FAIL")
        for r in rows
    ]


def format_table(rows: list[Row]) -> str:
    header, body = TABLE_HEADER, table_cells(rows)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])
