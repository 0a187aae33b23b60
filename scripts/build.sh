#!/usr/bin/env bash
# Installs missing dependencies, then configures and builds the optimized
# (Release) build in build/: the library, the CLI at build/raggedattn, the
# tests and the benchmarks. Extra arguments name CMake targets to build
# instead of everything, e.g. `scripts/build.sh raggedattn_cli`.
#
#   scripts/build.sh && build/raggedattn bench
#
# BUILD_DIR=dir changes the build folder; JOBS=N the parallelism (default 2).

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BUILD_DIR="${BUILD_DIR:-build}"

install_debs "${CXX_DEBS[@]}"

log "Configuring ${BUILD_DIR}/ (Release)"
cmake -S . -B "${BUILD_DIR}" -DCMAKE_BUILD_TYPE=Release

log "Building ${BUILD_DIR}/ with ${JOBS} jobs"
targets=()
for target in "$@"; do targets+=(--target "${target}"); done
cmake --build "${BUILD_DIR}" -j "${JOBS}" "${targets[@]}"

log "Built ${BUILD_DIR}/raggedattn"
