#!/usr/bin/env python3
"""The accuracy matrix as a table and a heatmap of error by expert shape and
batch size, for a profile and for the same profile with the held-out
shapes' GEMM tables removed (those shapes then priced only from the other
shapes' tables, as a shape nobody calibrated would be).

Runs `llep-trace compare` on the matrix's measured rows (the twins are
priced again with PROFILE, not read from the file), then writes:
  OUT_DIR/STEM-errors.png  heatmaps (time with tables, time with the
                           held-out profile, lowest memory error)
  OUT_DIR/STEM-table.md    the same numbers as Markdown tables
  HELD_PROFILE             the held-out profile used
(STEM: --stem, matrix-2gpu unless given; matrix-4gpu for the 4-GPU half).

Usage: matrix_report.py --bin target/release/llep-trace --profile profiles/h200.json \
         --held-profile reports/accuracy/h200-held-out.json --out-dir reports/accuracy \
         [--stem matrix-4gpu] reports/accuracy/matrix-2gpu.parquet
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

# (hidden, intermediate) -> name; the last two are held out of every fit
SHAPES = {
    (2880, 2880): "gpt-oss-120b",
    (4096, 14336): "Mixtral-8x7B",
    (2048, 1024): "OLMoE",
    (7168, 2048): "DeepSeek-V3 (held out)",
    (2048, 768): "Qwen3-30B-A3B (held out)",
}
HELD_OUT = [(7168, 2048), (2048, 768)]


def held_out_profile(prof):
    """The profile without the held-out shapes' GEMM tables."""
    p = copy.deepcopy(prof)
    drop = set()
    for d, i in HELD_OUT:
        drop |= {("gate_up", 2 * i, d), ("down", d, i)}
    p["gemm_tables"] = [t for t in p["gemm_tables"] if (t["proj"], t["n"], t["k"]) not in drop]
    p["name"] = p["name"] + "-held-out"
    p["note"] = (
        "The h200 profile without the GEMM tables of the held-out DeepSeek-V3 and Qwen3-30B-A3B "
        "experts (scripts/accuracy/matrix_report.py): those shapes are priced from the other shapes' tables."
    )
    p["measured_error"] = None
    return p


def pairs(binary, profile_path, files, tmp):
    out = os.path.join(tmp, "pairs.parquet")
    r = subprocess.run(
        [binary, "compare", "-q", *files, "--profile", profile_path, "--out", out],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"compare failed: {r.stderr.strip()}")
    t = pq.read_table(out).to_pydict()
    rows = []
    for j in range(0, len(t["source"]), 2):
        m = {k: v[j] for k, v in t.items()}
        s = {k: v[j + 1] for k, v in t.items()}
        meas_peak = max(m["driver_mem_per_gpu"]) if m["driver_mem_per_gpu"] else m["peak_mem_max_bytes"]
        rows.append(
            dict(
                shape=(m["hidden_size"], m["intermediate_size"]),
                tokens=m["tokens_per_rank"],
                time=(s["t_total_ms"] - m["t_total_ms"]) / m["t_total_ms"] * 100,
                mem=(s["peak_mem_max_bytes"] - meas_peak) / meas_peak * 100,
            )
        )
    return rows


def grid(rows, key, agg):
    shapes = list(SHAPES)
    tokens = sorted({r["tokens"] for r in rows})
    g = np.full((len(shapes), len(tokens)), np.nan)
    for a, s in enumerate(shapes):
        for b, t in enumerate(tokens):
            v = [r[key] for r in rows if r["shape"] == s and r["tokens"] == t]
            if v:
                g[a, b] = agg(np.array(v))
    return g, shapes, tokens


def med_abs(v):
    return float(np.median(np.abs(v)))


def worst_abs(v):
    return float(np.max(np.abs(v)))


def table(title, rows, key):
    med, shapes, tokens = grid(rows, key, med_abs)
    worst, _, _ = grid(rows, key, worst_abs)
    low, _, _ = grid(rows, key, lambda v: float(np.min(v)))
    head = "| shape | " + " | ".join(f"{t} tok/GPU" for t in tokens) + " |"
    lines = [f"**{title}**", "", head, "|" + " --- |" * (len(tokens) + 1)]
    for a, s in enumerate(shapes):
        if key == "mem":
            cells = [f"{med[a, b]:.1f}% / {low[a, b]:+.1f}%" for b in range(len(tokens))]
        else:
            cells = [f"{med[a, b]:.1f}% / {worst[a, b]:.1f}%" for b in range(len(tokens))]
        lines.append(f"| {SHAPES[s]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heat(ax, rows, key, agg, title, vmax, cmap):
    g, shapes, tokens = grid(rows, key, agg)
    im = ax.imshow(g, cmap=cmap, vmin=-vmax if cmap == "RdBu" else 0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(tokens)), [str(t) for t in tokens])
    ax.set_yticks(range(len(shapes)), [SHAPES[s] for s in shapes])
    ax.set_xlabel("tokens per GPU")
    ax.set_title(title, fontsize=9)
    for a in range(len(shapes)):
        for b in range(len(tokens)):
            # light text on the dark end of viridis
            dark = cmap == "viridis" and g[a, b] < 0.6 * vmax
            ax.text(b, a, f"{g[a, b]:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    return im


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--held-profile", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--stem", default="matrix-2gpu", help="name of the outputs (STEM-errors.png, STEM-table.md)")
    ap.add_argument("results", nargs="+")
    a = ap.parse_args()
    prof = json.load(open(a.profile))
    held = held_out_profile(prof)
    with open(a.held_profile + ".tmp", "w") as f:
        json.dump(held, f, indent=2)
        f.write("\n")
    os.replace(a.held_profile + ".tmp", a.held_profile)
    with tempfile.TemporaryDirectory() as tmp:
        full = pairs(a.bin, a.profile, a.results, tmp)
        ho = pairs(a.bin, a.held_profile, a.results, tmp)
    counts, _, _ = grid(full, "time", len)
    counts = sorted({int(c) for c in counts.flatten() if c == c})
    per_cell = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), dpi=130)
    heat(axes[0], full, "time", med_abs, "layer time, median |error| %\n(every shape's GEMM tables)", 20, "viridis")
    heat(axes[1], ho, "time", med_abs, "layer time, median |error| %\n(held-out shapes without tables)", 20, "viridis")
    im = heat(axes[2], full, "mem", lambda v: float(np.min(v)), "peak memory, lowest signed error %\n(below 0: under-predicted)", 12, "RdBu")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    fig.tight_layout()
    png = os.path.join(a.out_dir, f"{a.stem}-errors.png")
    fig.savefig(png + ".tmp.png")
    os.replace(png + ".tmp.png", png)
    md = (
        "# Accuracy matrix by shape and batch size (generated)\n\n"
        f"`scripts/accuracy/matrix_report.py --profile {a.profile} --stem {a.stem}` on "
        f"{', '.join(os.path.basename(r) for r in a.results)}; cells: median / worst |error| of the "
        f"layer time over the skews and settings of that shape and batch ({per_cell} rows each); memory: median "
        "|error| / lowest signed error.\n\n"
        + table("Layer time, every shape's GEMM tables", full, "time")
        + "\n"
        + table("Layer time, held-out shapes without their GEMM tables", ho, "time")
        + "\n"
        + table("Peak memory against the driver's view", full, "mem")
    )
    path = os.path.join(a.out_dir, f"{a.stem}-table.md")
    with open(path + ".tmp", "w") as f:
        f.write(md)
    os.replace(path + ".tmp", path)
    print(md)


if __name__ == "__main__":
    main()
