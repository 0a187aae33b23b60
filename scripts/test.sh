#!/usr/bin/env bash
# Builds and runs every test, installing what is missing first:
#   1. the optimized build in build/ and its CTest suite;
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build of the tests in
#      build-asan/ and the same suite under it;
#   3. when pyproject.toml exists: `pip install .` and the pytest suite.
# Stops at the first failure with a non-zero exit; prints a summary either way.
#
#   scripts/test.sh [--skip-asan] [--skip-python]
#
# BUILD_DIR / ASAN_BUILD_DIR change the build folders, JOBS=N the parallelism
# (default 2), PYTHON the interpreter.

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BUILD_DIR="${BUILD_DIR:-build}"
ASAN_BUILD_DIR="${ASAN_BUILD_DIR:-build-asan}"
run_asan=1
run_python=1
for arg in "$@"; do
  case "${arg}" in
    --skip-asan) run_asan=0 ;;
    --skip-python) run_python=0 ;;
    *) die "unknown argument ${arg} (expected --skip-asan or --skip-python)" ;;
  esac
done
[[ -f pyproject.toml ]] || run_python=0

summary=()
current_step=""
step_started=0
test_started=${SECONDS}

print_summary() {
  local status=$?
  if [[ -n "${current_step}" ]]; then
    summary+=("$(printf '%-34s FAILED after %ds' "${current_step}" \
      $((SECONDS - step_started)))")
  fi
  printf '\n==== scripts/test.sh summary ====\n'
  local line
  for line in "${summary[@]}"; do printf '%s\n' "${line}"; done
  if ((status == 0)); then
    printf 'ALL PASSED in %ds\n' $((SECONDS - test_started))
  else
    printf 'FAILED (exit %d) after %ds\n' "${status}" \
      $((SECONDS - test_started))
  fi
}
trap print_summary EXIT

# Runs "$@" as the step named $1 (the rest is the command), timing it.
step() {
  current_step="$1"
  shift
  step_started=${SECONDS}
  log "${current_step}"
  "$@"
  summary+=("$(printf '%-34s ok in %ds' "${current_step}" \
    $((SECONDS - step_started)))")
  current_step=""
}

# --no-tests=error: a suite that registered nothing is a failure, not a pass.
run_ctest() {
  ctest --test-dir "$1" --output-on-failure -j "${JOBS}" --no-tests=error \
    --timeout 900
}

step "Dependencies" install_debs "${CXX_DEBS[@]}"

release_build() {
  cmake -S . -B "${BUILD_DIR}" -DCMAKE_BUILD_TYPE=Release
  cmake --build "${BUILD_DIR}" -j "${JOBS}"
}

step "Release build (${BUILD_DIR}/)" release_build
step "Release tests (ctest)" run_ctest "${BUILD_DIR}"

if ((run_asan)); then
  # Exported before the build: gtest_discover_tests runs each test binary
  # at build time. allocator_may_return_null keeps out-of-memory paths
  # (std::bad_alloc) testable under ASan.
  export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:allocator_may_return_null=1:strict_init_order=1:check_initialization_order=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  # -O1: the instrumented SIMD kernels compile in about 60% of their -O2
  # time (measured 5 vs 8.5 CPU minutes when they were one file). Without
  # the head-dim specializations (the same code with run-time loop bounds,
  # which the Release suite also runs) they build in a third of the time:
  # with them this step took 942 s of a 1470 s run.
  asan_build() {
    cmake -S . -B "${ASAN_BUILD_DIR}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
      -DRAGGEDATTN_SANITIZE=address,undefined \
      -DRAGGEDATTN_SPECIALIZE_HEAD_DIMS=OFF \
      -DRAGGEDATTN_BUILD_BENCHMARKS=OFF
    cmake --build "${ASAN_BUILD_DIR}" -j "${JOBS}"
  }
  step "ASan+UBSan build (${ASAN_BUILD_DIR}/)" asan_build
  step "ASan+UBSan tests (ctest)" run_ctest "${ASAN_BUILD_DIR}"
fi

if ((run_python)); then
  python="$(python_for_package)"
  # The package's `test` extra (pyproject.toml) brings pytest and whatever
  # else the tests use; without one, pytest alone. PY_EXTRAS=test,jax asks
  # for more extras.
  if [[ -n "${PY_EXTRAS:-}" ]]; then
    target=".[${PY_EXTRAS}]"
  elif grep -Eq '^test *=' pyproject.toml; then
    target=".[test]"
  else
    target="."
    step "pytest (pip install pytest)" "${python}" -m pip install -q pytest
  fi
  step "Python package (pip install ${target})" \
    "${python}" -m pip install -q "${target}"
  # pytest exits 5 when it collected nothing: that is a failure here.
  run_pytest() {
    local status=0
    "${python}" -m pytest -q python/tests || status=$?
    if ((status == 5)); then
      echo "error: pytest collected no tests in python/tests" >&2
    fi
    return "${status}"
  }
  step "Python tests (pytest)" run_pytest
fi
