#!/usr/bin/env python3
"""Issue 13's replay targets from a `replay --pass train` Parquet file:
per scenario and policy, the train step against the policy's own balanced
step, peak memory against its balanced peak, saved activations, the
largest relative error of the dense checks, and the simulated twin's error.
Usage: train_targets.py FILE.parquet"""
import sys

import pyarrow.parquet as pq

rows = pq.read_table(sys.argv[1]).to_pylist()
meas = [r for r in rows if r["source"] == "measured"]
sim = {(r["scenario"], r["policy"]): r for r in rows if r["source"] != "measured"}
bal = {r["policy"]: r for r in meas if r["scenario"] == "balanced"}
gib = 1 << 30
print("| scenario | policy | train step ms | x own balanced | fwd ms | bwd ms | peak GiB | x balanced peak | saved GiB | rel err | sim ms | sim err |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
worst = {}
for r in meas:
    b = bal.get(r["policy"])
    x = r["t_total_ms"] / b["t_total_ms"] if b else float("nan")
    mx = r["peak_mem_max_bytes"] / b["peak_mem_max_bytes"] if b else float("nan")
    bwd = r["t_bwd_combine_ms"] + r["t_bwd_dgrad_ms"] + r["t_bwd_wgrad_ms"] + r["t_bwd_dispatch_ms"]
    fwd = r["t_total_ms"] - bwd
    s = sim.get((r["scenario"], r["policy"]))
    se = (s["t_total_ms"] / r["t_total_ms"] - 1) * 100 if s else float("nan")
    e = r["rel_error"]
    print(f"| {r['scenario']} | {r['policy']} | {r['t_total_ms']:.2f} | {x:.3f} | {fwd:.2f} | "
          f"{bwd:.2f} | {r['peak_mem_max_bytes'] / gib:.2f} | {mx:.3f} | "
          f"{r['saved_act_bytes'] / gib:.2f} | {e if e is None else f'{e:.1e}'} | "
          f"{s['t_total_ms'] if s else float('nan'):.2f} | {se:+.1f}% |")
    if r["scenario"] != "balanced":
        w = worst.setdefault(r["policy"], [0, 0])
        w[0], w[1] = max(w[0], x), max(w[1], mx)
print()
for p, (x, mx) in worst.items():
    print(f"{p}: worst skewed train step {x:.3f}x its balanced, worst peak {mx:.3f}x its balanced peak")
errs = [r["rel_error"] for r in meas]
print(f"largest rel err over {len(errs)} rows: {max(e if e is not None else float('inf') for e in errs):.1e}")
