#!/usr/bin/env python3
"""Speedup of LLEP over EP against the batch size, from `llep-trace simulate`
results files (one per tokens-per-rank), for the README's "when does LLEP
pay" figure. Usage: when_llep_pays.py OUT.png RESULTS.parquet...
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

out, files = sys.argv[1], sys.argv[2:]
rows = pl.concat([pl.read_parquet(f) for f in files])
ep = rows.filter(pl.col("policy") == "ep").select(
    "scenario", "tokens_per_rank", pl.col("t_total_ms").alias("ep_ms")
)
other = rows.filter(pl.col("policy") != "ep").join(ep, on=["scenario", "tokens_per_rank"])
other = other.with_columns(
    (pl.col("ep_ms") / pl.col("t_total_ms")).alias("speedup"),
    pl.when(pl.col("policy") == "llep")
    .then(pl.format("LLEP λ={}", pl.col("lambda")))
    .otherwise(pl.col("policy"))
    .alias("setting"),
)
fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=130)
styles = {"llep-auto": "--"}
for (scenario, setting), g in sorted(other.group_by(["scenario", "setting"]), key=lambda x: x[0]):
    g = g.sort("tokens_per_rank")
    ax.plot(
        g["tokens_per_rank"],
        g["speedup"],
        styles.get(setting, "-"),
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
