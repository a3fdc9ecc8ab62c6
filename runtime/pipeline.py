"""Run a bundle end to end the way the board does: preprocess, encode, splice embeddings, decode.

Everything model-specific comes from the bundle (manifest prompt and preprocessing records, board config,
GGUF), so this file serves every architecture: the prompt template is split at the media marker, the
boundary tokens are decoded around the encoder rows, and positions follow the manifest's rule
("1d" for text and audio, "mrope" for images: see runtime/positions.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smt_convert.runtime.bundle import Bundle
from smt_convert.runtime.decoders import load_decoder
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.generate import greedy_generate
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.tokenizer import RuntimeTokenizer


@dataclass
class Prompt:
    """A spliced prompt: embeddings for the decoder, plus the token ids with the media rows replaced by
    the model's placeholder id (what a Hugging Face model is given for the same prompt)."""

    embeds: np.ndarray
    positions: np.ndarray
    placeholder_ids: list[int]
    media_span: tuple[int, int]


@dataclass
class RunResult:
    text: str
    raw_text: str
    tokens: list[int]
    prompt: Prompt
    media_embeds: np.ndarray | None
    first_logits: np.ndarray
    timings: dict = field(default_factory=dict)


class BundleRunner:
    """Loads a bundle once; `run()` answers one prompt with at most one media item."""

    def __init__(
        self, bundle_dir: str | Path, threads: int | None = None, require_complete: bool = True, host: str | None = None
    ):
        """`host`: "board" or "hf" host preprocessing (runtime/host.py); None: the one the bundle's goldens
        were computed with."""
        from smt_convert.runtime.host import check_host, recorded_host

        t0 = time.perf_counter()
        self.bundle = Bundle.open(bundle_dir, require_complete)
        self.manifest = self.bundle.manifest
        self.host = check_host(host) if host is not None else recorded_host(self.manifest)
        self.prompt_rule = self.manifest["prompt"]
        self.tokenizer = RuntimeTokenizer(self.bundle.root)
        self._decoder = load_decoder(GGUFModel(self.bundle.text_gguf))
        self.threads = threads
        self._encoder: Any = None  # SplitAudioEncoder or VisionEncoder, loaded on first use
        self.encoder_peak_bytes: int | None = None
        self.load_seconds = time.perf_counter() - t0

    def release(self) -> None:
        """Let go of the encoder sessions and the decoder's weights (the converter does this before running the
        Hugging Face reference, so the two never hold memory at the same time). Loaded again on next use."""
        import gc

        from smt_convert.runtime.qmatmul import trim_heap

        self._encoder = None
        self._decoder = None
        gc.collect()
        trim_heap()

    @property
    def decoder(self):
        if self._decoder is None:
            self._decoder = load_decoder(GGUFModel(self.bundle.text_gguf))
        return self._decoder

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    # ---- media ----------------------------------------------------------------------------------

    def _unsupported(self):
        return SmtError(f"{self.bundle.root / 'manifest.json'}: modality: '{self.modality}' has no encoder here")

    def encoder(self):
        """The bundle's encoder, opened from the config.json block it serves (runtime/encoders.py)."""
        if self._encoder is None:
            entry = self._encoder_entry()
            self._encoder = entry.open(self.bundle, self.bundle.config[entry.block], self.threads)
        return self._encoder

    def _encoder_entry(self):
        from smt_convert.runtime.encoders import encoder_entry

        entry = encoder_entry(self.bundle.config) if self.modality != "text" else None
        if entry is None:
            raise self._unsupported()
        return entry

    def features(self, media, host: str | None = None) -> np.ndarray:
        """Host preprocessing for one media item on `host` (default: the runner's): audio -> log-mel;
        image -> resized [1,3,H,W] pixels (raw 0..255, or normalised when the board config has a
        vision_preprocess block)."""
        return self._encoder_entry().features(self, media, host or self.host)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Encoder rows for host features. The first call also records the memory the encoder session added
        at its peak (loading included): `encoder_peak_bytes`, which the bundle's memory statement uses."""
        if self._encoder is not None:
            return self._encoder.encode(features)
        from smt_convert.runtime.rss import peak_added

        rows, peak = peak_added(lambda: self.encoder().encode(features))
        if peak is not None:
            self.encoder_peak_bytes = max(self.encoder_peak_bytes or 0, peak)
        return rows

    # ---- prompt ---------------------------------------------------------------------------------

    def build_prompt(
        self, media_embeds: np.ndarray | None, fields: dict | None = None, assistant_prefix: str = ""
    ) -> Prompt:
        rule = self.prompt_rule
        marker = rule.get("media_marker")
        text = rule["template"].format(**self.template_values(fields)) + assistant_prefix
        if media_embeds is None:
            text = text.replace(marker, "") if marker else text
            ids = self.tokenizer.encode(text)
            return Prompt(self.decoder.embed(np.asarray(ids)), self._text_positions(0, len(ids)), ids, (0, 0))
        before, found, after = text.partition(marker)
        if not found:
            raise SmtError(f"{self.bundle.root / 'manifest.json'}: prompt.template: no media marker")
        ids_before = self.tokenizer.encode(before) + [self.tokenizer.token_id(rule["media_start"])]
        ids_after = [self.tokenizer.token_id(rule["media_end"])] + self.tokenizer.encode(after)
        n_media = media_embeds.shape[0]
        ids = ids_before + [rule["media_placeholder_id"]] * n_media + ids_after
        embeds = np.concatenate(
            [
                self.decoder.embed(np.asarray(ids_before)),
                media_embeds.astype(np.float32),
                self.decoder.embed(np.asarray(ids_after)),
            ]
        )
        start = len(ids_before)
        if rule["positions"] == "1d":
            positions = np.arange(len(ids), dtype=np.int64)
        elif rule["positions"] == "mrope":
            from smt_convert.runtime.positions import mrope_positions, text_positions

            grid = self.manifest["preprocessing"].get("grid")
            media_pos, next_pos = mrope_positions(start, n_media, tuple(grid) if grid else None)
            positions = np.concatenate([text_positions(0, start), media_pos, text_positions(next_pos, len(ids_after))])
        else:
            raise SmtError(
                f"{self.bundle.root / 'manifest.json'}: prompt.positions: '{rule['positions']}' "
                "is not supported by this runtime"
            )
        return Prompt(embeds, positions, ids, (start, start + n_media))

    def template_values(self, fields: dict | None) -> dict:
        """The prompt template's fields: the manifest's defaults overridden by the caller's; a field this
        model's prompt does not take (e.g. --context for a vision model) is an error, not silently dropped."""
        rule = self.prompt_rule
        marker = rule.get("media_marker")
        values = dict(rule.get("template_fields", {}))
        for key, value in (fields or {}).items():
            if value is None:
                continue
            if key not in values:
                raise SmtError(
                    f"--{key}: {self.manifest['architecture']} has no {key} option "
                    f"(its prompt takes: {', '.join(sorted(values)) or 'nothing'})"
                )
            if marker and marker in str(value):
                raise SmtError(f"--{key}: must not contain the media marker {marker}")
            values[key] = value
        return values

    def _text_positions(self, start: int, n: int) -> np.ndarray:
        if self.prompt_rule["positions"] == "mrope":
            from smt_convert.runtime.positions import text_positions

            return text_positions(start, n)
        return np.arange(start, start + n, dtype=np.int64)

    def assistant_prefix(self, language: str | None) -> str:
        if not language:
            return ""
        rule = self.prompt_rule
        if "assistant_prefix_with_language" not in rule:
            raise SmtError(f"--language: {self.manifest['architecture']} has no language option")
        languages = rule.get("languages", {})
        names = set(languages.values())
        name = languages.get(language.lower(), language if language in names else None)
        if name is None:
            name = next((n for n in names if n.lower() == language.lower()), None)
        if name is None:
            raise SmtError(f"--language: '{language}' is not one of the model's languages ({', '.join(sorted(names))})")
        return rule["assistant_prefix_with_language"].format(language=name)

    # ---- run ------------------------------------------------------------------------------------

    def run(
        self,
        media=None,
        fields: dict | None = None,
        language: str | None = None,
        max_new_tokens: int = 256,
        keep_encoder: bool = True,
    ) -> RunResult:
        """One answer. `keep_encoder=False` lets go of the encoder sessions once the media is encoded (the
        converter's single golden run: the decoder then has the memory to itself)."""
        timings = {}
        media_embeds = None
        prefix = self.assistant_prefix(language)  # option errors before any heavy work
        self.template_values(fields)
        if media is not None:
            t0 = time.perf_counter()
            features = self.features(media)
            timings["preprocess_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            media_embeds = self.encode(features)
            timings["encode_s"] = time.perf_counter() - t0
            if not keep_encoder:
                from smt_convert.runtime.qmatmul import trim_heap

                self._encoder = None
                trim_heap()  # onnxruntime's freed buffers go back to the OS before the decoder loads
        prompt = self.build_prompt(media_embeds, fields, prefix)
        t0 = time.perf_counter()
        gen = greedy_generate(self.decoder, prompt.embeds, prompt.positions, max_new_tokens, set(self.stop_ids()))
        timings["decode_s"] = time.perf_counter() - t0
        timings["new_tokens"] = len(gen.tokens)
        raw = self.tokenizer.decode(gen.tokens, skip_special=False)
        return RunResult(
            self.answer(raw, forced_prefix=bool(prefix)),
            raw,
            gen.tokens,
            prompt,
            media_embeds,
            gen.first_logits,
            timings,
        )

    def stop_ids(self) -> list[int]:
        """Token ids that end generation (the manifest's stop tokens present in this vocabulary)."""
        return [self.tokenizer.token_id(t) for t in self.prompt_rule["stop_tokens"] if self.tokenizer.has_token(t)]

    def answer(self, raw: str, forced_prefix: bool) -> str:
        """The user-facing text: after the answer marker (e.g. `<asr_text>`) unless the prompt already
        ended with it, with special tokens removed."""
        marker = self.prompt_rule.get("answer_after")
        text = raw.split(marker, 1)[1] if marker and not forced_prefix and marker in raw else raw
        for special in self.tokenizer.special_tokens:
            text = text.replace(special, "")
        return text.strip()
