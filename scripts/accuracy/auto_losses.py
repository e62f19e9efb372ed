#!/usr/bin/env python3
"""Where llep-auto loses on replayed matrix passes: each input's llep-auto
row against the better of EP and LLEP (the pass's plain settings), split
into what it lost by running the same plan as that setting but slower
(its own overhead: planning both plans and the decision, on the host) and
what it lost by choosing the other plan. Also the noise floor inside a
pass (balanced inputs, where LLEP plans nothing and llep-auto runs EP with
no decision) and the spread of one setting between passes.

Each file is one pass (`replay ... --policy ep,llep --ratio 1.3,auto`
over the matrix, as `reports/accuracy/session*/call*.sh` run it); the pass
is named after the file (matrix-g16.parquet: g16). Rows of one input are
averaged over its (step, layer) samples.

Usage: auto_losses.py PASS.parquet [PASS.parquet ...]
"""
import os
import sys

import numpy as np
import pandas as pd

KEY = ["scenario", "tokens_per_rank", "hidden_size", "experts"]


def per_pass(path):
    t = pd.read_parquet(path)
    t = t[t.source == "measured"]
    g = (
        t.groupby(KEY + ["policy"])
        .agg(tot=("t_total_ms", "mean"), use=("use_llep", "mean"), ov=("t_overhead_ms", "mean"))
        .reset_index()
    )
    g["pass"] = os.path.basename(path).removesuffix(".parquet").removeprefix("matrix-")
    return g


def main(paths):
    if not paths:
        sys.exit(__doc__)
    d = pd.concat([per_pass(p) for p in paths])
    idx = ["pass"] + KEY
    tot = d.pivot_table(index=idx, columns="policy", values="tot")
    ov = d.pivot_table(index=idx, columns="policy", values="ov")
    use = d[d.policy == "llep-auto"].set_index(idx)["use"]
    chose_llep = use.reindex(tot.index) > 0.5
    best = tot[["ep", "llep"]].min(axis=1)
    r = pd.DataFrame(index=tot.index)
    r["ep"], r["llep"], r["auto"] = tot["ep"], tot["llep"], tot["llep-auto"]
    r["chose"] = np.where(chose_llep, "llep", "ep")
    r["loss_%"] = (tot["llep-auto"] / best - 1) * 100
    same = np.where(chose_llep, tot["llep"], tot["ep"])
    r["same_plan_%"] = (tot["llep-auto"] / same - 1) * 100
    r["wrong_plan_%"] = r["loss_%"] - r["same_plan_%"]
    r["overhead_more_us"] = (ov["llep-auto"] - np.where(chose_llep, ov["llep"], ov["ep"])) * 1e3

    n, bad = len(r), r[r["loss_%"] > 3]
    print(f"inputs: {n}; llep-auto more than 3% slower than the better of EP and LLEP: {len(bad)}")
    wrong = bad[bad["wrong_plan_%"] > bad["same_plan_%"]]
    print(f"  mostly the other plan: {len(wrong)}; mostly its own overhead: {len(bad) - len(wrong)}")
    s = r["same_plan_%"]
    print(f"llep-auto against the setting whose plan it ran: median {s.median():.2f}%, p90 {s.quantile(0.9):.2f}%")
    o = r["overhead_more_us"]
    print(f"its overhead phase beyond that setting's: median {o.median():.1f} us, p90 {o.quantile(0.9):.1f} us")
    if "balanced" in r.index.get_level_values("scenario"):
        b = r.xs("balanced", level="scenario")
        x = (b["auto"] / b["ep"] - 1) * 100
        y = (b["llep"] / b["ep"] - 1) * 100
        print(
            f"noise inside a pass (balanced: no decision, one plan): llep-auto / EP median {x.median():.2f}%, "
            f"p90 {x.quantile(0.9):.2f}%; LLEP / EP median {y.median():.2f}%, p90 {y.quantile(0.9):.2f}%"
        )
    if d["pass"].nunique() > 1:
        for pol in ["ep", "llep"]:
            x = d[d.policy == pol].pivot_table(index=KEY, columns="pass", values="tot")
            sp = (x.max(axis=1) / x.min(axis=1) - 1) * 100
            print(f"{pol} between passes (max / min - 1): median {sp.median():.1f}%, p90 {sp.quantile(0.9):.1f}%")
    if len(bad):
        print()
        print(bad.round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
