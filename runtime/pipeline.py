"""Run a bundle end to end the way the board does: preprocess, encode, splice embeddings, decode.

Everything model-specific comes from the bundle (manifest prompt record, board config, GGUF), so this
file is shared by every architecture: the prompt template is split at the media marker, the boundary
tokens are decoded around the encoder rows, and positions follow the manifest's position rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smt_convert.runtime.bundle import Bundle
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.generate import greedy_generate
from smt_convert.runtime.gguf_model import GGUFModel
from smt_convert.runtime.decoders import load_decoder
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
    media_embeds: np.ndarray
    first_logits: np.ndarray
    timings: dict = field(default_factory=dict)


class BundleRunner:
    """Loads a bundle once; `run()` answers one media item + prompt."""

    def __init__(self, bundle_dir: str | Path, threads: int | None = None, require_complete: bool = True):
        import time

        t0 = time.perf_counter()
        self.bundle = Bundle.open(bundle_dir, require_complete)
        self.manifest = self.bundle.manifest
        self.prompt_rule = self.manifest["prompt"]
        self.tokenizer = RuntimeTokenizer(self.bundle.root)
        self.decoder = load_decoder(GGUFModel(self.bundle.text_gguf))
        self.threads = threads
        self._encoder = None
        self.load_seconds = time.perf_counter() - t0

    # ---- media ----------------------------------------------------------------------------------

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    def encoder(self):
        if self._encoder is None:
            if self.modality == "audio":
                from smt_convert.runtime.audio_encoder import SplitAudioEncoder

                audio = self.bundle.config["audio_model"]
                self._encoder = SplitAudioEncoder(self.bundle.path(audio["frontend_model_path"]),
                                                  self.bundle.path(audio["backend_model_path"]),
                                                  intra_op_num_threads=self.threads)
            else:
                raise SmtError(f"{self.bundle.root}: modality '{self.modality}' is not supported by this runtime")
        return self._encoder

    def features(self, media) -> np.ndarray:
        """Host preprocessing for one media item (audio: waveform -> log-mel)."""
        if self.modality == "audio":
            from smt_convert.runtime.audio import MelParams, load_audio, log_mel

            params = MelParams.from_dict(self.manifest["preprocessing"])
            wave = load_audio(media, params.sample_rate) if isinstance(media, (str, Path)) else media
            return log_mel(np.asarray(wave, dtype=np.float32), params)
        raise SmtError(f"{self.bundle.root}: modality '{self.modality}' is not supported by this runtime")

    def encode(self, features: np.ndarray) -> np.ndarray:
        return self.encoder().encode(features)

    # ---- prompt ---------------------------------------------------------------------------------

    def build_prompt(self, media_embeds: np.ndarray, fields: dict | None = None,
                     assistant_prefix: str = "") -> Prompt:
        rule = self.prompt_rule
        values = dict(rule.get("template_fields", {}))
        values.update({k: v for k, v in (fields or {}).items() if v is not None})
        for key, value in values.items():
            if rule["media_marker"] in str(value):
                raise SmtError(f"--{key}: must not contain the media marker {rule['media_marker']}")
        text = rule["template"].format(**values) + assistant_prefix
        before, marker, after = text.partition(rule["media_marker"])
        if not marker:
            raise SmtError(f"{self.bundle.root / 'manifest.json'}: prompt.template: no media marker")
        start = self.tokenizer.token_id(rule["media_start"])
        end = self.tokenizer.token_id(rule["media_end"])
        ids_before = self.tokenizer.encode(before) + [start]
        ids_after = [end] + self.tokenizer.encode(after)
        n_media = media_embeds.shape[0]
        placeholder = rule["media_placeholder_id"]
        ids = ids_before + [placeholder] * n_media + ids_after
        embeds = np.concatenate([
            self.decoder.embed(np.asarray(ids_before)),
            media_embeds.astype(np.float32),
            self.decoder.embed(np.asarray(ids_after)),
        ])
        if rule["positions"] != "1d":
            raise SmtError(f"{self.bundle.root / 'manifest.json'}: prompt.positions: '{rule['positions']}' "
                           "is not supported by this runtime")
        positions = np.arange(len(ids), dtype=np.int64)
        return Prompt(embeds, positions, ids, (len(ids_before), len(ids_before) + n_media))

    def assistant_prefix(self, language: str | None) -> str:
        if not language:
            return ""
        rule = self.prompt_rule
        languages = rule.get("languages", {})
        names = set(languages.values())
        name = languages.get(language.lower(), language if language in names else None)
        if name is None:
            name = next((n for n in names if n.lower() == language.lower()), None)
        if name is None:
            raise SmtError(f"--language: '{language}' is not one of the model's languages "
                           f"({', '.join(sorted(names))})")
        return rule["assistant_prefix_with_language"].format(language=name)

    # ---- run ------------------------------------------------------------------------------------

    def run(self, media, fields: dict | None = None, language: str | None = None,
            max_new_tokens: int = 256) -> RunResult:
        import time

        timings = {}
        t0 = time.perf_counter()
        features = self.features(media)
        timings["preprocess_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        media_embeds = self.encode(features)
        timings["encode_s"] = time.perf_counter() - t0
        prefix = self.assistant_prefix(language)
        prompt = self.build_prompt(media_embeds, fields, prefix)
        t0 = time.perf_counter()
        gen = greedy_generate(self.decoder, prompt.embeds, prompt.positions, max_new_tokens, set(self.stop_ids()))
        timings["decode_s"] = time.perf_counter() - t0
        timings["new_tokens"] = len(gen.tokens)
        raw = self.tokenizer.decode(gen.tokens, skip_special=False)
        return RunResult(self.answer(raw, forced_prefix=bool(prefix)), raw, gen.tokens, prompt, media_embeds,
                         gen.first_logits, timings)

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
