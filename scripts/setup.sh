#!/usr/bin/env bash
# Install smt-convert for converting (default) or, with --test, also what the test suite needs.
# torch is pinned to the CPU build (a looser pin pulls a multi-GB CUDA build). --test adds llama-cpp-python,
# which compiles llama.cpp from source the first time (about 20-30 minutes on 2 cores; later runs find it
# installed): converting needs none of it (K-quant --outtype does: the [kquants] extra).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="convert"
[ "${1:-}" = "--test" ] && extra="test"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" python -m pip install --quiet -e ".[$extra]"
