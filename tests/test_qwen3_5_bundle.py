"""Qwen3.5 end to end: dense, MoE and text-only tiny checkpoints converted, verified against transformers,
checked against the board contract, run from the CLI, and the Qwen3.5-specific bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from smt_convert.testing.checkpoints import make_tiny_qwen3_5
from smt_convert.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("q35")
    make_tiny_qwen3_5(root / "dense")
    make_tiny_qwen3_5(root / "moe", moe=True)
    make_tiny_qwen3_5(root / "text", text_only=True)
    return root


@pytest.fixture(scope="module")
def dense_bundle(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("q35b") / "dense"
    result = invoke("-q", "qwen3.5", ckpts / "dense", out, "--outtype", "f32")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_dense_bundle_meets_the_board_contract(dense_bundle):
    import onnxruntime as ort

    config = json.loads((dense_bundle / "config.json").read_text())
    assert config["architectures"][0] == "Qwen3_5ForConditionalGeneration"
    assert config["vision_model"]["input_size"] == 128
    assert config["text_model"]["hidden_size"] == 64
    session = ort.InferenceSession(str(dense_bundle / config["vision_model"]["model_path"]))
    (inp,) = session.get_inputs()
    assert inp.shape == [1, 3, 128, 128] and inp.type == "tensor(float)"
    out = session.run(None, {inp.name: np.zeros((1, 3, 128, 128), np.float32)})[0]
    assert out.shape == (16, 64)  # (128/32)^2 rows of text width
    manifest = manifest_of(dense_bundle)
    assert manifest["verification"]["passed"] and manifest["text"]["gguf_arch"] == "qwen35"
    checks = {(r["check"], r["metric"]): r for r in manifest["verification"]["rows"]}
    assert checks[("end to end", "greedy tokens agreeing")]["value"] == 1.0
    assert checks[("text logits", "nmse")]["value"] < 1e-6  # image + text prompt, M-RoPE positions
    assert manifest["preprocessing"]["grid"] == [4, 4]


def test_gguf_loads_in_llama_cpp_with_the_bundle_tokenizer(dense_bundle, ckpts):
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoTokenizer, Qwen3_5ForConditionalGeneration

    gguf_path = dense_bundle / manifest_of(dense_bundle)["text"]["file"]
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    prompt = "<|im_start|>user\nWhat is 2 + 2? 你好<|im_end|>\n<|im_start|>assistant\n"
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert tokens == AutoTokenizer.from_pretrained(str(ckpts / "dense"))(prompt)["input_ids"]
    llm.eval(tokens)
    ours = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    model = Qwen3_5ForConditionalGeneration.from_pretrained(str(ckpts / "dense"), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([tokens])).logits[0].double().numpy()
    nmse = float(((ours - ref) ** 2).sum() / (ref ** 2).sum())
    assert nmse < 1e-6, nmse


def test_run_image_from_the_cli_and_verify_without_torch(dense_bundle, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    img = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    result = invoke("run", dense_bundle, "--image", tmp_path / "photo.png", "--prompt", "Describe it.",
                    "--max-new-tokens", "5", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert len(json.loads(result.output)["tokens"]) > 0
    wrong = invoke("run", dense_bundle, "--audio", tmp_path / "photo.png")
    assert wrong.exit_code == 2 and "image bundle" in wrong.stderr
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from smt_convert.main import main; sys.argv = ['smt-convert', 'verify', sys.argv[1]]; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(dense_bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "golden encoder" in proc.stdout


def test_non_square_fp16(ckpts, tmp_path):
    out = tmp_path / "ns"
    result = invoke("-q", "qwen3.5", ckpts / "dense", out, "--image-size", "96x160", "--onnx-dtype", "fp16")
    assert result.exit_code == 0, result.output + result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["vision_model"]["input_width"] == 160 and config["vision_model"]["input_height"] == 96
    assert manifest_of(out)["preprocessing"]["grid"] == [3, 5]


def test_moe_bundle(ckpts, tmp_path):
    out = tmp_path / "moe"
    result = invoke("-q", "qwen3.5-moe", ckpts / "moe", out, "--outtype", "q8_0")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = manifest_of(out)
    assert manifest["text"]["gguf_arch"] == "qwen35moe"
    types = {t["name"]: t["type"] for t in manifest["text"]["tensors"]}
    assert types["blk.0.ssm_conv1d.weight"] == "F32" and types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert types["blk.0.ffn_up_exps.weight"] == "Q8_0"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"]
    wrong = invoke("inspect", ckpts / "moe")  # auto-detected, so fine
    assert wrong.exit_code == 0
    dense_cmd = invoke("qwen3.5", ckpts / "moe", tmp_path / "x")
    assert dense_cmd.exit_code == 2 and "qwen3.5-moe" in dense_cmd.stderr


def test_text_only_bundle(ckpts, tmp_path):
    out = tmp_path / "text"
    result = invoke("-q", "convert", ckpts / "text", out, "--outtype", "f16")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = manifest_of(out)
    assert manifest["modality"] == "text" and manifest["encoders"] == []
    assert not list(out.glob("*.onnx")) and "vision_model" not in json.loads((out / "config.json").read_text())
    ran = invoke("run", out, "--prompt", "Hello there", "--max-new-tokens", "4")
    assert ran.exit_code == 0, ran.stderr
    refused = invoke("qwen3.5", ckpts / "text", tmp_path / "y", "--image-size", "128")
    assert refused.exit_code == 2 and "text-only" in refused.stderr


@pytest.mark.parametrize("size", ["100", "128x90", "0"])
def test_image_size_must_be_a_multiple_of_32(ckpts, size):
    result = invoke("inspect", ckpts / "dense", "--image-size", size)
    assert result.exit_code == 2 and "--image-size" in result.stderr and "Traceback" not in result.stderr


def test_image_size_has_an_upper_bound_checked_before_building(ckpts):
    result = invoke("inspect", ckpts / "dense", "--image-size", "28000")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "28000x28000" in result.stderr and "max_pixels" in result.stderr


def test_vision_width_must_equal_text_width(tmp_path):
    make_tiny_qwen3_5(tmp_path / "hf", vision_out_hidden=48)
    result = invoke("inspect", tmp_path / "hf")
    assert result.exit_code == 2
    assert "vision_config.out_hidden_size" in result.stderr and "64" in result.stderr


def test_missing_preprocessor_config_falls_back_and_says_so(ckpts, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(ckpts / "dense", hf)
    (hf / "preprocessor_config.json").unlink()
    out = tmp_path / "out"
    result = invoke("-q", "qwen3.5", hf, out, "--no-verify")
    assert result.exit_code == 0, result.stderr
    norm = manifest_of(out)["preprocessing"]["in_graph_normalisation"]
    assert norm["from"] == "defaults" and norm["image_mean"] == [0.5, 0.5, 0.5]
    assert any("preprocessor_config.json not found" in n for n in manifest_of(out)["notes"])


def test_verify_with_reference_and_board_grid_note(ckpts, dense_bundle, tmp_path):
    """verify --reference on a vision bundle; a grid the board would guess wrong is converted with a note."""
    ok = invoke("verify", dense_bundle, "--reference", ckpts / "dense")
    assert ok.exit_code == 0, ok.output + ok.stderr
    assert "encoder" in ok.output and "FAIL" not in ok.output
    wrong = invoke("verify", dense_bundle, "--reference", ckpts / "moe")
    assert wrong.exit_code == 2 and "--reference" in wrong.stderr
    out = tmp_path / "tall"
    result = invoke("qwen3.5", ckpts / "dense", out, "--image-size", "160x96", "--no-verify")
    assert result.exit_code == 0, result.stderr
    assert "the board guesses (3, 5)" in result.stderr
    assert manifest_of(out)["preprocessing"]["board_guess_matches"] is False
    context = invoke("run", dense_bundle, "--image", out / "golden" / "input.png", "--context", "hot words")
    assert context.exit_code == 2 and "--context: qwen3.5 has no context option" in context.stderr
