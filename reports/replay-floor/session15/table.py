"""Session 15's tables (issue 15), from this folder: python3 table.py
1. call 4: the gpt-oss layer at 32,768 tokens per GPU on 2 x H200, copy engines (direct pushes) and NCCL,
   --gemm fused and lt, overlap on; the twin (--with-sim h200: fused tables, copy-engine drag 0.1) and
   the reference LLEP layer's forward in the same lease.
2. call 2: the copy engines' direct pushes against the staged path (LLEP_TRACE_CE_ROWS=staged), and the
   end-chunk weight (LLEP_TRACE_CHUNK_ENDS), all --gemm fused, one lease.
3. call 4's rows held out of the copy-engine drag's choice: the twin's error per file."""
import csv
import glob
import os
import pyarrow.parquet as pq

ORDER = ["balanced", "30:4", "50:4", "80:4", "95:4", "95:1"]


def rows(path):
    t = pq.read_table(path).to_pandas()
    out = {}
    for _, r in t.iterrows():
        out.setdefault((r.scenario, r.policy), {})[r.source] = r
    return out


def name(pol):
    return "LLEP 1.3" if pol == "llep" else "EP"


ref = {}
with open("call4/reference-forward-2gpu.csv") as f:
    for r in csv.DictReader(f):
        ref[(r["scenario"], r["policy"])] = float(r["t_total_ms"])

print("## 1. The layer (call 4)\n")
print("| exchange | GEMMs | scenario | policy | total ms | compute | exposed | rel err | peak GiB | simulated (err) | reference | ours/reference |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
summary = []
for ex in ["copy-engine", "nccl"]:
    for g in ["fused", "lt"]:
        d = rows(f"call4/layer-{ex}-{g}.parquet")
        errs = []
        for sc in ORDER:
            for pol in ["ep", "llep"]:
                m = d[(sc, pol)]["measured"]
                s = d[(sc, pol)]["simulated"]
                e = s.t_total_ms / m.t_total_ms - 1
                errs.append(abs(e))
                rv = ref[(sc, pol)]
                print(
                    f"| {ex} | {g} | {sc} | {name(pol)} | {m.t_total_ms:.2f} | {m.t_compute_ms:.2f} | "
                    f"{m.t_exposed_comm_ms:.2f} | {m.rel_error:.1e} | {m.peak_mem_max_bytes / 2**30:.2f} | "
                    f"{s.t_total_ms:.2f} ({100 * e:+.1f}%) | {rv:.2f} | {m.t_total_ms / rv:.2f} |"
                )
        errs.sort()
        summary.append((ex, g, len(errs), errs[len(errs) // 2], errs[-1]))
print()
for ex, g, n, med, worst in summary:
    print(f"- twin against measured, {ex} / {g}: median |error| {100 * med:.1f}%, worst {100 * worst:.1f}% ({n} rows)")

print("\n## 2. Direct pushes and end chunks (call 2, --gemm fused)\n")
tags = ["ce-staged-e1", "ce-staged-e1b", "ce-direct-e1", "ce-direct-e05", "ce-direct-e035", "nccl-e1", "nccl-e05"]
data = {t: rows(f"call2/layer-{t}.parquet") for t in tags}
print("| scenario | policy | " + " | ".join(tags) + " |")
print("|---|---|" + "---|" * len(tags))
for sc in ["balanced", "50:4", "80:4", "95:4", "95:1"]:
    pol = "ep" if sc == "balanced" else "llep"
    cells = []
    for t in tags:
        m = data[t][(sc, pol)]["measured"]
        cells.append(f"{m.t_total_ms:.2f} ({m.t_compute_ms:.2f} + {m.t_exposed_comm_ms:.2f})")
    print(f"| {sc} | {name(pol)} | " + " | ".join(cells) + " |")
print("\n(total ms (compute busy + exposed); e1: equal chunks, e05 / e035: first and last chunk 0.5 / 0.35 of the others)")

print("\n## 3. Held out of the copy-engine drag's choice (call 4, copy engines, twin with drag 0.1)\n")
print("| shape | tokens/GPU | GEMMs | rows | median abs error | worst |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob("call4/held/*.parquet")):
    d = rows(f)
    errs = sorted(abs(v["simulated"].t_total_ms / v["measured"].t_total_ms - 1) for v in d.values())
    shape, tok, g = os.path.basename(f)[:-8].split("-")
    print(f"| {shape} | {tok} | {g} | {len(errs)} | {100 * errs[len(errs) // 2]:.1f}% | {100 * errs[-1]:.1f}% |")
