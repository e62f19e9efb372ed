# Per-unit cost of a layer's small expert units: eager issue vs one CUDA graph.
import torch, sys, json, time
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
dev = torch.device("cuda:0")
res = []
for name, D, I, E, rows in [("qwen3", 2048, 768, 64, 16), ("qwen3", 2048, 768, 64, 64),
                            ("olmoe", 2048, 1024, 32, 64), ("gptoss", 2880, 2880, 64, 16),
                            ("gptoss", 2880, 2880, 64, 128), ("deepseek", 7168, 2048, 128, 16)]:
    wgu = [torch.randn(D, 2 * I, device=dev, dtype=torch.bfloat16) for _ in range(E)]
    wd = [torch.randn(I, D, device=dev, dtype=torch.bfloat16) for _ in range(E)]
    x = torch.randn(E * rows, D, device=dev, dtype=torch.bfloat16)
    out = torch.empty_like(x)
    def layer():
        for e in range(E):
            xs = x[e * rows:(e + 1) * rows]
            h = xs @ wgu[e]
            a = torch.nn.functional.silu(h[:, :I]) * h[:, I:]
            torch.matmul(a, wd[e], out=out[e * rows:(e + 1) * rows])
    def timeit(f, n=15):
        for _ in range(3): f()
        torch.cuda.synchronize()
        v = []
        for _ in range(n):
            s, t = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); f(); t.record(); t.synchronize(); v.append(s.elapsed_time(t))
        v.sort(); return v[len(v) // 2]
    eager = timeit(layer)
    st = torch.cuda.Stream(); st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        for _ in range(2): layer()
    torch.cuda.current_stream().wait_stream(st)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        layer()
    graph = timeit(g.replay)
    # host issue rate alone: time to enqueue eager with a blocked stream is hard; report wall of enqueue
    torch.cuda.synchronize(); t0 = time.perf_counter(); layer(); t1 = time.perf_counter(); torch.cuda.synchronize()
    r = dict(shape=name, D=D, I=I, experts=E, rows=rows, eager_ms=eager, graph_ms=graph,
             eager_us_unit=1000 * eager / E, graph_us_unit=1000 * graph / E, host_enqueue_us_unit=1e6 * (t1 - t0) / E)
    res.append(r); print(json.dumps(r), flush=True)
    del wgu, wd, x, out, g
    torch.cuda.empty_cache()
