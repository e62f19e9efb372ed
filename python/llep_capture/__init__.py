"""llep_capture: record MoE routing from a PyTorch / Hugging Face model.

Usage::

    import llep_capture
    with llep_capture.capture(model, "cap/", sequence_length=seq) as cap:
        for batch in batches:
            model(**batch)          # one step per top-level forward
    # then:  llep-trace capture cap/ --out trace.parquet

Modes (``mode=``):

- ``"async"`` (default): per MoE layer and step, the router logits
  ``layer.{L}.logits`` [tokens, experts] (the model's dtype), the experts
  the model chose ``layer.{L}.ids`` [tokens, top_k] (i32) when the model
  exposes them, and for DeepSeek-V3 the correction bias ``layer.{L}.bias``
  [experts] (logits alone cannot reproduce its routing). Nothing in the
  model's thread waits for the GPU: copies go to pinned host buffers on a
  side CUDA stream, a background thread waits for them and writes
  ``step_{n:06d}.safetensors`` beside ``capture.json``.
- ``"counts"``: per layer and step only the number of tokens routed to each
  expert, accumulated on the device; written to ``counts.csv`` (the
  ``load-csv`` format) with ``counts.json`` naming the ``llep-trace
  capture`` command that reads it.
- ``"sync"``: the original hook, kept for comparison: ``.cpu()`` in every
  router hook (one host sync per layer), f32 logits, files written by the
  model's thread (``.npz`` when the safetensors package is missing).

Memory is bounded by ``ring_slots`` host buffers of one step each; when all
are waiting for the writer, ``on_full="block"`` (default) makes the model's
thread wait (nothing is lost), ``on_full="drop"`` skips recording that step
and counts it (a warning, ``stats["steps_dropped"]``, ``capture.json``).

Supported families (``config.model_type``): mixtral, qwen2_moe, qwen3_moe,
olmoe, gpt_oss, deepseek_v3. Routers are found by module name
(``...layers.{L}.mlp.gate`` or ``...mlp.router``) and weight shape
[experts, hidden]. Other models: pass ``info=`` (the model description,
see ``model_info``) and, when the names differ, ``routers=``.
"""

import json
import os
import re
import time
import warnings

from . import writer as _w

__all__ = ["capture", "model_info", "find_routers", "FAMILIES", "MODES"]

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3")
MODES = ("async", "counts", "sync")
# families whose router is a plain Linear: its output is the logits
_LINEAR_GATE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "custom")


def _cfg(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def model_info(config):
    """The model description written to capture.json, from an HF config."""
    mt = getattr(config, "model_type", "")
    if mt not in FAMILIES:
        raise ValueError(
            f"llep_capture: model_type '{mt}' is not supported ({', '.join(FAMILIES)})"
        )
    hidden = _cfg(config, "hidden_size", default=0)
    if mt == "mixtral":
        e = config.num_local_experts
        inter = config.intermediate_size
        routing = {"kind": "softmax_topk", "renormalize": True}
    elif mt in ("qwen2_moe", "qwen3_moe"):
        e = config.num_experts
        inter = _cfg(config, "moe_intermediate_size", "intermediate_size")
        routing = {"kind": "softmax_topk", "renormalize": bool(_cfg(config, "norm_topk_prob", default=False))}
    elif mt == "olmoe":
        e = config.num_experts
        inter = config.intermediate_size
        routing = {"kind": "softmax_topk", "renormalize": bool(_cfg(config, "norm_topk_prob", default=False))}
    elif mt == "gpt_oss":
        e = config.num_local_experts
        inter = config.intermediate_size
        routing = {"kind": "topk_softmax"}
    else:  # deepseek_v3
        e = config.n_routed_experts
        inter = _cfg(config, "moe_intermediate_size", "intermediate_size")
        routing = {
            "kind": "sigmoid_group_topk",
            "n_group": int(_cfg(config, "n_group", default=1)),
            "topk_group": int(_cfg(config, "topk_group", default=1)),
            "routed_scaling_factor": float(_cfg(config, "routed_scaling_factor", default=1.0)),
            "renormalize": bool(_cfg(config, "norm_topk_prob", default=True)),
        }
    top_k = _cfg(config, "num_experts_per_tok", "experts_per_token", "num_experts_per_token")
    dtype = str(_cfg(config, "torch_dtype", "dtype", default="bfloat16")).replace("torch.", "")
    dtype = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(dtype, dtype)
    return {
        "name": getattr(config, "_name_or_path", "") or mt,
        "num_experts": int(e),
        "top_k": int(top_k),
        "hidden_size": int(hidden),
        "intermediate_size": int(inter),
        "num_layers": 0,  # filled with the number of MoE layers found
        "dtype": dtype,
        "routing": routing,
    }


_LAYER = re.compile(r"layers\.(\d+)\.mlp\.(gate|router)$")


def find_routers(model, num_experts, hidden):
    """[(layer, router module, moe block module)] for every MoE layer."""
    out = []
    mods = dict(model.named_modules())
    for name, mod in mods.items():
        m = _LAYER.search(name)
        if not m:
            continue
        w = getattr(mod, "weight", None)
        if w is None or tuple(w.shape) != (num_experts, hidden):
            continue
        block = mods.get(name.rsplit(".", 1)[0])
        out.append((int(m.group(1)), mod, block))
    out.sort(key=lambda x: x[0])
    return out


def _save(base, tensors):
    """Write base.safetensors (or base.npz without the safetensors package)."""
    try:
        from safetensors.torch import save_file

        path = base + ".safetensors"
        tmp = path + ".tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    except ImportError:
        import numpy as np

        path = base + ".npz"
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in tensors.items()})
    os.replace(tmp, path)
    return path


class capture:
    """Context manager recording the routing of ``model`` into ``out_dir``.

    mode: "async" (logits, default), "counts" or "sync" (see the module
    doc). step_per_forward: each top-level ``model(...)`` call is one step
    (else call ``.step()`` yourself; the forwards in between are recorded
    as one step, their tokens one after the other). sequence_length: tokens
    per sequence, for the trace's sequence column. ring_slots, on_full: the
    host-memory bound and what happens when it is reached. info: the model
    description when ``model.config`` is not a supported HF config (keys of
    ``model_info``; ``family`` names its router kind, default "custom": a
    Linear router whose output is the logits). routers: [(layer, router
    module, MoE block or None)] when the module names differ from HF's.
    """

    def __init__(self, model, out_dir, sequence_length=None, step_per_forward=True, name=None,
                 mode="async", ring_slots=4, on_full="block", info=None, routers=None,
                 family=None):
        if mode not in MODES:
            raise ValueError(f"llep_capture: mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.model = model
        self.out_dir = out_dir
        self.sequence_length = sequence_length
        self.step_per_forward = step_per_forward
        self.mode = mode
        self.ring_slots = ring_slots
        self.on_full = on_full
        if info is None:
            self.info = model_info(model.config)
            self.family = model.config.model_type
        else:
            self.info = {"name": "", "hidden_size": 0, "intermediate_size": 0, "num_layers": 0,
                         "dtype": "bf16", "routing": {"kind": "recorded"}, **info}
            for key in ("num_experts", "top_k"):
                if not self.info.get(key):
                    raise ValueError(f"llep_capture: info needs '{key}'")
            self.family = family or "custom"
        if name:
            self.info["name"] = name
        self.routers = routers
        self.handles = []
        self.pending = {}
        self.steps = 0
        self._writer = None
        self._warned = set()

    # -- what a router hook sees ---------------------------------------------
    def _logits_and_ids(self, mod, args, output):
        """(logits [tokens, experts], ids [tokens, top_k] or None), detached,
        on the model's device; ids are those the router returned."""
        import torch
        import torch.nn.functional as F

        e, k = self.info["num_experts"], self.info["top_k"]
        logits = None
        out0 = output[0] if isinstance(output, (tuple, list)) else output
        if self.family in _LINEAR_GATE and torch.is_tensor(out0) and out0.shape[-1] == e \
                and out0.is_floating_point() and not isinstance(output, (tuple, list)):
            logits = out0  # nn.Linear gate: its output is the logits
        if logits is None:
            h = args[0]
            x = h.reshape(-1, h.shape[-1])
            if self.family == "deepseek_v3":
                logits = F.linear(x.float(), mod.weight.float())
            else:
                logits = F.linear(x, mod.weight, getattr(mod, "bias", None))
        ids = None
        if isinstance(output, (tuple, list)):
            for o in output:
                if torch.is_tensor(o) and not o.is_floating_point() and o.shape[-1] == k:
                    ids = o.detach().reshape(-1, k)
                    break
        return logits.detach().reshape(-1, e), ids

    @staticmethod
    def _dispatch_ids(args, kwargs, k):
        """The integer [.., top_k] tensor an experts module is called with."""
        import torch

        for v in list(args) + list(kwargs.values()):
            if torch.is_tensor(v) and not v.is_floating_point() and v.dim() >= 2 and v.shape[-1] == k:
                return v.detach().reshape(-1, k)
        return None

    # -- hooks: sync mode (the original, one host sync per layer) -------------
    def _router_hook(self, layer, router):
        import torch

        def hook(mod, args, output):
            logits, ids = self._logits_and_ids(mod, args, output)
            rec = self.pending.setdefault(layer, {})
            rec["logits"] = logits.float().cpu()
            bias = getattr(mod, "e_score_correction_bias", None)
            if bias is not None:
                rec["bias"] = bias.detach().float().cpu()
            if ids is not None:
                rec.setdefault("ids", ids.to(torch.int32).cpu())

        return hook

    def _experts_pre_hook(self, layer):
        import torch

        def hook(mod, args, kwargs):
            ids = self._dispatch_ids(args, kwargs, self.info["top_k"])
            if ids is not None:
                # the ids the model dispatches on: the model's own choice
                self.pending.setdefault(layer, {})["ids"] = ids.to(torch.int32).cpu()
            return None

        return hook

    # -- hooks: async and counts (nothing waits for the device) ----------------
    # Per forward, ids are kept by source: 2 = what the experts were called
    # with, 1 = what the router returned, 0 = logits to take the top-k of
    # (counts mode, only if nothing better arrives).
    def _async_router_hook(self, layer, router):
        def hook(mod, args, output):
            if self._drop:
                return
            logits, ids = self._logits_and_ids(mod, args, output)
            if self.mode == "async":
                self._put(f"layer.{layer}.logits", logits)
                bias = getattr(mod, "e_score_correction_bias", None)
                if bias is not None:
                    self._bias[layer] = bias
            if ids is not None:
                self._offer_ids(layer, 1, ids)
            elif self.mode == "counts":
                self._offer_ids(layer, 0, logits)

        return hook

    def _async_experts_pre_hook(self, layer):
        def hook(mod, args, kwargs):
            if not self._drop:
                ids = self._dispatch_ids(args, kwargs, self.info["top_k"])
                if ids is not None:
                    self._offer_ids(layer, 2, ids)
            return None

        return hook

    def _offer_ids(self, layer, rank, t):
        old = self._ids.get(layer)
        if old is None or old[0] <= rank:
            self._ids[layer] = (rank, t)

    def _slot_ready(self):
        """Take a host slot for this step if none yet; False when the step
        is dropped because the ring is full (on_full="drop")."""
        if self._drop:
            return False
        if self._slot is None:
            self._writer.check()
            self._slot = self._pool.acquire()
            if self._slot is None:
                self._drop = True
                if "drop" not in self._warned:
                    self._warned.add("drop")
                    warnings.warn("llep_capture: all host buffers are waiting for the writer; "
                                  "dropping steps (counted; on_full='block' waits instead)")
                return False
        return True

    def _put(self, name, t):
        """Queue a copy of ``t`` as (the next rows of) tensor ``name``."""
        from ._device import ST_NAME

        if not self._slot_ready():
            return
        if t.dtype not in ST_NAME:
            t = t.float()
        n = t.numel() * t.element_size()
        chunk, start = self._slot.reserve(n)
        self._copier.copy(t, chunk, start)
        dt, tail = ST_NAME[t.dtype], list(t.shape[1:])
        ent = self._tensors.get(name)
        if ent is None:
            self._tensors[name] = [dt, tail, int(t.shape[0]), [(chunk, start, n)]]
        elif ent[0] != dt or ent[1] != tail:
            raise RuntimeError(f"llep_capture: '{name}' changed from {ent[0]} {ent[1]} to {dt} "
                               f"{tail} within one step")
        else:
            ent[2] += int(t.shape[0])
            ent[3].append((chunk, start, n))

    def _end_forward(self):
        """Hand the ids of the forward that just ended to the step."""
        import torch

        from ._device import step_counts_add, topk_ids

        ids, self._ids = self._ids, {}
        if self._drop:
            return
        k, e = self.info["top_k"], self.info["num_experts"]
        for layer, (rank, t) in sorted(ids.items()):
            if self.mode == "async":
                self._put(f"layer.{layer}.ids", t.to(torch.int32))
            else:
                if rank == 0:
                    t = topk_ids(t, k, self.info["routing"])
                self._acc[layer] = step_counts_add(self._acc.get(layer), t, e)

    def _finish_tensors(self):
        """The step's tensors for the writer; ids whose rows do not match the
        logits (a forward that did not expose them) are left out, warned."""
        out = []
        for name, (dt, tail, rows, parts) in sorted(self._tensors.items()):
            if name.endswith(".ids"):
                lg = self._tensors.get(name[:-4] + ".logits")
                if lg is None or lg[2] != rows:
                    if "ids" not in self._warned:
                        self._warned.add("ids")
                        warnings.warn(f"llep_capture: '{name}' covers {rows} tokens, the logits "
                                      f"{lg[2] if lg else 0}: ids left out of step {self.steps}")
                    continue
            out.append((name, dt, [rows] + tail, parts))
        return out

    def _step_async(self):
        self._end_forward()
        counts = None
        if self.mode == "counts" and self._acc and self._slot_ready():
            counts = []
            for layer, acc in sorted(self._acc.items()):
                chunk, start = self._slot.reserve(acc.numel() * 8)
                self._copier.copy(acc, chunk, start)
                counts.append((layer, chunk, start, acc.numel()))
        if self.mode == "async" and self._slot is not None:
            for layer, bias in sorted(self._bias.items()):
                self._put(f"layer.{layer}.bias", bias.detach().float())
        recorded = self._slot is not None and (self._tensors or counts)
        if recorded:
            tensors = self._finish_tensors() if self.mode == "async" else None
            job = _w.StepJob(self.steps, self._slot, self._copier.events(), tensors, counts)
            self._writer.submit(job)
        elif self._slot is not None:
            self._pool.release(self._slot)
        dropped = self._drop
        self._slot, self._drop, self._tensors, self._bias, self._acc = None, False, {}, {}, {}
        if recorded or dropped:
            self.steps += 1

    # -- context ---------------------------------------------------------------
    def __enter__(self):
        os.makedirs(self.out_dir, exist_ok=True)
        routers = self.routers
        if routers is None:
            routers = find_routers(self.model, self.info["num_experts"], self.info["hidden_size"])
        if not routers:
            raise RuntimeError("llep_capture: found no MoE router modules in the model")
        self.layers = [l for l, _, _ in routers]
        self.info["num_layers"] = len(routers)
        sync = self.mode == "sync"
        if not sync:
            from ._device import Copier

            self._copier = Copier()
            self._pool = _w.SlotPool(self.ring_slots, self._copier.alloc, self.on_full)
            csv = _w.CountsCsv(os.path.join(self.out_dir, "counts.csv")) \
                if self.mode == "counts" else None
            self._writer = _w.StepWriter(self.out_dir, self._pool, csv)
            self._slot, self._drop, self._tensors, self._bias, self._acc = None, False, {}, {}, {}
            self._ids = {}
        rh = self._router_hook if sync else self._async_router_hook
        eh = self._experts_pre_hook if sync else self._async_experts_pre_hook
        for layer, router, block in routers:
            self.handles.append(router.register_forward_hook(rh(layer, router)))
            experts = getattr(block, "experts", None) if block is not None else None
            if experts is not None and hasattr(experts, "register_forward_pre_hook"):
                self.handles.append(experts.register_forward_pre_hook(eh(layer), with_kwargs=True))
        if self.step_per_forward or not sync:
            self.handles.append(self.model.register_forward_hook(self._model_hook))
        if self.mode != "counts":
            self._write_meta()
        return self

    def _model_hook(self, mod, args, output):
        if self.step_per_forward:
            self.step()
        elif self.mode != "sync":
            self._end_forward()

    def _write_meta(self, final=False):
        meta = {
            "format": "llep-capture/1",
            "family": self.family,
            "model": self.info,
            "tensor_pattern": "layer.{layer}.logits",
            "ids_pattern": "layer.{layer}.ids",
            "bias_pattern": "layer.{layer}.bias",
            "sequence_length": self.sequence_length,
            "moe_layers": self.layers,
            "source": f"llep_capture hook on {self.info['name']} ({self.family})",
            "mode": self.mode,
        }
        if final:
            meta["steps"] = self.steps
            meta["steps_dropped"] = self.stats["steps_dropped"]
        name = "counts.json" if self.mode == "counts" else "capture.json"
        if self.mode == "counts":
            for key in ("tensor_pattern", "ids_pattern", "bias_pattern"):
                del meta[key]
            meta["format"] = "llep-capture-counts/1"
            meta["counts_csv"] = "counts.csv"
            meta["llep_trace_command"] = _w.counts_command(self.out_dir, self.info)
        _w.write_json(os.path.join(self.out_dir, name), meta)

    def step(self):
        """End a step: what was recorded since the last one becomes one step."""
        if self.mode != "sync":
            self._step_async()
            return
        if not self.pending:
            return
        tensors = {}
        for layer, rec in sorted(self.pending.items()):
            for key, t in rec.items():
                tensors[f"layer.{layer}.{key}"] = t
        _save(os.path.join(self.out_dir, f"step_{self.steps:06d}"), tensors)
        self.pending = {}
        self.steps += 1

    @property
    def stats(self):
        """Steps recorded and dropped, time the model's thread waited for a
        free host buffer, the writer's busy time, host bytes held."""
        if self._writer is None:
            return {"mode": self.mode, "steps": self.steps, "steps_dropped": 0}
        p, w = self._pool, self._writer
        return {"mode": self.mode, "steps": self.steps, "steps_written": w.steps_written,
                "steps_dropped": p.dropped, "blocked": p.blocked, "blocked_s": p.blocked_s,
                "writer_busy_s": w.busy_s, "bytes_written": w.bytes_written,
                "host_buffer_bytes": p.nbytes()}

    def flush(self):
        """Wait until every step handed to the writer is on disk (the writer
        keeps running); the seconds waited."""
        t0 = time.perf_counter()
        if self._writer is not None:
            mine = 1 if self._slot is not None else 0  # the step being recorded
            while len(self._pool.free) + mine < len(self._pool.slots):
                self._writer.check()
                time.sleep(0.0005)
            self._writer.check()
        return time.perf_counter() - t0

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.mode == "sync":
            if exc[0] is None:
                self.step()
            return False
        try:
            if exc[0] is None:
                self.step()
        finally:
            try:
                self._writer.close()
            except Exception as e:
                if exc[0] is None:
                    raise
                if exc[1] is None or exc[1].__cause__ is not e.__cause__:
                    warnings.warn(f"llep_capture: the writer failed too: {e}")
        self._write_meta(final=True)
        dropped = self._pool.dropped
        if dropped:
            warnings.warn(f"llep_capture: {dropped} of {self.steps} steps were not recorded "
                          "(host buffers full, on_full='drop')")
        return False
