#!/usr/bin/env bash
# Execute every notebook under notebooks/ headless against the committed data
# (bundled traces, reports/*/results.parquet), failing on the first error.
# Installs the notebooks' Python dependencies first unless LLEP_NB_NO_INSTALL=1.
# Executed copies go to a temporary folder (or $LLEP_NB_OUT): the committed
# notebooks are not modified. Usage: scripts/run_notebooks.sh [NOTEBOOK...]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [[ "${LLEP_NB_NO_INSTALL:-0}" != 1 ]]; then
    "$PY" -m pip install -q polars pyarrow matplotlib nbclient nbformat ipykernel
fi

if [[ $# -gt 0 ]]; then
    notebooks=("$@")
else
    notebooks=(notebooks/*.ipynb)
fi
# LLEP_NB_OUT=DIR keeps the executed copies there (to read their output).
if [[ -n "${LLEP_NB_OUT:-}" ]]; then
    out=$LLEP_NB_OUT
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

"$PY" - "$out" "${notebooks[@]}" <<'PY'
import sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

out = Path(sys.argv[1])
failed = []
for path in map(Path, sys.argv[2:]):
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    # cwd = repository root, so the notebooks find traces/ and reports/
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "."}})
    try:
        client.execute()
        print(f"ok     {path} ({time.time() - t0:.1f} s)")
    except CellExecutionError as e:
        print(f"FAILED {path}:\n{e}", file=sys.stderr)
        failed.append(str(path))
    nbformat.write(nb, out / path.name)
if failed:
    sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
PY
