"""How a Qwen3-ASR prompt is built (by the runtime and the board), the host's feature extraction record, and the
deterministic golden input."""

from __future__ import annotations

import numpy as np

from smt_convert.archs.qwen3_asr.config import Hparams

# Full language names the model was trained with ("language <NAME><asr_text>"); codes are accepted too.
LANGUAGES = {
    "ar": "Arabic",
    "yue": "Cantonese",
    "zh": "Chinese",
    "cs": "Czech",
    "da": "Danish",
    "nl": "Dutch",
    "en": "English",
    "fil": "Filipino",
    "fi": "Finnish",
    "fr": "French",
    "de": "German",
    "el": "Greek",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "mk": "Macedonian",
    "ms": "Malay",
    "fa": "Persian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "es": "Spanish",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "vi": "Vietnamese",
}

PROMPT_TEMPLATE = (
    "<|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n<__media__><|im_end|>\n<|im_start|>assistant\n"
)

# Plain ChatML, as upstream writes Qwen3-ASR's GGUF.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def prompt_record(hp: Hparams) -> dict:
    """How the runtime (and the board) builds a prompt for this model; stored in the manifest."""
    return {
        "template": PROMPT_TEMPLATE,
        "template_fields": {"context": ""},
        "media_marker": "<__media__>",
        "media_start": "<|audio_start|>",
        "media_end": "<|audio_end|>",
        "media_placeholder": "<|audio_pad|>",
        "media_placeholder_id": hp.audio_token_id,
        "positions": "1d",
        "assistant_prefix_with_language": "language {language}<asr_text>",
        "languages": LANGUAGES,
        "answer_after": "<asr_text>",
        "stop_tokens": ["<|im_end|>", "<|endoftext|>"],
    }


def preprocessing(hp: Hparams) -> dict:
    """Host feature extraction the board and the runtime apply (stored in the manifest)."""
    return {
        "num_mel_bins": hp.num_mel_bins,
        "sample_rate": 16000,
        "n_fft": 400,
        "hop_length": 160,
        "chunk_length": 30,
        "min_length": 8000,
        "window": "hann (periodic)",
        "mel_scale": "slaney",
        "log": "log10, clamp(max-8), (x+4)/4",
        "n_window": hp.n_window,
    }


def golden_audio(seconds: float = 2.6, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic, speech-like test signal (gliding harmonics with syllable-rate envelope + noise).

    2.6 s spans two full 100-frame chunks plus a partial one, so chunk padding is part of every golden. 75 samples
    more keep the length off a multiple of the 160-sample hop, where the board keeps one frame more than Hugging
    Face (that case has its own tests; the golden is the common case)."""
    t = np.arange(int(seconds * sample_rate) + 75) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    noise = np.random.default_rng(1234).normal(0, 0.02, t.shape)
    return (0.3 * voice * envelope / 2 + noise).astype(np.float32)
