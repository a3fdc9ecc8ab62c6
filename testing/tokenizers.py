"""A tiny Qwen-style byte-level BPE tokenizer, trained in-process in well under a second.

Built like the real Qwen2/Qwen3 tokenizers (NFC normalizer, Qwen2 split regex + ByteLevel, ByteLevel
decoder, specials appended after the BPE vocab) so that tests exercise the same code paths as a
real checkpoint, without any network access.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

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
    "def encode(text: str) -> list[int]:\n    return [ord(c) for c in text]\n\n\n"
    "if __name__ == '__main__':\n    print(encode('hi'))",
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
    user_defined: Sequence[str] = (),
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
    ids = cast(dict[str, int], {s: tok.token_to_id(s) for s in [*specials, *user_defined]})  # all just added
    assert sorted(ids.values()) == list(range(base, base + len(ids))), ids
    if layout in ("tokenizer.json", "both"):
        tok.save(str(out_dir / "tokenizer.json"))
    special = {s: s in specials for s in ids}
    config = tokenizer_config(ids, special, chat_template)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return ids


# ---------------------------------------------------------------- SentencePiece (ERNIE-4.5 / PaddleOCR-VL style)

# Specials of a PaddleOCR-VL checkpoint (besides <unk>/<s>/</s>, the SentencePiece meta pieces 0/1/2; pad is
# <unk>). The sentence markers are control symbols inside the SentencePiece model; the image tokens are added
# after it, like the real checkpoint (image_token_id 100295 = first id past its 100295 pieces).
PADDLEOCR_SPECIALS = [
    "<|begin_of_sentence|>",
    "<|end_of_sentence|>",
    "<|IMAGE_PLACEHOLDER|>",
    "<|IMAGE_START|>",
    "<|IMAGE_END|>",
]
SPM_IN_MODEL_SPECIALS = ("<|begin_of_sentence|>", "<|end_of_sentence|>")
SPM_META = ("<unk>", "<s>", "</s>")
PADDLEOCR_IMAGE_TOKEN = "<|IMAGE_PLACEHOLDER|>"

# Shaped like PaddleOCR-VL's chat template (cls token first, "User: " turns with the image span before
# the text, "Assistant:\n" turns closed by </s>), written for this project.
PADDLEOCR_CHAT_TEMPLATE = (
    "{%- if add_generation_prompt is not defined -%}{%- set add_generation_prompt = true -%}{%- endif -%}"
    "{{- '<|begin_of_sentence|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{- part['text'] + '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- 'User: ' -}}"
    "{%- for part in parts -%}{%- if part['type'] == 'image' -%}"
    "{{- '<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>' -}}{%- endif -%}{%- endfor -%}"
    "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'Assistant:\\n' -}}"
    "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}"
    "{{- '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:\\n' -}}{%- endif -%}"
)

SPM_TRAINING_TEXT = [
    *TRAINING_TEXT,
    "User: OCR:\nAssistant:\nTable Recognition: | a | b |\nFormula Recognition: x^2 + y^2 = z^2\nChart Recognition:",
    "文档解析：表格、公式、图表。发票号码 No. 00123456，金额 ¥1,234.50 元。",
]


def train_spm(
    vocab_size: int = 600,
    control_symbols: tuple[str, ...] = SPM_IN_MODEL_SPECIALS,
    user_defined: tuple[str, ...] = (),
    add_dummy_prefix: bool = False,
) -> bytes:
    """Train a tiny SentencePiece BPE model (byte fallback, identity normalization) in memory; returns the proto."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TRAINING_TEXT * 4),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=list(control_symbols),
        user_defined_symbols=list(user_defined),
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def spm_tokenizer_json(
    proto_bytes: bytes, added: list[tuple[str, bool]], add_prefix_space: bool, add_bos: bool
) -> Tokenizer:
    """The tokenizer.json a checkpoint ships for a SentencePiece BPE model: BPE with byte fallback, merges ranked
    by piece score, Metaspace, byte-fallback decoder; `added` are (content, special) tokens past the pieces."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module: no class declarations for mypy
    proto.ParseFromString(proto_bytes)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
    ranked = sorted(
        (-score, i, piece[:k], piece[k:])
        for piece, (score, i) in normal.items()
        for k in range(1, len(piece))
        if piece[:k] in normal and piece[k:] in normal
    )
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=[(a, b) for _, _, a, b in ranked], unk_token="<unk>", fuse_unk=True, byte_fallback=True
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if add_prefix_space else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence([*steps, *([decoders.Strip(" ", 1, 0)] if add_prefix_space else [])])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A" if add_bos else "$A",
        pair="<s> $A <s> $B" if add_bos else "$A $B",
        special_tokens=[("<s>", 1)] if add_bos else [],
    )
    in_model = [(p.piece, p.type) for p in proto.pieces if p.type in (3, 4)]  # control, user-defined
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, t in in_model if t == 3])
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p, t in in_model if t == 4])
    tok.add_special_tokens([AddedToken("<unk>", special=True, normalized=False)])
    for content, special in added:
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok


def build_spm_tokenizer(
    out_dir: Path,
    specials: list[str] = PADDLEOCR_SPECIALS,
    layout: str = "tokenizer.model",
    vocab_size: int = 600,
    user_defined: Sequence[str] = (),
    chat_template: str | None = PADDLEOCR_CHAT_TEMPLATE,
    add_prefix_space: bool = False,
    add_bos_token: bool = False,
) -> dict[str, int]:
    """Write a tiny PaddleOCR-VL-like SentencePiece tokenizer in `layout`
    ("tokenizer.model" | "tokenizer.json" | "both") plus tokenizer_config.json.

    Meta pieces <unk>/<s>/</s> are ids 0/1/2 and pad is <unk>, as in ERNIE-4.5. Specials listed in
    SPM_IN_MODEL_SPECIALS become control symbols inside the model, `user_defined` become its user-defined
    symbols, the other specials are added after the pieces in the order given. tokenizer_class is
    LlamaTokenizer (what loads offline in transformers 5; PaddleOCR-VL checkpoints use it too, with
    model_type paddleocr_vl in config.json transformers uses its generic TokenizersBackend instead).
    ERNIE settings: add_bos_token false, add_prefix_space false, legacy false.
    Returns {token: id} for every entry of added_tokens_decoder.
    """
    if layout not in ("tokenizer.model", "tokenizer.json", "both"):
        raise ValueError(f"unknown layout {layout!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_model = tuple(s for s in specials if s in SPM_IN_MODEL_SPECIALS)
    after = [s for s in specials if s not in SPM_IN_MODEL_SPECIALS]
    proto = train_spm(vocab_size, in_model, tuple(user_defined), add_dummy_prefix=add_prefix_space)
    if layout in ("tokenizer.model", "both"):
        (out_dir / "tokenizer.model").write_bytes(proto)
    tok = spm_tokenizer_json(proto, [(s, True) for s in after], add_prefix_space, add_bos_token)
    base = tok.get_vocab_size(with_added_tokens=False)
    ids = cast(
        dict[str, int], {s: tok.token_to_id(s) for s in [*SPM_META, *in_model, *user_defined, *after]}
    )  # all present
    assert [ids[s] for s in after] == list(range(base, base + len(after))), ids
    if layout in ("tokenizer.json", "both"):
        tok.save(str(out_dir / "tokenizer.json"))
    special = {s: s not in user_defined for s in ids}
    config = tokenizer_config(ids, special, chat_template)
    config.update(
        {
            "add_bos_token": add_bos_token,
            "add_eos_token": False,
            "add_prefix_space": add_prefix_space,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "cls_token": "<|begin_of_sentence|>" if "<|begin_of_sentence|>" in ids else None,
            "sep_token": "<|end_of_sentence|>" if "<|end_of_sentence|>" in ids else None,
            "legacy": False,
            "model_max_length": 131072,
            "tokenizer_class": "LlamaTokenizer",
        }
    )
    if PADDLEOCR_IMAGE_TOKEN in ids:
        config["extra_special_tokens"] = {"image_token": PADDLEOCR_IMAGE_TOKEN}
    del config["errors"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return ids
