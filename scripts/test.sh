#!/usr/bin/env bash
# The whole test suite: Rust tests (one release build, as CI runs them),
# which include the Python read-back checks, then the notebooks executed
# headless on the bundled data. Installs the Python packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
cargo test --release
# the capture hook's torch-free tests (its torch tests skip without torch)
python3 -m unittest discover -s python/tests
LLEP_NB_NO_INSTALL=1 bash scripts/run_notebooks.sh
