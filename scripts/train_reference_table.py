#!/usr/bin/env python3
"""Markdown table of scripts/train_reference.py's results CSV (the
reference's training step per scenario, EP and LLEP), for
reports/train/reference/README.md.

    python3 scripts/train_reference_table.py reports/train/reference/reference-train.csv
"""

import csv
import sys

GIB = 2**30


def main(path):
    rows = list(csv.DictReader(open(path)))
    by = {(r["scenario"], r["policy"]): r for r in rows}
    print("| scenario | policy | LPT path | fwd ms | bwd ms | fwd+bwd ms | min..max ms | LLEP vs EP | "
          "peak allocated GiB (per GPU) | peak reserved GiB | driver used GiB |")
    print("|---|---|---|---:|---:|---:|---|---:|---|---|---|")
    gib = lambda s: " / ".join(f"{int(v) / GIB:.2f}" for v in s.split(";"))
    for r in rows:
        ep = by.get((r["scenario"], "ep"))
        speed = float(ep["t_total_ms"]) / float(r["t_total_ms"]) if ep else float("nan")
        print(f"| {r['scenario']} | {r['policy']} λ={float(r['lambda']):g} | {'yes' if r['lpt_path'] == 'True' else 'no'} "
              f"| {float(r['t_fwd_ms']):.2f} | {float(r['t_bwd_ms']):.2f} | {float(r['t_total_ms']):.2f} "
              f"| {float(r['t_total_min_ms']):.1f}..{float(r['t_total_max_ms']):.1f} | {speed:.2f}x "
              f"| {gib(r['peak_alloc_per_gpu'])} | {gib(r['peak_reserved_per_gpu'])} | {gib(r['driver_used_per_gpu'])} |")


if __name__ == "__main__":
    main(sys.argv[1])
