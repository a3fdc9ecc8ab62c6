"""Tokenizer discovery, GGUF vocabulary, and runtime export against transformers (and llama.cpp if built)."""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import gguf
import pytest

from smt_convert.converters.tokenizer import (
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    build_bpe_vocab,
    export_runtime_tokenizer,
    find_tokenizer,
    write_vocab,
)
from smt_convert.runtime.errors import SmtError
from smt_convert.runtime.tokenizer import RuntimeTokenizer
from smt_convert.testing.tokenizers import QWEN3_ASR_SPECIALS, build_qwen_bpe_tokenizer

TRICKY = [
    "Hello world",
    "  two  spaces,   three   and trailing  ",
    "line\n\nblank\n\n\n\nmany\r\nwindows\n",
    "\t tabs\t\tand  \n  mixed \n",
    "digits 1234567890 3.14 1,000,000 and 2024-05-01",
    "我想在苹果工作。今天天气很好！",
    "日本語とカタカナ、한국어",
    "emoji 🚀🦙🦙 👍🏽 ✅ and café naïve",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|audio_start|><|audio_pad|><|audio_pad|><|audio_end|>language English<asr_text>hello",
    "text<|endoftext|>after <think>inline</think>",
    "don't you'll WE'VE it's",
    "def f(x):\n    return x**2  # square\n",
    "",
]
NON_NFC = "cafe\u0301 and A\u030a"  # decomposed accents: the HF tokenizer NFC-normalizes them


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory) -> dict[str, Path]:
    """One trained tokenizer per layout (training is deterministic, so all layouts share ids)."""
    root = tmp_path_factory.mktemp("tok")
    dirs = {}
    for layout in ("tokenizer.json", "vocab+merges", "both"):
        d = root / layout.replace("+", "_")
        build_qwen_bpe_tokenizer(d, layout=layout, user_defined=["<think>"])
        dirs[layout] = d
    return dirs


def copy_dir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy a fixture dir, leaving out some files to steer discovery."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name not in skip:
            shutil.copy(p, dst / p.name)
    return dst


# ---------------------------------------------------------------- discovery


def test_discovery_prefers_tokenizer_json_then_vocab_merges_then_model(fixture_dirs, tmp_path):
    both = fixture_dirs["both"]
    assert find_tokenizer(both).kind == "tokenizer.json"
    no_json = copy_dir(both, tmp_path / "no_json", skip=("tokenizer.json",))
    src = find_tokenizer(no_json)
    assert src.kind == "vocab.json+merges.txt"
    assert {p.name for p in src.files} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    spm = tmp_path / "spm"
    spm.mkdir()
    (spm / "tokenizer.model").write_bytes(b"not really sentencepiece")
    src = find_tokenizer(spm)
    assert src.kind == "tokenizer.model" and src.config == {}
    with pytest.raises(SmtError, match="SentencePiece"):
        build_bpe_vocab(src, 512, "qwen2")


def test_override_dir_is_searched_first_and_falls_back(fixture_dirs, tmp_path):
    ckpt = copy_dir(fixture_dirs["vocab+merges"], tmp_path / "ckpt")
    override = fixture_dirs["tokenizer.json"]
    src = find_tokenizer(ckpt, override)
    assert src.directory == override and src.kind == "tokenizer.json"
    empty = tmp_path / "empty_override"
    empty.mkdir()
    src = find_tokenizer(ckpt, empty)
    assert src.directory == ckpt and src.kind == "vocab.json+merges.txt"


def test_auto_tokenizer_fallback(fixture_dirs, tmp_path, monkeypatch):
    """No known files: AutoTokenizer is asked; its fast backend gives the same vocab as tokenizer.json."""
    transformers = pytest.importorskip("transformers")
    real = transformers.AutoTokenizer.from_pretrained
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(fixture_dirs["tokenizer.json"] / "tokenizer_config.json", odd / "tokenizer_config.json")
    calls = []

    def fake_from_pretrained(path, **kwargs):
        calls.append((Path(path), kwargs))
        if Path(path) != odd:
            raise OSError("nothing here")
        return real(str(fixture_dirs["tokenizer.json"]))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    src = find_tokenizer(odd)
    assert src.kind == "AutoTokenizer" and calls[0][1] == {"trust_remote_code": False}
    ref = build_bpe_vocab(find_tokenizer(fixture_dirs["tokenizer.json"]), 512, "qwen2")
    assert build_bpe_vocab(src, 512, "qwen2") == ref
    out = tmp_path / "out"
    export_runtime_tokenizer(src, out)
    assert RuntimeTokenizer(out).encode(TRICKY[8]) == RuntimeTokenizer(export_dir(fixture_dirs, "tokenizer.json", tmp_path)).encode(TRICKY[8])


class FakeSlowBpe:
    """Stands in for a slow (pure Python) transformers BPE tokenizer: get_vocab + bpe_ranks, no backend."""

    def __init__(self, directory: Path):
        data = json.loads((directory / "tokenizer.json").read_text())
        self.vocab = data["model"]["vocab"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        self.bpe_ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.added_tokens_decoder = {
            a["id"]: type("Tok", (), {"special": a["special"], "__str__": lambda s, c=a["content"]: c})()
            for a in data["added_tokens"]
        }

    def get_vocab(self) -> dict[str, int]:
        return {**self.vocab, **{str(t): i for i, t in self.added_tokens_decoder.items()}}


def test_auto_tokenizer_slow_fallback(fixture_dirs, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    odd = tmp_path / "slow"
    odd.mkdir()
    shutil.copy(fixture_dirs["tokenizer.json"] / "tokenizer_config.json", odd / "tokenizer_config.json")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, **kw: FakeSlowBpe(fixture_dirs["tokenizer.json"]))
    src = find_tokenizer(odd)
    ref = build_bpe_vocab(find_tokenizer(fixture_dirs["tokenizer.json"]), 512, "qwen2")
    got = build_bpe_vocab(src, 512, "qwen2")
    assert (got.tokens, got.types, got.merges, got.special_ids) == (ref.tokens, ref.types, ref.merges, ref.special_ids)
    with pytest.raises(SmtError, match="fast"):
        export_runtime_tokenizer(src, tmp_path / "out")


def test_chat_template_sources_in_order(fixture_dirs, tmp_path):
    d = copy_dir(fixture_dirs["tokenizer.json"], tmp_path / "ct")
    config = json.loads((d / "tokenizer_config.json").read_text())
    src = find_tokenizer(d)
    assert src.chat_template == config["chat_template"] and src.chat_template_file.name == "tokenizer_config.json"

    config["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert find_tokenizer(d).chat_template == "DEFAULT"

    (d / "chat_template.json").write_text(json.dumps({"chat_template": "FROM_JSON"}))
    src = find_tokenizer(d)
    assert src.chat_template == "FROM_JSON" and src.chat_template_file == d / "chat_template.json"
    assert d / "chat_template.json" in src.files

    (d / "chat_template.jinja").write_text("FROM_JINJA")
    assert find_tokenizer(d).chat_template == "FROM_JINJA"

    for name in ("chat_template.jinja", "chat_template.json"):
        (d / name).unlink()
    config["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SmtError, match=r"tokenizer_config\.json: chat_template: .*default"):
        find_tokenizer(d)

    del config["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert find_tokenizer(d).chat_template is None


def test_chat_template_from_checkpoint_when_override_has_none(fixture_dirs, tmp_path):
    override = copy_dir(fixture_dirs["tokenizer.json"], tmp_path / "tok", skip=("tokenizer_config.json",))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "chat_template.jinja").write_text("CKPT")
    src = find_tokenizer(ckpt, override)
    assert src.directory == override and src.chat_template == "CKPT" and src.config == {}


def test_nothing_found_error_lists_files_and_dirs(tmp_path):
    ckpt, override = tmp_path / "ckpt", tmp_path / "override"
    ckpt.mkdir()
    with pytest.raises(SmtError) as info:
        find_tokenizer(ckpt, override)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "AutoTokenizer",
                   str(ckpt), str(override), "--tokenizer DIR"):
        assert needle in message, needle


def test_broken_json_names_the_file(fixture_dirs, tmp_path):
    d = copy_dir(fixture_dirs["tokenizer.json"], tmp_path / "broken")
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(SmtError, match="tokenizer_config.json"):
        find_tokenizer(d)


# ---------------------------------------------------------------- GGUF vocabulary


def test_vocab_identical_from_both_layouts(fixture_dirs):
    a = build_bpe_vocab(find_tokenizer(fixture_dirs["tokenizer.json"]), 512, "qwen2")
    b = build_bpe_vocab(find_tokenizer(fixture_dirs["vocab+merges"]), 512, "qwen2")
    assert a == b
    assert not any(m.startswith("#version") for m in a.merges)
    assert all(len(m.split(" ")) == 2 for m in a.merges)


def test_vocab_padding_types_and_special_ids(fixture_dirs):
    ids = {s: i for s, i in zip([*QWEN3_ASR_SPECIALS, "<think>"], range(400, 408))}
    v = build_bpe_vocab(find_tokenizer(fixture_dirs["both"]), 512, "qwen2", eot_token="<|im_end|>")
    assert (v.model, v.pre, v.scores, v.add_bos) == ("gpt2", "qwen2", None, False)
    assert len(v.tokens) == len(v.types) == 512
    for s in QWEN3_ASR_SPECIALS:
        assert v.tokens[ids[s]] == s and v.types[ids[s]] == CONTROL, s
    assert v.types[ids["<think>"]] == USER_DEFINED
    assert all(t == NORMAL for t in v.types[:400])
    assert v.tokens[408:] == [f"[PAD{i}]" for i in range(408, 512)]
    assert set(v.types[408:]) == {UNUSED}
    assert v.special_ids == {"eos": ids["<|im_end|>"], "eot": ids["<|im_end|>"], "pad": ids["<|endoftext|>"]}
    assert "bos" not in v.special_ids
    assert v.chat_template and "<|im_start|>" in v.chat_template


def test_vocab_exact_size_and_too_small(fixture_dirs):
    src = find_tokenizer(fixture_dirs["tokenizer.json"])
    assert "[PAD" not in "".join(build_bpe_vocab(src, 408, "qwen35").tokens)
    with pytest.raises(SmtError, match="vocab_size=407"):
        build_bpe_vocab(src, 407, "qwen2")


def test_eos_override_and_missing_tokens(fixture_dirs):
    src = find_tokenizer(fixture_dirs["tokenizer.json"])
    v = build_bpe_vocab(src, 512, "qwen2", eot_token="<|not_there|>", eos_token="<|endoftext|>")
    assert v.special_ids["eos"] == 400 and "eot" not in v.special_ids
    with pytest.raises(SmtError, match="eos_token"):
        build_bpe_vocab(src, 512, "qwen2", eos_token="<|nope|>")


def test_merges_as_pairs_or_strings(fixture_dirs, tmp_path):
    ref = build_bpe_vocab(find_tokenizer(fixture_dirs["tokenizer.json"]), 512, "qwen2")
    data = json.loads((fixture_dirs["tokenizer.json"] / "tokenizer.json").read_text())
    for form in ("pairs", "strings"):
        d = copy_dir(fixture_dirs["tokenizer.json"], tmp_path / form)
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        data["model"]["merges"] = [m.split(" ") for m in merges] if form == "pairs" else merges
        (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
        assert build_bpe_vocab(find_tokenizer(d), 512, "qwen2") == ref, form


def test_write_vocab_round_trips_through_gguf(fixture_dirs, tmp_path):
    v = build_bpe_vocab(find_tokenizer(fixture_dirs["tokenizer.json"]), 512, "qwen2", eot_token="<|im_end|>")
    path = tmp_path / "vocab.gguf"
    write_vocab_only_gguf(v, path)
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert fields["tokenizer.ggml.tokens"].contents() == v.tokens
    assert fields["tokenizer.ggml.token_type"].contents() == v.types
    assert fields["tokenizer.ggml.merges"].contents() == v.merges
    assert fields["tokenizer.ggml.eos_token_id"].contents() == v.special_ids["eos"]
    assert fields["tokenizer.ggml.eot_token_id"].contents() == v.special_ids["eot"]
    assert fields["tokenizer.ggml.padding_token_id"].contents() == v.special_ids["pad"]
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "tokenizer.ggml.bos_token_id" not in fields
    assert fields["tokenizer.chat_template"].contents() == v.chat_template


# ---------------------------------------------------------------- runtime export vs transformers


def export_dir(fixture_dirs, layout: str, tmp_path: Path) -> Path:
    """Export the runtime tokenizer of one fixture layout into a fresh bundle dir."""
    out = tmp_path / f"bundle_{layout.replace('+', '_')}"
    if not out.exists():
        export_runtime_tokenizer(find_tokenizer(fixture_dirs[layout]), out)
    return out


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab+merges"])
def test_runtime_matches_transformers(fixture_dirs, tmp_path, layout):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(fixture_dirs[layout]))
    written = export_runtime_tokenizer(find_tokenizer(fixture_dirs[layout]), tmp_path / "bundle")
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    rt = RuntimeTokenizer(tmp_path / "bundle")
    for text in [*TRICKY, NON_NFC]:
        ids = rt.encode(text)
        assert ids == hf.encode(text), text
        assert rt.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
        assert rt.decode(ids, skip_special=False) == hf.decode(ids, skip_special_tokens=False), text
        if text != NON_NFC:
            assert rt.decode(ids, skip_special=False) == text
    assert rt.encode("<|im_start|>user\nhi<|im_end|>")[0] == rt.token_id("<|im_start|>") == 401
    assert rt.decode(rt.encode("<|im_start|>user\nhi<|im_end|>")) == "user\nhi"


def test_runtime_special_tokens_and_token_id(fixture_dirs, tmp_path):
    rt = RuntimeTokenizer(export_dir(fixture_dirs, "vocab+merges", tmp_path))
    assert rt.special_tokens == set(QWEN3_ASR_SPECIALS)
    assert [rt.token_id(s) for s in QWEN3_ASR_SPECIALS] == list(range(400, 407))
    assert rt.token_id("<think>") == 407
    assert rt.has_token("<|im_end|>") and not rt.has_token("<|video_start|>")
    with pytest.raises(SmtError, match="not a token"):
        rt.token_id("<|video_start|>")
    with pytest.raises(SmtError, match="not a token"):
        rt.token_id("hello world, this is several tokens")
    # "Ġt" is a vocab entry (byte-level form of " t"), but the text "Ġt" does not encode to it.
    assert rt._tok.token_to_id("Ġt") is not None
    with pytest.raises(SmtError, match="one token"):
        rt.token_id("Ġt")


def test_runtime_missing_bundle_tokenizer(tmp_path):
    with pytest.raises(SmtError, match="tokenizer.json"):
        RuntimeTokenizer(tmp_path)


def test_export_vocab_merges_with_gap_in_added_ids_fails_clearly(fixture_dirs, tmp_path):
    d = copy_dir(fixture_dirs["vocab+merges"], tmp_path / "gap")
    config = json.loads((d / "tokenizer_config.json").read_text())
    entry = config["added_tokens_decoder"].pop("407")
    config["added_tokens_decoder"]["450"] = entry
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SmtError, match="added_tokens_decoder"):
        export_runtime_tokenizer(find_tokenizer(d), tmp_path / "out")


def test_runtime_imports_no_torch_or_transformers():
    import subprocess
    import sys

    code = (
        "import sys, smt_convert.runtime.tokenizer\n"
        "bad = [m for m in ('torch', 'transformers', 'sentencepiece') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- llama.cpp (when built)


def write_vocab_only_gguf(vocab, path: Path) -> None:
    """A GGUF with metadata and tokenizer only: enough for llama.cpp's vocab_only loading."""
    writer = gguf.GGUFWriter(str(path), arch="qwen3vl")
    writer.add_name("tokenizer-only")
    write_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_vocab_only(path: Path):
    """Load with llama.cpp's vocab_only flag via the low-level API (Llama() would also build a context)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (still compiling?)")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, "llama.cpp could not load the vocab-only GGUF"
    return llama_cpp, model


def llama_tokenize(llama_cpp, vocab, text: str) -> list[int]:
    """llama_tokenize(add_special=False, parse_special=True), growing the buffer as asked."""
    data = text.encode("utf-8")
    n = max(16, len(data) * 2 + 8)
    buf = (llama_cpp.llama_token * n)()
    got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n, False, True)
    assert got >= 0, f"buffer too small ({got})"
    return list(buf[:got])


def llama_detokenize(llama_cpp, vocab, ids: list[int]) -> str:
    """llama_detokenize with special tokens rendered, so the text should round-trip."""
    n = 64 + 32 * len(ids)
    buf = ctypes.create_string_buffer(n)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    got = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, n, False, True)
    assert got >= 0, f"buffer too small ({got})"
    return buf.raw[:got].decode("utf-8")


def test_llama_cpp_tokenizes_like_transformers(fixture_dirs, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "vocab.gguf"
    vocab = build_bpe_vocab(find_tokenizer(fixture_dirs["vocab+merges"]), 512, "qwen2", eot_token="<|im_end|>")
    write_vocab_only_gguf(vocab, path)
    llama_cpp, model = llama_vocab_only(path)
    try:
        lv = llama_cpp.llama_model_get_vocab(model)
        assert llama_cpp.llama_vocab_n_tokens(lv) == 512
        assert llama_cpp.llama_vocab_eos(lv) == vocab.special_ids["eos"]
        assert llama_cpp.llama_vocab_eot(lv) == vocab.special_ids["eot"]
        assert not llama_cpp.llama_vocab_get_add_bos(lv)
        hf = transformers.AutoTokenizer.from_pretrained(str(fixture_dirs["vocab+merges"]))
        # NON_NFC is left out on purpose: llama.cpp does not apply the HF NFC normalizer.
        mismatches = {t: (llama_tokenize(llama_cpp, lv, t), hf.encode(t)) for t in TRICKY
                      if llama_tokenize(llama_cpp, lv, t) != hf.encode(t)}
        assert not mismatches
        for text in TRICKY:
            assert llama_detokenize(llama_cpp, lv, hf.encode(text)) == text, text
        # No bos_token_id key: llama.cpp falls back to its gpt2 default (11), harmless only because add_bos is false.
        assert llama_cpp.llama_vocab_bos(lv) == vocab.special_ids.get("bos", 11)
    finally:
        llama_cpp.llama_model_free(model)
