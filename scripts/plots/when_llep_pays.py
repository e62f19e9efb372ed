#!/usr/bin/env python3
"""Speedup of LLEP over EP against the batch size, from `llep-trace simulate`
results files (one per tokens-per-rank, and per way of launching the expert
units: rows priced with `--cuda-graphs on` are their own series, dotted),
for the README's "when does LLEP pay" figure.
Usage: when_llep_pays.py OUT.png RESULTS.parquet...
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

out, files = sys.argv[1], sys.argv[2:]
rows = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
# files written before the column: their units were issued one by one
if "cuda_graphs" not in rows.columns:
    rows = rows.with_columns(pl.lit(False).alias("cuda_graphs"))
rows = rows.with_columns(pl.col("cuda_graphs").fill_null(False))
key = ["scenario", "tokens_per_rank", "cuda_graphs"]
ep = rows.filter(pl.col("policy") == "ep").select(*key, pl.col("t_total_ms").alias("ep_ms"))
other = rows.filter(pl.col("policy") != "ep").join(ep, on=key)
setting = (
    pl.when(pl.col("policy") == "llep")
    .then(pl.format("LLEP λ={}", pl.col("lambda")))
    .otherwise(pl.col("policy"))
)
other = other.with_columns(
    (pl.col("ep_ms") / pl.col("t_total_ms")).alias("speedup"),
    pl.when(pl.col("cuda_graphs"))
    .then(pl.format("{}, CUDA graphs", setting))
    .otherwise(setting)
    .alias("setting"),
)
fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=130)
styles = {"llep-auto": "--"}
for (scenario, setting), g in sorted(other.group_by(["scenario", "setting"]), key=lambda x: x[0]):
    g = g.sort("tokens_per_rank")
    ax.plot(
        g["tokens_per_rank"],
        g["speedup"],
        ":" if setting.endswith("CUDA graphs") else styles.get(setting, "-"),
        marker="o",
        label=f"{scenario}: {setting}",
    )
ax.axhline(1.0, color="grey", lw=1)
ax.set_xscale("log", base=2)
ax.set_xlabel("tokens per GPU (batch)")
ax.set_ylabel("speedup over EP (simulated)")
ax.set_title("gpt-oss-120b layer, 4 x H200 (h200 profile): when LLEP pays")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(out)
print(f"wrote {out}")
