"""Board-side tokenizer: the bundle's tokenizer.json through the `tokenizers` library (no torch/transformers)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from smt_convert.runtime.errors import SmtError


class RuntimeTokenizer:
    """Encode prompts and decode generated ids exactly like the Hugging Face tokenizer did at conversion."""

    def __init__(self, bundle_dir: Path):
        self.path = Path(bundle_dir) / "tokenizer.json"
        if not self.path.is_file():
            raise SmtError(f"{self.path}: (whole file): missing; the bundle has no tokenizer")
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:
            raise SmtError(f"{self.path}: (whole file): cannot be loaded by tokenizers ({e})") from None
        added = self._tok.get_added_tokens_decoder()
        self.special_tokens: set[str] = {t.content for t in added.values() if t.special}

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Special-token strings in `text` become their single ids; the tokenizer.json post-processor decides BOS
        (none for Qwen, none for ERNIE-4.5 / PaddleOCR-VL, whose chat template writes <|begin_of_sentence|>)."""
        return self._tok.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Decode (byte-level BPE or SentencePiece byte fallback); special tokens are dropped unless
        skip_special is False."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_id(self, text: str) -> int:
        """Id of a boundary token such as <|audio_start|>; it must encode to exactly that one token."""
        token_id = self._tok.token_to_id(text)
        if token_id is None:
            raise SmtError(f"{self.path}: added_tokens: {text!r} is not a token in the vocabulary")
        encoded = self._tok.encode(text, add_special_tokens=False).ids
        if encoded != [token_id]:
            raise SmtError(f"{self.path}: added_tokens: {text!r} does not encode as one token (got {encoded})")
        return token_id

    def has_token(self, text: str) -> bool:
        """True when `text` is a vocabulary/added token (optional stop tokens are checked this way)."""
        return self._tok.token_to_id(text) is not None

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce (base vocab plus added tokens)."""
        return self._tok.get_vocab_size(with_added_tokens=True)
