"""Read a trace and a results file with polars, pandas (pyarrow) and duckdb,
without llep-trace, and print a JSON summary the Rust test compares with
what the tool itself computed."""
import json
import sys

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

trace, results = sys.argv[1], sys.argv[2]

loads = pl.read_parquet(trace)
meta = json.loads(pl.read_parquet_metadata(trace)["llep_trace.meta"])
# pyarrow sees the same key-value metadata
assert pq.ParquetFile(trace).metadata.metadata[b"llep_trace.meta"]
per_layer = (
    loads.group_by(["step", "layer"]).agg(pl.col("count").sum().alias("total")).sort(["step", "layer"])
)
pdf = pd.read_parquet(trace)
duck_total = duckdb.connect().execute(f"select sum(count) from read_parquet('{trace}')").fetchone()[0]

res = pl.read_parquet(results)
by_policy = res.group_by("policy").agg(pl.col("t_total_ms").sum()).sort("policy")
# list columns come back as lists
first_loads = res.filter(pl.col("policy") == "ep")["loads_before"][0].to_list()

print(
    json.dumps(
        {
            "columns": loads.columns,
            "rows": loads.height,
            "model": meta["model"]["name"],
            "num_experts": meta["model"]["num_experts"],
            "licence": meta["licence"],
            "first_total": int(per_layer["total"][0]),
            "pandas_total": int(pdf["count"].sum()),
            "duckdb_total": int(duck_total),
            "result_rows": res.height,
            "policy_totals": {p: t for p, t in zip(by_policy["policy"], by_policy["t_total_ms"])},
            "first_ep_loads": first_loads,
        }
    )
)
