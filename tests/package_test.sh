#!/usr/bin/env bash
# Builds tests/package_consumer against raggedattn twice: through
# find_package after `cmake --install` of this build tree, and through
# add_subdirectory of the source tree. Usage: package_test.sh SOURCE BUILD
set -euo pipefail
source_dir=$1
build_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/tests/package_consumer" -B "$work/installed" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/installed" -j2 >/dev/null
"$work/installed/consumer"

cmake -S "$source_dir/tests/package_consumer" -B "$work/subdirectory" \
  -DCMAKE_BUILD_TYPE=Release -DRAGGEDATTN_CONSUMER_MODE=subdirectory \
  -DRAGGEDATTN_SOURCE_DIR="$source_dir" >/dev/null
cmake --build "$work/subdirectory" -j2 --target consumer >/dev/null
"$work/subdirectory/consumer"
