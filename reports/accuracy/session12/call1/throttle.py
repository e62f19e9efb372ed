# Session 12, call 1: does a GEMM slow down as back-to-back work goes on (power / clocks),
# and do idle gaps (a layer's exchange phases) bring the speed back?
import torch, time, statistics as st, sys
torch.manual_seed(0)
dev = 'cuda'
print(torch.__version__, torch.cuda.get_device_name(), flush=True)

def uni(shape, scale):  # as our gen_bf16: uniform in [-scale, scale)
    return ((torch.rand(*shape, device=dev) * 2 - 1) * scale).to(torch.bfloat16)

SHAPES = [('mixtral gate_up', 7782, 4096, 28672), ('gpt-oss gate_up', 4096, 2880, 5760),
          ('gpt-oss down', 4096, 2880, 2880), ('deepseek gate_up', 7782, 7168, 4096)]

def seq(x, ws, n, gap_cycles=0, sync_each=False):
    out = torch.empty(x.shape[0], ws[0].shape[1], device=dev, dtype=torch.bfloat16)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2 * n)]
    torch.cuda.synchronize(); time.sleep(0.5)  # idle: let power and clocks settle
    for j in range(n):
        if gap_cycles: torch.cuda._sleep(gap_cycles)
        ev[2 * j].record(); torch.matmul(x, ws[j % len(ws)], out=out); ev[2 * j + 1].record()
        if sync_each: torch.cuda.synchronize()
    torch.cuda.synchronize()
    return [ev[2 * j].elapsed_time(ev[2 * j + 1]) for j in range(n)]

def show(tag, t, fl):
    idx = [0, 1, 2, 3, 5, 10, 20, 40, 80, 160, 320, len(t) - 1]
    idx = [i for i in idx if i < len(t)]
    busy = 0.0; cum = []
    for v in t: busy += v; cum.append(busy)
    cells = ' '.join(f"[{i}:{t[i]:.3f}@{cum[i]:.0f}ms]" for i in idx)
    tail = st.median(t[len(t)//2:])
    print(f"  {tag:28s} first {t[0]:.4f}  median(2nd half) {tail:.4f}  ratio {tail/t[0]:.3f}  "
          f"{fl/tail/1e9:.0f} TFLOP/s steady, {fl/min(t)/1e9:.0f} best", flush=True)
    print(f"    {cells}", flush=True)

for name, M, K, N in SHAPES:
    fl = 2 * M * K * N
    x = uni((M, K), 1.0)
    ws = [uni((K, N), K ** -0.5) for _ in range(8)]
    n = max(60, int(1200 / (fl / 780e9)))  # about 1.2 s of work
    n = min(n, 2000)
    print(f"{name}: M={M} K={K} N={N}, {n} GEMMs per sequence", flush=True)
    seq(x, ws, 20)  # warm-up (heuristics, handles)
    show('back to back, 8 weights', seq(x, ws, n), fl)
    show('back to back, 1 weight', seq(x, ws[:1], n), fl)
    show('sync after each', seq(x, ws, min(n, 300), sync_each=True), fl)
    # a GPU-side idle gap (spin kernel, low power) before each GEMM: cycles at ~1.98 GHz
    for gap_us in (100, 500, 1000, 3000):
        t = seq(x, ws, min(n, 300), gap_cycles=int(gap_us * 1980))
        show(f'spin gap {gap_us} us before each', t, fl)
    del x, ws; torch.cuda.empty_cache()

# which kernel torch's cuBLAS runs for each shape
from torch.profiler import profile, ProfilerActivity
for name, M, K, N in SHAPES:
    x = uni((M, K), 1.0); w = uni((K, N), K ** -0.5)
    torch.matmul(x, w); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        torch.matmul(x, w); torch.cuda.synchronize()
    ks = [e.name for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"kernel {name}: {ks}", flush=True)
