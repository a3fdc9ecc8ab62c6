"""Compare a bundle, run by the minimal runtime, with the Hugging Face model (the independent reference)."""

from __future__ import annotations

import numpy as np

from smt_convert.runtime import verify as V
from smt_convert.runtime.verify import Row

FEATURE_MAX_ABS = 1e-4  # log-mel units; measured ~8e-6 (float32 FFT differences between numpy and torch)
# The board zero-pads the last feature chunk; HF's processor pads it with log-mel-of-silence values. Only the
# rows next to the audio's end differ (measured cosine 0.9995 on the 2.6 s golden of the tiny model).
PROCESSOR_PATH_COSINE = 0.99


def prompt_logits(runner, prompt) -> np.ndarray:
    """Runtime logits at every prompt position (one prefill)."""
    return runner.decoder.forward(prompt.embeds, prompt.positions, runner.decoder.new_cache(), logits="all")


def compare_with_reference(plugin, hp, model, runner, media, result, outtype: str, onnx_dtype: str,
                           max_new_tokens: int, thresholds: dict | None = None) -> tuple[list[Row], list[int]]:
    """Rows for features, encoder, text logits and greedy tokens; `result` is the runtime's run on `media`."""
    features = runner.features(media) if media is not None else None
    ref = plugin.reference_outputs(model, hp, media, features, result.prompt.placeholder_ids, max_new_tokens,
                                   runner.stop_ids())
    rows = []
    if "features" in ref:
        if ref["features"].shape == features.shape:
            diff = float(np.max(np.abs(ref["features"] - features)))
            rows.append(Row("features", "max abs vs HF extractor", diff, f"<= {FEATURE_MAX_ABS:g}",
                            diff <= FEATURE_MAX_ABS))
        else:
            rows.append(Row("features", "shape", f"{list(features.shape)} vs {list(ref['features'].shape)}", "equal",
                            False))
    if "encoder_same_features" in ref:
        rows += V.encoder_rows(result.media_embeds, ref["encoder_same_features"], onnx_dtype, overrides=thresholds)
    if "encoder_processor_path" in ref:
        c = V.cosine(result.media_embeds, ref["encoder_processor_path"])
        rows.append(Row("encoder vs HF processor", "cosine (last chunk padding)", c, f">= {PROCESSOR_PATH_COSINE}",
                        c >= PROCESSOR_PATH_COSINE))
    rows += V.text_rows(prompt_logits(runner, result.prompt), ref["logits"], outtype, onnx_dtype, overrides=thresholds,
                        nmse_scale=getattr(plugin, "lossy_nmse_scale", 1.0))
    exact = outtype == "f32" and onnx_dtype == "fp32"
    rows += V.e2e_rows(result.tokens, ref["tokens"], exact)
    return rows, ref["tokens"]
