"""Board bundles through the board runtime's own code (the x86 stand-in of shared/tools/smt-standin: SpacemiT's SMT
backend on upstream llama.cpp with stock ONNX Runtime). Skipped unless the stand-in is built."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_qwen3_5, make_tiny_qwen3_asr, make_tiny_qwen3_vl

STANDIN = Path(tempfile.gettempdir()) / "smtfork"
BIN = STANDIN / "build" / "bin" / "llama-mtmd-cli"
pytestmark = pytest.mark.skipif(not BIN.is_file(), reason="board stand-in not built (shared/tools/smt-standin)")


def board_run(bundle: Path, flag: str, prompt: str, n: int = 12, binary: Path = BIN) -> tuple[str, str]:
    """The bundle's own board command line (manifest `board.commands`), run by the stand-in, greedy."""
    m = json.loads((bundle / "manifest.json").read_text())
    gguf = m["text"]["file"]
    media = f"golden/{m['golden']['input']}"
    env = {**os.environ, "LD_LIBRARY_PATH": str(STANDIN / "ort" / "lib")}
    proc = subprocess.run(
        [
            str(binary),
            "-m",
            gguf,
            "-c",
            str(m["memory"]["n_ctx"]),
            "--media-backend",
            "smt",
            "--smt-config-dir",
            ".",
            f"--{flag}",
            media,
            "-p",
            prompt,
            "-n",
            str(n),
            "--temp",
            "0",
            "-t",
            "1",
        ],
        cwd=bundle,
        env=env,
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    text = proc.stdout.replace(b"\0", b"").decode(errors="replace")
    return [ln for ln in text.splitlines() if ln.strip()][-1].strip(), proc.stderr.decode(errors="replace")


def ours(bundle: Path, flag: str, prompt: str | None, n: int = 12) -> str:
    args = [
        "-q",
        "run",
        str(bundle),
        f"--{flag}",
        str(bundle / "golden" / ("input.png" if flag == "image" else "input.wav")),
        "--max-new-tokens",
        str(n),
    ]
    result = CliRunner().invoke(cli, args + (["--prompt", prompt] if prompt else []))
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_k1_vision_bundle_runs_on_the_board_path_with_the_same_greedy_text(tmp_path):
    make_tiny_qwen3_5(tmp_path / "hf")
    out = tmp_path / "k1"
    result = CliRunner().invoke(cli, ["-q", "qwen3.5", str(tmp_path / "hf"), str(out), "--board", "k1"])
    assert result.exit_code == 0, result.stderr
    board, log = board_run(out, "image", "Describe the image.")
    # the board runtime read the bundle's ep_config and handed it to SpacemiT's execution provider
    assert "SPACEMIT_EP_INTRA_THREAD_NUM=4" in log
    assert board == ours(out, "image", "Describe the image.")


@pytest.mark.llama_cpp
def test_k_quant_asr_bundle_loads_on_the_board_path(tmp_path):
    pytest.importorskip("llama_cpp")
    make_tiny_qwen3_asr(tmp_path / "hf", text_overrides=dict(hidden_size=256, intermediate_size=512, head_dim=64))
    out = tmp_path / "k"
    result = CliRunner().invoke(
        cli, ["-q", "qwen3-asr", str(tmp_path / "hf"), str(out), "--board", "k1", "--outtype", "q4_k_m", "--no-verify"]
    )
    assert result.exit_code == 0, result.stderr
    types = {t["type"] for t in json.loads((out / "manifest.json").read_text())["text"]["tensors"]}
    assert "Q4_K" in types
    board, log = board_run(out, "audio", "<__media__>", n=4)  # exit 0 with an answer: loaded and decoded
    assert board and "SPACEMIT_EP_INTRA_THREAD_NUM=4" in log


# The stand-in's CLI with examples/board/mtmd-cli-smt-deepstack.patch (scripts/build_standin_deepstack.sh).
DEEPSTACK_BIN = BIN.with_name("llama-mtmd-cli-deepstack")


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_qwen3_vl_takes_the_wrappers_deepstack_path(tmp_path, moe):
    """The bundle's config.json makes the board's vision wrapper concatenate the DeepStack outputs (no "not
    deepstack-aware" warning); the CLI with the n_embd_inp patch then gives our runtime's greedy text."""
    make_tiny_qwen3_vl(tmp_path / "hf", moe=moe)
    out = tmp_path / "k1"
    result = CliRunner().invoke(
        cli, ["-q", "qwen3-vl-moe" if moe else "qwen3-vl", str(tmp_path / "hf"), str(out), "--outtype", "f32"]
    )
    assert result.exit_code == 0, result.stderr
    _, log = board_run(out, "image", "Describe the image.")
    assert "warmup ONNX session for Qwen3VL" in log and "not deepstack-aware" not in log
    if not DEEPSTACK_BIN.is_file():
        pytest.skip("the patched CLI is not built (scripts/build_standin_deepstack.sh)")
    board, _ = board_run(out, "image", "Describe the image.", binary=DEEPSTACK_BIN)
    assert board == ours(out, "image", "Describe the image.")
