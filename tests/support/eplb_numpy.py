"""An independent float32 numpy transcription of DeepSeek EPLB's
`rebalance_experts` (https://github.com/deepseek-ai/EPLB, MIT), written from
the algorithm's description, one layer at a time, to cross-check the Rust
port (src/plan/eplb.rs) on thousands of random cases without PyTorch.

Two differences from PyTorch, both confined to ties, so on cases whose
sorts met equal loads the Rust test checks only what any order of them keeps:
- the packing sort is numpy's stable argsort (descending, equal loads by
  index); PyTorch's CPU sort is libstdc++'s unstable std::sort;
- group loads are numpy float32 sums (pairwise), not PyTorch's summation
  order, which only a near-tie between two groups could notice.

Usage: python3 eplb_numpy.py SEED CASES -> JSON lines on stdout, one per case:
{"weights", "gpus", "redundant", "nodes", "groups", "phy2log", "log2phy",
"logcnt"}; weights are float32 values written exactly.
"""
import json
import random
import sys

import numpy as np

F32 = np.float32


def pack(loads, n_packs):
    """Greedy: heaviest item first, into the lightest pack with room
    (the lowest-numbered on equal loads)."""
    n = len(loads)
    cap = n // n_packs
    where = np.zeros(n, dtype=np.int64)
    slot = np.zeros(n, dtype=np.int64)
    if cap == 1:
        return np.arange(n), where * 0
    order = np.argsort(-loads, kind="stable")
    total = [F32(0)] * n_packs
    count = [0] * n_packs
    for item in order:
        open_packs = [p for p in range(n_packs) if count[p] < cap]
        best = open_packs[0]
        for p in open_packs[1:]:
            if total[p] < total[best]:
                best = p
        where[item] = best
        slot[item] = count[best]
        total[best] = F32(total[best] + loads[item])
        count[best] += 1
    return where, slot


def replicate(loads, n_phy):
    """Each extra replica goes to the expert with the most load per replica
    (the lowest index on equal values)."""
    n = len(loads)
    owner = list(range(n))
    rank = [0] * n
    cnt = np.ones(n, dtype=np.int64)
    for _ in range(n, n_phy):
        per = loads / cnt.astype(F32)
        e = int(np.argmax(per))
        owner.append(e)
        rank.append(int(cnt[e]))
        cnt[e] += 1
    return np.array(owner), np.array(rank), cnt


def eplb(weights, gpus, redundant, nodes, groups):
    w = np.asarray(weights, dtype=F32)
    n_exp = len(w)
    n_phy = n_exp + redundant
    if groups % nodes != 0:
        groups, nodes = 1, 1
    gsize = n_exp // groups
    gpn = groups // nodes
    per_gpu = n_phy // gpus
    # groups -> nodes
    gload = w.reshape(groups, gsize).sum(axis=1, dtype=F32)
    gnode, gslot = pack(gload, nodes)
    # expert x lands at position new_pos[x] when experts are laid out node
    # by node
    new_pos = np.empty(n_exp, dtype=np.int64)
    for x in range(n_exp):
        g = x // gsize
        new_pos[x] = (gnode[g] * gpn + gslot[g]) * gsize + x % gsize
    at_pos = np.empty(n_exp, dtype=np.int64)
    at_pos[new_pos] = np.arange(n_exp)
    per_node = n_exp // nodes
    phy_node = n_phy // nodes
    phy2log, phyrank, cnt_at_pos = [], [], []
    for node in range(nodes):
        local = w[at_pos[node * per_node:(node + 1) * per_node]]
        owner, rank, cnt = replicate(local, phy_node)
        share = (local / cnt.astype(F32))[owner]
        gpu, slot = pack(share, gpus // nodes)
        dest = gpu * per_gpu + slot
        src = np.empty(phy_node, dtype=np.int64)
        src[dest] = np.arange(phy_node)
        for q in range(phy_node):
            phy2log.append(int(at_pos[node * per_node + owner[src[q]]]))
            phyrank.append(int(rank[src[q]]))
        cnt_at_pos.extend(int(c) for c in cnt)
    logcnt = [cnt_at_pos[new_pos[x]] for x in range(n_exp)]
    width = max(logcnt)
    log2phy = [[-1] * width for _ in range(n_exp)]
    for s, (e, r) in enumerate(zip(phy2log, phyrank)):
        log2phy[e][r] = s
    return phy2log, log2phy, logcnt


def random_case(rng):
    gpus = rng.choice([1, 2, 4, 8, 16])
    nodes = rng.choice([d for d in (1, 2, 4) if gpus % d == 0])
    experts = gpus * rng.choice([1, 2, 3, 4, 8])
    if experts < 4:
        experts *= 4
    groups = rng.choice([d for d in range(1, experts + 1) if experts % d == 0])
    slots_per_gpu = rng.randint((experts + gpus - 1) // gpus, experts // gpus + 4)
    redundant = slots_per_gpu * gpus - experts
    kind = rng.random()
    if kind < 0.35:
        weights = [rng.uniform(0.0, 1000.0) for _ in range(experts)]
    elif kind < 0.55:
        # small integers: equal loads, equal group sums
        hi = rng.choice([2, 5, 20])
        weights = [float(rng.randint(0, hi)) for _ in range(experts)]
    elif kind < 0.8:
        weights = [rng.paretovariate(1.2) * 10.0 for _ in range(experts)]
    else:
        weights = [rng.lognormvariate(3.0, 2.0) for _ in range(experts)]
    weights = [float(F32(x)) for x in weights]
    return dict(weights=weights, gpus=gpus, redundant=redundant, nodes=nodes,
                groups=groups)


def main():
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    for _ in range(cases):
        case = random_case(rng)
        p2l, l2p, cnt = eplb(case["weights"], case["gpus"], case["redundant"],
                             case["nodes"], case["groups"])
        case.update(phy2log=p2l, log2phy=l2p, logcnt=cnt)
        print(json.dumps(case))


if __name__ == "__main__":
    main()
