#!/usr/bin/env bash
# Installs the Debian packages the C++ build and its tests need, when missing.
# With --python, also makes sure a Python with pip is there for the package.
#
#   scripts/install-deps.sh [--python]

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_debs "${CXX_DEBS[@]}"
if [[ "${1:-}" == --python ]]; then
  echo "Python for the package: $(python_for_package)"
fi
