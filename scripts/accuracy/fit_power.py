#!/usr/bin/env python3
"""Choose a profile's `power.comm_weight` (how much the token exchange
counts toward a GPU's GEMM duty under the power cap, `src/sim/power.rs`)
on measured rows of the CALIBRATION shapes only, and print the held-out
shapes' error apart.

For each candidate weight, `llep-trace compare` (through `fit_layer.py`'s
`Compare`) prices every measured row with the profile carrying that
weight; the weight with the lowest median |error| of the layer time over
the calibration shapes' rows is written to --out. The held-out shapes (DeepSeek-V3 and Qwen3-30B-A3B experts) never
choose anything.

Usage: fit_power.py --bin target/release/llep-trace --base PROFILE.json \
          --out FITTED.json RESULTS.parquet...
"""
import argparse
import copy
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fit_layer import Compare, measured_rows, rel_err  # noqa: E402

WEIGHTS = [0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    base = json.load(open(a.base))
    if not base.get("power"):
        raise SystemExit(f"{a.base}: no power fit (calibrate --gemm-only measures it)")
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        # every measured row, units issued one by one and as CUDA graphs
        cal = Compare(a.bin, measured_rows(a.files, False, with_graphs=True), tmp, "cal")
        held = Compare(a.bin, measured_rows(a.files, True, with_graphs=True), tmp, "held")
        for w in WEIGHTS:
            p = copy.deepcopy(base)
            p["power"]["comm_weight"] = w
            ce, he = (np.abs(rel_err(*c.run(p))) * 100 for c in (cal, held))
            print(f"comm_weight {w:5.2f}: calibration shapes {np.median(ce):.2f}% ({len(ce)} rows), "
                  f"held-out shapes {np.median(he):.2f}% ({len(he)} rows)")
            if best is None or np.median(ce) < best[0]:
                best = (np.median(ce), w)
    print(f"chosen on the calibration shapes: comm_weight {best[1]}")
    out = copy.deepcopy(base)
    out["power"]["comm_weight"] = best[1]
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
