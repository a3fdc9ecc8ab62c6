#!/usr/bin/env bash
# Build the board stand-in's llama-mtmd-cli with examples/board/mtmd-cli-smt-deepstack.patch applied, as
# llama-mtmd-cli-deepstack next to the unpatched one (which is rebuilt as it was). Needs the stand-in built first
# (../shared/tools/smt-standin/build.sh, default tree /tmp/smtfork). About a minute: one file recompiles.
set -euo pipefail
tree="${1:-${TMPDIR:-/tmp}/smtfork}"
patch_file="$(cd "$(dirname "$0")/.." && pwd)/examples/board/mtmd-cli-smt-deepstack.patch"
src="$tree/src/tools/mtmd/mtmd-cli-smt.cpp"
[ -f "$src" ] && [ -d "$tree/build" ] || { echo "error: no built stand-in at $tree (run smt-standin/build.sh)" >&2; exit 2; }
cp "$src" "$src.orig"
trap 'mv -f "$src.orig" "$src"; touch "$src"; cmake --build "$tree/build" --target llama-mtmd-cli -j "$(nproc)" >/dev/null' EXIT
patch -s -p1 -d "$tree/src" < "$patch_file"
cmake --build "$tree/build" --target llama-mtmd-cli -j "$(nproc)" >/dev/null
cp "$tree/build/bin/llama-mtmd-cli" "$tree/build/bin/llama-mtmd-cli-deepstack"
echo "built $tree/build/bin/llama-mtmd-cli-deepstack"
