"""llep_capture: record MoE router logits from a PyTorch / Hugging Face model.

Usage::

    import llep_capture
    with llep_capture.capture(model, "cap/", sequence_length=seq) as cap:
        for batch in batches:
            model(**batch)          # one step per top-level forward
    # then:  llep-trace capture cap/ --out trace.parquet

For every MoE layer the hook records, per step, the router logits
``layer.{L}.logits`` [tokens, experts] (f32), the experts the model chose
``layer.{L}.ids`` [tokens, top_k] when the model exposes them, and for
DeepSeek-V3 the correction bias ``layer.{L}.bias`` [experts] (logits alone
cannot reproduce its routing). Files are ``step_{n:06d}.safetensors`` (or
``.npz`` when the safetensors package is missing), beside ``capture.json``
holding the model's config (experts, top_k, hidden, intermediate, routing
function). Files are written through a temporary name and renamed.

Supported families (``config.model_type``): mixtral, qwen2_moe, qwen3_moe,
olmoe, gpt_oss, deepseek_v3. Routers are found by module name
(``...layers.{L}.mlp.gate`` or ``...mlp.router``) and weight shape
[experts, hidden].
"""

import json
import os
import re

__all__ = ["capture", "model_info", "FAMILIES"]

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3")


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
    """Context manager recording router logits of ``model`` into ``out_dir``.

    step_per_forward: each top-level ``model(...)`` call is one step (else
    call ``.step()`` yourself). sequence_length: tokens per sequence, for
    the trace's sequence column.
    """

    def __init__(self, model, out_dir, sequence_length=None, step_per_forward=True, name=None):
        self.model = model
        self.out_dir = out_dir
        self.sequence_length = sequence_length
        self.step_per_forward = step_per_forward
        self.info = model_info(model.config)
        if name:
            self.info["name"] = name
        self.family = model.config.model_type
        self.handles = []
        self.pending = {}
        self.steps = 0

    # -- hooks ---------------------------------------------------------------
    def _router_hook(self, layer, router):
        e = self.info["num_experts"]
        k = self.info["top_k"]
        fam = self.family
        import torch
        import torch.nn.functional as F

        def hook(mod, args, output):
            h = args[0] if args else None
            logits = None
            out0 = output[0] if isinstance(output, (tuple, list)) else output
            if fam in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe") and torch.is_tensor(out0) \
                    and out0.shape[-1] == e and out0.is_floating_point() \
                    and not isinstance(output, (tuple, list)):
                logits = out0  # nn.Linear gate: its output is the logits
            if logits is None:
                x = h.reshape(-1, h.shape[-1])
                if fam == "deepseek_v3":
                    logits = F.linear(x.float(), mod.weight.float())
                else:
                    logits = F.linear(x, mod.weight, getattr(mod, "bias", None))
            rec = self.pending.setdefault(layer, {})
            rec["logits"] = logits.detach().reshape(-1, e).float().cpu()
            bias = getattr(mod, "e_score_correction_bias", None)
            if bias is not None:
                rec["bias"] = bias.detach().float().cpu()
            if isinstance(output, (tuple, list)):
                for o in output:
                    if torch.is_tensor(o) and not o.is_floating_point() and o.shape[-1] == k:
                        rec.setdefault("ids", o.detach().reshape(-1, k).to(torch.int32).cpu())

        return hook

    def _experts_pre_hook(self, layer):
        k = self.info["top_k"]
        import torch

        def hook(mod, args, kwargs):
            vals = list(args) + list(kwargs.values())
            for v in vals:
                if torch.is_tensor(v) and not v.is_floating_point() and v.dim() >= 2 and v.shape[-1] == k:
                    # the ids the model dispatches on: the model's own choice
                    self.pending.setdefault(layer, {})["ids"] = v.detach().reshape(-1, k).to(torch.int32).cpu()
                    return None
            return None

        return hook

    def __enter__(self):
        os.makedirs(self.out_dir, exist_ok=True)
        routers = find_routers(self.model, self.info["num_experts"], self.info["hidden_size"])
        if not routers:
            raise RuntimeError("llep_capture: found no MoE router modules in the model")
        self.layers = [l for l, _, _ in routers]
        self.info["num_layers"] = len(routers)
        for layer, router, block in routers:
            self.handles.append(router.register_forward_hook(self._router_hook(layer, router)))
            experts = getattr(block, "experts", None) if block is not None else None
            if experts is not None and hasattr(experts, "register_forward_pre_hook"):
                self.handles.append(
                    experts.register_forward_pre_hook(self._experts_pre_hook(layer), with_kwargs=True)
                )
        if self.step_per_forward:
            self.handles.append(self.model.register_forward_hook(lambda m, a, o: self.step()))
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
        }
        tmp = os.path.join(self.out_dir, "capture.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, os.path.join(self.out_dir, "capture.json"))
        return self

    def step(self):
        """Write what was recorded since the last step as one file."""
        if not self.pending:
            return
        tensors = {}
        for layer, rec in sorted(self.pending.items()):
            for key, t in rec.items():
                tensors[f"layer.{layer}.{key}"] = t
        _save(os.path.join(self.out_dir, f"step_{self.steps:06d}"), tensors)
        self.pending = {}
        self.steps += 1

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        if exc[0] is None:
            self.step()
        return False
