"""llama.cpp's own converter (`convert_hf_to_gguf.py`), found or fetched, and the command that runs it: the
reference for GGUF metadata parity (tests) and the baseline of the conversion benchmarks.

It comes with the llama-cpp-python source distribution (`vendor/llama.cpp`). It is run unmodified except for one
thing: our tiny test tokenizers' pre-tokenizer hash is of course not in its table, so `get_vocab_base_pre` falls
back to the real model's pre-tokenizer name given in $SMT_BPE_PRE (vocabulary writing is otherwise its own).
Plain standard library: the benchmark imports this without importing torch.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "llama-cpp-python"
PRE_TOKENIZER_ENV = "SMT_BPE_PRE"

WRAPPER = """
import os, runpy, sys
tree = sys.argv[1]
sys.path[0:0] = [tree, os.path.join(tree, "gguf-py")]
import conversion.base as base
_orig = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        return os.environ["{env}"]
base.TextModel.get_vocab_base_pre = _pre
sys.argv = [os.path.join(tree, "convert_hf_to_gguf.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
""".replace("{env}", PRE_TOKENIZER_ENV)


def converter_tree(directory: Path) -> Path | None:
    """The llama.cpp tree in `directory` (a llama.cpp checkout or an unpacked sdist), or None."""
    for candidate in (directory, directory / "vendor" / "llama.cpp"):
        if (candidate / "convert_hf_to_gguf.py").is_file() and (candidate / "gguf-py").is_dir():
            return candidate
    return None


def cached_or_fetched(cache: Path, spec: str = SDIST, timeout: float = 900) -> Path:
    """An unpacked sdist already in `cache`, else `pip download` it there and unpack it. Raises RuntimeError
    with the reason when neither works (no network, no sdist, no converter inside)."""
    cache.mkdir(parents=True, exist_ok=True)
    version = spec.split("==", 1)[1] if "==" in spec else "*"
    for unpacked in sorted(
        (p for p in cache.glob(f"llama_cpp_python-{version}") if p.is_dir()), key=_version_key, reverse=True
    ):
        if tree := converter_tree(unpacked):
            return tree
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d", str(cache)],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise RuntimeError(f"`pip download {spec}` failed ({exc})") from None
    sdists = sorted(cache.glob(f"llama_cpp_python-{version}.tar.gz"), key=_version_key)
    if not sdists:
        raise RuntimeError(f"`pip download {spec}` left no sdist in {cache}")
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(cache, filter="data")
    tree = converter_tree(cache / sdists[-1].name[: -len(".tar.gz")])
    if tree is None:
        raise RuntimeError(f"{sdists[-1]}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
    return tree


def converter_command(tree: Path, checkpoint: Path, outfile: Path, *args: str) -> list[str]:
    """argv running llama.cpp's converter from `tree` on `checkpoint` (set $SMT_BPE_PRE in its environment)."""
    return [sys.executable, "-c", WRAPPER, str(tree), str(checkpoint), "--outfile", str(outfile), *args]


def _version_key(path: Path) -> tuple:
    """llama_cpp_python-0.3.36[.tar.gz] -> (0, 3, 36): 0.3.36 sorts after 0.3.9."""
    version = path.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))
