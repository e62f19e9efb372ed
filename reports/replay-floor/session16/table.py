"""Session 16's tables (issue 15), from this folder: python3 table.py > table.md
1. call 5, the final build: the gpt-oss layer at 32,768 tokens per GPU on 2 x H200, --gemm fused, copy engines,
   overlap on (twice), off, NCCL; --gemm lt; the twin priced by the final profile (`llep-trace compare
   --profile h200 FILE --out ...`, its measured and simulated totals kept in call5/twin.csv), and the
   reference LLEP layer's forward in the same call.
2. the changes one by one, each in one lease, in turns: call 2 (the grouped down kernel for every unit, the down
   GEMMs through cuBLASLt, session 15's build), call 3 (the split rule), call 4 (16 units a launch; chunks),
   call 6 (16 against 8 units on two held-out layers).
3. the twin's error on the final profile, per file of call 5."""
import csv
import pyarrow.parquet as pq


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

ORDER = ["balanced", "30:4", "50:4", "80:4", "95:4", "95:1"]
FLOP = 2 * 32768 * 4 * 2880 * (2 * 2880 + 2880)  # expert FLOPs a GPU, gpt-oss, 32,768 tokens per GPU


def rows(path):
    t = pq.read_table(path).to_pandas()
    out = {}
    for _, r in t.iterrows():
        out.setdefault((r.scenario, r.policy), {})[r.source] = r
    return out


def name(pol):
    return "LLEP 1.3" if pol == "llep" else "EP"


twin = {}
with open("call5/twin.csv") as f:
    for r in csv.DictReader(f):
        twin[(r["file"], r["scenario"], r["policy"])] = (float(r["measured_ms"]), float(r["simulated_ms"]))

ref = {}
with open("call5/reference-forward-2gpu.csv") as f:
    for r in csv.DictReader(f):
        ref[(r["scenario"], r["policy"])] = (float(r["t_total_ms"]), float(r["t_total_min_ms"]))

print("## 1. The final build (call 5, 2 x H200, one call)\n")
print("| run | scenario | policy | total ms | compute | TFLOP/s in compute | exposed | rel err | peak GiB | twin (err) | reference (min) | ours/reference |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
summary = []
for v in ["final", "final2", "off", "nccl", "lt"]:
    d = rows(f"call5/layer-{v}.parquet")
    errs = []
    for sc in ORDER:
        for pol in ["ep", "llep"]:
            m = d[(sc, pol)]["measured"]
            tm, ts = twin[(f"layer-{v}", sc, pol)]
            assert abs(tm - m.t_total_ms) < 1e-3, "twin.csv is not this file's"
            e = ts / m.t_total_ms - 1
            errs.append(abs(e))
            rv, rmin = ref[(sc, pol)]
            print(
                f"| {v} | {sc} | {name(pol)} | {m.t_total_ms:.2f} | {m.t_compute_ms:.2f} | "
                f"{FLOP / m.t_compute_ms / 1e9:.0f} | {m.t_exposed_comm_ms:.2f} | {m.rel_error:.1e} | "
                f"{m.peak_mem_max_bytes / 2**30:.2f} | {ts:.2f} ({100 * e:+.1f}%) | "
                f"{rv:.2f} ({rmin:.2f}) | {m.t_total_ms / rv:.2f} |"
            )
    errs.sort()
    summary.append((v, len(errs), median(errs), errs[-1]))
print()
print("final and final2: `--gemm fused --exchange copy-engine`, overlap on; off: the same, overlap off; nccl: fused through NCCL; lt: `--gemm lt`, copy engines.\n")
for v, n, med, worst in summary:
    print(f"- twin against measured, {v}: median |error| {100 * med:.1f}%, worst {100 * worst:.1f}% ({n} rows)")


def grid(title, files, labels):
    print(f"\n{title}\n")
    print("| scenario | policy | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    ds = [rows(f) for f in files]
    for sc in ORDER:
        for pol in ["ep", "llep"]:
            cells = [f"{d[(sc, pol)]['measured'].t_total_ms:.2f}" for d in ds]
            print(f"| {sc} | {name(pol)} | " + " | ".join(cells) + " |")


print("\n## 2. The changes one by one (total ms, medians of 10 runs)")
grid(
    "Call 2 (one lease; in this order: new, before, downlt, new2, nccl, lt): every unit's down GEMM through the "
    "grouped kernel (new, new2), through cuBLASLt (downlt: the larger scratch alone), session 15's build (before)",
    [f"call2/layer-{v}.parquet" for v in ["new", "new2", "downlt", "before"]],
    ["grouped", "grouped again", "down via cuBLASLt", "session 15"],
)
grid(
    "Call 3 (one lease; in this order: split, before, grouped, downlt, split2): the split rule (units of 4,096 rows "
    "or more through cuBLASLt)",
    [f"call3/layer-{v}.parquet" for v in ["split", "split2", "grouped", "downlt", "before", "off"]],
    ["split", "split again", "grouped", "down via cuBLASLt", "session 15", "split, overlap off"],
)
grid(
    "Call 4 (one lease; in this order: on, off, u16, c3, c4, c8, u16off, on2, u16b): launches of up to 16 units "
    "(u16, an experimental build then) against 8, and the chunk count (c3, c4, c8; default 6)",
    [f"call4/layer-{v}.parquet" for v in ["on", "on2", "u16", "u16b", "off", "u16off", "c3", "c4", "c8"]],
    ["8 units", "8 again", "16 units", "16 again", "8, off", "16, off", "3 chunks", "4 chunks", "8 chunks"],
)
print("\nCall 6 (one lease, in turns): 16 against 8 units a launch on two held-out layers (8,192 tokens per GPU)\n")
print("| layer | scenario | policy | 16 (turn 1) | 8 (turn 1) | 16 (turn 2) | 8 (turn 2) |")
print("|---|---|---|---|---|---|---|")
for m in ["qwen3", "gptoss"]:
    ds = [rows(f"call6/{m}-{v}.parquet") for v in ["u16-1", "u8-1", "u16-2", "u8-2"]]
    for sc in ["balanced", "30:4", "95:1"]:
        for pol in ["ep", "llep"]:
            print(f"| {m} | {sc} | {name(pol)} | " + " | ".join(f"{d[(sc, pol)]['measured'].t_total_ms:.2f}" for d in ds) + " |")

print("\n## 3. The twin on the final profile, held-out shapes (call 5, copy engines, --gemm fused)\n")
print("| file | rows | median | worst |")
print("|---|---|---|---|")
for f in ["gptoss-8192", "mixtral-8192", "olmoe-16384", "qwen3-8192"]:
    e = sorted(abs(ts / tm - 1) for (g, _, _), (tm, ts) in twin.items() if g == f)
    print(f"| {f} | {len(e)} | {100 * median(e):.1f}% | {100 * e[-1]:.1f}% |")
