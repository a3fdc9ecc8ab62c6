"""A tiny Qwen-style byte-level BPE tokenizer, trained in-process in well under a second.

Built like the real Qwen2/Qwen3 tokenizers (NFC normalizer, Qwen2 split regex + ByteLevel, ByteLevel
decoder, specials appended after the BPE vocab) so that tests exercise the same code paths as a
real checkpoint, without any network access.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN3_ASR_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<asr_text>",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's what we've said they'll do, isn't it?",
    "Speech recognition turns audio into text; the model listens, then it writes.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1,000,000 -17 +3",
    "我想在苹果工作。今天天气很好，我们去公园散步吧！语音识别模型。",
    "日本語のテキストも少し。こんにちは世界。한국어 문장도 있습니다.",
    "Emoji: 🚀 🦙🦙 😀 ✅ 👍🏽 — and accents: café naïve résumé Ärger straße",
    "def encode(text: str) -> list[int]:\n    return [ord(c) for c in text]\n\n\nif __name__ == '__main__':\n    print(encode('hi'))",
    "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }  // dot product\n\t\ttabs\tand    spaces",
    "Привет, мир! Это тест. Ελληνικά κείμενα. العربية نص قصير.",
    "user\nhello there\nassistant\nHi! How can I help you today?\n\n\nSure.",
]


def train_bpe(vocab_target: int = 400) -> Tokenizer:
    """Train the base byte-level BPE (no specials yet) with the Qwen2 pre-tokenizer."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer=trainer)
    return tok


def tokenizer_config(ids: dict[str, int], special: dict[str, bool], chat_template: str | None) -> dict:
    """The tokenizer_config.json a Qwen checkpoint ships (enough for AutoTokenizer)."""
    decoder = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special[s],
        }
        for s, i in sorted(ids.items(), key=lambda kv: kv[1])
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def write_vocab_merges(tok: Tokenizer, out_dir: Path) -> None:
    """Write the 'slow' layout: vocab.json (BPE vocab only) + merges.txt with its #version header."""
    model = json.loads(tok.to_str())["model"]
    (out_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_qwen_bpe_tokenizer(
    out_dir: Path,
    specials: list[str] = QWEN3_ASR_SPECIALS,
    layout: str = "tokenizer.json",
    vocab_target: int = 400,
    user_defined: list[str] = (),
    chat_template: str | None = CHATML_TEMPLATE,
) -> dict[str, int]:
    """Write a tiny Qwen-like tokenizer in `layout` ("tokenizer.json" | "vocab+merges" | "both").

    Specials get ids right after the BPE vocab, in the order given; `user_defined` are added
    non-special tokens after them. Returns {added token: id}.
    """
    if layout not in ("tokenizer.json", "vocab+merges", "both"):
        raise ValueError(f"unknown layout {layout!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(vocab_target)
    base = tok.get_vocab_size()
    if layout in ("vocab+merges", "both"):
        write_vocab_merges(tok, out_dir)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in user_defined])
    ids = {s: tok.token_to_id(s) for s in [*specials, *user_defined]}
    assert sorted(ids.values()) == list(range(base, base + len(ids))), ids
    if layout in ("tokenizer.json", "both"):
        tok.save(str(out_dir / "tokenizer.json"))
    special = {s: s in specials for s in ids}
    config = tokenizer_config(ids, special, chat_template)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return ids
