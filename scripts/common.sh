# shellcheck shell=bash
# Helpers shared by scripts/*.sh. Source it; it defines functions and moves
# to the repository root, so every script works from any directory.

set -euo pipefail

RAGGEDATTN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${RAGGEDATTN_ROOT}"

# Two cores on the machines this project targets; override with JOBS=N.
JOBS="${JOBS:-2}"

log() { printf '\n==> %s\n' "$*"; }

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs the rest of the command line as root: directly when already root,
# through sudo otherwise.
as_root() {
  if [[ "$(id -u)" == 0 ]]; then
    "$@"
  elif command -v sudo > /dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Returns 0 when the Debian package is installed.
have_deb() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2> /dev/null)" == \
     "install ok installed" ]]
}

# Installs the Debian packages given that are missing. apt-get update runs
# only when something is missing, so a machine that has everything needs
# neither the network nor root.
install_debs() {
  local missing=()
  local package
  for package in "$@"; do
    have_deb "${package}" || missing+=("${package}")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  command -v apt-get > /dev/null ||
    die "missing packages ${missing[*]} and no apt-get to install them"
  log "Installing Debian packages: ${missing[*]}"
  # No stdin in CI: never prompt.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q < /dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" < /dev/null
}

# What the C++ build needs. g++ brings libgomp (OpenMP) and the ASan/UBSan
# runtimes through libgcc-12-dev, so no separate OpenMP package is needed.
# shellcheck disable=SC2034  # used by the scripts that source this file
CXX_DEBS=(
  cmake g++ make
  libhwy-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)

# Prints the Python interpreter to use for the Python package, setting it up
# when needed. An interpreter that is not managed by Debian (pyenv, a venv)
# is used as it is; Debian's own python3 refuses `pip install` (PEP 668), so
# then a virtual environment in build-venv/ is made and used instead.
python_for_package() {
  local python="${PYTHON:-python3}"
  if ! command -v "${python}" > /dev/null; then
    install_debs python3 python3-dev python3-venv python3-pip >&2
    python=python3
  fi
  local managed
  # PEP 668 marks a distribution's interpreter; a venv on top of it is fine.
  managed="$("${python}" -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
print(int(os.path.exists(marker) and sys.prefix == sys.base_prefix))')"
  if [[ "${managed}" == 1 ]]; then
    # Debian's interpreter: headers and venv come from separate packages.
    install_debs python3-dev python3-venv >&2
    if [[ ! -x build-venv/bin/python ]]; then
      log "Creating build-venv/ (Debian's python3 is externally managed)" >&2
      "${python}" -m venv build-venv >&2
    fi
    python="${RAGGEDATTN_ROOT}/build-venv/bin/python"
  elif ! "${python}" -m pip --version > /dev/null 2>&1; then
    "${python}" -m ensurepip --upgrade >&2 ||
      die "${python} has no pip and ensurepip failed"
  fi
  echo "${python}"
}

# Quiet, non-interactive pip.
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore
export PIP_NO_INPUT=1
