#!/usr/bin/env python3
"""Make tests/data/eplb_fixture.json: thousands of random one-layer cases run
through DeepSeek's real EPLB (`eplb.py`, https://github.com/deepseek-ai/EPLB,
MIT) under PyTorch, so that `cargo test --test eplb` checks the Rust port
(src/plan/eplb.rs) against it without PyTorch.

Cases mix load shapes (uniform floats, small integers with many ties,
Zipf / Pareto / lognormal heavy tails, many zeros, all equal) and shapes
(experts, GPUs, nodes, groups, redundant experts), covering EPLB's
hierarchical policy and its global fallback (groups not a multiple of nodes).

Usage (repository root, python3 with torch; about 20 s on 16 cores):
  python3 scripts/eplb_fixture.py --eplb PATH/TO/EPLB/eplb.py \
      --out tests/data/eplb_fixture.json --cases 4000
  python3 scripts/eplb_fixture.py --dry-run --cases 20   # no torch: cases only

Output (compact JSON): {"generator", "torch_version", "cpu_capability",
"eplb_sha256", "seed", "sorts": [{"values", "order"}], "sums": [{"values",
"sum"}], "cases": [{"kind", "weights", "gpus", "redundant", "nodes",
"groups", "phy2log", "log2phy", "logcnt"}]}; float32 values are written exactly; log2phy rows are written
without the -1 padding; "sums" are PyTorch's float32 sums of random rows,
"sorts" its descending sort of tie-heavy rows (how it orders equal values).
"""
import argparse
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import random
import struct
import sys
import tempfile


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def f32_text(x):
    """Shortest decimal that reads back as the same float32."""
    x = f32(x)
    if x == int(x) and abs(x) < 2**53:
        return str(int(x))
    for digits in range(6, 10):
        s = "%.*g" % (digits, x)
        if f32(float(s)) == x:
            return s
    return repr(x)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def random_loads(rng, n):
    kind = rng.choice(["uniform", "integer", "zipf", "pareto", "lognormal",
                       "sparse", "equal", "int_heavy"])
    if kind == "uniform":
        w = [rng.uniform(0.0, 1000.0) for _ in range(n)]
    elif kind == "integer":
        hi = rng.choice([3, 10, 100, 5000])
        w = [float(rng.randint(0, hi)) for _ in range(n)]
    elif kind == "zipf":
        s = rng.uniform(0.6, 1.6)
        ranks = list(range(1, n + 1))
        rng.shuffle(ranks)
        scale = rng.choice([1.0, 1000.0, 1e5])
        w = [scale / r**s for r in ranks]
    elif kind == "pareto":
        a = rng.uniform(0.8, 2.5)
        w = [rng.paretovariate(a) * 10.0 for _ in range(n)]
    elif kind == "lognormal":
        w = [rng.lognormvariate(3.0, rng.uniform(0.5, 2.5)) for _ in range(n)]
    elif kind == "sparse":
        w = [rng.uniform(0, 100.0) if rng.random() < 0.3 else 0.0
             for _ in range(n)]
    elif kind == "equal":
        v = rng.choice([0.0, 1.0, 37.5])
        w = [v] * n
    else:  # integer counts with a heavy tail: token counts over a window
        w = [float(int(rng.paretovariate(1.1) * 50)) for _ in range(n)]
    return kind, [f32_text(x) for x in w]


def random_shape(rng):
    """(experts, gpus, nodes, groups, redundant), all valid for EPLB."""
    r = rng.random()
    if r < 0.05:  # DeepSeek-V3-like
        experts, gpus, nodes, groups = 256, rng.choice([32, 64]), rng.choice([4, 8]), 8
    elif r < 0.15:
        experts = rng.choice([64, 128])
        gpus = rng.choice([8, 16])
        nodes = rng.choice([d for d in (1, 2, 4) if gpus % d == 0])
        groups = rng.choice([d for d in divisors(experts) if d <= 16])
    else:
        gpus = rng.choice([1, 2, 3, 4, 6, 8, 16])
        nodes = rng.choice([d for d in divisors(gpus) if d <= 4])
        experts = rng.choice([4, 6, 8, 12, 16, 24, 32, 48, 64])
        groups = rng.choice([d for d in divisors(experts) if d <= 16])
    if rng.random() < 0.6 and groups % nodes != 0:
        # mostly hierarchical: make groups a multiple of nodes when possible
        ok = [g for g in divisors(experts) if g % nodes == 0 and g <= 32]
        if ok:
            groups = rng.choice(ok)
    slots = max(1, math.ceil(experts / gpus)) + rng.choice([0, 0, 1, 1, 2, 4])
    redundant = slots * gpus - experts
    if redundant < 0:
        redundant = (math.ceil(experts / gpus)) * gpus - experts
    return experts, gpus, nodes, groups, redundant


def make_cases(seed, n):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        experts, gpus, nodes, groups, redundant = random_shape(rng)
        kind, w = random_loads(rng, experts)
        cases.append(dict(kind=kind, weights=w, gpus=gpus, redundant=redundant,
                          nodes=nodes, groups=groups))
    return cases


def make_sum_rows(seed, n):
    """Rows of float32 values for PyTorch's `sum`, whose order of additions
    (SIMD lanes, partial sums, cascade levels) the port replays for group
    loads; long rows reach the cascade's upper levels."""
    rng = random.Random(seed + 1)
    rows = []
    for _ in range(n):
        length = int(2 ** rng.uniform(0, 11))
        scale = 10 ** rng.uniform(-2, 6)
        rows.append([f32_text(rng.lognormvariate(0, 2) * scale) for _ in range(length)])
    return rows


def torch_sums(rows):
    import torch
    torch.set_num_threads(1)
    out = []
    for r in rows:
        w = torch.tensor([[float(x) for x in r]], dtype=torch.float32)
        # the shape eplb.py sums: [layers, groups, group size] over the last
        out.append(float(w.unflatten(-1, (1, len(r))).sum(-1)[0, 0]))
    return out


def make_sort_rows(seed, n):
    """Tie-heavy rows for PyTorch's descending sort: whether it orders equal
    values as libstdc++'s std::sort does, which the port replays."""
    rng = random.Random(seed + 2)
    rows = []
    for _ in range(n):
        length = rng.randint(1, 300)
        distinct = rng.choice([1, 2, 3, 8, 50, 1000])
        rows.append([f32_text(rng.randrange(distinct) * 0.5) for _ in range(length)])
    return rows


def torch_sorts(rows):
    import torch
    torch.set_num_threads(1)
    out = []
    for r in rows:
        w = torch.tensor([[float(x) for x in r]], dtype=torch.float32)
        out.append(w.sort(-1, descending=True).indices[0].tolist())
    return out


_EPLB = None


def _load_eplb(path):
    global _EPLB
    if _EPLB is None:
        import torch
        torch.set_num_threads(1)
        spec = importlib.util.spec_from_file_location("eplb_reference", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _EPLB = mod
    return _EPLB


def run_case(args):
    path, case = args
    import torch
    eplb = _load_eplb(path)
    w = torch.tensor([[float(x) for x in case["weights"]]], dtype=torch.float32)
    experts = len(case["weights"])
    phy2log, log2phy, logcnt = eplb.rebalance_experts(
        w, experts + case["redundant"], case["groups"], case["nodes"], case["gpus"])
    out = dict(case)
    out["phy2log"] = phy2log[0].tolist()
    out["log2phy"] = [[s for s in row if s >= 0] for row in log2phy[0].tolist()]
    out["logcnt"] = logcnt[0].tolist()
    # The outputs must describe one placement.
    assert len(out["phy2log"]) == experts + case["redundant"]
    for e, row in enumerate(out["log2phy"]):
        assert len(row) == out["logcnt"][e]
        assert all(out["phy2log"][s] == e for s in row)
    return out


def write_atomically(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".eplb_fixture.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def dump(doc):
    # One case per line: compact, yet diffs stay readable.
    head = {k: v for k, v in doc.items() if k not in ("cases", "sums", "sorts")}
    sums = ",\n".join('{"values":[%s],"sum":%s}' % (",".join(r["values"]), json.dumps(r["sum"]))
                       for r in doc["sums"])
    lines = []
    for c in doc["cases"]:
        # weights are kept as their shortest float32 text, written as numbers
        rest = {k: v for k, v in c.items() if k not in ("kind", "weights")}
        lines.append('{"kind":%s,"weights":[%s],%s' % (
            json.dumps(c["kind"]), ",".join(c["weights"]),
            json.dumps(rest, separators=(",", ":"))[1:]))
    text = json.dumps(head, separators=(",", ":"))[:-1]
    sorts = ",\n".join('{"values":[%s],"order":%s}' % (",".join(r["values"]), json.dumps(r["order"]))
                        for r in doc["sorts"])
    return (text + ',"sorts":[\n' + sorts + '\n],"sums":[\n' + sums + '\n],"cases":[\n' + ",\n".join(lines)
            + "\n]}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eplb", help="path to DeepSeek's eplb.py")
    ap.add_argument("--out", help="output JSON (default: stdout)")
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=20260129)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dry-run", action="store_true",
                    help="write the cases without running EPLB (no torch needed)")
    a = ap.parse_args()
    if a.cases < 1:
        ap.error("--cases must be at least 1")
    cases = make_cases(a.seed, a.cases)
    doc = {"generator": "scripts/eplb_fixture.py", "seed": a.seed}
    if not a.dry_run:
        if not a.eplb or not os.path.isfile(a.eplb):
            ap.error("--eplb must name DeepSeek's eplb.py (got %r)" % a.eplb)
        try:
            import torch
        except ImportError:
            sys.exit("error: PyTorch is not installed (use --dry-run for the cases only)")
        with open(a.eplb, "rb") as f:
            doc["eplb_sha256"] = hashlib.sha256(f.read()).hexdigest()
        doc["torch_version"] = torch.__version__
        try:
            doc["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except AttributeError:
            doc["cpu_capability"] = "unknown"
        path = os.path.abspath(a.eplb)
        with multiprocessing.Pool(max(1, a.jobs)) as pool:
            cases = pool.map(run_case, [(path, c) for c in cases], chunksize=16)
    rows = make_sum_rows(a.seed, 100)
    sums = [None] * len(rows) if a.dry_run else torch_sums(rows)
    doc["sums"] = [{"values": r, "sum": t} for r, t in zip(rows, sums)]
    rows = make_sort_rows(a.seed, 200)
    orders = [None] * len(rows) if a.dry_run else torch_sorts(rows)
    doc["sorts"] = [{"values": r, "order": o} for r, o in zip(rows, orders)]
    doc["cases"] = cases
    text = dump(doc)
    if a.out:
        write_atomically(a.out, text)
        print("wrote %d cases to %s (%.1f MB)" % (len(cases), a.out, len(text) / 1e6),
              file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
