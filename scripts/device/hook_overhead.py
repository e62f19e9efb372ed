"""Overhead of the llep_capture hook on a Mixtral-style model (GPU machine).

usage: python3 scripts/device/hook_overhead.py --out DIR [options]

Builds a randomly initialised stack of decoder blocks from plain torch
modules (RMSNorm, GQA attention, an MoE block: router Linear(D, E), top-k
of the softmax, E SwiGLU experts), bf16, and times its forward on batches of
random hidden states with no hook, the synchronous hook (mode "sync"), the
asynchronous logits hook ("async") and the counts-only hook ("counts").

Two MoE implementations are timed: "capacity" dispatches with a fixed
capacity per expert (GShard style, factor 1.25) and batched GEMMs, so the
forward never waits for the host, as in serving engines; "loop" is the
Hugging Face style loop over experts, whose torch.where reads the token
lists back to the host once per expert (the model itself syncs).

Timing: CUDA events around every forward, steps run back to back (no sync
between them), rounds interleave the modes so drift hits all alike; the
median over all timed steps is compared with the median of no hook. The
wall time per step over each round and the time to drain the writer at the
end of the capture are reported too.

Before timing, a check: the three hooks record the same forwards at once
(nested captures), and the harness compares what they wrote: the async
logits (model dtype) equal the sync logits (f32) exactly, the ids equal,
and counts.csv equals the counts of those ids. With --llep-trace BIN the
async directory and the counts CSV are also read by `llep-trace capture`.

Writes DIR/hook_overhead.json (also after each MoE implementation, so a
later failure keeps what was measured) and DIR/hook_overhead.md; the
captures go to --scratch (deleted at the end unless --keep). A failed check
or probe is recorded in the JSON and the timing still runs. --device cpu
with tiny sizes tries the script where there is no GPU (its times mean
nothing), e.g. --device cpu --layers 2 --hidden 64 --inter 128 --heads 4
--kv-heads 2 --tokens 256 --batch 2.
"""

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import llep_capture  # noqa: E402
from llep_capture import writer as capw  # noqa: E402

MODES = ("none", "sync", "async", "counts")


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + 1e-5)).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, d, heads, kv_heads):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.o = nn.Linear(heads * self.hd, d, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], -1)
        q = q.view(b, s, self.h, self.hd).transpose(1, 2)
        rep = self.h // self.kv
        k = k.view(b, s, self.kv, 1, self.hd).expand(b, s, self.kv, rep, self.hd)
        v = v.view(b, s, self.kv, 1, self.hd).expand(b, s, self.kv, rep, self.hd)
        k = k.reshape(b, s, self.h, self.hd).transpose(1, 2)
        v = v.reshape(b, s, self.h, self.hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class Experts(nn.Module):
    """E SwiGLU experts; called with (tokens, ids [T, k], weights [T, k])."""

    def __init__(self, e, d, i, top_k, impl, capacity_factor):
        super().__init__()
        self.e, self.k, self.impl, self.cf = e, top_k, impl, capacity_factor
        self.w1 = nn.Parameter(torch.empty(e, d, i))
        self.w3 = nn.Parameter(torch.empty(e, d, i))
        self.w2 = nn.Parameter(torch.empty(e, i, d))

    def forward(self, x, ids, weights):
        return self._capacity(x, ids, weights) if self.impl == "capacity" \
            else self._loop(x, ids, weights)

    def _capacity(self, x, ids, weights):
        t, d = x.shape
        e, k = self.e, self.k
        cap = int(math.ceil(t * k / e * self.cf))
        flat = ids.reshape(-1)
        # (scatter, not one_hot or repeat_interleave: nothing here may read back to the host)
        onehot = torch.zeros(t * k, e, dtype=torch.int64, device=x.device)
        onehot.scatter_(1, flat[:, None], 1)
        pos = (onehot.cumsum(0) - 1).gather(1, flat[:, None]).squeeze(1)
        keep = pos < cap
        slot = torch.where(keep, flat * cap + pos, torch.full_like(flat, e * cap))
        tok = torch.arange(t, device=x.device)[:, None].expand(t, k).reshape(-1)
        buf = x.new_zeros(e * cap + 1, d)
        buf.index_copy_(0, slot, x[tok])  # overflow tokens all land in the last row
        h = buf[:-1].view(e, cap, d)
        y = torch.bmm(F.silu(torch.bmm(h, self.w1)) * torch.bmm(h, self.w3), self.w2)
        y = torch.cat([y.reshape(e * cap, d), x.new_zeros(1, d)])
        out = y[slot] * (weights.reshape(-1, 1) * keep[:, None]).to(x.dtype)
        return out.view(t, k, d).sum(1)

    def _loop(self, x, ids, weights):
        out = torch.zeros_like(x)
        for ex in range(self.e):
            tok, which = torch.where(ids == ex)  # reads the count back: a host sync
            if tok.numel() == 0:
                continue
            h = x[tok]
            y = (F.silu(h @ self.w1[ex]) * (h @ self.w3[ex])) @ self.w2[ex]
            out.index_add_(0, tok, y * weights[tok, which, None].to(x.dtype))
        return out


class MoE(nn.Module):
    def __init__(self, d, i, e, top_k, impl, cf):
        super().__init__()
        self.k = top_k
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = Experts(e, d, i, top_k, impl, cf)

    def forward(self, h):
        x = h.reshape(-1, h.shape[-1])
        probs = F.softmax(self.gate(x).float(), dim=-1)
        w, ids = probs.topk(self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        return self.experts(x, ids, w).view_as(h)


class Block(nn.Module):
    def __init__(self, a, impl):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(a.hidden), RMSNorm(a.hidden)
        self.attn = Attention(a.hidden, a.heads, a.kv_heads)
        self.mlp = MoE(a.hidden, a.inter, a.experts, a.top_k, impl, a.capacity_factor)

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class Model(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.layers = nn.ModuleList(Block(a, "capacity") for _ in range(a.layers))

    def set_impl(self, impl):
        for b in self.layers:
            b.mlp.experts.impl = impl

    def forward(self, h):
        for b in self.layers:
            h = b(h)
        return h


def build(a, dev):
    with torch.device("meta"):
        m = Model(a).to(torch.bfloat16)
    m = m.to_empty(device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                fan_in = p.shape[-2] if p.dim() == 3 else p.shape[-1]
                p.normal_(0.0, fan_in ** -0.5, generator=g)
    return m.eval()


def info(a):
    return {"name": f"random-mixtral-style-{a.layers}L", "num_experts": a.experts,
            "top_k": a.top_k, "hidden_size": a.hidden, "intermediate_size": a.inter,
            "dtype": "bf16", "routing": {"kind": "softmax_topk", "renormalize": True}}


def inputs(a, dev, n, seed):
    g = torch.Generator(device=dev).manual_seed(seed)
    return [torch.randn(a.batch, a.tokens // a.batch, a.hidden, device=dev, dtype=torch.bfloat16,
                        generator=g) for _ in range(n)]


# -- check: the three hooks on the same forwards --------------------------------
def read_step(path):
    """{name: tensor} of a step file (safetensors, or npz from the sync hook)."""
    if path.endswith(".npz"):
        import numpy as np

        with np.load(path) as z:
            return {k: torch.from_numpy(z[k].copy()) for k in z.files}
    dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
          "I32": torch.int32, "I64": torch.int64}
    return {k: torch.frombuffer(bytearray(b), dtype=dt[d]).reshape(s)
            for k, (d, s, b) in capw.read_safetensors(path).items()}


def check(a, model, dev, scratch, llep_trace):
    d = {m: os.path.join(scratch, f"check_{m}") for m in ("sync", "async", "counts")}
    xs = inputs(a, dev, 3, seed=1)
    with torch.no_grad(), \
            llep_capture.capture(model, d["sync"], mode="sync", info=info(a)), \
            llep_capture.capture(model, d["async"], mode="async", info=info(a)), \
            llep_capture.capture(model, d["counts"], mode="counts", info=info(a)):
        for x in xs:
            model(x)
    res = {"steps": len(xs), "logits_equal": True, "ids_equal": True, "counts_equal": True,
           "values": 0, "topk_boundary_ties": 0}
    sync_files = sorted(f for f in os.listdir(d["sync"]) if f.startswith("step_"))
    counts = {}
    with open(os.path.join(d["counts"], "counts.csv")) as f:
        for r in csv.DictReader(f):
            counts[(int(r["step"]), int(r["layer"]), int(r["expert"]))] = int(r["count"])
    for step, sf in enumerate(sync_files):
        s = read_step(os.path.join(d["sync"], sf))
        y = read_step(os.path.join(d["async"], capw.step_file(step)))
        for layer in range(a.layers):
            lg_s, lg_a = s[f"layer.{layer}.logits"], y[f"layer.{layer}.logits"]
            res["values"] += lg_s.numel()
            if lg_a.dtype != torch.bfloat16 or not torch.equal(lg_a.float(), lg_s):
                res["logits_equal"] = False
            ids_s, ids_a = s[f"layer.{layer}.ids"], y[f"layer.{layer}.ids"]
            if not torch.equal(ids_s, ids_a):
                res["ids_equal"] = False
            # bf16 logits tie now and then at the top-k boundary: torch picks
            # either expert, llep-trace's routing the lower id, so its check
            # of recorded ids may count up to this many as differing
            top = lg_a.float().topk(a.top_k + 1, dim=-1).values
            res["topk_boundary_ties"] += int((top[:, a.top_k - 1] == top[:, a.top_k]).sum())
            bc = torch.bincount(ids_a.reshape(-1).long(), minlength=a.experts).tolist()
            if bc != [counts.get((step, layer, e), -1) for e in range(a.experts)]:
                res["counts_equal"] = False
    res["sync_files"] = len(sync_files)
    if llep_trace:
        res["llep_trace"] = {}
        cmd = json.load(open(os.path.join(d["counts"], "counts.json")))["llep_trace_command"]
        for what, args in (("async", ["capture", d["async"], "--out",
                                      os.path.join(d["async"], "trace.parquet")]),
                           ("counts", cmd[1:])):
            p = subprocess.run([llep_trace, *args], capture_output=True, text=True)
            res["llep_trace"][what] = {"rc": p.returncode, "stderr": p.stderr.strip()[-600:]}
    return res


class Clock:
    """Times one forward: CUDA events on a GPU, the host clock on a CPU (a
    dry run of this script with tiny sizes, --device cpu)."""

    def __init__(self, cuda):
        self.cuda = cuda
        if cuda:
            self.s = torch.cuda.Event(enable_timing=True)
            self.e = torch.cuda.Event(enable_timing=True)

    def start(self):
        if self.cuda:
            self.s.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.e.record()
        else:
            self.t = time.perf_counter() - self.t0

    def ms(self):
        return self.s.elapsed_time(self.e) if self.cuda else self.t * 1e3


def sync(a):
    if a.cuda:
        torch.cuda.synchronize()


def probe(a, model, mode, x, scratch):
    """One forward after a device sync: host time to enqueue it against its
    GPU time, and the synchronising CUDA calls torch reports in the model's
    thread (sync debug mode; the writer thread waits on events by design)."""
    cap = None
    if mode != "none":
        out = os.path.join(scratch, f"probe_{mode}")
        shutil.rmtree(out, ignore_errors=True)
        cap = llep_capture.capture(model, out, mode=mode, info=info(a)).__enter__()
    records = []

    def show(msg, cat, filename, lineno, file=None, line=None):
        records.append((threading.current_thread() is threading.main_thread(), str(msg)))

    try:
        with torch.no_grad():
            model(x)  # buffers allocated, streams created
            model(x)
            sync(a)
            if cap is not None:
                cap.flush()
            clock = Clock(a.cuda)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = show
                if a.cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    t0 = time.perf_counter()
                    clock.start()
                    model(x)
                    clock.stop()
                    host = time.perf_counter() - t0
                finally:
                    if a.cuda:
                        torch.cuda.set_sync_debug_mode(0)
            sync(a)
    finally:
        if cap is not None:
            cap.__exit__(None, None, None)
    syncs = [m for main, m in records if main and "synchroniz" in m]
    return {"enqueue_ms": host * 1e3, "gpu_ms": clock.ms(),
            "syncs": len(syncs) if a.cuda else None, "first_sync": syncs[0][:200] if syncs else None}


# -- timing ------------------------------------------------------------------
def timed_round(model, mode, xs, a, scratch, tag):
    """Per-step forward times (ms, CUDA events), wall ms per step, capture stats."""
    clocks = [Clock(a.cuda) for _ in xs]
    cap = None
    if mode != "none":
        out = os.path.join(scratch, f"{tag}_{mode}")
        shutil.rmtree(out, ignore_errors=True)
        cap = llep_capture.capture(model, out, mode=mode, info=info(a)).__enter__()
    try:
        with torch.no_grad():
            for x in xs[:a.warmup]:
                model(x)
            sync(a)
            if cap is not None:
                cap.flush()
            t0 = time.perf_counter()
            for c, x in zip(clocks[a.warmup:], xs[a.warmup:]):
                c.start()
                model(x)
                c.stop()
            sync(a)
            wall = (time.perf_counter() - t0) * 1e3 / (len(xs) - a.warmup)
    finally:
        t1 = time.perf_counter()
        if cap is not None:
            cap.__exit__(None, None, None)
        drain = time.perf_counter() - t1
    stats = cap.stats if cap is not None else {}
    stats["exit_s"] = drain
    return [c.ms() for c in clocks[a.warmup:]], wall, stats


def summarise(times, walls, base):
    med = statistics.median(times)
    q = statistics.quantiles(times, n=10) if len(times) >= 10 else [min(times)] * 9
    r = {"median_ms": med, "p10_ms": q[0], "p90_ms": q[-1], "n": len(times),
         "wall_ms_per_step": statistics.median(walls)}
    if base is not None:
        r["overhead_pct"] = 100.0 * (med - base["median_ms"]) / base["median_ms"]
        r["wall_overhead_pct"] = 100.0 * (r["wall_ms_per_step"] - base["wall_ms_per_step"]) \
            / base["wall_ms_per_step"]
    return r


def markdown(res):
    a = res["config"]
    lines = [
        "| MoE impl | mode | forward median (ms) | p10-p90 (ms) | overhead | wall/step (ms) "
        "| wall overhead | blocked | drain at exit (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for impl, modes in res["results"].items():
        for mode, r in modes.items():
            st = r.get("stats", {})
            lines.append(
                f"| {impl} | {mode} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} "
                f"| {r.get('overhead_pct', 0.0):+.2f}% | {r['wall_ms_per_step']:.2f} "
                f"| {r.get('wall_overhead_pct', 0.0):+.2f}% | {st.get('blocked', '-')} "
                f"| {st.get('exit_s', 0.0):.3f} |")
    head = (f"{a['layers']} layers, D {a['hidden']}, I {a['inter']}, {a['experts']} experts, "
            f"top-{a['top_k']}, {a['tokens']} tokens/step ({a['batch']} x "
            f"{a['tokens'] // a['batch']}), bf16; {a['rounds']} rounds x {a['steps']} timed "
            f"steps per mode after {a['warmup']} warm-up; {res['env']['gpu']}, "
            f"torch {res['env']['torch']}.")
    return head + "\n\n" + "\n".join(lines) + "\n"


def save(a, res):
    path = os.path.join(a.out, "hook_overhead.json")
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for hook_overhead.json / .md")
    ap.add_argument("--scratch", default="/tmp/llep_hook_overhead", help="capture directories")
    ap.add_argument("--keep", action="store_true", help="keep the capture directories")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per step")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--capacity-factor", type=float, default=1.25)
    ap.add_argument("--impl", default="capacity,loop", help="MoE implementations to time")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llep-trace", help="llep-trace binary: read the check captures back")
    ap.add_argument("--budget-s", type=float, default=180.0,
                    help="skip the MoE implementations not started by then")
    ap.add_argument("--device", default="cuda",
                    help="cuda; cpu only to try the script with tiny sizes")
    a = ap.parse_args()
    a.cuda = torch.device(a.device).type == "cuda"
    if a.cuda and not torch.cuda.is_available():
        sys.exit("hook_overhead: no CUDA GPU here (--device cpu runs a dry run)")
    if a.tokens % a.batch:
        sys.exit("hook_overhead: --tokens must be a multiple of --batch")
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.scratch, exist_ok=True)
    dev = torch.device(a.device)
    t_start = time.perf_counter()
    model = build(a, dev)
    print(f"model built: {sum(p.numel() for p in model.parameters()) / 1e9:.1f} G parameters, "
          f"{torch.cuda.memory_allocated() / 2**30 if a.cuda else 0:.1f} GiB on the GPU",
          file=sys.stderr, flush=True)
    res = {"config": vars(a), "env": {"torch": torch.__version__,
                                      "gpu": torch.cuda.get_device_name() if a.cuda else "cpu"},
           "results": {}}
    model.set_impl("capacity")
    # a failed check or probe is recorded, and the timing still runs
    try:
        res["check"] = check(a, model, dev, a.scratch, a.llep_trace)
    except Exception:
        res["check"] = {"error": traceback.format_exc()[-3000:]}
    print("check:", json.dumps(res["check"]), file=sys.stderr, flush=True)
    x = inputs(a, dev, 1, seed=3)[0]
    res["probe"] = {}
    for m in MODES:
        try:
            res["probe"][m] = probe(a, model, m, x, a.scratch)
        except Exception:
            res["probe"][m] = {"error": traceback.format_exc()[-3000:]}
    print("probe:", json.dumps(res["probe"]), file=sys.stderr, flush=True)
    xs = inputs(a, dev, a.warmup + a.steps, seed=2)
    for impl in a.impl.split(","):
        if time.perf_counter() - t_start > a.budget_s:
            res.setdefault("skipped", []).append(f"{impl}: past --budget-s {a.budget_s}")
            continue
        model.set_impl(impl)
        times = {m: [] for m in MODES}
        walls = {m: [] for m in MODES}
        stats = {}
        for rnd in range(a.rounds):
            # rotate the order so no mode always runs first in a round
            order = MODES[rnd % len(MODES):] + MODES[:rnd % len(MODES)]
            for mode in order:
                t, wl, st = timed_round(model, mode, xs, a, a.scratch, f"{impl}{rnd}")
                times[mode] += t
                walls[mode].append(wl)
                stats.setdefault(mode, []).append(st)
                print(f"{impl} round {rnd} {mode}: median {statistics.median(t):.2f} ms, "
                      f"wall {wl:.2f} ms/step", file=sys.stderr, flush=True)
        base = summarise(times["none"], walls["none"], None)
        out = {"none": base}
        for mode in MODES[1:]:
            out[mode] = summarise(times[mode], walls[mode], base)
            last = stats[mode][-1]
            last["blocked"] = sum(s.get("blocked", 0) for s in stats[mode])
            last["exit_s"] = max(s["exit_s"] for s in stats[mode])
            out[mode]["stats"] = last
        res["results"][impl] = out
        save(a, res)  # what is measured survives a later failure
    res["elapsed_s"] = time.perf_counter() - t_start
    targets = {}
    for impl, r in res["results"].items():
        targets[impl] = {"counts_le_2pct": r["counts"]["overhead_pct"] <= 2.0,
                         "async_le_10pct": r["async"]["overhead_pct"] <= 10.0}
    res["targets"] = targets
    save(a, res)
    md = markdown(res)
    md += "\n| probe (capacity) | enqueue (ms) | GPU (ms) | syncs in the model's thread |\n" \
        "| --- | ---: | ---: | ---: |\n"
    for m, p in res["probe"].items():
        if "error" in p:
            md += f"| {m} | failed | | |\n"
        else:
            md += f"| {m} | {p['enqueue_ms']:.2f} | {p['gpu_ms']:.2f} | {p['syncs']} |\n"
    md += "\nCheck: " + json.dumps(res["check"]) + "\n\nTargets (forward median): " \
        + json.dumps(targets) + f"\n\nElapsed {res['elapsed_s']:.0f} s.\n"
    if res.get("skipped"):
        md += "\nSkipped: " + "; ".join(res["skipped"]) + "\n"
    with open(os.path.join(a.out, "hook_overhead.md"), "w") as f:
        f.write(md)
    print(md)
    if not a.keep:
        shutil.rmtree(a.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
