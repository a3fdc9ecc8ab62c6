"""Find a checkpoint's tokenizer, turn it into llama.cpp GGUF vocabulary, and export it for the board.

One module per job:
- files.py: discovery (TokenizerSource, find_tokenizer: file layouts, AutoTokenizer fallback, chat template);
- bpe.py: byte-level BPE (tokenizer model "gpt2") -> build_bpe_vocab;
- spm.py: SentencePiece (tokenizer model "llama"; ERNIE-4.5 / PaddleOCR-VL) -> build_spm_vocab;
- vocab.py: GgufVocab and what BPE and SentencePiece share, build_vocab (either), write_vocab (GGUF keys);
- export.py: export_runtime_tokenizer, the tokenizer.json the board loads with `tokenizers`.
"""

from .bpe import build_bpe_vocab
from .export import export_runtime_tokenizer
from .files import SPM_KIND, TokenizerSource, find_tokenizer
from .spm import ADDED_SCORE, PAD_SCORE, build_spm_vocab, is_sentencepiece
from .vocab import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, GgufVocab, build_vocab, write_vocab

__all__ = [
    "ADDED_SCORE",
    "BYTE",
    "CONTROL",
    "NORMAL",
    "PAD_SCORE",
    "SPM_KIND",
    "UNKNOWN",
    "UNUSED",
    "USER_DEFINED",
    "GgufVocab",
    "TokenizerSource",
    "build_bpe_vocab",
    "build_spm_vocab",
    "build_vocab",
    "export_runtime_tokenizer",
    "find_tokenizer",
    "is_sentencepiece",
    "write_vocab",
]
