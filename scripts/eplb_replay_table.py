#!/usr/bin/env python3
"""Markdown tables of an EPLB replay (reports/eplb/replay/README.md) from
`llep-trace replay --with-sim` Parquet files: per input and policy setting,
measured and simulated layer time (summed over the input's layer-steps),
speedup over EP, peak memory (driver's view, busiest GPU) and the dense
check's relative error; then the simulated-against-measured error per
policy, row by row (one row = one layer-step).

    python3 scripts/eplb_replay_table.py FILE.parquet [...]
"""
import re
import sys

import polars as pl

ORDER = {"ep": 0, "llep": 1, "eplb": 2, "eplb+llep": 3}


def setting(policy, lam, note):
    m = re.search(r"eplb R=(\d+)", note or "")
    g = "" if policy in ("ep", "eplb") else (" λ=" + (f"{lam:g}" if lam is not None else "always"))
    r = f" R={m.group(1)}" if m and policy.startswith("eplb") else ""
    w = re.search(r"previous (\d+) steps, rebalanced every (\d+) steps", note or "")
    if r and w:
        r += f" prev {w.group(1)}/{w.group(2)}"
    sp = re.search(r"replica split (\w+)", note or "")
    if r and sp and sp.group(1) != "sglang":
        r += f" {sp.group(1)}"
    return f"{policy}{r}{g}"


def load(files):
    d = pl.concat([pl.read_parquet(f).with_columns(pl.lit(i).alias("file"))
                   for i, f in enumerate(files)], how="diagonal_relaxed")
    d = d.with_columns(
        pl.when(pl.col("scenario") != "").then(pl.col("scenario"))
        .otherwise(pl.col("trace").str.replace(r"\.parquet$", "")).alias("input"),
        pl.struct(["policy", "lambda", "input_note"]).map_elements(
            lambda s: setting(s["policy"], s["lambda"], s["input_note"]), return_dtype=pl.String
        ).alias("setting"),
        pl.col("driver_mem_per_gpu").list.max().alias("driver_max"),
    )
    return d


def main(files):
    d = load(files)
    m = d.filter(pl.col("source") == "measured")
    s = d.filter(pl.col("source") == "simulated")
    key = ["file", "input", "step", "layer", "setting", "input_note"]
    j = m.join(s.select(key + [pl.col("t_total_ms").alias("sim_ms"),
                               pl.col("peak_mem_max_bytes").alias("sim_peak")]), on=key, how="left")
    agg = (j.group_by(["input", "setting", "policy"], maintain_order=True)
           .agg(pl.len().alias("n"), pl.col("t_total_ms").sum().alias("ms"),
                pl.col("sim_ms").sum().alias("sim"), pl.col("driver_max").max().alias("mem"),
                pl.col("rel_error").max().alias("err"), pl.col("imbalance_ratio").mean().alias("imb"),
                pl.col("max_load_after").sum().alias("maxl"), pl.col("mean_load").sum().alias("meanl")))
    gib = 1024 ** 3
    for inp in agg["input"].unique(maintain_order=True):
        a = agg.filter(pl.col("input") == inp).with_columns(
            pl.col("policy").replace_strict(ORDER, default=9).alias("o"),
            pl.col("setting").str.extract(r"R=(\d+)").cast(pl.Int64).fill_null(0).alias("r"),
            pl.col("setting").str.contains("prev").alias("w")).sort(["o", "r", "w"], maintain_order=True)
        ep = a.filter(pl.col("setting") == "ep")
        ep_ms = ep["ms"][0] if ep.height else None
        ep_sim = ep["sim"][0] if ep.height else None
        print(f"\n**{inp}** ({a['n'][0]} layer-step(s); times summed over them)\n")
        print("| setting | measured ms | vs EP | simulated ms | vs EP (sim) | error | max/mean after | peak GiB/GPU (driver) | rel. error vs dense fp32 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in a.iter_rows(named=True):
            sp = f"{ep_ms / r['ms']:.2f}x" if ep_ms else "-"
            ssp = f"{ep_sim / r['sim']:.2f}x" if ep_sim and r["sim"] else "-"
            err = f"{(r['sim'] - r['ms']) / r['ms'] * 100:+.1f}%" if r["sim"] else "-"
            print(f"| {r['setting']} | {r['ms']:.2f} | {sp} | {r['sim']:.2f} | {ssp} | {err} | "
                  f"{r['maxl'] / r['meanl']:.2f} | {r['mem'] / gib:.2f} | {r['err']:.1e} |")
    e = j.filter(pl.col("sim_ms").is_not_null()).with_columns(
        ((pl.col("sim_ms") - pl.col("t_total_ms")) / pl.col("t_total_ms") * 100).abs().alias("terr"),
        ((pl.col("sim_peak").cast(pl.Float64) - pl.col("driver_max").cast(pl.Float64))
         / pl.col("driver_max").cast(pl.Float64) * 100).abs().alias("merr"),
        pl.col("policy").replace_strict(ORDER, default=9).alias("o"))
    print("\nSimulated against measured, row by row (|error| %, one row = one layer-step):\n")
    print("| policy | rows | time median | time worst | peak memory median | peak memory worst |")
    print("| --- | --- | --- | --- | --- | --- |")
    t = (e.group_by(["o", "policy"]).agg(pl.len().alias("n"), pl.col("terr").median().alias("tm"),
                                          pl.col("terr").max().alias("tw"), pl.col("merr").median().alias("mm"),
                                          pl.col("merr").max().alias("mw")).sort("o"))
    for r in t.iter_rows(named=True):
        print(f"| {r['policy']} | {r['n']} | {r['tm']:.1f}% | {r['tw']:.1f}% | {r['mm']:.1f}% | {r['mw']:.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
