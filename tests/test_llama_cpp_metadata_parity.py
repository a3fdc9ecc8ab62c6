"""Our text GGUF against llama.cpp's own converter (convert_hf_to_gguf.py) on the same tiny checkpoints: the same
metadata keys with the same types and values (token, score, type and merge arrays compared by value), except the
differences the README explains ("GGUF metadata against llama.cpp's converter"), listed here in ALLOWED.

The converter comes from $LLAMA_CPP_DIR (a llama.cpp tree or an unpacked llama-cpp-python sdist), else from the
llama-cpp-python sdist fetched once with pip into pytest's cache directory; with neither, the tests skip. It runs
unmodified in a subprocess with its bundled gguf-py, except for one thing (as benchmarks/bench_convert.py): our
tiny BPE tokenizer's pre-tokenizer hash is not in its table, so a wrapper falls back to the real model's
pre-tokenizer name. `tokenizer.ggml.pre` is therefore equal by construction and proves nothing; every other key is
computed by llama.cpp's code from the checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from smt_convert.converters.tokenizer.vocab import resolve_add_eos
from smt_convert.testing.checkpoints import (
    make_tiny_paddleocr_vl,
    make_tiny_qwen3_5,
    make_tiny_qwen3_asr,
    make_tiny_qwen3_vl,
)
from smt_convert.testing.llama_cpp_converter import converter_command

pytestmark = pytest.mark.slow


# A model card and sampling settings, so the general.* keys llama.cpp derives from them are compared too.
MODEL_CARD = """---
license: apache-2.0
language:
- en
- zh
tags:
- tiny
pipeline_tag: any-to-any
base_model:
- Qwen/Qwen3-0.6B
---
# A tiny random test model
"""
SAMPLING = {"temperature": 0.7, "top_k": 20, "top_p": 0.8, "do_sample": True}

# family -> (builder, smt-convert command, BPE pre-tokenizer for the wrapper, extra llama.cpp arguments)
CASES = {
    "qwen3-asr": (lambda out: make_tiny_qwen3_asr(out, layout="original"), "qwen3-asr", "qwen2", []),
    # MTP is left out by us; llama.cpp refuses a Qwen3.5 without MTP weights unless told to leave it out too.
    "qwen3.5": (lambda out: make_tiny_qwen3_5(out), "qwen3.5", "qwen35", ["--no-mtp"]),
    "qwen3.5-moe": (lambda out: make_tiny_qwen3_5(out, moe=True), "qwen3.5-moe", "qwen35", ["--no-mtp"]),
    "paddleocr-vl": (lambda out: make_tiny_paddleocr_vl(out, layout="original"), "paddleocr-vl", "none", []),
    "qwen3-vl": (lambda out: make_tiny_qwen3_vl(out), "qwen3-vl", "qwen2", []),
    # llama.cpp's converter reads the Hub release's transposed expert layout
    "qwen3-vl-moe": (lambda out: make_tiny_qwen3_vl(out, moe=True, layout="released"), "qwen3-vl-moe", "qwen2", []),
}

# Keys allowed to differ (missing on one side or another value), with the README's reason.
ALLOWED_ALL = {
    "general.name": "ours is the bundle stem; llama.cpp titles the directory name (a commit hash for a Hub snapshot)",
}
ALLOWED = {
    "qwen3-asr": {
        "tokenizer.ggml.eot_token_id": "we write <|im_end|>; llama.cpp's loader would guess eot from token texts",
        "qwen3vl.rope.dimension_sections": "sections that give the 1-D rope of HF's Qwen3 decoder (README: Rope "
                                           "sections); llama.cpp writes the config's mrope_section or none",
    },
    "qwen3.5": {"tokenizer.ggml.eot_token_id": "we write <|im_end|>; llama.cpp's loader would guess it"},
    "qwen3.5-moe": {"tokenizer.ggml.eot_token_id": "we write <|im_end|>; llama.cpp's loader would guess it"},
    "paddleocr-vl": {},
    "qwen3-vl": {"tokenizer.ggml.eot_token_id": "we write <|im_end|>; llama.cpp's loader would guess it"},
    "qwen3-vl-moe": {"tokenizer.ggml.eot_token_id": "we write <|im_end|>; llama.cpp's loader would guess it"},
}

@pytest.fixture(scope="session")
def llama_cpp(llama_cpp_converter) -> Path:
    return llama_cpp_converter


def metadata(path: Path) -> dict[str, tuple]:
    """Every key-value of a GGUF (the GGUF.* header fields aside) as (value types, value)."""
    reader = gguf.GGUFReader(path)
    return {key: (tuple(field.types), field.contents()) for key, field in reader.fields.items()
            if not key.startswith("GGUF.")}


def build_checkpoint(family: str, out: Path) -> Path:
    builder = CASES[family][0]
    builder(out)
    (out / "README.md").write_text(MODEL_CARD)
    generation = out / "generation_config.json"
    config = json.loads(generation.read_text()) if generation.is_file() else {}
    generation.write_text(json.dumps({**config, **SAMPLING}, indent=1))
    return out


def run(cmd: list[str], log: Path, **env) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{cmd[:4]}... failed, log {log}:\n{(proc.stdout + proc.stderr)[-3000:]}"


@pytest.mark.parametrize("family", list(CASES))
def test_gguf_metadata_matches_llama_cpp_converter(llama_cpp, tmp_path, family):
    _, command, pre, extra = CASES[family]
    ckpt = build_checkpoint(family, tmp_path / family)
    theirs_file = tmp_path / "llama.gguf"
    run(converter_command(llama_cpp, ckpt, theirs_file, "--outtype", "f32", *extra), tmp_path / "llama.log",
        SMT_BPE_PRE=pre)
    run([sys.executable, "-m", "smt_convert", command, str(ckpt), str(tmp_path / "bundle"), "--no-verify",
         "--outtype", "f32", "-q"], tmp_path / "smt.log")
    (ours_file,) = (tmp_path / "bundle").glob("*.gguf")
    theirs, ours = metadata(theirs_file), metadata(ours_file)

    differing = {key: (theirs.get(key, "(absent)"), ours.get(key, "(absent)"))
                 for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key)}
    allowed = {**ALLOWED_ALL, **ALLOWED[family]}
    unexplained = {k: v for k, v in differing.items() if k not in allowed}
    assert not unexplained, json.dumps(unexplained, indent=1, default=str)[:4000]
    # what this run really compared: llama.cpp's converter wrote the keys the issue names, and the card's
    assert theirs["tokenizer.ggml.add_eos_token"] == ours["tokenizer.ggml.add_eos_token"]
    for key in ("general.license", "general.tags", "general.sampling.top_k", "general.size_label",
                "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        assert key in theirs and theirs[key] == ours[key], key


# Post-processors x tokenizer_config's add_eos_token: llama.cpp's SpecialVocab (its gguf-py, run in a subprocess) is
# the reference for tokenizer.ggml.add_eos_token.
BOS, EOS = {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}
SEQ_A = {"Sequence": {"id": "A", "type_id": 0}}
POST_PROCESSORS = {
    "none": None,
    "byte-level": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    "template bos A": {"type": "TemplateProcessing", "single": [BOS, SEQ_A], "pair": [], "special_tokens": {}},
    "template bos A eos": {"type": "TemplateProcessing", "single": [BOS, SEQ_A, EOS], "pair": [], "special_tokens": {}},
    "template A": {"type": "TemplateProcessing", "single": [SEQ_A], "pair": [], "special_tokens": {}},
    "roberta": {"type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0]},
    "sequence": {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        {"type": "TemplateProcessing", "single": [BOS, SEQ_A, EOS], "pair": [], "special_tokens": {}}]},
}
# Where the post-processor and the flag disagree we follow tokenizer_config.json, as transformers 5 does (it rebuilds
# the post-processor from the flags); llama.cpp follows the post-processor. README lists this difference.
CONFLICTS = {("byte-level", True), ("roberta", False), ("template bos A eos", False), ("sequence", False)}


def test_add_eos_is_decided_as_llama_cpp_special_vocab_does(llama_cpp, tmp_path):
    cases = []
    for name, post in POST_PROCESSORS.items():
        for flag in (None, True, False):
            d = tmp_path / f"{len(cases)}"
            d.mkdir()
            config = {"bos_token": "<s>", "eos_token": "</s>", **({} if flag is None else {"add_eos_token": flag})}
            added = [{"id": 0, "content": "<s>", "special": True}, {"id": 1, "content": "</s>", "special": True}]
            (d / "tokenizer.json").write_text(json.dumps({"added_tokens": added, "post_processor": post,
                                                          "model": {"type": "BPE", "vocab": {}, "merges": []}}))
            (d / "tokenizer_config.json").write_text(json.dumps(config))
            cases.append((name, flag, str(d), resolve_add_eos(config, post)))
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from gguf.vocab import SpecialVocab; "
              "print(json.dumps([SpecialVocab(d).add_special_token.get('eos') for d in sys.argv[2:]]))")
    proc = subprocess.run([sys.executable, "-c", script, str(llama_cpp / "gguf-py"), *[c[2] for c in cases]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    differ = {(name, flag) for (name, flag, _, ours), t in zip(cases, theirs) if ours != t}
    assert differ == CONFLICTS
    assert all(ours == flag for name, flag, _, ours in cases if (name, flag) in CONFLICTS)
    assert set(theirs) == {None, True, False}  # every outcome is exercised
