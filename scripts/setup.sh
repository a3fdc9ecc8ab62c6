#!/usr/bin/env bash
# Install smt-convert with everything conversion and the tests need.
# torch is pinned to the CPU build (a looser pin pulls a multi-GB CUDA build); llama-cpp-python compiles
# llama.cpp from source the first time (about 20-30 minutes on 2 cores), later runs find it installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" python -m pip install --quiet -e ".[test]"
