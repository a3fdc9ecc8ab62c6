"""Bad input: one-line error naming the file and field, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from smt_convert.main import cli
from tests.fixtures.checkpoints import make_tiny_qwen3_asr


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    make_tiny_qwen3_asr(root / "single")
    make_tiny_qwen3_asr(root / "sharded", layout="original", shards=3)
    return root


@pytest.fixture
def ckpt(pristine, tmp_path):
    shutil.copytree(pristine / "single", tmp_path / "hf")
    return tmp_path / "hf"


@pytest.fixture
def sharded(pristine, tmp_path):
    shutil.copytree(pristine / "sharded", tmp_path / "hf")
    return tmp_path / "hf"


def fails(*args, code=2, mentions=()):
    """Run the CLI, expect a one-line error with the given exit code that mentions every string given."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    error = [ln for ln in lines if ln.startswith("error: ")]
    assert len(error) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in mentions:
        assert str(text) in error[0], (text, error[0])
    return error[0]


def no_partial_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def edit_config(path: Path, change) -> None:
    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_config(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=[ckpt / "config.json", "not found"])
    no_partial_output(tmp_path / "out")


def test_unreadable_config(ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"architectures": ["Qwen3ASRForConditionalGeneration"],')
    fails("inspect", ckpt, mentions=["config.json", "invalid JSON"])


def test_unknown_architecture(ckpt, tmp_path):
    edit_config(ckpt, lambda c: c.update(architectures=["FooForCausalLM"], model_type="foo"))
    fails("convert", ckpt, tmp_path / "out", mentions=["config.json", "architectures", "FooForCausalLM"])
    fails("inspect", ckpt, mentions=["FooForCausalLM", "Qwen3ASRForConditionalGeneration"])
    no_partial_output(tmp_path / "out")


def test_unknown_cli_architecture(ckpt, tmp_path):
    result = CliRunner().invoke(cli, ["qwen9", str(ckpt), str(tmp_path / "out")])
    assert result.exit_code == 2 and "No such command" in result.stderr


def test_missing_required_field(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].pop("num_hidden_layers"))
    fails("inspect", ckpt, mentions=["config.json", "text_config.num_hidden_layers", "missing"])


def test_projector_width_must_equal_text_width(ckpt):
    edit_config(ckpt, lambda c: c["audio_config"].update(output_dim=32))
    fails("inspect", ckpt, mentions=["audio_config.output_dim", "64"])


def test_vocab_size_against_embedding_rows(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(vocab_size=600))
    fails("inspect", ckpt, mentions=["text_config.vocab_size", "600", "512 rows"])


def test_truncated_safetensors(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=["model.safetensors", "not a readable safetensors"])
    no_partial_output(tmp_path / "out")


def test_wrong_tensor_shape(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    name = "model.language_model.layers.1.mlp.up_proj.weight"
    tensors[name] = torch.zeros(100, 64)
    save_file(tensors, str(f))
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=[name, "[100, 64]", "[128, 64]"])
    no_partial_output(tmp_path / "out")


def test_unexpected_tensor_is_not_silently_dropped(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    tensors["model.language_model.extra_adapter.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(f))
    fails("inspect", ckpt, mentions=["extra_adapter", "not used"])


def test_missing_tensor(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.audio_tower.ln_post.weight"]
    save_file(tensors, str(f))
    fails("inspect", ckpt, mentions=["model.audio_tower.ln_post.weight", "missing"])


def test_missing_shard(sharded, tmp_path):
    (sharded / "model-00002-of-00003.safetensors").unlink()
    fails("qwen3-asr", sharded, tmp_path / "out", mentions=["model.safetensors.index.json", "model-00002-of-00003"])
    no_partial_output(tmp_path / "out")


def test_missing_tokenizer_and_override(ckpt, pristine, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    error = fails("qwen3-asr", ckpt, tmp_path / "out", mentions=["tokenizer.json", "merges.txt", "--tokenizer"])
    assert str(ckpt) in error
    no_partial_output(tmp_path / "out")
    ok = CliRunner().invoke(cli, ["inspect", str(ckpt), "--tokenizer", str(pristine / "single")])
    assert ok.exit_code == 0, ok.stderr
    assert "tokenizer.json from " + str(pristine / "single") in ok.output


def test_output_not_empty_needs_force(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    fails("qwen3-asr", ckpt, out, mentions=[out, "not empty", "--force"])
    assert (out / "keep.txt").read_text() == "precious"
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(ckpt), str(out), "--force", "--no-verify", "--outtype", "q8_0"])
    assert ok.exit_code == 0, ok.stderr
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert not list(tmp_path.glob(".out.*"))
    # bad audio for `run` on that (real) bundle
    fails("run", out, "--audio", tmp_path / "missing.wav", mentions=["missing.wav", "not found"])
    fails("run", out, "--audio", ckpt / "config.json", mentions=["config.json", "cannot decode"])
    fails("run", out, mentions=["--audio"])


def test_unwritable_output(ckpt, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fails("qwen3-asr", ckpt, blocker / "out", mentions=["cannot create the output"])


def test_failure_midway_leaves_nothing(ckpt, tmp_path, monkeypatch):
    """An error after the GGUF is written (here: in ONNX export) removes the temporary directory."""
    import smt_convert.converters.onnx_export as onnx_export
    from smt_convert.runtime.errors import SmtError

    def broken(spec, path, **kwargs):
        raise SmtError(f"{path}: simulated export failure")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    out = tmp_path / "out"
    fails("qwen3-asr", ckpt, out, mentions=["simulated export failure"])
    no_partial_output(out)


def test_bad_audio_for_run(tmp_path):
    bundle = tmp_path / "not-a-bundle"
    bundle.mkdir()
    fails("run", bundle, "--audio", tmp_path / "x.wav", mentions=["manifest.json"])
    fails("verify", tmp_path / "missing", mentions=["bundle directory not found"])


def test_no_traceback_from_the_real_entry_point(ckpt, tmp_path):
    (ckpt / "config.json").write_text("not json")
    proc = subprocess.run([sys.executable, "-m", "smt_convert", "inspect", str(ckpt)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_output_must_not_replace_the_checkpoint(ckpt):
    fails("qwen3-asr", ckpt, ckpt, "--force", mentions=["would replace the checkpoint"])
    fails("qwen3-asr", ckpt, ckpt.parent, "--force", mentions=["would replace the checkpoint"])
    assert (ckpt / "model.safetensors").is_file()


def test_tie_levels_that_disagree(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(tie_word_embeddings=False))
    fails("inspect", ckpt, mentions=["tie_word_embeddings", "disagree"])


def test_tied_config_with_a_different_lm_head(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    tensors["lm_head.weight"] = torch.randn_like(tensors["model.language_model.embed_tokens.weight"])
    save_file(tensors, str(f))
    fails("inspect", ckpt, mentions=["tie_word_embeddings", "lm_head.weight differs"])


def test_chunk_size_must_match_the_board(ckpt):
    edit_config(ckpt, lambda c: c["audio_config"].update(n_window=25, n_window_infer=400))
    fails("inspect", ckpt, mentions=["audio_config.n_window", "100-frame"])


def test_original_layout_field_paths(sharded):
    edit_config(sharded, lambda c: c["thinker_config"]["text_config"].update(rope_theta="abc"))
    fails("inspect", sharded, mentions=["thinker_config.text_config.rope_theta", "expected a number"])


def test_bad_stem(ckpt, tmp_path):
    fails("qwen3-asr", ckpt, tmp_path / "out", "--stem", "../escape", mentions=["--stem"])
    no_partial_output(tmp_path / "out")
