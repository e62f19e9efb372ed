#!/usr/bin/env python3
"""Issue 15 part 2 tables from a device call's results (measured rows, and
the simulated twins `replay --with-sim` or `compare --out` put beside them):
overlap on against off per scenario and policy, exposed communication,
peak memory, dense-check error, and the cost model's error on the
pipelined rows. Usage: overlap_table.py RESULTS.parquet [TWINS.parquet]"""
import sys
import pandas as pd

rows = pd.read_parquet(sys.argv[1])
if 'file' not in rows:
    rows['file'] = ''
m = rows[rows.source == 'measured']
# twins: from the second file when given (e.g. `compare --out`), else the
# simulated rows beside the measured ones
s = pd.read_parquet(sys.argv[2]) if len(sys.argv) > 2 else rows
s = s[s.source == 'simulated']
key = ['scenario', 'policy', 'tokens_per_rank']


def lab(r):
    return r.policy + ('' if r.policy == 'ep' else f" {r['lambda'] if pd.notna(r['lambda']) else 'always'}")


def cell(v, f='{:.2f}'):
    return '-' if v is None or pd.isna(v) else f.format(v)


print('| tokens/GPU | scenario | policy | chunks | off total | on total | on/off | exposed off | exposed on | compute off | compute on | peak on/off | rel err on | sim on | sim err |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
on = m[m.overlap]
off = m[~m.overlap]
errs = []
for _, r in on.sort_values(['tokens_per_rank', 'file', 'scenario', 'policy']).iterrows():
    o = off[(off.scenario == r.scenario) & (off.policy == r.policy) & (off.tokens_per_rank == r.tokens_per_rank)]
    o = o.iloc[0] if len(o) else None
    tw = s[(s.scenario == r.scenario) & (s.policy == r.policy) & (s.tokens_per_rank == r.tokens_per_rank)
           & (s.overlap) & (s.overlap_chunks == r.overlap_chunks)]
    sim = tw.t_total_ms.iloc[0] if len(tw) else None
    err = None if sim is None else (sim - r.t_total_ms) / r.t_total_ms
    if err is not None:
        errs.append(abs(err))
    note = f" ({r.file})" if r.file not in ('', 'on.parquet') else ''
    print(f"| {r.tokens_per_rank} | {r.scenario}{note} | {lab(r)} | {r.overlap_chunks} | "
          f"{cell(None if o is None else o.t_total_ms)} | {r.t_total_ms:.2f} | "
          f"{cell(None if o is None else r.t_total_ms / o.t_total_ms, '{:.3f}')} | "
          f"{cell(None if o is None else o.t_exposed_comm_ms)} | {cell(r.t_exposed_comm_ms)} | "
          f"{cell(None if o is None else o.t_compute_ms)} | {r.t_compute_ms:.2f} | "
          f"{cell(None if o is None else r.peak_mem_max_bytes / o.peak_mem_max_bytes, '{:.3f}')} | "
          f"{cell(r.rel_error, '{:.1e}')} | {cell(sim)} | {cell(None if err is None else 100 * err, '{:+.1f}%')} |")
if errs:
    e = pd.Series(errs) * 100
    print(f"\nsimulated vs measured, pipelined rows: median {e.median():.1f}%, worst {e.max():.1f}% over {len(e)} rows")
