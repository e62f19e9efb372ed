#!/usr/bin/env python3
"""Choose a profile's `power.comm_weight` (how much the token exchange
counts toward a GPU's GEMM duty under the power cap, `src/sim/power.rs`)
on measured rows of the CALIBRATION shapes only, and print the held-out
shapes' error apart.

For each candidate weight, `llep-trace compare` prices every measured row
with the profile carrying that weight; the weight with the lowest median
|error| of the layer time over the calibration shapes' rows is written to
--out. The held-out shapes (DeepSeek-V3 and Qwen3-30B-A3B experts) never
choose anything.

Usage: fit_power.py --bin target/release/llep-trace --base PROFILE.json \
          --out FITTED.json RESULTS.parquet...
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import pyarrow.parquet as pq

HELD_OUT = {(7168, 2048), (2048, 768)}
WEIGHTS = [0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0]


def errors(binary, profile, files):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cmp.parquet")
        subprocess.run([binary, "compare", *files, "--profile", profile, "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = pq.read_table(out).to_pandas()
    m = t[t.source == "measured"].reset_index(drop=True)
    s = t[t.source == "simulated"].reset_index(drop=True)
    err = np.abs(s.t_total_ms.values / m.t_total_ms.values - 1) * 100
    held = np.array([(h, i) in HELD_OUT for h, i in zip(m.hidden_size, m.intermediate_size)])
    return err, held


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
    with tempfile.TemporaryDirectory() as d:
        for w in WEIGHTS:
            p = dict(base, power=dict(base["power"], comm_weight=w))
            path = os.path.join(d, "p.json")
            json.dump(p, open(path, "w"))
            err, held = errors(a.bin, path, a.files)
            cal, ho = np.median(err[~held]), np.median(err[held])
            print(f"comm_weight {w:5.2f}: calibration shapes {cal:.2f}% ({(~held).sum()} rows), "
                  f"held-out shapes {ho:.2f}% ({held.sum()} rows)")
            if best is None or cal < best[0]:
                best = (cal, w)
    print(f"chosen on the calibration shapes: comm_weight {best[1]}")
    out = dict(base, power=dict(base["power"], comm_weight=best[1]))
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
