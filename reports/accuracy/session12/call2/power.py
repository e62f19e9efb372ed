# Session 12, call 2: each expert GEMM's speed in a burst (after a rest) against sustained
# back-to-back load (SW power cap), over the grid's shapes and rows; and the steady speed
# against the fraction of time the GPU spends in GEMMs, the rest spent idle (spin) or copying.
import torch, time, statistics as st
torch.manual_seed(0)
dev = 'cuda'
print(torch.__version__, torch.cuda.get_device_name(), flush=True)

def uni(shape, scale):
    return ((torch.rand(*shape, device=dev) * 2 - 1) * scale).to(torch.bfloat16)

def run(x, ws, out, n, gap=None):
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2 * n)]
    for j in range(n):
        if gap is not None: gap()
        ev[2 * j].record(); torch.matmul(x, ws[j % len(ws)], out=out); ev[2 * j + 1].record()
    torch.cuda.synchronize()
    return [ev[2 * j].elapsed_time(ev[2 * j + 1]) for j in range(n)]

SHAPES = [(2880, 2880), (4096, 14336), (2048, 768), (7168, 2048), (2048, 1024)]
ROWS = [16, 64, 256, 1024, 2048, 4096, 8192, 16384]
print("shape proj M burst_ms sustained_ms ratio burst_TFLOPs sustained_TFLOPs", flush=True)
for D, I in SHAPES:
    for proj, K, N in (('gate_up', D, 2 * I), ('down', I, D)):
        nw = 8
        ws = [uni((K, N), K ** -0.5) for _ in range(nw)]
        xm = uni((max(ROWS), K), 1.0)
        out = torch.empty(max(ROWS), N, device=dev, dtype=torch.bfloat16)
        for M in ROWS:
            x = xm[:M]; o = out[:M]
            t0 = run(x, ws, o, 8)  # warm-up, and an estimate
            est = st.median(t0[2:])
            torch.cuda.synchronize(); time.sleep(0.3)
            nb = int(min(max(8, 6.0 / est), 4000))
            b = run(x, ws, o, nb)
            burst = st.median(b[1:])
            ns = int(min(max(50, 400.0 / est), 40000))
            s = run(x, ws, o, ns)
            sus = st.median(s[int(ns * 0.7):])
            fl = 2 * M * K * N
            print(f"{D}:{I} {proj} {M} {burst:.5f} {sus:.5f} {sus / burst:.4f} {fl / burst / 1e9:.1f} {fl / sus / 1e9:.1f}", flush=True)
        del ws, xm, out; torch.cuda.empty_cache()

print("duty curves: shape proj M rest duty steady_ms ratio_to_burst", flush=True)
for D, I, proj, M in ((4096, 14336, 'gate_up', 7782), (7168, 2048, 'gate_up', 7782), (2880, 2880, 'gate_up', 4096), (2048, 768, 'gate_up', 2048)):
    K, N = (D, 2 * I) if proj == 'gate_up' else (I, D)
    ws = [uni((K, N), K ** -0.5) for _ in range(8)]
    x = uni((M, K), 1.0); o = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
    run(x, ws, o, 10); torch.cuda.synchronize(); time.sleep(0.3)
    b = st.median(run(x, ws, o, max(8, int(6.0 / 0.1)))[1:])
    src = torch.empty(256 << 20, dtype=torch.uint8, device=dev); dst = torch.empty_like(src)
    # copy rate: bytes per ms
    e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
    dst.copy_(src); e0.record(); dst.copy_(src); e1.record(); torch.cuda.synchronize()
    bpm = src.numel() / e0.elapsed_time(e1)
    for rest in ('spin', 'copy'):
        for duty in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5):
            if rest == 'copy' and duty in (1.0, 0.95, 0.85, 0.75): continue
            gap_ms = b * (1 - duty) / duty
            if duty == 1.0: g = None
            elif rest == 'spin':
                cyc = int(gap_ms * 1.98e6); g = lambda: torch.cuda._sleep(cyc)
            else:
                nb = min(int(gap_ms * bpm), src.numel()); g = lambda: dst[:nb].copy_(src[:nb])
            torch.cuda.synchronize(); time.sleep(0.3)
            n = int(min(max(100, 500.0 / (b + gap_ms)), 20000))
            t = run(x, ws, o, n, g)
            sm = st.median(t[n // 2:])
            print(f"{D}:{I} {proj} {M} {rest} {duty:.2f} {sm:.5f} {sm / b:.4f}", flush=True)
    del ws, x, o, src, dst; torch.cuda.empty_cache()
