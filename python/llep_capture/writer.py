"""The torch-free half of llep_capture: on-disk layout, host ring, writer thread.

Nothing here imports torch (or numpy): the hook in ``__init__`` hands over
finished steps as byte buffers, and this module bounds the host memory they
use and writes them from a background thread. That split keeps the parts
that can go wrong on disk testable on a machine without torch.

Layout written into the capture directory (what ``llep-trace capture``
reads, ``src/capture/logits.rs`` and ``src/capture/loads.rs``):

- logits modes: ``capture.json`` plus one ``step_{n:06d}.safetensors`` per
  step holding ``layer.{L}.logits`` [tokens, experts] (the model's dtype:
  f32, f16 or bf16), ``layer.{L}.ids`` [tokens, top_k] (i32) when the model
  exposes its choice, ``layer.{L}.bias`` [experts] (f32, DeepSeek-V3);
- counts mode: ``counts.csv`` with columns ``step,layer,expert,count`` (the
  long form of the ``load-csv`` format, every expert of every recorded layer
  on every step, zeros included) and ``counts.json`` naming the model and
  the ``llep-trace capture`` command that reads it (the CSV does not carry
  top_k, so the command passes it).

Every file is written under a temporary name and renamed when complete.
"""

import json
import os
import queue
import struct
import threading
import time

__all__ = [
    "ST_DTYPES",
    "Chunk",
    "Slot",
    "SlotPool",
    "StepJob",
    "StepWriter",
    "CountsCsv",
    "write_safetensors",
    "read_safetensors",
    "write_json",
    "step_file",
    "counts_command",
]

# safetensors dtype name -> item size in bytes (the ones the Rust reader takes)
ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U8": 1, "U16": 2, "BOOL": 1}

ALIGN = 64  # byte alignment of tensors inside a slot (dtype views need it)


def step_file(step):
    return f"step_{step:06d}.safetensors"


def write_json(path, obj):
    """Write ``obj`` as JSON through a temporary name."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _nbytes(part):
    return memoryview(part).nbytes


def write_safetensors(path, tensors):
    """Write ``tensors`` as one .safetensors file, through a temporary name.

    tensors: list of (name, dtype, shape, parts), dtype a key of ST_DTYPES,
    parts a list of bytes-like buffers whose concatenation is the tensor's
    data in C order (a layer seen in several forwards of a step is several
    parts). Returns the bytes written.
    """
    header = {}
    off = 0
    for name, dtype, shape, parts in tensors:
        if dtype not in ST_DTYPES:
            raise ValueError(f"llep_capture: tensor '{name}': unknown dtype {dtype}")
        want = ST_DTYPES[dtype]
        for d in shape:
            want *= int(d)
        have = sum(_nbytes(p) for p in parts)
        if have != want:
            raise ValueError(
                f"llep_capture: tensor '{name}': shape {list(shape)} {dtype} needs {want} bytes, "
                f"the buffers hold {have}")
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape],
                        "data_offsets": [off, off + want]}
        off += want
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _, _, _, parts in tensors:
            for p in parts:
                f.write(p)
    os.replace(tmp, path)
    return 8 + len(head) + off


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of a .safetensors file (for checks)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a .safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[name] = (h["dtype"], tuple(h["shape"]), body[a:b])
    return out


class Chunk:
    """One host buffer: ``buf`` is what the copier writes into (a pinned
    torch tensor, or anything sliceable), ``mem`` a byte memoryview of the
    same memory that the writer reads."""

    __slots__ = ("buf", "mem", "size")

    def __init__(self, buf, mem):
        self.buf = buf
        self.mem = memoryview(mem).cast("B")
        self.size = self.mem.nbytes


def bytearray_chunk(nbytes):
    """A plain host chunk (CPU-only runs and tests)."""
    b = bytearray(nbytes)
    return Chunk(b, b)


class Slot:
    """Host memory for one step: chunks filled front to back.

    A step whose data outgrows the slot gets another chunk (copies already
    in flight keep their buffer); when the slot comes back from the writer
    it is folded into one chunk of the size the step needed, so after the
    first steps a slot is one buffer and recording allocates nothing.
    """

    def __init__(self, index, alloc, first_bytes):
        self.index = index
        self.alloc = alloc
        self.chunks = []
        self.used = 0  # bytes used in the last chunk
        self.want = first_bytes  # size of the next chunk to allocate
        self.step_bytes = 0

    def reserve(self, nbytes):
        """(chunk, start) of ``nbytes`` free bytes, ALIGN-aligned."""
        start = -(-self.used // ALIGN) * ALIGN
        if not self.chunks or start + nbytes > self.chunks[-1].size:
            size = max(nbytes, self.want)
            self.chunks.append(self.alloc(size))
            start = 0
        self.used = start + nbytes
        self.step_bytes += nbytes
        return self.chunks[-1], start

    def reset(self):
        """Make the slot empty again (its data has been written)."""
        if len(self.chunks) > 1:
            total = sum(c.size for c in self.chunks)
            self.chunks = []
            self.want = max(self.want, total)
        self.used = 0
        self.step_bytes = 0

    def nbytes(self):
        return sum(c.size for c in self.chunks)


class SlotPool:
    """A ring of ``n`` slots: the bound on the host memory recording uses.

    on_full: "block" waits for the writer to free a slot (the model's
    Python thread stalls, nothing is lost); "drop" gives None at once and
    counts the step as dropped.
    """

    def __init__(self, n, alloc, on_full="block", first_bytes=1 << 20):
        if n < 1:
            raise ValueError("llep_capture: ring_slots must be at least 1")
        if on_full not in ("block", "drop"):
            raise ValueError(f"llep_capture: on_full must be 'block' or 'drop', not {on_full!r}")
        self.on_full = on_full
        self.slots = [Slot(i, alloc, first_bytes) for i in range(n)]
        self.free = list(reversed(self.slots))
        self.cond = threading.Condition()
        self.dropped = 0
        self.blocked = 0
        self.blocked_s = 0.0

    def acquire(self):
        with self.cond:
            if not self.free:
                if self.on_full == "drop":
                    self.dropped += 1
                    return None
                self.blocked += 1
                t0 = time.perf_counter()
                while not self.free:
                    self.cond.wait()
                self.blocked_s += time.perf_counter() - t0
            return self.free.pop()

    def release(self, slot):
        slot.reset()
        with self.cond:
            self.free.append(slot)
            self.cond.notify()

    def nbytes(self):
        with self.cond:
            return sum(s.nbytes() for s in self.slots)


class StepJob:
    """One finished step for the writer.

    events: objects with ``synchronize()`` (CUDA events of the copies) to
    wait on before the slot's bytes are valid. tensors: for a step file,
    [(name, dtype, shape, [(chunk, start, nbytes), ...])]. counts: for
    counts mode, [(layer, chunk, start, experts)] of little-endian int64.
    """

    __slots__ = ("step", "slot", "events", "tensors", "counts")

    def __init__(self, step, slot, events=(), tensors=None, counts=None):
        self.step = step
        self.slot = slot
        self.events = list(events)
        self.tensors = tensors
        self.counts = counts


class CountsCsv:
    """counts.csv, long form ``step,layer,expert,count``, appended per step
    and renamed into place when closed."""

    HEADER = "step,layer,expert,count\n"

    def __init__(self, path):
        self.path = path
        self.tmp = path + ".tmp"
        self.f = open(self.tmp, "w")
        self.f.write(self.HEADER)
        self.rows = 0

    def append(self, step, layer, counts):
        self.f.write("".join(f"{step},{layer},{e},{int(c)}\n" for e, c in enumerate(counts)))
        self.rows += len(counts)

    def close(self):
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class StepWriter:
    """Background thread writing finished steps, then handing slots back.

    The first error (disk full, bad data) is kept and raised in the model's
    thread by the next ``submit`` or by ``close``; later jobs are skipped
    but their slots still come back, so a blocked model never waits forever.
    """

    def __init__(self, out_dir, pool, counts_csv=None):
        self.out_dir = out_dir
        self.pool = pool
        self.csv = counts_csv
        self.q = queue.Queue()
        self.error = None
        self.steps_written = 0
        self.bytes_written = 0
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._run, name="llep_capture-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            job = self.q.get()
            if job is None:
                return
            try:
                if self.error is None:
                    self._write(job)
            except BaseException as e:  # noqa: BLE001 - re-raised in the model's thread
                self.error = e
            finally:
                if job.slot is not None:
                    self.pool.release(job.slot)

    def _write(self, job):
        for ev in job.events:
            ev.synchronize()
        t0 = time.perf_counter()
        if job.tensors is not None:
            tensors = [(name, dt, shape, [c.mem[s:s + n] for c, s, n in parts])
                       for name, dt, shape, parts in job.tensors]
            path = os.path.join(self.out_dir, step_file(job.step))
            self.bytes_written += write_safetensors(path, tensors)
        if job.counts is not None:
            for layer, c, s, e in job.counts:
                vals = struct.unpack_from(f"<{e}q", c.mem, s)
                self.csv.append(job.step, layer, vals)
                self.bytes_written += 8 * e
        self.steps_written += 1
        self.busy_s += time.perf_counter() - t0

    def check(self):
        if self.error is not None:
            raise RuntimeError(f"llep_capture: the writer thread failed: {self.error!r}") from self.error

    def submit(self, job):
        self.check()
        self.q.put(job)

    def close(self):
        """Write everything submitted, stop the thread, finish counts.csv."""
        self.q.put(None)
        self.thread.join()
        if self.csv is not None:
            if self.error is None:
                self.csv.close()
            else:
                self.csv.abort()
        self.check()


def counts_command(out_dir, info):
    """The ``llep-trace capture`` command line that reads a counts capture."""
    csv = os.path.join(out_dir, "counts.csv")
    parts = ["llep-trace", "capture", csv, "--format", "load-csv",
             "--top-k", str(info["top_k"]), "--num-experts", str(info["num_experts"])]
    for flag, key in (("--model-name", "name"), ("--hidden-size", "hidden_size"),
                      ("--intermediate-size", "intermediate_size"),
                      ("--num-layers", "num_layers"), ("--dtype", "dtype")):
        v = info.get(key)
        if v not in (None, "", 0):
            parts += [flag, str(v)]
    parts += ["--out", os.path.join(out_dir, "trace.parquet")]
    return parts
