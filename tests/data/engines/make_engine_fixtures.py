"""Engine dumps laid out exactly as the engines write them, without the engines.

Each fixture follows the writer cited in `traces/README.md` ("Engine dump
formats"); the counts the trace must hold are computed here independently
(plain loops over the raw ids/counts) and written next to the fixture as
`<name>.expected` (JSON):

    {"step_ids": [...], "layer_ids": [...], "ranks": R, "experts": E,
     "top_k": K, "passes_aggregated": P or null,
     "counts": [[[count of expert e at rank r = r*E+e] per layer] per step]}

`.pt` files reproduce torch.save's zip layout with the standard library (a
fake `torch` module names the globals; no torch code runs). Run from the
repository root: python3 tests/data/engines/make_engine_fixtures.py

With `--torch` (PyTorch installed) the same objects go through the real
`torch.save`, on the GPU where the engine keeps them when CUDA is there:
the same counts, the genuine archive. `cargo test --release --test
capture_engines` must then pass unchanged; restore the committed files
with `git checkout tests/data/engines` afterwards.
"""

import io
import json
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(11)

# ------------------------------------------------------------------ torch.save

REAL_TORCH = "--torch" in sys.argv
if REAL_TORCH:
    import torch as real_torch

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*a):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch._utils = utils
for n in ("LongStorage", "IntStorage"):
    setattr(torch, n, type(n, (), {"__module__": "torch"}))
if not REAL_TORCH:
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
STORAGE = {np.dtype("int64"): torch.LongStorage, np.dtype("int32"): torch.IntStorage}


class Storage:
    def __init__(self, key, arr, location):
        self.key, self.arr, self.location = key, arr, location


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), tuple(stride), False, OrderedDict()))


def save_pt(build, path):
    """torch.save(obj, path) for an object of dicts/lists/ints/str/tensors.

    `build(t)` returns the object; `t(array, location="cpu")` makes a tensor.
    Protocol 2, archive folder named after the file stem, as torch >= 1.6.
    """
    if REAL_TORCH:
        def real(arr, location="cpu"):
            x = real_torch.from_numpy(np.ascontiguousarray(arr).copy())
            if location.startswith("cuda") and real_torch.cuda.is_available():
                x = x.to(location)
            return x

        real_torch.save(build(real), path)
        return
    storages = []

    def t(arr, location="cpu"):
        arr = np.ascontiguousarray(arr)
        s = Storage(str(len(storages)), arr, location)
        storages.append(s)
        return Tensor(s, arr.shape)

    obj = build(t)

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", STORAGE[o.arr.dtype], o.key, o.location, o.arr.size)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    name = os.path.splitext(os.path.basename(path))[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        def put(entry, data):
            # fixed timestamps: the same script writes the same bytes
            z.writestr(zipfile.ZipInfo(f"{name}/{entry}", (2024, 1, 1, 0, 0, 0)), data)

        put("data.pkl", buf.getvalue())
        put("byteorder", "little")
        for s in storages:
            put(f"data/{s.key}", s.arr.tobytes())
        put("version", "3\n")


def save_safetensors(tensors, path):
    """safetensors.torch.save_file: 8-byte header length, JSON header, data."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).astype("<i8").tobytes()
        header[name] = {"dtype": "I64", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ------------------------------------------------------------------ expected

def expected(path, table, experts, top_k, passes=None):
    """table: {(step, layer, rank): counts[experts]} -> expected.json."""
    steps = sorted({k[0] for k in table})
    layers = sorted({k[1] for k in table})
    ranks = max(k[2] for k in table) + 1
    counts = [[[0] * (ranks * experts) for _ in layers] for _ in steps]
    for (s, l, r), row in table.items():
        blk = counts[steps.index(s)][layers.index(l)]
        for e, c in enumerate(row):
            blk[r * experts + e] += int(c)
    with open(path + ".expected", "w") as f:
        json.dump({"step_ids": steps, "layer_ids": layers, "ranks": ranks, "experts": experts,
                   "top_k": top_k, "passes_aggregated": passes, "counts": counts}, f)


def fresh(name):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def topk_rows(n, experts, k):
    return np.stack([rng.permutation(experts)[:k] for _ in range(n)])


# ------------------------------------------------------------ SGLang stat mode
# _StatAccumulator.dump: rank 0 writes {rank, logical_count, average_...};
# logical_count int32 [buffer_size, num_layers, num_logical_experts] on the
# GPU, summed over ranks; unused circular-buffer slots are zeros; layer 0 is
# dense (DeepSeek first_k_dense_replace) and stays zero.
E, L, SLOTS, USED = 8, 4, 6, 4
lc = np.zeros((SLOTS, L, E), dtype=np.int32)
table = {}
for p in range(USED):
    for l in range(1, L):
        ids = topk_rows(int(rng.integers(5, 40)), E, 2)
        for e in ids.flatten():
            lc[p, l, e] += 1
        table[(p, l, 0)] = np.bincount(ids.flatten(), minlength=E)
d = fresh("sglang_stat")
f = os.path.join(d, "expert_distribution_recorder_1732000000.123456.pt")
save_pt(lambda t: {"rank": 0, "logical_count": t(lc, "cuda:0"),
                   "average_utilization_rate_over_window": None}, f)
expected(f, table, E, None)

# ----------------------------------------------------- SGLang per_pass mode
# _DetailAccumulator.dump, one file per rank: {records: [{forward_pass_id,
# rank, gatherer_key, global_physical_count int32 [L, P]}],
# last_physical_to_logical_map int64 [L, P]}. 10 physical slots over 8
# logical experts (2 redundant), layer 0 dense.
P = 10
p2l = np.stack([np.concatenate([np.arange(E), rng.integers(0, E, P - E)]) for _ in range(L)]).astype(np.int64)
d = fresh("sglang_per_pass")
table = {}
for rank in range(2):
    records = []
    for pass_id in (40, 41, 42):
        gpc = np.zeros((L, P), dtype=np.int32)
        for l in range(1, L):
            ids = topk_rows(int(rng.integers(3, 20)), P, 2)
            for ph in ids.flatten():
                gpc[l, ph] += 1
                key = (pass_id, l, 0)
                table.setdefault(key, np.zeros(E, dtype=np.int64))
                table[key][p2l[l, ph]] += 1
        records.append((pass_id, gpc))
    f = os.path.join(d, f"expert_distribution_recorder_1732000001.5_{rank}.pt")
    key = "primary"  # one str object: pickled once, then a memo reference
    save_pt(lambda t: {"records": [{"forward_pass_id": pid, "rank": rank, "gatherer_key": key,
                                    "global_physical_count": t(g)} for pid, g in records],
                       "last_physical_to_logical_map": t(p2l, "cuda:0")}, f)
expected(os.path.join(d, "all"), table, E, None)

# ---------------------------------------------------- SGLang per_token mode
# _DetailSinglePassGatherer.collect: input_ids, positions, extend_seq_lens,
# forward_mode, topk_ids_of_layer int32 [L, tokens, 8] (physical ids, top-k
# 4 so 4 slots stay -1; the dense layer all -1), misc_objects (one list
# shared by every record), global_physical_count (absent in the older
# version written by `old=True`).
K, SLOTS_K = 4, 8


def per_token(dirname, old, tp=False):
    """tp: rank 1 routes the same tokens as rank 0 (tensor parallelism)."""
    d = fresh(dirname)
    table = {}
    rank0 = {}
    for rank in range(2):
        records = []
        misc = [{"layer_id": 1, "num_tokens_per_rank": [3, 4]}]
        for pass_id in (7, 8):
            if tp and rank == 1:
                ids, gpc = rank0[pass_id]
                n = ids.shape[1]
            else:
                n = int(rng.integers(4, 12))
                ids = np.full((L, n, SLOTS_K), -1, dtype=np.int32)
                gpc = np.zeros((L, P), dtype=np.int32)
                for l in range(1, L):
                    rows = topk_rows(n, P, K)
                    ids[l, :, :K] = rows
                    for ph in rows.flatten():
                        gpc[l, ph] += 1
                        key = (pass_id, l, 0)
                        table.setdefault(key, np.zeros(E, dtype=np.int64))
                        table[key][p2l[l, ph]] += 1
                rank0[pass_id] = (ids, gpc)
            rec = dict(forward_pass_id=pass_id, rank=rank, gatherer_key="primary",
                       input_ids=[int(x) for x in rng.integers(0, 1000, n)],
                       positions=list(range(n)), extend_seq_lens=[n], forward_mode=1,
                       misc_objects=misc)
            records.append((rec, ids, gpc))

        def build(t):
            out = []
            for rec, ids, gpc in records:
                r = dict(rec, topk_ids_of_layer=t(ids))
                if not old:
                    r["global_physical_count"] = t(gpc)
                out.append(r)
            return {"records": out, "last_physical_to_logical_map": t(p2l)}

        save_pt(build, os.path.join(d, f"expert_distribution_recorder_1732000002.0_{rank}.pt"))
    expected(os.path.join(d, "all"), table, E, K)


per_token("sglang_per_token", old=False)
per_token("sglang_per_token_old", old=True)
per_token("sglang_per_token_tp", old=False, tp=True)

# ------------------------------------------------------------ SGLang old CSV
# dump_record of SGLang <= 0.4.5: expert_distribution_rank{r}_timestamp{t}.csv,
# "layer_id,expert_id,count", only experts that were chosen, MoE layers from 3.
def csv_dump(dirname, identical):
    d = fresh(dirname)
    table = {}
    first = None
    for rank in range(2):
        rows = []
        if identical and first is not None:
            rows = first
        else:
            for l in (3, 4):
                ids = topk_rows(int(rng.integers(10, 30)), E, 2).flatten()
                c = np.bincount(ids, minlength=E)
                for e in range(E):
                    if c[e]:
                        rows.append((l, e, int(c[e])))
            first = rows
        for l, e, c in rows:
            if identical and rank == 1:
                continue  # identical rank files: counted once
            key = (0, l, 0)
            table.setdefault(key, np.zeros(E, dtype=np.int64))
            table[key][e] += c
        with open(os.path.join(d, f"expert_distribution_rank{rank}_timestamp1744347750.3721356.csv"), "w") as fd:
            fd.write("layer_id,expert_id,count\n")
            for l, e, c in rows:
                fd.write(f"{l},{e},{c}\n")
    expected(os.path.join(d, "all"), table, E, None, passes=0)


csv_dump("sglang_csv", identical=False)
csv_dump("sglang_csv_tp", identical=True)

# ---------------------------------------------------------- TensorRT-LLM
# ExpertStatistic._set_iter at iter == stop: rank 0 writes meta_info.json
# {"num_experts", "num_experts_per_token"}; every rank writes
# rank{r}.safetensors, int64 bincount [num_experts] under "{iter}_{layer}".
d = fresh("trtllm")
with open(os.path.join(d, "meta_info.json"), "w") as fd:
    json.dump({"num_experts": E, "num_experts_per_token": 2}, fd)
table = {}
for rank in range(2):
    tensors = {}
    for it in (100, 101, 102):
        for layer in (1, 2, 3):
            ids = topk_rows(int(rng.integers(2, 25)), E, 2)
            c = np.bincount(ids.flatten(), minlength=E)
            tensors[f"{it}_{layer}"] = c
            table[(it, layer, rank)] = c
    save_safetensors(tensors, os.path.join(d, f"rank{rank}.safetensors"))
expected(os.path.join(d, "all"), table, E, 2)

# ------------------------------------------------------------------- vLLM
# Scheduler._get_routed_experts: int32 [num_tokens - 1, num_hidden_layers,
# num_experts_per_tok]; dense layers (0 and 2 here) never written: zeros.
d = fresh("vllm")
LV, KV = 4, 2
table = {}
for req, n_tokens in ((3, 9), (5, 14)):
    a = np.zeros((n_tokens - 1, LV, KV), dtype=np.int32)
    for l in (1, 3):
        rows = topk_rows(n_tokens - 1, E, KV)
        a[:, l, :] = rows
        table[(req, l, 0)] = np.bincount(rows.flatten(), minlength=E)
    np.save(os.path.join(d, f"request_{req}.npy"), a)
expected(os.path.join(d, "all"), table, E, KV)

# ------------------------------------------------------------- Megatron-LM
# RouterTracer._flush_records_to_disk: router_trace_rank{r}.jsonl, one
# json.dumps line per (step, block, layer); MTP heads add records with
# block "mtp", layer = index inside the head, mtp_idx.
d = fresh("megatron")
table = {}
for rank in range(2):
    with open(os.path.join(d, f"router_trace_rank{rank}.jsonl"), "w") as fd:
        for step in (0, 1):
            for layer in (1, 2, 3):
                n = int(rng.integers(2, 9))
                ids = topk_rows(n, E, 2)
                fd.write(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder",
                                     "layer": layer, "rank": rank, "num_tokens": n, "topk": 2,
                                     "top_indices": ids.tolist()}) + "\n")
                table[(step, layer, rank)] = np.bincount(ids.flatten(), minlength=E)
            ids = topk_rows(5, E, 2)
            fd.write(json.dumps({"step": step, "stage": "pre_dispatch", "block": "mtp",
                                 "layer": 0, "rank": rank, "num_tokens": 5, "topk": 2,
                                 "top_indices": ids.tolist(), "mtp_idx": 0}) + "\n")
expected(os.path.join(d, "all"), table, E, 2)

# ------------------------------------------------------------------- EPLB
# DeepSeek EPLB weight [layers, experts] (.npy); SGLang --init-expert-location
# {"logical_count": [[...]]} (.json) and torch.save({"logical_count": t}) (.pt);
# layer 0 of the SGLang ones is a dense all-zero row.
d = fresh("eplb")
w = rng.integers(0, 500, size=(3, E)).astype(np.int64)
np.save(os.path.join(d, "weight.npy"), w)
expected(os.path.join(d, "weight.npy"), {(0, l, 0): w[l] for l in range(3)}, E, 2, passes=0)
lcm = np.vstack([np.zeros((1, E), dtype=np.int64), rng.integers(0, 500, size=(3, E))])
with open(os.path.join(d, "init_expert_location.json"), "w") as fd:
    json.dump({"logical_count": lcm.tolist()}, fd)
save_pt(lambda t: {"logical_count": t(lcm)}, os.path.join(d, "init_expert_location.pt"))
expected(os.path.join(d, "init_expert_location"), {(0, l, 0): lcm[l] for l in range(1, 4)}, E, 2, passes=0)

print("engine fixtures written to", HERE)
