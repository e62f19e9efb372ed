#!/bin/bash
# Session 11, call 10 (1 x H200): does a GEMM run faster when its input rows repeat? The synthetic PCT:H
# scenarios send every slot of a hot token to the hot experts (95:1: all K slots to expert 0), so the hot
# expert's rows are K copies of each token; real routing picks K distinct experts. torch bf16 matmul,
# Mixtral's gate_up (7,782 x 4,096 @ 4,096 x 28,672) and DeepSeek-V3's (7,782 x 7,168 @ 7,168 x 4,096), the
# input's rows all distinct, each repeated 2x, each repeated 8x, all zero; interleaved, median of 30.
python3 - <<'PY' 2>&1 | tee $OUT/dup_rows.txt
import torch, statistics as st
torch.manual_seed(0)
dev = 'cuda'
print(torch.__version__, torch.cuda.get_device_name())
for name, M, K, N in [('mixtral gate_up', 7782, 4096, 28672), ('deepseek gate_up', 7782, 7168, 4096), ('mixtral down', 7782, 14336, 4096)]:
    w = (torch.randn(K, N, device=dev) * 0.02).to(torch.bfloat16)
    base = torch.randn(M, K, device=dev).to(torch.bfloat16)
    xs = {'distinct': base}
    for r in (2, 8):
        u = base[: (M + r - 1) // r]
        xs[f'rows x{r}'] = u.repeat_interleave(r, dim=0)[:M].contiguous()
    xs['zeros'] = torch.zeros_like(base)
    out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
    times = {k: [] for k in xs}
    for _ in range(3):
        for x in xs.values(): torch.matmul(x, w, out=out)
    torch.cuda.synchronize()
    for rep in range(30):
        for k, x in xs.items():
            s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
            s.record(); torch.matmul(x, w, out=out); e.record(); torch.cuda.synchronize()
            times[k].append(s.elapsed_time(e))
    fl = 2 * M * K * N
    ref = st.median(times['distinct'])
    for k, v in times.items():
        m = st.median(v)
        print(f"{name:18s} {k:9s} {m:.4f} ms  {fl / m / 1e9:6.1f} TFLOP/s  {m / ref:.3f}x")
PY
