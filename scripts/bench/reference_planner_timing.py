#!/usr/bin/env python3
"""Time the reference's Python planner on the planner bench's own load vectors.

The LeastLoadedEP reference plans with `compute_llep_lpt_plan` (PyTorch). This
script imports that function from a copy of the reference, plans every load
vector the Rust bench (`benches/planner.rs`) wrote with `--vectors`, and
prints milliseconds per plan for each (N, P). Given the Rust bench's
`--results` file it also prints how many times faster ours is, on the same
vectors and the same CPU (run both on one machine, pinned to one core).

    planner --bench --planner-only --vectors V.jsonl --results R.tsv
    python3 reference_planner_timing.py --peers PATH/LeastLoadedEP \\
        --vectors V.jsonl --rust R.tsv

Counts go in as an int64 CPU tensor: the reference's planner reads them with
`.item()` one by one, so this times the planner itself, without the
device-to-host copies a GPU tensor would add. The reference's module imports
`transformers.utils.logging` only for a logger; where transformers is not
installed a stand-in logger is put in its place (it changes nothing else).
As a check that both sides planned the same thing, the reference's transfers
per plan and share of plans with a duplicate (expert, destination) transfer
are printed beside ours.
"""
import argparse
import json
import statistics
import sys
import time
import types


def import_reference(peers):
    sys.path.insert(0, peers)
    try:
        import transformers.utils.logging  # noqa: F401
    except ImportError:
        import logging

        stub = types.ModuleType("transformers.utils.logging")
        stub.get_logger = logging.getLogger
        utils = types.ModuleType("transformers.utils")
        utils.logging = stub
        root = types.ModuleType("transformers")
        root.utils = utils
        sys.modules.update(
            {"transformers": root, "transformers.utils": utils, "transformers.utils.logging": stub}
        )
    from llep.gpt_oss_llep import compute_llep_lpt_plan

    return compute_llep_lpt_plan


def read_vectors(path):
    cases = {}
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            try:
                v = json.loads(line)
                key = (int(v["n"]), int(v["gpus"]), float(v["alpha"]), int(v["min_gemm"]))
                counts = [int(c) for c in v["counts"]]
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{ln}: not a load vector line ({e})")
            if len(counts) != key[0]:
                sys.exit(f"{path}:{ln}: {len(counts)} counts for n={key[0]}")
            cases.setdefault(key, []).append(counts)
    if not cases:
        sys.exit(f"{path}: no load vectors")
    return cases


def read_rust(path):
    rows = {}
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            r = dict(zip(header, line.rstrip("\n").split("\t")))
            rows[(int(r["n"]), int(r["gpus"]))] = r
    return rows


def time_case(plan_fn, torch, vectors, gpus, alpha, m, passes):
    tensors = [torch.tensor(c, dtype=torch.int64) for c in vectors]
    per = len(vectors[0]) // gpus
    transfers = dups = 0
    for t in tensors:  # warm-up pass, and the plan statistics
        r = plan_fn(t, gpus, 0, per, max_tokens_factor=alpha, min_tokens_per_gemm=m)
        transfers += len(r.weight_transfers)
        pairs = [(w.expert_id, w.dst_rank) for w in r.weight_transfers]
        dups += len(pairs) != len(set(pairs))
    per_pass = []
    cpu = 0.0
    for _ in range(passes):
        c0, t0 = time.thread_time(), time.perf_counter()
        for t in tensors:
            plan_fn(t, gpus, 0, per, max_tokens_factor=alpha, min_tokens_per_gemm=m)
        per_pass.append((time.perf_counter() - t0) / len(tensors))
        cpu += (time.thread_time() - c0) / len(tensors)
    return {
        "wall_ms": statistics.median(per_pass) * 1e3,
        "cpu_ms": cpu / passes * 1e3,
        "transfers": transfers / len(tensors),
        "dup_share": dups / len(tensors),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", required=True, help="the LeastLoadedEP folder (holds llep/)")
    ap.add_argument("--vectors", required=True, help="JSON lines from the bench's --vectors")
    ap.add_argument("--rust", help="TSV from the bench's --results: print ratios")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the vectors (median)")
    ap.add_argument("--limit", type=int, default=0, help="plan only the first K vectors of each size")
    a = ap.parse_args()
    import torch

    plan_fn = import_reference(a.peers)
    cases = read_vectors(a.vectors)
    rust = read_rust(a.rust) if a.rust else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
    print()
    if rust:
        print("| case | vectors | reference (Python) per plan | ours per plan (wall / on-CPU) | ours faster by (wall / on-CPU) | transfers per plan (ref / ours) | plans with a duplicate (ref / ours) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    else:
        print("| case | vectors | reference (Python) per plan, wall | on-CPU | transfers per plan | plans with a duplicate |")
        print("| --- | --- | --- | --- | --- | --- |")
    for (n, gpus, alpha, m), vectors in cases.items():
        r = rust.get((n, gpus))
        if r and int(r["count_sum"]) != sum(map(sum, vectors)):
            sys.exit(f"N={n}, P={gpus}: the vectors file and the results file are from different runs")
        if a.limit:
            vectors = vectors[: a.limit]
        t = time_case(plan_fn, torch, vectors, gpus, alpha, m, a.passes)
        name = f"N={n}, P={gpus}"
        if r:
            w, c = float(r["wall_us"]), float(r["cpu_us"])
            print(
                f"| {name} | {len(vectors)} | {t['wall_ms']:.3f} ms | {w:.3f} / {c:.3f} us "
                f"| {t['wall_ms'] * 1e3 / w:.0f}x / {t['cpu_ms'] * 1e3 / c:.0f}x "
                f"| {t['transfers']:.3f} / {float(r['transfers_per_plan']):.3f} "
                f"| {t['dup_share'] * 100:.1f}% / {float(r['dup_share']) * 100:.1f}% |"
            )
        else:
            print(
                f"| {name} | {len(vectors)} | {t['wall_ms']:.3f} ms | {t['cpu_ms']:.3f} ms "
                f"| {t['transfers']:.1f} | {t['dup_share'] * 100:.0f}% |"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
