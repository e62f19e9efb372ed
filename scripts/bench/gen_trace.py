#!/usr/bin/env python3
"""Reproducible load-level trace generator for the streaming benchmark
(issue 16, part 4).

Writes `--steps` x `--layers` layer-steps of global per-expert counts (one
rank, `--experts` experts, top-k 8) as an llep-trace Parquet trace (the
schema and metadata `llep-trace capture` writes: step, layer, rank, expert,
count; metadata under `llep_trace.meta`), and optionally the same counts as
a long-form counts CSV (`step,layer,expert,count`, what `capture` ingests).

Loads: every layer has its own Zipf-like popularity (exponent 1.0 over a
random expert order, seeded per layer), which drifts slowly from step to
step (multiplicative log-normal noise, sigma 0.15, on a random walk), so
consecutive steps are alike and EPLB's window means something. Each step
routes `--tokens` tokens x 8 copies (8 GPUs x 4096 tokens by default), split
by the popularity with largest-remainder rounding so totals are exact.
Same arguments and seed give the same bytes of counts.

Shape written to the metadata: Qwen3-30B-A3B's MoE layer (128 experts,
top-8, D 2048, I 768, 48 MoE layers), priced by the h200 profile.

Memory: one batch of `--batch-steps` steps at a time, so the 1,000,000
layer-step trace is written in bounded memory.

Usage:
  python3 scripts/bench/gen_trace.py --steps 25000 --layers 40 --out /tmp/t.parquet
  python3 scripts/bench/gen_trace.py --steps 2000 --layers 40 --out /tmp/t.parquet --csv /tmp/t.csv
"""

import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOP_K = 8


def meta(args, files):
    model = {
        "name": "qwen3-30b-a3b shape (generated)",
        "num_experts": args.experts,
        "top_k": TOP_K,
        "hidden_size": 2048,
        "intermediate_size": 768,
        "num_layers": 48,
        "dtype": "bf16",
        "routing": {"kind": "recorded"},
    }
    capture = {
        "source_format": "generated",
        "files": files,
        "ranks": 1,
        "tokens_per_rank": args.tokens,
        "rank_assignment": "global",
        "tool_version": "scripts/bench/gen_trace.py",
        "command": "scripts/bench/gen_trace.py --steps %d --layers %d --experts %d --tokens %d --seed %d"
        % (args.steps, args.layers, args.experts, args.tokens, args.seed),
        "token_level": False,
        "skipped_tokens": 0,
        "logits_kept": False,
    }
    return {
        "schema_version": 1,
        "model": model,
        "capture": capture,
        "provenance": "synthetic: Zipf 1.0 per layer over a seeded expert order, slow log-normal drift per step",
        "licence": "CC0-1.0",
        "step_labels": [],
    }


def exact_split(weights, total):
    """Largest-remainder rounding of weights (rows) to integer rows summing to total."""
    w = weights / weights.sum(axis=1, keepdims=True)
    raw = w * total
    base = np.floor(raw).astype(np.int64)
    left = total - base.sum(axis=1)
    rem = raw - base
    # ties to the lower index: stable sort on -rem
    order = np.argsort(-rem, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(w.shape[0])[:, None]
    ranks[rows, order] = np.arange(w.shape[1])[None, :]
    base += (ranks < left[:, None]).astype(np.int64)
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=8 * 4096, help="tokens per step (all ranks)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--batch-steps", type=int, default=500)
    ap.add_argument("--out", required=True)
    ap.add_argument("--csv", help="also write the counts as a long-form CSV here")
    args = ap.parse_args()

    e_n, l_n = args.experts, args.layers
    rng = np.random.default_rng(args.seed)
    base = np.empty((l_n, e_n))
    for l in range(l_n):
        perm = rng.permutation(e_n)
        base[l] = 1.0 / (perm + 1.0) ** 1.0
    drift = np.zeros((l_n, e_n))
    total = args.tokens * TOP_K

    schema = pa.schema(
        [
            pa.field("step", pa.uint32(), nullable=False),
            pa.field("layer", pa.uint32(), nullable=False),
            pa.field("rank", pa.uint32(), nullable=False),
            pa.field("expert", pa.uint32(), nullable=False),
            pa.field("count", pa.uint64(), nullable=False),
        ],
        metadata={"llep_trace.meta": json.dumps(meta(args, [args.csv] if args.csv else []))},
    )
    w = pq.ParquetWriter(args.out, schema, compression="snappy")
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv.write("step,layer,expert,count\n")
    for s0 in range(0, args.steps, args.batch_steps):
        s1 = min(args.steps, s0 + args.batch_steps)
        n = s1 - s0
        counts = np.empty((n, l_n, e_n), dtype=np.int64)
        for i in range(n):
            drift += rng.normal(0.0, 0.15, size=drift.shape) * 0.3
            drift *= 0.95
            noisy = base * np.exp(drift + rng.normal(0.0, 0.15, size=drift.shape))
            counts[i] = exact_split(noisy, total)
        step = np.repeat(np.arange(s0, s1, dtype=np.uint32), l_n * e_n)
        layer = np.tile(np.repeat(np.arange(l_n, dtype=np.uint32), e_n), n)
        expert = np.tile(np.arange(e_n, dtype=np.uint32), n * l_n)
        flat = counts.reshape(-1).astype(np.uint64)
        t = pa.table(
            [step, layer, np.zeros_like(step), expert, flat],
            schema=schema,
        )
        w.write_table(t, row_group_size=1 << 20)
        if csv:
            body = np.stack([step, layer, expert, flat.astype(np.uint32)], axis=1)
            np.savetxt(csv, body, fmt="%d", delimiter=",")
    w.close()
    if csv:
        csv.close()


if __name__ == "__main__":
    main()
