#!/usr/bin/env python3
"""Peak memory against trace length, from scripts/bench/stream.sh's CSV
(reports/bench/stream.csv): `simulate --ratio 1.0:3.0:0.1 --out`, `tune`,
`report` and `capture` streamed, the binary from before streaming where
it was measured, and `report` before and after its per-layer-step state
was bounded ("main" and "bounded"; "report-eplb": results with EPLB rows,
which draw the policy comparison).
Usage: stream_memory.py reports/bench/stream.csv OUT.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
series = {}
for r in rows:
    key = (r["binary"], r["command"])
    # the last run of each (binary, command, length) wins
    series.setdefault(key, {})[int(r["layer_steps"])] = int(r["peak_rss_kib"]) / 1024 / 1024
fig, ax = plt.subplots(figsize=(10.5, 4.4), dpi=130)
style = {
    ("streamed", "simulate"): dict(color="tab:blue", marker="o", label="simulate --ratio 1.0:3.0:0.1 --out (streamed)"),
    ("streamed", "tune"): dict(color="tab:green", marker="o", label="tune, defaults (streamed)"),
    ("final", "simulate"): dict(color="tab:blue", marker="s", linestyle="none", markersize=7,
                                 label="simulate, re-run on the branch's last commit"),
    ("final", "tune"): dict(color="tab:green", marker="s", linestyle="none", markersize=7,
                             label="tune, re-run on the branch's last commit"),
    ("before", "simulate"): dict(color="tab:blue", marker="x", linestyle="none", markersize=9,
                                  label="simulate, before streaming"),
    ("before", "tune"): dict(color="tab:green", marker="x", linestyle="none", markersize=9,
                              label="tune, before streaming"),
    ("streamed", "report"): dict(color="tab:purple", marker="o", label="report (streamed)"),
    ("before", "report"): dict(color="tab:purple", marker="x", linestyle="none", markersize=9,
                                label="report, before streaming"),
    ("main", "report"): dict(color="tab:purple", marker="+", linestyle="none", markersize=10,
                              label="report, streamed, re-run before bounding (main 0775eb3)"),
    ("bounded", "report"): dict(color="tab:purple", marker="s", linestyle="-", markersize=6,
                                 label="report, bounded (ratios binned past 65,536)"),
    ("main", "report-eplb"): dict(color="tab:brown", marker="x", linestyle="--", markersize=9,
                                   label="report with EPLB rows, main 0775eb3"),
    ("bounded", "report-eplb"): dict(color="tab:brown", marker="s", linestyle="-", markersize=6,
                                      label="report with EPLB rows, bounded"),
    ("streamed", "capture"): dict(color="tab:red", marker="o", label="capture of the counts CSV (streamed)"),
    ("streamed-first", "capture"): dict(color="tab:red", marker=".", linestyle=":",
                                         label="capture, first streaming commit (slower, same memory)"),
    ("before", "capture"): dict(color="tab:red", marker="x", linestyle="--", markersize=9,
                                 label="capture, before streaming"),
}
for key, pts in sorted(series.items()):
    xs = sorted(pts)
    ax.plot(xs, [pts[x] for x in xs], **style.get(key, dict(label=" ".join(key))))
ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
ax.text(1.1e4, 1.05, "1 GiB target", color="grey", fontsize=8)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("trace length (layer-steps; 128 experts, 8 GPUs)")
ax.set_ylabel("peak RSS (GiB)")
ax.set_title("Memory against trace length")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
fig.savefig(out)
print("wrote", out)
