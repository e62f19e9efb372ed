#!/bin/bash
# Lead's probe for issue 15: what the expert GEMMs of the gpt-oss layer can
# reach on one H200 (torch, bf16), sequential vs grouped vs streams.
python3 - <<'PY' 2>&1 | tee $OUT/gemm_ceiling.txt
import torch, time
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
dev = 'cuda'
D, I, E, M = 2880, 2880, 32, 4096
print('torch', torch.__version__, torch.cuda.get_device_name())
x = torch.randn(E*M, D, device=dev, dtype=torch.bfloat16)
w1 = torch.randn(E, D, 2*I, device=dev, dtype=torch.bfloat16) * 0.02
w2 = torch.randn(E, I, D, device=dev, dtype=torch.bfloat16) * 0.02
flops = E*M*(2*D*2*I + 2*I*D)
def bench(f, n=10):
    for _ in range(3): f()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(n):
        s.record(); f(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts)//2]
def seq():
    for i in range(E):
        h = x[i*M:(i+1)*M] @ w1[i]
        a = h[:, :I] * torch.sigmoid(h[:, I:])
        a @ w2[i]
def seq_noact():
    for i in range(E):
        h = x[i*M:(i+1)*M] @ w1[i]
        h[:, :I] @ w2[i]
big_w1 = w1[0]; big_w2 = w2[0]
def dense():
    h = x @ big_w1; h[:, :I].contiguous() @ big_w2
offs = torch.arange(1, E+1, device=dev, dtype=torch.int32) * M
w1t = w1; w2t = w2
def grouped():
    h = torch._grouped_mm(x, w1t, offs=offs)
    a = h[:, :I] * torch.sigmoid(h[:, I:])
    torch._grouped_mm(a, w2t, offs=offs)
streams = [torch.cuda.Stream() for _ in range(4)]
def multi():
    cur = torch.cuda.current_stream()
    for s in streams: s.wait_stream(cur)
    for i in range(E):
        with torch.cuda.stream(streams[i % 4]):
            h = x[i*M:(i+1)*M] @ w1[i]
            h[:, :I] @ w2[i]
    for s in streams: cur.wait_stream(s)
for name, f in [('sequential+act', seq), ('sequential no act', seq_noact), ('one dense pair', dense), ('4 streams no act', multi), ('grouped_mm+act', grouped)]:
    try:
        ms = bench(f)
        print(f'{name:20s} {ms:8.3f} ms  {flops/ms/1e9:7.1f} TFLOP/s')
    except Exception as ex:
        print(f'{name:20s} failed: {type(ex).__name__}: {str(ex)[:120]}')
# skewed: one 95:1 style hot group of 8 experts x 16384 rows
PY
