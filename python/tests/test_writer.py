"""Tests of llep_capture.writer: the layout, the host ring, the writer thread.

Standard library only (no torch, no numpy): run with
``python3 -m unittest discover -s python/tests`` (pytest collects them too).
When an ``llep-trace`` binary is found (``LLEP_TRACE_BIN``, or
``target/release/llep-trace`` of this checkout) the files written here are
also read back by ``llep-trace capture``.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from llep_capture import writer as w  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))


def llep_trace_bin():
    b = os.environ.get("LLEP_TRACE_BIN") or os.path.join(ROOT, "target", "release", "llep-trace")
    return b if os.path.isfile(b) and os.access(b, os.X_OK) else None


def f32(vals):
    return struct.pack(f"<{len(vals)}f", *vals)


def i32(vals):
    return struct.pack(f"<{len(vals)}i", *vals)


def bf16(vals):
    # bf16 = the top two bytes of the f32 (the values below are exact in bf16)
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


class Events:
    """Stands in for the CUDA events of a step: counts synchronize() calls."""

    def __init__(self):
        self.synced = 0

    def synchronize(self):
        self.synced += 1


class Tmp(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="llep_capture_test_")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class SafetensorsTest(Tmp):
    def test_round_trip_with_parts(self):
        logits = [float(i % 7) - 3.0 for i in range(6 * 4)]
        path = os.path.join(self.dir, "a.safetensors")
        n = w.write_safetensors(path, [
            # a tensor given in two parts (two forwards of one step)
            ("layer.0.logits", "F32", [6, 4], [f32(logits[:8]), f32(logits[8:])]),
            ("layer.0.ids", "I32", [6, 2], [i32(list(range(12)))]),
            ("layer.0.bias", "BF16", [4], [bf16([0.5, -1.0, 2.0, 0.0])]),
        ])
        self.assertEqual(n, os.path.getsize(path))
        got = w.read_safetensors(path)
        self.assertEqual(got["layer.0.logits"], ("F32", (6, 4), f32(logits)))
        self.assertEqual(got["layer.0.ids"], ("I32", (6, 2), i32(list(range(12)))))
        self.assertEqual(got["layer.0.bias"][2], bf16([0.5, -1.0, 2.0, 0.0]))
        with open(path, "rb") as f:
            (hn,) = struct.unpack("<Q", f.read(8))
        self.assertEqual(hn % 8, 0, "data must start 8-byte aligned")
        self.assertFalse(os.path.exists(path + ".tmp"))

    def test_size_mismatch_is_refused_and_nothing_written(self):
        path = os.path.join(self.dir, "b.safetensors")
        with self.assertRaisesRegex(ValueError, "needs 32 bytes, the buffers hold 28"):
            w.write_safetensors(path, [("x", "F32", [2, 4], [f32([0.0] * 7)])])
        self.assertEqual(os.listdir(self.dir), [])

    def test_unknown_dtype(self):
        with self.assertRaisesRegex(ValueError, "unknown dtype"):
            w.write_safetensors(os.path.join(self.dir, "c"), [("x", "Q8", [1], [b"\0"])])


class SlotTest(unittest.TestCase):
    def test_reserve_aligns_and_grows_then_folds(self):
        allocs = []

        def alloc(n):
            allocs.append(n)
            return w.bytearray_chunk(n)

        s = w.Slot(0, alloc, first_bytes=256)
        c0, a = s.reserve(10)
        c1, b = s.reserve(10)
        self.assertIs(c0, c1)
        self.assertEqual((a, b), (0, 64))
        c2, c = s.reserve(300)  # does not fit: a second chunk
        self.assertIsNot(c2, c0)
        self.assertEqual(c, 0)
        self.assertEqual(allocs, [256, 300])
        self.assertEqual(s.step_bytes, 320)
        s.reset()  # folded: the next step gets one chunk of both sizes
        self.assertEqual(s.chunks, [])
        s.reserve(10)
        s.reserve(300)
        self.assertEqual(allocs, [256, 300, 556])
        s.reset()
        s.reserve(320)
        self.assertEqual(len(allocs), 3, "steady state allocates nothing")

    def test_writes_land_in_the_chunk(self):
        s = w.Slot(0, w.bytearray_chunk, first_bytes=128)
        c, off = s.reserve(4)
        c.buf[off:off + 4] = b"abcd"
        self.assertEqual(bytes(c.mem[off:off + 4]), b"abcd")


class PoolTest(unittest.TestCase):
    def test_drop_counts_when_full(self):
        p = w.SlotPool(2, w.bytearray_chunk, on_full="drop")
        a, b = p.acquire(), p.acquire()
        self.assertIsNotNone(a)
        self.assertIsNotNone(b)
        self.assertIsNone(p.acquire())
        self.assertIsNone(p.acquire())
        self.assertEqual(p.dropped, 2)
        p.release(a)
        self.assertIs(p.acquire(), a)

    def test_block_waits_for_a_release(self):
        p = w.SlotPool(1, w.bytearray_chunk, on_full="block")
        a = p.acquire()
        threading.Timer(0.05, p.release, args=(a,)).start()
        t0 = time.perf_counter()
        self.assertIs(p.acquire(), a)
        self.assertGreaterEqual(time.perf_counter() - t0, 0.04)
        self.assertEqual((p.blocked, p.dropped), (1, 0))
        self.assertGreater(p.blocked_s, 0.0)

    def test_bad_settings(self):
        with self.assertRaisesRegex(ValueError, "on_full"):
            w.SlotPool(1, w.bytearray_chunk, on_full="wait")
        with self.assertRaisesRegex(ValueError, "ring_slots"):
            w.SlotPool(0, w.bytearray_chunk)


def fill(slot, data):
    c, s = slot.reserve(len(data))
    c.buf[s:s + len(data)] = data
    return (c, s, len(data))


class WriterTest(Tmp):
    def test_steps_written_in_the_background_with_bounded_slots(self):
        pool = w.SlotPool(2, w.bytearray_chunk, on_full="block")
        wr = w.StepWriter(self.dir, pool)
        evs = []
        for step in range(6):  # more steps than slots: acquire waits for the writer
            slot = pool.acquire()
            part = fill(slot, f32([float(step)] * 8))
            ev = Events()
            evs.append(ev)
            wr.submit(w.StepJob(step, slot, [ev], [("layer.3.logits", "F32", [2, 4], [part])]))
        wr.close()
        self.assertEqual(sorted(os.listdir(self.dir)), [w.step_file(i) for i in range(6)])
        self.assertTrue(all(e.synced == 1 for e in evs), "each step's events waited on once")
        for step in range(6):
            got = w.read_safetensors(os.path.join(self.dir, w.step_file(step)))
            self.assertEqual(got["layer.3.logits"][2], f32([float(step)] * 8))
        self.assertEqual(wr.steps_written, 6)
        self.assertEqual(len(pool.free), 2, "every slot came back")

    def test_counts_csv(self):
        pool = w.SlotPool(1, w.bytearray_chunk)
        csv = w.CountsCsv(os.path.join(self.dir, "counts.csv"))
        wr = w.StepWriter(self.dir, pool, csv)
        for step in (0, 1):
            slot = pool.acquire()
            rows = []
            for layer in (1, 5):
                vals = [step + layer, 0, 7, 1]
                c, s, _ = fill(slot, struct.pack("<4q", *vals))
                rows.append((layer, c, s, 4))
            wr.submit(w.StepJob(step, slot, [], None, rows))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "counts.csv")),
                         "counts.csv appears only when complete")
        wr.close()
        with open(os.path.join(self.dir, "counts.csv")) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "step,layer,expert,count")
        self.assertEqual(len(lines), 1 + 2 * 2 * 4)
        self.assertEqual(lines[1:5], ["0,1,0,1", "0,1,1,0", "0,1,2,7", "0,1,3,1"])
        self.assertEqual(lines[-4:], ["1,5,0,6", "1,5,1,0", "1,5,2,7", "1,5,3,1"])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "counts.csv.tmp")))

    def test_error_is_raised_in_the_caller_and_slots_come_back(self):
        pool = w.SlotPool(1, w.bytearray_chunk, on_full="block")
        wr = w.StepWriter(self.dir, pool)
        slot = pool.acquire()
        bad = fill(slot, b"\0" * 12)  # 12 bytes for a [2, 4] f32 tensor
        wr.submit(w.StepJob(0, slot, [], [("x", "F32", [2, 4], [bad])]))
        slot = pool.acquire()  # comes back although the write failed
        self.assertIsNotNone(slot)
        with self.assertRaisesRegex(RuntimeError, "writer thread failed"):
            wr.submit(w.StepJob(1, slot, [], []))
        with self.assertRaisesRegex(RuntimeError, "needs 32 bytes"):
            wr.close()
        self.assertEqual(os.listdir(self.dir), [])

    def test_failed_counts_capture_leaves_no_csv(self):
        pool = w.SlotPool(1, w.bytearray_chunk, first_bytes=16)
        csv = w.CountsCsv(os.path.join(self.dir, "counts.csv"))
        wr = w.StepWriter(self.dir, pool, csv)
        slot = pool.acquire()
        c, s, _ = fill(slot, b"\0" * 16)
        wr.submit(w.StepJob(0, slot, [], None, [(0, c, s, 4)]))  # 4 counts need 32 bytes
        with self.assertRaises(RuntimeError):
            wr.close()
        self.assertEqual(os.listdir(self.dir), [])


class LlepTraceReadsItTest(Tmp):
    """The files written here are what `llep-trace capture` reads."""

    def setUp(self):
        super().setUp()
        self.bin = llep_trace_bin()
        if self.bin is None:
            self.skipTest("no llep-trace binary (build it or set LLEP_TRACE_BIN)")

    def run_bin(self, *args):
        p = subprocess.run([self.bin, *args], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stderr

    def test_logits_dir_bf16_with_ids(self):
        info = {"name": "tiny", "num_experts": 4, "top_k": 2, "hidden_size": 8,
                "intermediate_size": 16, "num_layers": 2, "dtype": "bf16",
                "routing": {"kind": "softmax_topk", "renormalize": True}}
        w.write_json(os.path.join(self.dir, "capture.json"), {
            "format": "llep-capture/1", "family": "custom", "model": info,
            "tensor_pattern": "layer.{layer}.logits", "ids_pattern": "layer.{layer}.ids",
            "bias_pattern": "layer.{layer}.bias", "sequence_length": 3, "moe_layers": [0, 1],
            "source": "test", "mode": "async", "steps": 2, "steps_dropped": 0})
        # token t prefers experts (t % 4) and ((t + 1) % 4); values exact in bf16
        pool = w.SlotPool(1, w.bytearray_chunk)
        wr = w.StepWriter(self.dir, pool)
        for step in range(2):
            slot = pool.acquire()
            tensors = []
            for layer in (0, 1):
                lg, ids = [], []
                for t in range(6):
                    row = [0.0] * 4
                    row[t % 4], row[(t + 1) % 4] = 2.0, 1.0
                    lg += row
                    ids += [t % 4, (t + 1) % 4]
                # the logits of a layer in two parts, as two forwards give them
                tensors.append((f"layer.{layer}.logits", "BF16", [6, 4],
                                [fill(slot, bf16(lg[:12])), fill(slot, bf16(lg[12:]))]))
                tensors.append((f"layer.{layer}.ids", "I32", [6, 2], [fill(slot, i32(ids))]))
            wr.submit(w.StepJob(step, slot, [], tensors))
        wr.close()
        out = os.path.join(self.dir, "trace.parquet")
        err = self.run_bin("capture", self.dir, "--out", out)
        self.assertIn("2 steps x 2 layers", err)
        self.assertIn("24 tokens", err)
        self.assertIn("recorded ids checked on 24 tokens: 0 differ", err)

    def test_counts_csv_command(self):
        pool = w.SlotPool(1, w.bytearray_chunk)
        csv = w.CountsCsv(os.path.join(self.dir, "counts.csv"))
        wr = w.StepWriter(self.dir, pool, csv)
        for step in range(3):
            slot = pool.acquire()
            rows = []
            for layer in (0, 1):
                c, s, _ = fill(slot, struct.pack("<4q", 5, 1, 2, 0))  # 4 tokens, top-2
                rows.append((layer, c, s, 4))
            wr.submit(w.StepJob(step, slot, [], None, rows))
        wr.close()
        info = {"name": "tiny", "num_experts": 4, "top_k": 2, "hidden_size": 8,
                "intermediate_size": 16, "num_layers": 2, "dtype": "bf16"}
        cmd = w.counts_command(self.dir, info)
        self.assertEqual(cmd[:3], ["llep-trace", "capture", os.path.join(self.dir, "counts.csv")])
        err = self.run_bin(*cmd[1:])
        self.assertIn("3 steps x 2 layers", err)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "trace.parquet")))


class CountsCommandTest(unittest.TestCase):
    def test_flags_from_info(self):
        info = {"name": "m", "num_experts": 8, "top_k": 2, "hidden_size": 0,
                "intermediate_size": 14336, "num_layers": 4, "dtype": "bf16"}
        cmd = w.counts_command("cap", info)
        self.assertIn("--format", cmd)
        self.assertEqual(cmd[cmd.index("--top-k") + 1], "2")
        self.assertEqual(cmd[cmd.index("--num-experts") + 1], "8")
        self.assertNotIn("--hidden-size", cmd, "unknown sizes (0) are left out")
        self.assertEqual(cmd[-2:], ["--out", os.path.join("cap", "trace.parquet")])
        json.dumps(cmd)


if __name__ == "__main__":
    unittest.main()
