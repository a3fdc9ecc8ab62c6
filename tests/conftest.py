"""Shared pytest setup: the repository root on sys.path, so tests can import helpers from each other (`tests.test_tokenizer`)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import os  # noqa: E402

import pytest  # noqa: E402

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # the version the README and the benchmark name


@pytest.fixture(scope="session")
def llama_cpp_converter(request) -> Path:
    """llama.cpp's source tree with convert_hf_to_gguf.py: $LLAMA_CPP_DIR, else the cached sdist, else fetched."""
    from smt_convert.testing.llama_cpp_converter import cached_or_fetched, converter_tree

    given = os.environ.get("LLAMA_CPP_DIR")
    if given:
        tree = converter_tree(Path(given).expanduser())
        if tree is None:
            pytest.skip(f"LLAMA_CPP_DIR={given}: no convert_hf_to_gguf.py + gguf-py there (nor under vendor/llama.cpp)")
        return tree
    try:
        return cached_or_fetched(Path(request.config.cache.mkdir("llama-cpp-src")), LLAMA_CPP_PYTHON)
    except RuntimeError as exc:
        pytest.skip(f"llama.cpp's converter: no LLAMA_CPP_DIR and {exc}")
