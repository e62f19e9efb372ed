"""Session 14's table: the gpt-oss layer at 32,768 tokens per GPU on 2 x H200 through
--gemm lt and --gemm fused (NCCL and copy-engine exchange, overlap on), the
twin's price and the reference's forward. Run from this folder:
python3 table.py"""
import csv
import pyarrow.parquet as pq

ORDER = ["balanced", "30:4", "50:4", "80:4", "95:4", "95:1"]


def rows(path):
    t = pq.read_table(path).to_pandas()
    out = {}
    for _, r in t.iterrows():
        key = (r.scenario, r.policy)
        out.setdefault(key, {})[r.source] = r
    return out


ref = {}
with open("call6/reference-forward-2gpu.csv") as f:
    for r in csv.DictReader(f):
        ref[(r["scenario"], r["policy"])] = float(r["t_total_ms"])
files = {
    ("nccl", "lt"): "call6/layer-nccl-lt.parquet",
    ("nccl", "fused"): "call5/layer-nccl-fused.parquet",
    ("copy-engine", "lt"): "call5/layer-copy-engine-lt.parquet",
    ("copy-engine", "fused"): "call5/layer-copy-engine-fused.parquet",
}
data = {k: rows(v) for k, v in files.items()}
print("| exchange | scenario | policy | lt total | fused total | fused/lt | lt compute | fused compute | fused exposed | fused rel err | peak fused/lt | fused simulated (err) | reference | fused/reference |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
errs = []
for ex in ["nccl", "copy-engine"]:
    for sc in ORDER:
        for pol in ["ep", "llep"]:
            lt = data[(ex, "lt")][(sc, pol)]["measured"]
            fu = data[(ex, "fused")][(sc, pol)]["measured"]
            sim = data[(ex, "fused")][(sc, pol)].get("simulated")
            s = "-"
            if sim is not None:
                e = sim.t_total_ms / fu.t_total_ms - 1
                errs.append(abs(e))
                s = f"{sim.t_total_ms:.2f} ({100 * e:+.1f}%)"
            rk = (sc, pol)
            rv = ref.get(rk)
            name = "llep 1.3" if pol == "llep" else pol
            print(
                f"| {ex} | {sc} | {name} | {lt.t_total_ms:.2f} | {fu.t_total_ms:.2f} | {fu.t_total_ms / lt.t_total_ms:.3f} | "
                f"{lt.t_compute_ms:.2f} | {fu.t_compute_ms:.2f} | {fu.t_exposed_comm_ms:.2f} | {fu.rel_error:.1e} | "
                f"{fu.peak_mem_max_bytes / lt.peak_mem_max_bytes:.3f} | {s} | {rv:.2f} | {fu.t_total_ms / rv:.2f} |"
            )
errs.sort()
if errs:
    print(f"\nsimulated (profile h200, GEMM tables of the lt path) against measured fused rows: median |error| {100 * errs[len(errs) // 2]:.1f}%, worst {100 * errs[-1]:.1f}% over {len(errs)} rows")
