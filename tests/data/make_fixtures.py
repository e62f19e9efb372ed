"""Generate the small .pt fixtures of tests/capture_*.rs without PyTorch.

torch.save's zip layout is reproduced with the standard library: a fake
`torch` module supplies the globals by name (nothing here is torch code),
and storages go to `archive/data/<key>` through persistent ids. Run from
the repository root: python3 tests/data/make_fixtures.py
"""

import io
import os
import pickle
import sys
import types
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*a):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch._utils = utils
for n in ("LongStorage", "IntStorage", "FloatStorage", "HalfStorage"):
    cls = type(n, (), {"__module__": "torch"})
    setattr(torch, n, cls)
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils
STORAGE = {np.dtype("int64"): torch.LongStorage, np.dtype("int32"): torch.IntStorage,
           np.dtype("float32"): torch.FloatStorage, np.dtype("float16"): torch.HalfStorage}


class Storage:
    def __init__(self, key, arr):
        self.key, self.arr = key, arr


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride = []
        acc = 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        from collections import OrderedDict
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, OrderedDict()))


def save(obj, path):
    storages = []

    def tensor(arr):
        arr = np.ascontiguousarray(arr)
        s = Storage(str(len(storages)), arr)
        storages.append(s)
        return Tensor(s, arr.shape)

    obj = obj(tensor)

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", STORAGE[o.arr.dtype], o.key, "cpu", o.arr.size)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    name = os.path.splitext(os.path.basename(path))[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", buf.getvalue())
        z.writestr(f"{name}/byteorder", "little")
        for s in storages:
            z.writestr(f"{name}/data/{s.key}", s.arr.tobytes())
        z.writestr(f"{name}/version", "3\n")


rng = np.random.default_rng(7)

# SGLang stat mode: logical_count [passes=3, layers=2, experts=8]
lc = rng.integers(0, 50, size=(3, 2, 8)).astype(np.int64)
save(lambda t: {"logical_count": t(lc)}, os.path.join(HERE, "sglang_stat.pt"))
np.save(os.path.join(HERE, "sglang_stat.expected.npy"), lc)

# SGLang per-pass mode: 2 passes, 2 layers, 10 physical slots over 8 logical
records = []
expected = np.zeros((2, 2, 8), dtype=np.int64)
for p in range(2):
    m = np.stack([np.concatenate([np.arange(8), rng.integers(0, 8, 2)]) for _ in range(2)]).astype(np.int64)
    c = rng.integers(0, 30, size=(2, 10)).astype(np.int64)
    for l in range(2):
        for ph in range(10):
            expected[p, l, m[l, ph]] += c[l, ph]
    records.append((c, m))
save(lambda t: {"records": [{"global_physical_count": t(c), "last_physical_to_logical_map": t(m)}
                            for c, m in records]}, os.path.join(HERE, "sglang_perpass.pt"))
np.save(os.path.join(HERE, "sglang_perpass.expected.npy"), expected)

# FLAME-style routing with f16 scores and int32 ids, layer 3
ids = np.stack([rng.permutation(16)[:4] for _ in range(40)]).astype(np.int32)
scores = rng.random((40, 4)).astype(np.float16)
save(lambda t: {"indices": t(ids), "scores": t(scores), "layer": 3, "epoch": 11,
                "sequence_length": 10, "num_tokens": 40}, os.path.join(HERE, "routing_small.pt"))
np.save(os.path.join(HERE, "routing_small.ids.npy"), ids.astype(np.int64))

# Hostile: a pickle that would run os.system if unpickled by Python.
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


with zipfile.ZipFile(os.path.join(HERE, "hostile.pt"), "w") as z:
    z.writestr("hostile/data.pkl", pickle.dumps({"indices": Evil()}, protocol=2))
print("fixtures written to", HERE)
