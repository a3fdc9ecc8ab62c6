"""Qwen3-ASR end to end: convert tiny checkpoints in both layouts, check the bundle against the board
contract, load the GGUF in llama.cpp, verify, run, and tamper with a bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_qwen3_asr


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def native_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    info = make_tiny_qwen3_asr(root / "hf", layout="native")
    return root / "hf", info


@pytest.fixture(scope="session")
def original_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    info = make_tiny_qwen3_asr(root / "hf", layout="original", shards=3, tokenizer_layout="vocab+merges")
    return root / "hf", info


@pytest.fixture(scope="session")
def f32_bundle(native_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "f32"
    result = invoke("-q", "qwen3-asr", native_ckpt[0], out, "--outtype", "f32")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_f32_bundle_matches_board_contract(f32_bundle):
    manifest = json.loads((f32_bundle / "manifest.json").read_text())
    config = json.loads((f32_bundle / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ASRForConditionalGeneration"]
    audio = config["audio_model"]
    for key in ("frontend_model_path", "backend_model_path"):
        assert (f32_bundle / audio[key]).is_file()
    assert audio["d_model"] == 64 and audio["output_dim"] == config["text_model"]["hidden_size"] == 64
    assert (audio["num_mel_bins"], audio["sample_rate"], audio["n_fft"], audio["hop_len"]) == (128, 16000, 400, 160)
    split = json.loads((f32_bundle / "Qwen3-ASR-encoder-split-metadata.json").read_text())
    assert split["frontend_onnx"] == audio["frontend_model_path"] and split["d_model"] == 64

    import onnxruntime as ort

    front = ort.InferenceSession(str(f32_bundle / audio["frontend_model_path"]))
    (inp,) = front.get_inputs()
    assert inp.shape == [1, 128, 100] and inp.type == "tensor(float)"
    out = front.run(None, {inp.name: np.zeros((1, 128, 100), np.float32)})[0]
    assert out.shape == (1, 13, 64)
    back = ort.InferenceSession(str(f32_bundle / audio["backend_model_path"]))
    assert len(back.get_inputs()) == 1
    assert back.run(None, {back.get_inputs()[0].name: np.zeros((1, 13, 64), np.float32)})[0].shape == (13, 64)

    assert manifest["complete"] is True and manifest["verification"]["passed"] is True
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(f32_bundle).as_posix() for p in f32_bundle.rglob("*") if p.is_file()}
    assert listed == on_disk - {"manifest.json"}
    assert manifest["source"]["weight_files"][0]["sha256"]
    assert {r["check"] for r in manifest["verification"]["rows"]} >= {"features", "encoder", "text logits", "end to end"}
    # what inspect promised is what the export produced
    planned = {e.file: e for e in manifest_plan(f32_bundle)}
    for enc in manifest["encoders"]:
        assert [i["name"] for i in enc["inputs"]] == [i["name"] for i in planned[enc["file"]].inputs]
        assert [o["name"] for o in enc["outputs"]] == [o["name"] for o in planned[enc["file"]].outputs]
        assert enc["inputs"][0]["shape"][-1] == planned[enc["file"]].inputs[0]["shape"][-1]


def manifest_plan(bundle):
    from smt_convert.archs.qwen3_asr.config import Hparams
    from smt_convert.converters.plugin import get_plugin

    manifest = json.loads((bundle / "manifest.json").read_text())
    return get_plugin("qwen3-asr").encoder_outputs(Hparams(**manifest["hparams"]), "Qwen3-ASR")


def test_gguf_metadata_and_tokenizer(f32_bundle):
    from gguf import GGUFReader

    manifest = json.loads((f32_bundle / "manifest.json").read_text())
    reader = GGUFReader(str(f32_bundle / manifest["text"]["file"]))
    fields = reader.fields

    def value(key):
        f = fields[key]
        return f.contents()

    assert value("general.architecture") == "qwen3vl"
    assert value("qwen3vl.n_deepstack_layers") == 0
    assert value("qwen3vl.rope.dimension_sections") == [3, 3, 2, 0]
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "qwen2"
    tokens = value("tokenizer.ggml.tokens")
    assert tokens[value("tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert "<|im_start|>" in value("tokenizer.chat_template")
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied embeddings
    assert {"token_embd.weight", "blk.1.attn_q_norm.weight", "blk.1.ffn_down.weight"} <= names


def test_original_layout_converts_to_identical_gguf(original_ckpt, f32_bundle, tmp_path):
    """Original release layout (thinker.*, proj1/proj2, sharded, vocab.json+merges.txt) -> same tensors."""
    from gguf import GGUFReader

    out = tmp_path / "orig"
    result = invoke("-q", "qwen3-asr", original_ckpt[0], out, "--outtype", "f32", "--no-verify")
    assert result.exit_code == 0, result.output + result.stderr
    name = json.loads((out / "manifest.json").read_text())["text"]["file"]
    a = {t.name: np.array(t.data) for t in GGUFReader(str(out / name)).tensors}
    b = {t.name: np.array(t.data) for t in GGUFReader(str(f32_bundle / name)).tensors}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["layout"] == "original"
    assert manifest["source"]["tokenizer"]["kind"] == "vocab.json+merges.txt"
    # The runtime tokenizer rebuilt from vocab+merges behaves like the checkpoint's tokenizer.json twin.
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("outtype,onnx_dtype", [("f16", "fp16"), ("bf16", "fp32"), ("q8_0", "fp32")])
def test_lossy_outputs_pass_their_thresholds(native_ckpt, tmp_path, outtype, onnx_dtype):
    out = tmp_path / outtype
    result = invoke("-q", "qwen3-asr", native_ckpt[0], out, "--outtype", outtype, "--onnx-dtype", onnx_dtype)
    assert result.exit_code == 0, result.output + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    types = {t["name"]: t["type"] for t in manifest["text"]["tensors"]}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_up.weight"] == outtype.upper()
    assert manifest["onnx_dtype"] == onnx_dtype


@pytest.mark.llama_cpp
def test_llama_cpp_loads_gguf_and_matches_hf_logits(f32_bundle, native_ckpt):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = native_ckpt[1]["model"]
    ids = native_ckpt[1]["ids"]
    manifest = json.loads((f32_bundle / "manifest.json").read_text())
    llm = llama_cpp.Llama(str(f32_bundle / manifest["text"]["file"]), n_ctx=256, logits_all=True, verbose=False,
                          n_threads=2)
    prompt = "<|im_start|>user\nHello world, 123 你好<|im_end|>\n<|im_start|>assistant\n"
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(native_ckpt[0]))
    assert tokens == hf_tok(prompt)["input_ids"]
    assert ids["<|im_end|>"] in tokens
    llm.eval(tokens)
    ours = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([tokens])).logits[0].double().numpy()
    nmse = float(((ours - ref) ** 2).sum() / (ref ** 2).sum())
    assert nmse < 1e-6, nmse  # measured ~1e-11 (f32 GGUF, llama.cpp CPU)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_verify_without_torch_and_tamper_detection(f32_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(f32_bundle, bundle)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from smt_convert.main import main; sys.argv = ['smt-convert', 'verify', sys.argv[1]]; main()")
    ok = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "golden tokens" in ok.stdout and "FAIL" not in ok.stdout

    onnx_file = next(bundle.glob("*-encoder-backend.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[-100] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "sha256 differs" in bad.stdout and "Traceback" not in bad.stderr


def test_goldens_catch_a_changed_numeric_result(f32_bundle, tmp_path):
    """Hashes aside, the golden check itself fails when the runtime's numbers no longer match."""
    from smt_convert.runtime.pipeline import BundleRunner
    from smt_convert.runtime.verify import golden_rows

    bundle = tmp_path / "b"
    shutil.copytree(f32_bundle, bundle)
    expected = json.loads((bundle / "golden" / "expected.json").read_text())
    expected["top_logits"]["values"][0] += 0.5
    (bundle / "golden" / "expected.json").write_text(json.dumps(expected))
    rows = golden_rows(BundleRunner(bundle))
    assert not next(r for r in rows if r.check == "golden logits").ok


def test_run_transcribes_stereo_44k_and_long_audio(f32_bundle, native_ckpt, tmp_path):
    """Any rate/channels are accepted; audio longer than one attention window matches HF token for token."""
    import soundfile as sf

    from smt_convert.converters.checkpoint import Checkpoint
    from smt_convert.converters.plugin import get_plugin
    from smt_convert.converters.reference import compare_with_reference
    from smt_convert.runtime.audio import load_audio
    from smt_convert.runtime.pipeline import BundleRunner

    rng = np.random.default_rng(0)
    t = np.arange(int(44100 * 9.3)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 200 * t * (1 + 0.1 * np.sin(t))), rng.normal(0, 0.05, t.shape)], 1)
    wav = tmp_path / "long.wav"
    sf.write(wav, stereo, 44100, subtype="PCM_16")
    result = invoke("run", f32_bundle, "--audio", wav, "--language", "English", "--json", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["tokens"]) > 0

    runner = BundleRunner(f32_bundle)
    wave = load_audio(wav)
    run = runner.run(wave, max_new_tokens=8)
    assert run.media_embeds.shape[0] > 2 * 52  # more than two 400-frame attention windows (52 rows each)
    plugin = get_plugin("qwen3-asr")
    ckpt = Checkpoint.open(native_ckpt[0])
    hp = plugin.read_hparams(ckpt)
    rows, ref_tokens, _ = compare_with_reference(plugin, ckpt, hp, runner, wave, run, "f32", "fp32", 8)
    assert all(r.ok for r in rows), [r.to_dict() for r in rows if not r.ok]
    assert run.tokens == ref_tokens


def test_verify_with_reference(f32_bundle, native_ckpt):
    result = invoke("verify", f32_bundle, "--reference", native_ckpt[0])
    assert result.exit_code == 0, result.output
    assert "text logits" in result.output and "FAIL" not in result.output


def test_inspect_writes_nothing(native_ckpt, tmp_path):
    before = sorted(p.name for p in native_ckpt[0].iterdir())
    result = invoke("inspect", native_ckpt[0], "--outtype", "q8_0")
    assert result.exit_code == 0, result.output
    assert "Qwen3-ASR-text-q80.gguf" in result.output and "Q8_0" in result.output
    assert "input_features [1, 128, 100]" in result.output and "tokenizer.json" in result.output
    assert sorted(p.name for p in native_ckpt[0].iterdir()) == before
    as_json = json.loads(invoke("inspect", native_ckpt[0], "--json").output)
    assert as_json["architecture"] == "qwen3-asr" and as_json["parameters"]["text"] > 0


def test_list_and_help():
    listed = invoke("list")
    assert "qwen3-asr" in listed.output and "Qwen3ASRForConditionalGeneration" in listed.output
    for args in (["--help"], ["qwen3-asr", "--help"], ["run", "--help"], ["verify", "--help"], ["inspect", "--help"]):
        result = invoke(*args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_untied_lm_head_bf16_checkpoint(tmp_path):
    """An untied lm_head becomes output.weight; bf16 weights are read and verified like f32."""
    from gguf import GGUFReader

    make_tiny_qwen3_asr(tmp_path / "hf", tie=False, dtype=torch.bfloat16, seed=3)
    out = tmp_path / "out"
    result = invoke("-q", "qwen3-asr", tmp_path / "hf", out, "--outtype", "f32")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    names = {t.name for t in GGUFReader(str(out / manifest["text"]["file"])).tensors}
    assert "output.weight" in names
    assert manifest["verification"]["passed"]
