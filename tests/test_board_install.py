"""A board has the base install only (numpy, onnxruntime, gguf, tokenizers, media readers, click): the CLI, every
plugin's registration, `list`, `verify` and `run` must work with every conversion-only package missing."""

from __future__ import annotations

import subprocess
import sys

CONVERSION_ONLY = ("torch", "transformers", "safetensors", "onnx", "onnx_ir", "onnxscript", "sentencepiece")
BLOCK = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in CONVERSION_ONLY)


def board(*argv: str) -> subprocess.CompletedProcess:
    code = BLOCK + "from smt_convert.main import main\nsys.argv = ['smt-convert', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)


def test_list_and_help_without_conversion_packages():
    out = board("list")
    assert out.returncode == 0, out.stderr
    for name in ("qwen3-asr", "qwen3.5", "qwen3.5-moe", "paddleocr-vl"):
        assert f"{name}:" in out.stdout
    assert board("--help").returncode == 0


def test_blocking_really_blocks():
    """The harness itself: a conversion-only import fails under it (else the test above proves nothing)."""
    out = subprocess.run([sys.executable, "-c", BLOCK + "import onnx_ir\n"], capture_output=True, text=True)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr or "ImportError" in out.stderr


def test_conversion_without_its_packages_says_so_in_one_line(tmp_path):
    out = board("inspect", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
