"""Check `llep-trace tune` against measurement.

For every input replayed with EP and ungated LLEP ("always") rows, ask
`llep-trace tune` (simulation only) for its lambda, then price that lambda
with the *measured* rows: a layer runs LLEP iff its max/mean load is at
least lambda (the reference's gate), so its measured time is the measured
"always" row if so, else the measured EP row. Compare with the best
lambda of the same grid priced the same way.

Usage: python3 scripts/tune_check.py BINARY RESULTS.parquet... > table.md
"""
import json
import subprocess
import sys

import polars as pl

binary, files = sys.argv[1], sys.argv[2:]
rows = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
meas = rows.filter(pl.col("source") == "measured")
grid = [round(1.0 + 0.05 * i, 2) for i in range(41)]

keys = ["trace", "scenario", "gpus", "tokens_per_rank", "hidden_size", "intermediate_size", "experts", "top_k"]
print("| input | GPUs | tokens/rank | tune's lambda | measured ms at it | best lambda (measured) | best measured ms | gap |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
worst = 0.0
for key, g in meas.group_by(keys, maintain_order=True):
    trace, scenario, gpus, tpr, d, i, e, k = key
    ep = g.filter(pl.col("policy") == "ep")
    on = g.filter((pl.col("policy") == "llep") & pl.col("lambda").is_null())
    if ep.height == 0 or on.height == 0:
        continue
    layers = ep.join(on.select(["step", "layer", pl.col("t_total_ms").alias("on_ms")]), on=["step", "layer"])
    cmd = [binary, "tune", "-q", "--json", "--gpus", str(gpus), "--profile", "h200"]
    if scenario:
        cmd += ["--synthetic", scenario, "--tokens-per-rank", str(tpr), "--experts", str(e), "--top-k", str(k),
                "--hidden-size", str(d), "--intermediate-size", str(i)]
    else:
        steps = ",".join(str(s) for s in sorted(set(layers["step"].to_list())))
        lays = ",".join(str(s) for s in sorted(set(layers["layer"].to_list())))
        cmd += ["--trace", f"traces/{trace}", "--tokens-per-rank", str(tpr), "--steps", steps, "--layers", lays]
    rec = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["recommended"]

    def measured(lam, never=False):
        t = 0.0
        for r in layers.iter_rows(named=True):
            use = (not never) and (lam is None or r["imbalance_ratio"] >= lam)
            t += r["on_ms"] if use else r["t_total_ms"]
        return t

    chosen = measured(rec["lambda"], rec["never"])
    options = [(f"{l}", measured(l)) for l in grid] + [("always", measured(None)), ("never", measured(None, True))]
    best_label, best = min(options, key=lambda x: x[1])
    gap = (chosen / best - 1) * 100
    worst = max(worst, gap)
    label = "never" if rec["never"] else ("always" if rec["lambda"] is None else rec["lambda"])
    name = scenario or trace
    print(f"| {name} | {gpus} | {tpr} | {label} | {chosen:.2f} | {best_label} | {best:.2f} | {gap:+.2f}% |")
print()
print(f"worst gap: {worst:.2f}% (target: within 2% of the best measured time)")
