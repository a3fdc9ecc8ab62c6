"""PaddleOCR-VL end to end: both checkpoint layouts (the original with custom-code auto_map that must never
run), SentencePiece tokenizer fallbacks, llama.cpp loading the GGUF, and the PaddleOCR-specific bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from smt_convert.testing.checkpoints import make_tiny_paddleocr_vl
from smt_convert.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pv")
    info = make_tiny_paddleocr_vl(root / "native")
    make_tiny_paddleocr_vl(root / "original", layout="original", auto_map=True)
    return root, info


@pytest.fixture(scope="module")
def native_bundle(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("pvb") / "native"
    result = invoke("-q", "paddleocr-vl", ckpts[0] / "native", out, "--outtype", "f32", "--image-size", "112")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_bundle_meets_the_board_contract(native_bundle):
    import onnxruntime as ort

    config = json.loads((native_bundle / "config.json").read_text())
    assert config["architectures"] == ["PaddleOCRVLForConditionalGeneration"]
    assert config["vision_model"]["input_size"] == 112 and config["text_model"]["hidden_size"] == 64
    pre = config["vision_preprocess"]
    assert pre["image_mean"] == [0.5] * 3 and abs(pre["rescale_factor"] - 1 / 255) < 1e-12
    session = ort.InferenceSession(str(native_bundle / config["vision_model"]["model_path"]))
    (inp,) = session.get_inputs()
    assert inp.shape == [1, 3, 112, 112]
    assert session.run(None, {inp.name: np.zeros((1, 3, 112, 112), np.float32)})[0].shape == (16, 64)
    manifest = manifest_of(native_bundle)
    assert manifest["verification"]["passed"] and manifest["text"]["vocab"]["model"] == "llama"
    rows = {(r["check"], r["metric"]): r["value"] for r in manifest["verification"]["rows"]}
    assert rows[("end to end", "greedy tokens agreeing")] == 1.0 and rows[("text logits", "nmse")] < 1e-6
    assert rows[("host preprocessing", "max abs vs HF processor")] <= 1e-5
    assert rows[("encoder", "rel max abs")] <= 1e-5
    encoder = manifest["encoders"][0]
    assert encoder["builder"].startswith("graph") and (native_bundle / encoder["data_file"]).is_file()


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_lossy_encoder_bundles_verify(ckpts, tmp_path, dtype):
    out = tmp_path / dtype
    result = invoke("-q", "paddleocr-vl", ckpts[0] / "native", out, "--outtype", "f16", "--onnx-dtype", dtype,
                    "--image-size", "112")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = manifest_of(out)
    rows = {(r["check"], r["metric"]): r for r in manifest["verification"]["rows"]}
    assert manifest["verification"]["passed"] and rows[("encoder", "cosine")]["ok"]
    assert manifest["encoders"][0]["dtype"] == dtype


def test_original_layout_with_custom_code_gives_the_same_gguf(ckpts, native_bundle, tmp_path):
    """The release layout (flat config, visual.* / mlp_AR.*, auto_map to code that exits if run) converts
    to exactly the native layout's tensors; unused weights are dropped and reported."""
    from gguf import GGUFReader

    hf = tmp_path / "hf"
    shutil.copytree(ckpts[0] / "original", hf)
    weights = load_file(str(hf / "model.safetensors"))
    weights["visual.vision_model.embeddings.packing_position_embedding.weight"] = np.zeros((8, 32), np.float32)
    weights["visual.vision_model.head.mlp.fc1.weight"] = np.zeros((4, 32), np.float32)
    import torch

    save_file({k: torch.as_tensor(v) for k, v in weights.items()}, str(hf / "model.safetensors"))
    out = tmp_path / "out"
    result = invoke("-q", "paddleocr-vl", hf, out, "--outtype", "f32", "--image-size", "112")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = manifest_of(out)
    assert manifest["source"]["layout"] == "original"
    assert set(manifest["dropped_tensors"]) == {"visual.vision_model.embeddings.packing_position_embedding.weight",
                                                "visual.vision_model.head.mlp.fc1.weight"}
    name = manifest["text"]["file"]
    a = {t.name: np.array(t.data) for t in GGUFReader(str(out / name)).tensors}
    b = {t.name: np.array(t.data) for t in GGUFReader(str(native_bundle / name)).tensors}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


TRICKY = ["OCR:", "  two  spaces", "line\n\nbreaks\n", "digits 1234567", "中文识别测试", "emoji 🙂 ok",
          "<|IMAGE_START|>x<|IMAGE_END|>", "User: hi\nAssistant:\n"]


def test_llama_cpp_tokenises_like_hf_and_matches_logits(native_bundle, ckpts):
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoTokenizer

    llm = llama_cpp.Llama(str(native_bundle / manifest_of(native_bundle)["text"]["file"]), n_ctx=256,
                          logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0)
    hf_tok = AutoTokenizer.from_pretrained(str(ckpts[0] / "native"))
    for text in TRICKY:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf_tok(text)["input_ids"], text
    tokens = llm.tokenize("<|begin_of_sentence|>User: OCR: 你好 123\nAssistant:\n".encode(), add_bos=False,
                          special=True)
    llm.eval(tokens)
    ours = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    with torch.no_grad():
        ref = ckpts[1]["model"](input_ids=torch.tensor([tokens])).logits[0].double().numpy()
    assert float(((ours - ref) ** 2).sum() / (ref ** 2).sum()) < 1e-6


@pytest.mark.parametrize("layout", ["tokenizer.model", "tokenizer.json"])
def test_tokenizer_fallbacks(tmp_path, layout):
    make_tiny_paddleocr_vl(tmp_path / "hf", tokenizer_layout=layout)
    listed = {"tokenizer.model": "tokenizer.model", "tokenizer.json": "tokenizer.json"}[layout]
    result = invoke("inspect", tmp_path / "hf", "--image-size", "56")
    assert result.exit_code == 0, result.stderr
    assert f"tokenizer    {listed}" in result.output
    out = tmp_path / "out"
    converted = invoke("-q", "paddleocr-vl", tmp_path / "hf", out, "--image-size", "56", "--outtype", "q8_0")
    assert converted.exit_code == 0, converted.output + converted.stderr


def test_non_square_grid_the_board_would_guess_wrong(ckpts, tmp_path):
    out = tmp_path / "ns"
    result = invoke("paddleocr-vl", ckpts[0] / "native", out, "--image-size", "84x56", "--outtype", "f32")
    assert result.exit_code == 0, result.output + result.stderr
    assert "the board guesses (2, 3)" in result.stderr
    pre = manifest_of(out)["preprocessing"]
    assert pre["grid"] == [3, 2] and pre["board_guess_matches"] is False
    config = json.loads((out / "config.json").read_text())
    assert (config["vision_model"]["input_height"], config["vision_model"]["input_width"]) == (84, 56)


@pytest.mark.parametrize("size", ["100", "112x90"])
def test_image_size_must_be_a_multiple_of_28(ckpts, size):
    result = invoke("inspect", ckpts[0] / "native", "--image-size", size)
    assert result.exit_code == 2 and "--image-size" in result.stderr and "28" in result.stderr


def test_image_size_beyond_the_processors_max_pixels_is_refused(ckpts):
    result = invoke("inspect", ckpts[0] / "native", "--image-size", "28000")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "28000x28000" in result.stderr and "max_pixels" in result.stderr


def test_projector_width_must_equal_text_width(ckpts, tmp_path):
    import torch

    hf = tmp_path / "hf"
    shutil.copytree(ckpts[0] / "native", hf)
    weights = load_file(str(hf / "model.safetensors"))
    weights["model.projector.linear_2.weight"] = torch.zeros(48, 128)
    weights["model.projector.linear_2.bias"] = torch.zeros(48)
    save_file(weights, str(hf / "model.safetensors"))
    result = invoke("inspect", hf)
    assert result.exit_code == 2
    assert "projector output width 48" in result.stderr and "64" in result.stderr


def test_run_ocr_from_the_cli(native_bundle, tmp_path):
    from PIL import Image

    page = np.full((150, 120, 3), 245, np.uint8)
    page[20:30, 10:100] = 20
    Image.fromarray(page).save(tmp_path / "page.png")
    result = invoke("run", native_bundle, "--image", tmp_path / "page.png", "--prompt", "OCR:",
                    "--max-new-tokens", "4", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.output)["tokens"]


def test_verify_with_reference_after_a_custom_size(ckpts, native_bundle):
    ok = invoke("verify", native_bundle, "--reference", ckpts[0] / "native")
    assert ok.exit_code == 0, ok.output + ok.stderr
    assert "text logits" in ok.output and "FAIL" not in ok.output
