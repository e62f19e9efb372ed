#!/usr/bin/env python3
"""Fit a profile's `layer_fit` (what a replayed layer pays beyond its
calibrated parts at small sizes) to measured rows of the CALIBRATION shapes
only, and score the result on the held-out shapes apart.

Every term is fitted against the phase it prices, with `llep-trace compare`
computing the simulated phases (the model itself lives in src/sim/cost.rs;
this script only chooses its numbers):

- overhead phase = overhead_us + per_group_us x groups + per_kcopy_us x
  copies/1000: the three features are read by probing compare with one
  term set to 1 and the others to 0, then fitted by least squares, each row
  weighted by 1 / measured layer time (its share of the relative error);
- GEMM units inside a layer = unit_scale x table time + unit_us, and a
  GPU's units at least their count x unit_floor_us (the host issuing units
  of a few rows): the first two probed the same way on the compute phase of
  rows that move no weights, the floor searched on the same rows;
- contention (token exchange sharing the link with weight transfers) and
  auto_us (llep-auto's own decision): one-dimensional searches on the rows
  that have them, minimising the median relative error of the layer time.

Rows of the held-out shapes (hidden, intermediate in HELD_OUT) are dropped
before anything is fitted; `--score` prints both groups' errors.

Usage: fit_layer.py --bin target/release/llep-trace --base profiles/h200.json \
          [--take msg_weights=OTHER.json] [--hold TERM] --out /tmp/h200-fit.json RESULTS.parquet...
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# DeepSeek-V3 and Qwen3-30B-A3B experts: never fitted on, scored apart
HELD_OUT = {(7168, 2048), (2048, 768)}
NONNEG = [
    "overhead_us",
    "overhead_per_group_us",
    "overhead_per_kcopy_us",
    "unit_floor_us",
    "contention",
    "contention_per_peer",
    "dispatch_wait",
]


def measured_rows(files, held, with_graphs=False):
    """Measured rows of the held-out shapes (held=True) or the others,
    of units issued one by one: layer_fit's terms (the host's floor above
    all) describe that mode, and rows replayed with --cuda-graphs on are
    priced from their own tables without the floor. With `with_graphs`
    (--with-graphs) those rows are fitted on too: every term but the
    floor prices them as well."""
    out = []
    for f in files:
        t = pq.read_table(f)
        src = t.column("source").to_pylist()
        shp = zip(t.column("hidden_size").to_pylist(), t.column("intermediate_size").to_pylist())
        graphs = (
            t.column("cuda_graphs").to_pylist()
            if "cuda_graphs" in t.column_names
            else [False] * t.num_rows
        )
        keep = [
            s == "measured" and ((h, i) in HELD_OUT) == held and (with_graphs or not g)
            for s, (h, i), g in zip(src, shp, graphs)
        ]
        if any(keep):
            out.append(t.filter(pa.array(keep)))
    # files of different schema ages stay apart (compare reads each)
    return out


class Compare:
    """Runs `llep-trace compare` on one set of measured rows."""

    def __init__(self, binary, tables, tmp, name):
        self.binary, self.tmp, self.name = binary, tmp, name
        self.rows = []
        for j, t in enumerate(tables):
            self.rows.append(os.path.join(tmp, f"{name}-rows-{j}.parquet"))
            pq.write_table(t, self.rows[-1])
        self.n = 0

    def run(self, prof):
        self.n += 1
        pf = os.path.join(self.tmp, f"{self.name}-profile.json")
        out = os.path.join(self.tmp, f"{self.name}-pairs.parquet")
        with open(pf, "w") as f:
            json.dump(prof, f)
        r = subprocess.run(
            [self.binary, "compare", "-q", *self.rows, "--profile", pf, "--out", out],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            sys.exit(f"compare failed: {r.stderr.strip()}")
        t = pq.read_table(out).to_pydict()
        m = {k: np.array(v[0::2]) if k.startswith("t_") else v[0::2] for k, v in t.items()}
        s = {k: np.array(v[1::2]) if k.startswith("t_") else v[1::2] for k, v in t.items()}
        return m, s


def with_fit(base, **terms):
    p = copy.deepcopy(base)
    fit = dict(
        overhead_us=0.0,
        overhead_per_group_us=0.0,
        overhead_per_kcopy_us=0.0,
        unit_scale=1.0,
        unit_us=0.0,
        unit_floor_us=0.0,
        contention=0.0,
        contention_per_peer=0.0,
        dispatch_wait=0.0,
        auto_us=0.0,
    )
    # every term not given is neutral, whatever fit the base carries: the
    # probes below must see one term at a time
    fit.update(terms)
    p["layer_fit"] = fit
    return p


def wls(features, y, w):
    """Least squares of y on the feature columns, row weights w."""
    a = np.column_stack(features) * w[:, None]
    coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
    return coef


def rel_err(m, s):
    return (s["t_total_ms"] - m["t_total_ms"]) / m["t_total_ms"]


def run_with(base, cmp, terms, **change):
    """compare's (measured, simulated) with the fit `terms`, `change` over them."""
    return cmp.run(with_fit(base, **dict(terms, **change)))


def search(base, cmp, terms, term, grid, err):
    """The value of `term` on `grid` (the first on ties) whose run, `terms`
    otherwise, has the least err(measured, simulated)."""
    best = None
    for c in grid:
        e = err(*run_with(base, cmp, terms, **{term: c}))
        if best is None or e < best[0]:
            best = (e, c)
    return best[1]


def fit(base, cmp, held=None):
    held = held or {}
    m, _ = run_with(base, cmp, held)
    w = 1.0 / m["t_total_ms"]
    auto = np.array([p == "llep-auto" for p in m["policy"]])
    # overhead phase: three probed features, llep-auto rows apart
    feats = [
        run_with(base, cmp, held, **{term: 1000.0})[1]["t_overhead_ms"][~auto]
        for term in ["overhead_us", "overhead_per_group_us", "overhead_per_kcopy_us"]
    ]
    a, g, c = wls(feats, m["t_overhead_ms"][~auto], w[~auto])
    terms = dict(
        held,
        overhead_us=max(a, 0) * 1000,
        overhead_per_group_us=max(g, 0) * 1000,
        overhead_per_kcopy_us=max(c, 0) * 1000,
    )
    # compute phase of layers that move no weights: scale and per-unit term
    m0, s_tab = run_with(base, cmp, terms)
    still = np.array([t == 0 for t in m0["transfers"]])
    _, s_unit = run_with(base, cmp, terms, unit_scale=1e-9, unit_us=1000.0)
    scale, unit = wls(
        [s_tab["t_compute_ms"][still], s_unit["t_compute_ms"][still]],
        m0["t_compute_ms"][still],
        w[still],
    )
    terms.update(unit_scale=scale, unit_us=unit * 1000)
    # the host's floor under a unit (units of a few rows): a search on the
    # same rows' compute phase, the error weighted as above
    if "unit_floor_us" not in held:
        terms["unit_floor_us"] = search(
            base,
            cmp,
            terms,
            "unit_floor_us",
            np.arange(0.0, 40.01, 1.0),
            lambda mm, ss: np.mean(np.abs(ss["t_compute_ms"] - mm["t_compute_ms"])[still] * w[still]),
        )
    # link sharing, on the rows that move weights: the fraction on two
    # GPUs, what each further token peer adds, and every GPU's dispatch
    # waiting on the longest transfer (one-dimensional searches in turn)
    moving = ~still
    gpus = np.array(m0["gpus"])
    for term, grid, rows in [
        ("contention", np.arange(0.0, 2.01, 0.05), moving & (gpus <= 2)),
        ("contention_per_peer", np.arange(0.0, 1.01, 0.025), moving & (gpus > 2)),
        ("dispatch_wait", np.arange(0.0, 1.01, 0.025), moving),
    ]:
        if not rows.any() or term in held:
            continue
        # (the error reads `rows` while search runs, within this turn)
        err = lambda mm, ss: np.mean(np.abs(rel_err(mm, ss))[rows])  # noqa: E731
        terms[term] = search(base, cmp, terms, term, grid, err)
    # llep-auto's decision: the mean extra overhead its rows measured
    mm, ss = run_with(base, cmp, terms)
    terms["auto_us"] = max(0.0, float(np.mean((mm["t_overhead_ms"] - ss["t_overhead_ms"])[auto])) * 1000)
    return {k: round(float(v), 4) for k, v in terms.items()}


def refine(base, cmp, terms, rounds=3, held=()):
    """Coordinate search from the phase fits, minimising the mean absolute
    relative error of the layer time over the calibration rows (a robust
    loss: a few noisy rows do not pull the fit)."""

    def loss(t):
        return float(np.mean(np.abs(rel_err(*run_with(base, cmp, t)))))

    steps = dict(
        overhead_us=8.0,
        overhead_per_group_us=0.08,
        overhead_per_kcopy_us=0.1,
        unit_scale=0.02,
        unit_us=1.0,
        unit_floor_us=1.0,
        contention=0.1,
        contention_per_peer=0.05,
        dispatch_wait=0.05,
    )
    # a term no row could fit (contention_per_peer without a row above 2
    # GPUs) starts neutral, as with_fit writes it
    terms = dict(with_fit(base, **terms)["layer_fit"])
    cur = loss(terms)
    for _ in range(rounds):
        for k, step in steps.items():
            if k in held:
                continue
            for d in (step, -step, step / 2, -step / 2):
                t = dict(terms, **{k: terms[k] + d})
                # physical signs: costs are not negative (unit_us may be:
                # a unit inside a layer can beat the table's)
                if t["unit_scale"] <= 0 or min(t[x] for x in NONNEG) < 0:
                    continue
                v = loss(t)
                if v < cur:
                    cur, terms = v, t
    return {k: round(float(v), 4) for k, v in terms.items()}


def score(name, cmp, prof):
    m, s = cmp.run(prof)
    e = np.abs(rel_err(m, s)) * 100
    return f"{name}: {len(e)} rows, layer time median |error| {np.median(e):.1f}%, worst {e.max():.1f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--base", required=True, help="profile JSON to add the fit to")
    ap.add_argument("--out", required=True, help="profile JSON with the fit")
    ap.add_argument(
        "--take",
        action="append",
        default=[],
        metavar="FIELD=PROFILE",
        help="copy FIELD of another profile JSON into the base first (e.g. "
        "msg_weights=h200-4gpu-comm.json: a measured part the base lacks)",
    )
    ap.add_argument(
        "--hold",
        action="append",
        default=[],
        metavar="TERM",
        help="keep the base's layer_fit TERM as it is, not fitted (e.g. "
        "contention_per_peer when no row has more than 2 GPUs)",
    )
    ap.add_argument(
        "--with-graphs",
        action="store_true",
        help="fit on rows launched as CUDA graphs too (every term but the "
        "host's floor prices them)",
    )
    ap.add_argument("results", nargs="+", help="results files with measured rows")
    a = ap.parse_args()
    base = json.load(open(a.base))
    for t in a.take:
        field, _, path = t.partition("=")
        other = json.load(open(path))
        if field not in other:
            sys.exit(f"--take {t}: {path} has no field {field}")
        base[field] = other[field]
        base["note"] = base.get("note", "") + f" {field} taken from {os.path.basename(path)}."
    with tempfile.TemporaryDirectory() as tmp:
        cal = Compare(a.bin, measured_rows(a.results, False, a.with_graphs), tmp, "cal")
        held = {t: base["layer_fit"][t] for t in a.hold}
        terms = refine(base, cal, fit(base, cal, held), held=held)
        prof = with_fit(base, **terms)
        print("layer_fit:", json.dumps(terms))
        print(score("calibration shapes (fitted on)", cal, prof))
        held = measured_rows(a.results, True, a.with_graphs)
        if held:
            print(score("held-out shapes (not fitted on)", Compare(a.bin, held, tmp, "held"), prof))
        print(f"compare runs: {cal.n}", file=sys.stderr)
    tmp_out = a.out + ".tmp"
    with open(tmp_out, "w") as f:
        json.dump(prof, f, indent=2)
        f.write("\n")
    os.replace(tmp_out, a.out)


if __name__ == "__main__":
    main()
