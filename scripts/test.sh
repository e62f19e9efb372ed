#!/usr/bin/env bash
# The whole test suite: Rust tests (release build, as CI runs them) plus the
# Python read-back checks they call. Installs the Python packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
cargo test --release
