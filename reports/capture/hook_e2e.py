"""End-to-end check of the llep_capture hook (run on the GPU machine, CPU torch).

For each MoE family: build a small randomly initialised model from its
config, run two forward passes under llep_capture.capture, then
`llep-trace capture DIR --out DIR/trace.parquet`, and compare the trace's
top-k ids with the ids the model itself dispatched on (caught by a
pre-hook on the experts module, saved as layer.{L}.ids). The comparison is
done twice: by llep-trace (recorded ids checked) and here, reading the
tokens Parquet with pyarrow when it is installed.

usage: python3 hook_e2e.py LLEP_TRACE_BINARY OUT_DIR
"""

import json
import os
import subprocess
import sys
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
import llep_capture  # noqa: E402
import transformers  # noqa: E402

BIN, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)

common = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128)


def configs():
    T = transformers
    yield "mixtral", lambda: T.MixtralConfig(**common, intermediate_size=32, num_key_value_heads=2,
                                             num_local_experts=8, num_experts_per_tok=2), torch.float32
    yield "mixtral-bf16", lambda: T.MixtralConfig(**common, intermediate_size=32, num_key_value_heads=2,
                                                  num_local_experts=8, num_experts_per_tok=2), torch.bfloat16
    yield "qwen2_moe", lambda: T.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=32,
                                                shared_expert_intermediate_size=32, num_key_value_heads=2,
                                                num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
                                                decoder_sparse_step=1, mlp_only_layers=[]), torch.float32
    yield "qwen3_moe", lambda: T.Qwen3MoeConfig(**common, intermediate_size=64, moe_intermediate_size=32,
                                                num_key_value_heads=2, head_dim=16, num_experts=16,
                                                num_experts_per_tok=4, norm_topk_prob=True,
                                                decoder_sparse_step=1, mlp_only_layers=[]), torch.float32
    yield "olmoe", lambda: T.OlmoeConfig(**common, intermediate_size=32, num_key_value_heads=4,
                                         num_experts=8, num_experts_per_tok=2), torch.float32
    yield "gpt_oss", lambda: T.GptOssConfig(**common, intermediate_size=32, num_key_value_heads=2,
                                            head_dim=16, num_local_experts=8, num_experts_per_tok=2,
                                            sliding_window=16,
                                            layer_types=["sliding_attention", "full_attention"]), torch.float32
    yield "deepseek_v3", lambda: T.DeepseekV3Config(**common, intermediate_size=64, moe_intermediate_size=32,
                                                    num_key_value_heads=4, n_routed_experts=16,
                                                    n_shared_experts=1, num_experts_per_tok=4, n_group=4,
                                                    topk_group=2, routed_scaling_factor=2.5,
                                                    first_k_dense_replace=0, kv_lora_rank=16,
                                                    q_lora_rank=32, qk_rope_head_dim=8,
                                                    qk_nope_head_dim=8, v_head_dim=8,
                                                    norm_topk_prob=True), torch.float32


def compare_with_pyarrow(d, trace):
    """Independent check: tokens Parquet experts == the model's own ids."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return "pyarrow not installed here"
    from safetensors.torch import load_file
    t = pq.read_table(trace.replace(".parquet", ".tokens.parquet")).to_pydict()
    got = {}
    for s, l, tok, ex in zip(t["step"], t["layer"], t["token"], t["experts"]):
        got[(s, l, tok)] = sorted(ex)
    n = bad = 0
    for f in sorted(os.listdir(d)):
        if not f.startswith("step_") or not f.endswith(".safetensors"):
            continue
        step = int(f[5:11])
        for name, ids in load_file(os.path.join(d, f)).items():
            if not name.endswith(".ids"):
                continue
            layer = int(name.split(".")[1])
            for tok, row in enumerate(ids.tolist()):
                n += 1
                if got.get((step, layer, tok)) != sorted(row):
                    bad += 1
    return {"tokens": n, "differ": bad}


results = {"torch": torch.__version__, "transformers": transformers.__version__, "families": {}}
for fam, mk, dtype in configs():
    r = results["families"].setdefault(fam, {})
    try:
        torch.manual_seed(0)
        cfg = mk()
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        model = model.to(dtype).eval()
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # random bias so group-limited selection is exercised
                buf.copy_(torch.randn_like(buf) * 0.05)
        d = os.path.join(OUT, fam)
        seq = 16
        with torch.no_grad(), llep_capture.capture(model, d, sequence_length=seq, name=f"tiny-{fam}"):
            for _ in range(2):
                model(input_ids=torch.randint(0, 128, (3, seq)))
        files = sorted(os.listdir(d))
        r["files"] = files
        trace = os.path.join(d, "trace.parquet")
        p = subprocess.run([BIN, "capture", d, "--out", trace], capture_output=True, text=True)
        r["capture_rc"] = p.returncode
        r["capture_stderr"] = p.stderr.strip()
        r["pyarrow_check"] = compare_with_pyarrow(d, trace) if p.returncode == 0 else None
    except Exception:
        r["error"] = traceback.format_exc()[-3000:]
    print(fam, json.dumps(r, indent=1), flush=True)

with open(os.path.join(OUT, "hook_e2e.json"), "w") as f:
    json.dump(results, f, indent=1)
