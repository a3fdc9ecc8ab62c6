"""SentencePiece (ERNIE-4.5 / PaddleOCR-VL) tokenizers: GGUF vocab, runtime export, transformers and llama.cpp parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from smt_convert.testing.tokenizers import PADDLEOCR_SPECIALS, build_spm_tokenizer, train_spm
from smt_convert.converters.tokenizer import (
    ADDED_SCORE,
    BYTE,
    CONTROL,
    NORMAL,
    PAD_SCORE,
    SPM_KIND,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    build_bpe_vocab,
    build_spm_vocab,
    build_vocab,
    export_runtime_tokenizer,
    find_tokenizer,
    is_sentencepiece,
    write_vocab,
)
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.tokenizer import RuntimeTokenizer
from tests.test_tokenizer import llama_detokenize, llama_tokenize, llama_vocab_only

LAYOUTS = ("tokenizer.model", "tokenizer.json", "both")
VOCAB = 640  # embedding rows: the 603 tokenizer ids plus filler
BASE = 600  # SentencePiece pieces in the tiny model
IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|begin_of_sentence|>": 3, "<|end_of_sentence|>": 4, "<think>": 5,
       "<|IMAGE_PLACEHOLDER|>": 600, "<|IMAGE_START|>": 601, "<|IMAGE_END|>": 602}
PROMPT = "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant:\n"
TRICKY = [
    "Hello world",
    " leading space",
    "  two  spaces,   three   and trailing  ",
    "line\n\nblank\n\n\n\nmany\r\nwindows\n",
    "\t tabs\t\tand  \n  mixed \n",
    "digits 1234567890 3.14 1,000,000 and 2024-05-01",
    "我想在苹果工作。今天天气很好！",
    "日本語とカタカナ、한국어",
    "emoji 🚀🦙🦙 👍🏽 ✅ and café naïve",
    "unseen ΩΣ ∮ 𝔘𝔫 ﷺ",  # not in the vocab: byte fallback
    PROMPT,
    "text</s>after <think>inline</think> <|end_of_sentence|>",
    " <|IMAGE_END|> spaced <s> specials <unk> ",
    "",
]


@pytest.fixture(scope="module")
def spm_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny tokenizer per layout (training is deterministic, so all layouts share pieces and ids)."""
    root = tmp_path_factory.mktemp("spm")
    dirs = {}
    for layout in LAYOUTS:
        d = root / layout.replace(".", "_")
        assert build_spm_tokenizer(d, layout=layout, user_defined=["<think>"]) == IDS
        dirs[layout] = d
    return dirs


@pytest.fixture(scope="module")
def hf_tok(spm_dirs):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(spm_dirs["both"]))


@pytest.fixture(scope="module")
def bundles(spm_dirs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for layout, d in spm_dirs.items():
        out[layout] = root / layout.replace(".", "_")
        export_runtime_tokenizer(find_tokenizer(d), out[layout])
    return out


def copy_dir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name not in skip:
            shutil.copy(p, dst / p.name)
    return dst


# ---------------------------------------------------------------- discovery


def test_discovery_kinds(spm_dirs, tmp_path):
    src = find_tokenizer(spm_dirs["both"])
    assert src.kind == SPM_KIND and [p.name for p in src.files] == ["tokenizer.model", "tokenizer.json",
                                                                     "tokenizer_config.json"]
    assert find_tokenizer(spm_dirs["tokenizer.model"]).kind == SPM_KIND
    json_only = find_tokenizer(spm_dirs["tokenizer.json"])
    assert json_only.kind == "tokenizer.json" and is_sentencepiece(json_only)
    assert src.chat_template and "<|IMAGE_PLACEHOLDER|>" in src.chat_template
    # A byte-level BPE tokenizer.json next to a stray tokenizer.model stays BPE.
    from smt_convert.testing.tokenizers import build_qwen_bpe_tokenizer

    bpe = tmp_path / "bpe"
    build_qwen_bpe_tokenizer(bpe)
    shutil.copy(spm_dirs["both"] / "tokenizer.model", bpe / "tokenizer.model")
    src = find_tokenizer(bpe)
    assert src.kind == "tokenizer.json" and not is_sentencepiece(src)
    assert build_vocab(src, 512, "qwen2").model == "gpt2"
    with pytest.raises(SmtError, match="vocab_pre"):
        build_vocab(src, 512)
    with pytest.raises(SmtError, match="SentencePiece"):
        build_bpe_vocab(find_tokenizer(spm_dirs["tokenizer.model"]), VOCAB, "default")


def test_not_a_sentencepiece_model(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(b"\x00\x01 definitely not a protobuf")
    with pytest.raises(SmtError, match=r"tokenizer\.model: \(whole file\): not a SentencePiece model"):
        build_vocab(find_tokenizer(d), VOCAB)


# ---------------------------------------------------------------- GGUF vocabulary


def test_all_layouts_give_the_same_vocab(spm_dirs):
    vocabs = {layout: build_vocab(find_tokenizer(d), VOCAB) for layout, d in spm_dirs.items()}
    ref = vocabs["tokenizer.model"]
    for layout, v in vocabs.items():
        assert v == ref, layout
    assert build_spm_vocab(find_tokenizer(spm_dirs["both"]), VOCAB) == ref


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vocab_invariants(spm_dirs, layout):
    v = build_vocab(find_tokenizer(spm_dirs[layout]), VOCAB, pre="ignored-for-spm")
    assert (v.model, v.pre, v.merges, v.add_bos, v.add_space_prefix) == ("llama", "default", [], False, False)
    assert len(v.tokens) == len(v.scores) == len(v.types) == VOCAB
    # byte tokens <0x00>..<0xFF>, consecutive, BYTE, score 0
    first = v.tokens.index("<0x00>")
    assert v.tokens[first:first + 256] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(v.types[first:first + 256]) == {BYTE} and set(v.scores[first:first + 256]) == {0.0}
    # specials: single CONTROL tokens scored like upstream's added tokens; <think> is USER_DEFINED
    for text, i in IDS.items():
        assert v.tokens[i] == text and v.scores[i] == ADDED_SCORE, text
        assert v.types[i] == (USER_DEFINED if text == "<think>" else CONTROL), text
    # normal pieces: SentencePiece BPE ranks, 0, -1, -2, ... in id order
    normal = [i for i in range(BASE) if v.types[i] == NORMAL]
    assert normal == list(range(first + 256, BASE))
    assert [v.scores[i] for i in normal] == [-float(k) for k in range(len(normal))]
    assert "\u2581t" in v.tokens[:BASE]
    # padding
    assert v.tokens[603:] == [f"[PAD{i}]" for i in range(603, VOCAB)]
    assert set(v.types[603:]) == {UNUSED} and set(v.scores[603:]) == {PAD_SCORE}
    # sep = tokenizer_config's sep_token <|end_of_sentence|>, as llama.cpp's converter writes it (seperator_token_id)
    assert v.special_ids == {"bos": 1, "eos": 2, "unk": 0, "sep": 4, "pad": 0}
    assert v.chat_template and v.chat_template.startswith("{%- if add_generation_prompt")


def test_upstream_types_without_config(spm_dirs, tmp_path):
    """No tokenizer_config: the model's own types (UNKNOWN <unk>, CONTROL <s>) and scores stay."""
    d = copy_dir(spm_dirs["tokenizer.model"], tmp_path / "bare", skip=("tokenizer_config.json",))
    v = build_vocab(find_tokenizer(d), BASE)
    assert v.types[:6] == [UNKNOWN, CONTROL, CONTROL, CONTROL, CONTROL, USER_DEFINED]
    assert v.scores[:6] == [0.0] * 6
    assert "[PAD" not in "".join(v.tokens)
    assert v.add_bos is None and v.add_space_prefix is False  # sp normalizer: add_dummy_prefix false
    assert v.special_ids == {}
    with pytest.raises(SmtError, match="vocab_size=599"):
        build_vocab(find_tokenizer(d), BASE - 1)


def test_added_tokens_json_and_eos_override(spm_dirs, tmp_path):
    d = copy_dir(spm_dirs["tokenizer.model"], tmp_path / "legacy")
    (d / "added_tokens.json").write_text(json.dumps({"<extra_0>": 603}))
    src = find_tokenizer(d)
    assert d / "added_tokens.json" in src.files
    v = build_spm_vocab(src, VOCAB, eos_token="<|end_of_sentence|>", eot_token="</s>")
    assert (v.tokens[603], v.types[603], v.scores[603]) == ("<extra_0>", USER_DEFINED, ADDED_SCORE)
    assert v.special_ids["eos"] == 4 and v.special_ids["eot"] == 2
    with pytest.raises(SmtError, match="eos_token"):
        build_spm_vocab(src, VOCAB, eos_token="<|nope|>")
    with pytest.raises(SmtError, match="vocab_size=602"):
        build_spm_vocab(src, 602)


def test_add_space_prefix_rule(spm_dirs, tmp_path):
    """tokenizer_config add_prefix_space wins (upstream's ERNIE rule); else tokenizer.json; else the model."""
    d = copy_dir(spm_dirs["both"], tmp_path / "prefix")
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["add_prefix_space"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert build_vocab(find_tokenizer(d), VOCAB).add_space_prefix is True
    del config["add_prefix_space"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert build_vocab(find_tokenizer(d), VOCAB).add_space_prefix is False  # Metaspace prepend_scheme "never"
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"]["prepend_scheme"] = "first"
    (d / "tokenizer.json").write_text(json.dumps(data))
    assert build_vocab(find_tokenizer(d), VOCAB).add_space_prefix is True
    (d / "tokenizer.json").unlink()
    assert build_vocab(find_tokenizer(d), VOCAB).add_space_prefix is False  # model: add_dummy_prefix false
    prefixed = tmp_path / "prefixed"
    build_spm_tokenizer(prefixed, layout="tokenizer.model", add_prefix_space=True)
    config = json.loads((prefixed / "tokenizer_config.json").read_text())
    del config["add_prefix_space"]
    (prefixed / "tokenizer_config.json").write_text(json.dumps(config))
    assert build_vocab(find_tokenizer(prefixed), VOCAB).add_space_prefix is True


def test_model_and_json_must_agree(spm_dirs, tmp_path):
    d = copy_dir(spm_dirs["both"], tmp_path / "disagree")
    data = json.loads((d / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = next(t for t, i in vocab.items() if i == 300), next(t for t, i in vocab.items() if i == 301)
    vocab[a], vocab[b] = 301, 300
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    with pytest.raises(SmtError, match=r"tokenizer\.json: model\.vocab: id 300"):
        build_vocab(find_tokenizer(d), VOCAB)
    shutil.copy(spm_dirs["both"] / "tokenizer.json", d / "tokenizer.json")
    (d / "tokenizer.model").write_bytes(train_spm(vocab_size=500))
    with pytest.raises(SmtError, match="pieces but tokenizer.model has"):
        build_vocab(find_tokenizer(d), VOCAB)


def test_unigram_tokenizer_json(spm_dirs, tmp_path):
    """A Unigram tokenizer.json carries its scores; types come from unk_id, byte pieces and added tokens."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((spm_dirs["both"] / "tokenizer.model").read_bytes())
    data = json.loads((spm_dirs["both"] / "tokenizer.json").read_text())
    data["model"] = {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                     "vocab": [[p.piece, p.score] for p in proto.pieces]}
    d = copy_dir(spm_dirs["tokenizer.json"], tmp_path / "unigram")
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    assert build_vocab(find_tokenizer(d), VOCAB) == build_vocab(find_tokenizer(spm_dirs["tokenizer.model"]), VOCAB)


def test_write_vocab_round_trips_through_gguf(spm_dirs, tmp_path):
    v = build_vocab(find_tokenizer(spm_dirs["both"]), VOCAB)
    path = tmp_path / "vocab.gguf"
    write_spm_gguf(v, path)
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.pre"].contents() == "default"
    assert fields["tokenizer.ggml.tokens"].contents() == v.tokens
    assert fields["tokenizer.ggml.scores"].contents() == pytest.approx(v.scores)
    assert fields["tokenizer.ggml.token_type"].contents() == v.types
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is False
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert fields["tokenizer.ggml.unknown_token_id"].contents() == 0
    assert fields["tokenizer.ggml.padding_token_id"].contents() == 0
    assert "tokenizer.ggml.merges" not in fields


# ---------------------------------------------------------------- runtime export vs transformers


def test_transformers_loads_fixture_as_paddleocr(hf_tok, spm_dirs):
    assert type(hf_tok).__name__ == "LlamaTokenizer"
    assert hf_tok.image_token == "<|IMAGE_PLACEHOLDER|>" and hf_tok.image_token_id == 600
    assert hf_tok.encode("hi there") == hf_tok.encode("hi there", add_special_tokens=False)  # no BOS (ERNIE)
    text = hf_tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR:"}]}], tokenize=False,
        add_generation_prompt=True)
    assert text == "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:\nAssistant:\n"
    for layout in ("tokenizer.model", "tokenizer.json"):
        import transformers

        other = transformers.AutoTokenizer.from_pretrained(str(spm_dirs[layout]))
        assert [other.encode(t) for t in TRICKY] == [hf_tok.encode(t) for t in TRICKY], layout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_runtime_matches_transformers(bundles, hf_tok, layout):
    rt = RuntimeTokenizer(bundles[layout])
    assert {p.name for p in bundles[layout].iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                          "chat_template.jinja"}
    for text in TRICKY:
        ids = rt.encode(text)
        assert ids == hf_tok.encode(text), text
        assert rt.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True), text
        assert rt.decode(ids, skip_special=False) == hf_tok.decode(ids, skip_special_tokens=False), text
        assert rt.decode(ids, skip_special=False) == text, text
    assert rt.special_tokens >= set(PADDLEOCR_SPECIALS) | {"<s>", "</s>", "<unk>"}
    assert "<think>" not in rt.special_tokens and rt.token_id("<think>") == 5
    assert [rt.token_id(s) for s in PADDLEOCR_SPECIALS] == [IDS[s] for s in PADDLEOCR_SPECIALS]
    assert rt.encode(PROMPT)[:2] == [3, hf_tok.encode("User")[0]]  # no BOS in front of the template's cls
    assert rt.vocab_size == 603


def test_runtime_bos_follows_post_processor(spm_dirs, tmp_path, hf_tok):
    """A checkpoint that asks for BOS gets it from the exported post-processor, like transformers."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "bos"
    build_spm_tokenizer(d, layout="both", add_bos_token=True, user_defined=["<think>"])
    hf = transformers.AutoTokenizer.from_pretrained(str(d))
    export_runtime_tokenizer(find_tokenizer(d), tmp_path / "out")
    rt = RuntimeTokenizer(tmp_path / "out")
    assert rt.encode("Hello world") == hf.encode("Hello world") == [1, *hf_tok.encode("Hello world")]
    assert rt.encode("Hello world", add_special=False) == hf_tok.encode("Hello world")
    assert build_vocab(find_tokenizer(d), VOCAB).add_bos is True


def test_export_from_model_without_transformers_fails_clearly(spm_dirs, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("transformers hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(SmtError, match="needs transformers"):
        export_runtime_tokenizer(find_tokenizer(spm_dirs["tokenizer.model"]), tmp_path / "a")
    export_runtime_tokenizer(find_tokenizer(spm_dirs["both"]), tmp_path / "b")  # falls back to copying
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (spm_dirs["both"] / "tokenizer.json").read_text()


# ---------------------------------------------------------------- llama.cpp


def write_spm_gguf(vocab, path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tokenizer-only")
    write_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("layout", ["tokenizer.model", "tokenizer.json"])
def test_llama_cpp_tokenizes_like_transformers(spm_dirs, hf_tok, tmp_path, layout):
    vocab = build_vocab(find_tokenizer(spm_dirs[layout]), VOCAB)
    path = tmp_path / "vocab.gguf"
    write_spm_gguf(vocab, path)
    llama_cpp, model = llama_vocab_only(path)
    try:
        lv = llama_cpp.llama_model_get_vocab(model)
        assert llama_cpp.llama_vocab_type(lv) == llama_cpp.LLAMA_VOCAB_TYPE_SPM
        assert llama_cpp.llama_vocab_n_tokens(lv) == VOCAB
        assert (llama_cpp.llama_vocab_bos(lv), llama_cpp.llama_vocab_eos(lv)) == (1, 2)
        assert not llama_cpp.llama_vocab_get_add_bos(lv)
        mismatches = {t: (llama_tokenize(llama_cpp, lv, t), hf_tok.encode(t)) for t in TRICKY
                      if llama_tokenize(llama_cpp, lv, t) != hf_tok.encode(t)}
        assert not mismatches
        for text in TRICKY:
            assert llama_detokenize(llama_cpp, lv, hf_tok.encode(text)) == text, text
    finally:
        llama_cpp.llama_model_free(model)
