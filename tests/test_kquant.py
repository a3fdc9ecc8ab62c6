"""K-quant GGUFs through llama.cpp's quantiser (converters/kquant.py): the per-tensor mixture llama.cpp chooses,
per-tensor overrides, the error of the dequantised weights against the F16 source, the short-row fallback, and
the one-line errors. Sources are random `qwen3vl` GGUFs (testing/random_gguf.py) with rows of 256 (one K-quant
super-block) unless a test wants the fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from smt_convert.converters import kquant as K
from smt_convert.runtime.errors import SmtError
from smt_convert.testing.random_gguf import byte_level_tokens, write_random_qwen3vl

Q = gguf.GGMLQuantizationType

SIZES = dict(hidden=256, n_head=4, n_kv=2, head_dim=64, ff=512, vocab=512)  # every row 256 or 512 wide
N_LAYER = 8
# llama.cpp's use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2; for n = 8: layers 0, 3, 6, 7.
MORE_BITS_8 = {0, 3, 6, 7}

# Relative Frobenius error |dequant(W) - W| / |W| of N(0, 0.2^2) weights, measured over every matrix of the
# 8-layer model (llama-cpp-python 0.3.36): Q4_K 0.0710-0.0717, Q5_K 0.0360-0.0363, Q6_K 0.0176-0.0179 (each bit
# halves it, as for a uniform quantiser); gguf-py's Q4_0 on the same weights 0.086. The bounds leave ~20% for other
# seeds/builds, and the lower bound fails if a tensor were copied through unquantised.
Q4_K_MAX, Q4_K_MIN, Q6_K_MAX = 0.085, 0.05, 0.022




def f16_gguf(path: Path, sizes=SIZES, n_layer: int = N_LAYER, tied: bool = False) -> Path:
    return write_random_qwen3vl(path, sizes, n_layer, "f16", tied=tied, tokens=byte_level_tokens(sizes["vocab"]))


def tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def as_float(t) -> np.ndarray:
    """A GGUF tensor as float32 [rows, cols] (gguf-py dequantises every K-quant)."""
    shape = [int(n) for n in reversed(t.shape)]
    if t.tensor_type in (Q.F32, Q.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return dequantize(t.data, t.tensor_type).reshape(shape)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def source(tmp_path_factory, llama_cpp) -> Path:
    return f16_gguf(tmp_path_factory.mktemp("kquant") / "src-f16.gguf")


@pytest.fixture(scope="module")
def q4_k_m(source, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("kquant") / "q4_k_m.gguf"
    K.quantize_gguf(source, dst, "q4_k_m")
    return dst


# ---- the preset table ------------------------------------------------------------------------------------------


@pytest.mark.llama_cpp
def test_presets_read_the_binding_and_match_general_file_type(llama_cpp):
    for name, p in K.KQUANT_PRESETS.items():
        assert name == name.lower()
        assert p.ftype == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}") == int(p.file_type), name
    # ggml type numbers: gguf-py's enum (used for tt_overrides) is the binding's (which lacks BF16)
    for t in K.OVERRIDE_TYPES - {Q.BF16}:
        assert int(t) == getattr(llama_cpp, f"GGML_TYPE_{t.name}")


@pytest.mark.llama_cpp
def test_every_preset_quantises_without_an_importance_matrix(tmp_path, llama_cpp):
    src = f16_gguf(tmp_path / "src.gguf", n_layer=2)
    for name, p in K.KQUANT_PRESETS.items():
        dst = tmp_path / f"{name}.gguf"
        K.quantize_gguf(src, dst, name)
        reader = gguf.GGUFReader(str(dst))
        assert int(reader.fields["general.file_type"].contents()) == int(p.file_type), name
        assert Q[K.gguf_tensor_types(dst)["blk.0.ffn_gate.weight"]] == p.base_type, name


# ---- (a) the mixture llama.cpp chooses, and the file loads ------------------------------------------------------


@pytest.mark.llama_cpp
def test_q4_k_m_types_follow_llama_cpp_and_the_file_loads(q4_k_m, source, llama_cpp):
    types = K.gguf_tensor_types(q4_k_m)
    assert set(types) == set(K.gguf_tensor_types(source))
    for name, t in types.items():
        if len(tensors(source)[name].shape) == 1:
            assert t == "F32", name
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"  # untied: the preset's base type, no rule of its own
    for i in range(N_LAYER):
        more = "Q6_K" if i in MORE_BITS_8 else "Q4_K"
        assert types[f"blk.{i}.attn_v.weight"] == more, i
        assert types[f"blk.{i}.ffn_down.weight"] == more, i
        for kind in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert types[f"blk.{i}.{kind}.weight"] == "Q4_K", (i, kind)

    llm = llama_cpp.Llama(model_path=str(q4_k_m), vocab_only=False, n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval([1, 2, 3])
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        assert np.isfinite(logits).all() and logits.std() > 0
    finally:
        llm.close()


@pytest.mark.llama_cpp
def test_tied_embedding_gets_the_output_type(tmp_path, llama_cpp):
    src = f16_gguf(tmp_path / "src.gguf", n_layer=2, tied=True)
    K.quantize_gguf(src, tmp_path / "q.gguf", "q4_k_m")
    assert K.gguf_tensor_types(tmp_path / "q.gguf")["token_embd.weight"] == "Q6_K"


@pytest.mark.llama_cpp
def test_rows_not_a_multiple_of_256_fall_back_as_llama_cpp_does(tmp_path, llama_cpp):
    """Rows of 320 (= 10 x 32): Q4_K -> Q5_0, Q6_K -> Q8_0, output Q8_0; attn_output's rows are still 256 wide."""
    sizes = dict(SIZES, hidden=320, ff=640)
    src = f16_gguf(tmp_path / "src.gguf", sizes, n_layer=2)
    K.quantize_gguf(src, tmp_path / "q.gguf", "q4_k_m")
    types = K.gguf_tensor_types(tmp_path / "q.gguf")
    assert types["output.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "Q5_0"
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_down.weight"] == "Q5_0"   # Q4_K, falling back
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"   # Q6_K (use_more_bits(1, 2))
    assert types["blk.0.attn_output.weight"] == "Q4_K"
    llama_cpp.Llama(model_path=str(tmp_path / "q.gguf"), n_ctx=64, verbose=False).close()


# ---- (b) per-tensor overrides -----------------------------------------------------------------------------------


@pytest.mark.llama_cpp
def test_tensor_type_overrides_are_honoured_first_match_wins(source, tmp_path, llama_cpp):
    dst = tmp_path / "q.gguf"
    K.quantize_gguf(source, dst, "q4_k_m", tensor_types={
        r"ffn_gate\.weight": "q8_0",
        r"blk\.1\.attn_q\.": "f16",
        r"attn_(q|k)\.": "q5_k",          # blk.1.attn_q matched the line above first
        r"attn_norm": "q8_0",              # 1-D: out of reach, stays F32
    })
    types = K.gguf_tensor_types(dst)
    for i in range(N_LAYER):
        assert types[f"blk.{i}.ffn_gate.weight"] == "Q8_0"
        assert types[f"blk.{i}.attn_k.weight"] == "Q5_K"
        assert types[f"blk.{i}.attn_q.weight"] == ("F16" if i == 1 else "Q5_K")
        assert types[f"blk.{i}.attn_norm.weight"] == "F32"
        assert types[f"blk.{i}.ffn_up.weight"] == "Q4_K"   # untouched tensors keep the mixture
    assert types["output.weight"] == "Q6_K"
    src, out = tensors(source), tensors(dst)
    assert rel_error(as_float(out["blk.0.ffn_gate.weight"]), as_float(src["blk.0.ffn_gate.weight"])) < 0.01
    assert np.array_equal(as_float(out["blk.1.attn_q.weight"]), as_float(src["blk.1.attn_q.weight"]))


@pytest.mark.llama_cpp
def test_bad_override_is_one_line_before_llama_cpp_runs(source, tmp_path, llama_cpp):
    for overrides, text in [({"ffn_(": "q8_0"}, "not a regular expression"), ({"ffn": "iq2_xxs"}, "not one of"),
                            ({"ffn": "q9_k"}, "not one of")]:
        with pytest.raises(SmtError, match=text) as err:
            K.quantize_gguf(source, tmp_path / "q.gguf", "q4_k_m", tensor_types=overrides)
        assert "\n" not in str(err.value) and str(err.value).startswith("--tensor-type: ")
    assert list(tmp_path.iterdir()) == []


# ---- (c) dequantised weights against the F16 source -------------------------------------------------------------


@pytest.mark.llama_cpp
def test_dequantised_k_quants_are_close_to_the_f16_source(q4_k_m, source):
    src, out = tensors(source), tensors(q4_k_m)
    errors: dict[str, list[float]] = {}
    for name, t in out.items():
        if len(t.shape) < 2:
            continue
        errors.setdefault(Q(t.tensor_type).name, []).append(rel_error(as_float(t), as_float(src[name])))
    assert set(errors) == {"Q4_K", "Q6_K"}
    assert Q4_K_MIN < min(errors["Q4_K"]) and max(errors["Q4_K"]) < Q4_K_MAX, errors["Q4_K"]
    assert max(errors["Q6_K"]) < Q6_K_MAX, errors["Q6_K"]
    assert max(errors["Q6_K"]) < min(errors["Q4_K"]) / 3
    # llama.cpp's Q4_K (4.5 bits per weight) beats gguf-py's Q4_0 (4.5 too) on the same matrix
    w = as_float(src["blk.2.ffn_gate.weight"])
    q4_0 = rel_error(dequantize(quantize(w, Q.Q4_0), Q.Q4_0).reshape(w.shape), w)
    assert rel_error(as_float(out["blk.2.ffn_gate.weight"]), w) < 0.9 * q4_0


# ---- logs and failures ------------------------------------------------------------------------------------------


@pytest.mark.llama_cpp
def test_llama_cpp_logs_are_silenced_or_handed_to_log(source, tmp_path, capfd, llama_cpp):
    K.quantize_gguf(source, tmp_path / "a.gguf", "q4_k_m")
    assert capfd.readouterr() == ("", "")
    lines = []
    K.quantize_gguf(source, tmp_path / "b.gguf", "q4_k_m", log=lines.append)
    assert capfd.readouterr() == ("", "")
    assert any("llama_model_quantize" in line and "quant size" in line for line in lines)
    assert all("\n" not in line for line in lines)


@pytest.mark.llama_cpp
def test_llama_cpp_failure_names_the_file_and_the_reason(tmp_path, llama_cpp):
    bad = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(bad), "no-such-arch")
    w.add_tensor("token_embd.weight", np.zeros((4, 256), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SmtError) as err:
        K.quantize_gguf(bad, tmp_path / "q.gguf", "q4_k_m")
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and "unknown model architecture" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]  # no output, no partial file


@pytest.mark.llama_cpp
def test_a_quantised_source_is_refused(tmp_path, llama_cpp):
    src = write_random_qwen3vl(tmp_path / "q8.gguf", SIZES, 1, "q8_0")
    with pytest.raises(SmtError, match=r"q8\.gguf: tensor .* is Q8_0; K-quants are made from an f32/f16/bf16"):
        K.quantize_gguf(src, tmp_path / "q.gguf", "q4_k_m")


# ---- (d) without the extra ------------------------------------------------------------------------------------


def test_missing_llama_cpp_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
    expected = ("--outtype q4_k_m: needs llama.cpp's quantiser (pip install 'smt-convert[kquants]', which builds "
                "llama-cpp-python)")
    with pytest.raises(SmtError) as err:
        K.quantize_gguf(tmp_path / "src.gguf", tmp_path / "dst.gguf", "q4_k_m")
    assert str(err.value) == expected
    with pytest.raises(SmtError, match=r"^--outtype q6_k: needs llama.cpp's quantiser \(pip install"):
        K.KQUANT_PRESETS["q6_k"].ftype
    assert K.KQUANT_PRESETS["q6_k"].file_type == gguf.LlamaFileType.MOSTLY_Q6_K  # the table itself needs no binding


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(SmtError, match=r"^--outtype q4_k_x: not a K-quant preset \(q2_k, .*q4_k_m.*iq4_xs\)$"):
        K.quantize_gguf(tmp_path / "src.gguf", tmp_path / "dst.gguf", "q4_k_x")
